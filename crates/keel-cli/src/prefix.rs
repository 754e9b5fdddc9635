//! `keel install`, `keel hash`, `keel verify`, `keel diff`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use keel_prefix::{
    Change, DiffReport, FetchFailure, FileProblem, Fingerprint, HashOptions, InstallOptions,
    VerifyReport,
};
use miette::{Context as _, IntoDiagnostic as _};
use rattler::install::IndicatifReporter;
use rattler_conda_types::Subdir;

use crate::args::{DiffArgs, HashArgs, InstallArgs, VerifyArgs};
use crate::exit::Exit;
use crate::render;

pub(crate) fn platform(value: Option<&str>) -> miette::Result<Subdir> {
    match value {
        Some(value) => Subdir::from_str(value)
            .into_diagnostic()
            .wrap_err_with(|| format!("invalid --platform `{value}`")),
        None => Subdir::current()
            .ok_or_else(|| miette::miette!("this machine's platform is not a conda platform")),
    }
}

/// Text from input (labels, paths, package names) as it is shown to a person: control
/// characters (escape sequences, newlines, NUL) are written as `\u{..}` escapes, so a file
/// name or a label cannot move the cursor or recolour the terminal. Every human-facing line of
/// these commands prints input through this; `--json` stays exact.
pub(crate) fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A path as [`shown`] shows it.
fn shown_path(path: &Path) -> String {
    shown(&path.to_string_lossy()).into_owned()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub(crate) fn install(args: InstallArgs) -> miette::Result<Exit> {
    let mut download = keel_solve::HttpOptions::with_timeout_var(
        std::env::var(keel_solve::TIMEOUT_ENV).ok().as_deref(),
    )
    .into_diagnostic()?;
    if let Some(timeout) = args.timeout {
        download.timeout = timeout;
    }
    let platform = platform(args.platform.as_deref())?;
    let locked =
        keel_prefix::locked_packages(&args.lock, &args.environment, platform).into_diagnostic()?;
    let prefix = args.prefix.unwrap_or_else(|| {
        args.lock
            .parent()
            .unwrap_or(Path::new(""))
            .join(".keel/envs")
            .join(&args.environment)
    });
    let package_cache = match args.package_cache {
        Some(dir) => dir,
        None => rattler_cache::default_cache_dir()
            .map_err(|error| miette::miette!("{error}: pass --package-cache"))?
            .join(rattler_cache::PACKAGE_CACHE_DIR),
    };
    let uv = if args.no_pypi || locked.pypi.is_empty() {
        None
    } else {
        Some(keel_solve::Uv::Auto.binary().ok_or_else(|| {
            miette::miette!(
                help = "install uv (`pip install uv`), point $KEEL_UV at it, or pass --no-pypi to install the conda packages only",
                "the lock pins {} PyPI package(s), which keel installs with uv, and no uv was found",
                locked.pypi.len()
            )
        })?)
    };
    let options = InstallOptions {
        package_cache,
        platform: Some(platform),
        repair: args.repair,
        uv,
        download,
    };
    let reporter =
        (!args.json).then(|| IndicatifReporter::builder().clear_when_done(true).finish());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .into_diagnostic()?;
    let started = Instant::now();
    let report = runtime
        .block_on(keel_prefix::install(&prefix, &locked, &options, reporter))
        .map_err(|error| match error {
            // The library says what is wrong; the command that fixes it is the CLI's to name.
            keel_prefix::PrefixError::MissingSha256 { .. } => miette::miette!(
                help = "re-lock with `keel lock`, which records every package's sha256",
                "{error}"
            ),
            keel_prefix::PrefixError::Fetch {
                failure: FetchFailure::Timeout(_),
                ..
            } => miette::miette!(
                help = "a slow server or link may need a longer --timeout (seconds)",
                "{error}"
            ),
            error => miette::Report::from_err(error),
        })
        .map_err(|error| {
            // Checks and fetches that fail before anything is changed leave no marker, and a
            // prefix the install created goes again; say "unfinished" only when the prefix is
            // marked so.
            if prefix.join(keel_prefix::INSTALL_MARKER).exists() {
                error.wrap_err(format!(
                    "keel install stopped; {} is marked unfinished and the next `keel install` repairs it",
                    shown_path(&prefix)
                ))
            } else if prefix.symlink_metadata().is_err() {
                error.wrap_err(format!("keel install stopped; {} was not created", shown_path(&prefix)))
            } else {
                error.wrap_err(format!("keel install stopped; {} was not changed", shown_path(&prefix)))
            }
        })?;
    if args.json {
        render::json(&report)?;
        return Ok(Exit::Ok);
    }
    let mut stdout = std::io::stdout().lock();
    if report.repaired_interrupted {
        let _ = writeln!(stdout, "a previous install was interrupted: repairing it");
    }
    for name in &report.repaired_packages {
        let _ = writeln!(
            stdout,
            "~ {} (files changed or missing: re-linked)",
            shown(name)
        );
    }
    for name in &report.removed {
        let _ = writeln!(stdout, "- {}", shown(name));
    }
    for name in &report.installed {
        let _ = writeln!(stdout, "+ {}", shown(name));
    }
    let _ = writeln!(
        stdout,
        "{}: {} installed, {} removed, {} unchanged ({platform}, {:.1} s)",
        shown_path(&report.prefix),
        report.installed.len(),
        report.removed.len(),
        report.unchanged,
        started.elapsed().as_secs_f64()
    );
    if !report.pypi_installed.is_empty() {
        let _ = writeln!(
            stdout,
            "PyPI (uv, --no-deps): {}",
            shown(&report.pypi_installed.join(", "))
        );
    }
    if !report.pypi_not_installed.is_empty() {
        let _ = writeln!(
            stdout,
            "note: --no-pypi: the lock's PyPI packages are not installed ({})",
            shown(&report.pypi_not_installed.join(", "))
        );
    }
    Ok(Exit::Ok)
}

/// `keel hash`'s progress bar (bytes), on stderr; hidden when stderr is not a terminal.
#[derive(Debug)]
struct HashBar(indicatif::ProgressBar);

impl keel_prefix::HashProgress for HashBar {
    fn total(&self, files: u64, bytes: u64) {
        self.0.set_length(bytes);
        self.0.set_message(format!("{files} files"));
    }
    fn file_done(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

pub(crate) fn hash(args: HashArgs) -> miette::Result<Exit> {
    let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
        .with_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} hashing {msg} {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta})",
            )
            .expect("a valid progress template"),
        );
    let progress: std::sync::Arc<dyn keel_prefix::HashProgress> =
        std::sync::Arc::new(HashBar(bar.clone()));
    let options = HashOptions {
        cache_dir: (!args.no_cache).then(|| {
            args.cache_dir
                .clone()
                .unwrap_or_else(|| render::cache_dir("fingerprints"))
        }),
        full: args.full,
        exclude: args.exclude,
        label: args.label,
        threads: args.threads,
        progress: Some(progress),
    };
    let started = Instant::now();
    let result = keel_prefix::fingerprint(&args.prefix, &options);
    bar.finish_and_clear();
    let (fingerprint, stats) = result.into_diagnostic()?;
    let elapsed = started.elapsed();
    if let Some(path) = &args.output {
        let text = serde_json::to_vec_pretty(&fingerprint).into_diagnostic()?;
        fs_err::write(path, text).into_diagnostic()?;
    }
    if args.json {
        render::json(&fingerprint)?;
        return Ok(Exit::Ok);
    }
    let summary = &fingerprint.summary;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "{}  {}",
        fingerprint.root,
        shown_path(&fingerprint.prefix)
    );
    let _ = writeln!(
        stdout,
        "{} packages, {} files ({}), {} symlinks, {} files owned by no package, {} holding the prefix path",
        summary.packages,
        summary.files,
        mib(summary.bytes),
        summary.symlinks,
        summary.unowned,
        summary.prefix_files
    );
    if summary.special > 0 {
        let _ = writeln!(
            stdout,
            "{} FIFOs, sockets or devices (listed, never opened)",
            summary.special
        );
    }
    let _ = writeln!(
        stdout,
        "hashed {} files ({}), {} unchanged from the stat cache, in {:.3} s",
        stats.hashed,
        mib(stats.bytes_hashed),
        stats.cached,
        elapsed.as_secs_f64()
    );
    if let Some(path) = &args.output {
        let _ = writeln!(stdout, "wrote {}", shown_path(path));
    }
    Ok(Exit::Ok)
}

