//! A YAML tree that remembers where every node starts, built from `yaml-rust2`'s events.
//!
//! Scalars stay text: an environment file's values are package specs, names and paths, and
//! reading `1.10` as a float would lose the zero (conda's own loader keeps specs as text too,
//! because every dependency is parsed as a MatchSpec string).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
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

/// The result of loading a stream: its documents, or the first syntax error.
pub(crate) fn load(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, true)
        .map_err(|error| SyntaxError {
            message: error.info().to_owned(),
            mark: Mark::from_marker(*error.marker()),
        })?;
    if let Some(error) = builder.error {
        return Err(error);
    }
    Ok(builder.documents)
}

enum Partial {
    Sequence(Vec<Node>, Mark, usize),
    Mapping(Vec<(Node, Node)>, Option<Node>, Mark, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Partial>,
    documents: Vec<Node>,
    anchors: HashMap<usize, Node>,
    error: Option<SyntaxError>,
}

impl Builder {
    fn push(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Partial::Sequence(items, _, _)) => items.push(node),
            Some(Partial::Mapping(entries, key, _, _)) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, marker: Marker) {
        let mark = Mark::from_marker(marker);
        match event {
            Event::Scalar(value, style, anchor, tag) => self.push(
                Node {
                    kind: NodeKind::Scalar { value, style, tag },
                    mark,
                },
                anchor,
            ),
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Partial::Sequence(Vec::new(), mark, anchor));
            }
            Event::MappingStart(anchor, _) => {
                self.stack
                    .push(Partial::Mapping(Vec::new(), None, mark, anchor));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Partial::Sequence(items, mark, anchor)) => (
                        Node {
                            kind: NodeKind::Sequence(items),
                            mark,
                        },
                        anchor,
                    ),
                    Some(Partial::Mapping(entries, _, mark, anchor)) => (
                        Node {
                            kind: NodeKind::Mapping(entries),
                            mark,
                        },
                        anchor,
                    ),
                    None => return,
                };
                self.push(node, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => self.push(Node { mark, ..node }, 0),
                None => {
                    self.error.get_or_insert(SyntaxError {
                        message: "found an alias to an unknown anchor".to_owned(),
                        mark,
                    });
                }
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
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
