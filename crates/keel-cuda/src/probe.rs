//! Probing the driver: the [`Probe`] trait, the live [`DriverProbe`] through cudarc's driver
//! API (loaded at run time; linked instead when candle's CUDA backend shares the build), and the
//! timeout around it.
//!
//! The only `unsafe` in keel: cudarc's raw driver calls. Every block says why it holds.
#![allow(unsafe_code)]

use std::sync::mpsc;
use std::time::Duration;

use cudarc::driver::{result, sys};

use crate::ProbeError;
use crate::report::{CudaVersion, Device, DriverInfo, ProbeReport};

/// Something that can say what GPUs and driver a machine has. The live probe and recorded
/// probes (JSON) both implement it, so the rules built on it are tested without a GPU.
pub trait Probe {
    /// Probes once.
    fn probe(&self) -> Result<ProbeReport, ProbeError>;
}

/// A probe result recorded earlier (for example `keel probe --json` on a GPU node).
#[derive(Debug, Clone)]
pub struct RecordedProbe(pub ProbeReport);

impl Probe for RecordedProbe {
    fn probe(&self) -> Result<ProbeReport, ProbeError> {
        Ok(self.0.clone())
    }
}

/// The live probe: cudarc's CUDA driver API, loaded from `libcuda.so` / `nvcuda.dll` at run
/// time. A machine without the library gets a report with no driver, never a panic.
#[derive(Debug, Clone, Default)]
pub struct DriverProbe {
    /// Also ask each device for its free memory. This creates the device's primary context
    /// (tens to hundreds of milliseconds, and some device memory), so it is off by default.
    pub free_memory: bool,
}

impl Probe for DriverProbe {
    fn probe(&self) -> Result<ProbeReport, ProbeError> {
        let cuda_visible_devices = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        if !driver_library_present() {
            return Ok(ProbeReport {
                driver: None,
                cuda_visible_devices,
                devices: Vec::new(),
            });
        }
        let call = driver_error;
        result::init().map_err(call("cuInit"))?;
        let mut version = 0;
        // SAFETY: the library is present (checked above) and initialised; the pointer is to a
        // live local.
        unsafe { sys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(call("cuDriverGetVersion"))?;
        let count = result::device::get_count().map_err(call("cuDeviceGetCount"))?;
        let mut devices = Vec::new();
        for ordinal in 0..count {
            devices.push(self.device(ordinal)?);
        }
        Ok(ProbeReport {
            driver: Some(DriverInfo {
                version: kernel_driver_version(),
                cuda_version: CudaVersion::from_driver_int(version),
            }),
            cuda_visible_devices,
            devices,
        })
    }
}

impl DriverProbe {
    fn device(&self, ordinal: i32) -> Result<Device, ProbeError> {
        let call = driver_error;
        let dev = result::device::get(ordinal).map_err(call("cuDeviceGet"))?;
        let name = result::device::get_name(dev).map_err(call("cuDeviceGetName"))?;
        let uuid = result::device::get_uuid(dev).map_err(call("cuDeviceGetUuid"))?;
        let attribute = |attribute: sys::CUdevice_attribute, name: &'static str| {
            // SAFETY: `dev` is a device handle the driver returned for this ordinal.
            unsafe { result::device::get_attribute(dev, attribute) }.map_err(call(name))
        };
        use sys::CUdevice_attribute::*;
        let major = attribute(
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            "cuDeviceGetAttribute",
        )?;
        let minor = attribute(
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            "cuDeviceGetAttribute",
        )?;
        let domain = attribute(CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, "cuDeviceGetAttribute")?;
        let bus = attribute(CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, "cuDeviceGetAttribute")?;
        let device = attribute(CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, "cuDeviceGetAttribute")?;
        // SAFETY: as above.
        let total = unsafe { result::device::total_mem(dev) }.map_err(call("cuDeviceTotalMem"))?;
        let free_memory_bytes = if self.free_memory {
            let context = cudarc::driver::CudaContext::new(usize::try_from(ordinal).unwrap_or(0))
                .map_err(call("cuDevicePrimaryCtxRetain"))?;
            let (free, _) = context.mem_get_info().map_err(call("cuMemGetInfo"))?;
            Some(free as u64)
        } else {
            None
        };
        Ok(Device {
            ordinal: u32::try_from(ordinal).unwrap_or(0),
            name,
            uuid: format_uuid(&uuid.bytes),
            pci_bus_id: format!("{domain:08X}:{bus:02X}:{device:02X}.0"),
            compute_capability: [
                u32::try_from(major).unwrap_or(0),
                u32::try_from(minor).unwrap_or(0),
            ],
            total_memory_bytes: total as u64,
            free_memory_bytes,
        })
    }
}

