//! The lines of a `- pip:` sub-section.
//!
//! conda writes these lines to a temporary requirements file and runs `pip install -r` on it, so
//! a line may be anything a requirements file holds: a PEP 508 requirement, an option such as
//! `--extra-index-url`, an editable install, a URL or a local path.

use std::str::FromStr;

use pep508_rs::{Pep508Error, Pep508ErrorSource, Requirement};
use serde::{Serialize, Serializer};

use crate::selector::Selector;
use crate::source::Location;

/// One line of the pip sub-section.
#[derive(Debug, Clone, Serialize)]
pub struct PipEntry {
    /// The text as written.
    pub source: String,
    /// What the line is.
    pub kind: PipEntryKind,
    /// conda-lock's `# [platform]` comment selector on the line.
    pub selector: Option<Selector>,
    /// Where it was written.
    #[serde(skip)]
    pub location: Option<Location>,
}

impl PipEntry {
    /// Reads one pip line as written in an environment file. A line pip would refuse becomes
    /// [`PipEntryKind::Invalid`] with pip's reason; nothing is lost.
    pub fn parse(line: &str) -> Self {
        let kind = classify(line).unwrap_or_else(|error| PipEntryKind::Invalid {
            reason: error.error.message.to_string(),
        });
        Self {
            source: line.to_owned(),
            kind,
            selector: None,
            location: None,
        }
    }
}

impl PartialEq for PipEntry {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.kind == other.kind && self.selector == other.selector
    }
}

/// What a pip line is. Anything but a [`PipEntryKind::Requirement`] is kept as written and
/// handed to pip (or uv) unchanged.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "kebab-case")]
pub enum PipEntryKind {
    /// A PEP 508 requirement: `transformers==4.30.0`, `torch @ https://…`, with the
    /// per-requirement options pip allows after it (`--hash=sha256:…`).
    Requirement {
        /// The requirement.
        #[serde(serialize_with = "serialize_requirement")]
        requirement: Box<Requirement>,
        /// Options after it, such as `--hash=sha256:…`, as written.
        options: Vec<String>,
    },
    /// `-e TARGET` / `--editable TARGET`: an editable install of a path or VCS URL.
    Editable(String),
    /// A bare URL: `git+https://…@v1`, `https://…/pkg.whl`.
    Url(String),
    /// A local path: `.`, `./module`, `../pkg.whl`, `/abs/dir`.
    Path(String),
    /// `-r FILE` / `--requirement FILE`: lines of another requirements file.
    RequirementsFile(String),
    /// `-c FILE` / `--constraint FILE`: constraints from another file.
    ConstraintsFile(String),
    /// A line pip will refuse (such as `jupyterlab=1.0.0`), kept as written: conda reads the
    /// file and only pip fails. `reason` is the PEP 508 parser's message.
    Invalid {
        /// Why pip refuses it.
        reason: String,
    },
    /// An option such as `--extra-index-url URL`, `-f DIR`, `--pre`.
    Option {
        /// The option as written, such as `--extra-index-url` or `-f`.
        name: String,
        /// Its value, if it takes one.
        value: Option<String>,
    },
}

/// Options a requirements file may hold that take a value.
const OPTIONS_WITH_VALUE: &[&str] = &[
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "--trusted-host",
    "--no-binary",
    "--only-binary",
    "--config-settings",
    "--global-option",
    "--use-feature",
];

/// Options a requirements file may hold that take no value.
const FLAG_OPTIONS: &[&str] = &["--no-index", "--pre", "--prefer-binary", "--require-hashes"];

/// A pip line that is none of the forms pip accepts.
#[derive(Debug)]
pub(crate) struct PipLineError {
    pub(crate) error: Box<Pep508Error>,
}

