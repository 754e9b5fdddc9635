//! The environment-file fixtures of conda, rattler, pixi, mamba and conda-lock (in
//! `test-data/peer-fixtures`), each giving the verdict its own project's tests expect.
//! Differences keel makes on purpose are listed in the README.

mod common;

use std::path::{Path, PathBuf};

use keel_spec::{
    ChannelKind, DependencyEntry, PipEntryKind, ProblemKind, Severity, check_path, read_path,
};
use rattler_conda_types::{EnvironmentYaml, Subdir};

fn peers() -> PathBuf {
    common::test_data().join("peer-fixtures")
}

/// Every environment file under `dir` (recursively), sorted.
fn all_yaml(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs_err::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('_') {
                    stack.push(path);
                }
            } else if name.ends_with(".yml") || name.ends_with(".yaml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The file reads without errors (warnings allowed).
fn assert_reads(path: &Path) {
    let checked = check_path(path).unwrap();
    assert!(
        !checked.report.has_errors(),
        "{}:\n{}",
        path.display(),
        checked.report
    );
}

fn names(path: &Path) -> Vec<String> {
    read_path(path)
        .unwrap()
        .spec
        .conda_dependencies()
        .map(|d| d.spec.name.to_string())
        .collect()
}

#[test]
fn conda_fixtures_give_condas_verdicts() {
    let support = peers().join("conda/tests/env/support");
    for file in [
        "simple.yml",
        "example/environment.yml",
        "example-yaml/environment.yaml",
        "foo/environment.yml",
        "saved-env/environment.yml",
        "dependent.yml",
        "small-executable.yml",
        "pip_argh.yml",
        "example/environment_with_pip.yml",
        "example/environment_pinned.yml",
        "example/environment_pinned_updated.yml",
        "env_with_dependencies.yml",
        "just_vars.yml",
    ] {
        assert_reads(&support.join(file));
    }

    // with-pip.yml: the pip sub-section is `foo`, `baz`, and `pip` is listed.
    let with_pip = read_path(support.join("with-pip.yml")).unwrap().spec;
    let pip: Vec<_> = with_pip.pip_entries().map(|e| e.source.as_str()).collect();
    assert_eq!(pip, ["foo", "baz"]);
    assert!(!with_pip.needs_implicit_pip());

    // add-pip.yml: conda adds `pip` first, and warns.
    let add_pip = check_path(support.join("add-pip.yml")).unwrap();
    assert!(
        add_pip
            .report
            .warnings()
            .any(|w| matches!(w.kind, ProblemKind::ImplicitPip))
    );
    let specs = add_pip.spec.unwrap().match_specs_for(None);
    let specs: Vec<String> = specs.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(specs, ["pip", "car"]);

    // advanced-pip: every requirements-file form is kept, typed.
    let advanced = read_path(support.join("advanced-pip/env_template.yml"))
        .unwrap()
        .spec;
    let kinds: Vec<&PipEntryKind> = advanced.pip_entries().map(|e| &e.kind).collect();
    assert!(matches!(kinds[0], PipEntryKind::Option { name, .. } if name == "--index-url"));
    assert!(matches!(kinds[1], PipEntryKind::Option { name, .. } if name == "--extra-index-url"));
    assert!(matches!(kinds[2], PipEntryKind::Requirement { .. }));
    assert!(matches!(kinds[3], PipEntryKind::Editable(target) if target.starts_with("git+")));
    assert!(
        matches!(kinds[4], PipEntryKind::Editable(target) if target == "./module_to_install_in_editable_mode")
    );
    assert!(
        matches!(kinds[5], PipEntryKind::RequirementsFile(file) if file == "another-project-requirements.txt")
    );

    // channels_with_envvars.yml: `${VAR}` expands from the environment; the spec keeps it.
    let envvars = read_path(support.join("channels_with_envvars.yml"))
        .unwrap()
        .spec;
    assert_eq!(
        envvars.channels[0].expand_vars(|name| (name == "CONDA_TOKEN").then(|| "tok".into())),
        "https://localhost/t/tok/stable"
    );
    assert_eq!(
        envvars.channels[0].source,
        "https://localhost/t/${CONDA_TOKEN}/stable"
    );
    assert_eq!(envvars.channels[3].kind, ChannelKind::Defaults);

    // A channel URL with a port before `::`.
    let host_port = read_path(support.join("example/environment_host_port.yml"))
        .unwrap()
        .spec;
    let flask = host_port.conda_dependencies().next().unwrap();
    assert_eq!(flask.spec.name.to_string(), "flask");
    assert!(
        flask
            .spec
            .channel
            .as_ref()
            .unwrap()
            .base_url
            .as_str()
            .contains("104.17.92.24")
    );

    // valid_keys.yml keeps all five keys.
    let valid = read_path(support.join("valid_keys.yml")).unwrap().spec;
    assert!(valid.name.is_some() && valid.prefix.is_some());
    assert!(!valid.channels.is_empty() && !valid.dependencies.is_empty());
    assert!(!valid.variables.is_empty());

    // invalid_keys.yml: unknown keys (`names`, `chanels`, ...) are warned about and dropped;
    // conda's `to_dict()` is left with its always-present `name` key, which is empty.
    let invalid = check_path(support.join("invalid_keys.yml")).unwrap();
    let unknown: Vec<_> = invalid
        .report
        .warnings()
        .filter_map(|w| match &w.kind {
            ProblemKind::UnknownKey { key } => Some((key.as_str(), w.help.clone().unwrap())),
            _ => None,
        })
        .collect();
    assert_eq!(unknown.len(), 4);
    assert!(unknown.contains(&("chanels", "did you mean `channels`?".into())));
    let spec = invalid.spec.unwrap();
    assert!(spec.name.is_none() && spec.channels.is_empty() && spec.dependencies.is_empty());

    // empty_deps.yml (null dependencies) and empty_env.yml (none): empty environments.
    assert!(
        read_path(support.join("empty_deps.yml"))
            .unwrap()
            .spec
            .dependencies
            .is_empty()
    );
    let empty = check_path(support.join("empty_env.yml")).unwrap();
    assert!(empty.spec.is_some());
    assert!(
        empty
            .report
            .warnings()
            .any(|w| matches!(w.kind, ProblemKind::NoDependencies))
    );

    // requirements.txt and explicit.txt are not environment files.
    for file in ["requirements.txt", "explicit.txt"] {
        let checked = check_path(support.join(file)).unwrap();
        assert!(checked.report.has_errors(), "{file} must be refused");
    }
    let explicit = check_path(support.join("explicit.txt")).unwrap();
    assert!(
        explicit
            .report
            .errors()
            .next()
            .unwrap()
            .help
            .as_deref()
            .unwrap()
            .contains("explicit")
    );
}

/// rattler's own parser is the reference for what rattler reads: wherever it reads a file, the
/// spec keel hands to rattler-based crates is the same.
#[test]
fn rattler_reads_every_fixture_as_keel_does() {
    let mut compared = 0;
    for path in all_yaml(&peers())
        .into_iter()
        .chain(all_yaml(&common::test_data().join("envs")))
    {
        let text = fs_err::read_to_string(&path).unwrap();
        let Ok(theirs) = EnvironmentYaml::from_yaml_str(&text) else {
            continue;
        };
        let Some(ours) = check_path(&path).unwrap().spec else {
            continue;
        };
        // rattler fails on the `[all]` extras conda ignores, so those files never get here.
        assert_eq!(ours.to_environment_yaml(), theirs, "{}", path.display());
        compared += 1;
    }
    let rattler_fixtures = all_yaml(&peers().join("rattler"));
    assert_eq!(rattler_fixtures.len(), 5);
    for path in &rattler_fixtures {
        assert!(read_path(path).is_ok(), "{}", path.display());
    }
    assert!(compared > 80, "only {compared} files compared");
}

/// pixi's snapshots list the MatchSpecs it reads from each file; keel reads the same names in
/// the same order.
#[test]
fn pixi_fixtures_read_as_pixi_reads_them() {
    let dir = peers().join("pixi/crates/pixi_utils");
    let files = all_yaml(&dir.join("tests/environment_yamls"));
    assert_eq!(files.len(), 5);
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy();
        let snapshot = fs_err::read_to_string(dir.join(format!(
            "src/snapshots/pixi_utils__conda_environment_file__tests__test_import_from_env_yaml.{file}.snap"
        )))
        .unwrap();
        // The first list in the Debug dump holds the MatchSpecs, the second the pip requirements.
        let mut lists = snapshot.split("\n        [").skip(1);
        let conda_names: Vec<&str> = lists
            .next()
            .unwrap()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("source: \"")?.strip_suffix("\","))
            .collect();
        let pip_names: Vec<String> = lists
            .next()
            .unwrap()
            .split("name: PackageName(")
            .skip(1)
            .map(|chunk| chunk.split('"').nth(1).unwrap().to_owned())
            .collect();
        let spec = read_path(&path).unwrap().spec;
        assert_eq!(names(&path), conda_names, "{file}");
        let ours: Vec<String> = spec
            .pip_entries()
            .filter_map(|e| match &e.kind {
                PipEntryKind::Requirement { requirement, .. } => Some(requirement.name.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(ours, pip_names, "{file}");
    }
}

#[test]
fn mamba_fixtures_give_mambas_verdicts() {
    let dir = peers().join("mamba/libmamba/tests/data/env_file");
    let env_1 = read_path(dir.join("env_1.yaml")).unwrap().spec;
    assert_eq!(env_1.name.as_deref(), Some("env_1"));
    let channels: Vec<_> = env_1.channels.iter().map(|c| c.source.as_str()).collect();
    assert_eq!(channels, ["conda-forge", "bioconda"]);
    assert_eq!(names(&dir.join("env_1.yaml")), ["test1", "test2", "test3"]);

    // env_2: `sel(...)` keys pick packages per platform.
    let env_2 = read_path(dir.join("env_2.yaml")).unwrap().spec;
    let on = |platform: Subdir| -> Vec<String> {
        env_2
            .match_specs_for(Some(platform))
            .iter()
            .map(|s| s.name.to_string())
            .collect()
    };
    assert_eq!(
        on(Subdir::Linux64),
        ["test1-unix", "test1-linux", "test2-linux", "test4"]
    );
    assert_eq!(on(Subdir::OsxArm64), ["test1-unix", "test1-osx", "test4"]);
    assert_eq!(on(Subdir::Win64), ["test1-win", "test4"]);

    // env_3 / env_4: `pip` added implicitly, pip sub-section kept.
    for file in ["env_3.yaml", "env_4.yaml"] {
        let spec = read_path(dir.join(file)).unwrap().spec;
        let specs: Vec<String> = spec
            .match_specs_for(None)
            .iter()
            .map(|s| s.name.to_string())
            .collect();
        assert!(specs.contains(&"pip".to_owned()), "{file}");
        let pip: Vec<_> = spec.pip_entries().map(|e| e.source.as_str()).collect();
        assert_eq!(pip, ["pytest", "numpy"], "{file}");
    }

    // micromamba's files all read; extra white space inside specs is fine.
    for path in all_yaml(&peers().join("mamba/micromamba/tests")) {
        assert_reads(&path);
    }
    let spaces = read_path(peers().join("mamba/micromamba/tests/env-extra-white-space.yaml"))
        .unwrap()
        .spec;
    let scipy = spaces
        .conda_dependencies()
        .find(|d| d.spec.name.to_string() == "scipy")
        .unwrap();
    assert_eq!(
        scipy.spec.version.as_ref().unwrap().to_string(),
        ">=1.5.0,<2.0.0"
    );
}

#[test]
fn conda_lock_fixtures_give_conda_locks_verdicts() {
    let dir = peers().join("conda-lock/tests");
    for path in all_yaml(&dir) {
        let name = path.file_name().unwrap().to_string_lossy();
        if name == "meta.yaml" {
            // A conda-build recipe with Jinja, not an environment file.
            assert!(check_path(&path).unwrap().report.has_errors());
            continue;
        }
        assert_reads(&path);
    }

    // `nodefaults` first; files without a final newline.
    let nodefaults = read_path(dir.join("test-env-nodefaults/environment.yml"))
        .unwrap()
        .spec;
    assert_eq!(nodefaults.channels[0].kind, ChannelKind::NoDefaults);
    assert_eq!(nodefaults.channels[1].source, "conda-forge");

    // Comment selectors filter per platform; `platforms:` is read.
    let filter = read_path(dir.join("test-env-filter-platform/environment.yml"))
        .unwrap()
        .spec;
    assert_eq!(
        filter.platforms,
        [Subdir::OsxArm64, Subdir::Osx64, Subdir::Linux64]
    );
    let on = |platform| -> Vec<String> {
        filter
            .match_specs_for(Some(platform))
            .iter()
            .map(|s| s.name.to_string())
            .collect()
    };
    assert_eq!(on(Subdir::OsxArm64), ["python", "clang_osx-arm64"]);
    assert_eq!(on(Subdir::Osx64), ["python", "clang_osx-64"]);
    assert_eq!(on(Subdir::Linux64), ["python", "gcc_linux-64"]);

    // A selector on a pip line.
    let pip_selector = read_path(dir.join("test-pip-with-platform-selector/environment.yml"))
        .unwrap()
        .spec;
    let psutil = pip_selector.pip_entries().next().unwrap();
    assert!(psutil.selector.as_ref().unwrap().matches(Subdir::Linux64));
    assert!(!psutil.selector.as_ref().unwrap().matches(Subdir::OsxArm64));

    // `category:` is kept.
    let categories = all_yaml(&dir.join("test-multiple-categories"))
        .into_iter()
        .filter_map(|p| read_path(p).ok()?.spec.category)
        .collect::<Vec<_>>();
    assert!(!categories.is_empty());

    // Hash-checking pip lines keep their `--hash` options.
    let hashes = read_path(dir.join("test-pip-hash-checking/environment.yml"))
        .unwrap()
        .spec;
    assert!(hashes.pip_entries().any(|e| matches!(
        &e.kind,
        PipEntryKind::Requirement { options, .. } if options.iter().any(|o| o.starts_with("--hash="))
    )));

    // Full-URL pip requirements.
    let full_url = read_path(dir.join("test-pip-full-url/environment.yml"))
        .unwrap()
        .spec;
    assert!(
        full_url
            .pip_entries()
            .all(|e| !matches!(e.kind, PipEntryKind::Invalid { .. }))
    );
    assert!(
        full_url
            .dependencies
            .iter()
            .any(|d| matches!(d, DependencyEntry::Pip(_)))
    );

    // No warning of any file is an error in disguise.
    for path in all_yaml(&dir) {
        let checked = check_path(&path).unwrap();
        for warning in checked.report.warnings() {
            assert_eq!(warning.severity, Severity::Warning);
        }
    }
}
