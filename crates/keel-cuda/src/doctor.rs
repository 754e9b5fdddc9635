//! `keel doctor`'s rules: can this node run what the lock (or prefix) pins?
//!
//! The inputs are plain data (a probe report, the packages, this node's glibc and kernel), so
//! every rule is tested on recorded reports; the CLI gathers them.

use serde::Serialize;

use crate::report::{CudaVersion, ProbeReport};

/// A package as the rules see it (from a lock or a prefix's `conda-meta`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFacts {
    /// The package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its build string.
    pub build: String,
    /// Its dependencies as match specs (`__glibc >=2.17`, `__cuda`, ...).
    pub depends: Vec<String>,
}

/// This node's operating system facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// glibc version (`2.36`), when Linux with glibc.
    pub glibc: Option<String>,
    /// Linux kernel version (`6.1.0`).
    pub linux: Option<String>,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Checked, fine.
    Ok,
    /// Works, with a caveat.
    Warning,
    /// Will not work.
    Error,
}

/// One finding, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How bad.
    pub level: Level,
    /// The rule: `driver`, `compute-capability`, `memory`, `glibc`, `linux`.
    pub rule: &'static str,
    /// What was found.
    pub message: String,
    /// What to do about it.
    pub fix: Option<String>,
    /// A virtual package (`__cuda=12.2`, `__glibc=2.17`) that a lock solved with it would
    /// fit this node with, when re-locking is one of the fixes. How to pass it is the
    /// caller's (`keel doctor` adds its `keel lock` command line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_with: Option<String>,
}

/// NVIDIA's minimum Linux x86_64 driver for each CUDA toolkit release (CUDA Toolkit release
/// notes, table 3, "Toolkit Driver Version").
const TOOLKIT_DRIVER: &[((u32, u32), &str)] = &[
    ((11, 0), "450.36.06"),
    ((11, 1), "455.23"),
    ((11, 2), "460.27.03"),
    ((11, 3), "465.19.01"),
    ((11, 4), "470.42.01"),
    ((11, 5), "495.29.05"),
    ((11, 6), "510.39.01"),
    ((11, 7), "515.43.04"),
    ((11, 8), "520.61.05"),
    ((12, 0), "525.60.13"),
    ((12, 1), "530.30.02"),
    ((12, 2), "535.54.03"),
    ((12, 3), "545.23.06"),
    ((12, 4), "550.54.14"),
    ((12, 5), "555.42.02"),
    ((12, 6), "560.28.03"),
    ((12, 8), "570.26"),
    ((12, 9), "575.51.03"),
    ((13, 0), "580.65.06"),
];

/// The oldest driver that runs a major release through minor version compatibility (CUDA
/// compatibility guide): any 12.x application runs on a >= 525.60.13 driver, without PTX JIT.
const MINOR_COMPAT_DRIVER: &[(u32, &str)] =
    &[(11, "450.80.02"), (12, "525.60.13"), (13, "580.65.06")];

/// The compute capabilities a toolkit release builds native code for: (oldest, newest).
fn supported_architectures(cuda: CudaVersion) -> ([u32; 2], [u32; 2]) {
    match (cuda.major, cuda.minor) {
        (11, 0) => ([3, 5], [8, 0]),
        (11, 1..=7) => ([3, 5], [8, 6]),
        (11, _) => ([3, 5], [9, 0]),
        (12, 0..=7) => ([5, 0], [9, 0]),
        (12, _) => ([5, 0], [12, 0]),
        (13, _) => ([7, 5], [12, 1]),
        _ => ([3, 0], [99, 9]),
    }
}

/// The CUDA release the packages pin: `cuda-version`, `cudatoolkit`, `pytorch-cuda`,
/// `cuda-runtime` or `cuda-cudart`, in that order of trust.
pub fn pinned_cuda(packages: &[PackageFacts]) -> Option<(CudaVersion, String)> {
    for name in [
        "cuda-version",
        "cudatoolkit",
        "pytorch-cuda",
        "cuda-runtime",
        "cuda-cudart",
    ] {
        if let Some(package) = packages.iter().find(|p| p.name == name)
            && let Ok(version) = major_minor(&package.version).parse::<CudaVersion>()
        {
            return Some((version, format!("{} {}", package.name, package.version)));
        }
    }
    None
}

