//! `keel fleet hash` and `keel fleet verify`: every rank of an `mpirun`/`srun` job hashes or
//! verifies its own prefix, rank 0 prints one grouped report, and every rank exits alike.
//!
//! Nothing needs a shared file system: results travel over the communicator. `fleet hash`
//! moves little: every rank all-gathers its root hash (or its error) first, so every rank
//! knows the groups and the verdict; then only one rank of each group sends its whole
//! fingerprint to rank 0, which runs `keel diff`'s comparison over those. `fleet verify`
//! gathers each rank's findings (one line each) and installed packages to rank 0.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use keel_dist::Collective;
use keel_prefix::{DiffReport, Fingerprint, HashOptions};
use miette::IntoDiagnostic as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::args::{FleetHashArgs, FleetVerifyArgs};
use crate::exit::Exit;
use crate::prefix::{print_changes, shown, verify_findings, verify_summary};
use crate::render;
use crate::world::{self, agree_exit, one_line, ranks_label};

/// The prefix every rank looks at: the argument, else `$CONDA_PREFIX`.
fn prefix(given: Option<&PathBuf>) -> miette::Result<PathBuf> {
    given
        .cloned()
        .or_else(|| {
            std::env::var_os("CONDA_PREFIX")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        })
        .ok_or_else(|| miette::miette!("no PREFIX given and $CONDA_PREFIX is not set"))
}

/// What every rank tells every other in `fleet hash`'s first round.
#[derive(Debug, Serialize, Deserialize)]
struct HashSummary {
    host: String,
    #[serde(default)]
    prefix: Option<PathBuf>,
    #[serde(default)]
    root: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// Groups of ranks by a key, the largest first (ties: the group with the lowest rank).
fn groups<K: PartialEq>(keys: impl IntoIterator<Item = K>) -> Vec<(K, Vec<usize>)> {
    let mut groups: Vec<(K, Vec<usize>)> = Vec::new();
    for (rank, key) in keys.into_iter().enumerate() {
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, ranks)) => ranks.push(rank),
            None => groups.push((key, vec![rank])),
        }
    }
    // Stable: equal sizes keep the order of their first rank.
    groups.sort_by_key(|(_, ranks)| std::cmp::Reverse(ranks.len()));
    groups
}

/// Rank 0's list of the ranks that failed.
fn print_failures<'a>(failures: impl Iterator<Item = (usize, &'a str, &'a str)>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "error: keel fleet: these ranks failed (every rank exits 2):"
    );
    for (rank, host, error) in failures {
        let _ = writeln!(err, "  rank {rank} on {}: {}", shown(host), shown(error));
    }
}

fn exit(code: u8) -> Exit {
    Exit::from_code(code)
}

