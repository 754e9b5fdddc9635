//! Errors and warnings, each tied to a place in the file.

use std::fmt;
use std::path::PathBuf;

use pep508_rs::Pep508Error;
use rattler_conda_types::{ParseMatchSpecError, ParseSubdirError};
use serde::{Serialize, Serializer};

use crate::source::{Location, window, write_snippet};

/// How bad a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// conda would read the file, but something in it is likely a mistake.
    Warning,
    /// The file cannot be used as written.
    Error,
}

/// What is wrong, without where: [`Problem`] adds the place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The text is not YAML.
    #[error("invalid YAML: {message}")]
    Yaml {
        /// The YAML scanner's or parser's message.
        message: String,
    },
    /// The file holds no YAML document.
    #[error("the file is empty")]
    Empty,
    /// The file holds more than one YAML document.
    #[error("the file holds {count} YAML documents; an environment file holds one")]
    ManyDocuments {
        /// How many documents.
        count: usize,
    },
    /// The top level is not a mapping of sections.
    #[error(
        "expected a mapping of sections (`name:`, `channels:`, `dependencies:`) at the top level, found {found}"
    )]
    NotAMapping {
        /// What was found instead.
        found: &'static str,
    },
    /// A key appears twice in one mapping.
    #[error("duplicate key `{key}` (first on line {first_line})")]
    DuplicateKey {
        /// The key.
        key: String,
        /// The line of its first appearance.
        first_line: usize,
    },
    /// A value of the wrong shape.
    #[error("{field} must be {expected}, found {found}")]
    WrongType {
        /// What holds the value: `` `channels` `` or `a dependency`.
        field: String,
        /// What it must be.
        expected: &'static str,
        /// What it is.
        found: &'static str,
    },
    /// A dependency that is not a valid conda MatchSpec.
    #[error("invalid conda spec `{spec}`")]
    MatchSpec {
        /// The text as written.
        spec: String,
        /// rattler's reason.
        #[source]
        source: ParseMatchSpecError,
    },
    /// A pip line pip will refuse; conda reads the file and fails only when pip runs.
    #[error("pip will refuse `{line}`")]
    PipLine {
        /// The line as written.
        line: String,
        /// The PEP 508 parser's reason.
        #[source]
        source: Box<Pep508Error>,
    },
    /// Text in brackets after a conda package name that conda ignores (`tiled[all]`).
    #[error(
        "conda ignores `[{extras}]` after `{name}`: extras are a pip feature, conda installs plain `{name}`"
    )]
    IgnoredExtras {
        /// The package name.
        name: String,
        /// The bracket's content.
        extras: String,
    },
    /// A `platforms:` entry that is not a conda platform.
    #[error("unknown platform `{platform}`")]
    Platform {
        /// The entry as written.
        platform: String,
        /// rattler's reason.
        #[source]
        source: ParseSubdirError,
    },
    /// A top-level key conda does not know; conda ignores it with a warning.
    #[error("unknown section `{key}` is ignored")]
    UnknownKey {
        /// The key.
        key: String,
    },
    /// `pip:` written as a top-level key instead of a `- pip:` item under `dependencies`.
    #[error(
        "`pip:` is a top-level section here, so conda ignores it and installs none of its packages"
    )]
    TopLevelPip,
    /// A pip sub-section while `pip` itself is not a dependency.
    #[error("the pip section needs `pip`, which is not in the dependencies; conda adds it for you")]
    ImplicitPip,
    /// No `dependencies` section.
    #[error("no `dependencies` section: the environment will be empty")]
    NoDependencies,
    /// A sub-section for an installer neither conda nor keel runs.
    #[error("`{name}:` sections are not installed by conda or keel; kept as written")]
    UnknownSubSection {
        /// The sub-section's key.
        name: String,
    },
    /// A tab YAML allows but conda's YAML reader (ruamel, like PyYAML) refuses.
    #[error(
        "conda cannot read this tab: its YAML reader takes tabs only inside quotes and comments"
    )]
    CondaRefusesTab,
    /// A platform selector keel does not know.
    #[error("unknown platform selector `{condition}`: the line applies to no platform")]
    UnknownSelector {
        /// The selector's condition.
        condition: String,
    },
    /// A selector with a part that is not a platform (`py>=38`), which keel cannot decide
    /// when it locks.
    #[error(
        "keel cannot decide `{part}` of the selector `{condition}` when it locks: as with conda-lock, the line applies only where the platform names alone make the selector true"
    )]
    UndecidedSelector {
        /// The selector's condition.
        condition: String,
        /// Its first part that is not a platform name.
        part: String,
    },
    /// A dependency that conda's own MatchSpec refuses although rattler reads it.
    #[error("conda refuses `{spec}`: {reason}")]
    CondaRefusesSpec {
        /// The text as written.
        spec: String,
        /// conda's message.
        reason: String,
    },
    /// A dependency written over several lines whose later lines start with `- `: the list
    /// items below its first line were indented more, so YAML joined them into one string.
    #[error(
        "one dependency spans lines {first_line}-{last_line}: the `- ` items below line {first_line} became part of the string `{spec}`"
    )]
    SpansLines {
        /// The joined string.
        spec: String,
        /// Where it starts.
        first_line: usize,
        /// Where it ends.
        last_line: usize,
    },
    /// A `- pip:` section that a later one replaces: conda installs only the last.
    #[error(
        "conda installs only the last `- pip:` section (line {last_line}), nothing from this one"
    )]
    ReplacedPipSection {
        /// The line of the section conda installs.
        last_line: usize,
    },
    /// A local pip path that is not there, relative to the environment file's folder.
    #[error("`{path}` is not in the environment file's folder ({folder})")]
    MissingPipPath {
        /// The path as written.
        path: String,
        /// The folder it was looked for in.
        folder: String,
    },
    /// conda-lock's `platforms:` or `category:`, which conda ignores.
    #[error("conda ignores `{key}:` (a conda-lock key); keel and conda-lock read it")]
    CondaLockKey {
        /// The key.
        key: String,
    },
    /// Platform selectors, which conda ignores: it installs every such line everywhere
    /// (comment selectors) or none of them (mamba's `sel(...)` keys).
    #[error("{}", selectors_message(*comment, *mamba))]
    CondaIgnoresSelectors {
        /// How many `# [selector]` lines the file has.
        comment: usize,
        /// How many `sel(...):` lines.
        mamba: usize,
    },
}

