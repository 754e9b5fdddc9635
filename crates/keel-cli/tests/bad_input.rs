//! The bad-input suite (hardening issue #13): every keel command that reads a format runs on
//! every hostile file of that format in `tests/hostile/<format>/`, plus the hazards that cannot
//! live in git (FIFOs, a 1 MB line, a sparse 5 GB tensor file), which are made here.
//!
//! Each run is a child process under `ulimit -v` (4 GiB) and a 30 s deadline. The rule checked
//! for every (command, file): the command ends by itself, exits with one of the codes the
//! command allows (never 101, a panic, nor a signal), its output names the file (or the
//! checkpoint folder holding it), and nothing outside the case's folder changed: a victim file
//! beside it, which hostile inputs aim at through `@VICTIM@` (replaced by its absolute path) and
//! `../`, stays as it was.

mod common;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use channel::{Content, Package, build_channel};
use common::text;
use keel_test_support::channel;

/// Address space a child may map (`ulimit -v`, KiB).
const MEMORY_LIMIT_KIB: u64 = 4 * 1024 * 1024;
/// How long a child may run.
const DEADLINE: Duration = Duration::from_secs(30);
/// The victim's contents.
const VICTIM: &str = "a file keel must never touch\n";

/// How one bounded run ended.
#[derive(Debug)]
struct Ran {
    /// The exit code; `None` when a signal ended it or the deadline passed.
    code: Option<i32>,
    timed_out: bool,
    output: String,
}

/// Runs `keel args` in `dir` under the memory limit and the deadline.
fn bounded(dir: &Path, args: &[&str]) -> Ran {
    let out_path = dir.join(".keel-bad-input-output");
    let out = fs_err::File::create(&out_path).unwrap();
    let err = out.try_clone().unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {MEMORY_LIMIT_KIB} && exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("HOME", dir.join("home"))
        .env("XDG_CACHE_HOME", dir.join("home/.cache"))
        .env("RATTLER_CACHE_DIR", dir.join("home/rattler"))
        .env("MALLOC_ARENA_MAX", "2")
        .env_remove("CONDA_PREFIX")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.into_parts().0))
        .stderr(Stdio::from(err.into_parts().0))
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut output = String::new();
    let mut bytes = Vec::new();
    fs_err::File::open(&out_path)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    output.push_str(&text(&bytes));
    fs_err::remove_file(&out_path).unwrap();
    Ran {
        code: if timed_out { None } else { status.code() },
        timed_out,
        output,
    }
}

/// One command to run on a case, and what it may answer.
struct Check<'a> {
    args: Vec<String>,
    /// Exit codes the command may give on this input.
    allowed: &'a [i32],
    /// Text the output must hold (the file's name, or the folder holding it); empty for a
    /// command that does not read the hostile part (`ckpt list` reads manifests, not tensors).
    names: String,
}

/// The folder of one case: `root/work` (where commands run and inputs live) beside
/// `root/victim.txt`.
struct CaseDir {
    root: tempfile::TempDir,
}

impl CaseDir {
    fn new() -> CaseDir {
        let root = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(root.path().join("work/home")).unwrap();
        fs_err::write(root.path().join("victim.txt"), VICTIM).unwrap();
        CaseDir { root }
    }

    fn work(&self) -> PathBuf {
        self.root.path().join("work")
    }

    fn victim(&self) -> PathBuf {
        self.root.path().join("victim.txt")
    }

    /// The hostile file's bytes with `@VICTIM@` and `@ROOT@` filled in.
    fn fill(&self, bytes: &[u8]) -> Vec<u8> {
        let victim = self.victim().display().to_string();
        let root = self.root.path().display().to_string();
        replace(
            &replace(bytes, b"@VICTIM@", victim.as_bytes()),
            b"@ROOT@",
            root.as_bytes(),
        )
    }

