//! The `pip:` section: resolved with `uv pip compile` against the Python the conda solve
//! picked, or, without uv, exact `==` pins recorded as given.
//!
//! What uv resolved is recorded as pixi records it, so that pixi's satisfiability check walks
//! from the section's requirements to every locked package: each package's `requires_dist`
//! and `requires_python` from the core metadata (`METADATA`) of the wheel uv picked, its
//! index, and the environment's indexes and find-links ([`indexes`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use keel_spec::{EnvironmentSpec, PipEntry, PipEntryKind};
use rattler_conda_types::{GenericVirtualPackage, RepoDataRecord, Subdir};
use rattler_digest::{Sha256, parse_digest_from_hex};
use rattler_lock::{
    FindLinksUrlOrPath, PackageHashes, PypiDistributionData, PypiIndexes, PypiPackageData,
    PypiSourceData, UrlOrPath, Verbatim,
};
use serde::Deserialize;

use crate::SolveError;
use crate::client::{HttpOptions, http_client};
use crate::redact::{Secrets, redact_template, redact_text, redact_url};

/// The index pip and uv use when the section names none, spelled as pixi spells its default
/// (`DEFAULT_PYPI_INDEX_URL`): pixi compares a lock's indexes with its own exactly.
pub(crate) const DEFAULT_INDEX_URL: &str = "https://pypi.org/simple";

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

/// The PyPI packages the previous lock pinned for `platform`, minus those to update: a git
/// line is resolved again at the commit one of them holds ([`keep_git_pin`]).
pub(crate) fn previous_pins(
    previous: Option<&rattler_lock::LockFile>,
    platform: Subdir,
    update: &[String],
) -> Vec<PypiPackageData> {
    let Some(environment) = previous.and_then(rattler_lock::LockFile::default_environment) else {
        return Vec::new();
    };
    let Some(lock_platform) = environment.platforms().find(|p| p.subdir() == platform) else {
        return Vec::new();
    };
    environment
        .pypi_packages(lock_platform)
        .into_iter()
        .flatten()
        .filter(|package| {
            let name = package.name().as_ref().to_owned();
            !update
                .iter()
                .any(|u| pep508_rs::PackageName::from_str(u).is_ok_and(|u| u.as_ref() == name))
        })
        .cloned()
        .collect()
}

/// The pip entries that apply on `platform`.
pub(crate) fn entries_for(spec: &EnvironmentSpec, platform: Subdir) -> Vec<&PipEntry> {
    spec.pip_entries()
        .filter(|entry| entry.selector.as_ref().is_none_or(|s| s.matches(platform)))
        .collect()
}

/// The indexes and find-links the pip section resolves against, as pixi records them for an
/// environment (its `PypiIndexes::from(PypiOptions)`): the `--index-url` (the last one, as pip
/// takes it; else [`DEFAULT_INDEX_URL`]), then each `--extra-index-url`, and each
/// `--find-links` as written (a URL, or a path relative to the environment file's folder).
/// Credentials are removed ([`redact_url`]): the lock is shared, the tokens are not. `None`
/// when the spec has no pip section, as pixi writes none then.
pub(crate) fn indexes(spec: &EnvironmentSpec) -> Option<PypiIndexes> {
    let mut entries = spec.pip_entries().peekable();
    entries.peek()?;
    let mut primary = None;
    let mut extra = Vec::new();
    let mut find_links = Vec::new();
    for entry in entries {
        let PipEntryKind::Option {
            name,
            value: Some(value),
        } = &entry.kind
        else {
            continue;
        };
        let url = || url::Url::parse(&redact_template(value)).ok();
        match name.as_str() {
            "-i" | "--index-url" => primary = url().or(primary),
            "--extra-index-url" => extra.extend(url()),
            "-f" | "--find-links" => find_links.push(match url() {
                Some(url) if value.contains("://") => FindLinksUrlOrPath::Url(url),
                _ => FindLinksUrlOrPath::Path(PathBuf::from(value)),
            }),
            _ => {}
        }
    }
    let primary =
        primary.unwrap_or_else(|| url::Url::parse(DEFAULT_INDEX_URL).expect("a valid URL"));
    let mut indexes = vec![primary];
    for url in extra {
        if !indexes.contains(&url) {
            indexes.push(url);
        }
    }
    find_links.dedup();
    Some(PypiIndexes {
        indexes,
        find_links,
    })
}

/// The find-links of the pip section that are URLs, credentials kept (to match what uv
/// fetched from); a package found there records it as its index, as pixi does.
fn find_links_urls(entries: &[&PipEntry]) -> Vec<url::Url> {
    entries
        .iter()
        .filter_map(|entry| match &entry.kind {
            PipEntryKind::Option {
                name,
                value: Some(value),
            } if matches!(name.as_str(), "-f" | "--find-links") && value.contains("://") => {
                url::Url::parse(value).ok()
            }
            _ => None,
        })
        .collect()
}

/// Resolves the pip entries for one platform; a wheel on an index gets its core metadata
/// through `http` ([`remote_metadata`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn resolve(
    entries: &[&PipEntry],
    spec_dir: &Path,
    platform: Subdir,
    conda_records: &[RepoDataRecord],
    virtual_packages: &[GenericVirtualPackage],
    uv: &Uv,
    http: &HttpOptions,
    secrets: &Secrets,
    pinned: &[PypiPackageData],
) -> Result<Vec<PypiPackageData>, SolveError> {
    let mut packages = resolve_unredacted(
        entries,
        spec_dir,
        platform,
        conda_records,
        virtual_packages,
        uv,
        pinned,
    )
    .map_err(|error| redact_error(error, secrets))?;
    if uv.binary().is_some() {
        remote_metadata(&mut packages, entries, platform, http, secrets).await?;
    }
    Ok(packages)
}

