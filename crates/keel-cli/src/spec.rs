//! `keel spec check`.

use std::io::Write as _;
use std::path::PathBuf;

use keel_spec::{Checked, EnvironmentSpec, Problem, SpecError};

use serde::Serialize;

use crate::args::CheckArgs;
use crate::exit::Exit;
use crate::render;

/// Checked settings of `keel spec check`.
pub(crate) struct CheckSettings {
    files: Vec<PathBuf>,
    json: bool,
    strict: bool,
}

impl From<CheckArgs> for CheckSettings {
    fn from(args: CheckArgs) -> Self {
        Self {
            files: args.files,
            json: args.json,
            strict: args.strict,
        }
    }
}

#[derive(Serialize)]
struct FileResult<'a> {
    path: String,
    valid: bool,
    errors: usize,
    warnings: usize,
    /// Why the file could not be read at all (missing, not text).
    read_error: Option<String>,
    problems: &'a [Problem],
    spec: Option<&'a EnvironmentSpec>,
}

/// Checks each file; exit 2 when any is invalid.
pub(crate) fn check(settings: CheckSettings) -> miette::Result<Exit> {
    let outcomes: Vec<(PathBuf, Result<Checked, SpecError>)> = settings
        .files
        .iter()
        .map(|path| (path.clone(), keel_spec::check_path(path)))
        .collect();

    let results: Vec<FileResult<'_>> = outcomes
        .iter()
        .map(|(path, outcome)| match outcome {
            Ok(checked) => {
                let errors = checked.report.errors().count();
                let warnings = checked.report.warnings().count();
                FileResult {
                    path: path.display().to_string(),
                    valid: errors == 0 && !(settings.strict && warnings > 0),
                    errors,
                    warnings,
                    read_error: None,
                    problems: &checked.report.problems,
                    spec: checked.spec.as_ref(),
                }
            }
            Err(error) => FileResult {
                path: path.display().to_string(),
                valid: false,
                errors: 1,
                warnings: 0,
                read_error: Some(error_chain(error)),
                problems: &[],
                spec: None,
            },
        })
        .collect();

    let mut stdout = std::io::stdout().lock();
    if settings.json {
        render::json(&results)?;
    } else {
        for (_, outcome) in &outcomes {
            match outcome {
                Ok(checked) => render::problems(&checked.report),
                Err(error) => render::error(&miette::Report::msg(error_chain(error))),
            }
        }
        let _ = write!(stdout, "{}", table(&results));
    }
    let all_valid = results.iter().all(|r| r.valid);
    Ok(if all_valid { Exit::Ok } else { Exit::BadInput })
}

/// An error with its causes on one line: `failed to read environment file: x.yml: No such file`.
fn error_chain(error: &SpecError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The most characters a cell of the summary table shows.
const MAX_CELL: usize = 120;

/// The human summary: one row a file.
fn table(results: &[FileResult<'_>]) -> String {
    let mut rows = vec![[
        "FILE".to_owned(),
        "STATUS".to_owned(),
        "ERRORS".to_owned(),
        "WARNINGS".to_owned(),
        "NAME".to_owned(),
        "CHANNELS".to_owned(),
        "CONDA".to_owned(),
        "PIP".to_owned(),
    ]];
    for result in results {
        let status = match (result.valid, result.read_error.is_some(), result.errors) {
            (_, true, _) => "unreadable",
            (true, _, _) if result.warnings > 0 => "ok (warnings)",
            (true, _, _) => "ok",
            (false, _, 0) => "invalid (strict)",
            (false, _, _) => "invalid",
        };
        let (name, channels, conda, pip) = match result.spec {
            Some(spec) => (
                spec.name.clone().unwrap_or_else(|| "-".to_owned()),
                spec.channels.len().to_string(),
                spec.conda_dependencies().count().to_string(),
                spec.pip_entries().count().to_string(),
            ),
            None => (
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
            ),
        };
        rows.push([
            result.path.clone(),
            status.to_owned(),
            result.errors.to_string(),
            result.warnings.to_string(),
            name,
            channels,
            conda,
            pip,
        ]);
    }
    // A cell as long as a hostile `name:` would be a width `format!` refuses (over 65,535)
    // and a table no one reads: cells are cut to `MAX_CELL` characters.
    for row in &mut rows {
        for cell in row.iter_mut() {
            if cell.chars().count() > MAX_CELL {
                *cell = cell.chars().take(MAX_CELL - 1).chain(['…']).collect();
            }
        }
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening issue #13: a 65,536-character `name:` made the summary table panic
    /// (`format!` refuses a width over 65,535).
    #[test]
    fn table_with_a_65536_character_name_is_cut_not_a_panic() {
        let text = format!("name: {}\ndependencies: [python]\n", "n".repeat(65_536));
        let parsed = keel_spec::parse_str(&text, "long-name.yml").unwrap();
        let result = FileResult {
            path: "long-name.yml".to_owned(),
            valid: true,
            errors: 0,
            warnings: 0,
            read_error: None,
            problems: &[],
            spec: Some(&parsed.spec),
        };
        let table = table(&[result]);
        let row = table.lines().nth(1).unwrap();
        assert!(
            row.contains(&format!("{}…", "n".repeat(MAX_CELL - 1))),
            "{row}"
        );
        assert!(row.chars().count() < 2 * MAX_CELL, "{row}");
    }
}
