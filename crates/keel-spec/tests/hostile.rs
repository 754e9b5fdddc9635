//! Hostile input (hardening issue #13): files made to exhaust memory or time, to end the parse
//! early, or to make the reader panic. Each is refused with an error at its place, and the
//! reader stays linear in the size of its input. The bad-input corpus shared with the CLI's
//! harness lives in `crates/keel-cli/tests/hostile/environment-yml/`.

use std::path::{Path, PathBuf};

use keel_spec::{Checked, SpecError, check_bytes, check_path, check_str};
use proptest::prelude::*;

/// The text a problem's location must lie in: 1-based lines split at `\n` (a `\r` before it
/// is not shown), and columns up to one past the end of the line (where an unclosed bracket
/// is reported).
fn assert_locations_inside(checked: &Checked) {
    let text = &checked.report.text;
    let lines: Vec<&str> = text.split('\n').collect();
    for problem in &checked.report.problems {
        let Some(location) = problem.location else {
            continue;
        };
        assert!(
            (1..=lines.len()).contains(&location.line),
            "line {} of {}: {}",
            location.line,
            lines.len(),
            problem.message()
        );
        let line = lines[location.line - 1];
        let line = line.strip_suffix('\r').unwrap_or(line);
        assert!(
            (1..=line.chars().count() + 1).contains(&location.column),
            "column {} of a line of {} characters: {}",
            location.column,
            line.chars().count(),
            problem.message()
        );
        assert!(location.offset + location.len <= text.len());
        assert!(text.is_char_boundary(location.offset));
    }
}

/// The one error of `text`, which must be a YAML error.
fn yaml_error(text: &str) -> (String, usize, usize) {
    let checked = check_str(text, "hostile.yml");
    assert!(checked.spec.is_none());
    assert_locations_inside(&checked);
    let errors: Vec<_> = checked.report.errors().collect();
    assert_eq!(errors.len(), 1, "{}", checked.report);
    let location = errors[0].location.expect("a YAML error has a place");
    (errors[0].message(), location.line, location.column)
}

/// `levels` levels of nine aliases each to the level below (the "billion laughs").
fn alias_bomb(levels: usize) -> String {
    let mut text = String::from("dependencies: [python]\nvariables:\n");
    text.push_str("  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..levels {
        let below = vec![format!("*l{}", level - 1); 9].join(", ");
        text.push_str(&format!("  l{level}: &l{level} [{below}]\n"));
    }
    text
}

/// Hardening issue #13: 6 levels of aliases (a few hundred bytes) took 3 GB; now refused at
/// the first alias past the allowance.
#[test]
fn alias_bomb_of_six_levels_is_refused_at_its_alias() {
    let text = alias_bomb(6);
    let (message, line, column) = yaml_error(&text);
    assert!(message.contains("alias bomb"), "{message}");
    let at = text.lines().nth(line - 1).unwrap();
    assert_eq!(at.chars().nth(column - 1), Some('*'), "{at}");
}

/// Hardening issue #13: 9 levels aborted the process.
#[test]
fn alias_bomb_of_nine_levels_is_refused() {
    assert!(yaml_error(&alias_bomb(9)).0.contains("alias bomb"));
}

/// Hardening issue #13: few nodes but long scalars: a copy costs its bytes, not just a node.
#[test]
fn alias_bomb_of_long_scalars_is_refused() {
    let text = format!(
        "x: &x \"{}\"\ndependencies: [{}]\n",
        "A".repeat(8000),
        vec!["*x"; 1500].join(", ")
    );
    assert!(yaml_error(&text).0.contains("alias bomb"));
}

/// Hardening issue #13: each anchor keeps a copy of what it holds, so anchors nested one in
/// the next copy the innermost value once per level; those copies are paid for too.
#[test]
fn nested_anchors_are_refused() {
    let depth = 100;
    let opening: String = (0..depth).map(|i| format!("&a{i} [")).collect();
    let text = format!(
        "dependencies:\n  - {opening}\"{}\"{}\n",
        "B".repeat(4000),
        "]".repeat(depth)
    );
    assert!(yaml_error(&text).0.contains("alias bomb"));
}

