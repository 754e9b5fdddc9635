//! The rules by which keel reads an environment file as conda does (issue #14), one test per
//! rule over the file in `test-data/spec-rules/` named after it.
//!
//! Each rule was checked against conda's own code at conda/conda commit
//! 0f64223fb8da4328457a69fe6483959dbb783152 (`conda/env/env.py`, `conda/models/match_spec.py`,
//! `conda/models/version.py`, `conda/common/serialize/yaml.py`), and each file was read by that
//! conda (`conda.env.env.from_file`) to confirm what it does with it; pip's path rule is
//! `_looks_like_path` in pip's `src/pip/_internal/req/constructors.py` (pypa/pip at 01702e9),
//! conda-lock's selectors are `sel_pat` in `conda_lock/src_parser/selectors.py` (conda/conda-lock
//! at 1d72d22).

mod common;

use std::path::PathBuf;

use keel_spec::{
    Checked, DependencyEntry, PipEntryKind, Problem, ProblemKind, check_path, read_path,
};
use rattler_conda_types::Subdir;

fn rule_file(name: &str) -> PathBuf {
    common::test_data().join("spec-rules").join(name)
}

fn check(name: &str) -> Checked {
    check_path(rule_file(name)).unwrap()
}

fn problems(checked: &Checked, wanted: impl Fn(&ProblemKind) -> bool) -> Vec<&Problem> {
    checked
        .report
        .problems
        .iter()
        .filter(|p| wanted(&p.kind))
        .collect()
}

/// Rule 1: a dependency that YAML folded from several lines, the later ones starting with
/// `- `, is the block list's indentation mistake. conda's MatchSpec reads
/// `python>=3.11 - openmpi - mypy` as python, version `>=3.11-openmpi-`, build `mypy` (so
/// `conda env create` fails only at the solve, and installs neither openmpi nor mypy); keel
/// refuses it at once, at the line where the string starts, saying what happened.
#[test]
fn multiline_scalar() {
    let checked = check("multiline-scalar.yml");
    let errors: Vec<_> = checked.report.errors().collect();
    assert_eq!(errors.len(), 1, "{}", checked.report);
    let error = errors[0];
    assert!(matches!(
        &error.kind,
        ProblemKind::SpansLines { spec, first_line: 7, last_line: 9 }
            if spec == "python>=3.11 - openmpi - mypy"
    ));
    assert_eq!(error.location.unwrap().line, 7);
    let help = error.help.as_deref().unwrap();
    assert!(help.contains("indentation mistake"), "{help}");
    assert!(help.contains("line 8"), "{help}");
    assert!(
        help.contains("conda reads it as one package spec"),
        "{help}"
    );

    // Where conda's MatchSpec refuses the joined string too, keel says so with conda's reason.
    let refused = check("multiline-scalar-conda-refuses.yml");
    let error = refused.report.errors().next().unwrap();
    assert!(matches!(
        error.kind,
        ProblemKind::SpansLines { first_line: 4, .. }
    ));
    let help = error.help.as_deref().unwrap();
    assert!(
        help.contains("Invalid version '3.11-openmpi-numpy>=1.26': invalid character(s)"),
        "{help}"
    );
    assert!(refused.spec.is_none());
}

