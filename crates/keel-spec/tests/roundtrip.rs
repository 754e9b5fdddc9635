//! Writing a spec and reading it back gives the same spec, and no input makes the reader panic.

mod common;

use indexmap::IndexMap;
use keel_spec::{
    ChannelEntry, CondaDependency, DependencyEntry, EnvironmentSpec, OtherSection, PipEntry,
    PipSection, Selector, SelectorStyle, check_bytes, check_path, check_str, parse_str,
};
use proptest::prelude::*;
use rattler_conda_types::Subdir;

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_-]{0,12}",
        Just("yes".to_owned()),
        Just("1.10".to_owned()),
        Just("null".to_owned()),
        Just("my env: #1".to_owned()),
        Just("'quoted' \"name\"".to_owned()),
        Just("- dash".to_owned()),
        Just("ünïcödé".to_owned()),
    ]
}

fn channel() -> impl Strategy<Value = ChannelEntry> {
    prop_oneof![
        Just("conda-forge"),
        Just("nodefaults"),
        Just("defaults"),
        Just("pytorch"),
        Just("conda-forge/label/dev"),
        Just("file:///srv/channel"),
        Just("./local-channel"),
        Just("https://conda.example.com/t/${TOKEN}/main"),
        Just("https://104.17.92.24:443/main"),
    ]
    .prop_map(ChannelEntry::new)
}

fn version() -> impl Strategy<Value = String> {
    (
        "[0-9]{1,2}",
        "[0-9]{1,2}",
        proptest::option::of("[0-9]{1,2}"),
    )
        .prop_map(|(a, b, c)| match c {
            Some(c) => format!("{a}.{b}.{c}"),
            None => format!("{a}.{b}"),
        })
}

/// Conda specs in every form conda accepts.
fn conda_source() -> impl Strategy<Value = String> {
    // CEP 26 names, as conda's MatchSpec checks them: no two separators in a row.
    let package = "[a-z][a-z0-9]{0,4}([_-][a-z0-9]{1,4}){0,2}";
    prop_oneof![
        package.prop_map(|n| n),
        (package, version()).prop_map(|(n, v)| format!("{n}={v}")),
        (package, version()).prop_map(|(n, v)| format!("{n}=={v}")),
        (package, version(), version()).prop_map(|(n, a, b)| format!("{n}>={a},<{b}")),
        (package, version(), version()).prop_map(|(n, a, b)| format!("{n} {a}|{b}")),
        (package, version()).prop_map(|(n, v)| format!("{n}={v}.*")),
        (package, version(), "[a-z0-9_]{1,8}").prop_map(|(n, v, b)| format!("{n}={v}={b}")),
        (package, version(), "[a-z0-9_]{1,8}").prop_map(|(n, v, b)| format!("{n} {v} {b}")),
        (package, version()).prop_map(|(n, v)| format!("conda-forge::{n}>={v}")),
        (package, version()).prop_map(|(n, v)| format!("{n}[version='>={v}']")),
        package.prop_map(|n| format!("{n} *")),
        (package, version()).prop_map(|(n, v)| format!("{n}={v}  # pinned")),
    ]
}

fn selector() -> impl Strategy<Value = Option<Selector>> {
    proptest::option::weighted(
        0.2,
        (
            prop_oneof![Just(SelectorStyle::Comment), Just(SelectorStyle::Mamba)],
            prop_oneof![Just("linux64"), Just("osx"), Just("win"), Just("unix")],
        )
            .prop_map(|(style, condition)| Selector {
                style,
                condition: condition.to_owned(),
            }),
    )
}

fn pip_source() -> impl Strategy<Value = String> {
    let package = "[a-z][a-z0-9_-]{0,10}";
    prop_oneof![
        (package, version()).prop_map(|(n, v)| format!("{n}=={v}")),
        (package, version()).prop_map(|(n, v)| format!("{n}[extra]>={v}; python_version >= '3.8'")),
        package.prop_map(|n| format!("{n} @ git+https://github.com/org/{n}.git@v1")),
        Just("-e .".to_owned()),
        Just("--extra-index-url https://download.pytorch.org/whl/cu118".to_owned()),
        Just("-f ./wheels".to_owned()),
        Just("-r requirements.txt".to_owned()),
        Just("git+https://github.com/org/repo@main#egg=repo".to_owned()),
        Just("./local/pkg".to_owned()),
        (package, version()).prop_map(|(n, v)| format!("{n}={v}")),
    ]
}

fn dependency() -> impl Strategy<Value = DependencyEntry> {
    prop_oneof![
        6 => (conda_source(), selector()).prop_map(|(source, selector)| {
            let mut dependency = CondaDependency::parse(&source).expect("generated specs are valid");
            dependency.selector = selector;
            DependencyEntry::Conda(Box::new(dependency))
        }),
        2 => proptest::collection::vec((pip_source(), proptest::bool::weighted(0.2)), 0..5).prop_map(
            |lines| {
                DependencyEntry::Pip(PipSection {
                    entries: lines
                        .into_iter()
                        .map(|(line, linux_only)| PipEntry {
                            selector: linux_only.then(|| Selector {
                                style: SelectorStyle::Comment,
                                condition: "linux64".to_owned(),
                            }),
                            ..PipEntry::parse(&line)
                        })
                        .collect(),
                    location: None,
                })
            }
        ),
        1 => proptest::collection::vec("[a-z@/^~.0-9-]{1,12}", 0..3).prop_map(|entries| {
            DependencyEntry::Other(OtherSection { name: "npm".to_owned(), entries })
        }),
    ]
}

