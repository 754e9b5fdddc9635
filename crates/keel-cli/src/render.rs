//! Showing problems to people: miette's graphical reports on stderr.

use std::io::{IsTerminal, Write as _};

use keel_spec::{Problem, Report, Severity};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource};

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
