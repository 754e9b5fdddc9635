//! Platform selectors on dependency lines.
//!
//! Two forms exist in the wild: conda-lock's comment selectors (`- cudatoolkit  # [linux64]`,
//! taken from conda-build) and mamba's key selectors (`- sel(linux): cudatoolkit`). conda itself
//! ignores both (the first is a comment to it; the second a sub-section it does not install).
//! keel honours them when it locks for several platforms, with conda-lock's table of names.

use rattler_conda_types::{Arch, Subdir};
use serde::Serialize;

/// A platform selector attached to a dependency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selector {
    /// Which form was written.
    pub style: SelectorStyle,
    /// The condition: a selector name such as `linux64`, `osx`, `win` or `unix`.
    pub condition: String,
}

/// How a selector was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectorStyle {
    /// `- pkg  # [linux64]` (conda-lock, conda-build).
    Comment,
    /// `- sel(linux): pkg` (mamba).
    Mamba,
}

/// Selector names keel understands; anything else is reported as unknown.
pub(crate) const KNOWN: &[&str] = &[
    "linux", "linux32", "linux64", "aarch64", "ppc64le", "armv6l", "armv7l", "s390x", "osx",
    "osx64", "arm64", "win", "win32", "win64", "unix", "x86", "x86_64",
];

impl Selector {
    /// Whether a dependency with this selector applies on `platform`. The condition is
    /// conda-build's expression (`linux64`, `not osx`, `win and py>=38`); names that are not
    /// platforms (`py>=38`, `np`) cannot be decided when locking, so, as conda-lock does, the
    /// line applies only where the platform names alone make the expression true.
    pub fn matches(&self, platform: Subdir) -> bool {
        let names = names_for(platform);
        parse_expression(&self.condition)
            .is_some_and(|expression| expression.eval(&names) == Some(true))
    }

    /// Whether keel can decide the selector on every platform: an expression of platform
    /// names only.
    pub fn is_known(&self) -> bool {
        parse_expression(&self.condition).is_some_and(|expression| expression.undecided().is_none())
    }

    /// The first part of the condition that is not a platform name (`py>=38`), if any.
    pub fn undecided(&self) -> Option<String> {
        match parse_expression(&self.condition) {
            Some(expression) => expression.undecided(),
            None => Some(self.condition.clone()),
        }
    }
}

/// conda-build's selector variables beyond the platform names: Python and NumPy versions and
/// the variant keys conda-forge recipes use. A bracket that names none of these, nor a
/// platform, is a comment (`# needs sphinx-gallery[parallel]`, `# see [1]`).
const OTHER_VARIABLES: &[&str] = &[
    "py",
    "py2k",
    "py3k",
    "np",
    "vc",
    "build_platform",
    "target_platform",
    "cuda_compiler_version",
    "blas_impl",
    "mpi",
];

/// A selector expression: names, comparisons, `not`, `and`, `or`, parentheses.
#[derive(Debug, PartialEq)]
enum Expression {
    /// A platform name.
    Platform(String),
    /// A name or comparison keel cannot decide when locking (`py>=38`, `py3k`).
    Undecided(String),
    Not(Box<Expression>),
    And(Box<Expression>, Box<Expression>),
    Or(Box<Expression>, Box<Expression>),
}

