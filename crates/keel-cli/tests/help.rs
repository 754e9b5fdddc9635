//! `keel --help` says what keel is: its first line covers both halves (environments and
//! training), and its description names every command it lists.

use std::process::Command;

fn help(flag: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg(flag)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn first_line_says_what_keel_is() {
    let text = help("-h");
    let first = text.lines().next().unwrap();
    assert!(
        first.contains("training") && first.contains("reproducible") && first.contains("crash"),
        "{first}"
    );
}

#[test]
fn description_names_every_command() {
    let text = help("--help");
    let (about, rest) = text.split_once("Usage:").unwrap();
    let commands: Vec<&str> = rest
        .split_once("Commands:")
        .unwrap()
        .1
        .trim_start_matches('\n')
        .lines()
        .take_while(|line| !line.trim().is_empty())
        // A command's line starts at column 2; its wrapped description further right.
        .filter(|line| line.starts_with("  ") && !line[2..].starts_with(' '))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .collect();
    assert!(commands.len() >= 11, "{commands:?}");
    for command in commands {
        assert!(
            about.contains(&format!("`{command}")),
            "`keel --help` lists `{command}` but its description does not name it:\n{about}"
        );
    }
}