/// Classifies one pip line. `Err` carries the PEP 508 error for a line that looks like a
/// requirement but is not one (`jupyterlab=1.0.0`).
pub(crate) fn classify(line: &str) -> Result<PipEntryKind, PipLineError> {
    let line = line.trim();
    if let Some((name, value)) = split_option(line) {
        let value = value.map(str::to_owned);
        return Ok(match (name, value) {
            ("-e" | "--editable", Some(value)) => PipEntryKind::Editable(value),
            ("-r" | "--requirement", Some(value)) => PipEntryKind::RequirementsFile(value),
            ("-c" | "--constraint", Some(value)) => PipEntryKind::ConstraintsFile(value),
            (name, value) => PipEntryKind::Option {
                name: name.to_owned(),
                value,
            },
        });
    }
    if is_url(line) {
        return Ok(PipEntryKind::Url(line.to_owned()));
    }
    if is_path(line) {
        return Ok(PipEntryKind::Path(line.to_owned()));
    }
    let (requirement, options) = split_requirement_options(line);
    let parsed = check_name_end(requirement)
        .and_then(|()| Requirement::from_str(requirement))
        .map(|requirement| PipEntryKind::Requirement {
            requirement: Box::new(requirement),
            options,
        });
    match parsed {
        Ok(kind) => Ok(kind),
        // pip reads a line that is no requirement as a local path when it "looks like" one
        // (`_looks_like_path` in pip's `req/constructors.py`: a path separator in it, or a
        // leading `.`), so `submodules/simple-knn` is a folder, relative to where pip runs:
        // conda runs it in the environment file's folder.
        Err(_) if looks_like_path(line) => Ok(PipEntryKind::Path(line.to_owned())),
        Err(error) => Err(PipLineError {
            error: Box::new(error),
        }),
    }
}

/// pip's `_looks_like_path` on POSIX: a `/` in the line (`os.path.sep`; Windows adds the
/// backslash), or a leading `.`.
fn looks_like_path(line: &str) -> bool {
    line.contains('/') || line.starts_with('.')
}

/// The folder or file a local pip line names, relative to the environment file's folder, for
/// the check that it is there: a [`PipEntryKind::Path`] or a local `-e` target, with pip's
/// trailing `[extras]` cut (`_strip_extras`). `None` for URLs, absolute and `~` paths.
pub(crate) fn relative_local_path(kind: &PipEntryKind) -> Option<&str> {
    let target = match kind {
        PipEntryKind::Path(path) => path.as_str(),
        PipEntryKind::Editable(target)
            if !target.contains("://") && !target.starts_with("file:") =>
        {
            target.as_str()
        }
        _ => return None,
    };
    let target = match target
        .strip_suffix(']')
        .and_then(|t| t.rfind('[').map(|i| &t[..i]))
    {
        Some(without_extras) if !without_extras.is_empty() => without_extras,
        _ => target,
    };
    let absolute =
        target.starts_with(['/', '\\', '~']) || (target.len() > 2 && target.as_bytes()[1] == b':');
    (!absolute).then_some(target)
}

/// Splits `--name value`, `--name=value` or `-nVALUE` for a known option.
fn split_option(line: &str) -> Option<(&str, Option<&str>)> {
    if !line.starts_with('-') {
        return None;
    }
    let (head, tail) = match line.find(|c: char| c == '=' || c.is_whitespace()) {
        Some(i) => (&line[..i], Some(line[i + 1..].trim())),
        None => (line, None),
    };
    let with_value = [
        "-e",
        "--editable",
        "-r",
        "--requirement",
        "-c",
        "--constraint",
    ]
    .iter()
    .chain(OPTIONS_WITH_VALUE)
    .find(|option| **option == head);
    if let Some(option) = with_value {
        return Some((option, tail.filter(|v| !v.is_empty())));
    }
    if let Some(option) = FLAG_OPTIONS.iter().find(|option| **option == head) {
        return Some((option, tail.filter(|v| !v.is_empty())));
    }
    // Short options glued to their value: `-e.`, `-rrequirements.txt`.
    for short in ["-e", "-r", "-c", "-i", "-f"] {
        if let Some(value) = line.strip_prefix(short).filter(|v| !v.is_empty()) {
            return Some((short, Some(value.trim())));
        }
    }
    // An option pip knows and keel does not name: kept as written.
    Some((head, tail.filter(|v| !v.is_empty())))
}

