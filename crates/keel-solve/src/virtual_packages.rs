//! The virtual packages (`__cuda`, `__glibc`, ...) a solve assumes for each platform.
//!
//! A lock is a function of its declared inputs, not of the node that solved it: each
//! platform assumes its baseline (what every machine of that platform is taken to have, as
//! pixi and conda-lock assume it), the command line's `--virtual-package` values, and this
//! node's own detection only when asked (`keel lock --detect`). Without any of those for a
//! platform, a re-lock keeps what the previous lock assumed, so `keel lock` after
//! `keel lock --virtual-package __cuda=12.4` still locks for CUDA 12.4 on any node.

use std::collections::BTreeMap;
use std::str::FromStr;

use rattler_conda_types::package::BuildString;
use rattler_conda_types::{GenericVirtualPackage, PackageName, Subdir, Version};
use rattler_virtual_packages::{VirtualPackageOverrides, VirtualPackages};
use serde::Serialize;

use crate::SolveError;

/// Virtual packages given on the command line (`--virtual-package __cuda=12.4` for every
/// platform, `--virtual-package linux-64:__cuda=12.4` for one). They replace what the
/// platform's baseline (or `--detect`) gives for the same name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtualPackageOverridesByPlatform {
    /// For every platform.
    pub all: Vec<GenericVirtualPackage>,
    /// For one platform.
    pub per_platform: BTreeMap<Subdir, Vec<GenericVirtualPackage>>,
}

impl VirtualPackageOverridesByPlatform {
    /// Adds one `[PLATFORM:]__name=version[=build]` value.
    pub fn add(&mut self, value: &str) -> Result<(), SolveError> {
        let (platform, package) = match value.split_once(':') {
            Some((platform, package)) if !platform.starts_with("__") => {
                let platform =
                    Subdir::from_str(platform).map_err(|e| SolveError::VirtualPackage {
                        value: value.to_owned(),
                        reason: e.to_string(),
                    })?;
                (Some(platform), package)
            }
            _ => (None, value),
        };
        let package =
            parse_virtual_package(package).map_err(|reason| SolveError::VirtualPackage {
                value: value.to_owned(),
                reason,
            })?;
        match platform {
            Some(platform) => self.per_platform.entry(platform).or_default().push(package),
            None => self.all.push(package),
        }
        Ok(())
    }

    /// The values given for `platform`: those for every platform, then its own.
    pub fn for_platform(&self, platform: Subdir) -> impl Iterator<Item = &GenericVirtualPackage> {
        self.all
            .iter()
            .chain(self.per_platform.get(&platform).into_iter().flatten())
    }
}

/// Parses `__name=version[=build]` (an empty build when it is left out, as pixi writes
/// `__glibc=2.28`).
fn parse_virtual_package(text: &str) -> Result<GenericVirtualPackage, String> {
    let mut parts = text.splitn(3, '=');
    let name = parts.next().unwrap_or_default().trim();
    if !name.starts_with("__") {
        return Err("a virtual package name starts with `__`".to_owned());
    }
    let name = PackageName::from_str(name).map_err(|e| e.to_string())?;
    let version = parts
        .next()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| "expected `__name=version`".to_owned())?;
    let version = Version::from_str(version).map_err(|e| e.to_string())?;
    // rattler's BuildString refuses an empty build (CEP 26, for packages); a virtual package
    // given as `__name=version` has none, as pixi records it, and no match spec of a virtual
    // package other than `__archspec` names a build.
    let build_string = match parts.next() {
        None | Some("") => BuildString::new_unchecked(""),
        Some(build) => BuildString::from_str(build).map_err(|e| e.to_string())?,
    };
    Ok(GenericVirtualPackage {
        name,
        version,
        build_string,
    })
}

/// This node's virtual packages, for its own platform: what `--detect` locks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeVirtualPackages {
    /// This node's platform.
    pub platform: Subdir,
    /// What it has, sorted by name.
    pub packages: Vec<GenericVirtualPackage>,
}