fn selectors_message(comment: usize, mamba: usize) -> String {
    let mut parts = Vec::new();
    match comment {
        0 => {}
        1 => parts.push(
            "conda reads `# [selector]` as a comment and installs this line on every platform"
                .to_owned(),
        ),
        n => parts.push(format!(
            "conda reads `# [selector]` as a comment and installs these {n} lines (this one \
             first) on every platform"
        )),
    }
    match mamba {
        0 => {}
        1 => parts.push("conda installs nothing from the `sel(...):` line".to_owned()),
        n => parts.push(format!(
            "conda installs nothing from the {n} `sel(...):` lines"
        )),
    }
    format!(
        "{}; keel applies the selectors per platform, as conda-lock (and mamba) do",
        parts.join(", and ")
    )
}

/// One error or warning about an environment file, with where it is.
#[derive(Debug)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub kind: ProblemKind,
    /// Where; `None` for a problem of the whole file (an empty file).
    pub location: Option<Location>,
    /// What to do about it, where there is something to say.
    pub help: Option<String>,
}

impl Problem {
    pub(crate) fn error(kind: ProblemKind, location: Option<Location>) -> Self {
        Self {
            severity: Severity::Error,
            kind,
            location,
            help: None,
        }
    }

    pub(crate) fn warning(kind: ProblemKind, location: Option<Location>) -> Self {
        Self {
            severity: Severity::Warning,
            kind,
            location,
            help: None,
        }
    }

    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// The message with its causes, such as
    /// `invalid conda spec `x`: invalid version spec ...`.
    pub fn message(&self) -> String {
        let mut message = self.kind.to_string();
        let mut source = std::error::Error::source(&self.kind);
        while let Some(cause) = source {
            // pep508's message draws the line with carets below; keep its first line only.
            let text = cause.to_string();
            let first = text.lines().next().unwrap_or_default();
            if !message.contains(first) {
                message.push_str(": ");
                message.push_str(first);
            }
            source = cause.source();
        }
        message
    }
}

