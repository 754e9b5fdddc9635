//! Whether a lock still matches its environment file, without solving (`keel lock --check`).

use keel_spec::EnvironmentSpec;
use rattler_conda_types::Subdir;
use rattler_lock::LockFile;
use serde::Serialize;

use crate::lockfile::inputs_hash;
use crate::options::LockOptions;

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
    /// A virtual package given now is not one the platform was solved with.
    VirtualPackage {
        /// The platform.
        platform: String,
        /// The virtual package given, `__name=version=build`.
        given: String,
        /// The virtual packages the lock records for the platform.
        recorded: Vec<String>,
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
            Stale::VirtualPackage {
                platform,
                given,
                recorded,
            } => write!(
                f,
                "{platform} was solved without {given} (it has {})",
                recorded.join(" ")
            ),
        }
    }
}

/// Whether `lock` (whose header recorded `recorded_hash`, see [`crate::read_lock`]) was made
/// from `spec` with `options`: the inputs hash over the options' platforms (else the lock's
/// own) must equal the recorded one, and every virtual package the options give must be one
/// the lock recorded for that platform. Nothing is solved and nothing is read from disk.
pub fn check_fresh(
    spec: &EnvironmentSpec,
    lock: &LockFile,
    recorded_hash: Option<&str>,
    options: &LockOptions,
) -> Freshness {
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
    // Virtual packages given now must be the ones the lock was solved with.
    for platform in lock.platforms() {
        let recorded = platform.virtual_packages();
        let given = options.virtual_packages.all.iter().chain(
            options
                .virtual_packages
                .per_platform
                .get(&platform.subdir())
                .into_iter()
                .flatten(),
        );
        for package in given {
            let text = package.to_string();
            if !recorded.contains(&text) {
                reasons.push(Stale::VirtualPackage {
                    platform: platform.subdir().to_string(),
                    given: text,
                    recorded: recorded.to_vec(),
                });
            }
        }
    }
    Freshness {
        recorded_hash: recorded_hash.map(str::to_owned),
        inputs_hash: expected,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use rattler_lock::{DEFAULT_ENVIRONMENT_NAME, PlatformData, PlatformName};

    use super::*;
    use crate::VirtualPackageOverridesByPlatform;

    fn spec(text: &str) -> EnvironmentSpec {
        keel_spec::parse_str(text, "environment.yml").unwrap().spec
    }

    /// A lock for linux-64 and osx-arm64 that records `__cuda=12.4=0` and `__glibc=2.28=0` for
    /// linux-64 only.
    fn lock() -> LockFile {
        let platforms = [
            (Subdir::Linux64, vec!["__cuda=12.4=0", "__glibc=2.28=0"]),
            (Subdir::OsxArm64, vec!["__osx=11.0=0"]),
        ];
        let mut builder = LockFile::builder()
            .with_platforms(
                platforms
                    .iter()
                    .map(|(subdir, virtual_packages)| PlatformData {
                        name: PlatformName::from(subdir),
                        subdir: *subdir,
                        virtual_packages: virtual_packages.iter().map(|v| v.to_string()).collect(),
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
        let freshness = check_fresh(&spec, &lock(), Some(&hash), &LockOptions::default());
        assert!(freshness.is_fresh(), "{freshness:?}");
        assert_eq!(freshness.inputs_hash, hash);
        assert_eq!(freshness.recorded_hash.as_deref(), Some(hash.as_str()));
    }

    #[test]
    fn a_changed_file_or_priority_or_platform_list_is_stale() {
        let before = spec(SPEC);
        let hash = hash_now(&before);
        let after = spec("channels: [conda-forge]\ndependencies: [python=3.11]\n");
        let freshness = check_fresh(&after, &lock(), Some(&hash), &LockOptions::default());
        assert_eq!(freshness.reasons, [Stale::InputsChanged]);
        assert_eq!(
            freshness.reasons[0].to_string(),
            "the environment file, its channels, the platforms or the channel priority changed"
        );

        let flexible = LockOptions {
            channel_priority: rattler_solve::ChannelPriority::Flexible,
            ..LockOptions::default()
        };
        let freshness = check_fresh(&before, &lock(), Some(&hash), &flexible);
        assert_eq!(freshness.reasons, [Stale::InputsChanged]);

        // Platforms given now replace the lock's own in the hash.
        let linux_only = LockOptions {
            platforms: vec![Subdir::Linux64],
            ..LockOptions::default()
        };
        let freshness = check_fresh(&before, &lock(), Some(&hash), &linux_only);
        assert_eq!(freshness.reasons, [Stale::InputsChanged]);
    }

    #[test]
    fn a_lock_without_keels_header_is_stale() {
        let spec = spec(SPEC);
        let freshness = check_fresh(&spec, &lock(), None, &LockOptions::default());
        assert_eq!(freshness.reasons, [Stale::NoInputsHash]);
        assert_eq!(freshness.recorded_hash, None);
        assert_eq!(
            freshness.reasons[0].to_string(),
            "the lock has no keel inputs hash (not written by keel lock)"
        );
    }

    #[test]
    fn virtual_packages_given_must_be_the_ones_solved_with() {
        let spec = spec(SPEC);
        let hash = hash_now(&spec);
        let mut virtual_packages = VirtualPackageOverridesByPlatform::default();
        virtual_packages.add("linux-64:__cuda=12.4").unwrap();
        let same = LockOptions {
            virtual_packages,
            ..LockOptions::default()
        };
        assert!(check_fresh(&spec, &lock(), Some(&hash), &same).is_fresh());

        // For every platform: osx-arm64 was solved without it, and linux-64 with 12.4.
        let mut virtual_packages = VirtualPackageOverridesByPlatform::default();
        virtual_packages.add("__cuda=12.2").unwrap();
        let other = LockOptions {
            virtual_packages,
            ..LockOptions::default()
        };
        let freshness = check_fresh(&spec, &lock(), Some(&hash), &other);
        let reasons: Vec<String> = freshness.reasons.iter().map(ToString::to_string).collect();
        assert_eq!(
            reasons,
            [
                "linux-64 was solved without __cuda=12.2=0 (it has __cuda=12.4=0 __glibc=2.28=0)",
                "osx-arm64 was solved without __cuda=12.2=0 (it has __osx=11.0=0)",
            ]
        );
    }
}