/// Detects this node's virtual packages with rattler (honouring `CONDA_OVERRIDE_GLIBC`,
/// `CONDA_OVERRIDE_CUDA`, ... as conda does); `probed` (the caller's own GPU driver probe:
/// keel's `__cuda` and `__cuda_arch`) replaces rattler's reading of the same names. `None`
/// when this machine's platform is not one conda knows.
pub fn detect_node(
    probed: &[GenericVirtualPackage],
) -> Result<Option<NodeVirtualPackages>, SolveError> {
    let Some(platform) = Subdir::current() else {
        return Ok(None);
    };
    let detected = VirtualPackages::detect(&VirtualPackageOverrides::from_env(), None)
        .map_err(SolveError::DetectVirtualPackages)?;
    let mut by_name = by_name(detected.into_generic_virtual_packages());
    overlay(&mut by_name, probed);
    Ok(Some(NodeVirtualPackages {
        platform,
        packages: finish(by_name),
    }))
}

/// The virtual packages every machine of `platform` is assumed to have: `__unix`; for Linux
/// `__linux=4.18` and `__glibc=2.28` (RHEL 8; 2.39 for linux-riscv64); for macOS
/// `__osx=13.0`; for Windows `__win=10.0`; and the oldest `__archspec` of the platform's CPU
/// family (`x86_64`, `aarch64`, `m1`, ...). No GPU: no platform is assumed to have one.
///
/// The versions are rattler_virtual_packages 8.1.5's `VirtualPackages::baseline_for_platform`,
/// which are pixi 0.77.0's defaults (`pixi_default_versions`: glibc 2.28, linux 4.18, macOS
/// 13.0, Windows 10.0; `__archspec` from `Archspec::from_platform`), written as pixi writes
/// them in `pixi.lock` (`subdir_default_virtual_packages`): `__linux=4.18`, `__glibc=2.28`,
/// `__osx=13.0`, `__win=10.0` without a build, `__unix=0=0`, `__archspec=0=x86_64`. pixi's
/// satisfiability check leaves out exactly these values before it compares a lock's platform
/// with its manifest, so a keel lock's baseline reads to pixi as a platform nobody changed.
/// Sorted by name.
pub fn baseline_virtual_packages(platform: Subdir) -> Vec<GenericVirtualPackage> {
    let pixi_spelling = VirtualPackages::baseline_for_platform(platform)
        .into_generic_virtual_packages()
        .map(|mut package| {
            match package.name.as_normalized() {
                "__linux" | "__glibc" | "__osx" | "__win" => {
                    package.build_string = BuildString::new_unchecked("");
                }
                "__archspec" => package.version = Version::major(0),
                _ => {}
            }
            package
        });
    finish(by_name(pixi_spelling))
}

/// A virtual package as a lock records it, as pixi writes it: `__name=version=build`, or
/// `__name=version` when the build is empty (`__glibc=2.28`, `__cuda=12.4` given without a
/// build).
pub fn recorded_spelling(package: &GenericVirtualPackage) -> String {
    if package.build_string.is_empty() {
        format!("{}={}", package.name.as_normalized(), package.version)
    } else {
        package.to_string()
    }
}

/// Where the virtual packages a platform's solve assumed came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AssumedFrom {
    /// The platform's baseline ([`baseline_virtual_packages`]), nothing else given.
    Baseline,
    /// The baseline with `--virtual-package` values.
    CommandLine,
    /// This node's detection (`--detect`), with any `--virtual-package` values.
    Detected,
    /// The previous lock's set for the platform, kept as recorded.
    PreviousLock,
}

impl AssumedFrom {
    /// How `keel lock` says it.
    pub fn describe(self) -> &'static str {
        match self {
            AssumedFrom::Baseline => "baseline",
            AssumedFrom::CommandLine => "--virtual-package",
            AssumedFrom::Detected => "--detect",
            AssumedFrom::PreviousLock => "previous lock",
        }
    }
}

/// The virtual packages a platform's solve assumes, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assumed {
    /// Sorted by name.
    pub packages: Vec<GenericVirtualPackage>,
    /// Where they came from.
    pub from: AssumedFrom,
}

