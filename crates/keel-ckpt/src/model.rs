//! What a checkpoint holds: named tensors in groups (one safetensors file each) and a manifest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::CkptError;

/// The newest manifest format this keel reads and the one it writes. Format 2 manifests carry
/// their own digest (`manifest_blake3`, see [`seal_manifest`]); format 1 manifests (no digest)
/// are still read, unverified.
pub const FORMAT_VERSION: u32 = 2;

/// The manifest's file name; it is written last and is the commit point.
pub const MANIFEST: &str = "manifest.json";

/// The largest manifest keel reads (16 MiB): a manifest is metadata, never tensors.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// The largest safetensors header keel reads, as the safetensors crate bounds it (100 MB).
pub(crate) const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// The largest step a checkpoint can have: the folder name holds 12 decimal digits.
pub const MAX_STEP: u64 = 999_999_999_999;

/// The largest save time (ms since the Unix epoch): the folder name holds 13 digits.
pub(crate) const MAX_UNIX_MS: u64 = 9_999_999_999_999;

/// The field of a format-2 manifest that holds its digest; it is the last field of the file.
pub(crate) const DIGEST_FIELD: &str = "manifest_blake3";

/// The checkpoint folder name for a step and save time: `step-<12 digits>-<13 digits>`.
pub(crate) fn folder_name(step: u64, created_unix_ms: u64) -> String {
    format!("step-{step:012}-{created_unix_ms:013}")
}

/// The step and save time a checkpoint folder name says, when it is exactly one that keel
/// writes (`step-<12 digits>-<13 digits>`); anything else is not a keel checkpoint.
pub fn parse_folder_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("step-")?;
    let (step, ms) = rest.split_once('-')?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(step, 12) || !digits(ms, 13) {
        return None;
    }
    Some((step.parse().ok()?, ms.parse().ok()?))
}

/// Whether a tensor group name is one keel writes: ASCII letters, digits, `_` and `-`.
pub(crate) fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// The one check of a data file name read from a manifest, before anything joins it to a
/// path: a plain file name inside its own checkpoint (no separator, not `.` or `..`, no NUL,
/// not the manifest itself), of the form `<group>.safetensors`. Returns the group.
pub fn check_file_name(name: &str) -> Result<&str, String> {
    let refuse = |why: &str| Err(format!("file name {name:?} in {MANIFEST} {why}"));
    if name.is_empty() {
        return refuse("is empty");
    }
    if name.contains(['/', '\\']) {
        return refuse("has a path separator (a file must be inside its own checkpoint)");
    }
    if name.contains('\0') {
        return refuse("has a NUL byte");
    }
    if name == "." || name == ".." {
        return refuse("names a folder, not a file");
    }
    if name == MANIFEST {
        return refuse("is the manifest itself");
    }
    match name.strip_suffix(".safetensors") {
        Some(group) if valid_group_name(group) => Ok(group),
        _ => refuse("is not `<group>.safetensors` (letters, digits, `_`, `-`)"),
    }
}

/// Writes a manifest as keel stores it: pretty JSON whose last field, `manifest_blake3`, is the
/// BLAKE3 (hex) of the file's own bytes with those 64 hex digits read as `0`s. Any other
/// `manifest_blake3` field of `manifest` is replaced. `manifest` should be a JSON object;
/// anything else is written unsealed (and refused when read).
///
/// Tests and tools that write manifests by hand (hostile ones too) call this so that the
/// digest is right and the check under test is the one that refuses them.
pub fn seal_manifest(mut manifest: serde_json::Value) -> Vec<u8> {
    const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
    if let Some(object) = manifest.as_object_mut() {
        object.shift_remove(DIGEST_FIELD);
        object.insert(DIGEST_FIELD.into(), ZEROS.into());
    }
    let mut bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    if let Some(at) = digest_position(&bytes, ZEROS) {
        let digest = blake3::hash(&bytes).to_hex();
        bytes[at..at + ZEROS.len()].copy_from_slice(digest.as_bytes());
    }
    bytes
}

/// Where the hex digits of the last `"manifest_blake3": "<digest>"` in `bytes` start.
fn digest_position(bytes: &[u8], digest: &str) -> Option<usize> {
    let needle = format!("\"{DIGEST_FIELD}\": \"{digest}\"");
    let needle = needle.as_bytes();
    let start = bytes.windows(needle.len()).rposition(|w| w == needle)?;
    Some(start + needle.len() - 1 - digest.len())
}

