//! `keel doctor`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_cuda::{DriverProbe, HostFacts, Level, PackageFacts, ProbeReport, probe_with_timeout};
use miette::{Context as _, IntoDiagnostic as _};
use rattler_conda_types::Subdir;
use serde::Serialize;

use crate::args::DoctorArgs;
use crate::exit::Exit;
use crate::render;

/// Each fix that re-locking would be part of, with the `keel lock` command line that does it.
fn with_lock_commands(mut findings: Vec<keel_cuda::Finding>) -> Vec<keel_cuda::Finding> {
    for finding in &mut findings {
        if let (Some(fix), Some(package)) = (&mut finding.fix, &finding.lock_with) {
            fix.push_str(&format!(" (`keel lock --virtual-package {package}`)"));
        }
    }
    findings
}

#[derive(Serialize)]
struct DoctorJson<'a> {
    checked: String,
    probe: &'a ProbeReport,
    findings: &'a [keel_cuda::Finding],
}

pub(crate) fn run(args: &DoctorArgs) -> miette::Result<Exit> {
    let report = match &args.probe_json {
        Some(path) => {
            let bytes = fs_err::read(path).into_diagnostic()?;
            serde_json::from_slice::<ProbeReport>(&bytes)
                .into_diagnostic()
                .wrap_err_with(|| {
                    format!("{} is not a `keel probe --json` report", path.display())
                })?
        }
        None => probe_with_timeout(DriverProbe { free_memory: true }, Duration::from_secs(20))
            .into_diagnostic()?,
    };
    let (checked, packages) = packages(args)?;
    let findings = with_lock_commands(keel_cuda::diagnose(&report, &packages, &host_facts()));
    let failed = findings.iter().any(|f| f.level == Level::Error);

    let mut stdout = std::io::stdout().lock();
    if args.json {
        render::json(&DoctorJson {
            checked,
            probe: &report,
            findings: &findings,
        })?;
    } else {
        let _ = writeln!(stdout, "{}", report.summary());
        let _ = writeln!(stdout, "checked: {checked}");
        if findings.is_empty() {
            let _ = writeln!(
                stdout,
                "nothing to check: the packages pin no CUDA and need no particular glibc or kernel"
            );
        }
        for finding in &findings {
            let level = match finding.level {
                Level::Ok => "ok",
                Level::Warning => "warning",
                Level::Error => "error",
            };
            let _ = writeln!(
                stdout,
                "{level:<8} {:<18} {}",
                finding.rule, finding.message
            );
            if let Some(fix) = &finding.fix {
                let _ = writeln!(stdout, "{:<8} {:<18} fix: {fix}", "", "");
            }
        }
    }
    Ok(if failed { Exit::Found } else { Exit::Ok })
}

/// The packages to check: the prefix's records, else the lock's for this node's platform.
fn packages(args: &DoctorArgs) -> miette::Result<(String, Vec<PackageFacts>)> {
    if let Some(prefix) = &args.prefix {
        return Ok((
            format!("prefix {}", prefix.display()),
            prefix_packages(prefix)?,
        ));
    }
    let lock_path = args
        .lock
        .clone()
        .unwrap_or_else(|| PathBuf::from("keel.lock"));
    let Some((lock, _)) = keel_solve::read_lock(&lock_path).into_diagnostic()? else {
        if args.lock.is_some() {
            miette::bail!("no lock at {}", lock_path.display());
        }
        return Ok((
            "no lock (keel.lock not found) and no prefix: the node only".to_owned(),
            Vec::new(),
        ));
    };
    let host = Subdir::current()
        .ok_or_else(|| miette::miette!("this machine's platform is not a conda platform"))?;
    let environment = lock
        .default_environment()
        .ok_or_else(|| miette::miette!("{} has no default environment", lock_path.display()))?;
    let Some(platform) = environment.platforms().find(|p| p.subdir() == host) else {
        miette::bail!(
            "{} has no {host} packages: lock for this platform (`keel lock --platform {host}`)",
            lock_path.display()
        );
    };
    let records = environment
        .conda_repodata_records(platform)
        .into_diagnostic()?
        .unwrap_or_default();
    let facts = records
        .into_iter()
        .map(|r| PackageFacts {
            name: r.package_record.name.as_normalized().to_owned(),
            version: r.package_record.version.to_string(),
            build: r.package_record.build.to_string(),
            depends: r.package_record.depends.clone(),
        })
        .collect();
    Ok((format!("lock {} ({host})", lock_path.display()), facts))
}

fn prefix_packages(prefix: &Path) -> miette::Result<Vec<PackageFacts>> {
    let records = keel_prefix::installed_packages(prefix).into_diagnostic()?;
    Ok(records
        .iter()
        .map(|record| {
            let package = &record.repodata_record.package_record;
            PackageFacts {
                name: package.name.as_normalized().to_owned(),
                version: package.version.to_string(),
                build: package.build.to_string(),
                depends: package.depends.clone(),
            }
        })
        .collect())
}

/// This node's glibc and Linux kernel versions.
fn host_facts() -> HostFacts {
    HostFacts {
        glibc: rattler_virtual_packages::LibC::current()
            .ok()
            .flatten()
            .filter(|libc| libc.family.eq_ignore_ascii_case("glibc"))
            .map(|libc| libc.version.to_string()),
        linux: rattler_virtual_packages::Linux::current()
            .ok()
            .flatten()
            .map(|linux| linux.version.to_string()),
    }
}