/// The virtual packages `platform`'s solve assumes, by one rule:
///
/// 1. With `detected` (`--detect`) and `platform` being the node's: the node's virtual
///    packages, then the command line's values replacing those of the same name.
/// 2. Else, with command-line values for `platform`: the platform's baseline
///    ([`baseline_virtual_packages`]) with those values replacing the same names. They replace
///    what the previous lock assumed, too: the set is what this command says.
/// 3. Else, when the previous lock recorded a set for the platform (`previous`): that set,
///    unchanged, so re-locking on another node changes no byte.
/// 4. Else the baseline.
///
/// As conda's CEP for `__cuda_arch` asks, there is no `__cuda_arch` without a `__cuda`.
/// Sorted by name, so that the lock does not depend on the order of detection or flags. An
/// error names a value of the previous lock that is not `__name=version[=build]`.
pub fn assumed_virtual_packages(
    platform: Subdir,
    given: &VirtualPackageOverridesByPlatform,
    detected: Option<&NodeVirtualPackages>,
    previous: Option<&[String]>,
) -> Result<Assumed, SolveError> {
    let values: Vec<GenericVirtualPackage> = given.for_platform(platform).cloned().collect();
    let (mut by_name, from) = match (detected.filter(|n| n.platform == platform), previous) {
        (Some(node), _) => (
            by_name(node.packages.iter().cloned()),
            AssumedFrom::Detected,
        ),
        (None, Some(previous)) if values.is_empty() && !previous.is_empty() => {
            let recorded = previous
                .iter()
                .map(|text| {
                    parse_virtual_package(text).map_err(|reason| SolveError::VirtualPackage {
                        value: text.clone(),
                        reason: format!("{reason} (recorded for {platform} in the previous lock)"),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            (by_name(recorded), AssumedFrom::PreviousLock)
        }
        (None, _) => (
            by_name(baseline_virtual_packages(platform)),
            if values.is_empty() {
                AssumedFrom::Baseline
            } else {
                AssumedFrom::CommandLine
            },
        ),
    };
    overlay(&mut by_name, &values);
    Ok(Assumed {
        packages: finish(by_name),
        from,
    })
}

/// What this node has that a lock assuming `assumed` was not solved for, where it matters: a
/// GPU. `__cuda` when the lock assumed none or an older one (packages built for this node's
/// CUDA were left out), `__cuda_arch` when the lock assumed none, `__amdgpu` and
/// `__amdgpu_arch` when it assumed none. A newer `__glibc`, `__linux`, `__osx` or a more
/// specific `__archspec` does not count: the baseline is older on purpose, so that the lock
/// installs on every node, and locking for this node's values would tie it to nodes like
/// this one.
///
/// `assumed` is the set as the lock records it (`__name=version=build`); a value that does not
/// read counts as absent.
pub fn unassumed_on_node(
    assumed: &[String],
    node: &[GenericVirtualPackage],
) -> Vec<GenericVirtualPackage> {
    let assumed: Vec<GenericVirtualPackage> = assumed
        .iter()
        .filter_map(|text| parse_virtual_package(text).ok())
        .collect();
    let assumed_version = |name: &str| {
        assumed
            .iter()
            .find(|p| p.name.as_normalized() == name)
            .map(|p| &p.version)
    };
    node.iter()
        .filter(|package| {
            let name = package.name.as_normalized();
            match name {
                "__cuda" => assumed_version(name).is_none_or(|v| *v < package.version),
                "__cuda_arch" | "__amdgpu" | "__amdgpu_arch" => assumed_version(name).is_none(),
                _ => false,
            }
        })
        .cloned()
        .collect()
}

/// A virtual package as a `--virtual-package` value for `platform`:
/// `linux-64:__cuda=12.4` (the build left out when it is empty or the default `0`).
pub fn virtual_package_flag(platform: Subdir, package: &GenericVirtualPackage) -> String {
    let build = package.build_string.as_str();
    if build.is_empty() || build == "0" {
        format!(
            "{platform}:{}={}",
            package.name.as_normalized(),
            package.version
        )
    } else {
        format!(
            "{platform}:{}={}={build}",
            package.name.as_normalized(),
            package.version
        )
    }
}

fn by_name(
    packages: impl IntoIterator<Item = GenericVirtualPackage>,
) -> BTreeMap<String, GenericVirtualPackage> {
    packages
        .into_iter()
        .map(|p| (p.name.as_normalized().to_owned(), p))
        .collect()
}

fn overlay(
    by_name: &mut BTreeMap<String, GenericVirtualPackage>,
    values: &[GenericVirtualPackage],
) {
    for package in values {
        by_name.insert(package.name.as_normalized().to_owned(), package.clone());
    }
}

fn finish(mut by_name: BTreeMap<String, GenericVirtualPackage>) -> Vec<GenericVirtualPackage> {
    if !by_name.contains_key("__cuda") {
        by_name.remove("__cuda_arch");
    }
    if !by_name.contains_key("__amdgpu") {
        by_name.remove("__amdgpu_arch");
    }
    by_name.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(packages: &[GenericVirtualPackage]) -> Vec<String> {
        packages.iter().map(recorded_spelling).collect()
    }

    fn package(text: &str) -> GenericVirtualPackage {
        parse_virtual_package(text).unwrap()
    }

    fn assumed(
        platform: Subdir,
        given: &VirtualPackageOverridesByPlatform,
        detected: Option<&NodeVirtualPackages>,
        previous: Option<&[String]>,
    ) -> (Vec<String>, AssumedFrom) {
        let assumed = assumed_virtual_packages(platform, given, detected, previous).unwrap();
        (text(&assumed.packages), assumed.from)
    }

    /// The baselines are pixi's and conda-lock's, spelled as pixi 0.77.0 writes them in
    /// pixi.lock (`subdir_default_virtual_packages`, `__linux=4.18` without a build): its
    /// satisfiability check drops exactly these strings before comparing a lock's platform
    /// with its manifest, so another spelling reads as a changed platform and re-solves. A
    /// regression here changes every lock.
    #[test]
    fn baselines_are_the_platforms_not_this_nodes() {
        assert_eq!(
            text(&baseline_virtual_packages(Subdir::Linux64)),
            [
                "__archspec=0=x86_64",
                "__glibc=2.28",
                "__linux=4.18",
                "__unix=0=0"
            ]
        );
        assert_eq!(
            text(&baseline_virtual_packages(Subdir::LinuxAarch64)),
            [
                "__archspec=0=aarch64",
                "__glibc=2.28",
                "__linux=4.18",
                "__unix=0=0"
            ]
        );
        assert_eq!(
            text(&baseline_virtual_packages(Subdir::OsxArm64)),
            ["__archspec=0=m1", "__osx=13.0", "__unix=0=0"]
        );
        assert_eq!(
            text(&baseline_virtual_packages(Subdir::Osx64)),
            ["__archspec=0=x86_64", "__osx=13.0", "__unix=0=0"]
        );
        assert_eq!(
            text(&baseline_virtual_packages(Subdir::Win64)),
            ["__archspec=0=x86_64", "__win=10.0"]
        );
    }

    #[test]
    fn without_flags_a_platform_assumes_its_baseline_then_what_the_lock_recorded() {
        let none = VirtualPackageOverridesByPlatform::default();
        assert_eq!(
            assumed(Subdir::Linux64, &none, None, None),
            (
                text(&baseline_virtual_packages(Subdir::Linux64)),
                AssumedFrom::Baseline
            )
        );
        let recorded = vec!["__cuda=12.4=0".to_owned(), "__glibc=2.28=0".to_owned()];
        assert_eq!(
            assumed(Subdir::Linux64, &none, None, Some(&recorded)),
            (recorded.clone(), AssumedFrom::PreviousLock)
        );
        // A value that does not read names the lock's value and the platform.
        let error =
            assumed_virtual_packages(Subdir::Linux64, &none, None, Some(&["glibc".to_owned()]))
                .unwrap_err()
                .to_string();
        assert!(
            error.contains("`glibc`: a virtual package name starts with `__` (recorded for linux-64 in the previous lock)"),
            "{error}"
        );
    }

    #[test]
    fn command_line_values_replace_the_baseline_and_the_previous_set() {
        let mut given = VirtualPackageOverridesByPlatform::default();
        given.add("__cuda=11.8").unwrap();
        given.add("linux-64:__glibc=2.31").unwrap();
        let recorded = vec!["__cuda=12.4=0".to_owned(), "__glibc=2.17=0".to_owned()];
        let (linux, from) = assumed(Subdir::Linux64, &given, None, Some(&recorded));
        assert_eq!(from, AssumedFrom::CommandLine);
        assert_eq!(
            linux,
            [
                "__archspec=0=x86_64",
                "__cuda=11.8",
                "__glibc=2.31",
                "__linux=4.18",
                "__unix=0=0"
            ]
        );
        let (osx, _) = assumed(Subdir::OsxArm64, &given, None, None);
        assert_eq!(
            osx,
            ["__archspec=0=m1", "__cuda=11.8", "__osx=13.0", "__unix=0=0"]
        );
        // A value for another platform is no flag for this one: its previous set stays.
        let mut other = VirtualPackageOverridesByPlatform::default();
        other.add("osx-arm64:__osx=14.0").unwrap();
        assert_eq!(
            assumed(Subdir::Linux64, &other, None, Some(&recorded)),
            (recorded, AssumedFrom::PreviousLock)
        );
    }

    #[test]
    fn detection_counts_for_the_nodes_platform_only() {
        let node = NodeVirtualPackages {
            platform: Subdir::Linux64,
            packages: vec![
                package("__archspec=1=zen3"),
                package("__cuda=12.4"),
                package("__glibc=2.35"),
            ],
        };
        let mut given = VirtualPackageOverridesByPlatform::default();
        given.add("__cuda=12.2").unwrap();
        let recorded = vec!["__glibc=2.28=0".to_owned()];
        assert_eq!(
            assumed(Subdir::Linux64, &given, Some(&node), Some(&recorded)),
            (
                vec![
                    "__archspec=1=zen3".to_owned(),
                    "__cuda=12.2".to_owned(),
                    "__glibc=2.35".to_owned()
                ],
                AssumedFrom::Detected
            )
        );
        let none = VirtualPackageOverridesByPlatform::default();
        assert_eq!(
            assumed(Subdir::OsxArm64, &none, Some(&node), None).1,
            AssumedFrom::Baseline
        );
    }

    /// `__cuda_arch` (the oldest GPU's compute capability) reaches the solve beside a `__cuda`,
    /// and never without one.
    #[test]
    fn cuda_arch_goes_with_cuda_only() {
        let mut given = VirtualPackageOverridesByPlatform::default();
        given.add("linux-64:__cuda=12.4").unwrap();
        given.add("linux-64:__cuda_arch=8.6").unwrap();
        let (linux, _) = assumed(Subdir::Linux64, &given, None, None);
        assert!(linux.contains(&"__cuda_arch=8.6".to_owned()), "{linux:?}");

        let mut given = VirtualPackageOverridesByPlatform::default();
        given.add("osx-arm64:__cuda_arch=8.6").unwrap();
        let (osx, _) = assumed(Subdir::OsxArm64, &given, None, None);
        assert!(osx.iter().all(|p| !p.starts_with("__cuda")), "{osx:?}");
    }

    /// Only a GPU the lock did not assume (or a newer CUDA) is worth a flag; a newer glibc,
    /// kernel or CPU is not.
    #[test]
    fn only_gpus_count_as_more_than_the_lock_assumed() {
        let baseline = text(&baseline_virtual_packages(Subdir::Linux64));
        let node = [
            package("__archspec=1=zen3"),
            package("__cuda=12.4"),
            package("__cuda_arch=9.0"),
            package("__glibc=2.39"),
            package("__linux=6.8"),
            package("__unix=0"),
        ];
        assert_eq!(
            text(&unassumed_on_node(&baseline, &node)),
            ["__cuda=12.4", "__cuda_arch=9.0"]
        );
        let older = ["__cuda=12.2=0".to_owned(), "__cuda_arch=8.0=0".to_owned()];
        assert_eq!(text(&unassumed_on_node(&older, &node)), ["__cuda=12.4"]);
        let same = ["__cuda=12.4=0".to_owned(), "__cuda_arch=8.0=0".to_owned()];
        assert!(unassumed_on_node(&same, &node).is_empty());
        let newer = ["__cuda=12.8=0".to_owned(), "__cuda_arch=9.0=0".to_owned()];
        assert!(unassumed_on_node(&newer, &node).is_empty());
        let baseline_node = baseline_virtual_packages(Subdir::Linux64);
        assert!(unassumed_on_node(&baseline, &baseline_node).is_empty());
        // A recorded value that does not read is no CUDA.
        assert_eq!(
            text(&unassumed_on_node(&["__cuda".to_owned()], &node[1..2])),
            ["__cuda=12.4"]
        );
    }

    #[test]
    fn flags_name_the_platform() {
        assert_eq!(
            virtual_package_flag(Subdir::Linux64, &package("__cuda=12.4")),
            "linux-64:__cuda=12.4"
        );
        assert_eq!(
            virtual_package_flag(Subdir::Linux64, &package("__archspec=1=zen3")),
            "linux-64:__archspec=1=zen3"
        );
    }

    #[test]
    fn bad_values_say_why() {
        let mut overrides = VirtualPackageOverridesByPlatform::default();
        assert!(overrides.add("cuda=11.8").is_err());
        assert!(overrides.add("__cuda").is_err());
        assert!(overrides.add("linux-65:__cuda=1").is_err());
    }
}
