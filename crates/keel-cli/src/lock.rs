//! `keel lock`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use keel_solve::{
    ChannelPriority, LockOptions, Locked, NodeVirtualPackages, SolveError, Uv,
    VirtualPackageOverridesByPlatform,
};
use miette::{Context as _, IntoDiagnostic as _, LabeledSpan, MietteDiagnostic, NamedSource};
use rattler_conda_types::Subdir;
use serde::Serialize;

use crate::args::LockArgs;
use crate::exit::Exit;
use crate::render;

/// Checked settings of `keel lock`.
struct LockSettings {
    file: PathBuf,
    output: PathBuf,
    options: LockOptions,
    explicit: Option<PathBuf>,
    conda_lock: Option<PathBuf>,
    check: bool,
    detect: bool,
    json: bool,
}

impl LockSettings {
    fn from_args(args: LockArgs) -> miette::Result<Self> {
        let platforms = args
            .platforms
            .iter()
            .map(|p| {
                Subdir::from_str(p)
                    .into_diagnostic()
                    .wrap_err_with(|| format!("invalid --platform `{p}`"))
            })
            .collect::<miette::Result<Vec<_>>>()?;
        let mut virtual_packages = VirtualPackageOverridesByPlatform::default();
        for value in &args.virtual_packages {
            virtual_packages.add(value).into_diagnostic()?;
        }
        let channel_priority = match args.channel_priority.as_str() {
            "strict" => ChannelPriority::Strict,
            "flexible" => ChannelPriority::Flexible,
            "disabled" => ChannelPriority::Disabled,
            other => miette::bail!(
                "invalid --channel-priority `{other}`: use strict, flexible or disabled"
            ),
        };
        let output = args.output.unwrap_or_else(|| {
            args.file
                .parent()
                .unwrap_or(Path::new(""))
                .join("keel.lock")
        });
        let cache_dir = args
            .cache_dir
            .unwrap_or_else(|| render::cache_dir("repodata"));
        let mut http = keel_solve::HttpOptions::with_timeout_var(
            std::env::var(keel_solve::TIMEOUT_ENV).ok().as_deref(),
        )
        .into_diagnostic()?;
        if let Some(timeout) = args.timeout {
            http.timeout = timeout;
        }
        Ok(Self {
            file: args.file,
            output,
            options: LockOptions {
                platforms,
                virtual_packages,
                detected: None,
                cache_dir,
                update: args.update,
                channel_priority,
                progress: None,
                uv: if args.no_uv { Uv::Disabled } else { Uv::Auto },
                http,
            },
            explicit: args.explicit,
            conda_lock: args.conda_lock,
            check: args.check,
            detect: args.detect,
            json: args.json,
        })
    }
}

/// This node's virtual packages ([`keel_solve::detect_node`]), with `__cuda` and `__cuda_arch`
/// from keel's own driver probe (`CONDA_OVERRIDE_CUDA` / `CONDA_OVERRIDE_CUDA_ARCH` first).
/// With `--detect` (`detect`) they are what the lock assumes, so a failure is said: a probe
/// that fails is a warning, a detection or an override that fails an error. Without it the
/// node is only compared with the lock afterwards, and a failure leaves that out silently.
fn node_virtual_packages(detect: bool) -> miette::Result<Option<NodeVirtualPackages>> {
    let report = match keel_cuda::probe_with_timeout(
        keel_cuda::DriverProbe::default(),
        std::time::Duration::from_secs(10),
    ) {
        Ok(report) => Some(report),
        Err(error) => {
            if detect {
                render::error(&miette::miette!(
                    severity = miette::Severity::Warning,
                    "{error}; detecting without a probed __cuda or __cuda_arch"
                ));
            }
            None
        }
    };
    let mut probed = Vec::new();
    if let Some(report) = &report {
        let override_cuda = std::env::var("CONDA_OVERRIDE_CUDA").ok();
        let override_arch = std::env::var("CONDA_OVERRIDE_CUDA_ARCH").ok();
        let cuda = keel_cuda::cuda_virtual_package(report, override_cuda.as_deref());
        let arch = keel_cuda::cuda_arch_virtual_package(report, override_arch.as_deref());
        match (cuda, arch) {
            (Ok(cuda), Ok(arch)) => probed.extend(cuda.into_iter().chain(arch)),
            (Err(error), _) | (_, Err(error)) if detect => return Err(error).into_diagnostic(),
            _ => return Ok(None),
        }
    }
    match keel_solve::detect_node(&probed) {
        Ok(node) => Ok(node),
        Err(error) if detect => Err(error).into_diagnostic(),
        Err(_) => Ok(None),
    }
}

