//! The `pip:` section: resolved with `uv pip compile` against the Python the conda solve
//! picked, or, without uv, exact `==` pins recorded as given.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use keel_spec::{EnvironmentSpec, PipEntry, PipEntryKind};
use rattler_conda_types::{GenericVirtualPackage, RepoDataRecord, Subdir};
use rattler_digest::{Sha256, parse_digest_from_hex};
use rattler_lock::{PackageHashes, PypiDistributionData, UrlOrPath, Verbatim};
use serde::Deserialize;

use crate::SolveError;
use crate::redact::Secrets;

/// Which `uv` resolves pip sections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Uv {
    /// `uv` from `PATH` when it is there (`$KEEL_UV` names another one).
    #[default]
    Auto,
    /// This `uv` binary.
    Path(PathBuf),
    /// Never run uv: record exact `==` pins as given, refuse anything else.
    Disabled,
}

impl Uv {
    /// The uv binary this setting names, if there is one.
    pub fn binary(&self) -> Option<PathBuf> {
        match self {
            Uv::Disabled => None,
            Uv::Path(path) => Some(path.clone()),
            Uv::Auto => std::env::var_os("KEEL_UV").map(PathBuf::from).or_else(|| {
                std::env::split_paths(&std::env::var_os("PATH")?)
                    .map(|dir| dir.join(if cfg!(windows) { "uv.exe" } else { "uv" }))
                    .find(|path| path.is_file())
            }),
        }
    }
}

/// The pip entries that apply on `platform`.
pub(crate) fn entries_for(spec: &EnvironmentSpec, platform: Subdir) -> Vec<&PipEntry> {
    spec.pip_entries()
        .filter(|entry| entry.selector.as_ref().is_none_or(|s| s.matches(platform)))
        .collect()
}

/// Resolves the pip entries for one platform.
pub(crate) fn resolve(
    entries: &[&PipEntry],
    spec_dir: &Path,
    platform: Subdir,
    conda_records: &[RepoDataRecord],
    virtual_packages: &[GenericVirtualPackage],
    uv: &Uv,
    secrets: &Secrets,
) -> Result<Vec<PypiDistributionData>, SolveError> {
    resolve_unredacted(
        entries,
        spec_dir,
        platform,
        conda_records,
        virtual_packages,
        uv,
    )
    .map_err(|error| redact_error(error, secrets))
}

/// The pip lines and uv's messages in an error, through [`Secrets::redact`]: a line such as
/// `--index-url https://user:password@host/simple` is shown without its credentials.
fn redact_error(error: SolveError, secrets: &Secrets) -> SolveError {
    match error {
        SolveError::PipLine {
            line,
            source_line,
            reason,
        } => SolveError::PipLine {
            line,
            source_line: secrets.redact(&source_line),
            reason: secrets.redact(&reason),
        },
        SolveError::PipNeedsUv { line, source_line } => SolveError::PipNeedsUv {
            line,
            source_line: secrets.redact(&source_line),
        },
        SolveError::UvFailed { platform, stderr } => SolveError::UvFailed {
            platform,
            stderr: secrets.redact(&stderr),
        },
        other => other,
    }
}

fn resolve_unredacted(
    entries: &[&PipEntry],
    spec_dir: &Path,
    platform: Subdir,
    conda_records: &[RepoDataRecord],
    virtual_packages: &[GenericVirtualPackage],
    uv: &Uv,
) -> Result<Vec<PypiDistributionData>, SolveError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    for entry in entries {
        if let PipEntryKind::Invalid { reason } = &entry.kind {
            return Err(SolveError::PipLine {
                line: entry.location.map(|l| l.line),
                source_line: entry.source.clone(),
                reason: reason.clone(),
            });
        }
    }
    let python = conda_records
        .iter()
        .find(|r| r.package_record.name.as_normalized() == "python")
        .ok_or(SolveError::PipWithoutPython { platform })?;
    let python_version = python
        .package_record
        .version
        .to_string()
        .split('.')
        .take(3)
        .collect::<Vec<_>>()
        .join(".");
    match uv.binary() {
        Some(uv) => compile_with_uv(
            &uv,
            entries,
            spec_dir,
            platform,
            &python_version,
            virtual_packages,
        ),
        None => exact_pins(entries),
    }
}

