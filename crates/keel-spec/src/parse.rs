//! From a YAML tree to an [`EnvironmentSpec`], collecting every problem on the way.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use indexmap::IndexMap;
use rattler_conda_types::{MatchSpec, ParseStrictness, Subdir};
use yaml_rust2::scanner::TScalarStyle;

use crate::conda;
use crate::error::{Problem, ProblemKind, Severity};
use crate::model::{
    ChannelEntry, ChannelKind, CondaDependency, DependencyEntry, EnvironmentSpec, OtherSection,
    PipSection,
};
use crate::pip::{self, PipEntry};
use crate::selector::{self, Selector, SelectorStyle};
use crate::source::{Location, SourceText};
use crate::yaml::{self, Node, NodeKind};

/// The top-level keys conda reads, plus conda-lock's `platforms` and `category`.
const KNOWN_KEYS: &[&str] = &[
    "name",
    "channels",
    "dependencies",
    "variables",
    "prefix",
    "platforms",
    "category",
];

pub(crate) struct Parser<'a> {
    source: SourceText<'a>,
    text: &'a str,
    problems: Vec<Problem>,
    /// The environment file's folder, where local pip paths are looked for; `None` for text
    /// that is not read from a file.
    folder: Option<&'a Path>,
    /// Where each platform selector was written, and how.
    selectors: Vec<(Location, SelectorStyle)>,
}

