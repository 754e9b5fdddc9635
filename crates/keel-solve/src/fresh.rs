//! Whether a lock still matches its environment file, without solving (`keel lock --check`).

use keel_spec::EnvironmentSpec;
use rattler_conda_types::Subdir;
use rattler_lock::LockFile;
use serde::Serialize;

use crate::SolveError;
use crate::lockfile::inputs_hash;
use crate::options::LockOptions;
use crate::virtual_packages::{assumed_virtual_packages, recorded_spelling};

/// [`check_fresh`]'s answer: the hashes it compared and every reason the lock is stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Freshness {
    /// The inputs hash in the lock's header (`None`: a lock keel did not write).
    pub recorded_hash: Option<String>,
    /// The hash of the inputs now ([`inputs_hash`]).
    pub inputs_hash: String,
    /// Why the lock is stale; empty when it is fresh.
    pub reasons: Vec<Stale>,
}

impl Freshness {
    /// The lock was made from these inputs and these virtual packages.
    pub fn is_fresh(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// One reason a lock is stale. `Display` says it in a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Stale {
    /// The lock's header has no inputs hash: it was not written by keel.
    NoInputsHash,
    /// The environment file, its channels, the platforms or the channel priority changed.
    InputsChanged,
    /// The virtual packages a re-lock would assume for a platform (the options'
    /// `--virtual-package` values or `--detect`, see [`crate::assumed_virtual_packages`])
    /// differ from the ones the lock records for it.
    VirtualPackages {
        /// The platform.
        platform: String,
        /// Assumed now and not by the lock, `__name=version=build`.
        missing: Vec<String>,
        /// Assumed by the lock and not now.
        extra: Vec<String>,
    },
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stale::NoInputsHash => {
                f.write_str("the lock has no keel inputs hash (not written by keel lock)")
            }
            Stale::InputsChanged => f.write_str(
                "the environment file, its channels, the platforms or the channel priority changed",
            ),
            Stale::VirtualPackages {
                platform,
                missing,
                extra,
            } => {
                write!(f, "{platform} was solved")?;
                if !missing.is_empty() {
                    write!(f, " without {}", missing.join(" "))?;
                }
                if !missing.is_empty() && !extra.is_empty() {
                    f.write_str(" and")?;
                }
                if !extra.is_empty() {
                    write!(f, " with {}", extra.join(" "))?;
                }
                Ok(())
            }
        }
    }
}

/// Whether `lock` (whose header recorded `recorded_hash`, see [`crate::read_lock`]) was made
/// from `spec` with `options`: the inputs hash over the options' platforms (else the lock's
/// own) must equal the recorded one, and for every platform the virtual packages a re-lock
/// with these options would assume ([`crate::assumed_virtual_packages`], the lock's own set
/// when the options give none for it) must be the ones the lock recorded. Nothing is solved
/// and nothing is read from disk or detected (`--detect`'s set comes in the options).
pub fn check_fresh(
    spec: &EnvironmentSpec,
    lock: &LockFile,
    recorded_hash: Option<&str>,
    options: &LockOptions,
) -> Result<Freshness, SolveError> {
    let platforms: Vec<Subdir> = if options.platforms.is_empty() {
        lock.platforms().map(|p| p.subdir()).collect()
    } else {
        options.platforms.clone()
    };
    let expected = inputs_hash(spec, &platforms, options);
    let mut reasons = Vec::new();
    match recorded_hash {
        None => reasons.push(Stale::NoInputsHash),
        Some(hash) if hash != expected => reasons.push(Stale::InputsChanged),
        Some(_) => {}
    }
    for platform in lock.platforms() {
        let recorded = platform.virtual_packages();
        let assumed = assumed_virtual_packages(
            platform.subdir(),
            &options.virtual_packages,
            options.detected.as_ref(),
            Some(recorded),
        )?;
        let assumed: Vec<String> = assumed.packages.iter().map(recorded_spelling).collect();
        let missing: Vec<String> = assumed
            .iter()
            .filter(|p| !recorded.contains(p))
            .cloned()
            .collect();
        let extra: Vec<String> = recorded
            .iter()
            .filter(|p| !assumed.contains(p))
            .cloned()
            .collect();
        if !missing.is_empty() || !extra.is_empty() {
            reasons.push(Stale::VirtualPackages {
                platform: platform.subdir().to_string(),
                missing,
                extra,
            });
        }
    }
    Ok(Freshness {
        recorded_hash: recorded_hash.map(str::to_owned),
        inputs_hash: expected,
        reasons,
    })
}