/// Rule 2: conda cuts its bracket section out of the string (`_BRACKETS_RE`, the last `[`
/// before the last `]`) and keeps only the `key=value` pairs in it, so a bracket of words is
/// dropped wherever it stands; keel reads the rest and warns, as for `tiled[all]`.
#[test]
fn bracket_then_version() {
    let checked = check("bracket-then-version.yml");
    assert!(!checked.report.has_errors(), "{}", checked.report);
    let spec = checked.spec.as_ref().unwrap();
    let deps: Vec<_> = spec.conda_dependencies().collect();
    let version = |i: usize| deps[i].spec.version.as_ref().map(ToString::to_string);
    assert_eq!(deps[0].spec.name.to_string(), "nbconvert");
    assert_eq!(version(0).as_deref(), Some("!=6.0.0,!=7.3.0"));
    assert_eq!(deps[1].spec.name.to_string(), "tiled");
    assert_eq!(version(1), None);
    assert_eq!(deps[2].spec.name.to_string(), "xarray");
    assert_eq!(version(2).as_deref(), Some(">=2023.1"));
    // key=value brackets mean what they say.
    assert_eq!(version(3).as_deref(), Some(">=2023.1"));
    assert_eq!(deps[4].spec.build.as_ref().unwrap().to_string(), "py*");
    // Words and pairs together: conda keeps the pairs only.
    assert_eq!(deps[5].spec.name.to_string(), "sphinx");
    assert_eq!(version(5).as_deref(), Some(">=7"));

    let ignored: Vec<(String, usize)> =
        problems(&checked, |k| matches!(k, ProblemKind::IgnoredExtras { .. }))
            .into_iter()
            .map(|p| match &p.kind {
                ProblemKind::IgnoredExtras { extras, .. } => {
                    (extras.clone(), p.location.unwrap().line)
                }
                _ => unreachable!(),
            })
            .collect();
    assert_eq!(
        ignored,
        [
            ("execute".to_owned(), 3),
            ("all".to_owned(), 4),
            ("io,parallel".to_owned(), 5),
            ("docs".to_owned(), 8)
        ]
    );
    // The help names what to write, and the pip form that gets the extras.
    let nbconvert = &checked.report.problems[0];
    assert_eq!(
        nbconvert.help.as_deref(),
        Some(
            "write `nbconvert!=6.0.0,!=7.3.0` (or list `nbconvert[execute]` under `- pip:` to \
             get the extras)"
        )
    );
}

/// Rule 3: a comment is a platform selector only when its bracket holds a selector
/// expression (`# [linux64]`, `# [not linux]`, `# [win and py>=38]`); other brackets in a
/// comment (`sphinx-gallery[parallel]`, `[1]`) are comment text, so the line applies on every
/// platform (conda-lock would take them as selectors for no platform and drop the lines).
#[test]
fn comment_brackets() {
    let checked = check("comment-brackets.yml");
    assert!(!checked.report.has_errors(), "{}", checked.report);
    let spec = checked.spec.as_ref().unwrap();
    let selectors: Vec<Option<String>> = spec
        .conda_dependencies()
        .map(|d| d.selector.as_ref().map(|s| s.condition.clone()))
        .collect();
    assert_eq!(
        selectors,
        [
            None,
            None,
            Some("linux64".to_owned()),
            Some("not linux".to_owned()),
            Some("win and py>=38".to_owned())
        ]
    );
    let names = |platform| {
        spec.match_specs_for(Some(platform))
            .iter()
            .map(|s| s.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(Subdir::Linux64),
        ["sphinx-gallery", "numpy", "cudatoolkit"]
    );
    assert_eq!(
        names(Subdir::OsxArm64),
        ["sphinx-gallery", "numpy", "appnope"]
    );
    // `py>=38` cannot be decided when locking: like conda-lock, the line applies nowhere,
    // and keel says so.
    assert_eq!(names(Subdir::Win64), ["sphinx-gallery", "numpy", "appnope"]);
    let undecided = problems(&checked, |k| {
        matches!(k, ProblemKind::UndecidedSelector { .. })
    });
    assert_eq!(undecided.len(), 1);
    assert_eq!(undecided[0].location.unwrap().line, 7);
    assert!(undecided[0].message().contains("`py>=38`"));
    // No "unknown selector" for the comments.
    assert!(
        problems(&checked, |k| matches!(
            k,
            ProblemKind::UnknownSelector { .. }
        ))
        .is_empty()
    );
}

/// Rule 4: conda reads the `dependencies` list into one mapping (`Dependencies.parse` in
/// `conda/env/env.py`: `self.update(line)` for each sub-section), so the last `- pip:` item
/// replaces the earlier ones and nothing of those is installed. keel warns at each earlier
/// one, naming the one conda installs, and what keel hands on (`pip_entries`, which the lock
/// and the install read) is the last section only; writing the file back keeps both.
#[test]
fn many_pip_sections() {
    let checked = check("many-pip-sections.yml");
    assert!(!checked.report.has_errors(), "{}", checked.report);
    let replaced = problems(&checked, |k| {
        matches!(k, ProblemKind::ReplacedPipSection { .. })
    });
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0].location.unwrap().line, 5);
    assert!(
        replaced[0].message().contains("(line 8)"),
        "{}",
        replaced[0].message()
    );
    let spec = checked.spec.as_ref().unwrap();
    let pip: Vec<&str> = spec.pip_entries().map(|e| e.source.as_str()).collect();
    assert_eq!(pip, ["rich==13.7.0"]);
    assert_eq!(spec.pip_section().unwrap().location.unwrap().line, 8);
    let yaml = spec.to_yaml();
    assert!(
        yaml.contains("requests==2.31.0") && yaml.contains("rich==13.7.0"),
        "{yaml}"
    );
    let sections = spec
        .dependencies
        .iter()
        .filter(|d| matches!(d, DependencyEntry::Pip(_)))
        .count();
    assert_eq!(sections, 2);
}