impl<'a> Parser<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            source: SourceText::new(text),
            text,
            problems: Vec::new(),
            folder: None,
            selectors: Vec::new(),
        }
    }

    /// Looks for the local paths of pip lines in `folder` (the environment file's), as conda
    /// runs pip there.
    pub(crate) fn in_folder(mut self, folder: &'a Path) -> Self {
        self.folder = Some(folder);
        self
    }

    /// Parses the text; the spec is `None` when there are errors.
    pub(crate) fn parse(mut self) -> (Option<EnvironmentSpec>, Vec<Problem>) {
        let spec = self.document();
        let mut problems = self.problems;
        problems.sort_by_key(|p| p.location.map(|l| (l.line, l.column)));
        let ok = !problems.iter().any(|p| p.severity == Severity::Error);
        (spec.filter(|_| ok), problems)
    }

    fn location(&self, node: &Node) -> Location {
        if node.is_null() {
            // An empty value is marked where the next token starts; point at the `-` or `:`
            // that introduced it instead.
            for line in (node.mark.line.saturating_sub(3).max(1)..=node.mark.line).rev() {
                if let Some(column) = self.source.trailing_indicator(line) {
                    return self.source.location(line, column, 1);
                }
            }
        }
        self.source
            .location(node.mark.line, node.mark.column, node.width())
    }

    fn error(&mut self, kind: ProblemKind, node: &Node) {
        let location = self.location(node);
        self.problems.push(Problem::error(kind, Some(location)));
    }

    fn wrong_type(&mut self, field: &str, expected: &'static str, node: &Node) -> Option<()> {
        self.error(
            ProblemKind::WrongType {
                field: field.to_owned(),
                expected,
                found: node.describe(),
            },
            node,
        );
        None
    }

    fn document(&mut self) -> Option<EnvironmentSpec> {
        let documents = match yaml::load(self.text) {
            Ok(documents) => documents,
            Err(error) => {
                self.syntax_error(error);
                return None;
            }
        };
        let root = match documents.as_slice() {
            [] => {
                self.problems.push(
                    Problem::error(ProblemKind::Empty, None)
                        .with_help("an environment file needs at least `dependencies:`"),
                );
                return None;
            }
            [root] => root,
            [_, second, ..] => {
                let count = documents.len();
                let marker = (1..=second.mark.line)
                    .rev()
                    .find(|line| self.source.line(*line).starts_with("---"));
                let location = match marker {
                    Some(line) => self.source.location(line, 1, 3),
                    None => self.location(second),
                };
                self.problems.push(
                    Problem::error(ProblemKind::ManyDocuments { count }, Some(location))
                        .with_help("keep one environment per file"),
                );
                return None;
            }
        };
        let NodeKind::Mapping(entries) = &root.kind else {
            let location = self.location(root);
            let mut problem = Problem::error(
                ProblemKind::NotAMapping {
                    found: root.describe(),
                },
                Some(location),
            );
            if matches!(root.kind, NodeKind::Scalar { .. }) {
                problem = problem.with_help(
                    "this looks like a requirements.txt; an environment.yml lists packages under \
                     `dependencies:` (pip requirements under `- pip:`)",
                );
            }
            self.problems.push(problem);
            return None;
        };

        self.tabs_conda_refuses();
        let mut spec = EnvironmentSpec::default();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut has_dependencies = false;
        for (key_node, value) in entries {
            let Some(key) = key_node.as_str().map(str::to_owned) else {
                self.wrong_type("a top-level key", "a string", key_node);
                continue;
            };
            if let Some(first_line) = seen.insert(key.clone(), key_node.mark.line) {
                self.error(
                    ProblemKind::DuplicateKey {
                        key: key.clone(),
                        first_line,
                    },
                    key_node,
                );
                continue;
            }
            match key.as_str() {
                "name" => spec.name = self.string("name", value),
                "prefix" => spec.prefix = self.string("prefix", value),
                "category" => {
                    self.conda_lock_key(key_node, "category");
                    spec.category = self.string("category", value);
                }
                "channels" => spec.channels = self.channels(value),
                "dependencies" => {
                    has_dependencies = true;
                    spec.dependencies = self.dependencies(value);
                }
                "variables" => spec.variables = self.variables(value),
                "platforms" => {
                    self.conda_lock_key(key_node, "platforms");
                    spec.platforms = self.platforms(value);
                }
                "pip" => {
                    let location = self.location(key_node);
                    self.problems.push(
                        Problem::warning(ProblemKind::TopLevelPip, Some(location)).with_help(
                            "move it under `dependencies:` as a `- pip:` item with its \
                             requirements indented below it",
                        ),
                    );
                }
                _ => {
                    let location = self.location(key_node);
                    let mut problem = Problem::warning(
                        ProblemKind::UnknownKey { key: key.clone() },
                        Some(location),
                    );
                    problem = match did_you_mean(&key) {
                        Some(known) => problem.with_help(format!("did you mean `{known}`?")),
                        None => problem.with_help(format!(
                            "conda reads only `name`, `channels`, `dependencies`, `variables` \
                             and `prefix`{}",
                            " (keel also reads conda-lock's `platforms` and `category`)"
                        )),
                    };
                    self.problems.push(problem);
                }
            }
        }
        self.selectors_conda_ignores();
        if !has_dependencies {
            self.problems.push(
                Problem::warning(ProblemKind::NoDependencies, None)
                    .with_help("add a `dependencies:` list of conda packages"),
            );
        }
        if spec.needs_implicit_pip() {
            let location = spec.dependencies.iter().find_map(|entry| match entry {
                DependencyEntry::Pip(section) => section.location,
                _ => None,
            });
            self.problems.push(
                Problem::warning(ProblemKind::ImplicitPip, location).with_help(
                    "add `- pip` to `dependencies` so that the environment's own pip installs \
                     these packages",
                ),
            );
        }
        Some(spec)
    }

    /// conda-lock's `platforms:` and `category:`: conda drops them (with its "invalid
    /// section" warning), keel follows conda-lock.
    fn conda_lock_key(&mut self, key: &Node, name: &str) {
        let location = self.location(key);
        let help = match name {
            "platforms" => "`conda env create` solves for this machine's platform only",
            _ => "`conda env create` installs every category",
        };
        self.problems.push(
            Problem::warning(
                ProblemKind::CondaLockKey {
                    key: name.to_owned(),
                },
                Some(location),
            )
            .with_help(help),
        );
    }

    /// One warning, at the first selector, that conda does not apply selectors.
    fn selectors_conda_ignores(&mut self) {
        let Some((first, _)) = self
            .selectors
            .iter()
            .min_by_key(|(l, _)| (l.line, l.column))
        else {
            return;
        };
        let first = *first;
        let count = |style| self.selectors.iter().filter(|(_, s)| *s == style).count();
        let (comment, mamba) = (count(SelectorStyle::Comment), count(SelectorStyle::Mamba));
        self.problems.push(
            Problem::warning(
                ProblemKind::CondaIgnoresSelectors { comment, mamba },
                Some(first),
            )
            .with_help(
                "lock with `keel lock` (or conda-lock) to get per-platform environments; \
                 `conda env create -f` does not",
            ),
        );
    }

    /// YAML 1.2 allows a tab as separating white space (`-\tpython`, `numpy\t# c`);
    /// conda's reader refuses every tab outside quotes and comments. Warn at each such line.
    fn tabs_conda_refuses(&mut self) {
        for (index, line) in self.text.lines().enumerate() {
            if !line.contains('\t') {
                continue;
            }
            let mut quote = None;
            let mut previous = ' ';
            for (column, c) in line.chars().enumerate() {
                match (quote, c) {
                    (None, '\'' | '"') => quote = Some(c),
                    (Some(open), c) if c == open => quote = None,
                    (None, '#') if previous == ' ' || previous == '\t' || column == 0 => break,
                    (None, '\t') => {
                        let location = self.source.location(index + 1, column + 1, 1);
                        self.problems.push(
                            Problem::warning(ProblemKind::CondaRefusesTab, Some(location))
                                .with_help("replace the tab with a space"),
                        );
                        break;
                    }
                    _ => {}
                }
                previous = c;
            }
        }
    }

    fn syntax_error(&mut self, error: yaml::SyntaxError) {
        let line = self.source.line(error.mark.line);
        // A tab in the indentation is the usual cause: point at it rather than after it.
        let indentation: String = line
            .chars()
            .take_while(|c| *c == ' ' || *c == '\t')
            .collect();
        let column = match indentation.find('\t') {
            Some(tab) if tab < error.mark.column => tab + 1,
            _ => error.mark.column,
        };
        let mut location = self.source.location(error.mark.line, column, 1);
        let mut tab_help = None;
        // A tab the scanner stopped at or after: the mark is where the token it was reading
        // starts (`while scanning a plain scalar, found a tab` marks the scalar before it)
        // or just past the tab (`':' must be followed by a valid YAML whitespace`). Point at
        // the tab itself.
        if let Some(tab) = self.tab_near(&error, location.offset) {
            let before = &self.text[..tab];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before[line_start..].chars().count() + 1;
            location = self.source.location(line, column, 1);
            let before_tab = &before[line_start..];
            tab_help = Some(if before_tab.trim_start_matches([' ', '\t']).is_empty() {
                "YAML does not allow a tab to indent; replace the tab on this line with spaces"
            } else if before_tab.ends_with([':', '-']) {
                "YAML needs a space, not a tab, after `:` and `-`; replace the tab with a space"
            } else {
                "conda's YAML reader takes a tab only inside quotes and comments; replace the \
                 tab with a space"
            });
        }
        let mut problem = Problem::error(
            ProblemKind::Yaml {
                message: error.message,
            },
            Some(location),
        );
        let before_error: String = line.chars().take(error.mark.column).collect();
        let misindented_pip = (error.mark.line.saturating_sub(2)..=error.mark.line)
            .map(|n| self.source.line(n).trim_start())
            .any(|l| l.starts_with("pip:"));
        let after_indicator = line
            .char_indices()
            .find(|(_, c)| *c == '\t')
            .and_then(|(i, _)| line[..i].chars().last())
            .is_some_and(|c| c == ':' || c == '-');
        if let Some(help) = tab_help {
            problem = problem.with_help(help);
        } else if after_indicator {
            problem = problem.with_help(
                "YAML needs a space, not a tab, after `:` and `-`; replace the tab with a space",
            );
        } else if before_error.contains('\t') || line.trim_start_matches(' ').starts_with('\t') {
            problem = problem.with_help(
                "YAML does not allow a tab to indent; replace the tab on this line with spaces",
            );
        } else if misindented_pip {
            problem = problem.with_help(
                "`pip:` must be a list item under `dependencies`: write `- pip:` and indent its \
                 requirements below it",
            );
        } else if self.text.trim_start().starts_with("@EXPLICIT")
            || self.text.lines().any(|l| l.trim() == "@EXPLICIT")
        {
            problem = problem.with_help(
                "this is an explicit package list (`conda list --explicit`), not an \
                 environment.yml",
            );
        }
        self.problems.push(problem);
    }

    /// The byte offset of the tab a YAML error is about: at the error's offset, just before
    /// it, or, when the message names a tab, the first one after it.
    fn tab_near(&self, error: &yaml::SyntaxError, offset: usize) -> Option<usize> {
        let text = self.text;
        if text.get(offset..)?.starts_with('\t') {
            return Some(offset);
        }
        if text.get(..offset)?.ends_with('\t') {
            return Some(offset - 1);
        }
        if error.message.contains("tab") {
            return text[offset..].find('\t').map(|i| offset + i);
        }
        None
    }

    /// A scalar section such as `name:`; null is absent.
    fn string(&mut self, field: &str, node: &Node) -> Option<String> {
        if node.is_null() {
            return None;
        }
        match node.as_str() {
            Some(value) => Some(value.to_owned()),
            None => self
                .wrong_type(&format!("`{field}`"), "a string", node)
                .and(None),
        }
    }

    /// The items of a list section; null is an empty list.
    fn list<'n>(&mut self, field: &str, node: &'n Node) -> &'n [Node] {
        match &node.kind {
            NodeKind::Sequence(items) => items,
            _ if node.is_null() => &[],
            _ => {
                self.wrong_type(&format!("`{field}`"), "a list", node);
                &[]
            }
        }
    }

    fn channels(&mut self, node: &Node) -> Vec<ChannelEntry> {
        let mut channels = Vec::new();
        for item in self.list("channels", node) {
            match item.as_str() {
                Some(source) => channels.push(ChannelEntry {
                    kind: ChannelKind::classify(source),
                    source: source.to_owned(),
                    location: Some(self.location(item)),
                }),
                None => {
                    self.wrong_type("a channel", "a string", item);
                }
            }
        }
        channels
    }

    fn dependencies(&mut self, node: &Node) -> Vec<DependencyEntry> {
        let mut dependencies = Vec::new();
        for item in self.list("dependencies", node) {
            if let NodeKind::Scalar { .. } = &item.kind
                && !item.is_null()
                && self.spans_lines_with_items(item)
            {
                continue;
            }
            match &item.kind {
                NodeKind::Scalar { .. } if !item.is_null() => {
                    let selector = self.comment_selector(item);
                    if let Some(dependency) = self.conda_dependency(item, selector) {
                        dependencies.push(DependencyEntry::Conda(Box::new(dependency)));
                    }
                }
                NodeKind::Mapping(entries) => {
                    for (key, value) in entries {
                        if let Some(entry) = self.sub_section(key, value) {
                            dependencies.push(entry);
                        }
                    }
                }
                _ => {
                    self.wrong_type("a dependency", "a package spec or a `pip:` section", item);
                }
            }
        }
        self.replaced_pip_sections(&dependencies);
        dependencies
    }

    /// conda keeps the last `- pip:` section only (see `EnvironmentSpec::pip_entries`):
    /// warn at each earlier one.
    fn replaced_pip_sections(&mut self, dependencies: &[DependencyEntry]) {
        let sections: Vec<Option<Location>> = dependencies
            .iter()
            .filter_map(|entry| match entry {
                DependencyEntry::Pip(section) => Some(section.location),
                _ => None,
            })
            .collect();
        let Some((Some(last), earlier)) = sections.split_last().map(|(l, e)| (*l, e)) else {
            return;
        };
        for location in earlier.iter().flatten() {
            self.problems.push(
                Problem::warning(
                    ProblemKind::ReplacedPipSection {
                        last_line: last.line,
                    },
                    Some(*location),
                )
                .with_help(format!(
                    "conda reads each `- pip:` item into one mapping, so the one on line {} \
                     replaces this one; put every pip line in one `- pip:` section",
                    last.line
                )),
            );
        }
    }

    /// A plain scalar that YAML folded from several lines, of which a later one starts with
    /// `- `: the block list's indentation mistake (the first item less indented than the
    /// next, so the next ones continue its string). Reports it and returns true.
    fn spans_lines_with_items(&mut self, node: &Node) -> bool {
        let NodeKind::Scalar {
            value,
            style: TScalarStyle::Plain,
            ..
        } = &node.kind
        else {
            return false;
        };
        let Some(start) = self.source.offset(node.mark.line, node.mark.column) else {
            return false;
        };
        // Walk the source beside the folded value: a line break with its indentation became
        // one space.
        let mut source = self.text[start..].chars().peekable();
        let mut breaks = 0;
        for expected in value.chars() {
            loop {
                match source.peek() {
                    Some(&c) if c == expected => {
                        source.next();
                        break;
                    }
                    Some(&c) if c.is_whitespace() => {
                        breaks += usize::from(c == '\n');
                        source.next();
                    }
                    _ => break,
                }
            }
        }
        if breaks == 0 {
            return false;
        }
        let first_line = node.mark.line;
        let last_line = first_line + breaks;
        let item_line = (first_line + 1..=last_line).find(|line| {
            let text = self.source.line(*line).trim_start();
            text.starts_with("- ") || text == "-"
        });
        let Some(item_line) = item_line else {
            return false;
        };
        let location = self.location(node);
        let first_indent =
            self.source.line(first_line).len() - self.source.line(first_line).trim_start().len();
        let item_indent =
            self.source.line(item_line).len() - self.source.line(item_line).trim_start().len();
        let verdict = match conda::refusal(value) {
            Some(refusal) => format!("conda refuses it too ({})", refusal.0),
            None => "conda reads it as one package spec and installs none of the others".to_owned(),
        };
        self.problems.push(
            Problem::error(
                ProblemKind::SpansLines {
                    spec: value.clone(),
                    first_line,
                    last_line,
                },
                Some(location),
            )
            .with_help(format!(
                "an indentation mistake: the list item on line {first_line} starts at column \
                 {} and the one on line {item_line} at column {}, so YAML reads the lines below \
                 as the rest of one string; {verdict}. Indent every `- ` of the list the same",
                first_indent + 1,
                item_indent + 1,
            )),
        );
        true
    }

    fn conda_dependency(
        &mut self,
        node: &Node,
        selector: Option<Selector>,
    ) -> Option<CondaDependency> {
        let source = node.as_str()?;
        match MatchSpec::from_str(source, ParseStrictness::Lenient) {
            Ok(spec) => {
                if let Some(refusal) = conda::refusal(source) {
                    let location = self.location(node);
                    self.problems.push(
                        Problem::error(
                            ProblemKind::CondaRefusesSpec {
                                spec: source.to_owned(),
                                reason: refusal.0,
                            },
                            Some(location),
                        )
                        .with_help(
                            "conda's MatchSpec refuses this line, so `conda env create` fails \
                             on the file; rattler would read it",
                        ),
                    );
                    return None;
                }
                let spec = match as_conda_reads(source, spec) {
                    Ok(spec) => spec,
                    Err(version) => {
                        let location = self.location(node);
                        self.problems.push(
                            Problem::error(
                                ProblemKind::CondaRefusesSpec {
                                    spec: source.to_owned(),
                                    reason: format!(
                                        "conda reads its version as `{version}`, which no \
                                         package can have"
                                    ),
                                },
                                Some(location),
                            )
                            .with_help(
                                "conda takes everything up to the build string for the \
                                 version; write one package per line",
                            ),
                        );
                        return None;
                    }
                };
                if let Some(selector) = &selector {
                    self.check_selector(selector, node);
                }
                Some(CondaDependency {
                    source: source.to_owned(),
                    spec,
                    selector,
                    location: Some(self.location(node)),
                })
            }
            Err(error) => {
                if let Some(dependency) = self.conda_dependency_with_extras(node, source, &selector)
                {
                    return Some(dependency);
                }
                if let Some(spec) = from_conda_cut(source) {
                    if let Some(selector) = &selector {
                        self.check_selector(selector, node);
                    }
                    return Some(CondaDependency {
                        source: source.to_owned(),
                        spec,
                        selector,
                        location: Some(self.location(node)),
                    });
                }
                let location = self.location(node);
                let mut problem = Problem::error(
                    ProblemKind::MatchSpec {
                        spec: source.to_owned(),
                        source: error,
                    },
                    Some(location),
                );
                if source.contains("__") || source.contains("{{") || source.contains("{%") {
                    problem = problem.with_help(
                        "this looks like a template placeholder; fill it in before using the file",
                    );
                }
                self.problems.push(problem);
                None
            }
        }
    }

    /// conda cuts its bracket section out of the string and keeps only the `key=value`
    /// pairs in it (see the `conda` module), so `tiled[all]` installs `tiled` and
    /// `nbconvert[execute]!=6.0.0,!=7.3.0` installs `nbconvert!=6.0.0,!=7.3.0`; rattler
    /// refuses both. Read such a bracket as conda does, with a warning.
    fn conda_dependency_with_extras(
        &mut self,
        node: &Node,
        source: &str,
        selector: &Option<Selector>,
    ) -> Option<CondaDependency> {
        let parts = conda::split(source).ok()?;
        let bracket = parts.bracket.as_deref()?;
        let rest = parts.without_bracket.as_str();
        if conda::refusal(rest).is_some() {
            return None;
        }
        // The bracket's words conda ignores; its `key=value` pairs it keeps
        // (`sphinx[docs, version='>=7']` is `sphinx >=7`).
        let extras = bracket
            .split([',', ' '])
            .filter(|word| !word.is_empty() && !word.contains('='))
            .collect::<Vec<_>>()
            .join(",");
        if extras.is_empty() {
            return None;
        }
        let kept = if parts.bracket_pairs.is_empty() {
            rest.to_owned()
        } else {
            let pairs: Vec<String> = parts
                .bracket_pairs
                .iter()
                .map(|(key, value)| format!("{key}='{value}'"))
                .collect();
            format!("{rest}[{}]", pairs.join(","))
        };
        let spec = MatchSpec::from_str(&kept, ParseStrictness::Lenient).ok()?;
        let spec = as_conda_reads(source, spec).ok()?;
        let location = self.location(node);
        let name = spec.name.to_string();
        self.problems.push(
            Problem::warning(
                ProblemKind::IgnoredExtras {
                    name: name.clone(),
                    extras: extras.clone(),
                },
                Some(location),
            )
            .with_help(format!(
                "write `{kept}` (or list `{name}[{extras}]` under `- pip:` to get the extras)"
            )),
        );
        Some(CondaDependency {
            source: source.to_owned(),
            spec,
            selector: selector.clone(),
            location: Some(location),
        })
    }

    fn sub_section(&mut self, key: &Node, value: &Node) -> Option<DependencyEntry> {
        let Some(name) = key.as_str() else {
            return self
                .wrong_type("a dependency section name", "a string", key)
                .and(None);
        };
        if let Some(selector) = selector::mamba_selector(name) {
            return match value.as_str() {
                Some(_) => self
                    .conda_dependency(value, Some(selector))
                    .map(|dependency| DependencyEntry::Conda(Box::new(dependency))),
                None => self
                    .wrong_type(&format!("`{name}`"), "a package spec", value)
                    .and(None),
            };
        }
        if name == "pip" {
            let mut section = PipSection {
                entries: Vec::new(),
                location: Some(self.location(key)),
            };
            for line in self.list("pip", value) {
                match line.as_str() {
                    Some(text) => {
                        if let Some(entry) = self.pip_entry(line, text) {
                            section.entries.push(entry);
                        }
                    }
                    None => {
                        self.wrong_type("a pip requirement", "a string", line);
                    }
                }
            }
            return Some(DependencyEntry::Pip(section));
        }
        let location = self.location(key);
        self.problems.push(Problem::warning(
            ProblemKind::UnknownSubSection {
                name: name.to_owned(),
            },
            Some(location),
        ));
        let entries = match &value.kind {
            NodeKind::Sequence(items) => items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect(),
            _ => value.as_str().map(str::to_owned).into_iter().collect(),
        };
        Some(DependencyEntry::Other(OtherSection {
            name: name.to_owned(),
            entries,
        }))
    }

    fn pip_entry(&mut self, node: &Node, text: &str) -> Option<PipEntry> {
        let selector = self.comment_selector(node);
        match pip::classify(text) {
            Ok(kind) => {
                if let Some(selector) = &selector {
                    self.check_selector(selector, node);
                }
                self.check_local_path(&kind, node);
                Some(PipEntry {
                    source: text.to_owned(),
                    kind,
                    selector,
                    location: Some(self.location(node)),
                })
            }
            Err(error) => {
                let mut location = self.location(node);
                // Point at the character pep508 names, on the line as written.
                let quote = usize::from(matches!(
                    node.kind,
                    NodeKind::Scalar {
                        style: TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted,
                        ..
                    }
                ));
                let leading = text.len() - text.trim_start().len();
                let column = node.mark.column + quote + leading + error.error.start;
                if !text.contains('\n') {
                    location = self
                        .source
                        .location(node.mark.line, column, error.error.len.max(1));
                }
                let reason = error.error.message.to_string();
                let mut problem = Problem::warning(
                    ProblemKind::PipLine {
                        line: text.to_owned(),
                        source: error.error,
                    },
                    Some(location),
                );
                problem = match single_equals_fix(text) {
                    Some(fixed) => problem.with_help(format!(
                        "pip pins with `==`: write `{fixed}` (a single `=` is conda's syntax)"
                    )),
                    None => problem.with_help(
                        "pip lines are PEP 508 requirements or requirements-file lines \
                         (`-e PATH`, `--extra-index-url URL`, a URL or a path)",
                    ),
                };
                self.problems.push(problem);
                Some(PipEntry {
                    source: text.to_owned(),
                    kind: pip::PipEntryKind::Invalid { reason },
                    selector,
                    location: Some(self.location(node)),
                })
            }
        }
    }

    /// A local pip path (`submodules/simple-knn`, `-e ./pkg`) must be there, relative to the
    /// environment file's folder, where conda runs pip.
    fn check_local_path(&mut self, kind: &pip::PipEntryKind, node: &Node) {
        let (Some(folder), Some(path)) = (self.folder, pip::relative_local_path(kind)) else {
            return;
        };
        if folder.join(path).exists() {
            return;
        }
        let location = self.location(node);
        self.problems.push(
            Problem::warning(
                ProblemKind::MissingPipPath {
                    path: path.to_owned(),
                    folder: folder.display().to_string(),
                },
                Some(location),
            )
            .with_help(
                "conda runs pip in the environment file's folder, so pip looks for it there \
                 (pip reads a line with a `/`, or one starting with `.`, as a path)",
            ),
        );
    }

    fn check_selector(&mut self, selector: &Selector, node: &Node) {
        let location = self.location(node);
        self.selectors.push((location, selector.style));
        if let (Some(part), true) = (
            selector.undecided(),
            selector.condition.contains(' ') || selector.condition.contains(['<', '>', '=', '(']),
        ) {
            self.problems.push(Problem::warning(
                ProblemKind::UndecidedSelector {
                    condition: selector.condition.clone(),
                    part,
                },
                Some(location),
            ));
            return;
        }
        if !selector.is_known() {
            let location = self.location(node);
            self.problems.push(
                Problem::warning(
                    ProblemKind::UnknownSelector {
                        condition: selector.condition.clone(),
                    },
                    Some(location),
                )
                .with_help(format!("known selectors: {}", selector::KNOWN.join(", "))),
            );
        }
    }

    /// The `# [selector]` comment after a scalar, on the scalar's line.
    fn comment_selector(&self, node: &Node) -> Option<Selector> {
        let NodeKind::Scalar { value, style, .. } = &node.kind else {
            return None;
        };
        if value.contains('\n') {
            return None;
        }
        let line = self.source.line(node.mark.line);
        let line_start = self.source.offset(node.mark.line, 1)?;
        let start = self.source.offset(node.mark.line, node.mark.column)? - line_start;
        let from_value = line.get(start..)?;
        let end = match style {
            TScalarStyle::Plain => from_value
                .starts_with(value.as_str())
                .then_some(value.len())?,
            TScalarStyle::SingleQuoted => closing_quote(from_value, '\'')?,
            TScalarStyle::DoubleQuoted => closing_quote(from_value, '"')?,
            _ => return None,
        };
        selector::comment_selector(&from_value[end..])
    }

    fn variables(&mut self, node: &Node) -> IndexMap<String, String> {
        let mut variables = IndexMap::new();
        match &node.kind {
            NodeKind::Mapping(entries) => {
                for (key, value) in entries {
                    let Some(name) = key.as_str() else {
                        self.wrong_type("a variable name", "a string", key);
                        continue;
                    };
                    let value = match &value.kind {
                        NodeKind::Scalar { value, .. } if !value_is_null(value) => value.clone(),
                        NodeKind::Scalar { .. } => String::new(),
                        _ => {
                            self.wrong_type(&format!("variable `{name}`"), "a string", value);
                            continue;
                        }
                    };
                    variables.insert(name.to_owned(), value);
                }
            }
            _ if node.is_null() => {}
            _ => {
                self.wrong_type("`variables`", "a mapping of names to values", node);
            }
        }
        variables
    }

    fn platforms(&mut self, node: &Node) -> Vec<Subdir> {
        let mut platforms = Vec::new();
        for item in self.list("platforms", node) {
            let Some(text) = item.as_str() else {
                self.wrong_type("a platform", "a string", item);
                continue;
            };
            match text.parse::<Subdir>() {
                Ok(platform) => platforms.push(platform),
                Err(source) => {
                    let location = self.location(item);
                    self.problems.push(
                        Problem::error(
                            ProblemKind::Platform {
                                platform: text.to_owned(),
                                source,
                            },
                            Some(location),
                        )
                        .with_help("platforms look like `linux-64`, `osx-arm64`, `win-64`"),
                    );
                }
            }
        }
        platforms
    }
}