impl Serialize for Problem {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            severity: Severity,
            message: String,
            line: Option<usize>,
            column: Option<usize>,
            help: Option<&'a str>,
        }
        Json {
            severity: self.severity,
            message: self.message(),
            line: self.location.map(|l| l.line),
            column: self.location.map(|l| l.column),
            help: self.help.as_deref(),
        }
        .serialize(s)
    }
}

/// Every problem found in one file, with the file's text so that each can be shown in place.
///
/// Its `Display` is what a person reads: each problem as `error: …` with `--> file:line:col`,
/// the line and a caret under the offending text.
#[derive(Debug)]
pub struct Report {
    /// The file.
    pub path: PathBuf,
    /// Its decoded text.
    pub text: String,
    /// Errors and warnings in the order of the file.
    pub problems: Vec<Problem>,
}

impl Report {
    /// The errors.
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Warning)
    }

    /// Whether the file has errors.
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// The byte range of [`text`](Self::text) a snippet of `location` shows: its line, cut to
    /// at most 80 characters before the offending text, 80 of it and 80 after, so that a tool
    /// drawing snippets of its own (keel's CLI, through miette) pays no more for a place on a
    /// 1 MB line than on a short one. The range holds `location.offset` and lies on
    /// character boundaries.
    ///
    /// ```
    /// let line = format!("name: {}: x", "n".repeat(100_000));
    /// let error = keel_spec::parse_str(&line, "long.yml").unwrap_err();
    /// let report = error.report().unwrap();
    /// let location = report.problems[0].location.unwrap();
    /// let range = report.snippet_range(&location);
    /// assert!(range.contains(&location.offset) && range.len() < 400);
    /// ```
    pub fn snippet_range(&self, location: &Location) -> std::ops::Range<usize> {
        let window = window(&self.text, location);
        window.start..window.end.max(window.offset + 1).min(self.text.len())
    }

    /// Writes one problem in the style of rustc.
    pub fn write_problem(&self, f: &mut fmt::Formatter<'_>, problem: &Problem) -> fmt::Result {
        let label = match problem.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        writeln!(f, "{label}: {}", problem.message())?;
        match &problem.location {
            Some(location) => {
                writeln!(
                    f,
                    "  --> {}:{}:{}",
                    self.path.display(),
                    location.line,
                    location.column
                )?;
                write_snippet(f, &self.text, location)?;
            }
            None => write!(f, "  --> {}", self.path.display())?,
        }
        if let Some(help) = &problem.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            self.write_problem(f, problem)?;
        }
        Ok(())
    }
}

/// Why an environment file could not be read into a spec.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The file could not be read.
    #[error("failed to read environment file")]
    Read(#[source] std::io::Error),
    /// The file could not be written.
    #[error("failed to write environment file")]
    Write(#[source] std::io::Error),
    /// The file is neither UTF-8 nor UTF-16 text.
    #[error(
        "{}:{line}:{column}: not UTF-8 or UTF-16 text (byte {offset} does not decode)",
        path.display()
    )]
    Encoding {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the first byte that does not decode.
        line: usize,
        /// Its 1-based column, in characters.
        column: usize,
        /// Its offset in bytes from the start of the file.
        offset: usize,
    },
    /// The path names something other than a regular file (a folder, a FIFO, a device),
    /// which keel does not read, so that it never blocks on one.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is larger than [`MAX_FILE_SIZE`](crate::MAX_FILE_SIZE).
    #[error("{} is larger than {limit} bytes, the most keel reads as an environment file", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// The file has errors; the report holds them all, warnings included.
    #[error("{} has {} error{}:\n{report}", report.path.display(), report.errors().count(), if report.errors().count() == 1 { "" } else { "s" })]
    Invalid {
        /// Every problem found.
        report: Box<Report>,
    },
}

impl SpecError {
    /// The report of an invalid file.
    pub fn report(&self) -> Option<&Report> {
        match self {
            SpecError::Invalid { report } => Some(report),
            _ => None,
        }
    }
}
