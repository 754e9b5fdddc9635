//! `keel lock --conda-lock` and `--explicit` read by the tools they are written for: conda-lock's
//! own parser and renderer (the version `.ci/test-tools` pins), on a local channel with real
//! archives and a `pip:` section resolved by uv from local wheels.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{keel_in, text};
use keel_test_support::channel::{Content, Package, build_channel};
use keel_test_support::wheel;

fn keel(dir: &Path, args: &[&str]) -> Output {
    keel_in(dir)
        .args(args)
        .env("KEEL_UV", keel_test_support::tool("uv"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .output()
        .unwrap()
}

fn package(name: &'static str, version: &'static str, depends: Vec<&'static str>) -> Package {
    Package {
        name,
        version,
        depends,
        files: vec![("share/readme.txt", Content::Text(format!("{name}\n")))],
        tar_bz2: false,
    }
}

/// A project whose channel is a folder beside the environment file (`./channel`, a path
/// channel) with archives in it, and wheels for the pip section in `./wheels`.
fn project(pip: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    build_channel(
        &root.join("channel"),
        &[
            package("python", "3.12.0", vec!["libdemo >=1.0"]),
            package("pip", "24.0", vec!["python"]),
            package("libdemo", "1.0", vec![]),
        ],
    );
    fs_err::create_dir_all(root.join("wheels")).unwrap();
    wheel::build_wheel(&root.join("wheels"), "alpha", "1.0.0", &["beta>=2"]);
    wheel::build_wheel(&root.join("wheels"), "beta", "2.0.0", &[]);
    let mut yaml =
        "channels:\n  - ./channel\ndependencies:\n  - python =3.12\n  - pip\n".to_owned();
    if !pip.is_empty() {
        yaml.push_str("  - pip:\n");
        for line in pip {
            yaml.push_str(&format!("    - {line}\n"));
        }
    }
    fs_err::write(root.join("environment.yml"), yaml).unwrap();
    dir
}

/// A project with a pip section (alpha, which needs beta, from the local wheels), locked with
/// both exports: `conda-lock.yml` and `explicit/`.
fn exported_project() -> tempfile::TempDir {
    let project = project(&["--find-links ./wheels", "--no-index", "alpha==1.0.0"]);
    let output = keel(
        project.path(),
        &[
            "lock",
            "--conda-lock",
            "conda-lock.yml",
            "--explicit",
            "explicit",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    project
}

/// Runs `script` with the test venv's Python (conda-lock importable), the project folder as
/// its argument, and returns what it printed.
fn conda_lock_python(dir: &Path, script: &str) -> String {
    let python = keel_test_support::python(&["conda_lock"]);
    let output = Command::new(python)
        .args(["-c", script])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "conda-lock's reader failed:\n{}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The rule: a lock of a local channel exports as `file://` URLs that conda-lock's parser
/// accepts and that name the archives on disk; pip packages go along with their sha256; each
/// platform's `content_hash` is that platform's inputs hash, the one `@EXPLICIT` carries.
#[test]
fn conda_lock_reads_the_export_of_a_local_channel() {
    let project = exported_project();
    let dir = project.path();

    let parsed = conda_lock_python(
        dir,
        r#"
import json, pathlib, sys, urllib.parse
from conda_lock.lockfile import parse_conda_lock_file
lock = parse_conda_lock_file(pathlib.Path(sys.argv[1]) / "conda-lock.yml")
print(json.dumps({
    "platforms": lock.metadata.platforms,
    "content_hash": lock.metadata.content_hash,
    "packages": [
        {"name": p.name, "manager": p.manager, "url": p.url, "sha256": p.hash.sha256,
         "exists": urllib.parse.urlparse(p.url).scheme != "file"
                   or pathlib.Path(urllib.parse.unquote(urllib.parse.urlparse(p.url).path)).is_file()}
        for p in lock.package
    ],
}))
"#,
    );
    let parsed: serde_json::Value = serde_json::from_str(&parsed).unwrap();
    let packages = parsed["packages"].as_array().unwrap();
    let mut names: Vec<(&str, &str)> = packages
        .iter()
        .map(|p| (p["manager"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            ("conda", "libdemo"),
            ("conda", "pip"),
            ("conda", "python"),
            ("pip", "alpha"),
            ("pip", "beta"),
        ],
        "{parsed}"
    );
    for package in packages {
        let url = package["url"].as_str().unwrap();
        assert!(url.starts_with("file:///"), "{url}");
        assert_eq!(package["exists"], true, "{url} names no file on disk");
        assert_eq!(
            package["sha256"].as_str().map(str::len),
            Some(64),
            "{package}"
        );
    }

    let platform = parsed["platforms"][0].as_str().unwrap();
    let hash = parsed["content_hash"][platform].as_str().unwrap();
    let explicit =
        fs_err::read_to_string(dir.join(format!("explicit/explicit-{platform}.txt"))).unwrap();
    assert!(
        explicit.contains(&format!("# input_hash: {hash}\n")),
        "{explicit}"
    );
}

/// The rule: keel's `@EXPLICIT` list holds what conda-lock's explicit render of the same lock
/// holds, `# pip NAME @ URL#sha256=HASH` lines included (micromamba and `conda-lock install`
/// install them; conda reads them as comments).
#[test]
fn explicit_lists_match_conda_locks_own_render_pip_lines_included() {
    let project = exported_project();
    let dir = project.path();
    let rendered = conda_lock_python(
        dir,
        r#"
import pathlib, sys
from conda_lock.conda_lock import render_lockfile_for_platform
from conda_lock.lockfile import parse_conda_lock_file
lock = parse_conda_lock_file(pathlib.Path(sys.argv[1]) / "conda-lock.yml")
for platform in lock.metadata.platforms:
    lines = render_lockfile_for_platform(lockfile=lock, include_dev_dependencies=True,
        extras=None, kind="explicit", platform=platform,
        suppress_warning_for_pip_and_explicit=True)
    print("PLATFORM " + platform)
    print("\n".join(lines))
"#,
    );
    let mut platforms = 0;
    for block in rendered.split("PLATFORM ").filter(|b| !b.trim().is_empty()) {
        platforms += 1;
        let (platform, theirs) = block.split_once('\n').unwrap();
        let ours =
            fs_err::read_to_string(dir.join(format!("explicit/explicit-{platform}.txt"))).unwrap();
        // The lines that install something (and the marker), as sets: both orders are
        // topological, but independent packages may come in either order.
        let installing = |text: &str| -> std::collections::BTreeSet<String> {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && (!l.starts_with('#') || l.starts_with("# pip ")))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            installing(&ours),
            installing(theirs),
            "ours:\n{ours}\ntheirs:\n{theirs}"
        );
        assert!(ours.contains("\n# pip alpha @ file:///"), "{ours}");
        assert!(ours.contains("#sha256="), "{ours}");
        let input_hash = |text: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix("# input_hash: "))
                .map(str::to_owned)
        };
        assert_eq!(input_hash(&ours), input_hash(theirs));
    }
    assert_eq!(platforms, 1, "{rendered}");
}

/// The rule: an export whose format cannot hold a package names the package and the reason,
/// and keel.lock (and every export that could be written) is written anyway. A python that
/// installs into its own site-packages folder (`python_site_packages_path`, as conda-forge's
/// free-threading builds record) is one CEP 37 cannot express.
#[test]
fn an_export_that_cannot_hold_a_package_names_it_and_the_lock_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let subdir = rattler_conda_types::Subdir::current().unwrap();
    for (name, packages) in [
        (
            subdir.as_str(),
            format!(
                r#"{{"python-3.13.0-h0_cp313t.conda": {{"name": "python", "version": "3.13.0",
                "build": "h0_cp313t", "build_number": 0, "depends": [], "subdir": "{subdir}",
                "python_site_packages_path": "lib/python3.13t/site-packages",
                "sha256": "{}", "md5": "{}"}}}}"#,
                "0".repeat(64),
                "0".repeat(32)
            ),
        ),
        ("noarch", "{}".to_owned()),
    ] {
        fs_err::create_dir_all(dir.join("channel").join(name)).unwrap();
        fs_err::write(
            dir.join("channel").join(name).join("repodata.json"),
            format!(
                r#"{{"info": {{"subdir": "{name}"}}, "packages": {{}}, "packages.conda": {packages}}}"#
            ),
        )
        .unwrap();
    }
    fs_err::write(
        dir.join("environment.yml"),
        "channels: [./channel]\ndependencies: [python=3.13]\n",
    )
    .unwrap();
    let output = keel(
        dir,
        &[
            "lock",
            "--conda-lock",
            "conda-lock.yml",
            "--explicit",
            "explicit",
        ],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("conda-lock.yml was not written"),
        "{stderr}"
    );
    assert!(stderr.contains("python 3.13.0"), "{stderr}");
    assert!(stderr.contains("site-packages"), "{stderr}");
    assert!(dir.join("keel.lock").is_file(), "{stderr}");
    assert!(
        dir.join(format!("explicit/explicit-{subdir}.txt"))
            .is_file(),
        "{stderr}"
    );
    assert!(!dir.join("conda-lock.yml").exists());
}