/// The allowance leaves room for the aliases real files use.
#[test]
fn aliases_within_the_allowance_still_resolve() {
    let text = "\
dependencies: &deps [python, numpy]
variables: {A: &a x, B: *a}
platforms: &platforms [linux-64]
";
    let checked = check_str(text, "aliases.yml");
    assert!(!checked.report.has_errors(), "{}", checked.report);
    let spec = checked.spec.unwrap();
    assert_eq!(spec.variables["B"], "x");
    // Ten copies of a list of 200 entries.
    let text = format!(
        "base: &base [{}]\ndependencies: [python]\nx: [{}]\n",
        vec!["requests"; 200].join(", "),
        ["*base"; 10].join(", ")
    );
    let checked = check_str(&text, "copies.yml");
    assert!(!checked.report.has_errors(), "{}", checked.report);
}

/// Hardening issue #13: a NUL ended the parse silently, and every dependency after it was
/// dropped; it is an error at its line and column, as conda's reader makes it.
#[test]
fn nul_byte_is_refused_at_its_place() {
    let text = "name: nul\ndependencies:\n  - python=3.10\n  \0- numpy\n";
    let (message, line, column) = yaml_error(text);
    assert!(message.contains("U+0000"), "{message}");
    assert_eq!((line, column), (4, 3));
}

/// Hardening issue #13: every character YAML 1.2 leaves out of `c-printable` is an error at
/// its place, wherever it is (a value, a comment, quotes); tab, CR, LF and NEL are allowed.
#[test]
fn every_character_yaml_forbids_is_refused_at_its_place() {
    let forbidden = (0u32..0x20)
        .filter(|c| ![0x09, 0x0A, 0x0D].contains(c))
        .chain([0x7F, 0xFFFE, 0xFFFF])
        .chain((0x80..0xA0).filter(|c| *c != 0x85));
    for code in forbidden {
        let c = char::from_u32(code).unwrap();
        for text in [
            format!("dependencies:\n  - nu{c}mpy\n"),
            format!("dependencies:\n  - 'nu{c}mpy'\n"),
            format!("dependencies:\n  - nu # {c}\n"),
        ] {
            let (message, line, column) = yaml_error(&text);
            assert!(message.contains(&format!("U+{code:04X}")), "{message}");
            assert_eq!(line, 2, "U+{code:04X}");
            let at = text.lines().nth(1).unwrap().chars().nth(column - 1);
            assert_eq!(at, Some(c), "U+{code:04X}");
        }
    }
    for allowed in ['\t', '\u{85}', '\u{A0}', '\u{FFFD}', '\u{10FFFF}'] {
        let text = format!("dependencies:\n  - 'nu{allowed}mpy'\n");
        let checked = check_str(&text, "allowed.yml");
        assert!(
            !checked
                .report
                .problems
                .iter()
                .any(|p| p.message().contains("not allowed")),
            "{}",
            checked.report
        );
    }
}

/// Hardening issue #13: a 1 MB line of 64k inline entries took 10.7 s because every
/// location walked its line from the start. This one (1 MB, 350k entries) would take hours
/// that way; linear, it takes a moment.
#[test]
fn one_megabyte_line_parses_without_panic() {
    let count = 350_000;
    let text = format!("dependencies: [{}]\n", vec!["a"; count].join(", "));
    assert!(text.len() > 1 << 20);
    let checked = check_str(&text, "wide.yml");
    assert!(!checked.report.has_errors(), "{}", checked.report);
    let spec = checked.spec.unwrap();
    assert_eq!(spec.conda_dependencies().count(), count);
    let last = spec.conda_dependencies().last().unwrap().location.unwrap();
    assert_eq!(last.column, text.len() - 2);
}

