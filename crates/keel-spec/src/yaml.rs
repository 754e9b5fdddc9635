//! A YAML tree that remembers where every node starts, built from `yaml-rust2`'s events.
//!
//! Scalars stay text: an environment file's values are package specs, names and paths, and
//! reading `1.10` as a float would lose the zero (conda's own loader keeps specs as text too,
//! because every dependency is parsed as a MatchSpec string).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Where a node starts: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

impl Mark {
    fn from_marker(marker: Marker) -> Self {
        Self {
            line: marker.line(),
            column: marker.col() + 1,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum NodeKind {
    Scalar {
        value: String,
        style: TScalarStyle,
        tag: Option<Tag>,
    },
    Sequence(Vec<Node>),
    Mapping(Vec<(Node, Node)>),
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) kind: NodeKind,
    pub(crate) mark: Mark,
}

impl Node {
    /// A plain scalar that YAML reads as null: empty, `~` or `null`.
    pub(crate) fn is_null(&self) -> bool {
        matches!(
            &self.kind,
            NodeKind::Scalar { value, style: TScalarStyle::Plain, tag: None }
                if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL")
        )
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } if !self.is_null() => Some(value),
            _ => None,
        }
    }

    /// The number of characters a caret under this node should cover.
    pub(crate) fn width(&self) -> usize {
        match &self.kind {
            NodeKind::Scalar { value, style, .. } => {
                let first_line = value.lines().next().unwrap_or("").chars().count();
                match style {
                    TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => first_line + 2,
                    _ => first_line,
                }
            }
            _ => 1,
        }
    }

    /// What this node is, for messages such as "expected a list, found a mapping".
    pub(crate) fn describe(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar { .. } if self.is_null() => "nothing (null)",
            NodeKind::Scalar { .. } => "a string",
            NodeKind::Sequence(_) => "a list",
            NodeKind::Mapping(_) => "a mapping",
        }
    }
}

/// A YAML syntax error with the place the scanner stopped.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    pub(crate) message: String,
    pub(crate) mark: Mark,
}

/// Collections nested deeper than this are refused. Real environment files nest four or five
/// deep; the tree is dropped and cloned recursively, so its depth must stay bounded.
pub(crate) const MAX_DEPTH: usize = 128;

/// What copies for aliases may weigh beyond twice the text's size (see [`Builder::spend`]).
const ALIAS_ALLOWANCE: usize = 1 << 16;

/// The result of loading a stream: its documents, or the first syntax error.
///
/// The tree stays proportional to the text: a character YAML forbids is refused before
/// parsing (`yaml-rust2` would read a NUL as the end of the stream), nesting is bounded by
/// [`MAX_DEPTH`], and the copies made for aliases are bounded by [`Builder::spend`].
pub(crate) fn load(text: &str) -> Result<Vec<Node>, SyntaxError> {
    if let Some(error) = forbidden_character(text) {
        return Err(error);
    }
    let allowance = ALIAS_ALLOWANCE.saturating_add(text.len().saturating_mul(2));
    let mut builder = Builder {
        stack: Vec::new(),
        documents: Vec::new(),
        anchors: HashMap::new(),
        allowance,
        limit: allowance,
    };
    // Events are pulled one by one: `Parser::load` recurses once per level of nesting.
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, marker) = parser.next_token().map_err(|error| SyntaxError {
            message: error.info().to_owned(),
            mark: Mark::from_marker(*error.marker()),
        })?;
        if matches!(event, Event::StreamEnd) {
            return Ok(builder.documents);
        }
        builder.event(event, Mark::from_marker(marker))?;
    }
}