/// What this node has that the lock for its platform did not assume, where it matters (a GPU,
/// [`keel_solve::unassumed_on_node`]), and the flags that lock for it.
#[derive(Debug, Serialize)]
struct NodeHasMore {
    platform: String,
    virtual_packages: Vec<String>,
    /// `--virtual-package` values that lock for it and keep every other value the lock
    /// assumed beyond the platform's baseline (a flag replaces the previous set).
    virtual_package_flags: Vec<String>,
}

fn node_has_more(locked: &Locked, node: Option<&NodeVirtualPackages>) -> Vec<NodeHasMore> {
    let Some(node) = node else {
        return Vec::new();
    };
    let Some(summary) = locked
        .platforms
        .iter()
        .find(|p| p.platform == node.platform.as_str())
    else {
        return Vec::new();
    };
    let more = keel_solve::unassumed_on_node(&summary.virtual_packages, &node.packages);
    if more.is_empty() {
        return Vec::new();
    }
    let baseline: Vec<String> = keel_solve::baseline_virtual_packages(node.platform)
        .iter()
        .map(keel_solve::recorded_spelling)
        .collect();
    let mut flags: Vec<String> = summary
        .virtual_packages
        .iter()
        .filter(|text| !baseline.contains(text))
        .filter(|text| {
            !more
                .iter()
                .any(|p| text.split('=').next() == Some(p.name.as_normalized()))
        })
        .map(|text| {
            format!(
                "{}:{}",
                node.platform,
                text.strip_suffix("=0").unwrap_or(text)
            )
        })
        .collect();
    flags.extend(
        more.iter()
            .map(|p| keel_solve::virtual_package_flag(node.platform, p)),
    );
    flags.sort();
    vec![NodeHasMore {
        platform: node.platform.to_string(),
        virtual_packages: more.iter().map(keel_solve::recorded_spelling).collect(),
        virtual_package_flags: flags,
    }]
}

/// `keel lock`'s progress: a spinner per repodata download on stderr, a bar once its size is
/// known, cleared when done; nothing is drawn when stderr is not a terminal.
#[derive(Debug)]
struct DownloadBars {
    multi: MultiProgress,
    bars: std::sync::Mutex<(usize, std::collections::HashMap<usize, ProgressBar>)>,
}

impl Default for DownloadBars {
    fn default() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: std::sync::Mutex::default(),
        }
    }
}

impl DownloadBars {
    fn bars(
        &self,
    ) -> std::sync::MutexGuard<'_, (usize, std::collections::HashMap<usize, ProgressBar>)> {
        // A panic while a bar was drawn leaves nothing a later call cannot use.
        self.bars
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl keel_solve::LockProgress for DownloadBars {
    fn download_started(&self, url: &str) -> usize {
        let bar = self.multi.add(ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template("{spinner:.green} {msg:.dim}")
                .expect("a valid progress template"),
        );
        bar.set_message(format!("fetching {}", shown_url(url)));
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        let mut bars = self.bars();
        let index = bars.0;
        bars.0 += 1;
        bars.1.insert(index, bar);
        index
    }

    fn download_progress(&self, index: usize, bytes: u64, total: Option<u64>) {
        let bars = self.bars();
        let Some(bar) = bars.1.get(&index) else {
            return;
        };
        if let Some(total) = total
            && bar.length() != Some(total)
        {
            bar.set_length(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner:.green} [{bar:20.cyan/blue}] {bytes}/{total_bytes} {msg:.dim}",
                )
                .expect("a valid progress template")
                .progress_chars("━━╾─"),
            );
        }
        bar.set_position(bytes);
    }

    fn download_done(&self, index: usize) {
        if let Some(bar) = self.bars().1.remove(&index) {
            bar.finish_and_clear();
        }
    }
}

/// A repodata URL as a progress bar shows it: without the scheme, and a long path cut to its
/// last piece.
fn shown_url(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let Some((host, path)) = rest.split_once('/') else {
        return crate::prefix::shown(rest).into_owned();
    };
    let text = if path.len() > 50 {
        format!("{host}/.../{}", path.rsplit('/').next().unwrap_or_default())
    } else {
        format!("{host}/{path}")
    };
    crate::prefix::shown(&text).into_owned()
}

#[derive(Serialize)]
struct LockJson<'a> {
    lock: String,
    inputs_hash: &'a str,
    platforms: &'a [keel_solve::PlatformSummary],
    written: Vec<String>,
    node_has_more: &'a [NodeHasMore],
}

#[derive(Serialize)]
struct CheckJson {
    lock: String,
    fresh: bool,
    recorded_hash: Option<String>,
    inputs_hash: String,
    reasons: Vec<String>,
}