    /// Runs every check and collects what broke the rule, labelled with `case`.
    fn run(&self, case: &str, checks: &[Check<'_>], failures: &mut Vec<String>) {
        for check in checks {
            let args: Vec<&str> = check.args.iter().map(String::as_str).collect();
            let ran = bounded(&self.work(), &args);
            let label = format!("{case}: keel {}", args.join(" "));
            if ran.timed_out {
                failures.push(format!("{label}: still running after {DEADLINE:?}"));
            } else if ran.code == Some(101) || ran.output.contains("panicked at") {
                failures.push(format!("{label}: panicked\n{}", tail(&ran.output)));
            } else if let Some(code) = ran.code {
                if !check.allowed.contains(&code) {
                    failures.push(format!(
                        "{label}: exit {code}, expected one of {:?}\n{}",
                        check.allowed,
                        tail(&ran.output)
                    ));
                } else if !check.names.is_empty() && !ran.output.contains(&check.names) {
                    failures.push(format!(
                        "{label}: the output does not name {:?}\n{}",
                        check.names,
                        tail(&ran.output)
                    ));
                }
            } else {
                failures.push(format!(
                    "{label}: ended by a signal (memory limit?)\n{}",
                    tail(&ran.output)
                ));
            }
            match fs_err::read_to_string(self.victim()) {
                Ok(text) if text == VICTIM => {}
                other => failures.push(format!("{label}: the victim file changed: {other:?}")),
            }
            let beside: Vec<_> = fs_err::read_dir(self.root.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            if beside.len() != 2 {
                failures.push(format!("{label}: wrote beside its folder: {beside:?}"));
            }
        }
    }
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let start = lines.len().saturating_sub(12);
    lines[start..]
        .iter()
        .map(|l| {
            let mut l = l.to_string();
            l.truncate(300);
            format!("    | {l}\n")
        })
        .collect()
}

/// The hostile files of one format, sorted.
fn hostile(format: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hostile")
        .join(format);
    let mut files: Vec<(String, Vec<u8>)> = fs_err::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs_err::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no hostile files in {}", dir.display());
    files
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn report(format: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} of the {format} checks broke the rule:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Makes a FIFO at `path` (nothing ever writes to it: a reader that opens it blocks).
fn fifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

// ---------------------------------------------------------------------------------------------
// environment.yml

fn environment_checks(file: &str) -> Vec<Check<'static>> {
    vec![
        Check {
            args: strings(&["spec", "check", file]),
            allowed: &[2],
            names: file.into(),
        },
        Check {
            args: strings(&["spec", "check", "--json", file]),
            allowed: &[2],
            names: file.into(),
        },
        Check {
            args: strings(&[
                "lock",
                file,
                "-o",
                "out.lock",
                "--no-uv",
                "--cache-dir",
                "home/repodata",
            ]),
            allowed: &[2],
            names: file.into(),
        },
    ]
}

#[test]
fn hostile_environment_files() {
    let mut failures = Vec::new();
    for (name, bytes) in hostile("environment-yml") {
        let case = CaseDir::new();
        fs_err::write(case.work().join(&name), case.fill(&bytes)).unwrap();
        case.run(&name, &environment_checks(&name), &mut failures);
        if case.work().join("out.lock").exists() {
            failures.push(format!("{name}: keel lock wrote a lock for a bad file"));
        }
    }
    report("environment.yml", failures);
}

/// Made here rather than kept in git: a 1 MB line, a 65,536-character name, 64k inline
/// entries, and a 100,000-deep flow sequence.
#[test]
fn generated_environment_files() {
    let mut failures = Vec::new();
    let long_name = format!(
        "name: {}: x\ndependencies:\n  - python\n",
        "n".repeat(65_536)
    );
    let inline = format!(
        "dependencies: [{}, \"numpy >=>=1\"]\n",
        vec!["numpy"; 65_536].join(", ")
    );
    let megabyte_line = format!("dependencies:\n  - \"{}\n", "x".repeat(1 << 20));
    let deep = format!(
        "dependencies: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    for (name, contents) in [
        ("long-name.yml", long_name),
        ("inline-64k.yml", inline),
        ("megabyte-line.yml", megabyte_line),
        ("deep-flow.yml", deep),
    ] {
        let case = CaseDir::new();
        fs_err::write(case.work().join(name), contents).unwrap();
        case.run(name, &environment_checks(name), &mut failures);
    }
    report("generated environment.yml", failures);
}

// ---------------------------------------------------------------------------------------------
// keel train's TOML configuration, and the IDX / CSV data a configuration names

fn train_check(file: &str, names: &str) -> Check<'static> {
    Check {
        args: strings(&["train", file, "--runs-dir", "runs", "--json"]),
        allowed: &[2],
        names: names.into(),
    }
}

#[test]
fn hostile_train_configurations() {
    let mut failures = Vec::new();
    for (name, bytes) in hostile("toml-config") {
        let case = CaseDir::new();
        fs_err::write(case.work().join(&name), case.fill(&bytes)).unwrap();
        case.run(&name, &[train_check(&name, &name)], &mut failures);
    }
    report("TOML configuration", failures);
}

/// An IDX file of unsigned bytes with the given dimensions and contents.
fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[test]
fn hostile_datasets() {
    let mut failures = Vec::new();
    // Ten valid 28x28 images and their labels, for the hostile file to stand beside.
    let images = idx(&[10, 28, 28], &[7; 10 * 28 * 28]);
    let labels = idx(&[10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    for (name, bytes) in hostile("idx-csv") {
        let case = CaseDir::new();
        let work = case.work();
        fs_err::write(work.join(&name), case.fill(&bytes)).unwrap();
        fs_err::write(work.join("images.idx"), &images).unwrap();
        fs_err::write(work.join("labels.idx"), &labels).unwrap();
        let data = if name.ends_with(".csv") {
            format!("dataset = \"csv\"\ncsv = \"{name}\"\n")
        } else if name.starts_with("labels-") {
            format!("dataset = \"idx\"\nimages = \"images.idx\"\nlabels = \"{name}\"\n")
        } else {
            format!("dataset = \"idx\"\nimages = \"{name}\"\nlabels = \"labels.idx\"\n")
        };
        fs_err::write(
            work.join("run.toml"),
            format!("epochs = 1\nbatch_size = 4\n\n[data]\n{data}"),
        )
        .unwrap();
        case.run(&name, &[train_check("run.toml", &name)], &mut failures);
    }
    report("IDX/CSV", failures);
}

// ---------------------------------------------------------------------------------------------
// A real prefix to put hostile records into: a channel with one package, its lock, the prefix
// installed from it and its fingerprint, made once for the whole binary.

struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn lock(&self) -> PathBuf {
        self.dir.join("keel.lock")
    }
    fn prefix(&self) -> PathBuf {
        self.dir.join("prefix")
    }
    fn cache(&self) -> PathBuf {
        self.dir.join("pkgs")
    }
    fn fingerprint(&self) -> PathBuf {
        self.dir.join("good.json")
    }
    fn channel(&self) -> PathBuf {
        self.dir.join("channel")
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad-input-fixture");
        if dir.exists() {
            fs_err::remove_dir_all(&dir).unwrap();
        }
        fs_err::create_dir_all(dir.join("home")).unwrap();
        build_channel(
            &dir.join("channel"),
            &[Package {
                name: "demo",
                version: "1.0",
                depends: vec![],
                files: vec![
                    ("share/demo/README", Content::Text("demo 1.0\n".into())),
                    (
                        "bin/demo",
                        Content::Executable("#!/bin/sh\necho demo\n".into()),
                    ),
                ],
                tar_bz2: false,
            }],
        );
        fs_err::write(
            dir.join("environment.yml"),
            "channels:\n  - ./channel\ndependencies:\n  - demo\n",
        )
        .unwrap();
        let fixture = Fixture { dir };
        let cache = fixture.cache().display().to_string();
        for args in [
            vec!["lock", "environment.yml", "-o", "keel.lock", "--no-uv"],
            vec![
                "install",
                "-l",
                "keel.lock",
                "-p",
                "prefix",
                "--no-pypi",
                "--package-cache",
                &cache,
            ],
            vec![
                "hash",
                "prefix",
                "--json",
                "--no-cache",
                "--label",
                "good",
                "-o",
                "good.json",
            ],
        ] {
            let ran = bounded(&fixture.dir, &args);
            assert_eq!(ran.code, Some(0), "keel {args:?}\n{}", ran.output);
        }
        fixture
    })
}

/// Copies the fixture's prefix (and lock) into the case's folder.
fn copy_prefix(case: &CaseDir) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(fixture().prefix())
        .arg(case.work().join("prefix"))
        .status()
        .unwrap();
    assert!(status.success());
    fs_err::copy(fixture().lock(), case.work().join("keel.lock")).unwrap();
}

