//! How conda itself cuts a dependency string into its parts, for the places where rattler's
//! MatchSpec parser reads a string differently from conda.
//!
//! This follows `_parse_spec_str` in conda's `conda/models/match_spec.py` (conda/conda at
//! commit 0f64223fb8da4328457a69fe6483959dbb783152), the parser conda uses with its default
//! solver (`_parse_spec_str_v3`, used only with `solver: rattler`, is stricter about brackets):
//!
//! 1. everything from the first `#` on is a comment; text after ` if ` is dropped;
//! 2. the bracket section is the text from the last `[` that has a `]` after it to the last
//!    `]` (`_BRACKETS_RE`, `.*(?:(\[.*\]))`); every copy of it is cut out of the string, and
//!    only its `key=value` pairs (`_BRACKETS_KV_RE`) are kept, so `tiled[all]` and
//!    `nbconvert[execute]!=6.0.0` lose the bracket without a word;
//! 3. `channel::` is split off with `rsplit(":", 2)`;
//! 4. the name is the text up to the first of ` =<>!~` (`_NAME_VERSION_RE`);
//! 5. the rest is cut into version and build at the first space or `=` that does not follow an
//!    operator and after which only build characters follow (`_VERSION_BUILD_RE`), spaces are
//!    dropped from the version, and `_sanitize_version_str` turns `=1.2` into `1.2*` and
//!    `==1.2` into `1.2`.

/// A dependency string as conda cuts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CondaSpecText {
    /// The bracket section as written, without its `[` `]`, when there is one.
    pub(crate) bracket: Option<String>,
    /// Its `key=value` pairs, in order (quotes removed), which conda keeps.
    pub(crate) bracket_pairs: Vec<(String, String)>,
    /// The string with the comment, the `if` tail and every copy of the bracket section cut.
    pub(crate) without_bracket: String,
    /// The channel before `::`, when there is one.
    pub(crate) channel: Option<String>,
    /// The package name as written.
    pub(crate) name: String,
    /// The version as conda keeps it (after `_sanitize_version_str`), from outside the
    /// brackets or, failing that, from `version=` inside them.
    pub(crate) version: Option<String>,
    /// The build string.
    pub(crate) build: Option<String>,
}

/// Why conda's MatchSpec refuses a string, in conda's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CondaRefusal(pub(crate) String);

/// Cuts `spec` as conda does; `Err` where conda's cutting itself refuses the string (the
/// version is checked by the caller).
pub(crate) fn split(spec: &str) -> Result<CondaSpecText, CondaRefusal> {
    let mut text = match spec.find('#') {
        Some(hash) => &spec[..hash],
        None => spec,
    };
    if let Some((head, _)) = text.split_once(" if ") {
        text = head;
    }

    let mut bracket = None;
    let mut bracket_pairs = Vec::new();
    let mut rest = text.to_owned();
    if let Some((start, end)) = bracket_section(text) {
        let section = &text[start..=end];
        rest = text.replace(section, "");
        let content = &section[1..section.len() - 1];
        for (key, value) in bracket_key_values(content) {
            if value.is_empty() {
                return Err(CondaRefusal("key-value mismatch in brackets".to_owned()));
            }
            bracket_pairs.push((key, value));
        }
        bracket = Some(content.to_owned());
    }

    // The legacy parentheses section (`_PARENS_RE`, `.*(?:(\(.*\)))`) is cut out the same way
    // and ignored.
    if let Some(close) = rest.rfind(')')
        && let Some(open) = rest[..close].rfind('(')
    {
        let section = rest[open..=close].to_owned();
        rest = rest.replace(&section, "");
    }

    // `rsplit(":", 2)`: at most two cuts from the right.
    let mut parts: Vec<&str> = rest.rsplitn(3, ':').collect();
    parts.reverse();
    let after_channel = parts.last().copied().unwrap_or_default();
    let channel = (parts.len() == 3)
        .then(|| parts[0].trim().to_owned())
        .filter(|c| !c.is_empty());

    let name_end = after_channel
        .find([' ', '=', '<', '>', '!', '~'])
        .unwrap_or(after_channel.len());
    let name = &after_channel[..name_end];
    if name.is_empty() {
        return Err(CondaRefusal(format!(
            "no package name found in '{after_channel}'"
        )));
    }
    check_name(name)?;
    // `([><!=~\ ].+)?`: an operator character followed by at least one character.
    let version_text = &after_channel[name_end..];
    let version_text = if version_text.chars().count() >= 2 {
        version_text.trim()
    } else {
        ""
    };
    let (mut version, build) = if version_text.is_empty() {
        (None, None)
    } else {
        if version_text.contains('[') {
            return Err(CondaRefusal(
                "multiple brackets sections not allowed".to_owned(),
            ));
        }
        let (version, build) = version_plus_build(version_text);
        (Some(sanitize_version(&version, build.as_deref())), build)
    };
    let build = bracket_pairs
        .iter()
        .find(|(key, _)| key == "build")
        .map(|(_, value)| value.clone())
        .or(build);
    if let Some((_, value)) = bracket_pairs.iter().find(|(key, _)| key == "version") {
        version = Some(sanitize_version(value, None));
    }
    Ok(CondaSpecText {
        bracket,
        bracket_pairs,
        without_bracket: rest.trim().to_owned(),
        channel,
        name: name.to_owned(),
        version,
        build,
    })
}