/// Checks a sealed manifest's digest (see [`seal_manifest`]); `value` is `bytes` parsed.
pub(crate) fn check_seal(bytes: &[u8], value: &serde_json::Value) -> Result<(), String> {
    let digest = value
        .get(DIGEST_FIELD)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| format!("{MANIFEST} has no {DIGEST_FIELD} (its own checksum)"))?;
    if digest.len() != 64
        || !digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(format!("{MANIFEST}: {DIGEST_FIELD} is not a BLAKE3 in hex"));
    }
    let at = digest_position(bytes, digest)
        .ok_or_else(|| format!("{MANIFEST}: {DIGEST_FIELD} is not where keel writes it"))?;
    let mut zeroed = bytes.to_vec();
    zeroed[at..at + 64].fill(b'0');
    if blake3::hash(&zeroed).to_hex().as_str() != digest {
        return Err(format!(
            "{MANIFEST} does not match its own {DIGEST_FIELD} (the manifest changed on disk)"
        ));
    }
    Ok(())
}

/// Element types PyTorch reads from safetensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Dtype {
    /// `torch.bool`
    Bool,
    /// `torch.uint8`
    U8,
    /// `torch.int8`
    I8,
    /// `torch.int16`
    I16,
    /// `torch.int32`
    I32,
    /// `torch.int64`
    I64,
    /// `torch.float16`
    F16,
    /// `torch.bfloat16`
    BF16,
    /// `torch.float32`
    F32,
    /// `torch.float64`
    F64,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::I16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::F64 => 8,
        }
    }

    pub(crate) fn to_safetensors(self) -> safetensors::Dtype {
        match self {
            Dtype::Bool => safetensors::Dtype::BOOL,
            Dtype::U8 => safetensors::Dtype::U8,
            Dtype::I8 => safetensors::Dtype::I8,
            Dtype::I16 => safetensors::Dtype::I16,
            Dtype::I32 => safetensors::Dtype::I32,
            Dtype::I64 => safetensors::Dtype::I64,
            Dtype::F16 => safetensors::Dtype::F16,
            Dtype::BF16 => safetensors::Dtype::BF16,
            Dtype::F32 => safetensors::Dtype::F32,
            Dtype::F64 => safetensors::Dtype::F64,
        }
    }

    pub(crate) fn from_safetensors(dtype: safetensors::Dtype) -> Option<Self> {
        Some(match dtype {
            safetensors::Dtype::BOOL => Dtype::Bool,
            safetensors::Dtype::U8 => Dtype::U8,
            safetensors::Dtype::I8 => Dtype::I8,
            safetensors::Dtype::I16 => Dtype::I16,
            safetensors::Dtype::I32 => Dtype::I32,
            safetensors::Dtype::I64 => Dtype::I64,
            safetensors::Dtype::F16 => Dtype::F16,
            safetensors::Dtype::BF16 => Dtype::BF16,
            safetensors::Dtype::F32 => Dtype::F32,
            safetensors::Dtype::F64 => Dtype::F64,
            _ => return None,
        })
    }
}

/// One tensor, owned: its bytes are little-endian, row-major, as safetensors stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    /// Element type.
    pub dtype: Dtype,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// The elements' bytes.
    pub data: Vec<u8>,
}

impl Tensor {
    /// A tensor, checked: the bytes must be exactly `shape`'s element count times the size.
    pub fn new(
        name: &str,
        dtype: Dtype,
        shape: Vec<usize>,
        data: Vec<u8>,
    ) -> Result<Self, CkptError> {
        let needed = shape
            .iter()
            .try_fold(dtype.size(), |bytes, &n| bytes.checked_mul(n));
        if needed != Some(data.len()) {
            let needed = needed.map_or_else(|| "more than usize".to_string(), |n| n.to_string());
            return Err(CkptError::Tensor {
                name: name.to_string(),
                reason: format!(
                    "shape {shape:?} of {dtype:?} needs {needed} bytes, got {}",
                    data.len()
                ),
            });
        }
        Ok(Tensor { dtype, shape, data })
    }

    /// An `f32` tensor from values.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Self, CkptError> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::new("f32 values", Dtype::F32, shape, data)
    }

    /// The elements as `f32` (for `F32` tensors).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        (self.dtype == Dtype::F32).then(|| {
            self.data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
    }
}