pub(crate) fn hash(args: &FleetHashArgs) -> miette::Result<Exit> {
    let world = world::connect()?;
    let world = &*world;
    let host = world::host_name();
    let local = prefix(args.prefix.as_ref()).and_then(|prefix| {
        let options = HashOptions {
            cache_dir: (!args.no_cache).then(|| {
                args.cache_dir
                    .clone()
                    .unwrap_or_else(|| render::cache_dir("fingerprints"))
            }),
            full: args.full,
            exclude: args.exclude.clone(),
            label: Some(host.clone()),
            ..HashOptions::default()
        };
        keel_prefix::fingerprint(&prefix, &options)
            .map(|(fingerprint, _)| fingerprint)
            .into_diagnostic()
    });
    let summary = HashSummary {
        host: host.clone(),
        prefix: local.as_ref().ok().map(|f| f.prefix.clone()),
        root: local.as_ref().ok().map(|f| f.root.clone()),
        error: local.as_ref().err().map(one_line),
    };
    // Round one: every rank learns every root, so every rank knows the groups and whether
    // any rank failed, and decides alike.
    let gathered = world
        .all_gather_bytes(&serde_json::to_vec(&summary).into_diagnostic()?)
        .into_diagnostic()?;
    let summaries: Vec<HashSummary> = gathered
        .iter()
        .map(|bytes| {
            serde_json::from_slice(bytes).unwrap_or_else(|error| HashSummary {
                host: "(unknown host)".into(),
                prefix: None,
                root: None,
                error: Some(format!("sent a summary that does not parse ({error})")),
            })
        })
        .collect();
    if summaries.iter().any(|s| s.error.is_some()) {
        if world.rank() == 0 {
            print_failures(
                summaries
                    .iter()
                    .enumerate()
                    .filter_map(|(rank, s)| s.error.as_deref().map(|e| (rank, s.host.as_str(), e))),
            );
        }
        world::stop_together(world)?;
        return Ok(exit(2));
    }
    let mine = local?;
    let groups = groups(summaries.iter().map(|s| s.root.clone().unwrap_or_default()));
    // Round two: the first rank of each group sends its fingerprint to rank 0.
    let representative = groups.iter().any(|(_, ranks)| ranks[0] == world.rank());
    // The others send one byte, never nothing: Open MPI takes an empty slice's address
    // (Rust's dangling 0x1) for MPI_IN_PLACE, which a rank other than the root may not pass.
    let bytes = if representative {
        serde_json::to_vec(&mine).into_diagnostic()?
    } else {
        b"-".to_vec()
    };
    let gathered = world.gather_bytes(0, &bytes).into_diagnostic()?;
    let code = match gathered {
        Some(gathered) => match report_hash(args, world, &summaries, &groups, &gathered) {
            Ok(code) => code,
            Err(error) => {
                render::error(&error);
                2
            }
        },
        None => 0,
    };
    Ok(exit(agree_exit(world, code)?))
}

/// Rank 0: the fingerprints of the groups' first ranks compared as `keel diff` does.
fn report_hash(
    args: &FleetHashArgs,
    world: &dyn Collective,
    summaries: &[HashSummary],
    groups: &[(String, Vec<usize>)],
    gathered: &[Vec<u8>],
) -> miette::Result<u8> {
    let hosts = |ranks: &[usize]| -> Vec<String> {
        ranks.iter().map(|&r| summaries[r].host.clone()).collect()
    };
    let mut fingerprints: Vec<Fingerprint> = Vec::with_capacity(groups.len());
    for (root, ranks) in groups {
        let rank = ranks[0];
        let mut fingerprint: Fingerprint = gathered
            .get(rank)
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .ok_or_else(|| miette::miette!("rank {rank} sent a fingerprint that does not parse"))?;
        if &fingerprint.root != root {
            miette::bail!(
                "rank {rank} sent a fingerprint with root {} after reporting {root}",
                fingerprint.root
            );
        }
        fingerprint.label = ranks_label(ranks, &hosts(ranks));
        fingerprints.push(fingerprint);
    }
    // One fingerprint per group, the largest group first: diff's reference is that group.
    let report: DiffReport = keel_prefix::diff(&fingerprints);
    let uniform = groups.len() <= 1;
    if args.json {
        let groups_json: Vec<_> = groups
            .iter()
            .map(|(root, ranks)| json!({ "root": root, "ranks": ranks, "hosts": hosts(ranks) }))
            .collect();
        let ranks_json: Vec<_> = summaries
            .iter()
            .enumerate()
            .map(|(rank, s)| json!({ "rank": rank, "host": s.host, "prefix": s.prefix, "root": s.root }))
            .collect();
        render::json(&json!({
            "world": world.size(),
            "uniform": uniform,
            "groups": groups_json,
            "differences": report.differences,
            "ranks": ranks_json,
        }))?;
    } else {
        let mut out = std::io::stdout().lock();
        for (index, (root, ranks)) in groups.iter().enumerate() {
            let role = if index == 0 { "reference" } else { "differs" };
            let _ = writeln!(
                out,
                "{} {role:<9} {}",
                shown(root.get(..16).unwrap_or(root)),
                ranks_label(ranks, &hosts(ranks))
            );
        }
        if world.size() == 1 {
            let _ = writeln!(out, "1 rank, nothing to compare");
        } else if uniform {
            let _ = writeln!(out, "all {} ranks have the same prefix", world.size());
        }
        for difference in &report.differences {
            print_changes(&mut out, difference);
        }
    }
    Ok(if uniform { 0 } else { 1 })
}