pub(crate) fn run(args: LockArgs) -> miette::Result<Exit> {
    let mut settings = LockSettings::from_args(args)?;
    let checked = keel_spec::check_path(&settings.file).into_diagnostic()?;
    render::problems(&checked.report);
    let Some(spec) = checked.spec.clone() else {
        return Ok(Exit::BadInput);
    };
    if settings.check {
        if settings.detect {
            settings.options.detected = node_virtual_packages(true)?;
        }
        return check(&settings, &spec);
    }

    let previous = keel_solve::read_lock(&settings.output).into_diagnostic()?;
    settings.options.progress = Some(std::sync::Arc::new(DownloadBars::default()));
    // This node's virtual packages: what the lock assumes with --detect, and else only what
    // the report compares the lock with.
    let node = node_virtual_packages(settings.detect)?;
    if settings.detect {
        settings.options.detected.clone_from(&node);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .into_diagnostic()?;
    let result = runtime.block_on(keel_solve::lock(
        &spec,
        &settings.file,
        &settings.options,
        previous.as_ref().map(|(lock, _)| lock),
    ));
    let locked = match result {
        Ok(locked) => locked,
        Err(SolveError::Unsolvable {
            platform,
            explanation,
            spec_lines,
        }) => {
            let mut diagnostic = MietteDiagnostic::new(format!(
                "the environment cannot be solved for {platform}:\n{explanation}"
            ))
            .with_help("loosen or change the specs the solver names, or add a channel that provides what is missing");
            for line in spec_lines.iter().filter_map(|l| l.location) {
                diagnostic = diagnostic.with_label(LabeledSpan::new(
                    Some("requested here".to_owned()),
                    line.offset,
                    line.len,
                ));
            }
            let report = miette::Report::new(diagnostic).with_source_code(NamedSource::new(
                settings.file.display().to_string(),
                redact_source(&checked.report.text),
            ));
            render::error(&report);
            return Ok(Exit::BadInput);
        }
        Err(error @ SolveError::NoPlatform) => {
            return Err(miette::miette!(
                help = "pass --platform, or list `platforms:` in the environment file",
                "{error}"
            ))
            .wrap_err_with(|| format!("keel lock {}", settings.file.display()));
        }
        Err(error) => {
            return Err(error)
                .into_diagnostic()
                .wrap_err_with(|| format!("keel lock {}", settings.file.display()));
        }
    };

    // The lock and the exports are rendered before anything is written. The lock is written
    // whatever an export says; an export that cannot render (a package its format cannot
    // hold) is named with the package and the reason, and leaves its own file as it was.
    let lock_dir = settings
        .output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let lock_dir = fs_err::canonicalize(&lock_dir).unwrap_or(lock_dir);
    let mut outputs: Vec<(PathBuf, String)> = vec![(settings.output.clone(), locked.text.clone())];
    let mut failed: Vec<(PathBuf, SolveError)> = Vec::new();
    if let Some(dir) = &settings.explicit {
        for platform in locked.lock.platforms() {
            let subdir = platform.subdir();
            let hash = locked.content_hashes.get(&subdir).map(String::as_str);
            let path = dir.join(format!("explicit-{subdir}.txt"));
            match keel_solve::explicit(&locked.lock, subdir, &lock_dir, hash) {
                Ok(Some(text)) => outputs.push((path, text)),
                Ok(None) => {}
                Err(error) => failed.push((path, error)),
            }
        }
    }
    if let Some(path) = &settings.conda_lock {
        let source = settings.file.file_name().map_or_else(
            || "environment.yml".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        match keel_solve::conda_lock_yml(&locked.lock, &lock_dir, &source, &locked.content_hashes) {
            Ok(text) => outputs.push((path.clone(), text)),
            Err(error) => failed.push((path.clone(), error)),
        }
    }
    let mut written = Vec::new();
    for (path, text) in outputs {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs_err::create_dir_all(dir).into_diagnostic()?;
        }
        write_atomically(&path, text.as_bytes())?;
        written.push(path.display().to_string());
    }
    if let Some((path, error)) = failed.into_iter().next() {
        return Err(error).into_diagnostic().wrap_err(format!(
            "{} was not written ({} written: {})",
            path.display(),
            if written.len() == 1 {
                "this was"
            } else {
                "these were"
            },
            written.join(", ")
        ));
    }
    report(
        &settings,
        &locked,
        written,
        &node_has_more(&locked, node.as_ref()),
    )?;
    Ok(Exit::Ok)
}

fn report(
    settings: &LockSettings,
    locked: &Locked,
    written: Vec<String>,
    more: &[NodeHasMore],
) -> miette::Result<()> {
    let mut stdout = std::io::stdout().lock();
    if settings.json {
        let json = LockJson {
            lock: settings.output.display().to_string(),
            inputs_hash: &locked.inputs_hash,
            platforms: &locked.platforms,
            written,
            node_has_more: more,
        };
        return render::json(&json);
    }
    let width = locked
        .platforms
        .iter()
        .map(|p| p.platform.len())
        .max()
        .unwrap_or(8)
        .max("PLATFORM".len());
    let from_width = locked
        .platforms
        .iter()
        .map(|p| p.virtual_packages_from.describe().len())
        .max()
        .unwrap_or(0)
        .max("ASSUMED".len());
    let _ = writeln!(
        stdout,
        "{:<width$}  CONDA  PYPI  {:<from_width$}  VIRTUAL PACKAGES",
        "PLATFORM", "ASSUMED"
    );
    for platform in &locked.platforms {
        let _ = writeln!(
            stdout,
            "{:<width$}  {:<5}  {:<4}  {:<from_width$}  {}",
            platform.platform,
            platform.packages,
            platform.pypi_packages,
            platform.virtual_packages_from.describe(),
            platform.virtual_packages.join(" ")
        );
    }
    for path in written {
        let _ = writeln!(stdout, "wrote {path}");
    }
    for hint in more {
        let flags: Vec<String> = hint
            .virtual_package_flags
            .iter()
            .map(|flag| format!("--virtual-package {flag}"))
            .collect();
        let _ = writeln!(
            stdout,
            "note: this node has {} that the lock does not assume for {}; to lock for it: \
             keel lock {} (or keel lock --detect, for all this node has)",
            hint.virtual_packages.join(" "),
            hint.platform,
            flags.join(" ")
        );
    }
    Ok(())
}

/// `--check`: the lock exists, reads, and was made from the same inputs
/// ([`keel_solve::check_fresh`]).
fn check(settings: &LockSettings, spec: &keel_spec::EnvironmentSpec) -> miette::Result<Exit> {
    let Some((lock, recorded)) = keel_solve::read_lock(&settings.output).into_diagnostic()? else {
        miette::bail!(
            "no lock at {}: run `keel lock {}` first",
            settings.output.display(),
            settings.file.display()
        );
    };
    let freshness = keel_solve::check_fresh(spec, &lock, recorded.as_deref(), &settings.options)
        .into_diagnostic()?;
    let fresh = freshness.is_fresh();
    let reasons: Vec<String> = freshness.reasons.iter().map(ToString::to_string).collect();
    let mut stdout = std::io::stdout().lock();
    if settings.json {
        let json = CheckJson {
            lock: settings.output.display().to_string(),
            fresh,
            recorded_hash: freshness.recorded_hash,
            inputs_hash: freshness.inputs_hash,
            reasons,
        };
        render::json(&json)?;
    } else if fresh {
        let _ = writeln!(stdout, "{} is up to date", settings.output.display());
    } else {
        let _ = writeln!(stdout, "{} is stale:", settings.output.display());
        for reason in &reasons {
            let _ = writeln!(stdout, "  - {reason}");
        }
    }
    Ok(if fresh { Exit::Ok } else { Exit::Found })
}

/// Writes through a temporary file in the same folder and a rename, so that a failed write
/// never leaves a half-written lock where the old one was.
fn write_atomically(path: &Path, bytes: &[u8]) -> miette::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "keel".into(), |n| n.to_string_lossy().into_owned());
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs_err::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs_err::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs_err::remove_file(&temp);
    }
    result
        .into_diagnostic()
        .wrap_err_with(|| format!("failed to write {}", path.display()))
}