/// What reads a prefix's records: verify, hash, install (plain and --repair).
fn prefix_checks(names: &str) -> Vec<Check<'static>> {
    let cache = fixture().cache().display().to_string();
    vec![
        Check {
            args: strings(&["verify", "prefix", "-l", "keel.lock", "--json"]),
            allowed: &[1, 2],
            names: names.into(),
        },
        Check {
            args: strings(&["hash", "prefix", "--no-cache", "--json"]),
            allowed: &[2],
            names: names.into(),
        },
        Check {
            args: strings(&[
                "install",
                "-l",
                "keel.lock",
                "-p",
                "prefix",
                "--no-pypi",
                "--package-cache",
                &cache,
            ]),
            allowed: &[2],
            names: names.into(),
        },
        Check {
            args: strings(&[
                "install",
                "-l",
                "keel.lock",
                "-p",
                "prefix",
                "--no-pypi",
                "--repair",
                "--package-cache",
                &cache,
            ]),
            allowed: &[2],
            names: names.into(),
        },
    ]
}

/// Once the bad record is gone, a plain install brings the prefix back to the lock.
fn recovers(case: &CaseDir, label: &str, failures: &mut Vec<String>) {
    let cache = fixture().cache().display().to_string();
    for args in [
        vec![
            "install",
            "-l",
            "keel.lock",
            "-p",
            "prefix",
            "--no-pypi",
            "--package-cache",
            &cache,
        ],
        vec!["verify", "prefix", "-l", "keel.lock"],
    ] {
        let ran = bounded(&case.work(), &args);
        if ran.code != Some(0) {
            failures.push(format!(
                "{label}: the prefix did not recover: keel {} gave {:?}\n{}",
                args.join(" "),
                ran.code,
                tail(&ran.output)
            ));
        }
    }
}