/// Without uv: each line must be `name==version`, recorded as a pin on PyPI.
fn exact_pins(entries: &[&PipEntry]) -> Result<Vec<PypiDistributionData>, SolveError> {
    let mut packages = Vec::new();
    for entry in entries {
        let pinned = match &entry.kind {
            PipEntryKind::Requirement { requirement, .. } => {
                exact_version(requirement).map(|version| (requirement.name.clone(), version))
            }
            _ => None,
        };
        let Some((name, version)) = pinned else {
            return Err(SolveError::PipNeedsUv {
                line: entry.location.map(|l| l.line),
                source_line: entry.source.clone(),
            });
        };
        let index = url::Url::parse("https://pypi.org/simple/").expect("a valid URL");
        let project = index.join(&format!("{name}/")).expect("a valid URL");
        packages.push(PypiDistributionData {
            name,
            version,
            location: Verbatim::new(UrlOrPath::Url(project)),
            index_url: Some(index),
            hash: None,
            requires_dist: Vec::new(),
            requires_python: None,
        });
    }
    Ok(packages)
}

/// `==X` with nothing else: the version X.
fn exact_version(requirement: &pep508_rs::Requirement) -> Option<pep440_rs::Version> {
    let Some(pep508_rs::VersionOrUrl::VersionSpecifier(specifiers)) = &requirement.version_or_url
    else {
        return None;
    };
    let [specifier] = specifiers.iter().collect::<Vec<_>>()[..] else {
        return None;
    };
    (specifier.operator() == &pep440_rs::Operator::Equal && requirement.marker.is_true())
        .then(|| specifier.version().clone())
}

/// uv's `--python-platform` for a conda platform; manylinux follows the lock's `__glibc`.
fn python_platform(platform: Subdir, virtual_packages: &[GenericVirtualPackage]) -> Option<String> {
    let glibc = virtual_packages
        .iter()
        .find(|p| p.name.as_normalized() == "__glibc")
        .map(|p| p.version.to_string())
        .and_then(|v| v.split('.').nth(1).map(str::to_owned))
        .and_then(|minor| minor.parse::<u32>().ok())
        .unwrap_or(17)
        .clamp(17, 40);
    Some(match platform {
        Subdir::Linux64 => format!("x86_64-manylinux_2_{glibc}"),
        Subdir::LinuxAarch64 => format!("aarch64-manylinux_2_{glibc}"),
        Subdir::Osx64 => "x86_64-apple-darwin".to_owned(),
        Subdir::OsxArm64 => "aarch64-apple-darwin".to_owned(),
        Subdir::Win64 => "x86_64-pc-windows-msvc".to_owned(),
        Subdir::WinArm64 => "aarch64-pc-windows-msvc".to_owned(),
        _ => return None,
    })
}

#[derive(Deserialize)]
struct Pylock {
    #[serde(default)]
    packages: Vec<PylockPackage>,
}

#[derive(Deserialize)]
struct PylockPackage {
    name: String,
    version: Option<String>,
    index: Option<String>,
    #[serde(default)]
    wheels: Vec<PylockFile>,
    sdist: Option<PylockFile>,
    directory: Option<PylockPath>,
    #[serde(rename = "requires-python")]
    requires_python: Option<String>,
}