/// rattler's reading of `source` with the version and build that conda's cut gives where
/// the two differ: conda reads `numpy==1.26.*` as `1.26.*` (`_sanitize_version_str` drops the
/// `==`), rattler as `==1.26`; conda reads `<2.*` as `<2`. `Err` with conda's version text
/// when rattler cannot read it (`python 1.2.3=*mkl - openmpi` has the version `1.2.3=*mkl-`).
/// Package files and URLs, which conda does not cut, keep rattler's reading.
fn as_conda_reads(source: &str, mut spec: MatchSpec) -> Result<MatchSpec, String> {
    let text = source.split('#').next().unwrap_or(source).trim();
    if text.contains("://")
        || [".conda", ".tar.bz2"].iter().any(|ext| text.ends_with(ext))
        || text.ends_with('@')
    {
        return Ok(spec);
    }
    let Ok(parts) = conda::split(source) else {
        return Ok(spec);
    };
    match parts.version.as_deref() {
        Some("*") => {}
        Some(version) => {
            let conda = conda_version(version).ok_or_else(|| version.to_owned())?;
            if spec.version.as_ref() != Some(&conda) {
                spec.version = Some(conda);
            }
        }
        // conda ignores a `(...)` section, which rattler reads as a version.
        None => {
            if spec.version != Some(rattler_conda_types::VersionSpec::Any) {
                spec.version = None;
            }
        }
    }
    let build = parts.build.filter(|b| b != "*");
    let rattler_build = spec
        .build
        .as_ref()
        .map(ToString::to_string)
        .filter(|b| b != "*");
    if build != rattler_build {
        spec.build = match build {
            Some(build) => Some(
                rattler_conda_types::StringMatcher::from_str(&build)
                    .map_err(|_| parts.version.clone().unwrap_or_default())?,
            ),
            None => None,
        };
    }
    Ok(spec)
}

