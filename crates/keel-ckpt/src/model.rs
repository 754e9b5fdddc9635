//! What a checkpoint holds: named tensors in groups (one safetensors file each) and a manifest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::CkptError;

/// The newest manifest format this keel reads and the one it writes.
pub const FORMAT_VERSION: u32 = 1;

/// The manifest's file name; it is written last and is the commit point.
pub const MANIFEST: &str = "manifest.json";

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
        let elements: usize = shape.iter().product();
        if elements * dtype.size() != data.len() {
            return Err(CkptError::Tensor {
                name: name.to_string(),
                reason: format!(
                    "shape {shape:?} of {dtype:?} needs {} bytes, got {}",
                    elements * dtype.size(),
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
    /// The environment fingerprint of the run (`keel hash --json`), when given.
    pub environment: Option<serde_json::Value>,
    /// The device probe of the run (`keel probe --json`), when given.
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
    /// The data files, by name.
    pub files: Vec<FileEntry>,
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

/// Reads one safetensors file back into owned tensors.
pub(crate) fn parse_group(bytes: &[u8], id: &str, file: &str) -> Result<TensorGroup, CkptError> {
    let invalid = |reason: String| CkptError::Invalid {
        id: id.to_string(),
        reason: format!("{file}: {reason}"),
    };
    let tensors =
        safetensors::SafeTensors::deserialize(bytes).map_err(|e| invalid(e.to_string()))?;
    let mut group = TensorGroup::new();
    for (name, view) in tensors.iter() {
        let dtype = Dtype::from_safetensors(view.dtype())
            .ok_or_else(|| invalid(format!("tensor `{name}` has dtype {:?}", view.dtype())))?;
        group.insert(
            name.to_string(),
            Tensor::new(name, dtype, view.shape().to_vec(), view.data().to_vec())?,
        );
    }
    Ok(group)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_group(&written, "id", "g.safetensors").unwrap(), group);
    }
}