#[test]
fn hostile_conda_meta_records() {
    let mut failures = Vec::new();
    for (name, bytes) in hostile("conda-meta") {
        let case = CaseDir::new();
        copy_prefix(&case);
        let record = case.work().join("prefix/conda-meta").join(&name);
        fs_err::write(&record, case.fill(&bytes)).unwrap();
        case.run(&name, &prefix_checks(&name), &mut failures);
        fs_err::remove_file(&record).unwrap();
        recovers(&case, &name, &mut failures);
    }
    report("conda-meta", failures);
}

#[test]
fn fifos_in_a_prefix_never_block() {
    let mut failures = Vec::new();
    for (label, relative) in [
        ("record FIFO", "conda-meta/evil-1.0-h0_0.json"),
        (
            "METADATA FIFO",
            "lib/python3.11/site-packages/evil-1.0.dist-info/METADATA",
        ),
        (
            "RECORD FIFO",
            "lib/python3.11/site-packages/evil-1.0.dist-info/RECORD",
        ),
    ] {
        let case = CaseDir::new();
        copy_prefix(&case);
        let path = case.work().join("prefix").join(relative);
        fs_err::create_dir_all(path.parent().unwrap()).unwrap();
        fifo(&path);
        let name = Path::new(relative).file_name().unwrap().to_string_lossy();
        // `hash` lists a FIFO as what it is without opening it; only verify must refuse it.
        let checks = vec![Check {
            args: strings(&["verify", "prefix", "-l", "keel.lock", "--json"]),
            allowed: &[1, 2],
            names: name.to_string(),
        }];
        case.run(label, &checks, &mut failures);
        let ran = bounded(&case.work(), &["hash", "prefix", "--no-cache", "--json"]);
        if ran.timed_out || ran.code == Some(101) || ran.code.is_none() {
            failures.push(format!(
                "{label}: keel hash {:?}\n{}",
                ran.code,
                tail(&ran.output)
            ));
        }
    }
    report("prefix FIFO", failures);
}