/// A string rattler refuses that conda reads, built from conda's cut: `pkg[build=py*]>=1`
/// (a bracket before the version), `pkg<2.*`, `pkg (legacy)`. Only the channel, name,
/// version and build carry over, so a bracket with other keys is left to rattler's error.
fn from_conda_cut(source: &str) -> Option<MatchSpec> {
    if conda::refusal(source).is_some() {
        return None;
    }
    let parts = conda::split(source).ok()?;
    if parts
        .bracket_pairs
        .iter()
        .any(|(key, _)| key != "version" && key != "build")
    {
        return None;
    }
    let base = match &parts.channel {
        Some(channel) => format!("{channel}::{}", parts.name),
        None => parts.name.clone(),
    };
    let spec = MatchSpec::from_str(&base, ParseStrictness::Lenient).ok()?;
    as_conda_reads(source, spec).ok()
}

/// A version conda holds as rattler's `VersionSpec`. conda drops a `.*` after `<`, `>`, `<=`
/// and `==` (with its "superfluous" warning), which rattler refuses after `<` and `>`.
fn conda_version(version: &str) -> Option<rattler_conda_types::VersionSpec> {
    use rattler_conda_types::VersionSpec;
    if let Ok(spec) = VersionSpec::from_str(version, ParseStrictness::Lenient) {
        return Some(spec);
    }
    let mut out = String::with_capacity(version.len());
    for leaf in version.split_inclusive([',', '|', '(', ')']) {
        let (body, separator) = match leaf.char_indices().last() {
            Some((at, ',' | '|' | '(' | ')')) => (&leaf[..at], &leaf[at..]),
            _ => (leaf, ""),
        };
        let relational = ["<=", "==", "<", ">"]
            .iter()
            .any(|op| body.trim_start().starts_with(op) && !body.trim_start().starts_with(">="));
        match body.strip_suffix(".*") {
            Some(stripped) if relational => out.push_str(stripped),
            _ => out.push_str(body),
        }
        out.push_str(separator);
    }
    VersionSpec::from_str(&out, ParseStrictness::Lenient).ok()
}

