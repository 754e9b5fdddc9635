//! What keel.lock records of the PyPI packages uv resolved, as pixi needs it to take the lock
//! as satisfied: each package's `requires_dist` (the wheel's `Requires-Dist`, markers and
//! extras kept) and `requires_python`, its index, and the environment's indexes.
//!
//! The walk below is the one of pixi 0.77.0 (prefix-dev/pixi at commit
//! 2b25fc76dd3b5cc50a235387d948474975c40d73, `crates/pixi_core/src/lock_file/satisfiability/`):
//! `environment.rs` `verify_pypi_indexes` (the lock's `indexes` equal the manifest's
//! `PypiIndexes`, whose primary index defaults to `https://pypi.org/simple`), and
//! `platform.rs` `verify_package_platform_satisfiability` with `pypi.rs`
//! `pypi_satisfies_requirement`: from the manifest's requirements whose markers hold, each
//! locked package must satisfy the requirement that reaches it (its version in the specifier,
//! a manifest requirement's locked index among the lock's indexes and URL find-links), its
//! `requires_python` must hold the interpreter's version, its `requires_dist` entries whose
//! markers hold (with the extras asked of it) are walked in turn, and at the end every locked
//! PyPI package must have been reached (else `TooManyPypiPackages`, and pixi re-solves).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use keel_solve::{LockOptions, Uv, lock};
use keel_spec::PipEntryKind;
use keel_test_support::wheel::{build_wheel, build_wheel_with_metadata};
use pep508_rs::{ExtraName, MarkerEnvironment, MarkerEnvironmentBuilder, PackageName, Requirement};
use rattler_conda_types::Subdir;
use rattler_lock::{FindLinksUrlOrPath, LockFile, PypiIndexes, PypiPackageData};

/// A project whose pip section asks for `alpha[fast]` from a local find-links folder: alpha
/// needs beta always, gamma only on Windows (a marker), delta only with its `fast` extra; beta
/// needs epsilon (two levels down). Nothing outside the folder is fetched (`--no-index`);
/// the extra index, with credentials, is only recorded.
fn project() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let wheels = dir.path().join("wheels");
    fs_err::create_dir_all(&wheels).unwrap();
    build_wheel_with_metadata(
        &wheels,
        "alpha",
        "1.0.0",
        &[
            "Requires-Python: >=3.8",
            "Requires-Dist: beta>=2",
            "Requires-Dist: gamma; sys_platform == \"win32\"",
            "Requires-Dist: delta>=1.0;",
            "  extra == \"fast\"",
            "Provides-Extra: fast",
        ],
    );
    build_wheel(&wheels, "beta", "2.0.0", &["epsilon<2"]);
    build_wheel(&wheels, "gamma", "1.0.0", &[]);
    build_wheel(&wheels, "delta", "1.1.0", &[]);
    build_wheel_with_metadata(&wheels, "epsilon", "1.0.0", &["Requires-Python: >=3.9,<4"]);
    let env = dir.path().join("environment.yml");
    let channel = keel_test_support::test_data().join("repodata/conda-forge-py39");
    fs_err::write(
        &env,
        format!(
            "channels: [{}]\ndependencies:\n  - python=3.9\n  - pip\n  - pip:\n      \
             - --find-links ./wheels\n      - --no-index\n      \
             - --extra-index-url https://keel:s3cret-token@pypi.example.org/simple\n      \
             - alpha[fast]>=1\n",
            channel.display()
        ),
    )
    .unwrap();
    (dir, env)
}

async fn locked(dir: &Path, env: &Path) -> keel_solve::Locked {
    let spec = keel_spec::read_path(env).unwrap().spec;
    let options = LockOptions {
        platforms: vec![Subdir::Linux64],
        cache_dir: dir.join("cache"),
        uv: Uv::Path(keel_test_support::tool("uv")),
        ..LockOptions::default()
    };
    let locked = lock(&spec, env, &options, None).await.unwrap();
    fs_err::write(dir.join("keel.lock"), &locked.text).unwrap();
    locked
}