pub(crate) fn verify(args: VerifyArgs) -> miette::Result<Exit> {
    let lock = match args.lock {
        Some(lock) => Some(lock),
        None => Some(PathBuf::from("keel.lock")).filter(|path| path.is_file()),
    };
    let locked = match &lock {
        Some(path) => {
            let platform = platform(args.platform.as_deref())?;
            Some(
                keel_prefix::locked_packages(path, &args.environment, platform)
                    .into_diagnostic()?,
            )
        }
        None => None,
    };
    let report = keel_prefix::verify(&args.prefix, lock.as_deref().zip(locked.as_ref()))
        .into_diagnostic()?;
    if args.json {
        render::json(&report)?;
    } else {
        print_verify(&report);
    }
    Ok(if report.is_clean() {
        Exit::Ok
    } else {
        Exit::Found
    })
}

fn print_verify(report: &VerifyReport) {
    let mut out = std::io::stdout().lock();
    for line in verify_findings(report) {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "{}", verify_summary(report));
}

/// What `keel verify` found, one line each (the summary line apart).
pub(crate) fn verify_findings(report: &VerifyReport) -> Vec<String> {
    let mut out: Vec<u8> = Vec::new();
    for package in &report.missing_packages {
        let _ = writeln!(
            out,
            "missing package   {} (pinned by the lock)",
            shown(&package.to_string())
        );
    }
    for change in &report.changed_packages {
        let same_version = (&change.locked.version, &change.locked.build)
            == (&change.installed.version, &change.installed.build);
        let what = if same_version {
            "another archive (sha256) than locked".to_string()
        } else {
            format!(
                "locked {} {}",
                shown(&change.locked.version),
                shown(&change.locked.build)
            )
        };
        let _ = writeln!(
            out,
            "changed package   {} {} {} ({what})",
            shown(&change.installed.name),
            shown(&change.installed.version),
            shown(&change.installed.build)
        );
    }
    for package in &report.extra_packages {
        let _ = writeln!(
            out,
            "extra package     {} (not in the lock)",
            shown(&package.to_string())
        );
    }
    for file in &report.changed_files {
        let what = match &file.problem {
            FileProblem::Missing => "missing".to_string(),
            FileProblem::WrongType { expected } => format!("not a {expected}"),
            FileProblem::Size { expected, actual } => {
                format!("size {actual}, recorded {expected}")
            }
            FileProblem::Content { .. } => "contents changed (sha256 differs)".to_string(),
            FileProblem::Unreadable { error } => format!("unreadable: {}", shown(error)),
            FileProblem::OutsidePrefix => {
                "leads outside the prefix through a symlink (not read)".to_string()
            }
            FileProblem::UnsafePath { reason } => format!("{reason} (not looked at)"),
        };
        let _ = writeln!(
            out,
            "changed file      {} [{}]: {what}",
            shown(&file.path),
            shown(&file.package)
        );
    }
    for dist in &report.pip_outside_lock {
        let _ = writeln!(
            out,
            "pip outside lock  {} {} (installed by {}, {})",
            shown(&dist.name),
            shown(&dist.version),
            shown(dist.installer.as_deref().unwrap_or("an unknown tool")),
            shown(&dist.dist_info)
        );
    }
    for pypi in &report.missing_pypi {
        let _ = writeln!(
            out,
            "missing PyPI      {} {} (pinned by the lock)",
            shown(&pypi.name),
            shown(pypi.version.as_deref().unwrap_or(""))
        );
    }
    for outside in &report.record_paths_outside_prefix {
        let _ = writeln!(
            out,
            "outside prefix    {} (listed in {}/RECORD; not read)",
            shown(&outside.path),
            shown(&outside.dist_info)
        );
    }
    for path in &report.unowned_files {
        let _ = writeln!(out, "unowned file      {}", shown(path));
    }
    // Every shown text has its control characters escaped: a line is one finding.
    String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `keel verify`'s last line: the verdict and what was checked.
pub(crate) fn verify_summary(report: &VerifyReport) -> String {
    let verdict = if report.is_clean() {
        "matches"
    } else {
        "DRIFTED from"
    };
    let against = report.lock.as_ref().map_or(
        "its packages' records (no lock given)".to_string(),
        |lock| format!("{} and its packages' records", shown_path(lock)),
    );
    format!(
        "{} {verdict} {against}: {} packages, {} files checked, {} not content-checked (symlinks, no sha256), {} bytecode caches ignored",
        shown_path(&report.prefix),
        report.packages,
        report.files_checked,
        report.files_unchecked,
        report.bytecode_caches
    )
}

pub(crate) fn diff(args: &DiffArgs) -> miette::Result<Exit> {
    // Only the first node of each root is compared: the others keep their label and root,
    // so memory grows with the distinct prefixes, not with the nodes.
    let mut roots = std::collections::HashSet::new();
    let fingerprints = args
        .files
        .iter()
        .map(|path| {
            let mut fingerprint = Fingerprint::from_path(path).into_diagnostic()?;
            if !roots.insert(fingerprint.root.clone()) {
                fingerprint.packages = Vec::new();
                fingerprint.files = Vec::new();
            }
            Ok(fingerprint)
        })
        .collect::<miette::Result<Vec<_>>>()?;
    let report = keel_prefix::diff(&fingerprints);
    if args.json {
        render::json(&report)?;
    } else {
        print_diff(&report);
    }
    Ok(if report.all_identical() {
        Exit::Ok
    } else {
        Exit::Found
    })
}

fn print_diff(report: &DiffReport) {
    let mut out = std::io::stdout().lock();
    for (index, group) in report.groups.iter().enumerate() {
        let role = if index == 0 { "reference" } else { "differs" };
        let _ = writeln!(
            out,
            "{} {role:<9} {} node(s): {}",
            shown(group.root.get(..16).unwrap_or(&group.root)),
            group.labels.len(),
            shown(&group.labels.join(", "))
        );
    }
    if report.all_identical() {
        let _ = writeln!(out, "all nodes have the same prefix");
        return;
    }
    for difference in &report.differences {
        print_changes(&mut out, difference);
    }
}

/// One group's differences from the reference, as `keel diff` shows them: a line naming the
/// group (its labels), then one line per change.
pub(crate) fn print_changes(out: &mut impl std::io::Write, difference: &keel_prefix::GroupDiff) {
    let _ = writeln!(out, "\n{}:", shown(&difference.labels.join(", ")));
    for change in &difference.changes {
        let owner = |owner: &Option<String>| {
            owner
                .as_deref()
                .map_or(" (no package)".to_string(), |o| format!(" [{}]", shown(o)))
        };
        let line = match change {
            Change::PackageVersion {
                name,
                reference,
                here,
            } => format!(
                "  package {}: {} (reference {})",
                shown(name),
                shown(here),
                shown(reference)
            ),
            Change::PackageSource {
                name,
                reference,
                here,
            } => format!(
                "  package {}: other archive {} (reference {})",
                shown(name),
                shown(here),
                shown(reference)
            ),
            Change::PackageAdded { name, here } => {
                format!("  + package {} {}", shown(name), shown(here))
            }
            Change::PackageRemoved { name, reference } => {
                format!("  - package {} {}", shown(name), shown(reference))
            }
            Change::FileChanged {
                path,
                owner: o,
                what,
            } => {
                format!("  ~ {}{}: {what}", shown(path), owner(o))
            }
            Change::FileAdded { path, owner: o } => format!("  + {}{}", shown(path), owner(o)),
            Change::FileRemoved { path, owner: o } => {
                format!("  - {}{}", shown(path), owner(o))
            }
        };
        let _ = writeln!(out, "{line}");
    }
    if difference.files_of_changed_packages > 0 {
        let _ = writeln!(
            out,
            "  ({} file differences of the changed packages not listed)",
            difference.files_of_changed_packages
        );
    }
}
