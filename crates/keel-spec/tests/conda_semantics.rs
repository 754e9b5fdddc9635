//! keel's reading of every environment file it ships, compared with conda's.
//!
//! The reference reader below follows conda's own reader as found in conda/conda at commit
//! 0f64223fb8da4328457a69fe6483959dbb783152:
//!
//! - `conda/env/env.py` `load_file`: UTF-8, else UTF-16; `from_yaml`: the YAML document
//!   (`conda/common/serialize/yaml.py`: ruamel, YAML 1.2, here serde_yaml's YAML 1.2 core
//!   types), `None` is an empty file; `validate_keys` keeps `name`, `channels`,
//!   `dependencies`, `prefix`, `variables` and drops the rest; it inserts `pip` first when a
//!   dependency is a mapping with a `pip` key and no string dependency is `pip`
//!   (`re.split(r"[<>~\s=]", dep)[0].split("::")`); `_expand_channels` runs `expandvars` on
//!   each channel (so `channels:` with no value, or a channel that is no string, crashes it);
//! - `Dependencies.parse`: each string dependency is `MatchSpec(line)` (an invalid one fails
//!   the file), each mapping is `dict.update`d into one, so the last `pip:` wins; an empty
//!   `pip` is dropped; `pip` is appended when no conda spec is named `pip`;
//! - `MatchSpec` (`conda/models/match_spec.py` `_parse_spec_str`, `conda/models/version.py`):
//!   keel's port in `src/conda.rs`, used here too.
//!
//! The reference reader is itself checked against what that conda really read from each file
//! (`test-data/spec-rules/conda-reads.json`, written by `conda_reads.py` beside it), so it
//! cannot drift from conda unseen. Then keel's reader is compared with it on every file: the
//! name, the channels, the conda specs (name, version, build, as rattler reads them), the pip
//! lines and whether the file is valid. Every disagreement is listed; one that is not in
//! [`DELIBERATE`] fails the test.

mod common;

#[allow(
    dead_code,
    unreachable_pub,
    reason = "keel's port of conda's MatchSpec rules, shared with the reference reader"
)]
#[path = "../src/conda.rs"]
mod conda;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rattler_conda_types::{ParseStrictness, VersionSpec};
use serde::Deserialize;
use serde_yaml::Value;

/// keel's deliberate differences from conda, each a row of the README's table of
/// keel-vs-conda differences: (file under `test-data/`, field, why).
const DELIBERATE: &[(&str, &str, &str)] = &[
    // The block list's indentation mistake: conda reads `python[version='>=3.11-openmpi-',
    // build=mypy]` and fails at the solve; keel refuses the file at the line.
    (
        "spec-rules/multiline-scalar.yml",
        "valid",
        "a dependency spanning `- ` lines",
    ),
    // mamba's `sel(osx): libcxx`: conda takes the item for a sub-section and installs
    // nothing from it; keel (as mamba) installs it on the selected platforms.
    (
        "spec-rules/conda-lock-keys.yml",
        "conda",
        "mamba's sel() honoured",
    ),
    (
        "peer-fixtures/mamba/libmamba/tests/data/env_file/env_2.yaml",
        "conda",
        "mamba's sel() honoured",
    ),
];

/// What conda reads from a file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct CondaRead {
    valid: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    conda: Vec<Dependency>,
    #[serde(default)]
    pip: Vec<String>,
}

/// One conda dependency as a MatchSpec holds it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Dependency {
    name: String,
    version: Option<String>,
    build: Option<String>,
}

fn invalid(reason: impl Into<String>) -> CondaRead {
    CondaRead {
        valid: false,
        error: Some(reason.into()),
        name: None,
        channels: Vec::new(),
        conda: Vec::new(),
        pip: Vec::new(),
    }
}

/// Python's iteration over a YAML value: a list's items, a mapping's keys, a string's
/// characters; `None` where Python raises `TypeError`.
fn iterate(value: &Value) -> Option<Vec<Value>> {
    match value {
        Value::Sequence(items) => Some(items.clone()),
        Value::Mapping(map) => Some(map.keys().cloned().collect()),
        Value::String(text) => Some(text.chars().map(|c| Value::String(c.into())).collect()),
        _ => None,
    }
}