impl Expression {
    /// Kleene's three-valued logic: `None` where an undecided name decides the result.
    fn eval(&self, names: &[&str]) -> Option<bool> {
        match self {
            Self::Platform(name) => Some(names.contains(&name.as_str())),
            Self::Undecided(_) => None,
            Self::Not(inner) => inner.eval(names).map(|value| !value),
            Self::And(a, b) => match (a.eval(names), b.eval(names)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Self::Or(a, b) => match (a.eval(names), b.eval(names)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
        }
    }

    fn undecided(&self) -> Option<String> {
        match self {
            Self::Platform(_) => None,
            Self::Undecided(text) => Some(text.clone()),
            Self::Not(inner) => inner.undecided(),
            Self::And(a, b) | Self::Or(a, b) => a.undecided().or_else(|| b.undecided()),
        }
    }
}

/// Whether `word` is a selector variable: a platform name, or `py`, `np` and the rest of
/// [`OTHER_VARIABLES`], with conda-build's `py27`/`np116` forms.
fn is_variable(word: &str) -> bool {
    KNOWN.contains(&word)
        || OTHER_VARIABLES.contains(&word)
        || ["py", "np"].iter().any(|prefix| {
            word.strip_prefix(prefix).is_some_and(|digits| {
                !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
            })
        })
}

/// Parses a selector expression; `None` when the text is not one (so the comment is a plain
/// comment).
fn parse_expression(text: &str) -> Option<Expression> {
    let tokens = tokenize(text)?;
    let mut position = 0;
    let expression = parse_or(&tokens, &mut position)?;
    (position == tokens.len()).then_some(expression)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Word(String),
    /// A comparison such as `py>=38` or `target_platform == 'linux-64'`, as written.
    Comparison(String),
}

fn tokenize(text: &str) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('(') {
            tokens.push(Token::Open);
            rest = after.trim_start();
            continue;
        }
        if let Some(after) = rest.strip_prefix(')') {
            tokens.push(Token::Close);
            rest = after.trim_start();
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        let word = &rest[..end];
        if word.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
            return None;
        }
        let after = rest[end..].trim_start();
        let operator = ["==", "!=", ">=", "<=", "<", ">"]
            .iter()
            .find(|op| after.starts_with(**op));
        match operator {
            Some(op) => {
                // A comparison's right side: a number or a quoted string.
                let value = after[op.len()..].trim_start();
                let value_end = match value.chars().next() {
                    Some(quote @ ('\'' | '"')) => value[1..].find(quote)? + 2,
                    Some(c) if c.is_ascii_digit() => value
                        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                        .unwrap_or(value.len()),
                    _ => return None,
                };
                if !is_variable(word) {
                    return None;
                }
                let consumed = rest.len() - value.len() + value_end;
                tokens.push(Token::Comparison(rest[..consumed].trim().to_owned()));
                rest = rest[consumed..].trim_start();
            }
            None => {
                if !matches!(word, "and" | "or" | "not") && !is_variable(word) {
                    return None;
                }
                tokens.push(Token::Word(word.to_owned()));
                rest = after;
            }
        }
    }
    Some(tokens)
}

fn parse_or(tokens: &[Token], position: &mut usize) -> Option<Expression> {
    let mut left = parse_and(tokens, position)?;
    while tokens.get(*position) == Some(&Token::Word("or".to_owned())) {
        *position += 1;
        left = Expression::Or(Box::new(left), Box::new(parse_and(tokens, position)?));
    }
    Some(left)
}

fn parse_and(tokens: &[Token], position: &mut usize) -> Option<Expression> {
    let mut left = parse_not(tokens, position)?;
    while tokens.get(*position) == Some(&Token::Word("and".to_owned())) {
        *position += 1;
        left = Expression::And(Box::new(left), Box::new(parse_not(tokens, position)?));
    }
    Some(left)
}

fn parse_not(tokens: &[Token], position: &mut usize) -> Option<Expression> {
    let token = tokens.get(*position)?.clone();
    *position += 1;
    match token {
        Token::Word(word) if word == "not" => {
            Some(Expression::Not(Box::new(parse_not(tokens, position)?)))
        }
        Token::Word(word) if word == "and" || word == "or" => None,
        Token::Word(word) if KNOWN.contains(&word.as_str()) => Some(Expression::Platform(word)),
        Token::Word(word) => Some(Expression::Undecided(word)),
        Token::Comparison(text) => Some(Expression::Undecided(text)),
        Token::Open => {
            let inner = parse_or(tokens, position)?;
            (tokens.get(*position) == Some(&Token::Close)).then(|| *position += 1)?;
            Some(inner)
        }
        Token::Close => None,
    }
}

/// The selector names that hold on a platform (conda-lock's table, extended to every platform
/// conda knows in the same spirit).
fn names_for(platform: Subdir) -> Vec<&'static str> {
    let mut names = Vec::new();
    if platform.is_linux() {
        names.extend(["linux", "unix"]);
    }
    if platform.is_osx() {
        names.extend(["osx", "unix"]);
    }
    if platform.is_windows() {
        names.push("win");
    }
    names.extend(match platform {
        Subdir::Linux32 => &["linux32", "x86"][..],
        Subdir::Linux64 => &["linux64", "x86_64"][..],
        Subdir::LinuxAarch64 => &["aarch64"][..],
        Subdir::LinuxPpc64le => &["ppc64le"][..],
        Subdir::LinuxArmV6l => &["armv6l"][..],
        Subdir::LinuxArmV7l => &["armv7l"][..],
        Subdir::LinuxS390X => &["s390x"][..],
        Subdir::Osx64 => &["osx64", "x86_64"][..],
        Subdir::OsxArm64 => &["arm64"][..],
        Subdir::Win32 => &["win32", "x86"][..],
        Subdir::Win64 => &["win64", "x86_64"][..],
        Subdir::WinArm64 => &["arm64"][..],
        _ => &[][..],
    });
    if platform.arch() == Some(Arch::X86_64) && !names.contains(&"x86_64") {
        names.push("x86_64");
    }
    names
}

