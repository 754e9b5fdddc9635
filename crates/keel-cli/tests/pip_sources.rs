//! Pip lines that name a git repository or a direct URL, end to end: `keel lock` pins the
//! exact commit (as pixi writes it, `git+URL?rev=REV#COMMIT`), `keel install` installs that
//! commit whatever the branch holds later, `keel verify` counts it as the lock's, and the
//! `@EXPLICIT` export holds the commit as pip reads it. Nothing leaves the machine: the
//! repository is a `git init` in a temporary folder (`git+file://`), the direct URLs are
//! served on loopback, and the packages build with an in-tree PEP 517 backend that needs no
//! download.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use keel_test_support::channel::{Content, Package, build_channel};
use keel_test_support::http::{Credentials, Server};
use keel_test_support::wheel;

use common::{keel_in, text};

fn keel(dir: &Path, args: &[&str]) -> Output {
    keel_in(dir)
        .args(args)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("RATTLER_CACHE_DIR", dir.join("rattler-cache"))
        .env("UV_CACHE_DIR", dir.join("uv-cache"))
        .env("KEEL_UV", keel_test_support::tool("uv"))
        .env_remove("CONDA_OVERRIDE_CUDA")
        .output()
        .unwrap()
}

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

fn git(repo: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=keel",
            "-c",
            "user.email=keel@example.invalid",
        ])
        .args(args)
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        text(&output.stderr)
    );
    text(&output.stdout).trim().to_owned()
}

/// A PEP 517 backend kept in the source tree (`backend-path = ["."]`, `requires = []`): it
/// builds a pure-Python wheel of `src/<name>` with the name, version and dependencies of
/// `pyproject.toml`, so uv builds the package without fetching a build backend.
const BACKEND: &str = r#"import base64, hashlib, os, tomllib, zipfile

def _project():
    with open("pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    project = _project()
    name, version = project["name"], project["version"]
    dist_info = f"{name}-{version}.dist-info"
    files = {}
    for root, _, names in os.walk(os.path.join("src", name)):
        for file in names:
            path = os.path.join(root, file)
            with open(path, "rb") as f:
                files[os.path.relpath(path, "src")] = f.read()
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in project.get("dependencies", []))
    files[f"{dist_info}/METADATA"] = metadata.encode()
    files[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(data)}\n"
    record += f"{dist_info}/RECORD,,\n"
    files[f"{dist_info}/RECORD"] = record.encode()
    wheel = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return wheel