/// Whether YAML 1.2 allows `c` in a stream (`c-printable`): tab, line feed, carriage
/// return, printable ASCII, NEL and the printable rest of Unicode, which excludes the other
/// C0 controls (NUL among them), DEL, the C1 controls, U+FFFE and U+FFFF. conda's reader
/// (PyYAML, ruamel) refuses the same set.
fn is_printable(c: char) -> bool {
    matches!(c,
        '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{A0}'..='\u{D7FF}'
        | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// The first character YAML does not allow in a stream, as an error at its place.
fn forbidden_character(text: &str) -> Option<SyntaxError> {
    let (mut line, mut column) = (1, 1);
    for c in text.chars() {
        if !is_printable(c) {
            let what = if c.is_control() {
                "control character"
            } else {
                "non-character"
            };
            return Some(SyntaxError {
                message: format!(
                    "{what} U+{:04X} is not allowed in YAML (outside an escape in double quotes)",
                    u32::from(c)
                ),
                mark: Mark { line, column },
            });
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    None
}

enum PartialKind {
    Sequence(Vec<Node>),
    Mapping(Vec<(Node, Node)>, Option<Node>),
}

/// A collection being built, with what it weighs so far.
struct Partial {
    kind: PartialKind,
    mark: Mark,
    anchor: usize,
    weight: usize,
}

/// Builds the tree from events.
///
/// Every node has a weight: 1, plus its length in bytes for a scalar, plus its children's
/// weights for a collection, which is what cloning it costs. An alias clones its anchor's
/// node and an anchor keeps a clone to give out; each clone is paid from an allowance of
/// [`ALIAS_ALLOWANCE`] plus twice the text's length, and the first clone past it is an error
/// at its place. So the tree, clones included, weighs at most a constant times the text, as
/// PyYAML's shared objects do (an alias bomb of 381 bytes would otherwise expand to gigabytes).
struct Builder {
    stack: Vec<Partial>,
    documents: Vec<Node>,
    anchors: HashMap<usize, (Node, usize)>,
    allowance: usize,
    limit: usize,
}

impl Builder {
    /// Pays for a clone of `weight`.
    fn spend(&mut self, weight: usize, mark: Mark) -> Result<(), SyntaxError> {
        self.allowance = self
            .allowance
            .checked_sub(weight)
            .ok_or_else(|| SyntaxError {
                message: format!(
                    "aliases expand to more than {} nodes and characters (64 Ki plus twice the \
                     file's size): refused as an alias bomb",
                    self.limit
                ),
                mark,
            })?;
        Ok(())
    }

    fn push(&mut self, node: Node, weight: usize, anchor: usize) -> Result<(), SyntaxError> {
        if anchor > 0 {
            self.spend(weight, node.mark)?;
            self.anchors.insert(anchor, (node.clone(), weight));
        }
        let Some(parent) = self.stack.last_mut() else {
            self.documents.push(node);
            return Ok(());
        };
        parent.weight = parent.weight.saturating_add(weight);
        match &mut parent.kind {
            PartialKind::Sequence(items) => items.push(node),
            PartialKind::Mapping(entries, key) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
        Ok(())
    }

    fn open(&mut self, kind: PartialKind, mark: Mark, anchor: usize) -> Result<(), SyntaxError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(SyntaxError {
                message: format!("collections nest deeper than {MAX_DEPTH} levels"),
                mark,
            });
        }
        self.stack.push(Partial {
            kind,
            mark,
            anchor,
            weight: 1,
        });
        Ok(())
    }

    fn event(&mut self, event: Event, mark: Mark) -> Result<(), SyntaxError> {
        match event {
            Event::Scalar(value, style, anchor, tag) => {
                let weight = value.len().saturating_add(1);
                self.push(
                    Node {
                        kind: NodeKind::Scalar { value, style, tag },
                        mark,
                    },
                    weight,
                    anchor,
                )
            }
            Event::SequenceStart(anchor, _) => {
                self.open(PartialKind::Sequence(Vec::new()), mark, anchor)
            }
            Event::MappingStart(anchor, _) => {
                self.open(PartialKind::Mapping(Vec::new(), None), mark, anchor)
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(partial) = self.stack.pop() else {
                    return Ok(());
                };
                let kind = match partial.kind {
                    PartialKind::Sequence(items) => NodeKind::Sequence(items),
                    PartialKind::Mapping(entries, _) => NodeKind::Mapping(entries),
                };
                let node = Node {
                    kind,
                    mark: partial.mark,
                };
                self.push(node, partial.weight, partial.anchor)
            }
            Event::Alias(id) => {
                let unknown = || SyntaxError {
                    message: "found an alias to an unknown anchor".to_owned(),
                    mark,
                };
                let weight = self.anchors.get(&id).ok_or_else(unknown)?.1;
                // Paid before the clone is made.
                self.spend(weight, mark)?;
                let node = self.anchors.get(&id).ok_or_else(unknown)?.0.clone();
                self.push(Node { mark, ..node }, weight, 0)
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_one_based() {
        let docs = load("name: x\ndependencies:\n  - python=3.10\n").unwrap();
        let NodeKind::Mapping(entries) = &docs[0].kind else {
            panic!("not a mapping")
        };
        let NodeKind::Sequence(items) = &entries[1].1.kind else {
            panic!("not a list")
        };
        assert_eq!(items[0].mark, Mark { line: 3, column: 5 });
        assert_eq!(items[0].as_str(), Some("python=3.10"));
    }

    #[test]
    fn aliases_resolve_to_their_anchor() {
        let docs = load("a: &x [1, 2]\nb: *x\n").unwrap();
        let NodeKind::Mapping(entries) = &docs[0].kind else {
            panic!("not a mapping")
        };
        assert!(matches!(&entries[1].1.kind, NodeKind::Sequence(items) if items.len() == 2));
    }
}