/// Python's `str()` of a scalar, as conda hands a pip line to pip.
fn python_str(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(number) => number.to_string(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// A MatchSpec string as conda's MatchSpec holds it, or conda's reason for refusing it.
fn match_spec(text: &str) -> Result<Dependency, String> {
    if let Some(refusal) = conda::refusal(text) {
        return Err(refusal.0);
    }
    let parts = conda::split(text).map_err(|refusal| refusal.0)?;
    Ok(Dependency {
        name: parts.name.to_lowercase(),
        version: parts.version,
        build: parts.build,
    })
}

/// conda's reader, as the module doc describes it.
fn reference_read(path: &Path) -> CondaRead {
    let bytes = fs_err::read(path).unwrap();
    let text = match String::from_utf8(bytes.clone()) {
        Ok(text) => text,
        Err(_) => {
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|pair| u16::from_le_bytes([pair[0], *pair.get(1).unwrap_or(&0)]))
                .collect();
            match String::from_utf16(&units) {
                Ok(text) => text,
                Err(_) => return invalid("UnicodeDecodeError"),
            }
        }
    };
    let text = text.trim_start_matches('\u{feff}');
    let data: Value = match serde_yaml::from_str(text) {
        Ok(data) => data,
        Err(error) => return invalid(format!("YAML: {error}")),
    };
    let Value::Mapping(data) = data else {
        return match data {
            Value::Null => invalid("EnvironmentFileEmpty"),
            _ => invalid("AttributeError: not a mapping"),
        };
    };
    let get = |key: &str| data.get(Value::String(key.to_owned()));

    // validate_keys: the implicit `pip`.
    let deps = match get("dependencies") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => match iterate(value) {
            Some(items) if !items.is_empty() => items,
            Some(_) => Vec::new(),
            None => return invalid("TypeError: dependencies"),
        },
    };
    let mut lists_pip = false;
    let mut has_pip_section = false;
    for dep in &deps {
        match dep {
            Value::Mapping(map) => {
                has_pip_section |= map.contains_key(Value::String("pip".to_owned()));
            }
            Value::String(text) => {
                let head = text
                    .split(|c: char| matches!(c, '<' | '>' | '~' | '=') || c.is_whitespace())
                    .next()
                    .unwrap_or_default();
                lists_pip |= head.split("::").any(|part| part == "pip");
            }
            _ => return invalid("TypeError: a dependency that is no string"),
        }
    }
    let mut raw = deps;
    if has_pip_section && !lists_pip {
        raw.insert(0, Value::String("pip".to_owned()));
    }

    // _expand_channels.
    let channels = match get("channels") {
        None => Vec::new(),
        Some(value) => match iterate(value) {
            Some(items) => {
                let mut channels = Vec::new();
                for item in items {
                    match item {
                        Value::String(channel) => channels.push(channel),
                        _ => return invalid("TypeError: a channel that is no string"),
                    }
                }
                channels
            }
            None => return invalid("TypeError: channels"),
        },
    };

    // Dependencies.parse.
    let mut conda = Vec::new();
    let mut merged: BTreeMap<String, Value> = BTreeMap::new();
    for line in &raw {
        match line {
            Value::Mapping(map) => {
                for (key, value) in map {
                    merged.insert(python_str(key), value.clone());
                }
            }
            Value::String(text) => match match_spec(text) {
                Ok(dependency) => conda.push(dependency),
                Err(reason) => return invalid(format!("InvalidMatchSpec: {reason}")),
            },
            _ => return invalid("TypeError"),
        }
    }
    let mut pip = Vec::new();
    if let Some(section) = merged.get("pip") {
        let truthy = match section {
            Value::Null | Value::Bool(false) => false,
            Value::Sequence(items) => !items.is_empty(),
            Value::String(text) => !text.is_empty(),
            Value::Mapping(map) => !map.is_empty(),
            _ => true,
        };
        if truthy {
            pip = iterate(section)
                .unwrap_or_default()
                .iter()
                .map(python_str)
                .collect();
        }
        if !conda.iter().any(|dependency| dependency.name == "pip") {
            conda.push(Dependency {
                name: "pip".to_owned(),
                version: None,
                build: None,
            });
        }
    }
    CondaRead {
        valid: true,
        error: None,
        name: match get("name") {
            Some(Value::String(name)) => Some(name.clone()),
            _ => None,
        },
        channels,
        conda,
        pip,
    }
}

/// keel's reading of the same file, in the same terms. conda's `pip` goes first (inserted by
/// `validate_keys`) or last (appended by `Dependencies.parse`); keel's `match_specs_for` puts
/// it first, so names are compared as sets of specs in order, `pip` aside.
fn keel_read(path: &Path) -> (bool, Option<keel_spec::EnvironmentSpec>) {
    let checked = keel_spec::check_path(path).unwrap();
    (!checked.report.has_errors(), checked.spec)
}

