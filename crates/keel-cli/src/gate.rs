//! The environment gate of `keel train`: what this rank runs on (its prefix's fingerprint,
//! its devices, keel, the configuration) as `keel_dist::RankFacts`, and the verdict shown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keel_cuda::ProbeReport;
use keel_dist::{GateReport, RankFacts};
use keel_prefix::{Fingerprint, HashOptions};
use miette::{IntoDiagnostic as _, WrapErr as _};

use crate::render;

/// The environment a run records in its checkpoints and the gate compares.
#[derive(Debug, Default)]
pub(crate) struct Environment {
    /// The fingerprint (`keel hash --json`) recorded in every checkpoint.
    pub(crate) fingerprint: Option<serde_json::Value>,
    root: Option<String>,
    packages: BTreeMap<String, String>,
}

impl Environment {
    fn of(fingerprint: &Fingerprint) -> miette::Result<Environment> {
        // Checkpoints record the root and the packages, not the list of every file: a large
        // environment's runs to megabytes, in every manifest (which holds at most 16 MiB).
        let mut recorded = serde_json::to_value(fingerprint).into_diagnostic()?;
        if let Some(object) = recorded.as_object_mut() {
            object.remove("files");
        }
        Ok(Environment {
            fingerprint: Some(recorded),
            root: Some(fingerprint.root.clone()),
            packages: fingerprint
                .packages
                .iter()
                .map(|p| (p.name.clone(), format!("{} {}", p.version, p.build)))
                .collect(),
        })
    }
}

/// The prefix to fingerprint: `--prefix`, else (one of several ranks) `$CONDA_PREFIX`. A
/// single process without `--prefix` fingerprints nothing, as before the gate existed.
pub(crate) fn prefix_to_hash(prefix: Option<&Path>, several_ranks: bool) -> Option<PathBuf> {
    prefix.map(Path::to_path_buf).or_else(|| {
        several_ranks
            .then(|| std::env::var_os("CONDA_PREFIX"))
            .flatten()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    })
}

/// This rank's environment: the fingerprint of `prefix` (with the stat cache, so a re-run
/// of an unchanged prefix reads no file), or the one written to `file` by `keel hash --json`.
pub(crate) fn environment(
    prefix: Option<&Path>,
    file: Option<&Path>,
    host: &str,
) -> miette::Result<Environment> {
    if let Some(file) = file {
        let fingerprint = Fingerprint::from_path(file).into_diagnostic()?;
        return Environment::of(&fingerprint);
    }
    let Some(prefix) = prefix else {
        return Ok(Environment::default());
    };
    let options = HashOptions {
        cache_dir: Some(render::cache_dir("fingerprints")),
        label: Some(host.to_string()),
        ..HashOptions::default()
    };
    let (fingerprint, _) = keel_prefix::fingerprint(prefix, &options)
        .into_diagnostic()
        .wrap_err_with(|| {
            format!(
                "keel train --prefix {}: the environment gate fingerprints it",
                crate::prefix::shown(&prefix.to_string_lossy())
            )
        })?;
    Environment::of(&fingerprint)
}

/// The BLAKE3 of the configuration file's bytes (none: the built-in run) and of the command
/// line settings that change the run (`--epochs`, `--runs-dir`), so that ranks started with
/// other settings differ. `--device` is left out: ranks of one node may use different GPUs.
pub(crate) fn config_hash(bytes: &[u8], epochs: Option<u64>, runs_dir: Option<&Path>) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
    if let Some(epochs) = epochs {
        hasher.update(b"\0--epochs\0");
        hasher.update(&epochs.to_le_bytes());
    }
    if let Some(dir) = runs_dir {
        hasher.update(b"\0--runs-dir\0");
        hasher.update(dir.as_os_str().as_encoded_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// This rank's facts for `keel_dist::gate`.
pub(crate) fn facts(
    rank: usize,
    host: &str,
    environment: &Environment,
    probe: Option<&ProbeReport>,
    config_hash: String,
) -> RankFacts {
    let driver = probe.and_then(|p| p.driver.as_ref());
    RankFacts {
        rank,
        host: host.to_string(),
        fingerprint_root: environment.root.clone(),
        packages: environment.packages.clone(),
        driver: driver.and_then(|d| d.version.clone()),
        cuda: driver.map(|d| d.cuda_version.to_string()),
        gpus: probe
            .map(|p| p.devices.iter().map(|d| d.name.clone()).collect())
            .unwrap_or_default(),
        keel_version: env!("CARGO_PKG_VERSION").to_string(),
        config_hash,
    }
}

/// What rank 0 prints when the ranks differ.
pub(crate) fn refusal(report: &GateReport, allowed: bool) -> String {
    let head = if allowed {
        "warning: the ranks' environments differ; --allow-env-drift: training anyway"
    } else {
        "error: the ranks' environments differ; every rank stops before training (exit 2). \
         Make them agree, or pass --allow-env-drift to train anyway"
    };
    format!("{head}\n{report}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_hash_changes_with_the_bytes_and_the_overrides() {
        let base = config_hash(b"epochs = 1\n", None, None);
        assert_eq!(base, config_hash(b"epochs = 1\n", None, None));
        assert_ne!(base, config_hash(b"epochs = 2\n", None, None));
        assert_ne!(base, config_hash(b"epochs = 1\n", Some(1), None));
        assert_ne!(
            base,
            config_hash(b"epochs = 1\n", None, Some(Path::new("runs")))
        );
    }

    #[test]
    fn single_process_fingerprints_only_a_prefix_it_was_given() {
        let given = Path::new("/opt/env");
        assert_eq!(prefix_to_hash(Some(given), false).as_deref(), Some(given));
        // $CONDA_PREFIX is only read for several ranks.
        assert_eq!(prefix_to_hash(None, false), None);
    }
}