fn variable_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_/:.-]{0,16}",
        Just(String::new()),
        Just("yes".to_owned()),
        Just("off".to_owned()),
        Just("1.10".to_owned()),
        Just("0x1F".to_owned()),
        Just("a: b # c".to_owned()),
        Just("line one\nline two".to_owned()),
        Just("tab\there".to_owned()),
        Just("${HOME}/data".to_owned()),
    ]
}

fn spec() -> impl Strategy<Value = EnvironmentSpec> {
    (
        proptest::option::of(name()),
        proptest::collection::vec(channel(), 0..4),
        proptest::collection::vec(dependency(), 0..8),
        proptest::collection::vec(("[A-Z_][A-Z0-9_]{0,8}", variable_value()), 0..4),
        proptest::option::of(prop_oneof![
            Just("/opt/conda/envs/x"),
            Just("C:\\envs\\x"),
            Just("~/envs/x y")
        ]),
        proptest::collection::vec(
            prop_oneof![
                Just(Subdir::Linux64),
                Just(Subdir::OsxArm64),
                Just(Subdir::Win64),
                Just(Subdir::LinuxAarch64)
            ],
            0..3,
        ),
        proptest::option::of(prop_oneof![Just("main"), Just("dev")]),
    )
        .prop_map(
            |(name, channels, dependencies, variables, prefix, platforms, category)| {
                EnvironmentSpec {
                    name,
                    channels,
                    dependencies,
                    variables: variables.into_iter().collect::<IndexMap<_, _>>(),
                    prefix: prefix.map(str::to_owned),
                    platforms,
                    category: category.map(str::to_owned),
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Rule: for any spec, `parse(spec.to_yaml()) == spec`: writing loses nothing and reorders
    /// nothing.
    #[test]
    fn spec_to_yaml_to_spec_is_identity(spec in spec()) {
        let yaml = spec.to_yaml();
        let parsed = parse_str(&yaml, "generated.yml")
            .map_err(|e| TestCaseError::fail(format!("{e}\n--- yaml ---\n{yaml}")))?;
        let mut read_back = parsed.spec;
        read_back.clear_locations();
        prop_assert_eq!(read_back, spec, "yaml:\n{}", yaml);
    }

    /// Rule: no sequence of bytes makes the reader panic; it answers with a spec or a report.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = check_bytes(&bytes, "random.yml");
    }

    /// Rule: no dependency or pip line, however odd, makes the reader panic (the MatchSpec and
    /// PEP 508 parsers see every string a file can hold).
    #[test]
    fn any_spec_string_never_panics(conda in "\\PC{0,40}", pip in "[ -~]{0,40}") {
        let text = format!(
            "dependencies:\n  - {}\n  - pip:\n      - {}\n",
            serde_json::to_string(&conda).unwrap(),
            serde_json::to_string(&pip).unwrap()
        );
        let _ = check_str(&text, "strings.yml");
    }

    /// Rule: no text made of YAML's own tokens makes the reader panic, and every error it
    /// reports points inside the text.
    #[test]
    fn yaml_like_text_never_panics(
        tokens in proptest::collection::vec(
            prop_oneof![
                Just("dependencies:"), Just("channels:"), Just("name:"), Just("variables:"),
                Just("platforms:"), Just("pip:"), Just("- "), Just("  "), Just("\t"), Just("\n"),
                Just("\r\n"), Just("# [linux64]"), Just("python=3.10"), Just("'"), Just("\""),
                Just("["), Just("]"), Just("{"), Just("}"), Just(","), Just("&a "), Just("*a"),
                Just("---"), Just("sel(linux): x"), Just("\u{feff}"), Just("é"), Just(": "),
                Just("?"), Just("|"), Just(">"), Just("!!str "), Just("linux-64"), Just("-e ."),
            ],
            0..60,
        )
    ) {
        let text: String = tokens.concat();
        let checked = check_str(&text, "tokens.yml");
        let shown = checked.report.to_string();
        for problem in &checked.report.problems {
            if let Some(location) = problem.location {
                prop_assert!(location.offset <= text.len(), "{}", shown);
            }
        }
    }
}

/// Every real file reads back the same after being written out.
#[test]
fn every_real_file_round_trips() {
    let data = common::test_data();
    let mut count = 0;
    for dir in ["envs", "envs-bad"] {
        for path in common::yaml_files(&data.join(dir)) {
            let Some(mut spec) = check_path(&path).unwrap().spec else {
                continue;
            };
            let yaml = spec.to_yaml();
            let mut read_back = parse_str(&yaml, &path)
                .unwrap_or_else(|e| panic!("{}: {e}\n{yaml}", path.display()))
                .spec;
            read_back.clear_locations();
            spec.clear_locations();
            assert_eq!(read_back, spec, "{}", path.display());
            count += 1;
        }
    }
    assert!(count >= 54 + 4, "only {count} files round-tripped");
}

/// The proptest found that the empty spec was written as an empty file, which `parse` refuses
/// ("the file is empty"); it is now `dependencies: []`.
#[test]
fn empty_spec_writes_a_file_that_parses() {
    let empty = keel_spec::EnvironmentSpec {
        name: None,
        channels: vec![],
        dependencies: vec![],
        variables: IndexMap::new(),
        prefix: None,
        platforms: vec![],
        category: None,
    };
    let yaml = empty.to_yaml();
    assert_eq!(yaml, "dependencies: []\n");
    let parsed = keel_spec::parse_str(&yaml, "empty.yml").unwrap();
    assert_eq!(parsed.spec, empty);
}
