//! The GPU kit's scripts (`.ci/device-kit`, `.ci/device-check`, docs/gpu.md) on a machine
//! without a GPU: their arguments and failure paths, the kit's size limit, a kit packed from
//! this test's own `keel` that starts here, and the check script run against it, which must
//! finish, say "no GPU" and write its summary. The CUDA build itself is too slow for a test
//! (see docs/gpu.md); this checks every piece around it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Why a test did not run here, on the test's stderr.
fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

/// A script refused its arguments: exit 2, and `message` on stderr.
fn assert_usage_error(output: &Output, args: &[String], message: &str) {
    assert_eq!(output.status.code(), Some(2), "{args:?}: {}", shown(output));
    assert!(
        text(&output.stderr).contains(message),
        "{args:?}: {}",
        shown(output)
    );
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether this machine has a CUDA driver where drivers install it, or `nvidia-smi`: the
/// no-GPU test is for a machine with neither.
fn has_gpu_stack() -> bool {
    [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib64/libcuda.so.1",
        "/run/opengl-driver/lib/libcuda.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
        || Command::new("nvidia-smi").arg("-L").output().is_ok()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn script(name: &str) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(repo().join(".ci").join(name))
        .env("NO_COLOR", "1")
        .env_remove("KEEL_CHECK_DEVICE")
        .env_remove("KEEL_DEVICE_KIT_LIMIT_MIB");
    command
}

fn shown(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// A kit packed from the `keel` this test suite built (not a CUDA build: the scripts around
/// the binary are what is tested), compressed fast.
fn pack(out: &Path, start_check: bool) -> Output {
    let mut command = script("device-kit");
    command
        .env("KEEL_DEVICE_KIT_XZ_LEVEL", "0")
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_keel"))
        .arg(out);
    if !start_check {
        command.arg("--no-start-check");
    }
    command.output().unwrap()
}

/// The MANIFEST's lines (`file bytes sha256`), comments left out.
fn manifest(kit: &Path) -> Vec<(String, u64, String)> {
    fs_err::read_to_string(kit.join("MANIFEST"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let parts: Vec<&str> = l.split(' ').collect();
            assert_eq!(parts.len(), 3, "MANIFEST line {l:?}");
            (
                parts[0].to_owned(),
                parts[1].parse().unwrap(),
                parts[2].to_owned(),
            )
        })
        .collect()
}

fn sha256(path: &Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().unwrap();
    text(&output.stdout).split(' ').next().unwrap().to_owned()
}

#[test]
fn device_kit_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-binary");
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (vec!["--bogus".into()], "", "unknown option --bogus"),
        (vec!["--binary".into()], "", "--binary needs a FILE"),
        (
            vec!["--binary".into(), missing.display().to_string()],
            "",
            "is not a file",
        ),
        (vec!["one".into(), "two".into()], "", "one OUTDIR only"),
        (vec![], "abc", "KEEL_DEVICE_KIT_LIMIT_MIB=abc"),
    ];
    for (args, limit, message) in cases {
        let mut command = script("device-kit");
        command.args(&args).current_dir(dir.path());
        if !limit.is_empty() {
            command.env("KEEL_DEVICE_KIT_LIMIT_MIB", limit);
        }
        let output = command.output().unwrap();
        assert_usage_error(&output, &args, message);
    }
    let help = script("device-kit").arg("--help").output().unwrap();
    assert!(help.status.success(), "{}", shown(&help));
    assert!(text(&help.stdout).contains("OUTDIR"));
    // Nothing was built or written by any refusal.
    assert_eq!(fs_err::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn device_kit_refuses_a_kit_over_its_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    // 3 MiB that no compressor shrinks, against a 2 MiB limit.
    let mut bytes = vec![0u8; 3 << 20];
    blake3::Hasher::new()
        .update(b"keel device kit")
        .finalize_xof()
        .fill(&mut bytes);
    let binary = dir.path().join("keel");
    fs_err::write(&binary, &bytes).unwrap();
    let output = script("device-kit")
        .env("KEEL_DEVICE_KIT_LIMIT_MIB", "2")
        .env("KEEL_DEVICE_KIT_XZ_LEVEL", "0")
        .arg("--binary")
        .arg(&binary)
        .arg("--no-start-check")
        .arg(dir.path().join("kit"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    assert!(
        text(&output.stderr).contains("over the 2 MiB limit"),
        "{}",
        shown(&output)
    );
}

#[test]
fn device_check_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_kit = dir.path().join("empty");
    fs_err::create_dir(&not_a_kit).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![], "usage: device-check KIT"),
        (vec!["--bogus".into()], "unknown option --bogus"),
        (
            vec![dir.path().join("absent").display().to_string()],
            "is not a folder",
        ),
        (vec![not_a_kit.display().to_string()], "MANIFEST is missing"),
        (
            vec!["a".into(), "b".into(), "c".into()],
            "too many arguments",
        ),
    ];
    for (args, message) in cases {
        let output = script("device-check").args(&args).output().unwrap();
        assert_usage_error(&output, &args, message);
    }
}

/// The kit packs, its MANIFEST is true, the binary starts here (no driver: `keel probe` says
/// so, a cuda:0 run is refused naming the device), and the check script, run against the kit
/// where there is no GPU, finishes, says "no GPU" and writes its summary; a kit whose binary
/// does not match its MANIFEST fails the check's first step.
#[test]
fn a_kit_packs_starts_here_and_its_check_says_no_gpu() {
    if has_gpu_stack() {
        skip("this machine has a CUDA driver or nvidia-smi; the test is for one without");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kit = dir.path().join("kit");
    let packed = pack(&kit, true);
    assert!(packed.status.success(), "{}", shown(&packed));
    let stderr = text(&packed.stderr);
    assert!(
        stderr.contains("starts here: probe says no driver"),
        "{stderr}"
    );
    assert!(stderr.contains("cuda:0 refused"), "{stderr}");

    let entries = manifest(&kit);
    let names: Vec<&str> = entries.iter().map(|(n, _, _)| n.as_str()).collect();
    for expected in [
        "keel.xz",
        "device-check",
        "device/locks/cuda-11.8.lock",
        "device/locks/cuda-12.4.lock",
        "device/locks/cuda-13.2.lock",
        "device/torch_mlp.py",
        "device/latency.py",
        "device/data/npm-mnist10k-images-idx3-ubyte.gz",
    ] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }
    for (name, bytes, digest) in &entries {
        let path = kit.join(name);
        assert_eq!(fs_err::metadata(&path).unwrap().len(), *bytes, "{name}");
        assert_eq!(&sha256(&path), digest, "{name}");
    }

    let results = dir.path().join("results");
    let checked = script("device-check")
        .arg(&kit)
        .arg(&results)
        .output()
        .unwrap();
    assert_eq!(checked.status.code(), Some(0), "{}", shown(&checked));
    let summary = fs_err::read_to_string(results.join("summary.txt")).unwrap();
    assert!(summary.contains("gpu: no GPU"), "{summary}");
    assert!(summary.contains("probe: no driver"), "{summary}");
    assert!(summary.contains("step.unpack: pass"), "{summary}");
    assert!(summary.contains("step.doctor: pass"), "{summary}");
    let json: serde_json::Value =
        serde_json::from_slice(&fs_err::read(results.join("summary.json")).unwrap()).unwrap();
    assert!(
        json["result"].as_str().unwrap().starts_with("no GPU"),
        "{json}"
    );
    // Three locks, each against the recorded and the live probe.
    assert_eq!(
        json["doctor"].as_str().unwrap().matches("exit").count(),
        6,
        "{json}"
    );
    let probe: serde_json::Value =
        serde_json::from_slice(&fs_err::read(results.join("probe.json")).unwrap()).unwrap();
    assert!(probe["driver"].is_null(), "{probe}");
    // What comes back from a GPU node: at most 8 files.
    assert!(fs_err::read_dir(&results).unwrap().count() <= 8);

    // A kit whose binary is not the one its MANIFEST names.
    let mut xz = fs_err::read(kit.join("keel.xz")).unwrap();
    xz.push(0);
    fs_err::write(kit.join("keel.xz"), &xz).unwrap();
    let tampered = script("device-check")
        .arg(&kit)
        .arg(dir.path().join("tampered"))
        .output()
        .unwrap();
    assert_eq!(tampered.status.code(), Some(1), "{}", shown(&tampered));
    let summary = fs_err::read_to_string(dir.path().join("tampered/summary.txt")).unwrap();
    assert!(summary.contains("step.unpack: fail"), "{summary}");
    let log = fs_err::read_to_string(dir.path().join("tampered/log.txt")).unwrap();
    assert!(
        log.contains("does not match its sha256 in MANIFEST"),
        "{log}"
    );
}

/// The GPU steps' logic (two runs, a SIGINT mid-run and a resume, the weights' hashes, the
/// save stall figures) on the CPU, shortened: what a GPU node runs, minus the GPU.
#[test]
fn the_checks_gpu_steps_run_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let kit = dir.path().join("kit");
    let packed = pack(&kit, false);
    assert!(packed.status.success(), "{}", shown(&packed));
    let results = dir.path().join("results");
    let checked = script("device-check")
        .env("KEEL_CHECK_DEVICE", "cpu")
        .env("KEEL_CHECK_EPOCHS", "2")
        .env("KEEL_CHECK_BIG_HIDDEN", "32")
        .arg(&kit)
        .arg(&results)
        .output()
        .unwrap();
    let summary = fs_err::read_to_string(results.join("summary.txt")).unwrap_or_default();
    assert_eq!(
        checked.status.code(),
        Some(0),
        "{}\n{summary}",
        shown(&checked)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&fs_err::read(results.join("summary.json")).unwrap()).unwrap();
    assert_eq!(json["train_device"], "cpu");
    for step in [
        "train_gpu",
        "train_gpu_again",
        "stop_and_resume",
        "save_sync",
        "save_async",
    ] {
        assert!(
            json[format!("step.{step}")]
                .as_str()
                .unwrap()
                .starts_with("pass"),
            "{step}: {summary}"
        );
    }
    // keel on the CPU is bit for bit run to run and across a stop and resume.
    assert_eq!(json["gpu_run_to_run"], "identical", "{summary}");
    assert_eq!(
        json["gpu_resume_vs_uninterrupted"], "identical",
        "{summary}"
    );
    assert!(
        json["stop_and_resume"]
            .as_str()
            .unwrap()
            .starts_with("completed"),
        "{summary}"
    );
    for key in [
        "save_sync_stall_per_save_seconds",
        "save_async_stall_per_save_seconds",
    ] {
        json[key].as_str().unwrap().parse::<f64>().unwrap();
    }
}

#[test]
fn the_scripts_pass_shellcheck() {
    // `.ci/test-tools` installs shellcheck; a missing one fails the test, naming it.
    let output = Command::new(keel_test_support::tool("shellcheck"))
        .arg(repo().join(".ci/device-kit"))
        .arg(repo().join(".ci/device-check"))
        .arg(repo().join(".ci/test-tools"))
        .arg(repo().join(".ci/test"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", shown(&output));
}
