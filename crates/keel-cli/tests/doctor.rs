//! `keel doctor` end to end: a prefix whose conda-meta pins CUDA 11.8, checked against recorded
//! probes and against this node.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

fn keel(dir: &Path, args: &[&str]) -> Output {
    common::keel_in(dir).args(args).output().unwrap()
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../keel-cuda/tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// A prefix with the conda-meta record conda writes for pytorch-cuda 11.8.
fn cuda_prefix(dir: &Path) -> PathBuf {
    let meta = dir.join("prefix/conda-meta");
    fs_err::create_dir_all(&meta).unwrap();
    fs_err::write(
        meta.join("pytorch-cuda-11.8-h7e8668a_5.json"),
        r#"{"name": "pytorch-cuda", "version": "11.8", "build": "h7e8668a_5", "build_number": 5,
            "depends": ["cuda-runtime >=11.8,<12.0"], "subdir": "linux-64",
            "fn": "pytorch-cuda-11.8-h7e8668a_5.tar.bz2",
            "url": "https://conda.anaconda.org/pytorch/linux-64/pytorch-cuda-11.8-h7e8668a_5.tar.bz2",
            "channel": "https://conda.anaconda.org/pytorch", "files": [],
            "paths_data": {"paths_version": 1, "paths": []}}"#,
    )
    .unwrap();
    dir.join("prefix")
}

#[test]
fn doctor_passes_an_h100_and_warns_on_an_old_driver() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = cuda_prefix(dir.path());
    let prefix = prefix.to_str().unwrap();
    let h100 = keel(
        dir.path(),
        &[
            "doctor",
            "-p",
            prefix,
            "--probe-json",
            &fixture("h100.json"),
        ],
    );
    assert_eq!(
        h100.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&h100.stdout)
    );
    let stdout = String::from_utf8(h100.stdout).unwrap();
    assert!(stdout.contains("ok       driver"), "{stdout}");

    let old = keel(
        dir.path(),
        &[
            "doctor",
            "-p",
            prefix,
            "--probe-json",
            &fixture("old-driver.json"),
            "--json",
        ],
    );
    assert_eq!(old.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&old.stdout).unwrap();
    let driver = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "driver")
        .unwrap();
    assert_eq!(driver["level"], "warning");
    assert!(driver["fix"].as_str().unwrap().contains("520.61.05"));
}

#[test]
fn doctor_on_this_node_without_a_driver_fails_a_cuda_prefix() {
    let has_driver = common::has_cuda_driver();
    let dir = tempfile::tempdir().unwrap();
    let prefix = cuda_prefix(dir.path());
    let output = keel(dir.path(), &["doctor", "-p", prefix.to_str().unwrap()]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    if has_driver {
        assert!(stdout.contains("driver"), "{stdout}");
    } else {
        assert_eq!(output.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains("no CUDA driver"), "{stdout}");
    }
}

#[test]
fn doctor_rejects_what_is_not_a_prefix_or_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let output = keel(dir.path(), &["doctor", "-p", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a conda prefix"));
    let bogus = dir.path().join("probe.json");
    fs_err::write(&bogus, "{\"gpus\": 3}").unwrap();
    let output = keel(
        dir.path(),
        &["doctor", "--probe-json", bogus.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a `keel probe --json` report"));
    let output = keel(dir.path(), &["doctor", "-l", "missing.lock"]);
    assert_eq!(output.status.code(), Some(2));
}