def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    # PEP 660: a wheel whose .pth file puts the source folder on sys.path.
    source = os.path.abspath("src")
    wheel = build_wheel(wheel_directory)
    path = os.path.join(wheel_directory, wheel)
    with zipfile.ZipFile(path) as z:
        kept = {n: z.read(n) for n in z.namelist() if ".dist-info/" in n and not n.endswith("RECORD")}
    name = _project()["name"]
    kept[f"{name}.pth"] = (source + "\n").encode()
    dist_info = next(n.split("/")[0] for n in kept if ".dist-info/" in n)
    record = ""
    for p, data in kept.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{p},sha256={digest},{len(data)}\n"
    kept[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
    with zipfile.ZipFile(path, "w") as z:
        for p, data in kept.items():
            z.writestr(p, data)
    return wheel
"#;

/// A source tree of `name` 0.1.0 that needs `beta` and whose module holds `VALUE = value`.
fn write_project(dir: &Path, name: &str, value: u32) {
    fs_err::create_dir_all(dir.join("src").join(name)).unwrap();
    fs_err::write(
        dir.join("pyproject.toml"),
        format!(
            "[project]\nname = \"{name}\"\nversion = \"0.1.0\"\ndependencies = [\"beta>=1\"]\n\
             requires-python = \">=3.8\"\n\n[build-system]\nrequires = []\n\
             build-backend = \"backend\"\nbackend-path = [\".\"]\n"
        ),
    )
    .unwrap();
    fs_err::write(dir.join("backend.py"), BACKEND).unwrap();
    fs_err::write(
        dir.join("src").join(name).join("__init__.py"),
        format!("VALUE = {value}\n"),
    )
    .unwrap();
}

/// A conda channel with stand-ins for python and pip: the solve needs them to resolve the
/// pip section (the prefix's real interpreter comes from a virtual environment).
fn stub_channel(dir: &Path) {
    let packages: Vec<Package> = [("python", "3.11.7"), ("pip", "24.0")]
        .into_iter()
        .map(|(name, version)| Package {
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
        })
        .collect();
    build_channel(&dir.join("channel"), &packages);
}

fn site_packages(prefix: &Path) -> std::path::PathBuf {
    fs_err::read_dir(prefix.join("lib"))
        .unwrap()
        .map(|e| e.unwrap().path().join("site-packages"))
        .find(|p| p.is_dir())
        .unwrap()
}

/// The lock pins the commit `main` was at; a later commit on `main` changes neither a re-lock
/// of the unchanged file nor what `keel install` of the lock installs; verify is clean; the
/// `@EXPLICIT` list names the commit as pip reads it (`git+URL@COMMIT`). The `-e git+` line
/// (uv and pixi have no editable git source) and the `#subdirectory=` of a tag are locked
/// the same way.
#[test]
fn a_git_line_is_locked_and_installed_at_the_commit_its_branch_was_at() {
    let uv = keel_test_support::tool("uv");
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    stub_channel(dir);
    fs_err::create_dir_all(dir.join("wheels")).unwrap();
    wheel::build_wheel(&dir.join("wheels"), "beta", "1.0.0", &[]);

    let repo = dir.join("repo");
    fs_err::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet", "-b", "main"]);
    write_project(&repo, "gamma", 1);
    write_project(&repo.join("sub"), "delta", 1);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "one"]);
    git(&repo, &["tag", "v1"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    // A temporary folder's path has nothing a URL must escape.
    let repo_url = format!("file://{}", repo.display());

    fs_err::write(
        dir.join("env.yml"),
        format!(
            "channels:\n  - ./channel\ndependencies:\n  - python =3.11\n  - pip\n  - pip:\n    \
             - --find-links ./wheels\n    - --no-index\n    - gamma @ git+{repo_url}@main\n    \
             - -e git+{repo_url}@v1#subdirectory=sub&egg=delta\n"
        ),
    )
    .unwrap();
    expect(dir, &["lock", "env.yml", "-o", "keel.lock"], 0);
    let lock = fs_err::read_to_string(dir.join("keel.lock")).unwrap();
    let gamma = format!("git+{repo_url}?rev=main#{first}");
    let delta = format!("git+{repo_url}?subdirectory=sub&rev=v1#{first}");
    assert!(lock.contains(&format!("- pypi: {gamma}\n")), "{lock}");
    assert!(lock.contains(&format!("- pypi: {delta}\n")), "{lock}");
    // What the commit's pyproject.toml states, so that pixi's walk reaches beta.
    let parsed = rattler_lock::LockFile::from_str_with_base_directory(&lock, Some(dir)).unwrap();
    let environment = parsed.default_environment().unwrap();
    let platform = parsed.platforms().next().unwrap();
    let packages: Vec<_> = environment.pypi_packages(platform).unwrap().collect();
    let gamma_package = packages
        .iter()
        .find(|p| p.name().as_ref() == "gamma")
        .unwrap()
        .as_wheel()
        .unwrap();
    assert_eq!(gamma_package.version.to_string(), "0.1.0");
    assert_eq!(
        gamma_package
            .requires_dist
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["beta>=1"]
    );
    assert_eq!(
        gamma_package
            .requires_python
            .as_ref()
            .map(ToString::to_string),
        Some(">=3.8".to_owned())
    );
    assert!(packages.iter().any(|p| p.name().as_ref() == "beta"));
    // py-rattler reads the git package and writes it back with its commit.
    let python = keel_test_support::python(&["rattler"]);
    let script = r#"
import json, sys
from rattler import LockFile
lock = LockFile.from_path(sys.argv[1])
packages = {p.name: p for p in lock.default_environment().pypi_packages()["linux-64"]}
lock.to_path(sys.argv[2])
print(json.dumps({"gamma": packages["gamma"].requires_dist, "written": open(sys.argv[2]).read()}))
"#;
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(dir.join("keel.lock"))
        .arg(dir.join("written.lock"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let read: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(read["gamma"], serde_json::json!(["beta>=1"]));
    assert!(
        read["written"]
            .as_str()
            .unwrap()
            .contains(&format!("- pypi: {gamma}\n")),
        "{read:#}"
    );

    // The branch moves on; the file does not change.
    write_project(&repo, "gamma", 2);
    git(&repo, &["commit", "--quiet", "-am", "two"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);
    assert_ne!(first, second);
    // The lock is a function of the file: --check calls it current (the requested revision is
    // the same), and a re-lock keeps the pinned commit rather than following the branch.
    expect(dir, &["lock", "env.yml", "-o", "keel.lock", "--check"], 0);
    expect(
        dir,
        &[
            "lock",
            "env.yml",
            "-o",
            "keel.lock",
            "--explicit",
            "explicit",
        ],
        0,
    );
    assert_eq!(
        fs_err::read_to_string(dir.join("keel.lock")).unwrap(),
        lock,
        "a re-lock of the same file moved the pin"
    );
    // conda-lock.yml (CEP 37, as rattler_lock writes it) holds artifact URLs only: the git
    // package is named, and keel.lock is still written.
    let output = keel(
        dir,
        &[
            "lock",
            "env.yml",
            "-o",
            "keel.lock",
            "--conda-lock",
            "conda-lock.yml",
        ],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("conda-lock.yml cannot hold gamma 0.1.0"),
        "{stderr}"
    );
    assert!(!dir.join("conda-lock.yml").exists());
    assert_eq!(fs_err::read_to_string(dir.join("keel.lock")).unwrap(), lock);
    let subdir = rattler_conda_types::Subdir::current().unwrap();
    let explicit =
        fs_err::read_to_string(dir.join(format!("explicit/explicit-{subdir}.txt"))).unwrap();
    assert!(
        explicit.contains(&format!("# pip gamma @ git+{repo_url}@{first}\n")),
        "{explicit}"
    );
    assert!(
        explicit.contains(&format!(
            "# pip delta @ git+{repo_url}@{first}#subdirectory=sub\n"
        )),
        "{explicit}"
    );

    // keel install of the lock installs the first commit, not the branch's tip.
    let venv = Command::new(&uv)
        .args(["venv", "--quiet", "--python", "python3", "env"])
        .env("UV_CACHE_DIR", dir.join("uv-cache"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(venv.status.success(), "{}", text(&venv.stderr));
    expect(
        dir,
        &[
            "install",
            "-l",
            "keel.lock",
            "-p",
            "env",
            "--package-cache",
            "pkgs",
        ],
        0,
    );
    let site = site_packages(&dir.join("env"));
    assert_eq!(
        fs_err::read_to_string(site.join("gamma/__init__.py")).unwrap(),
        "VALUE = 1\n"
    );
    assert!(site.join("delta/__init__.py").is_file());
    let output = keel(dir, &["verify", "env", "-l", "keel.lock", "--json"]);
    let verify: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for clean in ["missing_pypi", "pip_outside_lock", "changed_files"] {
        assert_eq!(verify[clean], serde_json::json!([]), "{clean}: {verify:#}");
    }

    // --update gamma follows the branch to its new commit; delta keeps its pin.
    expect(
        dir,
        &["lock", "env.yml", "-o", "keel.lock", "--update", "gamma"],
        0,
    );
    let updated = fs_err::read_to_string(dir.join("keel.lock")).unwrap();
    assert!(
        updated.contains(&format!("- pypi: git+{repo_url}?rev=main#{second}\n")),
        "{updated}"
    );
    assert!(updated.contains(&format!("- pypi: {delta}\n")), "{updated}");
}

/// `name @ URL` lines: a wheel with `#sha256=` and an sdist without are locked at their URL
/// with the sha256 uv computed, each with the requirements its own metadata states (the
/// wheel's METADATA, the sdist's PKG-INFO, read from the served file), installed from that
/// URL, and written to the `@EXPLICIT` list with the hash.
#[test]
fn direct_url_lines_are_locked_with_their_hash_and_metadata() {
    let uv = keel_test_support::tool("uv");
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    stub_channel(dir);
    fs_err::create_dir_all(dir.join("wheels")).unwrap();
    wheel::build_wheel(&dir.join("wheels"), "beta", "1.0.0", &[]);
    let served = dir.join("served");
    fs_err::create_dir_all(&served).unwrap();
    wheel::build_wheel(&served, "alpha", "2.0.0", &["beta>=1"]);
    // An sdist: the source tree and its PKG-INFO in one top-level folder.
    let tree = dir.join("epsilon-0.1.0");
    write_project(&tree, "epsilon", 1);
    fs_err::write(
        tree.join("PKG-INFO"),
        "Metadata-Version: 2.1\nName: epsilon\nVersion: 0.1.0\nRequires-Python: >=3.9\n\
         Requires-Dist: beta>=1\n",
    )
    .unwrap();
    let tar = Command::new("tar")
        .args(["-czf"])
        .arg(served.join("epsilon-0.1.0.tar.gz"))
        .args(["-C", dir.to_str().unwrap(), "epsilon-0.1.0"])
        .output()
        .unwrap();
    assert!(tar.status.success(), "{}", text(&tar.stderr));
    let wheel_bytes = fs_err::read(served.join("alpha-2.0.0-py3-none-any.whl")).unwrap();
    let wheel_sha =
        hex::encode(rattler_digest::compute_bytes_digest::<rattler_digest::Sha256>(&wheel_bytes));
    let sdist_bytes = fs_err::read(served.join("epsilon-0.1.0.tar.gz")).unwrap();
    let sdist_sha =
        hex::encode(rattler_digest::compute_bytes_digest::<rattler_digest::Sha256>(&sdist_bytes));
    let server = Server::start(&served, Credentials::default());
    let base = &server.base;
    fs_err::write(
        dir.join("env.yml"),
        format!(
            "channels:\n  - ./channel\ndependencies:\n  - python =3.11\n  - pip\n  - pip:\n    \
             - --find-links ./wheels\n    - --no-index\n    \
             - alpha @ {base}/alpha-2.0.0-py3-none-any.whl#sha256={wheel_sha}\n    \
             - epsilon @ {base}/epsilon-0.1.0.tar.gz\n"
        ),
    )
    .unwrap();
    let subdir = rattler_conda_types::Subdir::current().unwrap();
    expect(
        dir,
        &[
            "lock",
            "env.yml",
            "-o",
            "keel.lock",
            "--explicit",
            "explicit",
        ],
        0,
    );
    let lock = fs_err::read_to_string(dir.join("keel.lock")).unwrap();
    let parsed = rattler_lock::LockFile::from_str_with_base_directory(&lock, Some(dir)).unwrap();
    let environment = parsed.default_environment().unwrap();
    let platform = parsed.platforms().next().unwrap();
    let packages: Vec<_> = environment.pypi_packages(platform).unwrap().collect();
    for (name, file, sha, python) in [
        ("alpha", "alpha-2.0.0-py3-none-any.whl", &wheel_sha, ">=3.8"),
        ("epsilon", "epsilon-0.1.0.tar.gz", &sdist_sha, ">=3.9"),
    ] {
        let package = packages
            .iter()
            .find(|p| p.name().as_ref() == name)
            .unwrap_or_else(|| panic!("{name} is not in the lock:\n{lock}"))
            .as_wheel()
            .unwrap();
        assert_eq!(package.location.to_string(), format!("{base}/{file}"));
        assert_eq!(
            package
                .hash
                .as_ref()
                .and_then(|h| h.sha256())
                .map(hex::encode),
            Some(sha.clone()),
            "{name}"
        );
        assert_eq!(
            package
                .requires_dist
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["beta>=1"],
            "{name}"
        );
        assert_eq!(
            package.requires_python.as_ref().map(ToString::to_string),
            Some(python.to_owned()),
            "{name}"
        );
    }
    let explicit =
        fs_err::read_to_string(dir.join(format!("explicit/explicit-{subdir}.txt"))).unwrap();
    for line in [
        format!("# pip alpha @ {base}/alpha-2.0.0-py3-none-any.whl#sha256={wheel_sha}\n"),
        format!("# pip epsilon @ {base}/epsilon-0.1.0.tar.gz#sha256={sdist_sha}\n"),
    ] {
        assert!(explicit.contains(&line), "{line}\n{explicit}");
    }

    let venv = Command::new(&uv)
        .args(["venv", "--quiet", "--python", "python3", "env"])
        .env("UV_CACHE_DIR", dir.join("uv-cache"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(venv.status.success(), "{}", text(&venv.stderr));
    expect(
        dir,
        &[
            "install",
            "-l",
            "keel.lock",
            "-p",
            "env",
            "--package-cache",
            "pkgs",
        ],
        0,
    );
    let site = site_packages(&dir.join("env"));
    assert!(site.join("alpha/__init__.py").is_file());
    assert!(site.join("epsilon/__init__.py").is_file());
    let output = keel(dir, &["verify", "env", "-l", "keel.lock", "--json"]);
    let verify: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for clean in ["missing_pypi", "pip_outside_lock", "changed_files"] {
        assert_eq!(verify[clean], serde_json::json!([]), "{clean}: {verify:#}");
    }
}

/// `-e ./proj`: the lock cannot say a folder is editable (pixi keeps that in its manifest), and
/// keel installs a local folder as pip installs `-e`: the prefix imports the folder itself, so
/// an edit after the install is what Python sees; verify counts it as the lock's.
#[test]
fn a_local_folder_is_installed_editable_as_pip_installs_dash_e() {
    let uv = keel_test_support::tool("uv");
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    stub_channel(dir);
    fs_err::create_dir_all(dir.join("wheels")).unwrap();
    wheel::build_wheel(&dir.join("wheels"), "beta", "1.0.0", &[]);
    write_project(&dir.join("proj"), "zeta", 1);
    fs_err::write(
        dir.join("env.yml"),
        "channels:\n  - ./channel\ndependencies:\n  - python =3.11\n  - pip\n  - pip:\n    \
         - --find-links ./wheels\n    - --no-index\n    - -e ./proj\n",
    )
    .unwrap();
    expect(dir, &["lock", "env.yml", "-o", "keel.lock"], 0);
    let venv = Command::new(&uv)
        .args(["venv", "--quiet", "--python", "python3", "env"])
        .env("UV_CACHE_DIR", dir.join("uv-cache"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(venv.status.success(), "{}", text(&venv.stderr));
    expect(
        dir,
        &[
            "install",
            "-l",
            "keel.lock",
            "-p",
            "env",
            "--package-cache",
            "pkgs",
        ],
        0,
    );
    fs_err::write(dir.join("proj/src/zeta/__init__.py"), "VALUE = 2\n").unwrap();
    let imported = Command::new(dir.join("env/bin/python"))
        .args(["-c", "import zeta; print(zeta.VALUE)"])
        .output()
        .unwrap();
    assert_eq!(
        text(&imported.stdout).trim(),
        "2",
        "{}",
        text(&imported.stderr)
    );
    let output = keel(dir, &["verify", "env", "-l", "keel.lock", "--json"]);
    let verify: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for clean in ["missing_pypi", "pip_outside_lock", "changed_files"] {
        assert_eq!(verify[clean], serde_json::json!([]), "{clean}: {verify:#}");
    }
}
