//! The ranks a command runs on: one process, or every rank of an `mpirun`/`srun` job, and
//! how they agree on failures so that no rank leaves a collective the others have entered.
//!
//! A process that no launcher started runs on [`Single`] in every build: it never
//! initialises MPI (a singleton `MPI_Init` would start Open MPI's runtime for nothing and
//! fail where it cannot). Started by a launcher, a build with the `mpi` feature initialises
//! MPI and checks that the communicator is the world the launcher started; a build without
//! it refuses a world of more than one.

use std::sync::Arc;

use keel_dist::{Collective, Launch, Launcher, Single};
use miette::IntoDiagnostic as _;

/// Every rank of this job, as one communicator.
pub(crate) fn connect() -> miette::Result<Arc<dyn Collective>> {
    let launch = Launch::detect().into_diagnostic()?;
    if launch.launcher == Launcher::None {
        return Ok(Arc::new(Single));
    }
    connect_launched(&launch)
}

#[cfg(feature = "mpi")]
fn connect_launched(launch: &Launch) -> miette::Result<Arc<dyn Collective>> {
    let world = keel_dist::Mpi::init().into_diagnostic()?;
    launch.verify_world(&world).into_diagnostic()?;
    // keel-train holds the communicator in an `Arc` (its API), on this thread only: `Mpi` is
    // neither `Send` nor `Sync`, and MPI is called from the thread that initialised it.
    #[allow(clippy::arc_with_non_send_sync)]
    Ok(Arc::new(world))
}

#[cfg(not(feature = "mpi"))]
fn connect_launched(launch: &Launch) -> miette::Result<Arc<dyn Collective>> {
    keel_dist::refuse_without_mpi(launch).into_diagnostic()?;
    Ok(Arc::new(Single))
}

/// This node's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`).
pub(crate) fn host_name() -> String {
    fs_err::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// `rank 3 on node-a`, `ranks 0-2, 5 on node-a, node-b`.
pub(crate) fn ranks_label(ranks: &[usize], hosts: &[String]) -> String {
    let noun = if ranks.len() == 1 { "rank" } else { "ranks" };
    let mut parts: Vec<String> = Vec::new();
    let mut index = 0;
    while index < ranks.len() {
        let start = ranks[index];
        let mut end = start;
        while index + 1 < ranks.len() && ranks[index + 1] == end + 1 {
            index += 1;
            end = ranks[index];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        index += 1;
    }
    let mut hosts: Vec<String> = hosts
        .iter()
        .map(|h| crate::prefix::shown(h).into_owned())
        .collect();
    hosts.sort();
    hosts.dedup();
    format!("{noun} {} on {}", parts.join(", "), hosts.join(", "))
}

/// An error as one line: its message and every cause.
pub(crate) fn one_line(error: &miette::Report) -> String {
    error
        .chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// What a rank does after [`agree`]: go on with its own result, or stop.
pub(crate) enum Agreed<T> {
    /// Every rank succeeded.
    Go(T),
    /// Some rank failed and the failure is printed (rank 0: every failed rank's; a failed
    /// rank: its own): stop with exit 2.
    Stop,
}

/// Every rank tells every other whether its local work succeeded (an all-gather of the error
/// text, or a mark that it did). When one failed, every rank learns it alike: rank 0 prints
/// every failed rank's error (its own included), another failed rank prints its own, the
/// others stay quiet, and all stop together (exit 2). In a world of one the error is
/// returned as it is.
pub(crate) fn agree<T>(
    world: &dyn Collective,
    local: miette::Result<T>,
    host: &str,
) -> miette::Result<Agreed<T>> {
    if world.size() == 1 {
        return local.map(Agreed::Go);
    }
    // `-` alone: success; `!` and the text: failure. Never an empty buffer: Open MPI takes an
    // empty slice's address (Rust's dangling 0x1) for MPI_IN_PLACE.
    let message = match &local {
        Ok(_) => "-".to_string(),
        Err(error) => format!("!{host}\n{}", one_line(error)),
    };
    let gathered = world
        .all_gather_bytes(message.as_bytes())
        .into_diagnostic()?;
    let failed: Vec<(usize, String)> = gathered
        .iter()
        .enumerate()
        .filter(|(_, bytes)| bytes.as_slice() != b"-")
        .map(|(rank, bytes)| {
            let text = String::from_utf8_lossy(bytes.strip_prefix(b"!").unwrap_or(bytes));
            let (host, error) = text.split_once('\n').unwrap_or(("(unknown host)", &text));
            let (host, error) = (crate::prefix::shown(host), crate::prefix::shown(error));
            (rank, format!("rank {rank} on {host}: {error}"))
        })
        .collect();
    if failed.is_empty() {
        return local.map(Agreed::Go);
    }
    if world.rank() == 0 {
        let lines: Vec<&str> = failed.iter().map(|(_, line)| line.as_str()).collect();
        let ranks: Vec<String> = failed.iter().map(|(rank, _)| rank.to_string()).collect();
        crate::render::error(&miette::miette!(
            "{} of {} ranks failed (rank {}), every rank stops:\n  {}",
            failed.len(),
            world.size(),
            ranks.join(", "),
            lines.join("\n  ")
        ));
    } else if let Err(error) = &local {
        crate::render::error(error);
    }
    // Open MPI's mpirun kills the job when the first rank exits non-zero: nobody leaves
    // before rank 0 has printed.
    stop_together(world)?;
    Ok(Agreed::Stop)
}

/// A barrier before a job-wide non-zero exit, so that mpirun (which kills every rank when the
/// first one exits non-zero) does not cut short what rank 0 is printing.
pub(crate) fn stop_together(world: &dyn Collective) -> miette::Result<()> {
    world.barrier().into_diagnostic()
}

/// Rank 0's exit code, on every rank (a broadcast of one byte), so that every rank of a
/// job exits alike although only rank 0 read everyone's results.
pub(crate) fn agree_exit(world: &dyn Collective, code: u8) -> miette::Result<u8> {
    let mut bytes = vec![code];
    world.broadcast_bytes(0, &mut bytes).into_diagnostic()?;
    Ok(bytes.first().copied().unwrap_or(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_label_writes_runs_as_ranges_and_hosts_once() {
        let hosts = ["b".to_string(), "a".to_string(), "a".to_string()];
        assert_eq!(ranks_label(&[3], &hosts[..1]), "rank 3 on b");
        assert_eq!(
            ranks_label(&[0, 1, 2, 5, 7, 8], &hosts),
            "ranks 0-2, 5, 7-8 on a, b"
        );
    }

    #[test]
    fn a_world_of_one_agrees_with_itself() {
        let ok = agree(&Single, Ok(7), "node").unwrap();
        assert!(matches!(ok, Agreed::Go(7)));
        let failed = agree::<()>(&Single, Err(miette::miette!("no prefix")), "node");
        assert_eq!(failed.err().unwrap().to_string(), "no prefix");
        assert_eq!(agree_exit(&Single, 1).unwrap(), 1);
    }
}