fn major_minor(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// Compares dotted numeric versions (`550.54.15` vs `525.60.13`).
fn version_at_least(have: &str, need: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (have, need) = (parse(have), parse(need));
    for i in 0..have.len().max(need.len()) {
        let (a, b) = (
            have.get(i).copied().unwrap_or(0),
            need.get(i).copied().unwrap_or(0),
        );
        if a != b {
            return a > b;
        }
    }
    true
}

fn toolkit_driver(cuda: CudaVersion) -> Option<&'static str> {
    TOOLKIT_DRIVER
        .iter()
        .rev()
        .find(|((major, minor), _)| *major == cuda.major && *minor <= cuda.minor)
        .map(|(_, driver)| *driver)
}

/// Every rule over one node.
pub fn diagnose(report: &ProbeReport, packages: &[PackageFacts], host: &HostFacts) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Some((cuda, because)) = pinned_cuda(packages) {
        driver_rule(report, cuda, &because, &mut findings);
        if report.driver.is_some() {
            architecture_rule(report, cuda, &because, &mut findings);
        }
    }
    memory_rule(report, &mut findings);
    system_rule(
        "glibc",
        "__glibc",
        host.glibc.as_deref(),
        packages,
        &mut findings,
    );
    system_rule(
        "linux",
        "__linux",
        host.linux.as_deref(),
        packages,
        &mut findings,
    );
    findings
}

fn driver_rule(
    report: &ProbeReport,
    cuda: CudaVersion,
    because: &str,
    findings: &mut Vec<Finding>,
) {
    let full = toolkit_driver(cuda);
    let Some(driver) = &report.driver else {
        findings.push(Finding {
            level: Level::Error,
            rule: "driver",
            message: format!(
                "the packages need CUDA {cuda} ({because}), and this node has no CUDA driver"
            ),
            fix: Some(format!(
                "run on a GPU node, or install an NVIDIA driver >= {}",
                full.unwrap_or("the one for this CUDA release")
            )),
            lock_with: None,
        });
        return;
    };
    if report.devices.is_empty() {
        findings.push(Finding {
            level: Level::Error,
            rule: "driver",
            message: format!(
                "the driver is there, but no GPU is visible{}",
                report
                    .cuda_visible_devices
                    .as_deref()
                    .map(|v| format!(" (CUDA_VISIBLE_DEVICES={v})"))
                    .unwrap_or_default()
            ),
            fix: Some("check CUDA_VISIBLE_DEVICES and the job's GPU allocation".to_owned()),
            lock_with: None,
        });
    }
    let driver_name = driver
        .version
        .clone()
        .unwrap_or_else(|| format!("for CUDA {}", driver.cuda_version));
    if driver.cuda_version >= cuda {
        findings.push(Finding {
            level: Level::Ok,
            rule: "driver",
            message: format!(
                "driver {driver_name} runs CUDA {} >= {cuda} ({because})",
                driver.cuda_version
            ),
            fix: None,
            lock_with: None,
        });
        return;
    }
    let compat = MINOR_COMPAT_DRIVER
        .iter()
        .find(|(major, _)| *major == cuda.major)
        .map(|(_, d)| *d);
    let compatible = driver.cuda_version.major == cuda.major
        && compat.is_some_and(|min| {
            driver
                .version
                .as_deref()
                .is_none_or(|v| version_at_least(v, min))
        });
    if compatible {
        findings.push(Finding {
            level: Level::Warning,
            rule: "driver",
            message: format!(
                "driver {driver_name} runs CUDA {} and the packages need {cuda} ({because}): this works through minor version compatibility, but PTX JIT and some newer APIs do not",
                driver.cuda_version
            ),
            fix: full.map(|d| format!("upgrade the driver to >= {d} for full CUDA {cuda} support")),
            lock_with: None,
        });
    } else {
        findings.push(Finding {
            level: Level::Error,
            rule: "driver",
            message: format!(
                "driver {driver_name} runs CUDA {} at most, and the packages need {cuda} ({because})",
                driver.cuda_version
            ),
            fix: Some(match full {
                Some(d) => format!(
                    "upgrade the driver to >= {d}, or lock for CUDA <= {}",
                    driver.cuda_version
                ),
                None => format!("lock for CUDA <= {}", driver.cuda_version),
            }),
            lock_with: Some(format!("__cuda={}", driver.cuda_version)),
        });
    }
}