/// Whether a version conda holds and the one rattler read mean the same constraint.
fn same_version(conda: Option<&str>, rattler: Option<&VersionSpec>) -> bool {
    match (conda, rattler) {
        (None, None) => true,
        (Some("*"), None) | (None, Some(VersionSpec::Any)) => true,
        (Some(conda), Some(rattler)) => {
            // conda drops a `.*` after `<`, `>`, `<=` (its "superfluous" warning), which
            // rattler refuses.
            let relational_star = |leaf: &str| {
                let leaf = leaf.trim();
                match leaf.strip_suffix(".*") {
                    Some(stripped) if leaf.starts_with(['<', '>']) && !leaf.starts_with(">=") => {
                        stripped.to_owned()
                    }
                    _ => leaf.to_owned(),
                }
            };
            let conda_text: String = conda
                .split_inclusive([',', '|'])
                .map(|leaf| {
                    let (body, separator) = leaf.split_at(leaf.trim_end_matches([',', '|']).len());
                    relational_star(body) + separator
                })
                .collect();
            VersionSpec::from_str(conda, ParseStrictness::Lenient)
                .or_else(|_| VersionSpec::from_str(&conda_text, ParseStrictness::Lenient))
                .is_ok_and(|v| &v == rattler)
        }
        _ => false,
    }
}

fn same_build(conda: Option<&str>, rattler: Option<String>) -> bool {
    conda.filter(|b| *b != "*") == rattler.as_deref().filter(|b| *b != "*")
}

/// Where two readings of one file disagree: (field, what each side read).
fn compare_with_keel(conda: &CondaRead, path: &Path) -> Vec<(String, String)> {
    let (valid, spec) = keel_read(path);
    let mut out = Vec::new();
    if valid != conda.valid {
        out.push((
            "valid".to_owned(),
            format!("conda {} ({:?}), keel {valid}", conda.valid, conda.error),
        ));
    }
    let (Some(spec), true) = (spec, conda.valid && valid) else {
        return out;
    };
    if spec.name != conda.name {
        out.push((
            "name".to_owned(),
            format!("conda {:?}, keel {:?}", conda.name, spec.name),
        ));
    }
    let channels: Vec<&str> = spec.channels.iter().map(|c| c.source.as_str()).collect();
    if channels != conda.channels {
        out.push((
            "channels".to_owned(),
            format!("conda {:?}, keel {channels:?}", conda.channels),
        ));
    }
    let keel_specs = spec.match_specs_for(None);
    let keel_conda: Vec<_> = keel_specs
        .iter()
        .filter(|s| s.name.to_string() != "pip" || s.version.is_some())
        .collect();
    let conda_specs: Vec<&Dependency> = conda
        .conda
        .iter()
        .filter(|d| d.name != "pip" || d.version.is_some())
        .collect();
    let has_pip = |names: Vec<String>| names.iter().any(|n| n == "pip");
    let conda_has_pip = has_pip(conda.conda.iter().map(|d| d.name.clone()).collect());
    let keel_has_pip = has_pip(keel_specs.iter().map(|s| s.name.to_string()).collect());
    let agrees = |keel: &rattler_conda_types::MatchSpec, conda: &Dependency| {
        keel.name.to_string().to_lowercase() == conda.name
            && same_version(conda.version.as_deref(), keel.version.as_ref())
            && same_build(
                conda.build.as_deref(),
                keel.build.as_ref().map(ToString::to_string),
            )
    };
    let first_difference = (0..keel_conda.len().max(conda_specs.len())).find(|i| {
        match (keel_conda.get(*i), conda_specs.get(*i)) {
            (Some(keel), Some(conda)) => !agrees(keel, conda),
            _ => true,
        }
    });
    if first_difference.is_some() || conda_has_pip != keel_has_pip {
        let at = first_difference.unwrap_or(0);
        out.push((
            "conda".to_owned(),
            format!(
                "conda {} specs, keel {} (pip: conda {conda_has_pip}, keel {keel_has_pip}); \
                 first difference: conda {:?}, keel {:?}",
                conda_specs.len(),
                keel_conda.len(),
                conda_specs.get(at),
                keel_conda.get(at).map(ToString::to_string),
            ),
        ));
    }
    let pip: Vec<&str> = spec.pip_entries().map(|e| e.source.as_str()).collect();
    if pip != conda.pip {
        out.push((
            "pip".to_owned(),
            format!("conda {:?}, keel {pip:?}", conda.pip),
        ));
    }
    out
}

