//! What a probe finds, as data: recorded probes (JSON) and live ones look the same.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A CUDA version as the driver reports it (`12040` is 12.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CudaVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl CudaVersion {
    /// From the driver API's integer (`1000 * major + 10 * minor`).
    pub fn from_driver_int(version: i32) -> Self {
        let version = u32::try_from(version).unwrap_or(0);
        Self {
            major: version / 1000,
            minor: (version % 1000) / 10,
        }
    }
}

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for CudaVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('.');
        let major = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("`{s}` is not a CUDA version like 12.4"))?;
        let minor = parts.next().map_or(Ok(0), |p| {
            p.parse()
                .map_err(|_| format!("`{s}` is not a CUDA version like 12.4"))
        })?;
        Ok(Self { major, minor })
    }
}

/// The driver, when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverInfo {
    /// The kernel driver's version, such as `550.54.15` (Linux: `/proc/driver/nvidia/version`).
    pub version: Option<String>,
    /// The newest CUDA version the driver runs.
    pub cuda_version: CudaVersion,
}

/// One GPU as the driver numbers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The CUDA ordinal (after `CUDA_VISIBLE_DEVICES` renumbering).
    pub ordinal: u32,
    /// The product name, such as `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// The UUID as nvidia-smi prints it (`GPU-…`).
    pub uuid: String,
    /// The PCI bus id, `domain:bus:device.function`.
    pub pci_bus_id: String,
    /// Compute capability (`[9, 0]` for sm_90).
    pub compute_capability: [u32; 2],
    /// Total memory in bytes.
    pub total_memory_bytes: u64,
    /// Free memory in bytes, when the probe created a context to ask.
    pub free_memory_bytes: Option<u64>,
}

/// Everything a probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The driver; `None` when no CUDA driver library is installed.
    pub driver: Option<DriverInfo>,
    /// `CUDA_VISIBLE_DEVICES` as set for the probe; the devices are those it lets through,
    /// numbered as CUDA numbers them.
    pub cuda_visible_devices: Option<String>,
    /// The visible GPUs.
    pub devices: Vec<Device>,
}

impl ProbeReport {
    /// A line for people: `no CUDA driver found`, or the driver and device count.
    pub fn summary(&self) -> String {
        match &self.driver {
            None => "no CUDA driver found".to_owned(),
            Some(driver) => format!(
                "NVIDIA driver {} (CUDA {}), {} visible GPU{}{}",
                driver.version.as_deref().unwrap_or("of unknown version"),
                driver.cuda_version,
                self.devices.len(),
                if self.devices.len() == 1 { "" } else { "s" },
                self.cuda_visible_devices
                    .as_deref()
                    .map(|v| format!(" (CUDA_VISIBLE_DEVICES={v})"))
                    .unwrap_or_default()
            ),
        }
    }
}