fn architecture_rule(
    report: &ProbeReport,
    cuda: CudaVersion,
    because: &str,
    findings: &mut Vec<Finding>,
) {
    let (oldest, newest) = supported_architectures(cuda);
    for device in &report.devices {
        let cc = device.compute_capability;
        let sm = format!("sm_{}{}", cc[0], cc[1]);
        let (level, message, fix) = if cc < oldest {
            (
                Level::Error,
                format!(
                    "GPU {} ({}, {sm}) is older than CUDA {cuda} supports (sm_{}{} and newer; {because})",
                    device.ordinal, device.name, oldest[0], oldest[1]
                ),
                Some(format!(
                    "lock for an older CUDA, or run on a GPU of compute capability >= {}.{}",
                    oldest[0], oldest[1]
                )),
            )
        } else if cc > newest {
            (
                Level::Warning,
                format!(
                    "GPU {} ({}, {sm}) is newer than CUDA {cuda} builds native code for (up to sm_{}{}; {because}): kernels must JIT from PTX, if the packages ship PTX at all",
                    device.ordinal, device.name, newest[0], newest[1]
                ),
                Some("lock for a newer CUDA release that knows this GPU".to_owned()),
            )
        } else {
            (
                Level::Ok,
                format!(
                    "GPU {} ({}, {sm}) is supported by CUDA {cuda}",
                    device.ordinal, device.name
                ),
                None,
            )
        };
        findings.push(Finding {
            level,
            rule: "compute-capability",
            message,
            fix,
            lock_with: None,
        });
    }
}

fn memory_rule(report: &ProbeReport, findings: &mut Vec<Finding>) {
    for device in &report.devices {
        let Some(free) = device.free_memory_bytes else {
            continue;
        };
        let total = device.total_memory_bytes.max(1);
        let percent = free * 100 / total;
        let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
        let (level, fix) = if percent < 10 {
            (Level::Warning, Some("another process holds this GPU's memory: check `nvidia-smi` before starting the job".to_owned()))
        } else {
            (Level::Ok, None)
        };
        findings.push(Finding {
            level,
            rule: "memory",
            message: format!(
                "GPU {} has {:.1} of {:.1} GiB free ({percent}%)",
                device.ordinal,
                gib(free),
                gib(total)
            ),
            fix,
            lock_with: None,
        });
    }
}

/// `__glibc` / `__linux`: the newest the packages ask for against this node's.
fn system_rule(
    rule: &'static str,
    virtual_package: &str,
    host: Option<&str>,
    packages: &[PackageFacts],
    findings: &mut Vec<Finding>,
) {
    let mut needed: Option<(String, String)> = None;
    for package in packages {
        for depend in &package.depends {
            let mut parts = depend.split_whitespace();
            if parts.next() != Some(virtual_package) {
                continue;
            }
            let Some(bound) = parts.next().and_then(|b| b.strip_prefix(">=")) else {
                continue;
            };
            let bound = bound.split(',').next().unwrap_or(bound).to_owned();
            if needed
                .as_ref()
                .is_none_or(|(have, _)| !version_at_least(have, &bound))
            {
                needed = Some((bound, package.name.clone()));
            }
        }
    }
    let Some((need, package)) = needed else {
        return;
    };
    let finding = match host {
        None => Finding {
            level: Level::Error,
            rule,
            message: format!(
                "{package} needs {virtual_package} >= {need}, and this node has no {rule}"
            ),
            fix: Some(format!("run on a Linux node with {rule} >= {need}")),
            lock_with: None,
        },
        Some(have) if version_at_least(have, &need) => Finding {
            level: Level::Ok,
            rule,
            message: format!("{rule} {have} >= {need} (needed by {package})"),
            fix: None,
            lock_with: None,
        },
        Some(have) => Finding {
            level: Level::Error,
            rule,
            message: format!("{package} needs {rule} >= {need}; this node has {have}"),
            fix: Some(format!(
                "run on a node with {rule} >= {need}, or lock with {virtual_package}={have} so the solve picks builds this node runs"
            )),
            lock_with: Some(format!("{virtual_package}={have}")),
        },
    };
    findings.push(finding);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_versions_compare_numerically() {
        assert!(version_at_least("550.54.15", "525.60.13"));
        assert!(!version_at_least("470.57.02", "520.61.05"));
        assert!(version_at_least("525.60.13", "525.60.13"));
        assert_eq!(
            toolkit_driver(CudaVersion {
                major: 12,
                minor: 7
            }),
            Some("560.28.03")
        );
    }
}