/// Whether the reference reader read what conda read.
fn compare_reference(reference: &CondaRead, recorded: &CondaRead) -> Option<String> {
    if reference.valid != recorded.valid {
        return Some(format!(
            "valid: reference {} ({:?}), conda {} ({:?})",
            reference.valid, reference.error, recorded.valid, recorded.error
        ));
    }
    if !recorded.valid {
        return None;
    }
    if reference.name != recorded.name || reference.pip != recorded.pip {
        return Some(format!(
            "name or pip: reference {reference:?}, conda {recorded:?}"
        ));
    }
    // conda expanded `$VAR` in channels with this machine's environment; the reference keeps
    // them as written.
    let channels_differ = reference.channels.len() != recorded.channels.len()
        || reference
            .channels
            .iter()
            .zip(&recorded.channels)
            .any(|(a, b)| a != b && !a.contains('$'));
    if channels_differ {
        return Some(format!(
            "channels: reference {:?}, conda {:?}",
            reference.channels, recorded.channels
        ));
    }
    if reference.conda.len() != recorded.conda.len() {
        return Some(format!(
            "conda: reference {:?}, conda {:?}",
            reference.conda, recorded.conda
        ));
    }
    for (a, b) in reference.conda.iter().zip(&recorded.conda) {
        // MatchSpec drops a `*` version (any version), as `Some("*")` in the reference.
        let version = |v: &Option<String>| {
            v.as_deref().filter(|v| *v != "*").map(|v| {
                VersionSpec::from_str(v, ParseStrictness::Lenient).map_err(|_| v.to_owned())
            })
        };
        if a.name != b.name || a.build != b.build || version(&a.version) != version(&b.version) {
            return Some(format!("conda: reference {a:?}, conda {b:?}"));
        }
    }
    None
}

#[derive(Deserialize)]
struct Recorded {
    conda_commit: String,
    files: BTreeMap<String, CondaRead>,
}

fn recorded() -> Recorded {
    let path = common::test_data().join("spec-rules/conda-reads.json");
    serde_json::from_str(&fs_err::read_to_string(path).unwrap()).unwrap()
}

/// Every environment file keel ships, by its path under `test-data/`.
fn shipped_files() -> Vec<(String, PathBuf)> {
    let root = common::test_data();
    let mut files = Vec::new();
    for folder in ["envs", "envs-bad", "peer-fixtures", "spec-rules"] {
        let mut stack = vec![root.join(folder)];
        while let Some(dir) = stack.pop() {
            for entry in fs_err::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
                    let name = path
                        .strip_prefix(&root)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/");
                    files.push((name, path));
                }
            }
        }
    }
    files.sort();
    files
}

/// The reference reader reads what conda 0f64223 read, on every shipped file.
#[test]
fn reference_reader_reads_what_conda_read() {
    let recorded = recorded();
    assert_eq!(
        recorded.conda_commit,
        "0f64223fb8da4328457a69fe6483959dbb783152"
    );
    let files = shipped_files();
    let names: Vec<&String> = files.iter().map(|(name, _)| name).collect();
    let recorded_names: Vec<&String> = recorded.files.keys().collect();
    assert_eq!(
        names, recorded_names,
        "conda-reads.json must cover exactly the shipped files: rerun conda_reads.py"
    );
    let mismatches: Vec<String> = files
        .iter()
        .filter_map(|(name, path)| {
            compare_reference(&reference_read(path), &recorded.files[name])
                .map(|m| format!("{name}: {m}"))
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "the reference reader differs from conda:\n{}",
        mismatches.join("\n")
    );
}

/// keel reads every shipped file as conda does, but for the deliberate differences, which it
/// lists (`--nocapture` shows them).
#[test]
#[allow(
    clippy::print_stderr,
    reason = "the list of deliberate differences, for the reader"
)]
fn keel_reads_every_shipped_file_as_conda_does() {
    let mut unexpected = Vec::new();
    let mut deliberate_seen = Vec::new();
    for (name, path) in shipped_files() {
        let reference = reference_read(&path);
        for (field, detail) in compare_with_keel(&reference, &path) {
            let line = format!("{name}: {field}: {detail}");
            match DELIBERATE
                .iter()
                .find(|(file, f, _)| *file == name && *f == field)
            {
                Some(entry) => {
                    eprintln!("deliberate ({}): {line}", entry.2);
                    deliberate_seen.push((entry.0, entry.1));
                }
                None => unexpected.push(line),
            }
        }
    }
    assert!(
        unexpected.is_empty(),
        "keel and conda disagree:\n{}",
        unexpected.join("\n")
    );
    // Each allowed difference still happens; one that no longer does leaves the list.
    for (file, field, why) in DELIBERATE {
        assert!(
            deliberate_seen.contains(&(*file, *field)),
            "{file} {field} ({why}) no longer differs: remove it from DELIBERATE"
        );
    }
}
