//! Writing a spec back as an `environment.yml` that conda reads, in the order it was written.

use std::fmt::Write as _;

use crate::model::{DependencyEntry, EnvironmentSpec};
use crate::selector::{Selector, SelectorStyle};

impl EnvironmentSpec {
    /// The spec as `environment.yml` text, in the layout `conda env export` uses: channels and
    /// dependencies in their order, pip lines under `- pip:`, comment selectors kept as
    /// comments. Every string is quoted where YAML would otherwise read it as something else.
    ///
    /// ```
    /// let parsed = keel_spec::parse_str("dependencies: [python=3.10, 'yes']", "env.yml").unwrap();
    /// assert_eq!(parsed.spec.to_yaml(), "dependencies:\n  - python=3.10\n  - 'yes'\n");
    /// ```
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        if let Some(name) = &self.name {
            let _ = writeln!(out, "name: {}", scalar(name));
        }
        if !self.channels.is_empty() {
            out.push_str("channels:\n");
            for channel in &self.channels {
                let _ = writeln!(out, "  - {}", scalar(&channel.source));
            }
        }
        if !self.dependencies.is_empty() {
            out.push_str("dependencies:\n");
            for entry in &self.dependencies {
                match entry {
                    DependencyEntry::Conda(dependency) => match &dependency.selector {
                        Some(Selector {
                            style: SelectorStyle::Mamba,
                            condition,
                        }) => {
                            let key = format!("sel({condition})");
                            let _ = writeln!(
                                out,
                                "  - {}: {}",
                                scalar(&key),
                                scalar(&dependency.source)
                            );
                        }
                        selector => {
                            let _ = writeln!(
                                out,
                                "  - {}{}",
                                scalar(&dependency.source),
                                comment(selector.as_ref())
                            );
                        }
                    },
                    DependencyEntry::Pip(section) => {
                        if section.entries.is_empty() {
                            out.push_str("  - pip: []\n");
                            continue;
                        }
                        out.push_str("  - pip:\n");
                        for entry in &section.entries {
                            let _ = writeln!(
                                out,
                                "      - {}{}",
                                scalar(&entry.source),
                                comment(entry.selector.as_ref())
                            );
                        }
                    }
                    DependencyEntry::Other(section) => {
                        if section.entries.is_empty() {
                            let _ = writeln!(out, "  - {}: []", scalar(&section.name));
                            continue;
                        }
                        let _ = writeln!(out, "  - {}:", scalar(&section.name));
                        for entry in &section.entries {
                            let _ = writeln!(out, "      - {}", scalar(entry));
                        }
                    }
                }
            }
        }
        if !self.variables.is_empty() {
            out.push_str("variables:\n");
            for (name, value) in &self.variables {
                let _ = writeln!(out, "  {}: {}", scalar(name), scalar(value));
            }
        }
        if let Some(prefix) = &self.prefix {
            let _ = writeln!(out, "prefix: {}", scalar(prefix));
        }
        if !self.platforms.is_empty() {
            out.push_str("platforms:\n");
            for platform in &self.platforms {
                let _ = writeln!(out, "  - {}", scalar(platform.as_str()));
            }
        }
        if let Some(category) = &self.category {
            let _ = writeln!(out, "category: {}", scalar(category));
        }
        if out.is_empty() {
            // An empty file is not an environment file (conda and keel refuse it); an empty
            // dependency list is.
            out.push_str("dependencies: []\n");
        }
        out
    }
}

fn comment(selector: Option<&Selector>) -> String {
    match selector {
        Some(Selector {
            style: SelectorStyle::Comment,
            condition,
        }) => format!("  # [{condition}]"),
        _ => String::new(),
    }
}

/// One string as a YAML scalar on a single line: plain where YAML reads it back as the same
/// string, quoted otherwise.
fn scalar(value: &str) -> String {
    if value.chars().any(|c| c.is_control()) || value.contains('\u{feff}') {
        return double_quoted(value);
    }
    if looks_like_yaml11_value(value) {
        return format!("'{value}'");
    }
    // serde_yaml quotes the strings a YAML 1.2 reader would take for something else
    // (`1.10`, `true`, `*`, `- x`, `a: b`, ...).
    match serde_yaml::to_string(value) {
        Ok(text) if !text.trim_end_matches('\n').contains('\n') => {
            text.trim_end_matches('\n').to_owned()
        }
        _ => double_quoted(value),
    }
}

/// Strings that YAML 1.1 readers (PyYAML, which older conda used) take for booleans, null or
/// numbers although YAML 1.2 reads them as strings: `yes`, `off`, `1_000`, `1:30`.
fn looks_like_yaml11_value(value: &str) -> bool {
    const WORDS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF", "true", "True", "TRUE", "false", "False", "FALSE", "null", "Null", "NULL", "~",
    ];
    WORDS.contains(&value)
        || (value.chars().any(|c| c.is_ascii_digit())
            && value.chars().all(|c| {
                c.is_ascii_digit() || matches!(c, '_' | '.' | ':' | '+' | '-' | 'e' | 'E')
            }))
}

fn double_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || c == '\u{feff}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_what_yaml_would_misread() {
        assert_eq!(scalar("python=3.10"), "python=3.10");
        assert_eq!(scalar("1.10"), "'1.10'");
        assert_eq!(scalar("*"), "'*'");
        assert_eq!(scalar("a\nb"), "\"a\\nb\"");
        assert_eq!(scalar(""), "''");
    }
}