#[test]
fn hostile_fingerprints() {
    let mut failures = Vec::new();
    let good = fixture().fingerprint();
    for (name, bytes) in hostile("fingerprint") {
        let case = CaseDir::new();
        fs_err::copy(&good, case.work().join("good.json")).unwrap();
        fs_err::write(case.work().join(&name), case.fill(&bytes)).unwrap();
        let checks = vec![
            Check {
                args: strings(&["diff", "good.json", &name]),
                allowed: &[2],
                names: name.clone(),
            },
            Check {
                args: strings(&["diff", &name, "good.json", "--json"]),
                allowed: &[2],
                names: name.clone(),
            },
        ];
        case.run(&name, &checks, &mut failures);
    }
    report("fingerprint", failures);
}

#[test]
fn hostile_locks() {
    let mut failures = Vec::new();
    let channel = fixture().channel().display().to_string();
    for (name, bytes) in hostile("keel-lock") {
        let case = CaseDir::new();
        copy_prefix(&case);
        fs_err::write(case.work().join(&name), case.fill(&bytes)).unwrap();
        fs_err::write(
            case.work().join("environment.yml"),
            format!("channels:\n  - {channel}\ndependencies:\n  - demo\n"),
        )
        .unwrap();
        let cache = fixture().cache().display().to_string();
        let checks = vec![
            Check {
                args: strings(&["lock", "environment.yml", "-o", &name, "--check", "--no-uv"]),
                allowed: &[1, 2],
                names: name.clone(),
            },
            Check {
                args: strings(&[
                    "install",
                    "-l",
                    &name,
                    "-p",
                    "fresh",
                    "--no-pypi",
                    "--package-cache",
                    &cache,
                ]),
                allowed: &[2],
                names: name.clone(),
            },
            Check {
                args: strings(&["verify", "prefix", "-l", &name]),
                allowed: &[2],
                names: name.clone(),
            },
            Check {
                args: strings(&["doctor", "-l", &name]),
                allowed: &[2],
                names: name.clone(),
            },
        ];
        case.run(&name, &checks, &mut failures);
    }
    report("keel.lock", failures);
}

// ---------------------------------------------------------------------------------------------
// Checkpoint stores: manifests and safetensors files inside a store `keel train` wrote

/// The configuration of the store's run: two epochs of the digits, a checkpoint after each,
/// all kept. The cases resume it.
const STORE_RUN: &str = "epochs = 2\nbatch_size = 64\n\n[data]\ndataset = \"digits\"\n\n\
    [checkpoint]\ndir = \"store\"\nevery_epochs = 1\nkeep_last = 0\n";