/// Reads the core metadata of each wheel uv picked from an index (an `http(s)` URL): the
/// PEP 658 `<wheel URL>.metadata` file first (PyPI serves it for every wheel), else the
/// wheel itself, downloaded to a temporary file, checked against the sha256 uv locked, and
/// read as a local wheel. Requests go through keel's one client ([`http_client`]: timeouts,
/// retries, `RATTLER_AUTH_FILE`), with the user and password of the pip section's index
/// or find-links URL of the same origin (uv writes the wheel URLs without them). No URL
/// reaches an error with its credentials.
async fn remote_metadata(
    packages: &mut [PypiPackageData],
    entries: &[&PipEntry],
    platform: Subdir,
    http: &HttpOptions,
    secrets: &Secrets,
) -> Result<(), SolveError> {
    let remote: Vec<usize> = packages
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((i, p.as_wheel()?)))
        .filter(|(_, p)| match &*p.location {
            UrlOrPath::Url(url) => {
                matches!(url.scheme(), "http" | "https")
                    && (is_wheel(url.path()) || is_sdist(url.path()))
            }
            UrlOrPath::Path(_) => false,
        })
        .map(|(i, _)| i)
        .collect();
    if remote.is_empty() {
        return Ok(());
    }
    let client = http_client(http)?;
    let origins = credentialed_urls(entries);
    for i in remote {
        let Some(package) = packages[i].as_wheel_mut() else {
            continue;
        };
        let UrlOrPath::Url(url) = &*package.location else {
            continue;
        };
        let failed = |reason: String| SolveError::PypiMetadata {
            platform,
            package: package.name.to_string(),
            file: redact_url(url).to_string(),
            reason: secrets.redact(&reason),
        };
        let url = with_credentials(url, &origins);
        let expected = match &package.hash {
            Some(PackageHashes::Sha256(sha) | PackageHashes::Md5Sha256(_, sha)) => Some(*sha),
            _ => None,
        };
        let text = fetch_metadata(&client, &url, &package.name, expected)
            .await
            .map_err(failed)?;
        let metadata = CoreMetadata::parse(&text).map_err(failed)?;
        package.requires_dist = metadata.requires_dist;
        if metadata.requires_python.is_some() {
            package.requires_python = metadata.requires_python;
        }
    }
    Ok(())
}

/// The pip section's index and find-links URLs that carry a user (and password).
fn credentialed_urls(entries: &[&PipEntry]) -> Vec<url::Url> {
    entries
        .iter()
        .filter_map(|entry| match &entry.kind {
            PipEntryKind::Option {
                name,
                value: Some(value),
            } if matches!(
                name.as_str(),
                "-i" | "--index-url" | "--extra-index-url" | "-f" | "--find-links"
            ) =>
            {
                url::Url::parse(value).ok()
            }
            _ => None,
        })
        .filter(|url| !url.username().is_empty())
        .collect()
}

/// `url` with the user and password of the first of `origins` on the same scheme, host and
/// port, when it has none of its own (as uv and pip send an index's credentials to its
/// files).
fn with_credentials(url: &url::Url, origins: &[url::Url]) -> url::Url {
    let mut url = url.clone();
    if !url.username().is_empty() {
        return url;
    }
    if let Some(origin) = origins.iter().find(|o| o.origin() == url.origin()) {
        let _ = url.set_username(origin.username());
        let _ = url.set_password(origin.password());
    }
    url
}

/// The largest wheel keel downloads to read its metadata when the index has no PEP 658 file.
const MAX_WHEEL_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// The METADATA text of the wheel at `url`: its `.metadata` file, else from the wheel.
async fn fetch_metadata(
    client: &reqwest_middleware::ClientWithMiddleware,
    url: &url::Url,
    name: &pep508_rs::PackageName,
    expected: Option<rattler_digest::Sha256Hash>,
) -> Result<String, String> {
    use rattler_digest::digest::Digest as _;
    use std::io::Write as _;

    let wheel = is_wheel(url.path());
    if wheel {
        let mut metadata_url = url.clone();
        metadata_url.set_fragment(None);
        metadata_url.set_path(&format!("{}.metadata", url.path()));
        let response = client
            .get(metadata_url.clone())
            .send()
            .await
            .map_err(|e| format!("{}: {e}", redact_url(&metadata_url)))?;
        if response.status().is_success() {
            let body = read_body(response, MAX_METADATA_BYTES)
                .await
                .map_err(|e| format!("{}: {e}", redact_url(&metadata_url)))?;
            return String::from_utf8(body)
                .map_err(|_| format!("{} is not UTF-8 text", redact_url(&metadata_url)));
        }
        if !matches!(response.status().as_u16(), 404 | 410) {
            return Err(format!(
                "{} answered {}",
                redact_url(&metadata_url),
                response.status()
            ));
        }
    }
    // No PEP 658 file (an sdist has none on PyPI): the file itself, streamed to disk.
    let mut response = client
        .get(url.clone())
        .send()
        .await
        .and_then(|r| r.error_for_status().map_err(Into::into))
        .map_err(|e| format!("{}: {e}", redact_url(url)))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join(if wheel {
        "package.whl"
    } else {
        "package.tar.gz"
    });
    let mut file = fs_err::File::create(&path).map_err(|e| e.to_string())?;
    let mut hasher = rattler_digest::Sha256::default();
    let mut size = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("{}: {e}", redact_url(url)))?
    {
        size += chunk.len() as u64;
        if size > MAX_WHEEL_BYTES {
            return Err(format!(
                "{} is more than the {MAX_WHEEL_BYTES} bytes keel downloads",
                redact_url(url)
            ));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(|e| e.to_string())?;
    }
    file.flush().map_err(|e| e.to_string())?;
    drop(file);
    let digest = hasher.finalize();
    if let Some(expected) = expected
        && digest != expected
    {
        return Err(format!(
            "{} has sha256 {}, not the {} uv locked",
            redact_url(url),
            hex::encode(digest),
            hex::encode(expected)
        ));
    }
    file_metadata(&path, name)
}

/// A response's body, refused when it is longer than `limit`.
async fn read_body(mut response: reqwest::Response, limit: u64) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(format!("more than the {limit} bytes keel reads"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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
    pinned: &[PypiPackageData],
) -> Result<Vec<PypiPackageData>, SolveError> {
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
            pinned,
        ),
        None => exact_pins(entries),
    }
}