fn requirement(text: &str) -> Requirement {
    Requirement::from_str(text).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn requires_dist_requires_python_and_indexes_are_what_uv_resolved() {
    let (dir, env) = project();
    let locked = locked(dir.path(), &env).await;
    assert!(!locked.text.contains("s3cret"), "{}", locked.text);
    let (lock, _) = keel_solve::read_lock(&dir.path().join("keel.lock"))
        .unwrap()
        .unwrap();
    let environment = lock.default_environment().unwrap();
    assert_eq!(
        environment.pypi_indexes(),
        Some(&PypiIndexes {
            indexes: vec![
                "https://pypi.org/simple".parse().unwrap(),
                "https://pypi.example.org/simple".parse().unwrap()
            ],
            find_links: vec![FindLinksUrlOrPath::Path("./wheels".into())],
        })
    );
    let platform = environment.platforms().next().unwrap();
    let packages: BTreeMap<String, _> = environment
        .pypi_packages(platform)
        .unwrap()
        .filter_map(PypiPackageData::as_wheel)
        .map(|p| (p.name.to_string(), p.clone()))
        .collect();
    assert_eq!(
        packages.keys().map(String::as_str).collect::<Vec<_>>(),
        ["alpha", "beta", "delta", "epsilon"],
        "gamma's marker is false on linux-64; delta comes with alpha's `fast` extra"
    );
    let alpha = &packages["alpha"];
    assert_eq!(
        alpha.requires_dist,
        [
            requirement("beta>=2"),
            requirement("gamma; sys_platform == 'win32'"),
            // A field continued on the next line is one requirement.
            requirement("delta>=1.0; extra == 'fast'"),
        ]
    );
    assert_eq!(alpha.requires_python, Some(">=3.8".parse().unwrap()));
    assert_eq!(packages["beta"].requires_dist, [requirement("epsilon<2")]);
    assert_eq!(packages["delta"].requires_dist, []);
    assert_eq!(
        packages["epsilon"].requires_python,
        Some(">=3.9,<4".parse().unwrap())
    );
    // A wheel of a local folder records no index; rattler_lock (and so pixi) reads such a
    // wheel as coming from the environment's first index, which pixi accepts.
    assert!(
        packages
            .values()
            .all(|p| p.index_url.as_ref().map(url::Url::as_str) == Some("https://pypi.org/simple")),
        "{packages:?}"
    );
    assert!(!locked.text.contains("index_url"), "{}", locked.text);
}

/// The interpreter's marker environment on linux-64, as pixi's `determine_marker_environment`
/// derives it from the locked python record.
fn linux_markers(python: &str) -> MarkerEnvironment {
    let short = python.split('.').take(2).collect::<Vec<_>>().join(".");
    MarkerEnvironment::try_from(MarkerEnvironmentBuilder {
        implementation_name: "cpython",
        implementation_version: python,
        os_name: "posix",
        platform_machine: "x86_64",
        platform_python_implementation: "CPython",
        platform_release: "",
        platform_system: "Linux",
        platform_version: "",
        python_full_version: python,
        python_version: &short,
        sys_platform: "linux",
    })
    .unwrap()
}

/// What the walk needs of a locked PyPI package, a wheel or a source tree.
struct Locked {
    name: PackageName,
    version: Option<pep440_rs::Version>,
    index_url: Option<url::Url>,
    requires_dist: Vec<Requirement>,
    requires_python: Option<pep440_rs::VersionSpecifiers>,
}

/// pixi's walk over the lock's first platform: `Err` names what makes pixi re-solve.
fn walk_as_pixi(lock: &LockFile, manifest: &[Requirement]) -> Result<(), String> {
    let environment = lock.default_environment().unwrap();
    let platform = environment.platforms().next().unwrap();
    let python = environment
        .conda_repodata_records(platform)
        .unwrap()
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.package_record.name.as_normalized() == "python")
        .ok_or("no python")?
        .package_record
        .version
        .to_string();
    let markers = linux_markers(&python);
    let indexes: Vec<String> = environment.pypi_indexes().map_or_else(Vec::new, |i| {
        i.indexes
            .iter()
            .chain(i.find_links.iter().filter_map(FindLinksUrlOrPath::as_url))
            .map(|u| u.as_str().trim_end_matches('/').to_owned())
            .collect()
    });
    let locked: BTreeMap<PackageName, Locked> = environment
        .pypi_packages(platform)
        .unwrap()
        .map(|p| match p {
            PypiPackageData::Distribution(w) => (
                w.name.clone(),
                Locked {
                    name: w.name.clone(),
                    version: Some(w.version.clone()),
                    index_url: w.index_url.clone(),
                    requires_dist: w.requires_dist.clone(),
                    requires_python: w.requires_python.clone(),
                },
            ),
            PypiPackageData::Source(s) => (
                s.name.clone(),
                Locked {
                    name: s.name.clone(),
                    version: None,
                    index_url: None,
                    requires_dist: s.requires_dist.clone(),
                    requires_python: s.requires_python.clone(),
                },
            ),
        })
        .collect();
    let mut queue: Vec<(Requirement, bool)> = manifest
        .iter()
        .filter(|r| r.evaluate_markers(&markers, &r.extras))
        .map(|r| (r.clone(), true))
        .collect();
    let mut visited = BTreeSet::new();
    let mut seen = BTreeSet::new();
    while let Some((requirement, from_manifest)) = queue.pop() {
        let package = locked
            .get(&requirement.name)
            .ok_or_else(|| format!("{requirement} is not locked"))?;
        // A source tree (no version) satisfies a requirement of its name from requires_dist
        // (pixi trusts the path-based package there).
        if let Some(pep508_rs::VersionOrUrl::VersionSpecifier(specifiers)) =
            &requirement.version_or_url
            && let Some(version) = &package.version
            && !specifiers.contains(version)
        {
            return Err(format!("{} {version} is not {requirement}", package.name));
        }
        if from_manifest
            && let Some(index) = &package.index_url
            && !indexes.contains(&index.as_str().trim_end_matches('/').to_owned())
        {
            return Err(format!(
                "{}'s index {index} is not the lock's",
                package.name
            ));
        }
        if visited.insert(package.name.clone())
            && let Some(requires) = &package.requires_python
            && !requires.contains(&python.parse().unwrap())
        {
            return Err(format!("{} needs python {requires}", package.name));
        }
        let extras: &[ExtraName] = &requirement.extras;
        for dependency in &package.requires_dist {
            if dependency.evaluate_markers(&markers, extras) && seen.insert(dependency.to_string())
            {
                queue.push((dependency.clone(), false));
            }
        }
    }
    let unreached: Vec<String> = locked
        .keys()
        .filter(|name| !visited.contains(*name))
        .map(ToString::to_string)
        .collect();
    if unreached.is_empty() {
        Ok(())
    } else {
        Err(format!("too many PyPI packages: {}", unreached.join(", ")))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_locked_pypi_package_is_reached_from_the_pip_section_as_pixi_walks() {
    let (dir, env) = project();
    let locked = locked(dir.path(), &env).await;
    let spec = keel_spec::read_path(&env).unwrap().spec;
    let manifest: Vec<Requirement> = spec
        .pip_entries()
        .filter_map(|entry| match &entry.kind {
            PipEntryKind::Requirement { requirement, .. } => Some((**requirement).clone()),
            _ => None,
        })
        .collect();
    assert_eq!(manifest, [requirement("alpha[fast]>=1")]);
    walk_as_pixi(&locked.lock, &manifest).unwrap();

    // The walk fails where pixi's would: the lock as keel wrote it before (no requires_dist)
    // leaves beta, delta and epsilon unreached.
    let mut stripped: serde_yaml::Value = serde_yaml::from_str(&locked.text).unwrap();
    for package in stripped["packages"].as_sequence_mut().unwrap() {
        package.as_mapping_mut().unwrap().remove("requires_dist");
    }
    let stripped = serde_yaml::to_string(&stripped).unwrap();
    assert!(!stripped.contains("requires_dist"));
    let stripped = LockFile::from_str_with_base_directory(&stripped, Some(dir.path())).unwrap();
    let error = walk_as_pixi(&stripped, &manifest).unwrap_err();
    assert_eq!(error, "too many PyPI packages: beta, delta, epsilon");
}

#[tokio::test(flavor = "multi_thread")]
async fn py_rattler_reads_requires_dist_and_indexes_from_keel_lock() {
    let (dir, env) = project();
    locked(dir.path(), &env).await;
    let python = keel_test_support::python(&["rattler", "yaml"]);
    // py-rattler reads the lock and writes it back through its own rattler_lock: the indexes
    // survive only if that reader understood them.
    let script = r#"
import json, sys, yaml
from rattler import LockFile
lock = LockFile.from_path(sys.argv[1])
env = lock.default_environment()
packages = {p.name: p for p in env.pypi_packages()["linux-64"]}
lock.to_path(sys.argv[2])
written = yaml.safe_load(open(sys.argv[2]))["environments"]["default"]
print(json.dumps({
    "requires_dist": {n: p.requires_dist for n, p in sorted(packages.items())},
    "requires_python": packages["alpha"].requires_python,
    "beta_satisfies": packages["beta"].satisfies("beta>=2"),
    "indexes": written.get("indexes"),
    "find_links": written.get("find-links"),
}))
"#;
    let output = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(dir.path().join("keel.lock"))
        .arg(dir.path().join("written.lock"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        read,
        serde_json::json!({
            "requires_dist": {
                "alpha": ["beta>=2", "gamma ; sys_platform == 'win32'", "delta>=1.0 ; extra == 'fast'"],
                "beta": ["epsilon<2"],
                "delta": [],
                "epsilon": [],
            },
            "requires_python": ">=3.8",
            "beta_satisfies": true,
            "indexes": ["https://pypi.org/simple", "https://pypi.example.org/simple"],
            "find_links": [{"path": "./wheels"}],
        })
    );
}

/// The METADATA inside a wheel, as an index serves it beside the wheel (PEP 658).
fn metadata_of(wheel: &Path) -> Vec<u8> {
    use std::io::Read as _;
    let mut archive = zip::ZipArchive::new(fs_err::File::open(wheel).unwrap()).unwrap();
    let name = archive
        .file_names()
        .filter_map(Result::ok)
        .find(|n| n.ends_with(".dist-info/METADATA"))
        .unwrap()
        .into_owned();
    let mut bytes = Vec::new();
    archive
        .by_name(&name)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn wheels_on_a_server_get_their_metadata_from_pep_658_files_or_the_wheel() {
    use keel_test_support::http::{Credentials, Server};

    let root = tempfile::tempdir().unwrap();
    let wheels = root.path().join("wheels");
    fs_err::create_dir_all(&wheels).unwrap();
    build_wheel_with_metadata(
        &wheels,
        "alpha",
        "1.0.0",
        &["Requires-Python: >=3.8", "Requires-Dist: beta>=2"],
    );
    build_wheel(&wheels, "beta", "2.0.0", &["epsilon<2"]);
    build_wheel(&wheels, "epsilon", "1.0.0", &[]);
    // alpha has its PEP 658 file; beta and epsilon only their wheels.
    fs_err::write(
        wheels.join("alpha-1.0.0-py3-none-any.whl.metadata"),
        metadata_of(&wheels.join("alpha-1.0.0-py3-none-any.whl")),
    )
    .unwrap();
    let links: String = ["alpha-1.0.0", "beta-2.0.0", "epsilon-1.0.0"]
        .iter()
        .map(|w| format!("<a href=\"{w}-py3-none-any.whl\">{w}</a>\n"))
        .collect();
    fs_err::write(
        wheels.join("links.html"),
        format!("<html><body>\n{links}</body></html>\n"),
    )
    .unwrap();
    let server = Server::start(
        root.path(),
        Credentials {
            basic: Some("keel:s3cret-pw".to_owned()),
            token: None,
        },
    );
    let page = format!("{}/wheels/links.html", server.base);
    let credentialed = page.replacen("http://", "http://keel:s3cret-pw@", 1);

    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("environment.yml");
    let channel = keel_test_support::test_data().join("repodata/conda-forge-py39");
    fs_err::write(
        &env,
        format!(
            "channels: [{}]\ndependencies:\n  - python=3.9\n  - pip\n  - pip:\n      \
             - --no-index\n      - --find-links {credentialed}\n      - alpha\n",
            channel.display()
        ),
    )
    .unwrap();
    let locked = locked(dir.path(), &env).await;
    assert!(!locked.text.contains("s3cret"), "{}", locked.text);

    let environment = locked.lock.default_environment().unwrap();
    let platform = environment.platforms().next().unwrap();
    let packages: BTreeMap<String, _> = environment
        .pypi_packages(platform)
        .unwrap()
        .filter_map(PypiPackageData::as_wheel)
        .map(|p| (p.name.to_string(), p.clone()))
        .collect();
    assert_eq!(packages["alpha"].requires_dist, [requirement("beta>=2")]);
    assert_eq!(packages["beta"].requires_dist, [requirement("epsilon<2")]);
    assert_eq!(packages["epsilon"].requires_dist, []);
    // A package of a find-links URL records that URL as its index, as pixi does.
    for package in packages.values() {
        assert_eq!(
            package.index_url.as_ref().map(url::Url::as_str),
            Some(page.as_str()),
            "{}",
            package.name
        );
    }
    assert_eq!(
        environment.pypi_indexes().unwrap().find_links,
        [FindLinksUrlOrPath::Url(page.parse().unwrap())]
    );
    // keel asked for each .metadata file with the page's credentials; beta's, missing, sent
    // it to the wheel.
    let answered = |suffix: &str| {
        server
            .requests_for(suffix)
            .iter()
            .filter(|r| r.method == "GET")
            .map(|r| r.status)
            .collect::<Vec<_>>()
    };
    assert_eq!(answered("alpha-1.0.0-py3-none-any.whl.metadata"), [200]);
    assert_eq!(answered("beta-2.0.0-py3-none-any.whl.metadata"), [404]);
    assert!(answered("beta-2.0.0-py3-none-any.whl").contains(&200));
    walk_as_pixi(&locked.lock, &[requirement("alpha")]).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_source_tree_records_what_its_pyproject_states() {
    let (dir, env) = project();
    let tree = dir.path().join("tools/proj");
    fs_err::create_dir_all(tree.join("proj")).unwrap();
    fs_err::write(tree.join("proj/__init__.py"), "").unwrap();
    fs_err::write(
        tree.join("pyproject.toml"),
        "[build-system]\nrequires = [\"hatchling\"]\nbuild-backend = \"hatchling.build\"\n\n\
         [project]\nname = \"proj\"\nversion = \"0.1.0\"\nrequires-python = \">=3.9\"\n\
         dependencies = [\"beta>=2\", \"gamma; sys_platform == 'win32'\"]\n\n\
         [project.optional-dependencies]\nfast = [\"delta>=1; python_version >= '3'\"]\n",
    )
    .unwrap();
    let text = fs_err::read_to_string(&env).unwrap().replace(
        "      - alpha[fast]>=1\n",
        "      - -e ./tools/proj[fast]\n",
    );
    fs_err::write(&env, text).unwrap();
    let locked = locked(dir.path(), &env).await;

    let environment = locked.lock.default_environment().unwrap();
    let platform = environment.platforms().next().unwrap();
    let packages: BTreeMap<String, PypiPackageData> = environment
        .pypi_packages(platform)
        .unwrap()
        .map(|p| (p.name().to_string(), p.clone()))
        .collect();
    assert_eq!(
        packages.keys().map(String::as_str).collect::<Vec<_>>(),
        ["beta", "delta", "epsilon", "proj"]
    );
    let PypiPackageData::Source(proj) = &packages["proj"] else {
        panic!("{:?}", packages["proj"]);
    };
    // Relative to the environment file's folder, as pixi's manifest would name it.
    assert_eq!(proj.location.to_string(), "./tools/proj");
    assert_eq!(
        proj.requires_dist,
        [
            requirement("beta>=2"),
            requirement("gamma; sys_platform == 'win32'"),
            requirement("delta>=1; python_version >= '3' and extra == 'fast'"),
        ]
    );
    assert_eq!(proj.requires_python, Some(">=3.9".parse().unwrap()));
    walk_as_pixi(&locked.lock, &[requirement("proj[fast]")]).unwrap();
    // keel reads its own lock back (the folder is a location it can place).
    keel_solve::read_lock(&dir.path().join("keel.lock"))
        .unwrap()
        .unwrap();
}