/// A store written by `keel train` (made once), copied into the case's folder with the run's
/// configuration beside it; returns the newest regular checkpoint's folder.
fn trained_store(case: &CaseDir) -> PathBuf {
    static TRAINED: OnceLock<PathBuf> = OnceLock::new();
    let source = TRAINED.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad-input-store");
        if dir.exists() {
            fs_err::remove_dir_all(&dir).unwrap();
        }
        fs_err::create_dir_all(dir.join("home")).unwrap();
        fs_err::write(dir.join("run.toml"), STORE_RUN).unwrap();
        let ran = bounded(&dir, &["train", "run.toml", "--runs-dir", "runs"]);
        assert_eq!(ran.code, Some(0), "{}", ran.output);
        dir.join("store")
    });
    let status = Command::new("cp")
        .arg("-a")
        .arg(source)
        .arg(case.work().join("store"))
        .status()
        .unwrap();
    assert!(status.success());
    fs_err::write(case.work().join("run.toml"), STORE_RUN).unwrap();
    let mut regular: Vec<PathBuf> = fs_err::read_dir(case.work().join("store/regular"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("step-")
        })
        .collect();
    regular.sort();
    regular.pop().unwrap()
}

/// The folder the hostile manifests are written for (step 100, saved at 1000 ms), holding
/// copies of the newest checkpoint's tensor files; newer than every checkpoint of the run.
fn manifest_target(case: &CaseDir) -> PathBuf {
    let newest = trained_store(case);
    let target = case
        .work()
        .join("store/regular/step-000000000100-0000000001000");
    fs_err::create_dir_all(&target).unwrap();
    for entry in fs_err::read_dir(&newest).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "safetensors") {
            fs_err::copy(&path, target.join(path.file_name().unwrap())).unwrap();
        }
    }
    target
}

/// The manifest `bytes` as keel would seal them (`raw-*` files and what is not JSON go in as
/// they are), so that the check under test is not only the digest.
fn manifest_bytes(name: &str, bytes: Vec<u8>) -> Vec<u8> {
    if name.starts_with("raw-") {
        return bytes;
    }
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(value) => keel_ckpt::seal_manifest(value),
        Err(_) => bytes,
    }
}

/// What reads a store: list, verify, prune, and the run resuming from it (which skips the
/// damaged checkpoint, saying so, or refuses). `folder` is the damaged checkpoint's folder
/// name, which the output must name and which must survive; `manifest_damaged` says whether
/// `list` and `prune` (which read manifests, not tensors) see the damage.
fn store_checks(folder: &str, manifest_damaged: bool) -> Vec<Check<'static>> {
    let seen = if manifest_damaged { folder } else { "" };
    vec![
        Check {
            args: strings(&["ckpt", "list", "store"]),
            allowed: &[0, 1],
            names: seen.into(),
        },
        Check {
            args: strings(&["ckpt", "list", "store", "--json"]),
            allowed: &[0, 1],
            names: seen.into(),
        },
        Check {
            args: strings(&["ckpt", "verify", "store"]),
            allowed: &[1],
            names: folder.into(),
        },
        Check {
            args: strings(&["ckpt", "prune", "store", "--keep-last", "1"]),
            allowed: &[0, 1],
            names: seen.into(),
        },
        Check {
            args: strings(&["train", "run.toml", "--runs-dir", "runs"]),
            allowed: &[0, 2],
            names: folder.into(),
        },
    ]
}

fn survives(target: &Path, label: &str, failures: &mut Vec<String>) {
    if !target.exists() {
        failures.push(format!(
            "{label}: {} was deleted (keel deletes only what it can prove it left incomplete)",
            target.display()
        ));
    }
}