/// Without uv: each line must be `name==version`, recorded as a pin on PyPI. Nothing is
/// downloaded, so `requires_dist` stays empty: every pin is a requirement of the section
/// itself, which pixi's walk reaches without it.
fn exact_pins(entries: &[&PipEntry]) -> Result<Vec<PypiPackageData>, SolveError> {
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
        let index = url::Url::parse(DEFAULT_INDEX_URL).expect("a valid URL");
        let project =
            url::Url::parse(&format!("{DEFAULT_INDEX_URL}/{name}/")).expect("a valid URL");
        packages.push(PypiPackageData::Distribution(Box::new(
            PypiDistributionData {
                name,
                version,
                location: Verbatim::new(UrlOrPath::Url(project)),
                index_url: Some(index),
                hash: None,
                requires_dist: Vec::new(),
                requires_python: None,
            },
        )));
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
    /// A direct URL or file (`name @ https://host/name-1.0-py3-none-any.whl`, an sdist).
    archive: Option<PylockFile>,
    /// A repository at the commit uv resolved the requested revision to.
    vcs: Option<PylockVcs>,
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

/// PEP 751's `vcs` table, as uv writes it for `name @ git+URL@REV` and `git+URL@REV#egg=name`.
#[derive(Deserialize)]
struct PylockVcs {
    #[serde(rename = "type")]
    kind: String,
    url: Option<String>,
    path: Option<String>,
    #[serde(rename = "requested-revision")]
    requested_revision: Option<String>,
    #[serde(rename = "commit-id")]
    commit_id: String,
    subdirectory: Option<String>,
}

fn compile_with_uv(
    uv: &Path,
    entries: &[&PipEntry],
    spec_dir: &Path,
    platform: Subdir,
    python_version: &str,
    virtual_packages: &[GenericVirtualPackage],
    pinned: &[PypiPackageData],
) -> Result<Vec<PypiPackageData>, SolveError> {
    let target =
        python_platform(platform, virtual_packages).ok_or(SolveError::PipPlatform { platform })?;
    let work = tempfile::tempdir().map_err(SolveError::Pip)?;
    // pip runs in the environment file's folder (as conda runs it), so relative paths in the
    // section (`-e .`, `-f ./wheels`) are made absolute against that folder.
    // A git line the previous lock pinned is resolved at that commit, as conda packages keep
    // their pins: a branch that moved on does not move the lock until `--update NAME`.
    let mut requested = Vec::new();
    let requirements: String = entries
        .iter()
        .map(|entry| {
            let line = absolute_paths(&entry.source, &entry.kind, spec_dir);
            keep_git_pin(&line, pinned, &mut requested).unwrap_or(line) + "\n"
        })
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
        .map(|package| {
            distribution(
                package,
                platform,
                work.path(),
                spec_dir,
                entries,
                &requested,
            )
        })
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
        // uv refuses an editable repository ("Git sources cannot be editable"); pixi has no
        // editable git source either, so the commit is locked and installed as a regular
        // package (pip would clone it into `src/` and install it editable).
        PipEntryKind::Editable(target) => target.clone(),
        PipEntryKind::RequirementsFile(file) => format!("-r {}", absolute(file)),
        PipEntryKind::ConstraintsFile(file) => format!("-c {}", absolute(file)),
        _ => source.to_owned(),
    }
}

/// One pylock package as a lock entry: the wheel for the platform (uv resolved for it), else
/// the sdist, else the local directory; with the wheel's `Requires-Dist` and
/// `Requires-Python` (uv's pylock.toml records neither per package).
fn distribution(
    package: PylockPackage,
    platform: Subdir,
    work: &Path,
    spec_dir: &Path,
    entries: &[&PipEntry],
    requested: &[GitPin],
) -> Result<PypiPackageData, SolveError> {
    let invalid = |what: String| SolveError::UvFailed {
        platform,
        stderr: format!("uv's pylock.toml has {what} for `{}`", package.name),
    };
    let name = pep508_rs::PackageName::from_str(&package.name)
        .map_err(|e| invalid(format!("an invalid name ({e})")))?;
    if let (true, None, Some(directory)) = (
        package.wheels.is_empty(),
        &package.sdist,
        &package.directory,
    ) {
        return source_tree(name, &directory.path, platform, work, spec_dir)
            .map(|source| PypiPackageData::Source(Box::new(source)));
    }
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
        .or(package.sdist.as_ref())
        .or(package.archive.as_ref());
    if let (None, Some(vcs)) = (file, &package.vcs) {
        return git_distribution(name, version, vcs, platform, entries, requested)
            .map(|data| PypiPackageData::Distribution(Box::new(data)));
    }
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
    // The index uv found it on; a package of a find-links URL records that URL (pixi
    // accepts find-links URLs as indexes); a local file records none.
    let index_url = package
        .index
        .as_deref()
        .and_then(|i| url::Url::parse(i).ok())
        .or_else(|| match &location {
            UrlOrPath::Url(url) if url.scheme() != "file" => find_links_urls(entries)
                .iter()
                .find(|links| {
                    // The files of a find-links page lie beside it or below its folder
                    // (`-f https://download.pytorch.org/whl/torch_stable.html`).
                    let links = redact_url(links);
                    let folder = links.join("./").unwrap_or_else(|_| links.clone());
                    let url = redact_url(url);
                    url.as_str()
                        .starts_with(links.as_str().trim_end_matches('/'))
                        || url.as_str().starts_with(folder.as_str())
                })
                .map(redact_url),
            _ => None,
        });
    let metadata = match &location {
        UrlOrPath::Url(url) if url.scheme() == "file" => url.to_file_path().ok(),
        UrlOrPath::Url(_) => None,
        UrlOrPath::Path(path) => Some(PathBuf::from(path.as_str())),
    }
    .filter(|path| {
        is_wheel(path.as_os_str().to_str().unwrap_or(""))
            || is_sdist(path.as_os_str().to_str().unwrap_or(""))
    })
    .map(|wheel| {
        file_metadata(&wheel, &name)
            .and_then(|text| CoreMetadata::parse(&text))
            .map_err(|reason| SolveError::PypiMetadata {
                platform,
                package: name.to_string(),
                file: redact_template(&wheel.display().to_string()),
                reason,
            })
    })
    .transpose()?
    .unwrap_or_default();
    Ok(PypiPackageData::Distribution(Box::new(
        PypiDistributionData {
            name,
            version,
            location: Verbatim::new(location),
            index_url,
            hash,
            requires_dist: metadata.requires_dist,
            requires_python: metadata.requires_python.or_else(|| {
                package
                    .requires_python
                    .as_deref()
                    .and_then(|r| pep440_rs::VersionSpecifiers::from_str(r).ok())
            }),
        },
    )))
}