/// Rule 5: pip reads a line that is no requirement as a local path when it has a `/` or starts
/// with `.` (`_looks_like_path`), relative to the folder it runs in; conda runs it in the
/// environment file's folder. keel reads such a line as a path and warns only when it is not
/// there.
#[test]
fn pip_relative_path() {
    let checked = check("pip-relative-path.yml");
    assert!(!checked.report.has_errors(), "{}", checked.report);
    let spec = checked.spec.as_ref().unwrap();
    let kinds: Vec<&PipEntryKind> = spec.pip_entries().map(|e| &e.kind).collect();
    assert_eq!(
        kinds[0],
        &PipEntryKind::Path("submodules/simple-knn".into())
    );
    assert_eq!(kinds[1], &PipEntryKind::Path("ext/pytorch3d".into()));
    assert_eq!(
        kinds[2],
        &PipEntryKind::Editable("./submodules/simple-knn".into())
    );
    let missing = problems(&checked, |k| {
        matches!(k, ProblemKind::MissingPipPath { .. })
    });
    assert_eq!(missing.len(), 1, "{}", checked.report);
    assert_eq!(missing[0].location.unwrap().line, 8);
    assert!(missing[0].message().contains("`ext/pytorch3d`"));
    // No "pip will refuse" for the path lines.
    assert!(problems(&checked, |k| matches!(k, ProblemKind::PipLine { .. })).is_empty());

    // Text not read from a file has no folder to look in: no warning.
    let text = fs_err::read_to_string(rule_file("pip-relative-path.yml")).unwrap();
    let in_memory = keel_spec::check_str(&text, "elsewhere/environment.yml");
    assert!(
        problems(&in_memory, |k| matches!(
            k,
            ProblemKind::MissingPipPath { .. }
        ))
        .is_empty()
    );
}

/// Rule 6: conda-lock's `platforms:` and `category:` and its `# [linux64]` selectors (and
/// mamba's `sel(osx):`) are read by keel as conda-lock reads them; conda drops the keys,
/// installs a `# [...]` line on every platform and nothing from a `sel(...)` item. keel
/// says so, once per key and once for the selectors.
#[test]
fn conda_lock_keys() {
    let checked = check("conda-lock-keys.yml");
    assert!(!checked.report.has_errors(), "{}", checked.report);
    let keys: Vec<(String, usize)> =
        problems(&checked, |k| matches!(k, ProblemKind::CondaLockKey { .. }))
            .into_iter()
            .map(|p| match &p.kind {
                ProblemKind::CondaLockKey { key } => (key.clone(), p.location.unwrap().line),
                _ => unreachable!(),
            })
            .collect();
    assert_eq!(
        keys,
        [("platforms".to_owned(), 4), ("category".to_owned(), 7)]
    );
    let selectors = problems(&checked, |k| {
        matches!(k, ProblemKind::CondaIgnoresSelectors { .. })
    });
    assert_eq!(selectors.len(), 1);
    assert!(matches!(
        selectors[0].kind,
        ProblemKind::CondaIgnoresSelectors {
            comment: 1,
            mamba: 1
        }
    ));
    assert_eq!(selectors[0].location.unwrap().line, 10);
    let message = selectors[0].message();
    assert!(message.contains("on every platform"), "{message}");
    assert!(
        message.contains("installs nothing from the `sel(...):` line"),
        "{message}"
    );
    let spec = checked.spec.as_ref().unwrap();
    assert_eq!(spec.platforms, [Subdir::Linux64, Subdir::OsxArm64]);
    assert_eq!(spec.category.as_deref(), Some("main"));
}