/// pep508_rs 0.9 panics on a name that ends in `.`, `-` or `_` when more text follows it
/// (`foo-==1.0`); refuse those names first, with the message it gives at the end of a line.
fn check_name_end(requirement: &str) -> Result<(), Pep508Error> {
    let start = requirement.len() - requirement.trim_start().len();
    let rest = &requirement[start..];
    let len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        .unwrap_or(rest.len());
    match rest[..len].chars().last() {
        Some(last @ ('.' | '-' | '_')) => Err(Pep508Error {
            message: Pep508ErrorSource::String(format!(
                "Package name must end with an alphanumeric character, not '{last}'"
            )),
            start: start + len - 1,
            len: 1,
            input: requirement.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Splits pip's per-requirement options (`--hash`, `--config-settings`, `--global-option`)
/// off the end of a requirement line.
fn split_requirement_options(line: &str) -> (&str, Vec<String>) {
    let mut cut = None;
    for (i, _) in line.match_indices("--") {
        let preceded_by_space = line[..i].ends_with(char::is_whitespace);
        let option = &line[i..];
        if preceded_by_space
            && [
                "--hash",
                "--config-settings",
                "--global-option",
                "--install-option",
            ]
            .iter()
            .any(|name| option.starts_with(name))
        {
            cut = Some(i);
            break;
        }
    }
    match cut {
        Some(i) => (
            line[..i].trim_end(),
            line[i..].split_whitespace().map(str::to_owned).collect(),
        ),
        None => (line, Vec::new()),
    }
}

fn is_url(line: &str) -> bool {
    let scheme_end = line.find("://");
    scheme_end.is_some_and(|end| {
        let scheme = &line[..end];
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
    }) || line.starts_with("file:")
}

fn is_path(line: &str) -> bool {
    line == "."
        || line == ".."
        || line.starts_with("./")
        || line.starts_with("../")
        || line.starts_with('/')
        || line.starts_with("~/")
        || line.starts_with(".\\")
        || (line.len() > 2 && line.as_bytes()[1] == b':' && line.as_bytes()[2] == b'\\')
        || ((line.ends_with(".whl") || line.ends_with(".tar.gz") || line.ends_with(".zip"))
            && !line.contains(' ')
            && !line.contains('@'))
}

fn serialize_requirement<S: Serializer>(
    requirement: &Requirement,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&requirement.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_requirements_file_lines() {
        let kind = |line: &str| classify(line).unwrap();
        assert!(matches!(
            kind("transformers==4.30.0"),
            PipEntryKind::Requirement { .. }
        ));
        assert!(matches!(
            kind("requests[security]>=2; python_version > '3'"),
            PipEntryKind::Requirement { .. }
        ));
        assert!(matches!(
            kind("torch @ https://x/torch.whl"),
            PipEntryKind::Requirement { .. }
        ));
        let PipEntryKind::Requirement {
            requirement,
            options,
        } = kind("flit-core === 3.9.0 --hash=sha256:1234")
        else {
            panic!("not a requirement")
        };
        assert_eq!(requirement.name.to_string(), "flit-core");
        assert_eq!(options, ["--hash=sha256:1234"]);
        assert_eq!(kind("-e ."), PipEntryKind::Editable(".".into()));
        assert_eq!(
            kind("--editable=./module"),
            PipEntryKind::Editable("./module".into())
        );
        assert_eq!(
            kind("--extra-index-url https://download.pytorch.org/whl/cu118"),
            PipEntryKind::Option {
                name: "--extra-index-url".into(),
                value: Some("https://download.pytorch.org/whl/cu118".into())
            }
        );
        assert_eq!(
            kind("-f ./wheels"),
            PipEntryKind::Option {
                name: "-f".into(),
                value: Some("./wheels".into())
            }
        );
        assert_eq!(
            kind("-r other.txt"),
            PipEntryKind::RequirementsFile("other.txt".into())
        );
        assert_eq!(
            kind("git+https://github.com/a/b@v2.0b2"),
            PipEntryKind::Url("git+https://github.com/a/b@v2.0b2".into())
        );
        assert_eq!(kind("./module"), PipEntryKind::Path("./module".into()));
        // pip's rule: a separator or a leading `.` makes a line that is no requirement a path.
        assert_eq!(
            kind("submodules/simple-knn"),
            PipEntryKind::Path("submodules/simple-knn".into())
        );
        assert_eq!(
            kind(".hidden-pkg"),
            PipEntryKind::Path(".hidden-pkg".into())
        );
        assert!(matches!(
            kind("torch @ https://x/torch.whl"),
            PipEntryKind::Requirement { .. }
        ));
        assert_eq!(
            kind("--pre"),
            PipEntryKind::Option {
                name: "--pre".into(),
                value: None
            }
        );
    }

    /// Found by the round-trip proptest: pep508_rs 0.9.2 panics on `b-_7--__==1.0`.
    #[test]
    fn regression_name_ending_in_separator_does_not_panic() {
        for line in ["b-_7--__==1.0", "foo-==1", "foo. >=1", "foo_"] {
            let error = classify(line).unwrap_err();
            assert!(
                error.error.message.to_string().contains("alphanumeric"),
                "{line}"
            );
        }
    }

    #[test]
    fn single_equals_is_not_a_requirement() {
        let error = classify("jupyterlab=1.0.0").unwrap_err();
        assert!(error.error.to_string().contains('='), "{}", error.error);
    }
}