/// What every rank sends rank 0 in `fleet verify`.
#[derive(Debug, Serialize, Deserialize)]
struct VerifySummary {
    host: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    clean: bool,
    /// Installed conda packages: name to `version build`.
    #[serde(default)]
    packages: BTreeMap<String, String>,
    /// `keel verify`'s findings, one line each.
    #[serde(default)]
    findings: Vec<String>,
    #[serde(default)]
    summary: String,
    /// The whole report, for `--json`.
    #[serde(default)]
    report: serde_json::Value,
}

fn verify_local(args: &FleetVerifyArgs, host: &str) -> miette::Result<VerifySummary> {
    let prefix = prefix(args.prefix.as_ref())?;
    let lock = args
        .lock
        .clone()
        .or_else(|| Some(PathBuf::from("keel.lock")).filter(|path| path.is_file()));
    let locked = match &lock {
        Some(path) => {
            let platform = crate::prefix::platform(args.platform.as_deref())?;
            Some(
                keel_prefix::locked_packages(path, &args.environment, platform)
                    .into_diagnostic()?,
            )
        }
        None => None,
    };
    let report =
        keel_prefix::verify(&prefix, lock.as_deref().zip(locked.as_ref())).into_diagnostic()?;
    let packages = keel_prefix::installed_packages(&prefix)
        .into_diagnostic()?
        .into_iter()
        .map(|record| {
            let package = record.repodata_record.package_record;
            (
                package.name.as_normalized().to_string(),
                format!("{} {}", package.version, package.build),
            )
        })
        .collect();
    Ok(VerifySummary {
        host: host.to_string(),
        error: None,
        clean: report.is_clean(),
        packages,
        findings: verify_findings(&report),
        summary: verify_summary(&report),
        report: serde_json::to_value(&report).into_diagnostic()?,
    })
}

/// What differs in `here`'s packages from `reference`'s, as `keel diff` words it.
fn package_changes(
    reference: &BTreeMap<String, String>,
    here: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut versions = Vec::new();
    let mut other = Vec::new();
    for (name, version) in here {
        match reference.get(name) {
            Some(theirs) if theirs != version => versions.push(format!(
                "  package {}: {} (reference {})",
                shown(name),
                shown(version),
                shown(theirs)
            )),
            None => other.push(format!("  + package {} {}", shown(name), shown(version))),
            _ => {}
        }
    }
    for (name, version) in reference {
        if !here.contains_key(name) {
            other.push(format!("  - package {} {}", shown(name), shown(version)));
        }
    }
    versions.append(&mut other);
    versions
}

pub(crate) fn verify(args: &FleetVerifyArgs) -> miette::Result<Exit> {
    let world = world::connect()?;
    let world = &*world;
    let host = world::host_name();
    let summary = verify_local(args, &host).unwrap_or_else(|error| VerifySummary {
        host: host.clone(),
        error: Some(one_line(&error)),
        clean: false,
        packages: BTreeMap::new(),
        findings: Vec::new(),
        summary: String::new(),
        report: serde_json::Value::Null,
    });
    let gathered = world
        .gather_bytes(0, &serde_json::to_vec(&summary).into_diagnostic()?)
        .into_diagnostic()?;
    let code = match gathered {
        Some(gathered) => report_verify(args, world, &gathered),
        None => 0,
    };
    Ok(exit(agree_exit(world, code)?))
}