/// A package uv resolved from a git repository, as pixi locks it (pixi 0.77.0,
/// `pixi_record::PinnedGitSpec::into_locked_git_url`): a distribution whose location is
/// `git+URL?subdirectory=DIR&rev=REV#COMMIT`, the requested revision (a branch, a tag, a
/// commit) in the query and the full commit uv resolved it to in the fragment, credentials
/// removed; no hash and no index. Its `requires_dist` and `requires_python` are what the
/// `pyproject.toml` of that commit states ([`pyproject_text_metadata`]), read from a bare
/// clone without checking anything out.
fn git_distribution(
    name: pep508_rs::PackageName,
    version: pep440_rs::Version,
    vcs: &PylockVcs,
    platform: Subdir,
    entries: &[&PipEntry],
    requested: &[GitPin],
) -> Result<PypiDistributionData, SolveError> {
    let invalid = |what: String| SolveError::UvFailed {
        platform,
        stderr: format!("uv's pylock.toml has {what} for `{name}`"),
    };
    if vcs.kind != "git" {
        return Err(invalid(format!(
            "a {} repository (keel locks git repositories only)",
            vcs.kind
        )));
    }
    if vcs.commit_id.len() != 40 || !vcs.commit_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(format!(
            "the commit `{}`, not a full sha",
            vcs.commit_id
        )));
    }
    let repository = match (&vcs.url, &vcs.path) {
        (Some(url), _) => url::Url::parse(url.trim_start_matches("git+"))
            .map_err(|e| invalid(format!("a bad repository URL ({e})")))?,
        (None, Some(path)) => url::Url::from_directory_path(path)
            .map_err(|()| invalid(format!("the repository path `{path}`")))?,
        (None, None) => return Err(invalid("a repository without URL or path".to_owned())),
    };
    let mut locked = redact_url(&repository);
    locked.set_query(None);
    locked.set_fragment(None);
    let subdirectory = vcs.subdirectory.as_deref().filter(|s| !s.is_empty());
    if let Some(subdirectory) = subdirectory {
        locked
            .query_pairs_mut()
            .append_pair("subdirectory", subdirectory);
    }
    // A line keel resolved at the previous lock's commit records the revision the file asks
    // for, not that commit.
    let kept = requested.iter().find(|pin| {
        pin.commit.eq_ignore_ascii_case(&vcs.commit_id)
            && pin.subdirectory.as_deref() == subdirectory
            && same_repository(&pin.repository, &repository)
    });
    let revision = match kept {
        Some(pin) => pin.revision.as_deref(),
        None => vcs.requested_revision.as_deref(),
    };
    if let Some(revision) = revision {
        locked.query_pairs_mut().append_pair("rev", revision);
    }
    locked.set_fragment(Some(&vcs.commit_id.to_ascii_lowercase()));
    let locked = url::Url::parse(&format!("git+{locked}")).map_err(|e| {
        invalid(format!(
            "a repository URL keel cannot prefix with git+ ({e})"
        ))
    })?;
    let clone_from = with_credentials(&repository, &git_credentials(entries));
    let metadata = git_pyproject(&clone_from, &vcs.commit_id, subdirectory)
        .and_then(|text| text.map(|t| pyproject_text_metadata(&t)).transpose())
        .map_err(|reason| SolveError::PypiMetadata {
            platform,
            package: name.to_string(),
            file: redact_template(&format!(
                "{}@{}:{}pyproject.toml",
                redact_url(&repository),
                vcs.commit_id,
                subdirectory.map(|s| format!("{s}/")).unwrap_or_default()
            )),
            reason,
        })?
        .unwrap_or_default();
    Ok(PypiDistributionData {
        name,
        version,
        location: Verbatim::new(UrlOrPath::Url(locked)),
        index_url: None,
        hash: None,
        requires_dist: metadata.requires_dist,
        requires_python: metadata.requires_python,
    })
}

/// The git repositories the pip section names with a user (and password): uv's pylock.toml
/// gives the repository without them, and the clone that reads `pyproject.toml` needs them.
fn git_credentials(entries: &[&PipEntry]) -> Vec<url::Url> {
    entries
        .iter()
        .filter_map(|entry| {
            let start = entry.source.find("git+")? + 4;
            let text = entry.source[start..].split_whitespace().next()?;
            url::Url::parse(text).ok()
        })
        .filter(|url| !url.username().is_empty())
        .collect()
}

