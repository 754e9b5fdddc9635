//! `keel probe`.

use std::io::Write as _;
use std::time::Duration;

use keel_cuda::{DriverProbe, probe_with_timeout};

use crate::args::ProbeArgs;
use crate::exit::Exit;
use crate::render;

pub(crate) fn run(args: &ProbeArgs) -> miette::Result<Exit> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        miette::bail!(
            "--timeout must be a positive number of seconds, not {}",
            args.timeout
        );
    }
    let probe = DriverProbe {
        free_memory: args.free_memory,
    };
    let report = match probe_with_timeout(probe, Duration::from_secs_f64(args.timeout)) {
        Ok(report) => report,
        Err(error) => {
            crate::render::error(&miette::Report::new_boxed(Box::new(
                miette::MietteDiagnostic::new(error.to_string()).with_help(
                    "check `nvidia-smi`; a driver that fails here fails the training job too",
                ),
            )));
            return Ok(Exit::Found);
        }
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        render::json(&report)?;
        return Ok(Exit::Ok);
    }
    let _ = writeln!(stdout, "{}", report.summary());
    if report.devices.is_empty() {
        return Ok(Exit::Ok);
    }
    let _ = writeln!(
        stdout,
        "ORD  CC    MEMORY      FREE        PCI BUS ID        UUID                                      NAME"
    );
    for device in &report.devices {
        let gib = |bytes: u64| format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30));
        let _ = writeln!(
            stdout,
            "{:<3}  {:<4}  {:<10}  {:<10}  {:<16}  {:<40}  {}",
            device.ordinal,
            format!(
                "{}.{}",
                device.compute_capability[0], device.compute_capability[1]
            ),
            gib(device.total_memory_bytes),
            device.free_memory_bytes.map_or_else(|| "-".to_owned(), gib),
            device.pci_bus_id,
            device.uuid,
            device.name
        );
    }
    Ok(Exit::Ok)
}
