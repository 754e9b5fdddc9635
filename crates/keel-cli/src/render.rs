//! Showing results: miette's graphical reports on stderr, JSON documents on stdout.

use std::io::{IsTerminal, Write as _};
use std::sync::Arc;

use keel_spec::{Problem, Report, Severity};
use miette::{
    GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, MietteError,
    MietteSpanContents, SourceCode, SourceSpan, SpanContents,
};

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

/// The part of a file miette draws for one problem: the window around its place that
/// keel-spec's `Report::snippet_range` gives, with the line and column that window starts at.
/// miette reads only this, so a problem on a 1 MB line costs what one on a short line does,
/// and no column it computes passes the width `format!` accepts (65,535).
#[derive(Debug)]
struct Excerpt {
    name: String,
    text: Arc<str>,
    range: std::ops::Range<usize>,
    /// 0-based line and column (in characters) of `range.start`.
    line: usize,
    column: usize,
}

impl SourceCode for Excerpt {
    fn read_span<'a>(
        &'a self,
        _span: &SourceSpan,
        _context_lines_before: usize,
        _context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let data = self.text.get(self.range.clone()).unwrap_or_default();
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            data.as_bytes(),
            SourceSpan::new(self.range.start.into(), data.len()),
            self.line,
            self.column,
            1,
        )))
    }
}

/// One problem of a file as a miette diagnostic, labelled at its place in the file.
fn diagnostic(report: &Report, text: &Arc<str>, problem: &Problem) -> miette::Report {
    // A problem without a place is drawn without the file's snippet (and so without its name):
    // the message names the file itself.
    let message = match problem.location {
        Some(_) => problem.message(),
        None => format!("{}: {}", report.path.display(), problem.message()),
    };
    let mut diagnostic = MietteDiagnostic::new(message).with_severity(match problem.severity {
        Severity::Error => miette::Severity::Error,
        Severity::Warning => miette::Severity::Warning,
    });
    if let Some(help) = &problem.help {
        diagnostic = diagnostic.with_help(help.clone());
    }
    let Some(location) = problem.location else {
        return miette::Report::new(diagnostic);
    };
    let label = format!("line {}, column {}", location.line, location.column);
    let range = report.snippet_range(&location);
    let offset = location
        .offset
        .clamp(range.start, range.end.max(range.start));
    let len = location.len.min(range.end.saturating_sub(offset));
    diagnostic = diagnostic.with_label(LabeledSpan::new(Some(label), offset, len));
    let before = text
        .get(range.start..offset)
        .map_or(0, |s| s.chars().count());
    let excerpt = Excerpt {
        name: report.path.display().to_string(),
        text: Arc::clone(text),
        range,
        line: location.line.saturating_sub(1),
        column: location.column.saturating_sub(1).saturating_sub(before),
    };
    miette::Report::new(diagnostic).with_source_code(excerpt)
}

/// Writes every problem of a report to stderr.
pub(crate) fn problems(report: &Report) {
    let text: Arc<str> = Arc::from(report.text.as_str());
    let mut stderr = std::io::stderr().lock();
    for problem in &report.problems {
        let _ = writeln!(stderr, "{:?}", diagnostic(report, &text, problem));
    }
}

/// Writes an error that stops a command to stderr, with its causes.
pub(crate) fn error(error: &miette::Report) {
    let _ = writeln!(std::io::stderr().lock(), "{error:?}");
}
