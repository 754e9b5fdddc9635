//! What real files contain (CRLF, a byte-order mark, tabs, comments, `---`, empty sections,
//! `conda env export` output) and the errors a person gets for what conda refuses. Inputs are
//! the files in `test-data/`.

use std::path::Path;

use keel_spec::{ChannelKind, DependencyEntry, PipEntryKind, check_bytes, read_path};
use rattler_conda_types::Subdir;

/// Checks a test-data file under its bare name, so that snapshots do not hold temp paths.
fn check(path: &Path) -> keel_spec::Checked {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    check_bytes(&fs_err::read(path).unwrap(), name).unwrap()
}

#[test]
fn valid_files_parse() {
    insta::glob!("../test-data/valid", "*.yml", |path| {
        let checked = check(path);
        assert!(!checked.report.has_errors(), "{}", checked.report);
        insta::assert_snapshot!(format!(
            "{}\n--- warnings ---\n{}",
            checked.spec.unwrap().to_yaml(),
            checked.report
        ));
    });
}

#[test]
fn invalid_files_report_each_error_in_place() {
    insta::glob!("../test-data/invalid", "*.yml", |path| {
        let checked = check(path);
        assert!(
            checked.report.has_errors(),
            "{} should fail",
            path.display()
        );
        assert!(checked.spec.is_none());
        insta::assert_snapshot!(checked.report.to_string());
    });
}

fn test_data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("test-data")
        .join(name)
}

#[test]
fn crlf_bom_and_tabs_read_like_plain_files() {
    let crlf = read_path(test_data("valid/crlf.yml")).unwrap().spec;
    assert_eq!(crlf.name.as_deref(), Some("crlf"));
    assert_eq!(
        crlf.pip_entries().next().unwrap().source,
        "requests==2.31.0"
    );
    let bom = read_path(test_data("valid/bom.yml")).unwrap().spec;
    assert_eq!(bom.name.as_deref(), Some("bom"));
    // Tabs inside quotes and comments are fine everywhere; a tab YAML allows as a separator
    // reads, with a warning that conda's reader refuses it.
    let tabs = read_path(test_data("valid/tabs.yml")).unwrap();
    assert_eq!(tabs.spec.name.as_deref(), Some("tab\tinside quotes"));
    let names: Vec<_> = tabs
        .spec
        .conda_dependencies()
        .map(|d| d.spec.to_string())
        .collect();
    assert_eq!(names, ["python 3.11.*", "numpy"]);
    let lines: Vec<_> = tabs
        .report
        .warnings()
        .map(|w| w.location.unwrap().line)
        .collect();
    assert_eq!(lines, [1, 4]);
}

#[test]
fn utf16_files_read_as_conda_reads_them() {
    let text = "name: wide\ndependencies:\n  - python=3.10\n";
    let bytes: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    let spec = check_bytes(&bytes, "wide.yml").unwrap().spec.unwrap();
    assert_eq!(spec.name.as_deref(), Some("wide"));
    assert!(matches!(
        check_bytes(&[0xC3, 0x28, 0x00], "binary.yml"),
        Err(keel_spec::SpecError::Encoding { .. })
    ));
}

#[test]
fn every_form_is_typed() {
    let spec = read_path(test_data("valid/every-spec-form.yml"))
        .unwrap()
        .spec;
    let kinds: Vec<_> = spec.channels.iter().map(|c| &c.kind).collect();
    assert!(matches!(kinds[0], ChannelKind::Name(n) if n == "conda-forge"));
    assert!(matches!(kinds[1], ChannelKind::Name(n) if n == "conda-forge/label/dev"));
    assert!(matches!(kinds[2], ChannelKind::Url(u) if u.starts_with("file:///")));
    assert!(matches!(kinds[3], ChannelKind::Path(_)));
    assert!(matches!(kinds[4], ChannelKind::Url(_)));
    assert_eq!(kinds[5], &ChannelKind::NoDefaults);

    let deps: Vec<_> = spec.conda_dependencies().collect();
    let torch = &deps[0].spec;
    assert_eq!(torch.channel.as_ref().unwrap().name(), "pytorch");
    assert_eq!(torch.version.as_ref().unwrap().to_string(), "==2.0.1");
    assert_eq!(
        deps[6].spec.build.as_ref().unwrap().to_string(),
        "h4ba93d1_12"
    );
    assert_eq!(
        deps[7].spec.build.as_ref().unwrap().to_string(),
        "py310_cu118"
    );
    assert_eq!(deps[8].spec.version.as_ref().unwrap().to_string(), ">=3.11");
    let nvcc = deps[9];
    assert!(nvcc.selector.as_ref().unwrap().matches(Subdir::Linux64));
    assert!(
        !spec
            .match_specs_for(Some(Subdir::OsxArm64))
            .iter()
            .any(|s| s.name.to_string() == "cuda-nvcc")
    );

    let pip: Vec<_> = spec.pip_entries().map(|e| &e.kind).collect();
    assert!(matches!(pip[0], PipEntryKind::Requirement { .. }));
    assert!(
        matches!(pip[1], PipEntryKind::Requirement { requirement, .. } if requirement.version_or_url.is_some())
    );
    assert!(
        matches!(pip[2], PipEntryKind::Requirement { requirement, .. } if !requirement.extras.is_empty())
    );
    assert_eq!(pip[3], &PipEntryKind::Editable(".".into()));
    assert!(matches!(pip[4], PipEntryKind::Option { name, .. } if name == "--extra-index-url"));
    assert!(matches!(pip[5], PipEntryKind::Option { name, .. } if name == "-f"));
    assert!(matches!(pip[6], PipEntryKind::Url(_)));
    assert!(matches!(pip[7], PipEntryKind::RequirementsFile(_)));

    assert_eq!(spec.variables["CUDA_VISIBLE_DEVICES"], "0");
    assert_eq!(spec.variables["ENABLE"], "yes");
    assert_eq!(spec.variables["PATH_EXTRA"], "");
    assert_eq!(spec.platforms, [Subdir::Linux64, Subdir::OsxArm64]);
    assert_eq!(spec.category.as_deref(), Some("main"));
    assert!(matches!(
        spec.dependencies.last(),
        Some(DependencyEntry::Pip(_))
    ));
}