/// Finds a `# [selector]` comment in the text that follows a value on its line.
///
/// conda-lock takes the last `[...]` of the comment (`selectors.py`'s `sel_pat`,
/// `(#.*)\[([^\[\]]+)\](?(2)[^\(\)]*)$`, conda/conda-lock at commit 1d72d22), so it reads
/// `# needed for sphinx-gallery[parallel]` as a selector that holds on no platform and drops
/// the line. keel reads that bracket as a selector only when it is conda-build's selector
/// expression (selector names, comparisons such as `py>=38`, `and`, `or`, `not`,
/// parentheses), or when the whole comment is one `[word]` (`# [linx64]`, a selector with a
/// typo, which keel reports); any other bracket is part of a comment.
pub(crate) fn comment_selector(rest_of_line: &str) -> Option<Selector> {
    let trimmed = rest_of_line.trim_start();
    if trimmed.len() == rest_of_line.len() && !rest_of_line.is_empty() {
        // A `#` glued to the value is part of it, not a comment.
        return None;
    }
    let comment = trimmed.strip_prefix('#')?.trim_end();
    let close = comment.rfind(']')?;
    let open = comment[..close].rfind('[')?;
    if comment[close + 1..].contains(['(', ')']) {
        return None;
    }
    let condition = comment[open + 1..close].trim();
    if condition.is_empty() {
        return None;
    }
    let whole_comment = comment[..open].trim().is_empty() && comment[close + 1..].trim().is_empty();
    let single_word = condition
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !condition.starts_with(|c: char| c.is_ascii_digit());
    if parse_expression(condition).is_none() && !(whole_comment && single_word) {
        return None;
    }
    Some(Selector {
        style: SelectorStyle::Comment,
        condition: condition.to_owned(),
    })
}

/// Reads mamba's `sel(COND)` key.
pub(crate) fn mamba_selector(key: &str) -> Option<Selector> {
    let condition = key.trim().strip_prefix("sel(")?.strip_suffix(')')?;
    Some(Selector {
        style: SelectorStyle::Mamba,
        condition: condition.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_selectors_follow_conda_lock() {
        let selector = comment_selector("   # [linux64]").unwrap();
        assert!(selector.matches(Subdir::Linux64));
        assert!(!selector.matches(Subdir::LinuxAarch64));
        let unix = comment_selector(" # cuda only [unix]").unwrap();
        assert!(unix.matches(Subdir::OsxArm64));
        assert!(!unix.matches(Subdir::Win64));
        assert!(
            comment_selector("# [linux]").is_none(),
            "glued `#` is not a comment"
        );
        assert!(comment_selector("  # plain comment").is_none());
    }

    /// conda-build's expressions are selectors; other brackets in a comment are not.
    #[test]
    fn only_selector_expressions_are_selectors() {
        let selector = |comment: &str| comment_selector(comment).map(|s| s.condition);
        assert_eq!(
            selector(" # [win and py>=38]").as_deref(),
            Some("win and py>=38")
        );
        assert_eq!(selector(" # [not osx]").as_deref(), Some("not osx"));
        assert_eq!(selector(" # [linx64]").as_deref(), Some("linx64"));
        assert_eq!(selector(" # needed for sphinx-gallery[parallel]"), None);
        assert_eq!(selector(" # see [1]"), None);
        assert_eq!(selector(" # [1]"), None);
        assert_eq!(selector(" # pin [a, b] for now"), None);

        let not_osx = comment_selector(" # [not osx]").unwrap();
        assert!(not_osx.matches(Subdir::Linux64) && !not_osx.matches(Subdir::OsxArm64));
        let win_py = comment_selector(" # [win and py>=38]").unwrap();
        assert!(!win_py.matches(Subdir::Linux64) && !win_py.matches(Subdir::Win64));
        assert_eq!(win_py.undecided().as_deref(), Some("py>=38"));
        let either = comment_selector(" # [(linux and x86_64) or osx]").unwrap();
        assert!(either.is_known() && either.matches(Subdir::Linux64));
        assert!(either.matches(Subdir::Osx64) && !either.matches(Subdir::LinuxAarch64));
    }

    #[test]
    fn mamba_selectors() {
        let selector = mamba_selector("sel(win)").unwrap();
        assert!(selector.matches(Subdir::Win64));
        assert!(!selector.matches(Subdir::Linux64));
        assert!(mamba_selector("pip").is_none());
    }
}