/// Whether the CUDA driver library opens. cudarc's `is_culib_present` exists only while cudarc
/// loads the driver at run time; a build with candle's CUDA backend links libcuda instead (a
/// binary of it that starts has the library), so keel asks the loader itself in both builds.
fn driver_library_present() -> bool {
    const NAMES: &[&str] = if cfg!(windows) {
        &["nvcuda.dll"]
    } else {
        &["libcuda.so.1", "libcuda.so"]
    };
    NAMES.iter().any(|name| {
        // SAFETY: opening the driver library runs only its own initialisers; no symbol of it
        // is called here.
        unsafe { libloading::Library::new(*name) }.is_ok()
    })
}

/// Maps a driver error of `call` to a typed error naming the call and the CUDA result code.
fn driver_error(call: &'static str) -> impl Fn(result::DriverError) -> ProbeError {
    move |error| ProbeError::Driver {
        call,
        code: format!("{:?}", error.0),
    }
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as nvidia-smi prints it.
fn format_uuid(bytes: &[std::ffi::c_char; 16]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{:02x}", *b as u8)).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    )
}

/// The kernel module's version from `/proc/driver/nvidia/version` (Linux).
fn kernel_driver_version() -> Option<String> {
    let text = fs_err::read_to_string("/proc/driver/nvidia/version").ok()?;
    parse_kernel_driver_version(&text)
}

pub(crate) fn parse_kernel_driver_version(text: &str) -> Option<String> {
    // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 ..."
    let line = text.lines().find(|l| l.starts_with("NVRM version"))?;
    line.split_whitespace()
        .find(|word| {
            word.split('.').count() >= 2
                && word
                    .split('.')
                    .all(|p| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty())
        })
        .map(str::to_owned)
}

/// Runs `probe` on its own thread and gives up after `timeout`: a hung driver (a GPU fallen off
/// the bus) costs the caller the timeout, not the job. A panic inside the probe is reported as
/// an error.
pub fn probe_with_timeout<P: Probe + Send + 'static>(
    probe: P,
    timeout: Duration,
) -> Result<ProbeReport, ProbeError> {
    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("keel-cuda-probe".to_owned())
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| probe.probe()))
                .unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "unknown panic".to_owned());
                    Err(ProbeError::Panicked(message))
                });
            let _ = sender.send(result);
        })
        .map_err(ProbeError::Thread)?;
    receiver
        .recv_timeout(timeout)
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernel_module_version() {
        let text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\nGCC version:  gcc version 12.2.0\n";
        assert_eq!(
            parse_kernel_driver_version(text).as_deref(),
            Some("550.54.15")
        );
        let open =
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build\n";
        assert_eq!(
            parse_kernel_driver_version(open).as_deref(),
            Some("570.86.15")
        );
    }

    #[test]
    fn formats_uuids_like_nvidia_smi() {
        let bytes: [std::ffi::c_char; 16] = [
            0x12,
            0x34,
            0x56,
            0x78,
            0x9a - 256,
            0xbc - 256,
            0xde - 256,
            0xf0 - 256,
            1,
            2,
            3,
            4,
            5,
            6,
            7,
            8,
        ]
        .map(|b: i32| b as std::ffi::c_char);
        assert_eq!(
            format_uuid(&bytes),
            "GPU-12345678-9abc-def0-0102-030405060708"
        );
    }

    struct Hangs;
    impl Probe for Hangs {
        fn probe(&self) -> Result<ProbeReport, ProbeError> {
            std::thread::sleep(Duration::from_secs(5));
            unreachable!("the timeout fires first")
        }
    }

    struct Panics;
    impl Probe for Panics {
        fn probe(&self) -> Result<ProbeReport, ProbeError> {
            panic!("driver exploded")
        }
    }

    #[test]
    fn a_hung_probe_times_out_and_a_panic_is_an_error() {
        let error = probe_with_timeout(Hangs, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(error, ProbeError::Timeout(_)));
        let error = probe_with_timeout(Panics, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(error, ProbeError::Panicked(ref m) if m.contains("exploded")));
    }
}
