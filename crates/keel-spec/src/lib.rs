//! Read, check and write conda `environment.yml` files exactly as conda reads them.
//!
//! `keel-spec` turns an environment file into a typed [`EnvironmentSpec`]: channels in priority
//! order, conda dependencies as rattler [`MatchSpec`](rattler_conda_types::MatchSpec)s (parsed
//! leniently, as conda is lenient), the `pip:` sub-section line by line (PEP 508 requirements
//! typed, requirements-file lines such as `-e .` or `--extra-index-url` kept as typed opaque
//! entries), `variables`, `prefix`, and conda-lock's `platforms` and `category`. Every error
//! and warning names the file, line and column and can show the line with a caret. The spec
//! writes back as YAML that conda reads, in the order it was written.
//!
//! It does not solve, download or install anything; `keel-solve` builds on it for that.
//!
//! ```
//! use keel_spec::{parse_str, DependencyEntry};
//!
//! let text = "\
//! name: vit
//! channels: [pytorch, nvidia, conda-forge]
//! dependencies:
//!   - python=3.10
//!   - pytorch::pytorch==2.0.1
//!   - pip
//!   - pip:
//!       - transformers==4.30.0
//! ";
//! let parsed = parse_str(text, "environment.yml")?;
//! let spec = &parsed.spec;
//! assert_eq!(spec.name.as_deref(), Some("vit"));
//! assert_eq!(spec.channels[0].source, "pytorch");
//! let torch = spec.conda_dependencies().nth(1).unwrap();
//! assert_eq!(torch.spec.name.to_string(), "pytorch");
//! assert_eq!(torch.location.unwrap().line, 5);
//! assert_eq!(spec.pip_entries().count(), 1);
//!
//! // Errors carry the place, and the report shows the line with a caret.
//! let error = parse_str("dependencies:\n  - python=>>3\n", "env.yml").unwrap_err();
//! let report = error.report().unwrap();
//! assert_eq!(report.problems[0].location.unwrap().line, 2);
//! assert!(report.to_string().contains("--> env.yml:2:5"));
//! # Ok::<(), keel_spec::SpecError>(())
//! ```

#![deny(missing_docs)]

mod conda;
mod error;
mod model;
mod parse;
mod pip;
mod selector;
mod source;
mod write;
mod yaml;

use std::path::{Path, PathBuf};

pub use error::{Problem, ProblemKind, Report, Severity, SpecError};
pub use model::{
    ChannelEntry, ChannelKind, CondaDependency, DependencyEntry, EnvironmentSpec, OtherSection,
    PipSection,
};
pub use pip::{PipEntry, PipEntryKind};
pub use selector::{Selector, SelectorStyle};
pub use source::Location;

/// A file checked for problems: the spec when it has no errors, and every problem found.
#[derive(Debug)]
pub struct Checked {
    /// The spec; `None` when the file has errors.
    pub spec: Option<EnvironmentSpec>,
    /// Every error and warning, with the file's text to show them in place.
    pub report: Report,
}

impl Checked {
    /// The spec with its warnings, or the errors.
    pub fn into_result(self) -> Result<Parsed, SpecError> {
        match self.spec {
            Some(spec) if !self.report.has_errors() => Ok(Parsed {
                spec,
                report: self.report,
            }),
            _ => Err(SpecError::Invalid {
                report: Box::new(self.report),
            }),
        }
    }
}

/// A spec read without errors, with the warnings found on the way.
#[derive(Debug)]
pub struct Parsed {
    /// The spec.
    pub spec: EnvironmentSpec,
    /// The warnings (no errors).
    pub report: Report,
}

/// Checks environment-file text. `path` names the file in messages; nothing is looked up on
/// disk (local pip paths are checked by [`check_path`], which knows the file's folder).
pub fn check_str(text: &str, path: impl AsRef<Path>) -> Checked {
    check_text(text, path.as_ref(), None)
}

fn check_text(text: &str, path: &Path, folder: Option<&Path>) -> Checked {
    let text = source::strip_bom(text);
    let mut parser = parse::Parser::new(text);
    if let Some(folder) = folder {
        parser = parser.in_folder(folder);
    }
    let (spec, problems) = parser.parse();
    Checked {
        spec,
        report: Report {
            path: path.to_path_buf(),
            text: text.to_owned(),
            problems,
        },
    }
}

/// The largest environment file keel reads, in bytes. Real ones are a few kilobytes; the
/// limit bounds the memory a hostile file can make keel use (a flow list of one-letter
/// packages, `[a, a, …]`, takes about 320 bytes of tree and typed spec a byte: 1.3 GB here).
pub const MAX_FILE_SIZE: u64 = 4 << 20;

/// Checks an environment file's bytes, decoded as conda does (UTF-8 with or without a
/// byte-order mark, or UTF-16 with one).
pub fn check_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<Checked, SpecError> {
    check_bytes_in(bytes, path.as_ref(), None)
}

fn check_bytes_in(bytes: &[u8], path: &Path, folder: Option<&Path>) -> Result<Checked, SpecError> {
    let text = source::decode(bytes).map_err(|error| SpecError::Encoding {
        path: path.to_path_buf(),
        line: error.line,
        column: error.column,
        offset: error.offset,
    })?;
    Ok(check_text(&text, path, folder))
}

/// Reads and checks an environment file. Local pip paths (`./pkg`, `submodules/simple-knn`)
/// are looked for relative to the file's folder, where conda runs pip, and each one that is
/// not there is a warning.
pub fn check_path(path: impl AsRef<Path>) -> Result<Checked, SpecError> {
    let path = path.as_ref();
    let bytes = read_regular_file(path)?;
    let folder = match path.parent() {
        Some(parent) if parent.as_os_str().is_empty() => Path::new("."),
        Some(parent) => parent,
        None => Path::new("."),
    };
    check_bytes_in(&bytes, path, Some(folder))
}

/// Reads a regular file of at most [`MAX_FILE_SIZE`] bytes: the one way this crate reads an
/// environment file. The path is looked at before it is opened (opening a FIFO would block
/// until something writes to it) and the opened handle again, and no more than the limit is
/// read even from a file that grows or misstates its size (`/proc`).
fn read_regular_file(path: &Path) -> Result<Vec<u8>, SpecError> {
    use std::io::Read as _;

    let not_a_file = || SpecError::NotAFile {
        path: path.to_path_buf(),
    };
    let too_large = || SpecError::TooLarge {
        path: path.to_path_buf(),
        limit: MAX_FILE_SIZE,
    };
    if !fs_err::metadata(path).map_err(SpecError::Read)?.is_file() {
        return Err(not_a_file());
    }
    let file = fs_err::File::open(path).map_err(SpecError::Read)?;
    let metadata = file.metadata().map_err(SpecError::Read)?;
    if !metadata.is_file() {
        return Err(not_a_file());
    }
    if metadata.len() > MAX_FILE_SIZE {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(SpecError::Read)?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Parses environment-file text into a spec, or every error in it.
pub fn parse_str(text: &str, path: impl AsRef<Path>) -> Result<Parsed, SpecError> {
    check_str(text, path).into_result()
}

/// Reads an environment file into a spec, or every error in it.
pub fn read_path(path: impl AsRef<Path>) -> Result<Parsed, SpecError> {
    check_path(path)?.into_result()
}

/// Writes a spec to `path` as an environment file (see [`EnvironmentSpec::to_yaml`]).
pub fn write_path(spec: &EnvironmentSpec, path: impl Into<PathBuf>) -> Result<(), SpecError> {
    fs_err::write(path.into(), spec.to_yaml()).map_err(SpecError::Write)
}