/// The environment file as shown around a diagnostic: each line holding a URL with
/// credentials (a channel, a pip `--index-url`) redacted ([`keel_solve::redact_text`]) and
/// padded to its length, so that the labels' offsets still point where they did.
fn redact_source(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| {
            let (body, end) = match line.strip_suffix('\n') {
                Some(body) => (body, "\n"),
                None => (line, ""),
            };
            let mut redacted = keel_solve::redact_text(body);
            if redacted == body {
                return line.to_owned();
            }
            while redacted.len() > body.len() {
                redacted.pop();
            }
            let padding = body.len() - redacted.len();
            redacted.extend(std::iter::repeat_n(' ', padding));
            redacted + end
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::redact_source;

    /// Hardening issue #13: the environment file drawn around an unsolvable spec showed the
    /// channel's credentials; each line keeps its length so the labels still fit.
    #[test]
    fn redact_source_keeps_offsets_and_drops_credentials() {
        let text = "channels:\n  - https://alice:hunter2@host/t/tok3n/c?token=qs1\ndependencies:\n  - numpy\n";
        let shown = redact_source(text);
        assert_eq!(shown.len(), text.len());
        assert_eq!(shown.find("- numpy"), text.find("- numpy"));
        for secret in ["alice", "hunter2", "tok3n", "qs1"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("https://host/c"));
    }
}