/// Rank 0: the ranks grouped by findings and installed packages.
fn report_verify(args: &FleetVerifyArgs, world: &dyn Collective, gathered: &[Vec<u8>]) -> u8 {
    let summaries: Vec<VerifySummary> = gathered
        .iter()
        .map(|bytes| {
            serde_json::from_slice(bytes).unwrap_or_else(|error| VerifySummary {
                host: "(unknown host)".into(),
                error: Some(format!("sent a report that does not parse ({error})")),
                clean: false,
                packages: BTreeMap::new(),
                findings: Vec::new(),
                summary: String::new(),
                report: serde_json::Value::Null,
            })
        })
        .collect();
    if summaries.iter().any(|s| s.error.is_some()) {
        print_failures(
            summaries
                .iter()
                .enumerate()
                .filter_map(|(rank, s)| s.error.as_deref().map(|e| (rank, s.host.as_str(), e))),
        );
        return 2;
    }
    let groups = groups(summaries.iter().map(|s| (&s.packages, &s.findings)));
    let hosts = |ranks: &[usize]| -> Vec<String> {
        ranks.iter().map(|&r| summaries[r].host.clone()).collect()
    };
    let uniform = groups.len() <= 1;
    let clean = summaries.iter().all(|s| s.clean);
    if args.json {
        let groups_json: Vec<_> = groups
            .iter()
            .map(|(_, ranks)| {
                json!({
                    "ranks": ranks,
                    "hosts": hosts(ranks),
                    "clean": summaries[ranks[0]].clean,
                    "findings": summaries[ranks[0]].findings,
                })
            })
            .collect();
        let ranks_json: Vec<_> = summaries
            .iter()
            .enumerate()
            .map(|(rank, s)| json!({ "rank": rank, "host": s.host, "report": s.report }))
            .collect();
        if render::json(&json!({
            "world": world.size(),
            "uniform": uniform,
            "clean": clean,
            "groups": groups_json,
            "ranks": ranks_json,
        }))
        .is_err()
        {
            return 2;
        }
    } else {
        let mut out = std::io::stdout().lock();
        for (index, (_, ranks)) in groups.iter().enumerate() {
            let role = if index == 0 { "reference" } else { "differs" };
            let state = if summaries[ranks[0]].clean {
                "clean  "
            } else {
                "DRIFTED"
            };
            let _ = writeln!(
                out,
                "{role:<9} {state} {}",
                ranks_label(ranks, &hosts(ranks))
            );
        }
        let reference = &summaries[groups[0].1[0]];
        for (index, (_, ranks)) in groups.iter().enumerate() {
            let first = &summaries[ranks[0]];
            let changes = if index == 0 {
                Vec::new()
            } else {
                package_changes(&reference.packages, &first.packages)
            };
            if first.findings.is_empty() && changes.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{}:", ranks_label(ranks, &hosts(ranks)));
            if !changes.is_empty() {
                let _ = writeln!(out, " installed packages, against the reference:");
                for line in changes {
                    let _ = writeln!(out, "{line}");
                }
            }
            for line in &first.findings {
                let _ = writeln!(out, "  {line}");
            }
            let _ = writeln!(out, "  {}", first.summary);
        }
        if uniform && clean && world.size() > 1 {
            let _ = writeln!(
                out,
                "all {} ranks verify clean with the same packages",
                world.size()
            );
        }
    }
    if uniform && clean { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_put_the_largest_first_and_ties_to_the_lowest_rank() {
        let found = groups(["b", "a", "a", "b", "c", "a"]);
        assert_eq!(
            found,
            [("a", vec![1, 2, 5]), ("b", vec![0, 3]), ("c", vec![4])]
        );
        assert_eq!(groups(["x", "y"]), [("x", vec![0]), ("y", vec![1])]);
    }

    #[test]
    fn package_changes_list_versions_first() {
        let reference: BTreeMap<String, String> = [
            ("libdemo".to_string(), "1.0 h0_0".to_string()),
            ("gone".to_string(), "1 0".to_string()),
        ]
        .into();
        let here: BTreeMap<String, String> = [
            ("libdemo".to_string(), "1.1 h0_0".to_string()),
            ("added".to_string(), "2 0".to_string()),
        ]
        .into();
        assert_eq!(
            package_changes(&reference, &here),
            [
                "  package libdemo: 1.1 h0_0 (reference 1.0 h0_0)",
                "  + package added 2 0",
                "  - package gone 1 0",
            ]
        );
    }
}
