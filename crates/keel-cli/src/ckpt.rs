//! `keel ckpt list`, `keel ckpt verify`, `keel ckpt prune`.

use std::io::Write as _;

use keel_ckpt::{
    CheckpointId, CheckpointStore, Goal, Listed, Location, Manifest, Retention, Status,
};
use miette::IntoDiagnostic as _;
use serde::Serialize;

use crate::args::{CkptListArgs, CkptPruneArgs};
use crate::exit::Exit;
use crate::render;

/// Every `keel ckpt` command needs a store that is there: a mistyped path is an error (exit 2),
/// and nothing is created.
fn open(store: &str) -> miette::Result<CheckpointStore> {
    let location: Location = store.parse().into_diagnostic()?;
    CheckpointStore::at_existing(&location).into_diagnostic()
}

/// One warning line on stderr per problem, naming the checkpoint's folder in the store (the
/// reason names the file). Returns how many are failures (a folder not keel's is not).
fn warn_problems<'a>(
    store: &CheckpointStore,
    problems: impl IntoIterator<Item = (&'a CheckpointId, &'a str, bool)>,
) -> usize {
    let mut err = std::io::stderr().lock();
    let mut failures = 0;
    for (id, problem, foreign) in problems {
        let what = if foreign { "note" } else { "warning" };
        let _ = writeln!(err, "{what}: {}/{id}: {problem}", store.location());
        failures += usize::from(!foreign);
    }
    failures
}

fn listed_problems(listed: &[Listed]) -> impl Iterator<Item = (&CheckpointId, &str, bool)> {
    listed.iter().filter_map(|l| {
        l.problem
            .as_deref()
            .map(|p| (&l.id, p, l.status == Status::Foreign))
    })
}

fn time(manifest: &Manifest) -> String {
    i64::try_from(manifest.created_unix_ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(
            || "?".to_string(),
            |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        )
}

fn metrics(manifest: &Manifest) -> String {
    manifest
        .metrics
        .iter()
        .map(|(name, value)| format!("{name}={value:.6}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_table(rows: &[(String, &Listed)]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<11}  {:>10}  {:>5}  {:<19}  {:<8}  METRICS / PROBLEM",
        "KIND", "STEP", "EPOCH", "SAVED (UTC)", "STATUS"
    );
    for (status, listed) in rows {
        match &listed.manifest {
            Some(manifest) => {
                let detail = if status == "ok" || status == "listed" {
                    metrics(manifest)
                } else {
                    listed.problem.clone().unwrap_or_default()
                };
                let _ = writeln!(
                    out,
                    "{:<11}  {:>10}  {:>5}  {:<19}  {:<8}  {}",
                    listed.id.kind,
                    manifest.step,
                    manifest.epoch,
                    time(manifest),
                    status,
                    detail
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{:<11}  {:>10}  {:>5}  {:<19}  {:<8}  {}",
                    listed.id.kind,
                    "-",
                    "-",
                    "-",
                    status,
                    listed.problem.as_deref().unwrap_or("")
                );
            }
        }
    }
}

pub(crate) fn list(args: &CkptListArgs) -> miette::Result<Exit> {
    let store = open(&args.store)?;
    let listed = store.list().into_diagnostic()?;
    if args.json {
        render::json(&listed)?;
    } else {
        let rows: Vec<(String, &Listed)> = listed
            .iter()
            .map(|l| {
                let status = match l.status {
                    Status::Readable => "listed",
                    Status::Foreign => "foreign",
                    Status::Incomplete => "partial",
                    _ => "invalid",
                };
                (status.to_string(), l)
            })
            .collect();
        print_table(&rows);
        let _ = writeln!(
            std::io::stdout().lock(),
            "{} checkpoint(s) in {} (manifests read; `keel ckpt verify` checks the data)",
            listed.len(),
            store.location()
        );
    }
    let failures = warn_problems(&store, listed_problems(&listed));
    Ok(if failures == 0 { Exit::Ok } else { Exit::Found })
}

#[derive(Serialize)]
struct Verified<'a> {
    id: String,
    valid: bool,
    problem: Option<String>,
    manifest: Option<&'a Manifest>,
}

pub(crate) fn verify(args: &CkptListArgs) -> miette::Result<Exit> {
    let store = open(&args.store)?;
    let mut listed = store.list().into_diagnostic()?;
    for entry in &mut listed {
        if entry.manifest.is_some()
            && let Err(error) = store.verify(&entry.id)
        {
            entry.problem = Some(error.to_string());
        }
    }
    let bad = listed
        .iter()
        .filter(|l| l.problem.is_some() && l.status != Status::Foreign)
        .count();
    if args.json {
        let report: Vec<Verified<'_>> = listed
            .iter()
            .map(|l| Verified {
                id: l.id.to_string(),
                valid: l.problem.is_none(),
                problem: l.problem.clone(),
                manifest: l.manifest.as_ref(),
            })
            .collect();
        render::json(&report)?;
    } else {
        let rows: Vec<(String, &Listed)> = listed
            .iter()
            .map(|l| {
                let status = match (l.status, &l.problem) {
                    (Status::Foreign, _) => "foreign",
                    (_, None) => "ok",
                    (_, Some(_)) => "CORRUPT",
                };
                (status.to_string(), l)
            })
            .collect();
        print_table(&rows);
        let _ = writeln!(
            std::io::stdout().lock(),
            "{} checkpoint(s), {} corrupt or incomplete, in {}",
            listed.len(),
            bad,
            store.location()
        );
    }
    warn_problems(&store, listed_problems(&listed));
    Ok(if bad == 0 { Exit::Ok } else { Exit::Found })
}

pub(crate) fn prune(args: &CkptPruneArgs) -> miette::Result<Exit> {
    if args.keep_last == 0 {
        miette::bail!("--keep-last must be at least 1 (the newest checkpoint is always kept)");
    }
    let store = open(&args.store)?;
    let retention = Retention {
        keep_last: args.keep_last,
        keep_best: args.keep_best,
        keep_every: args.keep_every,
        best_metric: args
            .metric
            .clone()
            .map(|metric| (metric, if args.maximize { Goal::Max } else { Goal::Min })),
    };
    let pruned = store.prune(&retention).into_diagnostic()?;
    if args.json {
        render::json(&pruned)?;
    } else {
        let mut out = std::io::stdout().lock();
        for id in &pruned.deleted {
            let _ = writeln!(out, "deleted {id}");
        }
        for temporary in &pruned.temporaries {
            let _ = writeln!(out, "deleted {temporary} (an interrupted write)");
        }
        let _ = writeln!(
            out,
            "{} checkpoint(s) deleted from {}, {} left alone",
            pruned.deleted.len(),
            store.location(),
            pruned.left.len()
        );
    }
    // What prune may not delete is reported; a folder that is not keel's is only noted.
    let failures = warn_problems(
        &store,
        pruned.left.iter().map(|(id, reason)| {
            let foreign = keel_ckpt::parse_folder_name(&id.name).is_none();
            (id, reason.as_str(), foreign)
        }),
    );
    Ok(if failures == 0 { Exit::Ok } else { Exit::Found })
}