/// `_BRACKETS_RE`: from the last `[` before the last `]` to that `]`, as byte offsets.
fn bracket_section(text: &str) -> Option<(usize, usize)> {
    let end = text.rfind(']')?;
    let start = text[..end].rfind('[')?;
    Some((start, end))
}

/// `_BRACKETS_KV_RE.finditer`: `key=value`, `key='value'`, `key="value"`, each ended by `,`,
/// a space or the end.
fn bracket_key_values(content: &str) -> Vec<(String, String)> {
    let bytes = content.as_bytes();
    let is_key = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    let mut pairs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_key(bytes[i]) {
            i += 1;
            continue;
        }
        let mut key_end = i;
        while key_end < bytes.len() && is_key(bytes[key_end]) {
            key_end += 1;
        }
        if bytes.get(key_end) != Some(&b'=') {
            i += 1;
            continue;
        }
        let value_start = key_end + 1;
        let quote = bytes
            .get(value_start)
            .copied()
            .filter(|b| *b == b'\'' || *b == b'"');
        let body = value_start + usize::from(quote.is_some());
        // The shortest run of non-quote characters followed by the quote (if any), then by
        // `,`, a space or the end.
        let mut matched = None;
        let mut j = body;
        loop {
            let closes = match quote {
                Some(q) => bytes.get(j) == Some(&q),
                None => true,
            };
            let after = j + usize::from(quote.is_some());
            if closes && (after == bytes.len() || matches!(bytes[after], b',' | b' ')) {
                matched = Some((j, (after + 1).min(bytes.len())));
                break;
            }
            if j >= bytes.len() || matches!(bytes[j], b'\'' | b'"') {
                break;
            }
            j += 1;
        }
        match matched {
            Some((value_end, next)) => {
                pairs.push((
                    content[i..key_end].to_owned(),
                    content[body..value_end].to_owned(),
                ));
                i = next;
            }
            None => i += 1,
        }
    }
    pairs
}

/// `_validate_package_name`: CEP 26 names, case folded; names with `*` are globs.
fn check_name(name: &str) -> Result<(), CondaRefusal> {
    if name.contains('*') {
        return Ok(());
    }
    let lower = name.to_lowercase();
    let mut invalid = String::new();
    for c in lower.chars() {
        let allowed = c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-');
        if !(allowed || invalid.contains(c)) {
            invalid.push(c);
        }
    }
    if !invalid.is_empty() {
        return Err(CondaRefusal(format!(
            "package name contains invalid characters ({invalid})"
        )));
    }
    if cep26_name(&lower) {
        Ok(())
    } else {
        Err(CondaRefusal("invalid package name".to_owned()))
    }
}

/// `_CEP26_NAME_RE` or `_CEP26_VIRTUAL_NAME_RE` on a lower-case name of allowed characters:
/// a first character (`_` only when no `_` follows), at most one separator, then runs of
/// letters and digits each ended by one separator or the end; `__` and the same for virtual
/// packages.
fn cep26_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let is_separator = |b: u8| matches!(b, b'.' | b'-' | b'_');
    let mut i = if let Some(rest) = name.strip_prefix("__") {
        // Virtual: `__[a-z0-9]`.
        if !rest
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        {
            return false;
        }
        3
    } else {
        match bytes.first() {
            Some(b) if b.is_ascii_alphanumeric() => 1,
            Some(b'_') if bytes.get(1) != Some(&b'_') => 1,
            _ => return false,
        }
    };
    if bytes.get(i).is_some_and(|b| is_separator(*b)) {
        i += 1;
    }
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i < bytes.len() {
            if !is_separator(bytes[i]) {
                return false;
            }
            i += 1;
        }
    }
    true
}