/// Hardening issue #13: many errors on one long line: each snippet shows a bounded window of
/// the line around its column, so the report grows with the number of errors, not with
/// errors times the line.
#[test]
fn many_errors_on_one_long_line_show_bounded_snippets() {
    let count = 20_000;
    let text = format!("dependencies: [{}]\n", vec!["a=>>1"; count].join(", "));
    let checked = check_str(&text, "errors.yml");
    assert_eq!(checked.report.errors().count(), count);
    assert_locations_inside(&checked);
    let shown = checked.report.to_string();
    for line in shown.lines() {
        assert!(line.chars().count() < 300, "{line}");
    }
    // The window around the last error: cut before it, the caret under `a=>>1`.
    let last = shown.lines().rev().take(3).collect::<Vec<_>>();
    assert!(
        last[1].contains("| …") && last[1].ends_with("a=>>1]"),
        "{}",
        last[1]
    );
    assert!(last[0].ends_with("^^^^^"), "{}", last[0]);
}

/// Hardening issue #13: a 65,536-character `name:` (a width `format!` refuses) reads, and an
/// error after it on its line is shown with the line cut around the error.
#[test]
fn name_of_65536_characters_parses_and_reports() {
    let name = "n".repeat(65_536);
    let checked = check_str(
        &format!("name: {name}\ndependencies: [python]\n"),
        "long.yml",
    );
    assert_eq!(checked.spec.unwrap().name.as_deref(), Some(name.as_str()));
    let checked = check_str(
        &format!("name: {name}: x\ndependencies: [python]\n"),
        "long.yml",
    );
    assert!(checked.report.has_errors());
    assert_locations_inside(&checked);
    let shown = checked.report.to_string();
    assert!(shown.len() < 2000, "{shown}");
}

/// Hardening issue #13: a 100,000-deep flow sequence is refused with an error, not a stack
/// overflow (in the YAML reader, or when the tree is dropped).
#[test]
fn hundred_thousand_deep_flow_sequence_is_refused() {
    let text = format!(
        "dependencies: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (message, line, column) = yaml_error(&text);
    assert!(
        message.contains("deeper than") || message.contains("recursion limit"),
        "{message}"
    );
    assert_eq!(line, 1);
    assert!(column > 100, "{column}");
}

/// Hardening issue #13: block nesting (`- - - …`) has no limit in the YAML scanner, and
/// `yaml-rust2`'s loader recursed once per level: now bounded with an error at the level.
#[test]
fn hundred_thousand_deep_block_sequence_is_refused() {
    let text = format!("dependencies:\n  {}python\n", "- ".repeat(100_000));
    let (message, line, _) = yaml_error(&text);
    assert!(message.contains("deeper than 128 levels"), "{message}");
    assert_eq!(line, 2);
    // A flow mapping nesting, unclosed.
    let text = format!("dependencies: {}\n", "{a: ".repeat(50_000));
    assert!(!yaml_error(&text).0.is_empty());
}

/// Hardening issue #13: invalid UTF-8 names the line and column of its first bad byte.
#[test]
fn invalid_utf8_is_an_error_at_its_line_and_column() {
    let error = check_bytes(b"name: bad\ndependencies:\n  - caf\xC3\x28\n", "bad.yml").unwrap_err();
    let SpecError::Encoding {
        line,
        column,
        offset,
        ..
    } = error
    else {
        panic!("{error}")
    };
    assert_eq!((line, column, offset), (3, 8, 31));
    assert!(error.to_string().starts_with("bad.yml:3:8: "), "{error}");
}

/// A unique path in the temporary folder, removed when dropped.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("keel-spec-hostile-{}-{name}", std::process::id()));
        let _ = fs_err::remove_file(&path);
        Self(path)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs_err::remove_file(&self.0);
    }
}