/// The text of `pyproject.toml` at `commit` of `repository` (in `subdirectory`), `None` when
/// the commit has none; through a bare, blobless clone in a temporary folder.
fn git_pyproject(
    repository: &url::Url,
    commit: &str,
    subdirectory: Option<&str>,
) -> Result<Option<String>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let clone = dir.path().join("repository.git");
    let git = |args: &[&std::ffi::OsStr]| -> Result<std::process::Output, String> {
        Command::new("git")
            .args(["-c", "protocol.file.allow=always"])
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .map_err(|e| format!("cannot run git: {e}"))
    };
    let output = git(&[
        "clone".as_ref(),
        "--quiet".as_ref(),
        "--bare".as_ref(),
        "--filter=blob:none".as_ref(),
        repository.as_str().as_ref(),
        clone.as_os_str(),
    ])?;
    if !output.status.success() {
        // git's message names the URL it was given, credentials and all.
        return Err(format!(
            "git clone failed: {}",
            redact_text(String::from_utf8_lossy(&output.stderr).trim())
        ));
    }
    let object = format!(
        "{commit}:{}pyproject.toml",
        subdirectory
            .map(|s| format!("{}/", s.trim_end_matches('/')))
            .unwrap_or_default()
    );
    let git_dir = format!("--git-dir={}", clone.display());
    let exists = git(&[
        git_dir.as_ref(),
        "cat-file".as_ref(),
        "-e".as_ref(),
        object.as_ref(),
    ])?;
    if !exists.status.success() {
        let commit_exists = git(&[
            git_dir.as_ref(),
            "cat-file".as_ref(),
            "-e".as_ref(),
            format!("{commit}^{{commit}}").as_ref(),
        ])?;
        return if commit_exists.status.success() {
            Ok(None)
        } else {
            Err(format!("the repository has no commit {commit}"))
        };
    }
    let output = git(&[git_dir.as_ref(), "show".as_ref(), object.as_ref()])?;
    if !output.status.success() {
        return Err(format!(
            "git show {object} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8(output.stdout)
        .map(Some)
        .map_err(|_| "pyproject.toml is not UTF-8".to_owned())
}

/// A git line of the pip section that keel resolves at the commit the previous lock pinned:
/// the repository, the revision and subdirectory the line asks for, and that commit.
struct GitPin {
    repository: url::Url,
    revision: Option<String>,
    subdirectory: Option<String>,
    commit: String,
}

/// Whether two repository URLs name the same repository (credentials, a `git+` prefix, a
/// trailing slash aside).
fn same_repository(a: &url::Url, b: &url::Url) -> bool {
    let plain = |url: &url::Url| {
        let mut url = redact_url(url);
        url.set_query(None);
        url.set_fragment(None);
        url.as_str()
            .trim_start_matches("git+")
            .trim_end_matches('/')
            .to_owned()
    };
    plain(a) == plain(b)
}

/// A pip git URL's parts ([`pip_git_parts`]).
struct PipGitUrl<'a> {
    repository: url::Url,
    revision: Option<String>,
    subdirectory: Option<String>,
    fragment: Option<&'a str>,
}

/// The parts of a pip git URL (`git+URL@REV#subdirectory=DIR&egg=NAME`): the repository URL
/// (without `git+`), the revision, the subdirectory, and the fragment as written. The `@` of
/// the revision is the last one after the host (`git+ssh://git@host/repo.git@v1`).
fn pip_git_parts(text: &str) -> Option<PipGitUrl<'_>> {
    let text = text.strip_prefix("git+")?;
    let (base, fragment) = match text.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (text, None),
    };
    let after_scheme = base.find("://")? + 3;
    let path_start = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| after_scheme + i);
    let (repository, revision) = match base[path_start..].rsplit_once('@') {
        Some((path, revision)) => (
            format!("{}{path}", &base[..path_start]),
            Some(revision.to_owned()),
        ),
        None => (base.to_owned(), None),
    };
    let subdirectory = fragment.and_then(|f| {
        f.split('&')
            .find_map(|pair| pair.strip_prefix("subdirectory="))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    });
    Some(PipGitUrl {
        repository: url::Url::parse(&repository).ok()?,
        revision,
        subdirectory,
        fragment,
    })
}

/// `line` with its git URL's revision replaced by the commit `pinned` holds for the same
/// repository, revision and subdirectory (a package of the previous lock whose location is
/// `git+URL?rev=REV#COMMIT`); `None` when the line is no git URL or nothing pinned it. The
/// pin is noted in `requested`, so the lock records the revision the line asks for.
fn keep_git_pin(
    line: &str,
    pinned: &[PypiPackageData],
    requested: &mut Vec<GitPin>,
) -> Option<String> {
    let start = line.find("git+")?;
    let end = line[start..]
        .find(|c: char| c.is_whitespace() || c == ';')
        .map_or(line.len(), |i| start + i);
    let PipGitUrl {
        repository,
        revision,
        subdirectory,
        fragment,
    } = pip_git_parts(&line[start..end])?;
    let commit = pinned.iter().find_map(|package| {
        let PypiPackageData::Distribution(data) = package else {
            return None;
        };
        let UrlOrPath::Url(url) = &*data.location else {
            return None;
        };
        if !url.scheme().starts_with("git+") {
            return None;
        }
        let query = |key: &str| {
            url.query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        let commit = url.fragment()?;
        (same_repository(url, &repository)
            && query("rev") == revision
            && query("subdirectory") == subdirectory
            && commit.len() == 40
            && commit.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| commit.to_owned())
    })?;
    let mut url = format!("git+{}@{commit}", repository.as_str().trim_end_matches('/'));
    if let Some(fragment) = fragment {
        url.push('#');
        url.push_str(fragment);
    }
    requested.push(GitPin {
        repository,
        revision,
        subdirectory,
        commit,
    });
    Some(format!("{}{url}{}", &line[..start], &line[end..]))
}

/// The URL pip and uv install a locked package from. A git package's lock location
/// (`git+URL?subdirectory=DIR&rev=REV#COMMIT`, as pixi writes it) becomes
/// `git+URL@COMMIT#subdirectory=DIR`, so the exact commit is installed whatever the branch
/// holds now; any other URL is returned as it is.
pub fn pip_url(url: &url::Url) -> String {
    let Some(commit) = url.fragment().filter(|_| url.scheme().starts_with("git+")) else {
        return url.to_string();
    };
    let subdirectory = url
        .query_pairs()
        .find(|(key, _)| key == "subdirectory")
        .map(|(_, value)| value.into_owned());
    let mut repository = url.clone();
    repository.set_query(None);
    repository.set_fragment(None);
    let mut line = format!("{repository}@{commit}");
    if let Some(subdirectory) = subdirectory {
        line.push_str(&format!("#subdirectory={subdirectory}"));
    }
    line
}

/// A local source tree (`-e .`, `./pkg`) as the lock's source package: its folder relative to
/// the environment file's folder (`.`, `./pkg`) when it lies inside it, else absolute, and
/// the requirements its `pyproject.toml` states ([`pyproject_metadata`]).
fn source_tree(
    name: pep508_rs::PackageName,
    path: &str,
    platform: Subdir,
    work: &Path,
    spec_dir: &Path,
) -> Result<PypiSourceData, SolveError> {
    let folder = work.join(path);
    let failed = |reason: String| SolveError::PypiMetadata {
        platform,
        package: name.to_string(),
        file: folder.display().to_string(),
        reason,
    };
    let folder = fs_err::canonicalize(&folder).map_err(|e| failed(e.to_string()))?;
    let spec_dir = fs_err::canonicalize(spec_dir).unwrap_or_else(|_| spec_dir.to_path_buf());
    let location = match folder.strip_prefix(&spec_dir) {
        Ok(inside) if inside.as_os_str().is_empty() => ".".to_owned(),
        Ok(inside) => format!("./{}", inside.display()),
        Err(_) => folder.display().to_string(),
    };
    let metadata = pyproject_metadata(&folder).map_err(failed)?;
    Ok(PypiSourceData {
        name,
        location: Verbatim::new(UrlOrPath::Path(location.into())),
        requires_dist: metadata.requires_dist,
        requires_python: metadata.requires_python,
        source_data: rattler_lock::SourceData::default(),
    })
}

/// What a source tree's `pyproject.toml` states of its requirements (PEP 621): `dependencies`,
/// each `optional-dependencies` entry with `extra == '<name>'` added to its marker (as a
/// built wheel's `Requires-Dist` has it), and `requires-python`. A field listed in `dynamic`
/// is known only to the build backend and is left out; a folder without `pyproject.toml` or
/// `[project]` states nothing.
fn pyproject_metadata(folder: &Path) -> Result<CoreMetadata, String> {
    let path = folder.join("pyproject.toml");
    let text = match fs_err::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(CoreMetadata::default());
        }
        Err(error) => return Err(error.to_string()),
    };
    pyproject_text_metadata(&text)
}

