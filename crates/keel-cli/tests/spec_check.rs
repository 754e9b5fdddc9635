//! `keel spec check` end to end: the binary on real files, its exit codes, its JSON.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .current_dir(repo())
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

#[test]
fn bundled_examples_are_valid() {
    let output = keel(&[
        "spec",
        "check",
        "examples/vit-training/environment.yml",
        "examples/fault-tolerance/environment.yml",
    ]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("FILE"), "{stdout}");
    assert!(stdout.contains("vit-training"), "{stdout}");
}

#[test]
fn json_has_the_typed_spec_and_every_problem() {
    let output = keel(&[
        "spec",
        "check",
        "--json",
        "examples/vit-training/environment.yml",
        "crates/keel-spec/test-data/invalid/invalid-specs.yml",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let files = json.as_array().unwrap();
    assert_eq!(files.len(), 2);

    let vit = &files[0];
    assert_eq!(vit["valid"], true);
    assert_eq!(vit["spec"]["name"], "vit-training");
    let torch = &vit["spec"]["dependencies"][1];
    assert_eq!(torch["spec"]["name"], "pytorch");
    assert_eq!(torch["spec"]["version"], "2.0.1.*");

    let bad = &files[1];
    assert_eq!(bad["valid"], false);
    assert_eq!(bad["errors"], 2);
    let first = &bad["problems"][0];
    assert_eq!(first["severity"], "error");
    assert_eq!(first["line"], 4);
    assert_eq!(first["column"], 5);
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .contains("nota~matchspec")
    );
}

#[test]
fn errors_name_the_file_line_and_column_with_a_caret() {
    let output = keel(&[
        "spec",
        "check",
        "crates/keel-spec/test-data/invalid/tab-indent.yml",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("tab-indent.yml:3:1"), "{stderr}");
    assert!(stderr.contains("replace the tab"), "{stderr}");
    assert!(stderr.contains('┬'), "{stderr}");
}

/// Issue #14: the block list's indentation mistake is refused at the line where the joined
/// string starts, and the JSON shows a version as written (`2022.07.19`, not `2022.7.19`).
#[test]
fn conda_rules_reach_the_command() {
    let output = keel(&["spec", "check", "test-data/spec-rules/multiline-scalar.yml"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("multiline-scalar.yml:7"), "{stderr}");
    assert!(stderr.contains("line 7, column 3"), "{stderr}");
    assert!(stderr.contains("indentation mistake"), "{stderr}");

    let output = keel(&[
        "spec",
        "check",
        "--json",
        "test-data/spec-rules/version-text.yml",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let first = &json[0]["spec"]["dependencies"][0]["spec"];
    assert_eq!(first["version"], "2022.07.19.*", "{json}");
}

#[test]
fn strict_turns_warnings_into_failure() {
    let file = "crates/keel-spec/test-data/valid/tabs.yml";
    assert_eq!(keel(&["spec", "check", file]).status.code(), Some(0));
    assert_eq!(
        keel(&["spec", "check", "--strict", file]).status.code(),
        Some(2)
    );
}

#[test]
fn a_missing_file_is_a_clear_input_error() {
    let output = keel(&["spec", "check", "does-not-exist.yml"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("does-not-exist.yml"), "{stderr}");
}

#[test]
fn help_lists_the_commands_that_exist() {
    let output = keel(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("spec"), "{stdout}");
    let output = keel(&["spec", "--help"]);
    assert!(String::from_utf8(output.stdout).unwrap().contains("check"));
}