impl safetensors::View for &Tensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.to_safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Named tensors that go into one safetensors file (`model`, `optimizer`, ...).
pub type TensorGroup = BTreeMap<String, Tensor>;

/// What kind of checkpoint: each is kept in its own folder and listed apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Saved by the save policy.
    Regular,
    /// Saved on SIGINT/SIGTERM before a clean exit.
    Interrupted,
    /// Saved on an error in the training loop (the last good state).
    Emergency,
    /// The best so far by a chosen metric.
    Best,
}

impl Kind {
    /// Every kind, in listing order.
    pub const ALL: [Kind; 4] = [
        Kind::Regular,
        Kind::Interrupted,
        Kind::Emergency,
        Kind::Best,
    ];

    /// The folder name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Regular => "regular",
            Kind::Interrupted => "interrupted",
            Kind::Emergency => "emergency",
            Kind::Best => "best",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checkpoint to save: the training state and what to record beside it. Owning the bytes
/// makes it a snapshot: the training loop may go on changing its own tensors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Optimizer steps taken.
    pub step: u64,
    /// Epochs completed (or the current epoch; the trainer decides).
    pub epoch: u64,
    /// Metrics at this step (`loss`, `val_accuracy`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// Anything else the trainer needs to resume (RNG state, data position, schedule).
    pub user: serde_json::Value,
    /// What the run records of its environment (keel train: the fingerprint), when given;
    /// opaque JSON, stored and returned as it is.
    pub environment: Option<serde_json::Value>,
    /// What the run records of its device (keel train: the probe), when given; opaque JSON.
    pub device: Option<serde_json::Value>,
    /// Tensors by group; each group is one safetensors file.
    pub groups: BTreeMap<String, TensorGroup>,
}

impl Snapshot {
    /// Bytes of tensor data.
    pub fn tensor_bytes(&self) -> u64 {
        self.groups
            .values()
            .flat_map(|g| g.values())
            .map(|t| t.data.len() as u64)
            .sum()
    }
}

/// One data file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the checkpoint.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the contents.
    pub blake3: String,
    /// The rank that wrote it, in a checkpoint of several ranks (absent in single-rank ones:
    /// rank 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
}

/// The manifest, written last: a checkpoint exists when its manifest does and verifies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the keel that wrote it.
    pub format_version: u32,
    /// The kind.
    pub kind: Kind,
    /// Step.
    pub step: u64,
    /// Epoch.
    pub epoch: u64,
    /// Wall time of the save, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Metrics.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// The trainer's own state.
    #[serde(default)]
    pub user: serde_json::Value,
    /// The environment fingerprint, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<serde_json::Value>,
    /// The device probe, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<serde_json::Value>,
    /// How many ranks wrote it, for a checkpoint of several (see
    /// [`CheckpointStore::begin_shared`](crate::CheckpointStore::begin_shared)); absent in
    /// single-rank ones (one). Every rank's files are listed in [`Manifest::files`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<usize>,
    /// The data files, by name.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// The step after this checkpoint's, when there is one a checkpoint can hold (checked
    /// arithmetic, at most [`MAX_STEP`]). A trainer resuming from this manifest continues at
    /// it, and checks that its optimizer's own step count agrees with [`Manifest::step`].
    pub fn next_step(&self) -> Option<u64> {
        self.step.checked_add(1).filter(|step| *step <= MAX_STEP)
    }
}

/// A tensor as safetensors' serializer sees it when only the header is wanted: the real
/// dtype, shape and length, and no bytes.
struct HeaderOnly<'a>(&'a Tensor);

impl safetensors::View for HeaderOnly<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.0.dtype.to_safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&[])
    }
    fn data_len(&self) -> usize {
        self.0.data.len()
    }
}