/// [`pyproject_metadata`] of the text of a `pyproject.toml`.
fn pyproject_text_metadata(text: &str) -> Result<CoreMetadata, String> {
    let value: toml::Value = toml::from_str(text).map_err(|e| format!("pyproject.toml: {e}"))?;
    let Some(project) = value.get("project") else {
        return Ok(CoreMetadata::default());
    };
    let dynamic: Vec<&str> = project
        .get("dynamic")
        .and_then(toml::Value::as_array)
        .map(|a| a.iter().filter_map(toml::Value::as_str).collect())
        .unwrap_or_default();
    let strings = |value: Option<&toml::Value>, field: &str| -> Result<Vec<String>, String> {
        value
            .map(|v| {
                v.as_array()
                    .ok_or_else(|| format!("pyproject.toml: `{field}` is not a list"))?
                    .iter()
                    .map(|item| {
                        item.as_str().map(str::to_owned).ok_or_else(|| {
                            format!("pyproject.toml: `{field}` has an item that is not text")
                        })
                    })
                    .collect()
            })
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let parse = |text: &str, field: &str| {
        pep508_rs::Requirement::from_str(text)
            .map_err(|e| format!("pyproject.toml: `{field}` item `{text}`: {e}"))
    };
    let mut metadata = CoreMetadata::default();
    if !dynamic.contains(&"dependencies") {
        for text in strings(project.get("dependencies"), "dependencies")? {
            metadata.requires_dist.push(parse(&text, "dependencies")?);
        }
    }
    if !dynamic.contains(&"optional-dependencies")
        && let Some(extras) = project.get("optional-dependencies")
    {
        let extras = extras
            .as_table()
            .ok_or("pyproject.toml: `optional-dependencies` is not a table")?;
        for (extra, list) in extras {
            let field = format!("optional-dependencies.{extra}");
            let extra_name = pep508_rs::ExtraName::from_str(extra)
                .map_err(|e| format!("pyproject.toml: extra `{extra}`: {e}"))?;
            let marker = pep508_rs::MarkerTree::from_str(&format!("extra == '{extra_name}'"))
                .map_err(|e| format!("pyproject.toml: extra `{extra}`: {e}"))?;
            for text in strings(Some(list), &field)? {
                let mut requirement = parse(&text, &field)?;
                requirement.marker.and(marker.clone());
                metadata.requires_dist.push(requirement);
            }
        }
    }
    if !dynamic.contains(&"requires-python")
        && let Some(requires) = project.get("requires-python")
    {
        let requires = requires
            .as_str()
            .ok_or("pyproject.toml: `requires-python` is not text")?;
        metadata.requires_python = Some(
            pep440_rs::VersionSpecifiers::from_str(requires)
                .map_err(|e| format!("pyproject.toml: `requires-python` `{requires}`: {e}"))?,
        );
    }
    Ok(metadata)
}

/// The most a wheel's `METADATA` may hold: the largest on PyPI are a few hundred kB (a long
/// description); more is not metadata.
const MAX_METADATA_BYTES: u64 = 16 * 1024 * 1024;

/// Whether a file name or URL path is a wheel.
fn is_wheel(path: &str) -> bool {
    path.ends_with(".whl")
}

/// Whether a file name or URL path is an sdist keel reads `PKG-INFO` from (a gzipped tar, as
/// PEP 625 names them; a `.zip` sdist is left without requirements).
fn is_sdist(path: &str) -> bool {
    path.ends_with(".tar.gz")
}

/// The core metadata of a wheel ([`wheel_metadata`]) or of an sdist ([`sdist_metadata`]).
fn file_metadata(path: &Path, name: &pep508_rs::PackageName) -> Result<String, String> {
    if is_sdist(&path.to_string_lossy()) {
        sdist_metadata(path)
    } else {
        wheel_metadata(path, name)
    }
}

/// The text of an sdist's `{name}-{version}/PKG-INFO` (the core metadata the sdist was built
/// with; pip and uv read the same file when its fields are not dynamic). The file is opened,
/// checked to be a regular file, and read as a gzipped tar entry by entry: the entry must be
/// a regular file directly inside the one top-level folder, of at most [`MAX_METADATA_BYTES`].
fn sdist_metadata(path: &Path) -> Result<String, String> {
    use std::io::Read as _;

    let file = fs_err::File::open(path).map_err(|e| e.to_string())?;
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("it is not a regular file".to_owned());
    }
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let entries = archive
        .entries()
        .map_err(|e| format!("it is not an sdist (tar.gz): {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("it is not an sdist (tar.gz): {e}"))?;
        let entry_path = entry
            .path()
            .map_err(|e| format!("an entry with a bad name: {e}"))?
            .into_owned();
        let parts: Vec<_> = entry_path.components().collect();
        let is_pkg_info = matches!(
            parts[..],
            [std::path::Component::Normal(_), std::path::Component::Normal(file)]
                if file == "PKG-INFO"
        );
        if !is_pkg_info || !entry.header().entry_type().is_file() {
            continue;
        }
        let size = entry.size();
        if size > MAX_METADATA_BYTES {
            return Err(format!(
                "{} is {size} bytes, more than the {MAX_METADATA_BYTES} keel reads",
                entry_path.display()
            ));
        }
        let mut text = String::new();
        entry
            .take(MAX_METADATA_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: {e}", entry_path.display()))?;
        return Ok(text);
    }
    Err("it has no `*/PKG-INFO`".to_owned())
}

/// The text of a wheel's `{name}-{version}.dist-info/METADATA`. The wheel is opened, then
/// checked to be a regular file; the entry must be a top-level `.dist-info` folder's
/// `METADATA` (the one whose name is the package's, when a wheel has several) of at most
/// [`MAX_METADATA_BYTES`].
fn wheel_metadata(path: &Path, name: &pep508_rs::PackageName) -> Result<String, String> {
    use std::io::Read as _;

    let file = fs_err::File::open(path).map_err(|e| e.to_string())?;
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("it is not a regular file".to_owned());
    }
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| format!("it is not a wheel (zip): {e}"))?;
    let candidates: Vec<String> = archive
        .file_names()
        .filter_map(Result::ok)
        .map(std::borrow::Cow::into_owned)
        .filter(|entry| {
            entry
                .strip_suffix(".dist-info/METADATA")
                .is_some_and(|folder| !folder.is_empty() && !folder.contains(['/', '\\']))
        })
        .collect();
    let own = |entry: &&String| {
        entry
            .split('-')
            .next()
            .and_then(|n| pep508_rs::PackageName::from_str(n).ok())
            .is_some_and(|n| &n == name)
    };
    let entry = candidates
        .iter()
        .find(own)
        .or(candidates.first().filter(|_| candidates.len() == 1))
        .ok_or_else(|| "it has no `*.dist-info/METADATA` of this package".to_owned())?
        .clone();
    let metadata = archive
        .by_name(&entry)
        .map_err(|e| format!("{entry}: {e}"))?;
    if metadata.size() > MAX_METADATA_BYTES {
        return Err(format!(
            "{entry} is {} bytes, more than the {MAX_METADATA_BYTES} keel reads",
            metadata.size()
        ));
    }
    let mut text = String::new();
    metadata
        .take(MAX_METADATA_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| format!("{entry}: {e}"))?;
    Ok(text)
}