/// `_parse_version_plus_build`: the build is what follows the first space or `=` that is
/// not after an operator character (`=!|,<>~`) and after which only characters other than
/// `-=,|<>~` follow; spaces are dropped from the version.
fn version_plus_build(text: &str) -> (String, Option<String>) {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (position, &(offset, c)) in chars.iter().enumerate().skip(1) {
        if c != ' ' && c != '=' {
            continue;
        }
        if matches!(
            chars[position - 1].1,
            '=' | '!' | '|' | ',' | '<' | '>' | '~'
        ) {
            continue;
        }
        let build = &text[offset + 1..];
        if !build.is_empty() && !build.contains(['-', '=', ',', '|', '<', '>', '~']) {
            let build = build.trim();
            return (
                text[..offset].replace(' ', ""),
                (!build.is_empty()).then(|| build.to_owned()),
            );
        }
    }
    (text.replace(' ', ""), None)
}

/// `_sanitize_version_str`.
fn sanitize_version(version: &str, build: Option<&str>) -> String {
    if version == "==" || version == "=" || !version.starts_with('=') {
        return version.to_owned();
    }
    let without = version.trim_start_matches('=');
    if version.starts_with("==") && build.is_none() {
        return without.to_owned();
    }
    if !without.contains(['=', ',', '|']) {
        if build.is_none() && !without.ends_with('*') {
            return format!("{without}*");
        }
        return without.to_owned();
    }
    version.to_owned()
}

/// The fields a MatchSpec matches on (`MatchSpec.FIELD_NAMES`); a bracket key outside them
/// is refused ("Cannot match on field(s)").
const FIELD_NAMES: &[&str] = &[
    "channel",
    "subdir",
    "name",
    "version",
    "build",
    "build_number",
    "track_features",
    "features",
    "url",
    "md5",
    "sha256",
    "license",
    "license_family",
    "fn",
    "when",
    "extras",
    "flags",
];

/// Why conda's `MatchSpec(spec)` raises, or `None` when it reads the string. Tarball paths and
/// URLs (which conda reads as a package file, not cut as above) are not checked.
pub(crate) fn refusal(spec: &str) -> Option<CondaRefusal> {
    let text = spec.split('#').next().unwrap_or(spec).trim();
    if text.ends_with('@')
        || [".conda", ".tar.bz2", ".whl"]
            .iter()
            .any(|ext| text.ends_with(ext))
    {
        return None;
    }
    let parts = match split(spec) {
        Ok(parts) => parts,
        Err(refusal) => return Some(refusal),
    };
    let unknown: Vec<&str> = parts
        .bracket_pairs
        .iter()
        .map(|(key, _)| key.as_str())
        .filter(|key| !FIELD_NAMES.contains(key))
        .collect();
    if !unknown.is_empty() {
        return Some(CondaRefusal(format!(
            "Cannot match on field(s): {}",
            unknown.join(", ")
        )));
    }
    check_version_spec(parts.version.as_deref()?)
        .err()
        .map(CondaRefusal)
}

/// `VersionSpec(text)`: `treeify` for `,`, `|` and parentheses, then each leaf. The error is
/// conda's message: `Invalid version 'TEXT': REASON`, naming the part it refused.
pub(crate) fn check_version_spec(text: &str) -> Result<(), String> {
    let invalid = |reason: &str| format!("Invalid version '{text}': {reason}");
    if !text.contains(['(', ')', '|', ',', '^', '$']) {
        return check_version_leaf(text);
    }
    // The tokens of `VSPEC_TOKENS` over `(text)`: regexes `^...$`, the operators `()|,`, and
    // the text between them; then `treeify`'s operator stack, counting the expressions on
    // its output, and every leaf checked as a VersionSpec of its own.
    let wrapped = format!("({text})");
    let mut tokens = Vec::new();
    let mut rest = wrapped.as_str();
    while !rest.is_empty() {
        let trimmed = rest.trim_start();
        if let Some(end) = trimmed.strip_prefix('^').and_then(|regex| regex.find('$')) {
            tokens.push(&trimmed[..end + 2]);
            rest = &trimmed[end + 2..];
        } else if trimmed.starts_with(['(', ')', '|', ',']) {
            tokens.push(&trimmed[..1]);
            rest = &trimmed[1..];
        } else {
            let end = rest.find(['(', ')', '|', ',']).unwrap_or(rest.len());
            tokens.push(&rest[..end]);
            rest = &rest[end..];
        }
    }
    let mut outputs = 0_usize;
    let mut stack: Vec<&str> = Vec::new();
    let mut leaves = Vec::new();
    let apply = |stack: &mut Vec<&str>, outputs: &mut usize, stop: &[&str]| {
        while let Some(top) = stack.last() {
            if stop.contains(top) {
                break;
            }
            if *outputs < 2 {
                return Err(invalid("cannot join single expression"));
            }
            stack.pop();
            *outputs -= 1;
        }
        Ok(())
    };
    for token in tokens {
        match token.trim() {
            "|" => {
                apply(&mut stack, &mut outputs, &["("])?;
                stack.push("|");
            }
            "," => {
                apply(&mut stack, &mut outputs, &["|", "("])?;
                stack.push(",");
            }
            "(" => stack.push("("),
            ")" => {
                apply(&mut stack, &mut outputs, &["("])?;
                if stack.pop() != Some("(") {
                    return Err(invalid("expression must start with '('"));
                }
            }
            leaf => {
                outputs += 1;
                leaves.push(leaf);
            }
        }
    }
    if !stack.is_empty() {
        return Err(invalid("unable to convert to expression tree"));
    }
    if outputs == 0 {
        return Err(invalid("unable to determine version from spec"));
    }
    leaves.into_iter().try_for_each(check_version_leaf)
}