fn folder_name(target: &Path) -> String {
    target.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn hostile_manifests() {
    let mut failures = Vec::new();
    for (name, bytes) in hostile("manifest") {
        let case = CaseDir::new();
        let target = manifest_target(&case);
        fs_err::write(
            target.join("manifest.json"),
            manifest_bytes(&name, case.fill(&bytes)),
        )
        .unwrap();
        // A size that no file has is seen by what reads the data (verify, train), not by
        // `list` and `prune`, which read the manifest alone.
        let manifest_damaged = !name.starts_with("file-size-");
        let checks = store_checks(&folder_name(&target), manifest_damaged);
        case.run(&name, &checks, &mut failures);
        survives(&target, &name, &mut failures);
    }
    report("manifest.json", failures);
}

/// Puts `bytes` in place of the target's `model.safetensors` and seals a manifest that lists
/// it with its true size and BLAKE3 (`size` overrides the size recorded).
fn replace_tensors(target: &Path, bytes: Option<&[u8]>, size: Option<u64>) {
    let file = target.join("model.safetensors");
    if let Some(bytes) = bytes {
        fs_err::write(&file, bytes).unwrap();
    }
    let manifest_path = target.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs_err::read(&manifest_path).unwrap()).unwrap();
    let (len, digest) = match bytes {
        Some(bytes) => (bytes.len() as u64, blake3::hash(bytes).to_hex().to_string()),
        None => (fs_err::metadata(&file).unwrap().len(), "0".repeat(64)),
    };
    let mut replaced = false;
    for entry in manifest["files"].as_array_mut().unwrap() {
        if entry["name"] == "model.safetensors" {
            entry["size"] = size.unwrap_or(len).into();
            entry["blake3"] = digest.clone().into();
            replaced = true;
        }
    }
    assert!(replaced, "the run's checkpoint has no model.safetensors");
    fs_err::write(&manifest_path, keel_ckpt::seal_manifest(manifest)).unwrap();
}

#[test]
fn hostile_safetensors_files() {
    let mut failures = Vec::new();
    for (name, bytes) in hostile("safetensors") {
        let case = CaseDir::new();
        let target = trained_store(&case);
        replace_tensors(&target, Some(&case.fill(&bytes)), None);
        case.run(
            &name,
            &store_checks(&folder_name(&target), false),
            &mut failures,
        );
        survives(&target, &name, &mut failures);
    }
    report("safetensors", failures);
}

/// Made here: a FIFO as `manifest.json`, a manifest over 16 MiB, a 5 GB sparse tensor file
/// whose manifest says another size (checked before anything is read: the memory limit is
/// below the file's size), and a tensor file linked to `/dev/zero`.
#[test]
fn generated_store_hazards() {
    let mut failures = Vec::new();

    let case = CaseDir::new();
    let target = manifest_target(&case);
    fifo(&target.join("manifest.json"));
    case.run(
        "manifest FIFO",
        &store_checks(&folder_name(&target), true),
        &mut failures,
    );
    survives(&target, "manifest FIFO", &mut failures);

    let case = CaseDir::new();
    let target = manifest_target(&case);
    let padding = "x".repeat(17 << 20);
    fs_err::write(
        target.join("manifest.json"),
        keel_ckpt::seal_manifest(serde_json::json!({
            "format_version": 2, "kind": "regular", "step": 100, "epoch": 0,
            "created_unix_ms": 1000, "user": { "padding": padding }, "files": [],
        })),
    )
    .unwrap();
    case.run(
        "17 MiB manifest",
        &store_checks(&folder_name(&target), true),
        &mut failures,
    );
    survives(&target, "17 MiB manifest", &mut failures);

    let case = CaseDir::new();
    let target = trained_store(&case);
    let file = fs_err::File::create(target.join("model.safetensors")).unwrap();
    file.set_len(5 << 30).unwrap();
    drop(file);
    replace_tensors(&target, None, Some(1234));
    let checks = store_checks(&folder_name(&target), false);
    case.run("sparse 5 GB tensors", &checks, &mut failures);
    survives(&target, "sparse 5 GB tensors", &mut failures);

    let case = CaseDir::new();
    let target = trained_store(&case);
    fs_err::remove_file(target.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", target.join("model.safetensors")).unwrap();
    replace_tensors(&target, None, Some(1 << 40));
    let checks = store_checks(&folder_name(&target), false);
    case.run("tensors linked to /dev/zero", &checks, &mut failures);
    survives(&target, "tensors linked to /dev/zero", &mut failures);

    report("generated store", failures);
}