/// Rule 7: rattler's `Version` drops leading zeros (`2022.07.19` prints as `2022.7.19`); what
/// keel writes back and shows keeps the version as written.
#[test]
fn version_text() {
    let parsed = read_path(rule_file("version-text.yml")).unwrap();
    let spec = &parsed.spec;
    let yaml = spec.to_yaml();
    for written in [
        "ca-certificates=2022.07.19",
        "font-ttf-inconsolata=3.000=h77eed37_0",
        "tzdata>=2022.07.19,<2023.01",
    ] {
        assert!(yaml.contains(written), "{yaml}");
    }
    let shown: Vec<String> = spec
        .conda_dependencies()
        .map(|d| d.display_spec())
        .collect();
    assert_eq!(
        shown,
        [
            "ca-certificates 2022.07.19.*",
            "font-ttf-inconsolata ==3.000 h77eed37_0",
            "tzdata >=2022.07.19,<2023.01",
        ]
    );
    let json = serde_json::to_value(spec).unwrap();
    assert_eq!(json["dependencies"][1]["spec"]["version"], "==3.000");
    // What is shown means the same spec.
    for dependency in spec.conda_dependencies() {
        let reparsed = rattler_conda_types::MatchSpec::from_str(
            &dependency.display_spec(),
            rattler_conda_types::ParseStrictness::Lenient,
        )
        .unwrap();
        assert_eq!(reparsed, dependency.spec);
    }
}

/// Rule 8: a tab YAML cannot scan is shown where it is (line and column of the tab), not at
/// the scalar the scanner was reading before it; conda's ruamel says line 4, column 1.
#[test]
fn tab_error() {
    let checked = check("tab-error.yml");
    let error = checked.report.errors().next().unwrap();
    let location = error.location.unwrap();
    assert_eq!((location.line, location.column), (4, 1));
    assert_eq!(
        &checked.report.text[location.offset..location.offset + 1],
        "\t"
    );
    assert!(error.help.as_deref().unwrap().contains("tab"));

    // The same rule for a tab after `:` and after indentation spaces.
    for (text, line, column) in [
        ("name:\tx\ndependencies: []\n", 1, 6),
        ("dependencies:\n    - numpy\n  \t- scipy\n", 3, 3),
        ("dependencies:\n  -\t- numpy\n", 2, 4),
    ] {
        let checked = keel_spec::check_str(text, "t.yml");
        let location = checked.report.errors().next().unwrap().location.unwrap();
        assert_eq!((location.line, location.column), (line, column), "{text:?}");
    }
}

/// Rule 1, in general: where rattler reads a string otherwise than conda's MatchSpec, or
/// refuses it, keel reads it as conda does. conda reads `numpy==1.26.*` as `1.26.*`
/// (`_sanitize_version_str` drops the `==`; rattler: exactly `1.26`), `scipy<2.*` as `<2`
/// (rattler refuses it), and takes a bracket before the version (`pyarrow[build=py*]>=14`).
#[test]
fn match_spec_as_conda() {
    let checked = check("match-spec-as-conda.yml");
    assert!(!checked.report.has_errors(), "{}", checked.report);
    assert_eq!(checked.report.problems.len(), 0, "{}", checked.report);
    let spec = checked.spec.as_ref().unwrap();
    let read: Vec<String> = spec
        .conda_dependencies()
        .map(|d| d.spec.to_string())
        .collect();
    assert_eq!(read, ["numpy 1.26.*", "scipy <2", "pyarrow >=14 py*"]);
}

/// The folder's README names every rule file.
#[test]
fn every_rule_file_is_described() {
    let dir = common::test_data().join("spec-rules");
    let readme = fs_err::read_to_string(dir.join("README.md")).unwrap();
    for path in common::yaml_files(&dir) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            readme.contains(&format!("`{name}`")),
            "README.md does not describe {name}"
        );
    }
}