/// One leaf of a version spec (`VersionSpec.get_matcher` for a string).
fn check_version_leaf(text: &str) -> Result<(), String> {
    let text = text.trim();
    let invalid = |reason: &str| format!("Invalid version '{text}': {reason}");
    let Some(first) = text.chars().next() else {
        return Err(invalid("empty version spec"));
    };
    if first == '^' || text.ends_with('$') {
        if first != '^' || !text.ends_with('$') {
            return Err(invalid("regex specs must start with '^' and end with '$'"));
        }
        return Ok(());
    }
    if "=<>!~".contains(first) {
        let (operator, version) = ["==", "!=", "<=", ">=", "~=", "=", "<", ">"]
            .iter()
            .find_map(|op| {
                let rest = text.strip_prefix(op)?;
                (!rest.starts_with(['=', '<', '>', '!', '~'])
                    && !rest.is_empty()
                    && !rest.contains(char::is_whitespace))
                .then_some((*op, rest))
            })
            .ok_or_else(|| invalid("invalid operator"))?;
        let version = match version.strip_suffix(".*") {
            Some(_) if operator == "~=" => return Err(invalid("invalid operator with '.*'")),
            Some(stripped) => stripped,
            None => version,
        };
        return check_version_order(version);
    }
    if text == "*" || text.trim_end_matches('*').contains('*') {
        return Ok(());
    }
    if text.ends_with('*') {
        return check_version_order(text.trim_end_matches('*').trim_end_matches('.'));
    }
    if !text.contains('@') {
        return check_version_order(text);
    }
    Ok(())
}

