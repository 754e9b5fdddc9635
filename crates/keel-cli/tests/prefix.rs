//! `keel install`, `keel hash`, `keel verify` and `keel diff` end to end: real packages built
//! by the test, indexed into a local channel, locked, installed, fingerprinted, verified, then
//! changed by hand.

mod common;

use keel_test_support::{channel, wheel};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use channel::{Content, PLACEHOLDER, Package, binary_with_placeholder, build_channel};
use common::{keel_in, text};
use serde_json::Value;

fn keel(dir: &Path, args: &[&str]) -> Output {
    keel_in(dir)
        .args(args)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("RATTLER_CACHE_DIR", dir.join("rattler-cache"))
        .env_remove("CONDA_OVERRIDE_CUDA")
        .output()
        .unwrap()
}

/// Runs keel and expects `code`; returns stdout.
fn expect(dir: &Path, args: &[&str], code: i32) -> String {
    let output = keel(dir, args);
    assert_eq!(
        output.status.code(),
        Some(code),
        "keel {args:?}\nstdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn json(dir: &Path, args: &[&str], code: i32) -> Value {
    let stdout = expect(dir, args, code);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn libdemo(version: &'static str) -> Package {
    Package {
        name: "libdemo",
        version,
        depends: vec![],
        files: vec![
            (
                "lib/libdemo.so.1",
                Content::BinaryWithPrefix(binary_with_placeholder(version)),
            ),
            ("lib/libdemo.so", Content::Symlink("libdemo.so.1".into())),
            (
                "share/libdemo/VERSION",
                Content::Text(format!("libdemo {version}\n")),
            ),
        ],
        tar_bz2: false,
    }
}

fn packages() -> Vec<Package> {
    vec![
        libdemo("1.0"),
        libdemo("1.1"),
        Package {
            name: "demotool",
            version: "2.0",
            depends: vec!["libdemo >=1.0"],
            files: vec![
                (
                    "bin/demotool",
                    Content::TextWithPrefix(format!(
                        "#!/bin/sh\n# demotool 2.0\nexec {PLACEHOLDER}/bin/helper \"$@\"\n"
                    )),
                ),
                (
                    "bin/helper",
                    Content::Executable("#!/bin/sh\necho helper\n".into()),
                ),
                (
                    "share/demotool/README.txt",
                    Content::Text("demotool reads and writes demo files.\n".into()),
                ),
            ],
            tar_bz2: true,
        },
    ]
}

/// A project folder: the channel, and one environment file per libdemo version.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    build_channel(&dir.path().join("channel"), &packages());
    for (name, pin) in [("env-1.0.yml", "1.0"), ("env-1.1.yml", "1.1")] {
        fs_err::write(
            dir.path().join(name),
            format!("channels:\n  - ./channel\ndependencies:\n  - demotool\n  - libdemo ={pin}\n"),
        )
        .unwrap();
    }
    for (env, lock) in [
        ("env-1.0.yml", "lock-1.0.lock"),
        ("env-1.1.yml", "lock-1.1.lock"),
    ] {
        expect(dir.path(), &["lock", env, "-o", lock, "--no-uv"], 0);
    }
    dir
}

fn install(dir: &Path, lock: &str, prefix: &str) -> Value {
    install_with_cache(dir, lock, prefix, "pkgs")
}

fn hash(dir: &Path, prefix: &str, label: &str, extra: &[&str]) -> Value {
    let out = format!("{label}.json");
    let mut args = vec!["hash", prefix, "--json", "--label", label, "-o", &out];
    args.extend_from_slice(extra);
    json(dir, &args, 0)
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn install_hash_verify_diff_end_to_end() {
    let project = project();
    let dir = project.path();

    // Two installs of one lock at paths of different lengths: the prefix is written into the
    // text script and the binary, yet both fingerprints are the same.
    let a = install(dir, "lock-1.0.lock", "a");
    assert_eq!(
        names(&a["installed"]),
        ["demotool-2.0-h0_0", "libdemo-1.0-h0_0"]
    );
    install(dir, "lock-1.0.lock", "nodes/b-with-a-longer-path");
    let script = fs_err::read_to_string(dir.join("a/bin/demotool")).unwrap();
    assert!(
        script.contains(&format!("{}/bin/helper", dir.join("a").display())),
        "prefix written into the script: {script}"
    );
    let fa = hash(dir, "a", "node-a", &[]);
    let fb = hash(dir, "nodes/b-with-a-longer-path", "node-b", &[]);
    assert_eq!(fa["root"], fb["root"]);
    assert_eq!(fa["summary"]["prefix_files"], 2, "{}", fa["summary"]);
    assert_eq!(fa["summary"]["packages"], 2);
    assert_eq!(fa["summary"]["unowned"], 0);
    let link = fa["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "lib/libdemo.so")
        .unwrap();
    assert_eq!(link["kind"], "symlink");
    assert_eq!(link["target"], "libdemo.so.1");
    let helper = fa["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "bin/helper")
        .unwrap();
    assert_eq!(helper["executable"], true);
    assert_eq!(helper["owner"], "demotool");

    let clean = expect(dir, &["verify", "a", "-l", "lock-1.0.lock"], 0);
    assert!(clean.contains("matches"), "{clean}");
    let same = expect(dir, &["diff", "node-a.json", "node-b.json"], 0);
    assert!(same.contains("all nodes have the same prefix"), "{same}");
    // Hashing again reads nothing: every file comes from the stat cache, same root. (Files
    // changed less than 100 ms before the previous hash started are hashed again, since file
    // times come from a coarse clock; the pause puts the install well before that.)
    std::thread::sleep(std::time::Duration::from_millis(200));
    expect(dir, &["hash", "a"], 0);
    let again = expect(dir, &["hash", "a", "--label", "node-a"], 0);
    assert!(again.contains("hashed 0 files"), "{again}");
    assert!(again.starts_with(fa["root"].as_str().unwrap()), "{again}");

    // Drift on node b: another libdemo, a hand edit, an unowned file, a pip install.
    let b = "nodes/b-with-a-longer-path";
    let moved = install(dir, "lock-1.1.lock", b);
    assert_eq!(names(&moved["installed"]), ["libdemo-1.1-h0_0"]);
    assert_eq!(moved["unchanged"], 1);
    let bp = dir.join(b);
    fs_err::write(bp.join("share/demotool/README.txt"), "edited by hand\n").unwrap();
    fs_err::write(bp.join("share/notes.txt"), "scratch\n").unwrap();
    let site = bp.join("lib/python3.12/site-packages");
    fs_err::create_dir_all(site.join("requests-2.32.0.dist-info")).unwrap();
    fs_err::create_dir_all(site.join("requests/__pycache__")).unwrap();
    fs_err::write(
        site.join("requests/__init__.py"),
        "__version__ = '2.32.0'\n",
    )
    .unwrap();
    fs_err::write(
        site.join("requests/__pycache__/__init__.cpython-312.pyc"),
        b"\x0d\x0d\x0a\x00",
    )
    .unwrap();
    fs_err::write(
        site.join("requests-2.32.0.dist-info/METADATA"),
        "Metadata-Version: 2.1\nName: requests\nVersion: 2.32.0\n\nbody\n",
    )
    .unwrap();
    fs_err::write(site.join("requests-2.32.0.dist-info/INSTALLER"), "pip\n").unwrap();
    fs_err::write(
        site.join("requests-2.32.0.dist-info/RECORD"),
        "requests/__init__.py,sha256=x,23\nrequests-2.32.0.dist-info/METADATA,,\nrequests-2.32.0.dist-info/INSTALLER,,\nrequests-2.32.0.dist-info/RECORD,,\n",
    )
    .unwrap();

    let report = json(dir, &["verify", b, "-l", "lock-1.0.lock", "--json"], 1);
    assert_eq!(report["changed_packages"].as_array().unwrap().len(), 1);
    assert_eq!(report["changed_packages"][0]["locked"]["version"], "1.0");
    assert_eq!(report["changed_packages"][0]["installed"]["version"], "1.1");
    assert_eq!(
        report["changed_files"],
        serde_json::json!([{
            "package": "demotool",
            "path": "share/demotool/README.txt",
            "problem": "size",
            "expected": 38,
            "actual": 15,
        }])
    );
    assert_eq!(report["pip_outside_lock"].as_array().unwrap().len(), 1);
    assert_eq!(report["pip_outside_lock"][0]["name"], "requests");
    assert_eq!(report["pip_outside_lock"][0]["installer"], "pip");
    assert_eq!(
        report["unowned_files"],
        serde_json::json!(["share/notes.txt"])
    );
    assert_eq!(report["bytecode_caches"], 1);
    assert_eq!(report["missing_packages"], serde_json::json!([]));
    assert_eq!(report["extra_packages"], serde_json::json!([]));
    // The same size but other contents is caught by the sha256.
    fs_err::write(
        bp.join("share/demotool/README.txt"),
        "demotool reads and writes DEMO files.\n",
    )
    .unwrap();
    let report = json(dir, &["verify", b, "-l", "lock-1.0.lock", "--json"], 1);
    assert_eq!(report["changed_files"][0]["problem"], "content");
    let human = expect(dir, &["verify", b, "-l", "lock-1.0.lock"], 1);
    assert!(
        human.contains("changed package   libdemo 1.1 h0_0 (locked 1.0 h0_0)"),
        "{human}"
    );
    assert!(
        human.contains("pip outside lock  requests 2.32.0 (installed by pip"),
        "{human}"
    );

    // `--repair` puts demotool's file back (from the package cache, which the in-place edit
    // reached through the hard link, so the cache entry is extracted again); pip's files and
    // the unowned one are not the installer's to touch.
    let repaired = json(
        dir,
        &[
            "install",
            "-l",
            "lock-1.1.lock",
            "-p",
            b,
            "--package-cache",
            "pkgs",
            "--repair",
            "--json",
        ],
        0,
    );
    assert_eq!(names(&repaired["repaired_packages"]), ["demotool-2.0-h0_0"]);
    assert_eq!(
        fs_err::read_to_string(bp.join("share/demotool/README.txt")).unwrap(),
        "demotool reads and writes demo files.\n"
    );
    let report = json(dir, &["verify", b, "-l", "lock-1.1.lock", "--json"], 1);
    assert_eq!(report["changed_files"], serde_json::json!([]));
    assert_eq!(report["changed_packages"], serde_json::json!([]));
    assert_eq!(
        report["unowned_files"],
        serde_json::json!(["share/notes.txt"])
    );
    assert_eq!(report["pip_outside_lock"].as_array().unwrap().len(), 1);
    // Edit it again for the diff below.
    fs_err::write(bp.join("share/demotool/README.txt"), "edited by hand\n").unwrap();

    // The diff names each change and nothing else; libdemo's own files follow its version.
    hash(dir, b, "node-b", &["--exclude", "**/__pycache__/**"]);
    hash(
        dir,
        "nodes/b-with-a-longer-path",
        "node-c",
        &["--exclude", "**/__pycache__/**"],
    );
    let report = json(
        dir,
        &[
            "diff",
            "node-a.json",
            "node-b.json",
            "node-c.json",
            "--json",
        ],
        1,
    );
    assert_eq!(
        report["groups"][0]["labels"],
        serde_json::json!(["node-b", "node-c"])
    );
    assert_eq!(report["groups"][1]["labels"], serde_json::json!(["node-a"]));
    let changes = &report["differences"][0]["changes"];
    let summary: Vec<String> = changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["change"].as_str().unwrap(),
                c["name"].as_str().or(c["path"].as_str()).unwrap()
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "package_version libdemo",
            "file_changed share/demotool/README.txt",
            "file_removed lib/python3.12/site-packages/requests-2.32.0.dist-info/INSTALLER",
            "file_removed lib/python3.12/site-packages/requests-2.32.0.dist-info/METADATA",
            "file_removed lib/python3.12/site-packages/requests-2.32.0.dist-info/RECORD",
            "file_removed lib/python3.12/site-packages/requests/__init__.py",
            "file_removed share/notes.txt",
        ],
        "{changes:#}"
    );
    assert!(
        report["differences"][0]["files_of_changed_packages"]
            .as_u64()
            .unwrap()
            >= 2
    );
}

#[test]
fn interrupted_install_is_repaired() {
    let project = project();
    let dir = project.path();
    install(dir, "lock-1.0.lock", "env");
    let prefix = dir.join("env");
    // What a kill in the middle leaves: the marker, a half-copied file, a package whose files
    // are linked but whose record was never written.
    fs_err::write(prefix.join(keel_marker()), "interrupted\n").unwrap();
    fs_err::write(prefix.join("bin/helper"), "#!/bin/").unwrap();
    let record = fs_err::read_dir(prefix.join("conda-meta"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("libdemo-")
        })
        .unwrap();
    fs_err::remove_file(record).unwrap();
    expect(dir, &["verify", "env", "-l", "lock-1.0.lock"], 1);

    let repaired = install(dir, "lock-1.0.lock", "env");
    assert_eq!(repaired["repaired_interrupted"], true);
    assert_eq!(names(&repaired["repaired_packages"]), ["demotool-2.0-h0_0"]);
    assert_eq!(
        names(&repaired["installed"]),
        ["demotool-2.0-h0_0", "libdemo-1.0-h0_0"]
    );
    assert!(!prefix.join(keel_marker()).exists());
    expect(dir, &["verify", "env", "-l", "lock-1.0.lock"], 0);
}

/// A real kill: `keel install` is SIGKILLed at several moments (while extracting into the
/// package cache, while linking, or after it finished); whatever it left, the next install
/// finishes the job and the prefix verifies.
#[test]
fn killed_install_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let files: Vec<(&'static str, Content)> = (0..300)
        .map(|i| {
            let path: &'static str =
                Box::leak(format!("share/big/part{i:03}.txt").into_boxed_str());
            (path, Content::Text(format!("{i}\n").repeat(20_000)))
        })
        .collect();
    let big = Package {
        name: "bigdata",
        version: "1.0",
        depends: vec![],
        files,
        tar_bz2: false,
    };
    let mut all = packages();
    all.push(big);
    build_channel(&dir.join("channel"), &all);
    fs_err::write(
        dir.join("env.yml"),
        "channels:\n  - ./channel\ndependencies:\n  - demotool\n  - libdemo =1.0\n  - bigdata\n",
    )
    .unwrap();
    expect(dir, &["lock", "env.yml", "-o", "big.lock", "--no-uv"], 0);
    for (round, delay_ms) in [5u64, 40, 120, 300, 2000].into_iter().enumerate() {
        let prefix = format!("env{round}");
        // A fresh package cache each round, so that the kill can land during extraction.
        let cache = format!("pkgs{round}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args([
                "install",
                "-l",
                "big.lock",
                "-p",
                &prefix,
                "--package-cache",
                &cache,
                "--json",
            ])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        install_with_cache(dir, "big.lock", &prefix, &cache);
        assert!(!dir.join(&prefix).join(keel_marker()).exists());
        expect(dir, &["verify", &prefix, "-l", "big.lock"], 0);
    }
}

fn install_with_cache(dir: &Path, lock: &str, prefix: &str, cache: &str) -> Value {
    json(
        dir,
        &[
            "install",
            "-l",
            lock,
            "-p",
            prefix,
            "--package-cache",
            cache,
            "--json",
        ],
        0,
    )
}

/// The `pip:` section: keel lock resolves it with uv, keel install installs exactly the locked
/// wheels (`--no-deps`, hashes required) into the prefix's Python, and verify counts them as
/// the lock's, not as pip drift.
#[test]
fn pip_section_installs_into_the_prefix_python() {
    let uv = keel_test_support::tool("uv");
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut all = packages();
    // Stand-ins for conda's python and pip (the prefix's real interpreter comes from a
    // virtual environment below): the solve needs them to resolve the pip section.
    for (name, version) in [("python", "3.12.0"), ("pip", "24.0")] {
        all.push(Package {
            name,
            version,
            depends: vec![],
            files: vec![(
                if name == "pip" {
                    "share/pip-stub/README"
                } else {
                    "share/python-stub/README"
                },
                Content::Text("stub\n".into()),
            )],
            tar_bz2: false,
        });
    }
    build_channel(&dir.join("channel"), &all);
    fs_err::create_dir_all(dir.join("wheels")).unwrap();
    wheel::build_wheel(&dir.join("wheels"), "alpha", "1.0.0", &[]);
    fs_err::write(
        dir.join("env.yml"),
        "channels:\n  - ./channel\ndependencies:\n  - python =3.12\n  - pip\n  - demotool\n  - libdemo =1.0\n  - pip:\n    - --find-links ./wheels\n    - --no-index\n    - alpha==1.0.0\n",
    )
    .unwrap();
    expect(dir, &["lock", "env.yml", "-o", "pip.lock"], 0);
    // A prefix with a real Python: a virtual environment of this machine's python3.
    let venv = Command::new(&uv)
        .args(["venv", "--python", "python3", "env"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(venv.status.success(), "{}", text(&venv.stderr));

    let report = install_with_cache(dir, "pip.lock", "env", "pkgs");
    assert_eq!(names(&report["pypi_installed"]), ["alpha==1.0.0"]);
    let site = fs_err::read_dir(dir.join("env/lib"))
        .unwrap()
        .map(|e| e.unwrap().path().join("site-packages"))
        .find(|p| p.is_dir())
        .unwrap();
    assert!(site.join("alpha/__init__.py").is_file());
    let verify = json(dir, &["verify", "env", "-l", "pip.lock", "--json"], 1);
    for clean in [
        "missing_pypi",
        "pip_outside_lock",
        "changed_files",
        "missing_packages",
    ] {
        assert_eq!(verify[clean], serde_json::json!([]), "{clean}: {verify:#}");
    }
    // What makes it drift is the virtual environment's own files, which no package owns.
    assert!(
        names(&verify["unowned_files"]).contains(&"pyvenv.cfg".to_string()),
        "{verify:#}"
    );

    // Without uv's part: conda packages only, the PyPI ones listed.
    let report = json(
        dir,
        &[
            "install",
            "-l",
            "pip.lock",
            "-p",
            "conda-only",
            "--package-cache",
            "pkgs",
            "--no-pypi",
            "--json",
        ],
        0,
    );
    assert_eq!(names(&report["pypi_not_installed"]), ["alpha==1.0.0"]);
    // With it, into a prefix without Python: a clear error.
    let output = keel(
        dir,
        &[
            "install",
            "-l",
            "pip.lock",
            "-p",
            "no-python",
            "--package-cache",
            "pkgs",
        ],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("has no Python"), "{stderr}");
}

fn keel_marker() -> PathBuf {
    PathBuf::from("conda-meta/.keel-install-in-progress")
}

#[test]
fn archive_not_matching_the_lock_is_refused() {
    let project = project();
    let dir = project.path();
    // The channel's libdemo 1.0 is rebuilt with other contents after the lock was made.
    let mut tampered = libdemo("1.0");
    tampered.files[2].1 = Content::Text("tampered\n".into());
    let elsewhere = tempfile::tempdir().unwrap();
    build_channel(elsewhere.path(), &[tampered.clone()]);
    let subdir = rattler_conda_types::Subdir::current().unwrap();
    fs_err::copy(
        elsewhere
            .path()
            .join(subdir.as_str())
            .join(tampered.file_name()),
        dir.join("channel")
            .join(subdir.as_str())
            .join(tampered.file_name()),
    )
    .unwrap();
    let output = keel(
        dir,
        &[
            "install",
            "-l",
            "lock-1.0.lock",
            "-p",
            "env",
            "--package-cache",
            "pkgs",
        ],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("libdemo-1.0-h0_0"), "{stderr}");
    assert!(
        stderr.contains("sha256") || stderr.contains("hash"),
        "{stderr}"
    );
    // Every archive is fetched before anything is linked (issue #15): the prefix this install
    // would have made was not created, and the output says so.
    assert!(!dir.join("env").exists());
    assert!(stderr.contains("was not created"), "{stderr}");
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    fs_err::create_dir_all(dir.join("not-a-prefix/bin")).unwrap();
    let output = keel(dir, &["hash", "not-a-prefix"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("is not a conda prefix"));

    fs_err::create_dir_all(dir.join("broken/conda-meta")).unwrap();
    fs_err::write(
        dir.join("broken/conda-meta/zlib-1.3-h0_0.json"),
        "{\"name\": \"zlib\",",
    )
    .unwrap();
    for command in ["hash", "verify"] {
        let output = keel(dir, &[command, "broken"]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        assert!(stderr.contains("zlib-1.3-h0_0.json"), "{command}: {stderr}");
    }

    fs_err::create_dir_all(dir.join("empty/conda-meta")).unwrap();
    expect(dir, &["hash", "empty", "-o", "good.json"], 0);
    let mut value: Value =
        serde_json::from_slice(&fs_err::read(dir.join("good.json")).unwrap()).unwrap();
    value["schema"] = 99.into();
    fs_err::write(dir.join("future.json"), value.to_string()).unwrap();
    let output = keel(dir, &["diff", "good.json", "future.json"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("future.json") && stderr.contains("schema 99"),
        "{stderr}"
    );

    value["schema"] = 1.into();
    value["files"] = serde_json::json!([{"path": "x", "kind": "file", "size": 1, "blake3": "00"}]);
    fs_err::write(dir.join("edited.json"), value.to_string()).unwrap();
    let output = keel(dir, &["diff", "good.json", "edited.json"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not match its contents"), "{stderr}");
}

/// A conda-meta record of a package the lock does not pin, owning `path`.
fn hostile_record(prefix: &Path, path: &str) -> PathBuf {
    let record = serde_json::json!({
        "name": "evil", "version": "1.0", "build": "h0_0", "build_number": 0,
        "subdir": "linux-64", "depends": [], "fn": "evil-1.0-h0_0.conda",
        "url": "https://example.invalid/linux-64/evil-1.0-h0_0.conda",
        "files": [path],
        "paths_data": { "paths_version": 1, "paths": [{
            "_path": path, "path_type": "hardlink",
            "sha256": "0000000000000000000000000000000000000000000000000000000000000000",
        }]},
    });
    let file = prefix.join("conda-meta/evil-1.0-h0_0.json");
    fs_err::write(&file, record.to_string()).unwrap();
    file
}

/// Hardening issue #13: `keel install --repair` with a record naming `../victim.txt` deleted
/// the victim (a plain install did too, the package not being locked), and `keel verify
/// --json` printed its sha256. Now every command refuses the record (exit 2, naming it and how
/// to recover) before anything is changed, and once it is removed the prefix installs and
/// verifies again.
#[test]
fn record_path_with_dotdot_is_refused() {
    let project = project();
    let dir = project.path();
    install(dir, "lock-1.0.lock", "env");
    let victim = dir.join("victim.txt");
    fs_err::write(&victim, "keep me\n").unwrap();
    let victim_sha = hex::encode(
        rattler_digest::compute_file_digest::<rattler_digest::Sha256>(&victim).unwrap(),
    );
    let absolute = victim.display().to_string();
    for path in ["../victim.txt", absolute.as_str()] {
        let record = hostile_record(&dir.join("env"), path);
        let commands: [&[&str]; 4] = [
            &[
                "install",
                "-l",
                "lock-1.0.lock",
                "-p",
                "env",
                "--package-cache",
                "pkgs",
                "--repair",
            ],
            &[
                "install",
                "-l",
                "lock-1.0.lock",
                "-p",
                "env",
                "--package-cache",
                "pkgs",
            ],
            &["verify", "env", "-l", "lock-1.0.lock", "--json"],
            &["hash", "env", "--json"],
        ];
        for args in commands {
            let output = keel(dir, args);
            let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
            assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(stderr.contains("evil-1.0-h0_0.json"), "{args:?}: {stderr}");
            assert!(!stdout.contains(&victim_sha), "{args:?}: {stdout}");
            assert_eq!(fs_err::read_to_string(&victim).unwrap(), "keep me\n");
            assert!(!dir.join("env").join(keel_marker()).exists(), "{args:?}");
        }
        fs_err::remove_file(record).unwrap();
        install(dir, "lock-1.0.lock", "env");
        expect(dir, &["verify", "env", "-l", "lock-1.0.lock"], 0);
    }
}

/// Hardening issue #13: `keel diff` printed node labels (and paths) raw, escape codes
/// included. The human output escapes control characters; `--json` keeps them exact.
#[test]
fn diff_label_with_escape_codes_is_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    for prefix in ["a", "b"] {
        fs_err::create_dir_all(dir.join(prefix).join("conda-meta")).unwrap();
    }
    fs_err::write(dir.join("b/notes\x1b[2J.txt"), "x\n").unwrap();
    let label = "node\x1b]0;owned\x07\x1b[31m";
    expect(dir, &["hash", "a", "--label", label, "-o", "a.json"], 0);
    expect(dir, &["hash", "b", "--label", "b", "-o", "b.json"], 0);
    let human = expect(dir, &["diff", "a.json", "b.json"], 1);
    assert!(
        !human.contains('\x1b') && !human.contains('\x07'),
        "{human:?}"
    );
    assert!(human.contains("node\\u{1b}]0;owned\\u{7}"), "{human}");
    assert!(human.contains("notes\\u{1b}[2J.txt"), "{human}");
    let report = json(dir, &["diff", "a.json", "b.json", "--json"], 1);
    let labels = names(&report["groups"][0]["labels"]);
    let all: Vec<String> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| names(&group["labels"]))
        .collect();
    assert!(all.contains(&label.to_string()), "{labels:?} {all:?}");
}

/// Every file under `root`, for re-packing an extracted package.
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs_err::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

/// A channel at `channel` with the package `evil-1.0` holding `files`, its `info/paths.json`
/// then changed by `edit` (the archive re-packed, the repodata's hashes and size updated).
fn evil_channel(
    channel: &Path,
    files: Vec<(&'static str, Content)>,
    edit: impl FnOnce(&mut Value),
) {
    let package = Package {
        name: "evil",
        version: "1.0",
        depends: vec![],
        files,
        tar_bz2: false,
    };
    build_channel(channel, std::slice::from_ref(&package));
    let subdir = channel.join(rattler_conda_types::Subdir::current().unwrap().as_str());
    let archive = subdir.join(package.file_name());
    let stage = tempfile::tempdir().unwrap();
    rattler_package_streaming::fs::extract(&archive, stage.path()).unwrap();
    let paths_json = stage.path().join("info/paths.json");
    let mut paths: Value = serde_json::from_slice(&fs_err::read(&paths_json).unwrap()).unwrap();
    edit(&mut paths);
    fs_err::write(&paths_json, paths.to_string()).unwrap();
    rattler_package_streaming::write::write_conda_package(
        fs_err::File::create(&archive).unwrap(),
        stage.path(),
        &files_under(stage.path()),
        rattler_conda_types::compression_level::CompressionLevel::Lowest,
        None,
        "evil-1.0-h0_0",
        None,
        None,
    )
    .unwrap();
    let repodata_path = subdir.join("repodata.json");
    let mut repodata: Value =
        serde_json::from_slice(&fs_err::read(&repodata_path).unwrap()).unwrap();
    let record = &mut repodata["packages.conda"][package.file_name()];
    record["sha256"] = hex::encode(
        rattler_digest::compute_file_digest::<rattler_digest::Sha256>(&archive).unwrap(),
    )
    .into();
    record["md5"] =
        hex::encode(rattler_digest::compute_file_digest::<rattler_digest::Md5>(&archive).unwrap())
            .into();
    record["size"] = fs_err::metadata(&archive).unwrap().len().into();
    fs_err::write(&repodata_path, repodata.to_string()).unwrap();
}

/// The names directly in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs_err::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Hardening issue #13: rattler's installer joins each `info/paths.json` entry of a package
/// onto the prefix unchecked (and follows a package's symlinks wherever they point), after it
/// has already removed the packages being replaced. Now every package keel links is fetched
/// and its paths checked first: a package naming `../victim.txt`, an absolute path or a NUL,
/// or shipping a symlink that leads out of the prefix (directly, absolutely, or through another
/// of its symlinks) is refused (exit 2, naming the package and the path) with the prefix, the
/// victim beside it and everything else beside it untouched and no in-progress marker left;
/// the next install of a good lock then works.
#[test]
fn package_paths_json_with_dotdot_is_refused() {
    let project = project();
    let dir = project.path();
    install(dir, "lock-1.0.lock", "env");
    let victim = dir.join("victim.txt");
    fs_err::write(&victim, "keep me\n").unwrap();
    let absolute = victim.display().to_string();
    let hardlink = |path: &str| {
        serde_json::json!({
            "_path": path, "path_type": "hardlink", "size_in_bytes": 6,
            "sha256": "0000000000000000000000000000000000000000000000000000000000000000",
        })
    };
    let readme = || {
        (
            "share/evil/README",
            Content::Text("looks harmless\n".into()),
        )
    };
    type Case = (
        &'static str,
        Vec<(&'static str, Content)>,
        Option<Value>,
        String,
    );
    let cases: Vec<Case> = vec![
        (
            "dotdot",
            vec![readme()],
            Some(hardlink("../victim.txt")),
            "../victim.txt".into(),
        ),
        (
            "absolute",
            vec![readme()],
            Some(hardlink(&absolute)),
            absolute.clone(),
        ),
        (
            "nul",
            vec![readme()],
            Some(hardlink("lib/x\0y")),
            "lib/x\\0y".into(),
        ),
        (
            "symlink-out",
            vec![
                readme(),
                (
                    "lib/libevil.so",
                    Content::Symlink("../../victim.txt".into()),
                ),
            ],
            None,
            "lib/libevil.so -> ../../victim.txt".into(),
        ),
        (
            "symlink-absolute",
            vec![
                readme(),
                ("lib/libevil.so", Content::Symlink(absolute.clone())),
            ],
            None,
            format!("lib/libevil.so -> {absolute}"),
        ),
        (
            "symlink-chain",
            vec![
                readme(),
                ("lib/up", Content::Symlink("..".into())),
                (
                    "share/escape",
                    Content::Symlink("../lib/up/../victim.txt".into()),
                ),
            ],
            None,
            "share/escape -> ../lib/up/../victim.txt".into(),
        ),
    ];
    let before = hash(dir, "env", "before", &[]);
    let beside = listing(dir);
    for (name, files, extra, shown) in cases {
        let channel = format!("evil-{name}");
        evil_channel(&dir.join(&channel), files, |paths| {
            if let Some(extra) = extra {
                paths["paths"].as_array_mut().unwrap().push(extra);
            }
        });
        let env = format!("evil-{name}.yml");
        let lock = format!("evil-{name}.lock");
        fs_err::write(
            dir.join(&env),
            format!("channels:\n  - ./{channel}\ndependencies:\n  - evil\n"),
        )
        .unwrap();
        expect(dir, &["lock", &env, "-o", &lock, "--no-uv"], 0);
        let output = keel(
            dir,
            &[
                "install",
                "-l",
                &lock,
                "-p",
                "env",
                "--package-cache",
                "pkgs",
            ],
        );
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains("evil-1.0-h0_0"), "{name}: {stderr}");
        assert!(stderr.contains(&shown), "{name}: {stderr}");
        assert!(stderr.contains("nothing was changed"), "{name}: {stderr}");
        assert_eq!(
            fs_err::read_to_string(&victim).unwrap(),
            "keep me\n",
            "{name}"
        );
        assert!(!dir.join("env").join(keel_marker()).exists(), "{name}");
        // The lock drops demotool and libdemo: rattler would have removed them first.
        assert!(dir.join("env/lib/libdemo.so.1").exists(), "{name}");
        assert!(!dir.join("env/share/evil").exists(), "{name}");
        let mut now = listing(dir);
        now.retain(|entry| !entry.starts_with("evil-"));
        assert_eq!(now, beside, "{name}");
    }
    let after = hash(dir, "env", "after", &[]);
    assert_eq!(before["root"], after["root"]);
    let again = install(dir, "lock-1.1.lock", "env");
    assert_eq!(names(&again["installed"]), ["libdemo-1.1-h0_0"]);
    expect(dir, &["verify", "env", "-l", "lock-1.1.lock"], 0);
}

/// A lock that pins a package without a sha256 is refused before anything is installed; the
/// library says what is wrong, and the CLI names the command that fixes it.
#[test]
fn a_package_without_a_sha256_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let platform = rattler_conda_types::Subdir::current().unwrap();
    fs_err::write(
        dir.join("keel.lock"),
        format!(
            "version: 7\nplatforms:\n- name: {platform}\nenvironments:\n  default:\n    channels:\n    - url: https://conda.anaconda.org/conda-forge/\n    packages:\n      {platform}:\n      - conda: https://conda.anaconda.org/conda-forge/{platform}/zlib-1.3-h0_0.conda\npackages:\n- conda: https://conda.anaconda.org/conda-forge/{platform}/zlib-1.3-h0_0.conda\n  subdir: {platform}\n  md5: f36c115f1ee199da648e0597ec2047ad\n  size: 61588\n"
        ),
    )
    .unwrap();
    let output = keel(dir, &["install", "-l", "keel.lock", "-p", "env"]);
    let stderr = text(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("without a sha256"), "{stderr}");
    assert!(stderr.contains("re-lock with `keel lock`"), "{stderr}");
    assert!(!dir.join("env/conda-meta").exists(), "{stderr}");
}