#[cfg(test)]
mod tests {
    use rattler_lock::{DEFAULT_ENVIRONMENT_NAME, PlatformData, PlatformName};

    use rattler_conda_types::GenericVirtualPackage;

    use super::*;
    use crate::VirtualPackageOverridesByPlatform;

    fn spec(text: &str) -> EnvironmentSpec {
        keel_spec::parse_str(text, "environment.yml").unwrap().spec
    }

    /// A lock for linux-64 and osx-arm64 whose linux-64 assumed its baseline and
    /// `__cuda=12.4` (`keel lock --virtual-package linux-64:__cuda=12.4`) and whose osx-arm64
    /// assumed its baseline.
    fn lock() -> LockFile {
        let linux: Vec<String> =
            assumed_virtual_packages(Subdir::Linux64, &cuda("linux-64:__cuda=12.4"), None, None)
                .unwrap()
                .packages
                .iter()
                .map(recorded_spelling)
                .collect();
        let osx: Vec<String> = crate::baseline_virtual_packages(Subdir::OsxArm64)
            .iter()
            .map(recorded_spelling)
            .collect();
        let platforms = [(Subdir::Linux64, linux), (Subdir::OsxArm64, osx)];
        let mut builder = LockFile::builder()
            .with_platforms(
                platforms
                    .iter()
                    .map(|(subdir, virtual_packages)| PlatformData {
                        name: PlatformName::from(subdir),
                        subdir: *subdir,
                        virtual_packages: virtual_packages.clone(),
                    })
                    .collect(),
            )
            .unwrap();
        for (subdir, _) in &platforms {
            builder
                .add_environment_platform(DEFAULT_ENVIRONMENT_NAME, subdir.as_str())
                .unwrap();
        }
        builder.finish()
    }

    fn cuda(value: &str) -> VirtualPackageOverridesByPlatform {
        let mut given = VirtualPackageOverridesByPlatform::default();
        given.add(value).unwrap();
        given
    }

    const SPEC: &str = "channels: [conda-forge]\ndependencies: [python=3.10]\n";

    fn hash_now(spec: &EnvironmentSpec) -> String {
        inputs_hash(
            spec,
            &[Subdir::Linux64, Subdir::OsxArm64],
            &LockOptions::default(),
        )
    }

    #[test]
    fn a_lock_of_the_same_inputs_is_fresh() {
        let spec = spec(SPEC);
        let hash = hash_now(&spec);
        let freshness = check_fresh(&spec, &lock(), Some(&hash), &LockOptions::default()).unwrap();
        assert!(freshness.is_fresh(), "{freshness:?}");
        assert_eq!(freshness.inputs_hash, hash);
        assert_eq!(freshness.recorded_hash.as_deref(), Some(hash.as_str()));
    }