#[derive(Deserialize)]
struct PylockFile {
    url: Option<String>,
    path: Option<String>,
    name: Option<String>,
    #[serde(default)]
    hashes: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct PylockPath {
    path: String,
}

fn compile_with_uv(
    uv: &Path,
    entries: &[&PipEntry],
    spec_dir: &Path,
    platform: Subdir,
    python_version: &str,
    virtual_packages: &[GenericVirtualPackage],
) -> Result<Vec<PypiDistributionData>, SolveError> {
    let target =
        python_platform(platform, virtual_packages).ok_or(SolveError::PipPlatform { platform })?;
    let work = tempfile::tempdir().map_err(SolveError::Pip)?;
    // pip runs in the environment file's folder (as conda runs it), so relative paths in the
    // section (`-e .`, `-f ./wheels`) are made absolute against that folder.
    let requirements: String = entries
        .iter()
        .map(|entry| absolute_paths(&entry.source, &entry.kind, spec_dir) + "\n")
        .collect();
    let input = work.path().join("requirements.in");
    fs_err::write(&input, requirements).map_err(SolveError::Pip)?;
    let output = work.path().join("pylock.toml");
    let result = Command::new(uv)
        .args(["pip", "compile", "--quiet", "--no-header", "--no-progress"])
        .arg("--python-version")
        .arg(python_version)
        .arg("--python-platform")
        .arg(&target)
        .arg("-o")
        .arg(&output)
        .arg(&input)
        .current_dir(spec_dir)
        .output()
        .map_err(SolveError::Pip)?;
    if !result.status.success() {
        return Err(SolveError::UvFailed {
            platform,
            stderr: String::from_utf8_lossy(&result.stderr).trim().to_owned(),
        });
    }
    let text = fs_err::read_to_string(&output).map_err(SolveError::Pip)?;
    let pylock: Pylock = toml::from_str(&text).map_err(|e| SolveError::UvFailed {
        platform,
        stderr: format!("uv wrote a pylock.toml keel cannot read: {e}"),
    })?;
    pylock
        .packages
        .into_iter()
        .map(|package| distribution(package, platform, work.path()))
        .collect()
}

fn absolute_paths(source: &str, kind: &PipEntryKind, spec_dir: &Path) -> String {
    let absolute = |path: &str| {
        let path = Path::new(path);
        if path.is_absolute() || path.to_string_lossy().contains("://") {
            path.display().to_string()
        } else {
            spec_dir.join(path).display().to_string()
        }
    };
    match kind {
        PipEntryKind::Option {
            name,
            value: Some(value),
        } if matches!(name.as_str(), "-f" | "--find-links") => {
            format!("{name} {}", absolute(value))
        }
        PipEntryKind::Path(path) => absolute(path),
        PipEntryKind::Editable(target) if !target.contains("://") => {
            format!("-e {}", absolute(target))
        }
        PipEntryKind::RequirementsFile(file) => format!("-r {}", absolute(file)),
        PipEntryKind::ConstraintsFile(file) => format!("-c {}", absolute(file)),
        _ => source.to_owned(),
    }
}

/// One pylock package as a lock entry: the wheel for the platform (uv resolved for it), else
/// the sdist, else the local directory.
fn distribution(
    package: PylockPackage,
    platform: Subdir,
    work: &Path,
) -> Result<PypiDistributionData, SolveError> {
    let invalid = |what: String| SolveError::UvFailed {
        platform,
        stderr: format!("uv's pylock.toml has {what} for `{}`", package.name),
    };
    let name = pep508_rs::PackageName::from_str(&package.name)
        .map_err(|e| invalid(format!("an invalid name ({e})")))?;
    let version = package
        .version
        .as_deref()
        .ok_or_else(|| invalid("no version".to_owned()))
        .and_then(|v| {
            pep440_rs::Version::from_str(v)
                .map_err(|e| invalid(format!("an invalid version ({e})")))
        })?;
    let file = package
        .wheels
        .iter()
        .find(|wheel| wheel_fits(wheel, platform))
        .or(package.wheels.first())
        .or(package.sdist.as_ref());
    let location = match (file, &package.directory) {
        (Some(file), _) => match (&file.url, &file.path) {
            (Some(url), _) => UrlOrPath::Url(
                url::Url::parse(url).map_err(|e| invalid(format!("a bad URL ({e})")))?,
            ),
            (None, Some(path)) => UrlOrPath::Path(work.join(path).display().to_string().into()),
            (None, None) => return Err(invalid("a file without URL or path".to_owned())),
        },
        (None, Some(directory)) => UrlOrPath::Path(directory.path.clone().into()),
        (None, None) => return Err(invalid("no file".to_owned())),
    };
    let hash = file
        .and_then(|f| f.hashes.get("sha256"))
        .and_then(|hex| parse_digest_from_hex::<Sha256>(hex))
        .map(PackageHashes::Sha256);
    let index_url = package
        .index
        .as_deref()
        .and_then(|i| url::Url::parse(i).ok());
    Ok(PypiDistributionData {
        name,
        version,
        location: Verbatim::new(location),
        index_url,
        hash,
        requires_dist: Vec::new(),
        requires_python: package
            .requires_python
            .as_deref()
            .and_then(|r| pep440_rs::VersionSpecifiers::from_str(r).ok()),
    })
}

/// Whether a wheel's platform tag fits a conda platform.
fn wheel_fits(wheel: &PylockFile, platform: Subdir) -> bool {
    let name = wheel
        .name
        .clone()
        .or_else(|| {
            wheel
                .url
                .as_deref()
                .and_then(|u| u.rsplit('/').next())
                .map(str::to_owned)
        })
        .or_else(|| {
            wheel
                .path
                .as_deref()
                .and_then(|p| p.rsplit('/').next())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let tag = name
        .trim_end_matches(".whl")
        .rsplit('-')
        .next()
        .unwrap_or_default();
    tag == "any"
        || match platform {
            Subdir::Linux64 => tag.contains("linux") && tag.contains("x86_64"),
            Subdir::LinuxAarch64 => tag.contains("linux") && tag.contains("aarch64"),
            Subdir::Osx64 => {
                tag.contains("macosx") && (tag.contains("x86_64") || tag.contains("universal"))
            }
            Subdir::OsxArm64 => {
                tag.contains("macosx") && (tag.contains("arm64") || tag.contains("universal"))
            }
            Subdir::Win64 => tag.contains("win_amd64"),
            Subdir::WinArm64 => tag.contains("win_arm64"),
            _ => false,
        }
}
