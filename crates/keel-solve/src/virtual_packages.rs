//! The virtual packages (`__cuda`, `__glibc`, ...) a solve assumes for each platform.

use std::collections::BTreeMap;
use std::str::FromStr;

use rattler_conda_types::{GenericVirtualPackage, PackageName, Subdir, Version};
use rattler_virtual_packages::{VirtualPackageOverrides, VirtualPackages};

use crate::SolveError;

/// Virtual packages given on the command line (`--virtual-package __cuda=12.4` for every
/// platform, `--virtual-package linux-64:__cuda=12.4` for one). They replace what detection or
/// the platform's baseline gives for the same name.
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
}

/// Parses `__name=version[=build]`.
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
    let build_string =
        rattler_conda_types::package::BuildString::from_str(parts.next().unwrap_or("0"))
            .map_err(|e| e.to_string())?;
    Ok(GenericVirtualPackage {
        name,
        version,
        build_string,
    })
}

/// The virtual packages of `platform`: detected on this machine when it is this machine's
/// platform (honouring `CONDA_OVERRIDE_CUDA`, `CONDA_OVERRIDE_GLIBC`, ...), the platform's
/// baseline otherwise; then the command line's values replace those of the same name. As
/// conda's CEP for `__cuda_arch` asks, there is no `__cuda_arch` without a `__cuda`. Sorted by
/// name, so that the lock and its hash do not depend on detection order.
pub fn virtual_packages_for(
    platform: Subdir,
    overrides: &VirtualPackageOverridesByPlatform,
) -> Result<Vec<GenericVirtualPackage>, SolveError> {
    let detected =
        VirtualPackages::detect_for_platform(platform, &VirtualPackageOverrides::from_env(), None)
            .map_err(SolveError::DetectVirtualPackages)?;
    let mut by_name: BTreeMap<String, GenericVirtualPackage> = detected
        .into_generic_virtual_packages()
        .map(|p| (p.name.as_normalized().to_owned(), p))
        .collect();
    let given = overrides
        .all
        .iter()
        .chain(overrides.per_platform.get(&platform).into_iter().flatten());
    for package in given {
        by_name.insert(package.name.as_normalized().to_owned(), package.clone());
    }
    if !by_name.contains_key("__cuda") {
        by_name.remove("__cuda_arch");
    }
    Ok(by_name.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_values_replace_detected_ones() {
        let mut overrides = VirtualPackageOverridesByPlatform::default();
        overrides.add("__cuda=11.8").unwrap();
        overrides.add("linux-64:__glibc=2.28").unwrap();
        let packages = virtual_packages_for(Subdir::Linux64, &overrides).unwrap();
        let text: Vec<String> = packages.iter().map(ToString::to_string).collect();
        assert!(text.contains(&"__cuda=11.8=0".to_owned()), "{text:?}");
        assert!(text.contains(&"__glibc=2.28=0".to_owned()), "{text:?}");
        let osx = virtual_packages_for(Subdir::OsxArm64, &overrides).unwrap();
        assert!(osx.iter().all(|p| p.name.as_normalized() != "__glibc"));
    }

    /// `__cuda_arch` (the oldest GPU's compute capability) reaches the solve beside a `__cuda`,
    /// and never without one.
    #[test]
    fn cuda_arch_goes_with_cuda_only() {
        let mut overrides = VirtualPackageOverridesByPlatform::default();
        overrides.add("linux-64:__cuda=12.4").unwrap();
        overrides.add("linux-64:__cuda_arch=8.6").unwrap();
        let text: Vec<String> = virtual_packages_for(Subdir::Linux64, &overrides)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(text.contains(&"__cuda_arch=8.6=0".to_owned()), "{text:?}");

        let mut overrides = VirtualPackageOverridesByPlatform::default();
        overrides.add("osx-arm64:__cuda_arch=8.6").unwrap();
        let osx = virtual_packages_for(Subdir::OsxArm64, &overrides).unwrap();
        assert!(
            osx.iter()
                .all(|p| !p.name.as_normalized().starts_with("__cuda")),
            "{osx:?}"
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