/// What a package's core metadata says it needs: its `Requires-Dist` lines as PEP 508
/// requirements (markers and extras kept, as pixi's walk evaluates them) and its
/// `Requires-Python`.
#[derive(Debug, Default, PartialEq)]
struct CoreMetadata {
    requires_dist: Vec<pep508_rs::Requirement>,
    requires_python: Option<pep440_rs::VersionSpecifiers>,
}

impl CoreMetadata {
    /// Reads the header block of a `METADATA` file (RFC 822 fields up to the first empty line;
    /// a line that starts with white space continues the field before it). A line that is no
    /// field is skipped; a `Requires-Dist` or `Requires-Python` that does not parse is an
    /// error naming it.
    fn parse(text: &str) -> Result<Self, String> {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if line.trim().is_empty() {
                break;
            }
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = fields.last_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
                continue;
            }
            if let Some((key, value)) = line.split_once(':') {
                fields.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let mut metadata = Self::default();
        for (key, value) in fields {
            match key.as_str() {
                "requires-dist" => metadata.requires_dist.push(
                    pep508_rs::Requirement::from_str(&value)
                        .map_err(|e| format!("Requires-Dist `{value}`: {e}"))?,
                ),
                "requires-python" if !value.is_empty() => {
                    metadata.requires_python = Some(
                        pep440_rs::VersionSpecifiers::from_str(&value)
                            .map_err(|e| format!("Requires-Python `{value}`: {e}"))?,
                    );
                }
                _ => {}
            }
        }
        Ok(metadata)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_metadata_reads_the_header_block_only_and_folds_continued_fields() {
        let text = "Metadata-Version: 2.1\nName: alpha\nRequires-Python: >=3.8\n\
                    Requires-Dist: beta>=2\nRequires-Dist: delta;\n  extra == \"fast\"\n\
                    Provides-Extra: fast\n\nRequires-Dist: in-the-description\n";
        let metadata = CoreMetadata::parse(text).unwrap();
        assert_eq!(
            metadata.requires_dist,
            [
                pep508_rs::Requirement::from_str("beta>=2").unwrap(),
                pep508_rs::Requirement::from_str("delta; extra == 'fast'").unwrap(),
            ]
        );
        assert_eq!(
            metadata.requires_python,
            Some(pep440_rs::VersionSpecifiers::from_str(">=3.8").unwrap())
        );
    }

    #[test]
    fn a_requirement_that_does_not_parse_is_named() {
        let error = CoreMetadata::parse("Name: alpha\nRequires-Dist: beta >>= 2\n").unwrap_err();
        assert!(error.starts_with("Requires-Dist `beta >>= 2`: "), "{error}");
    }

    #[test]
    fn a_pyproject_field_listed_as_dynamic_is_left_to_the_build_backend() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| fs_err::write(dir.path().join("pyproject.toml"), text).unwrap();
        write(
            "[project]\nname = \"p\"\ndynamic = [\"dependencies\", \"version\"]\n\
             requires-python = \">=3.10\"\n[project.optional-dependencies]\nx = [\"a\"]\n",
        );
        let metadata = pyproject_metadata(dir.path()).unwrap();
        assert_eq!(
            metadata.requires_dist,
            [pep508_rs::Requirement::from_str("a; extra == 'x'").unwrap()]
        );
        assert_eq!(
            metadata.requires_python,
            Some(pep440_rs::VersionSpecifiers::from_str(">=3.10").unwrap())
        );
        write("[project]\ndependencies = [\"a >>= 1\"]\n");
        let error = pyproject_metadata(dir.path()).unwrap_err();
        assert!(error.contains("`dependencies` item `a >>= 1`"), "{error}");
        fs_err::remove_file(dir.path().join("pyproject.toml")).unwrap();
        assert_eq!(pyproject_metadata(dir.path()), Ok(CoreMetadata::default()));
    }