/// `VersionOrder(text)`: the characters conda allows, one epoch, one local part, and no empty
/// component.
fn check_version_order(text: &str) -> Result<(), String> {
    let invalid = |reason: &str| Err(format!("Invalid version '{text}': {reason}"));
    let mut version = text.trim().to_lowercase();
    if version.is_empty() {
        return invalid("empty version string");
    }
    let allowed = |v: &str| {
        v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "*.+!_".contains(c))
    };
    if !allowed(&version) && version.contains('-') && !version.contains('_') {
        version = version.replace('-', "_");
    }
    if !allowed(&version) {
        return invalid("invalid character(s)");
    }
    let epoch_parts: Vec<&str> = version.split('!').collect();
    let main = match epoch_parts.as_slice() {
        [main] => *main,
        [epoch, main] => {
            if epoch.is_empty() || !epoch.chars().all(|c| c.is_ascii_digit()) {
                return invalid("epoch must be an integer");
            }
            main
        }
        _ => return invalid("duplicated epoch separator '!'"),
    };
    let local_parts: Vec<&str> = main.split('+').collect();
    let (main, local) = match local_parts.as_slice() {
        [main] => (*main, None),
        [main, local] => (*main, Some(*local)),
        _ => return invalid("duplicated local version separator '+'"),
    };
    if main.is_empty() {
        return invalid("Missing version before local version separator '+'");
    }
    // A trailing `_` is put back on the last component (`1.0_` stays one component).
    let (main, trailing_underscore) = match main.strip_suffix('_') {
        Some(main) => (main, true),
        None => (main, false),
    };
    let mut components: Vec<&str> = main.split(['_', '.']).collect();
    if trailing_underscore {
        components.pop();
    }
    let local = local.into_iter().flat_map(|local| local.split(['_', '.']));
    for component in components.into_iter().chain(local) {
        if component.is_empty() {
            return invalid("empty version component");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(spec: &str) -> (String, Option<String>, Option<String>) {
        let text = split(spec).unwrap();
        (text.name, text.version, text.build)
    }

    /// The examples in conda's own docstrings (`_parse_version_plus_build`) and what conda
    /// 0f64223 gives for the strings of issue #14.
    #[test]
    fn cuts_as_conda_does() {
        assert_eq!(
            version_plus_build("=1.2.3 0"),
            ("=1.2.3".into(), Some("0".into()))
        );
        assert_eq!(
            version_plus_build("1.2.3=0"),
            ("1.2.3".into(), Some("0".into()))
        );
        assert_eq!(
            version_plus_build(">=1.0 , < 2.0 py34_0"),
            (">=1.0,<2.0".into(), Some("py34_0".into()))
        );
        assert_eq!(
            version_plus_build(">1.8,<2|==1.7"),
            (">1.8,<2|==1.7".into(), None)
        );
        assert_eq!(version_plus_build("* *"), ("*".into(), Some("*".into())));
        assert_eq!(
            parts("python>=3.11 - openmpi - mypy"),
            (
                "python".into(),
                Some(">=3.11-openmpi-".into()),
                Some("mypy".into())
            )
        );
        assert_eq!(
            parts("re2=2022.04.01=h295c915_0"),
            (
                "re2".into(),
                Some("2022.04.01".into()),
                Some("h295c915_0".into())
            )
        );
        assert_eq!(
            parts("fastqc=0.12.01"),
            ("fastqc".into(), Some("0.12.01*".into()), None)
        );
        assert_eq!(parts("numpy="), ("numpy".into(), None, None));
        let nbconvert = split("nbconvert[execute]!=6.0.0,!=7.3.0").unwrap();
        assert_eq!(nbconvert.bracket.as_deref(), Some("execute"));
        assert!(nbconvert.bracket_pairs.is_empty());
        assert_eq!(nbconvert.without_bracket, "nbconvert!=6.0.0,!=7.3.0");
        assert_eq!(nbconvert.version.as_deref(), Some("!=6.0.0,!=7.3.0"));
    }

    #[test]
    fn keeps_only_key_values_in_brackets() {
        assert_eq!(
            bracket_key_values("a, version='>=1', build=py*"),
            [
                ("version".to_owned(), ">=1".to_owned()),
                ("build".to_owned(), "py*".to_owned())
            ]
        );
        assert!(bracket_key_values("a,b").is_empty());
        assert!(split("x[version=]").is_err());
        assert_eq!(parts("name[version='>=1']").1.as_deref(), Some(">=1"));
        assert_eq!(parts("name[build=py*]").2.as_deref(), Some("py*"));
    }

    /// What conda 0f64223's `MatchSpec` gives for each (run there: `MatchSpec(text)`).
    #[test]
    fn refuses_what_conda_refuses() {
        for accepted in [
            "python>=3.11 - openmpi - mypy",
            "python - openmpi",
            "nbconvert[execute]!=6.0.0,!=7.3.0",
            "tiled[all]",
            "name[a,b]",
            "re2=2022.04.01=h295c915_0",
            "numpy >=1.2",
            "foo[a, version=1.2]",
            "numpy=",
            "pytorch::pytorch==2.0.1",
            "python>=3.8,<3.12|3.7.*",
            "_libgcc_mutex",
            "__cuda>=12",
            "r-base-",
            "a.b",
        ] {
            assert_eq!(refusal(accepted), None, "{accepted}");
        }
        for (refused, reason) in [
            (
                "python>=3.11 - openmpi - mypy - numpy>=1.2",
                "Invalid version '3.11-openmpi-mypy-numpy>=1.2': invalid character(s)",
            ),
            (
                "numpy - scipy - pandas=1.2",
                "Invalid version '-scipy-pandas': empty version component",
            ),
            (
                "python=__PYTHON_VERSION__",
                "Invalid version '__PYTHON_VERSION__': empty version component",
            ),
            (
                "{{ local-package }}",
                "package name contains invalid characters ({)",
            ),
            ("name[a=b]", "Cannot match on field(s): a"),
            (
                "foo[x]>=1[y]",
                "package name contains invalid characters ([])",
            ),
        ] {
            assert_eq!(
                refusal(refused).map(|r| r.0).as_deref(),
                Some(reason),
                "{refused}"
            );
        }
    }
}
