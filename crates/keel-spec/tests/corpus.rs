//! The real environment files in `test-data/envs` (all must parse) and `test-data/envs-bad`
//! (each must give the error or warning its SOURCES.md names).

mod common;

use keel_spec::{Severity, check_path};
use serde::Serialize;

#[derive(Serialize)]
struct Snapshot<'a> {
    spec: &'a keel_spec::EnvironmentSpec,
    warnings: Vec<String>,
}

/// Every file in `envs/` parses without errors; the typed result is snapshotted.
#[test]
fn every_real_environment_parses() {
    let dir = common::test_data().join("envs");
    let files = common::yaml_files(&dir);
    for path in &files {
        // One snapshot per file, named after it (`corpus__every_real_environment_parses@FILE`).
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_suffix(path.file_name().unwrap().to_string_lossy());
        let _bound = settings.bind_to_scope();
        let checked = check_path(path).unwrap();
        assert!(
            !checked.report.has_errors(),
            "{} should parse:\n{}",
            path.display(),
            checked.report
        );
        let spec = checked.spec.as_ref().unwrap();
        let warnings = checked
            .report
            .warnings()
            .map(|w| format!("{}: {}", w.location.map_or(0, |l| l.line), w.message()))
            .collect();
        insta::assert_yaml_snapshot!("every_real_environment_parses", Snapshot { spec, warnings });
    }
    assert_eq!(files.len(), 54);
}

/// What `envs-bad/SOURCES.md` expects of each file: the severity, the line and a piece of the
/// message.
#[test]
fn every_known_bad_file_gives_its_expected_problem() {
    let dir = common::test_data().join("envs-bad");
    let expected: &[(&str, Severity, usize, &str)] = &[
        // A TAB at line 39, column 1: YAML cannot scan it.
        (
            "geoschem__gcpy__docs__environment.yml",
            Severity::Error,
            39,
            "invalid YAML",
        ),
        // `pip:` at the indentation of the list items: a parse error naming the line.
        (
            "conda-issue-9161__readme-example-misindented-pip.yml",
            Severity::Error,
            10,
            "invalid YAML",
        ),
        // A pip line with a single `=`: the file reads, pip would refuse the line.
        (
            "conda-issue-8879__pip-single-equals.yml",
            Severity::Warning,
            19,
            "pip will refuse `jupyterlab=1.0.0`",
        ),
        // A pip section without `pip`: conda warns and adds it.
        (
            "conda-issue-4985__pip-only-no-pip-dep.yml",
            Severity::Warning,
            3,
            "needs `pip`",
        ),
        // `pip:` at the top level: conda ignores it (unknown key).
        (
            "3dgeo-heidelberg__vls-4d__env.yml",
            Severity::Warning,
            9,
            "top-level section",
        ),
        // Template placeholders are not specs.
        (
            "dmlc__dgl__script__dgl_dev.yml.template.yml",
            Severity::Error,
            7,
            "invalid conda spec `python=__PYTHON_VERSION__`",
        ),
        (
            "pydata__xarray__doc__environment_template.yml",
            Severity::Error,
            7,
            "invalid package name '{{'",
        ),
    ];
    for (file, severity, line, message) in expected {
        let checked = check_path(dir.join(file)).unwrap();
        let found = checked.report.problems.iter().any(|p| {
            p.severity == *severity
                && p.location.is_some_and(|l| l.line == *line)
                && p.message().contains(message)
        });
        assert!(
            found,
            "{file}: expected {severity:?} on line {line} containing {message:?}, got:\n{}",
            checked.report
        );
    }

    // The osx-arm64 build strings parse (the solve, not the parse, fails on other platforms).
    let mosaik = check_path(dir.join("anthbapt__MOSAIK__env__cosmx.yml")).unwrap();
    let spec = mosaik.spec.expect("MOSAIK parses");
    let bzip2 = spec
        .conda_dependencies()
        .find(|d| d.spec.name.to_string() == "bzip2")
        .unwrap();
    assert_eq!(bzip2.spec.build.as_ref().unwrap().to_string(), "h80987f9_6");
    assert_eq!(spec.prefix.as_deref(), Some("/opt/anaconda3/envs/cosmx"));
    assert!(spec.pip_entries().count() > 200);

    // The tab: the caret points at the tab itself (column 1), and the help says what to do.
    let gcpy = check_path(dir.join("geoschem__gcpy__docs__environment.yml")).unwrap();
    let tab = gcpy.report.errors().next().unwrap();
    assert_eq!(tab.location.unwrap().column, 1);
    assert!(tab.help.as_deref().unwrap().contains("tab"));

    // Every file in the folder is covered above.
    assert_eq!(common::yaml_files(&dir).len(), expected.len() + 1);
}
