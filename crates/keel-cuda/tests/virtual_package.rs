//! The `__cuda` a solve sees: `CONDA_OVERRIDE_CUDA` first, then the probed driver.

use keel_cuda::{
    CudaVersion, DriverInfo, Probe, ProbeReport, RecordedProbe, cuda_arch_virtual_package,
    cuda_virtual_package,
};

fn report(cuda: Option<(u32, u32)>) -> ProbeReport {
    ProbeReport {
        driver: cuda.map(|(major, minor)| DriverInfo {
            version: Some("550.54.15".to_owned()),
            cuda_version: CudaVersion { major, minor },
        }),
        cuda_visible_devices: None,
        devices: Vec::new(),
    }
}

#[test]
fn the_driver_gives_cuda_and_the_override_wins() {
    let driver = RecordedProbe(report(Some((12, 4)))).probe().unwrap();
    let cuda = cuda_virtual_package(&driver, None).unwrap().unwrap();
    assert_eq!(cuda.to_string(), "__cuda=12.4=0");
    let overridden = cuda_virtual_package(&driver, Some("11.8"))
        .unwrap()
        .unwrap();
    assert_eq!(overridden.to_string(), "__cuda=11.8=0");
    assert!(
        cuda_virtual_package(&driver, Some("")).unwrap().is_none(),
        "empty means no CUDA"
    );
    assert!(cuda_virtual_package(&driver, Some("twelve")).is_err());
}

#[test]
fn no_driver_means_no_cuda_unless_overridden() {
    let none = report(None);
    assert!(cuda_virtual_package(&none, None).unwrap().is_none());
    assert_eq!(none.summary(), "no CUDA driver found");
    let login_node = cuda_virtual_package(&none, Some("12.2")).unwrap().unwrap();
    assert_eq!(login_node.to_string(), "__cuda=12.2=0");
}

#[test]
fn driver_versions_decode() {
    assert_eq!(
        CudaVersion::from_driver_int(12040),
        CudaVersion {
            major: 12,
            minor: 4
        }
    );
    assert_eq!(CudaVersion::from_driver_int(11080).to_string(), "11.8");
    let summary = report(Some((12, 4))).summary();
    assert_eq!(
        summary,
        "NVIDIA driver 550.54.15 (CUDA 12.4), 0 visible GPUs"
    );
}

#[test]
fn cuda_arch_is_the_oldest_visible_gpu() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/a100.json");
    let mut a100: ProbeReport = serde_json::from_slice(&fs_err::read(path).unwrap()).unwrap();
    let arch = cuda_arch_virtual_package(&a100, None).unwrap().unwrap();
    assert_eq!(arch.to_string(), "__cuda_arch=8.0=0");
    a100.devices[1].compute_capability = [7, 5];
    let mixed = cuda_arch_virtual_package(&a100, None).unwrap().unwrap();
    assert_eq!(mixed.to_string(), "__cuda_arch=7.5=0");
    assert_eq!(
        cuda_arch_virtual_package(&a100, Some("9.0"))
            .unwrap()
            .unwrap()
            .to_string(),
        "__cuda_arch=9.0=0"
    );
    assert!(
        cuda_arch_virtual_package(&report(None), None)
            .unwrap()
            .is_none()
    );
}
