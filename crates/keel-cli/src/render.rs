//! Showing results: miette's graphical reports on stderr, JSON documents on stdout.

use std::io::{IsTerminal, Write as _};

use keel_spec::{Problem, Report, Severity};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource};

/// Writes one pretty-printed JSON document and a newline to stdout (every command's `--json`).
pub(crate) fn json(value: &impl serde::Serialize) -> miette::Result<()> {
    use miette::IntoDiagnostic as _;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)
        .into_diagnostic()
        .map_err(|error| error.wrap_err("failed to write JSON"))?;
    let _ = writeln!(stdout);
    Ok(())
}

/// keel's folder for `what` in the user's cache: `$XDG_CACHE_HOME/keel/<what>`, else
/// `~/.cache/keel/<what>` (the temporary folder when there is no home).
pub(crate) fn cache_dir(what: &str) -> std::path::PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir)
        .join("keel")
        .join(what)
}

/// Sets miette's report style once: colours only on a terminal that wants them.
pub(crate) fn install_hook() {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = miette::set_hook(Box::new(move |_| {
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        Box::new(GraphicalReportHandler::new_themed(theme))
    }));
}

/// One problem of a file as a miette diagnostic, labelled at its place in the file.
fn diagnostic(report: &Report, problem: &Problem) -> miette::Report {
    let mut diagnostic =
        MietteDiagnostic::new(problem.message()).with_severity(match problem.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        });
    if let Some(location) = problem.location {
        let label = format!("line {}, column {}", location.line, location.column);
        diagnostic =
            diagnostic.with_label(LabeledSpan::new(Some(label), location.offset, location.len));
    }
    if let Some(help) = &problem.help {
        diagnostic = diagnostic.with_help(help.clone());
    }
    miette::Report::new(diagnostic).with_source_code(NamedSource::new(
        report.path.display().to_string(),
        report.text.clone(),
    ))
}

/// Writes every problem of a report to stderr.
pub(crate) fn problems(report: &Report) {
    let mut stderr = std::io::stderr().lock();
    for problem in &report.problems {
        let _ = writeln!(stderr, "{:?}", diagnostic(report, problem));
    }
}

/// Writes an error that stops a command to stderr, with its causes.
pub(crate) fn error(error: &miette::Report) {
    let _ = writeln!(std::io::stderr().lock(), "{error:?}");
}
