//! Every doctor rule on recorded probe reports (`tests/fixtures`).

use std::path::Path;

use keel_cuda::{
    Finding, HostFacts, Level, PackageFacts, Probe, ProbeReport, RecordedProbe, diagnose,
};

fn fixture(name: &str) -> ProbeReport {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let report: ProbeReport = serde_json::from_slice(&fs_err::read(path).unwrap()).unwrap();
    RecordedProbe(report).probe().unwrap()
}

fn package(name: &str, version: &str, depends: &[&str]) -> PackageFacts {
    PackageFacts {
        name: name.to_owned(),
        version: version.to_owned(),
        build: "0".to_owned(),
        depends: depends.iter().map(|d| (*d).to_owned()).collect(),
    }
}

/// pytorch 2.0.1 on CUDA 11.8 from the pytorch channel, as its lock pins it.
fn cuda118() -> Vec<PackageFacts> {
    vec![
        package("pytorch", "2.0.1", &["pytorch-cuda >=11.8,<11.9"]),
        package("pytorch-cuda", "11.8", &["cuda-runtime >=11.8,<12.0"]),
        package("libgcc-ng", "13.2.0", &["__glibc >=2.17"]),
    ]
}

fn cuda124() -> Vec<PackageFacts> {
    vec![
        package("cuda-version", "12.4", &[]),
        package(
            "libcublas",
            "12.4.5.8",
            &["__glibc >=2.28,<3.0.a0", "cuda-version >=12.4,<12.5.0a0"],
        ),
    ]
}

fn host(glibc: &str) -> HostFacts {
    HostFacts {
        glibc: Some(glibc.to_owned()),
        linux: Some("5.15.0".to_owned()),
    }
}

fn rule<'a>(findings: &'a [Finding], rule: &str) -> Vec<&'a Finding> {
    findings.iter().filter(|f| f.rule == rule).collect()
}

#[test]
fn h100_runs_a_cuda_11_8_lock() {
    let findings = diagnose(&fixture("h100.json"), &cuda118(), &host("2.35"));
    assert!(
        findings.iter().all(|f| f.level == Level::Ok),
        "{findings:#?}"
    );
    assert!(rule(&findings, "driver")[0].message.contains("550.54.15"));
    assert!(
        rule(&findings, "compute-capability")[0]
            .message
            .contains("sm_90")
    );
    assert_eq!(rule(&findings, "glibc").len(), 1);
    assert_eq!(rule(&findings, "memory").len(), 1);
}

#[test]
fn a100_driver_runs_cuda_12_4_by_minor_version_compatibility() {
    let findings = diagnose(&fixture("a100.json"), &cuda124(), &host("2.35"));
    let driver = rule(&findings, "driver");
    assert_eq!(driver[0].level, Level::Warning, "{findings:#?}");
    assert!(driver[0].fix.as_deref().unwrap().contains("550.54.14"));
    assert_eq!(
        rule(&findings, "compute-capability").len(),
        2,
        "both visible GPUs"
    );
}

#[test]
fn a_too_old_driver_cannot_run_cuda_11_8_or_12() {
    let findings = diagnose(&fixture("old-driver.json"), &cuda118(), &host("2.31"));
    // 450.80.02 is the 11.x minor-compatibility floor: 11.8 runs, with a warning.
    assert_eq!(
        rule(&findings, "driver")[0].level,
        Level::Warning,
        "{findings:#?}"
    );
    let findings = diagnose(&fixture("old-driver.json"), &cuda124(), &host("2.17"));
    let driver = rule(&findings, "driver")[0];
    assert_eq!(driver.level, Level::Error, "{findings:#?}");
    assert!(driver.message.contains("CUDA 11.0 at most"));
    assert!(
        driver
            .fix
            .as_deref()
            .unwrap()
            .contains("lock for CUDA <= 11.0")
    );
    // Which virtual package to lock with is data; the command line is the CLI's.
    assert_eq!(driver.lock_with.as_deref(), Some("__cuda=11.0"));
    assert!(!driver.fix.as_deref().unwrap().contains("--"), "{driver:?}");
    // The lock also needs a newer glibc (2.28) than this node has (2.17).
    let glibc = rule(&findings, "glibc")[0];
    assert_eq!(glibc.level, Level::Error);
    assert!(
        glibc.message.contains("2.28") && glibc.message.contains("2.17"),
        "{}",
        glibc.message
    );
    assert!(glibc.fix.as_deref().unwrap().contains("__glibc=2.17"));
}

#[test]
fn a_busy_consumer_gpu_is_reported() {
    let findings = diagnose(&fixture("rtx4090.json"), &cuda124(), &host("2.35"));
    let memory = rule(&findings, "memory")[0];
    assert_eq!(memory.level, Level::Warning);
    assert!(memory.message.contains("4%"), "{}", memory.message);
    assert_eq!(rule(&findings, "compute-capability")[0].level, Level::Ok);
}

#[test]
fn a_gpu_older_than_the_toolkit_is_an_error_and_newer_a_warning() {
    let v100 = fixture("old-driver.json");
    let cuda13 = vec![package("cuda-version", "13.0", &[])];
    let findings = diagnose(&v100, &cuda13, &host("2.35"));
    let cc = rule(&findings, "compute-capability")[0];
    assert_eq!(cc.level, Level::Error, "{findings:#?}");
    assert!(cc.message.contains("sm_70"));

    let h100 = fixture("h100.json");
    let cuda117 = vec![package("cudatoolkit", "11.7.1", &[])];
    let findings = diagnose(&h100, &cuda117, &host("2.35"));
    assert_eq!(
        rule(&findings, "compute-capability")[0].level,
        Level::Warning,
        "{findings:#?}"
    );
}

#[test]
fn no_driver_with_a_cuda_lock_is_an_error_and_without_cuda_nothing_to_say() {
    let none: ProbeReport =
        serde_json::from_str(r#"{"driver":null,"cuda_visible_devices":null,"devices":[]}"#)
            .unwrap();
    let findings = diagnose(&none, &cuda118(), &host("2.35"));
    let driver = rule(&findings, "driver")[0];
    assert_eq!(driver.level, Level::Error);
    assert!(driver.fix.as_deref().unwrap().contains("520.61.05"));
    let cpu_only = vec![package("numpy", "1.26.4", &["__glibc >=2.17"])];
    let findings = diagnose(&none, &cpu_only, &host("2.35"));
    assert!(rule(&findings, "driver").is_empty());
}

#[test]
fn linux_kernel_rule() {
    let packages = vec![package("libcufile", "1.9", &["__linux >=5.4"])];
    let old = HostFacts {
        glibc: Some("2.35".into()),
        linux: Some("4.18.0".into()),
    };
    let findings = diagnose(&fixture("h100.json"), &packages, &old);
    assert_eq!(rule(&findings, "linux")[0].level, Level::Error);
}