/// One group as a safetensors file, without copying the tensors: the header (8-byte length
/// and JSON, from the safetensors crate) and then each tensor's bytes in the order the header
/// places them. Writing the parts one after another gives exactly `safetensors::serialize`'s
/// bytes.
pub(crate) fn group_file<'a>(
    name: String,
    group: &'a TensorGroup,
) -> Result<FileParts<'a>, CkptError> {
    let header = safetensors::serialize(
        group
            .iter()
            .map(|(name, tensor)| (name.as_str(), HeaderOnly(tensor))),
        None,
    )
    .map_err(CkptError::Safetensors)?;
    // The header says where each tensor goes; follow it rather than its sorting rule.
    let json_len = u64::from_le_bytes(header[..8].try_into().expect("8-byte length")) as usize;
    let entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header[8..8 + json_len]).map_err(|e| CkptError::Tensor {
            name: "(header)".into(),
            reason: e.to_string(),
        })?;
    let mut placed: Vec<(u64, &[u8])> = group
        .iter()
        .map(|(name, tensor)| {
            let start = entries
                .get(name)
                .and_then(|entry| entry.get("data_offsets"))
                .and_then(|offsets| offsets.get(0))
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| CkptError::Tensor {
                    name: name.clone(),
                    reason: "missing from the safetensors header".into(),
                })?;
            Ok((start, tensor.data.as_slice()))
        })
        .collect::<Result<_, CkptError>>()?;
    placed.sort_by_key(|(start, _)| *start);
    Ok(FileParts {
        name,
        header,
        data: placed.into_iter().map(|(_, data)| data).collect(),
    })
}

/// A file to write as consecutive parts (a header, then borrowed tensor bytes).
#[derive(Debug)]
pub(crate) struct FileParts<'a> {
    /// The file name inside the checkpoint.
    pub(crate) name: String,
    header: Vec<u8>,
    data: Vec<&'a [u8]>,
}

impl FileParts<'_> {
    /// The parts in file order.
    pub(crate) fn parts(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.header.as_slice()).chain(self.data.iter().copied())
    }

    /// The file's size.
    pub(crate) fn len(&self) -> u64 {
        self.parts().map(|part| part.len() as u64).sum()
    }
}

/// Reads one safetensors file of `size` bytes (already checked against the manifest) as a
/// stream: the header (bounded, and checked by the safetensors crate: offsets contiguous, shape
/// products without overflow, every byte accounted for), then each tensor's bytes in file
/// order, hashing everything. Returns the BLAKE3 (hex) and, when `keep` is set, the tensors.
/// Memory is the header plus the tensors kept; nothing else of the file is held.
pub(crate) fn read_group(
    reader: &mut dyn std::io::Read,
    size: u64,
    keep: bool,
) -> Result<(String, Option<TensorGroup>), String> {
    use std::io::Read as _;
    let mut hasher = blake3::Hasher::new();
    let io = |e: std::io::Error| format!("reading failed: {e}");
    let mut length = [0u8; 8];
    if size < 8 {
        return Err(format!(
            "{size} bytes is too short for a safetensors header"
        ));
    }
    reader.read_exact(&mut length).map_err(io)?;
    hasher.update(&length);
    let header_len = u64::from_le_bytes(length);
    if header_len > MAX_SAFETENSORS_HEADER || header_len > size - 8 {
        return Err(format!(
            "the safetensors header says it is {header_len} bytes, in a file of {size} (at most {MAX_SAFETENSORS_HEADER})"
        ));
    }
    let mut header = Vec::new();
    reader
        .take(header_len)
        .read_to_end(&mut header)
        .map_err(io)?;
    if header.len() as u64 != header_len {
        return Err("the file ends inside its safetensors header".into());
    }
    hasher.update(&header);
    let metadata: safetensors::tensor::Metadata =
        serde_json::from_slice(&header).map_err(|e| format!("bad safetensors header: {e}"))?;
    let mut tensors: Vec<(String, &safetensors::tensor::TensorInfo)> =
        metadata.tensors().into_iter().collect();
    tensors.sort_by_key(|(_, info)| info.data_offsets);
    let data_len = tensors
        .last()
        .map_or(0, |(_, info)| info.data_offsets.1 as u64);
    if 8 + header_len + data_len != size {
        return Err(format!(
            "the safetensors header accounts for {} bytes, the file has {size}",
            8 + header_len + data_len
        ));
    }
    let mut group = TensorGroup::new();
    let mut chunk = vec![0u8; 1 << 20];
    for (name, info) in tensors {
        let (start, end) = info.data_offsets;
        let len = (end - start) as u64;
        let dtype = Dtype::from_safetensors(info.dtype)
            .ok_or_else(|| format!("tensor `{name}` has dtype {:?}", info.dtype))?;
        if keep {
            // Exactly the tensor's bytes, allocated once (the length is bounded by the
            // file's checked size), read in chunks that are hashed while still in cache.
            let too_large = || format!("tensor `{name}` of {len} bytes does not fit in memory");
            let bytes = usize::try_from(len).map_err(|_| too_large())?;
            let mut data = Vec::new();
            data.try_reserve_exact(bytes).map_err(|_| too_large())?;
            data.resize(bytes, 0);
            for part in data.chunks_mut(chunk.len()) {
                reader
                    .read_exact(part)
                    .map_err(|e| format!("the file ends inside tensor `{name}` ({e})"))?;
                hasher.update(part);
            }
            let tensor =
                Tensor::new(&name, dtype, info.shape.clone(), data).map_err(|e| e.to_string())?;
            group.insert(name, tensor);
        } else {
            let mut left = len;
            while left > 0 {
                let want = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                reader
                    .read_exact(&mut chunk[..want])
                    .map_err(|e| format!("the file ends inside tensor `{name}` ({e})"))?;
                hasher.update(&chunk[..want]);
                left -= want as u64;
            }
        }
    }
    // The file may have grown since its size was checked.
    if reader.read(&mut chunk[..1]).map_err(io)? != 0 {
        return Err(format!("the file is longer than {size} bytes"));
    }
    Ok((
        hasher.finalize().to_hex().to_string(),
        keep.then_some(group),
    ))
}

