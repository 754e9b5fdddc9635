//! Probe NVIDIA GPUs and the CUDA driver: what a node can run, before a job starts.
//!
//! `keel-cuda` asks the CUDA driver API (through cudarc, loading `libcuda` at run time, so
//! that building needs no CUDA; in a build with candle's CUDA backend cudarc links it) for
//! the driver's CUDA version and every visible device: name, UUID, PCI bus id, compute
//! capability, memory. A machine without a driver gets a report that says so, never a panic,
//! and a hung driver costs a timeout, not the caller. The probe sits behind the [`Probe`]
//! trait, so everything built on it runs on recorded reports.
//! [`cuda_virtual_package`] turns a report into the `__cuda` virtual package a solve uses,
//! with `CONDA_OVERRIDE_CUDA` taking precedence, as conda and pixi do.
//!
//! ```
//! use keel_cuda::{DriverProbe, probe_with_timeout};
//! use std::time::Duration;
//!
//! // On a machine without a GPU this says "no CUDA driver found"; it never panics.
//! let report = probe_with_timeout(DriverProbe::default(), Duration::from_secs(10))?;
//! let _line = report.summary();
//! # Ok::<(), keel_cuda::ProbeError>(())
//! ```

#![deny(missing_docs)]

mod doctor;
mod probe;
mod report;

use std::str::FromStr;
use std::time::Duration;

pub use doctor::{Finding, HostFacts, Level, PackageFacts, diagnose, pinned_cuda};
pub use probe::{DriverProbe, Probe, RecordedProbe, probe_with_timeout};
pub use report::{CudaVersion, Device, DriverInfo, ProbeReport};

use rattler_conda_types::{GenericVirtualPackage, PackageName, Version};

/// Why a probe failed. A missing driver is not a failure: it is a report without a driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// A driver call returned an error.
    #[error("the CUDA driver call {call} failed with {code}")]
    Driver {
        /// The driver API function.
        call: &'static str,
        /// The CUDA result code, such as `CUDA_ERROR_NO_DEVICE`.
        code: String,
    },
    /// The driver did not answer in time.
    #[error("the CUDA driver did not answer within {0:?}")]
    Timeout(Duration),
    /// The probe panicked inside the driver bindings.
    #[error("the CUDA probe panicked: {0}")]
    Panicked(String),
    /// The probe thread could not start.
    #[error("failed to start the probe thread")]
    Thread(#[source] std::io::Error),
    /// `CONDA_OVERRIDE_CUDA` or `CONDA_OVERRIDE_CUDA_ARCH` holds something that is not a
    /// version.
    #[error("the override `{0}` is not a version like 12.4 (or empty for none)")]
    Override(String),
}

/// The `__cuda_arch` virtual package for a solve on this node (CEP: the minimum compute
/// capability across the visible GPUs, so that packages built for it run on every one):
/// `CONDA_OVERRIDE_CUDA_ARCH` when set (empty means none), else the probe's GPUs, else none.
pub fn cuda_arch_virtual_package(
    report: &ProbeReport,
    conda_override_cuda_arch: Option<&str>,
) -> Result<Option<GenericVirtualPackage>, ProbeError> {
    let probed = report
        .devices
        .iter()
        .map(|d| d.compute_capability)
        .min()
        .map(|[major, minor]| CudaVersion { major, minor });
    virtual_package("__cuda_arch", conda_override_cuda_arch, probed)
}

/// The `__cuda` virtual package for a solve on this node: `CONDA_OVERRIDE_CUDA` when it is
/// set (empty means "no CUDA"), else the CUDA version the probed driver runs, else none.
pub fn cuda_virtual_package(
    report: &ProbeReport,
    conda_override_cuda: Option<&str>,
) -> Result<Option<GenericVirtualPackage>, ProbeError> {
    let probed = report.driver.as_ref().map(|driver| driver.cuda_version);
    virtual_package("__cuda", conda_override_cuda, probed)
}

/// `name=version=0`, the version from the override when one is set (empty: none), else the
/// probed one.
fn virtual_package(
    name: &str,
    override_value: Option<&str>,
    probed: Option<CudaVersion>,
) -> Result<Option<GenericVirtualPackage>, ProbeError> {
    let version = match override_value {
        Some(text) if text.trim().is_empty() => return Ok(None),
        Some(text) => {
            CudaVersion::from_str(text).map_err(|_| ProbeError::Override(text.to_owned()))?
        }
        None => match probed {
            Some(version) => version,
            None => return Ok(None),
        },
    };
    Ok(Some(GenericVirtualPackage {
        name: PackageName::from_str(name).expect("a valid name"),
        version: Version::from_str(&version.to_string()).expect("a valid version"),
        build_string: rattler_conda_types::package::BuildString::from_str("0")
            .expect("a valid build string"),
    }))
}