fn value_is_null(value: &str) -> bool {
    matches!(value, "" | "~" | "null" | "Null" | "NULL")
}

/// The byte just past the closing quote of a quoted scalar that starts `text`.
fn closing_quote(text: &str, quote: char) -> Option<usize> {
    let mut chars = text.char_indices().skip(1).peekable();
    while let Some((i, c)) = chars.next() {
        if quote == '"' && c == '\\' {
            chars.next();
        } else if c == quote {
            if quote == '\'' && chars.peek().is_some_and(|(_, next)| *next == '\'') {
                chars.next();
                continue;
            }
            return Some(i + c.len_utf8());
        }
    }
    None
}

/// `jupyterlab=1.0.0` -> `jupyterlab==1.0.0`, where that makes a valid requirement.
fn single_equals_fix(text: &str) -> Option<String> {
    let (name, version) = text.split_once('=')?;
    if version.starts_with('=') || name.ends_with(['<', '>', '!', '~']) {
        return None;
    }
    let fixed = format!("{}=={}", name.trim_end(), version.trim_start());
    pip::classify(&fixed).ok().map(|_| fixed)
}

fn did_you_mean(key: &str) -> Option<&'static str> {
    KNOWN_KEYS
        .iter()
        .map(|known| (strsim::jaro_winkler(&key.to_lowercase(), known), *known))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, known)| known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_known_keys() {
        assert_eq!(did_you_mean("chanels"), Some("channels"));
        assert_eq!(did_you_mean("dependecies"), Some("dependencies"));
        assert_eq!(did_you_mean("prefis"), Some("prefix"));
        assert_eq!(did_you_mean("build"), None);
    }

    #[test]
    fn finds_closing_quotes() {
        assert_eq!(closing_quote("'it''s' # x", '\''), Some(7));
        assert_eq!(closing_quote(r#""a\"b" # x"#, '"'), Some(6));
    }

    #[test]
    fn fixes_single_equals() {
        assert_eq!(
            single_equals_fix("jupyterlab=1.0.0").as_deref(),
            Some("jupyterlab==1.0.0")
        );
        assert_eq!(single_equals_fix("a>=1"), None);
    }
}