/// Reads one safetensors file held in memory (tests).
#[cfg(test)]
pub(crate) fn parse_group(bytes: &[u8]) -> Result<TensorGroup, String> {
    let mut reader = bytes;
    read_group(&mut reader, bytes.len() as u64, true).map(|(_, group)| group.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data, 0);
        bytes
    }

    /// Hardening issue #13 (siblings): safetensors headers that lie are refused before any
    /// allocation they ask for: a length past the file or past 100 MB, overlapping or
    /// gapped offsets, a shape whose product overflows, a dtype keel does not know.
    #[test]
    fn hostile_safetensors_headers_are_refused() {
        let w = |dtype: &str, shape: &str, offsets: &str| {
            format!(r#"{{"w":{{"dtype":"{dtype}","shape":{shape},"data_offsets":{offsets}}}}}"#)
        };
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        let mut beyond = 1000u64.to_le_bytes().to_vec();
        beyond.extend_from_slice(b"{}");
        let overlapping = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("huge header length", huge),
            ("header length beyond the file", beyond),
            ("overlapping offsets", file(overlapping, 6)),
            (
                "shape overflow",
                file(&w("F32", "[4294967296,4294967296,4294967296]", "[0,4]"), 4),
            ),
            ("bad dtype", file(&w("F4", "[2]", "[0,1]"), 1)),
            ("unknown dtype", file(&w("Q9", "[1]", "[0,1]"), 1)),
            ("data past the header's", file(&w("U8", "[1]", "[0,1]"), 9)),
            ("too short", vec![1, 2, 3]),
        ];
        for (case, bytes) in cases {
            let error = parse_group(&bytes).unwrap_err();
            assert!(!error.is_empty(), "{case}");
        }
    }

    /// Writing a group as header + borrowed tensor bytes gives exactly the bytes of
    /// `safetensors::serialize`, whatever the dtypes and names (its order mixes both).
    #[test]
    fn parts_equal_safetensors_serialize() {
        let mut group = TensorGroup::new();
        let tensors = [
            ("b", Dtype::F32, vec![3], 12),
            ("a", Dtype::U8, vec![5], 5),
            ("c", Dtype::F64, vec![2, 2], 32),
            ("aa", Dtype::BF16, vec![3], 6),
            ("z", Dtype::I64, vec![], 8),
        ];
        for (name, dtype, shape, len) in tensors {
            let data = (0..len).map(|i| (i * 7 + name.len()) as u8).collect();
            group.insert(name.into(), Tensor::new(name, dtype, shape, data).unwrap());
        }
        let expected =
            safetensors::serialize(group.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
        let file = group_file("g.safetensors".into(), &group).unwrap();
        let written: Vec<u8> = file.parts().flatten().copied().collect();
        assert_eq!(written, expected);
        assert_eq!(file.len(), expected.len() as u64);
        assert_eq!(parse_group(&written).unwrap(), group);
    }
}