    #[test]
    fn a_locked_git_url_is_installed_at_its_commit() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let url = |text: &str| url::Url::parse(text).unwrap();
        assert_eq!(
            pip_url(&url(&format!(
                "git+https://github.com/org/repo.git?subdirectory=pkg&rev=main#{commit}"
            ))),
            format!("git+https://github.com/org/repo.git@{commit}#subdirectory=pkg")
        );
        assert_eq!(
            pip_url(&url(&format!("git+file:///srv/repo#{commit}"))),
            format!("git+file:///srv/repo@{commit}")
        );
        let wheel = "https://host/a-1.0-py3-none-any.whl";
        assert_eq!(pip_url(&url(wheel)), wheel);
    }

    #[test]
    fn pip_git_urls_split_at_the_revision_after_the_host() {
        let parts =
            pip_git_parts("git+ssh://git@github.com/org/repo.git@v1#egg=x&subdirectory=sub")
                .unwrap();
        assert_eq!(
            parts.repository.as_str(),
            "ssh://git@github.com/org/repo.git"
        );
        assert_eq!(parts.revision.as_deref(), Some("v1"));
        assert_eq!(parts.subdirectory.as_deref(), Some("sub"));
        assert_eq!(parts.fragment, Some("egg=x&subdirectory=sub"));
        let parts = pip_git_parts("git+https://github.com/org/repo").unwrap();
        assert_eq!(parts.repository.as_str(), "https://github.com/org/repo");
        assert_eq!((parts.revision, parts.subdirectory), (None, None));
        assert!(pip_git_parts("https://host/a.whl").is_none());
    }

    #[test]
    fn a_git_line_keeps_the_commit_the_previous_lock_pinned() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let pinned = PypiPackageData::Distribution(Box::new(PypiDistributionData {
            name: "gamma".parse().unwrap(),
            version: "0.1.0".parse().unwrap(),
            location: Verbatim::new(UrlOrPath::Url(
                format!("git+https://host/repo.git?rev=main#{commit}")
                    .parse()
                    .unwrap(),
            )),
            index_url: None,
            hash: None,
            requires_dist: Vec::new(),
            requires_python: None,
        }));
        let mut requested = Vec::new();
        assert_eq!(
            keep_git_pin(
                "gamma @ git+https://user:pw@host/repo.git@main ; python_version > '3'",
                std::slice::from_ref(&pinned),
                &mut requested
            )
            .as_deref(),
            Some(
                format!(
                    "gamma @ git+https://user:pw@host/repo.git@{commit} ; python_version > '3'"
                )
                .as_str()
            )
        );
        assert_eq!(requested[0].revision.as_deref(), Some("main"));
        // Another revision, or another repository, is resolved afresh.
        for line in [
            "gamma @ git+https://host/repo.git@dev",
            "gamma @ git+https://host/other.git@main",
            "gamma==0.1.0",
        ] {
            assert_eq!(
                keep_git_pin(line, std::slice::from_ref(&pinned), &mut requested),
                None,
                "{line}"
            );
        }
    }

    #[test]
    fn a_commit_s_pyproject_is_read_and_a_missing_one_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let output = Command::new("git")
                .args(["-c", "user.name=k", "-c", "user.email=k@example.invalid"])
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            String::from_utf8(output.stdout).unwrap().trim().to_owned()
        };
        git(&["init", "--quiet", "-b", "main"]);
        fs_err::write(dir.path().join("README"), "no project here\n").unwrap();
        git(&["add", "."]);
        git(&["commit", "--quiet", "-m", "one"]);
        let bare = git(&["rev-parse", "HEAD"]);
        fs_err::create_dir_all(dir.path().join("sub")).unwrap();
        fs_err::write(
            dir.path().join("sub/pyproject.toml"),
            "[project]\nname = \"s\"\ndependencies = [\"a\"]\n",
        )
        .unwrap();
        git(&["add", "."]);
        git(&["commit", "--quiet", "-m", "two"]);
        let with_project = git(&["rev-parse", "HEAD"]);
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let text = git_pyproject(&url, &with_project, Some("sub"))
            .unwrap()
            .unwrap();
        assert_eq!(
            pyproject_text_metadata(&text).unwrap().requires_dist,
            [pep508_rs::Requirement::from_str("a").unwrap()]
        );
        assert_eq!(git_pyproject(&url, &bare, Some("sub")), Ok(None));
        assert_eq!(git_pyproject(&url, &with_project, None), Ok(None));
        let missing = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            git_pyproject(&url, missing, None),
            Err(format!("the repository has no commit {missing}"))
        );
        // A repository that cannot be cloned is named without the line's credentials.
        let secret = url::Url::parse("https://user:s3cret@127.0.0.1:9/repo.git").unwrap();
        let error = git_pyproject(&secret, missing, None).unwrap_err();
        assert!(
            error.starts_with("git clone failed") && !error.contains("s3cret"),
            "{error}"
        );
    }

    #[test]
    fn an_sdist_without_pkg_info_or_not_a_tarball_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a-1.0.tar.gz");
        fs_err::write(&path, b"not gzip").unwrap();
        let error = sdist_metadata(&path).unwrap_err();
        assert!(error.starts_with("it is not an sdist (tar.gz)"), "{error}");
        // A PKG-INFO deeper than the top folder is not the sdist's.
        let file = fs_err::File::create(&path).unwrap();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ));
        let text = b"Name: a\nRequires-Dist: b\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_cksum();
        builder
            .append_data(&mut header, "a-1.0/vendor/PKG-INFO", &text[..])
            .unwrap();
        builder.into_inner().unwrap().finish().unwrap();
        assert_eq!(sdist_metadata(&path).unwrap_err(), "it has no `*/PKG-INFO`");
    }

    #[test]
    fn indexes_follow_pip_and_drop_credentials() {
        let spec = keel_spec::parse_str(
            "dependencies:\n  - pip:\n    - --index-url https://first.example/simple\n    \
             - -i https://u:secret@second.example/simple\n    \
             - --extra-index-url https://extra.example/simple\n    \
             - -f https://links.example/wheels/\n    - --find-links ./wheels\n    - alpha\n",
            "environment.yml",
        )
        .unwrap()
        .spec;
        let found = indexes(&spec).unwrap();
        let urls: Vec<&str> = found.indexes.iter().map(url::Url::as_str).collect();
        assert_eq!(
            urls,
            [
                "https://second.example/simple",
                "https://extra.example/simple"
            ]
        );
        assert_eq!(
            found.find_links,
            [
                FindLinksUrlOrPath::Url("https://links.example/wheels/".parse().unwrap()),
                FindLinksUrlOrPath::Path("./wheels".into()),
            ]
        );
        let spec =
            keel_spec::parse_str("dependencies:\n  - pip:\n    - alpha\n", "environment.yml")
                .unwrap()
                .spec;
        assert_eq!(
            indexes(&spec).unwrap().indexes,
            [url::Url::parse(DEFAULT_INDEX_URL).unwrap()]
        );
        let spec = keel_spec::parse_str("dependencies:\n  - numpy\n", "environment.yml")
            .unwrap()
            .spec;
        assert_eq!(indexes(&spec), None);
    }
}