/// Hardening issue #13: reading a FIFO blocked forever; a path that is not a regular file is
/// refused before it is opened.
#[cfg(unix)]
#[test]
fn fifo_is_refused_without_blocking() {
    let fifo = TempPath::new("fifo.yml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo.0)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let error = check_path(&fifo.0).unwrap_err();
    assert!(matches!(error, SpecError::NotAFile { .. }), "{error}");
    assert!(error.to_string().contains("fifo.yml"), "{error}");
    let error = check_path(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap_err();
    assert!(matches!(error, SpecError::NotAFile { .. }), "{error}");
}

/// Hardening issue #13: a huge (sparse) file is refused from its size, before it is read.
#[test]
fn file_over_the_size_limit_is_refused() {
    let huge = TempPath::new("huge.yml");
    let file = fs_err::File::create(&huge.0).unwrap();
    file.set_len(5 << 30).unwrap();
    drop(file);
    let error = check_path(&huge.0).unwrap_err();
    assert!(matches!(error, SpecError::TooLarge { .. }), "{error}");
    assert!(error.to_string().contains("huge.yml"), "{error}");
}

/// Every file of the CLI's bad-input corpus for this format is refused (an error, never a
/// panic), every place it names lies in the file, and the report's lines stay short.
#[test]
fn every_hostile_file_is_refused_in_place() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../keel-cli/tests/hostile/environment-yml");
    let mut files: Vec<PathBuf> = fs_err::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{}", dir.display());
    for path in files {
        match check_path(&path) {
            Ok(checked) => {
                assert!(checked.report.has_errors(), "{} was read", path.display());
                assert_locations_inside(&checked);
                let shown = checked.report.to_string();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                assert!(shown.contains(&name), "{shown}");
                assert!(shown.lines().all(|l| l.chars().count() < 400), "{name}");
            }
            Err(error @ SpecError::Encoding { .. }) => {
                assert!(error.to_string().contains(&*path.to_string_lossy()));
            }
            Err(error) => panic!("{}: {error}", path.display()),
        }
    }
}

/// Pieces of YAML and of hostile files: indicators, anchors and aliases, forbidden
/// characters, byte-order marks, line breaks of every kind.
fn piece() -> impl Strategy<Value = &'static str> {
    // `select`, not `prop_oneof!`: a union of this many arms is slow to build in debug.
    proptest::sample::select(vec![
        "dependencies:",
        "name: ",
        "channels: ",
        "variables:",
        "- ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\r",
        "python=3.10",
        "a=>>1",
        "'",
        "\"",
        "\\",
        "[",
        "]",
        "{",
        "}",
        ",",
        ": ",
        "?",
        "&a ",
        "*a",
        "&b ",
        "*b",
        "*z",
        "# [linux]",
        "---",
        "...",
        "|",
        ">",
        "!!str ",
        "%YAML 1.2",
        "\0",
        "\u{7}",
        "\u{7f}",
        "\u{85}",
        "\u{2028}",
        "\u{feff}",
        "\u{fffe}",
        "é",
        "日本",
        "- pip:",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Rule: for any text made of YAML's pieces and hostile characters, the reader does not
    /// panic, every problem's place lies inside the text (line at most the number of lines,
    /// column at most one past its line's end, offset on a character boundary), and the
    /// report shows without panicking.
    #[test]
    fn hostile_text_is_answered_in_place(pieces in proptest::collection::vec(piece(), 0..80)) {
        let text: String = pieces.concat();
        let checked = check_str(&text, "pieces.yml");
        assert_locations_inside(&checked);
        let _ = checked.report.to_string();
    }

    /// Rule: for any bytes, the reader does not panic; a decoding error names a line of the
    /// text and a column of that line, and every problem's place lies inside the text.
    #[test]
    fn random_bytes_are_answered_in_place(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        match check_bytes(&bytes, "random.yml") {
            Ok(checked) => {
                assert_locations_inside(&checked);
                let _ = checked.report.to_string();
            }
            Err(SpecError::Encoding { line, column, offset, .. }) => {
                prop_assert!(offset < bytes.len());
                prop_assert!(column >= 1 && line >= 1);
                if !bytes.starts_with(b"\xFF\xFE") && !bytes.starts_with(b"\xFE\xFF") {
                    let before = String::from_utf8_lossy(&bytes[..offset]);
                    prop_assert_eq!(line, before.split('\n').count());
                    let line_text = before.rsplit('\n').next().unwrap_or_default();
                    prop_assert_eq!(column, line_text.trim_start_matches('\u{feff}').chars().count() + 1);
                }
            }
            Err(error) => prop_assert!(false, "{}", error),
        }
    }
}
