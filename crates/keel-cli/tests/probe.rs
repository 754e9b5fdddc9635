//! `keel probe` on this machine. Without a CUDA driver (as on CI) it must say so and exit 0.

mod common;

use std::process::Command;

use common::has_cuda_driver;

fn keel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

#[test]
fn probe_answers_without_panicking() {
    let output = keel(&["probe"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    if has_cuda_driver() {
        assert!(stdout.starts_with("NVIDIA driver"), "{stdout}");
    } else {
        assert_eq!(stdout.trim(), "no CUDA driver found");
    }

    let output = keel(&["probe", "--json"]);
    assert_eq!(output.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["driver"].is_null(), !has_cuda_driver());
    assert!(json["devices"].is_array());
}

#[test]
fn probe_rejects_a_bad_timeout() {
    let output = keel(&["probe", "--timeout", "0"]);
    assert_eq!(output.status.code(), Some(2));
}