    #[test]
    fn a_changed_file_or_priority_or_platform_list_is_stale() {
        let before = spec(SPEC);
        let hash = hash_now(&before);
        let after = spec("channels: [conda-forge]\ndependencies: [python=3.11]\n");
        let freshness = check_fresh(&after, &lock(), Some(&hash), &LockOptions::default()).unwrap();
        assert_eq!(freshness.reasons, [Stale::InputsChanged]);
        assert_eq!(
            freshness.reasons[0].to_string(),
            "the environment file, its channels, the platforms or the channel priority changed"
        );

        let flexible = LockOptions {
            channel_priority: rattler_solve::ChannelPriority::Flexible,
            ..LockOptions::default()
        };
        let freshness = check_fresh(&before, &lock(), Some(&hash), &flexible).unwrap();
        assert_eq!(freshness.reasons, [Stale::InputsChanged]);

        // Platforms given now replace the lock's own in the hash.
        let linux_only = LockOptions {
            platforms: vec![Subdir::Linux64],
            ..LockOptions::default()
        };
        let freshness = check_fresh(&before, &lock(), Some(&hash), &linux_only).unwrap();
        assert_eq!(freshness.reasons, [Stale::InputsChanged]);
    }

    #[test]
    fn a_lock_without_keels_header_is_stale() {
        let spec = spec(SPEC);
        let freshness = check_fresh(&spec, &lock(), None, &LockOptions::default()).unwrap();
        assert_eq!(freshness.reasons, [Stale::NoInputsHash]);
        assert_eq!(freshness.recorded_hash, None);
        assert_eq!(
            freshness.reasons[0].to_string(),
            "the lock has no keel inputs hash (not written by keel lock)"
        );
    }

    #[test]
    fn virtual_packages_given_must_be_the_ones_a_relock_keeps() {
        let spec = spec(SPEC);
        let hash = hash_now(&spec);
        let fresh = |given: VirtualPackageOverridesByPlatform| {
            let options = LockOptions {
                virtual_packages: given,
                ..LockOptions::default()
            };
            check_fresh(&spec, &lock(), Some(&hash), &options).unwrap()
        };
        // The value the lock was made with, given again or not given at all: fresh.
        assert!(fresh(cuda("linux-64:__cuda=12.4")).is_fresh());
        assert!(fresh(VirtualPackageOverridesByPlatform::default()).is_fresh());

        // For every platform: a re-lock would assume 12.2 on both, so both are stale.
        let freshness = fresh(cuda("__cuda=12.2"));
        let reasons: Vec<String> = freshness.reasons.iter().map(ToString::to_string).collect();
        assert_eq!(
            reasons,
            [
                "linux-64 was solved without __cuda=12.2 and with __cuda=12.4",
                "osx-arm64 was solved without __cuda=12.2",
            ]
        );
        // Another value for linux-64 alone replaces its set: the lock's __cuda is extra.
        let freshness = fresh(cuda("linux-64:__glibc=2.28"));
        assert_eq!(
            freshness.reasons,
            [Stale::VirtualPackages {
                platform: "linux-64".to_owned(),
                missing: Vec::new(),
                extra: vec!["__cuda=12.4".to_owned()],
            }]
        );
        assert_eq!(
            freshness.reasons[0].to_string(),
            "linux-64 was solved with __cuda=12.4"
        );
    }

    /// `--detect` on a node whose GPU the lock did not assume: stale for that platform only.
    #[test]
    fn a_detected_node_must_be_what_the_lock_assumed() {
        let spec = spec(SPEC);
        let hash = hash_now(&spec);
        let mut packages = crate::baseline_virtual_packages(Subdir::Linux64);
        packages.push(GenericVirtualPackage {
            name: "__cuda".parse().unwrap(),
            version: "12.8".parse().unwrap(),
            build_string: "0".parse().unwrap(),
        });
        let options = LockOptions {
            detected: Some(crate::NodeVirtualPackages {
                platform: Subdir::Linux64,
                packages,
            }),
            ..LockOptions::default()
        };
        let freshness = check_fresh(&spec, &lock(), Some(&hash), &options).unwrap();
        let reasons: Vec<String> = freshness.reasons.iter().map(ToString::to_string).collect();
        assert_eq!(
            reasons,
            ["linux-64 was solved without __cuda=12.8=0 and with __cuda=12.4"]
        );
    }
}
