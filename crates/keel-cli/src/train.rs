//! `keel train`: the configured run with a progress bar, and where everything went.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use keel_cuda::{DriverProbe, ProbeReport, probe_with_timeout};
use keel_dist::Collective;
use keel_train::{Event, RunOptions, RunPaths, Status, StopSignal, TrainConfig, TrainError};
use miette::{IntoDiagnostic as _, WrapErr as _};
use serde_json::json;

use crate::args::TrainArgs;
use crate::exit::Exit;
use crate::world::{self, Agreed};
use crate::{gate, render};

fn signal_name(signal: i32) -> String {
    match signal {
        2 => "SIGINT".into(),
        15 => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}

/// Moves `dir` aside to `dir.<time>` (`-2`, `-3`, ... when taken); returns where it went.
fn move_aside(dir: &Path) -> miette::Result<PathBuf> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let stamp = format!("{name}.{}", jiff::Zoned::now().strftime("%Y%m%d-%H%M%S"));
    let mut target = dir.with_file_name(&stamp);
    let mut n = 1;
    while target.exists() {
        n += 1;
        target = dir.with_file_name(format!("{stamp}-{n}"));
    }
    fs_err::rename(dir, &target).into_diagnostic()?;
    Ok(target)
}

/// Whether `dir` is there and holds anything.
fn holds_anything(dir: &Path) -> miette::Result<bool> {
    match fs_err::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error).into_diagnostic(),
    }
}

/// `--fresh`: nothing of an earlier run is resumed, and nothing is deleted. The run folder is
/// moved aside, and so is a local checkpoint folder outside it (`[checkpoint] dir`); a
/// checkpoint folder that holds the run folder (and maybe other runs) is refused, and object
/// storage, which cannot be moved, must be empty (the trainer checks). Returns what was moved
/// where, for the log.
fn start_fresh(paths: &RunPaths) -> miette::Result<Vec<String>> {
    let mut said = Vec::new();
    if let Some(checkpoints) = paths.checkpoints.local_path()
        && holds_anything(checkpoints)?
        && paths.run_dir.exists()
    {
        let store = fs_err::canonicalize(checkpoints).into_diagnostic()?;
        let run = fs_err::canonicalize(&paths.run_dir).into_diagnostic()?;
        if run != store && run.starts_with(&store) {
            miette::bail!(
                help = "give the run a checkpoint folder of its own ([checkpoint] dir), or move                         its checkpoints away yourself",
                "--fresh: the checkpoint folder {} holds the run folder {}; moving it aside                  would move more than this run",
                checkpoints.display(),
                paths.run_dir.display()
            );
        }
    }
    if paths.run_dir.exists() {
        let moved = move_aside(&paths.run_dir)?;
        said.push(format!(
            "--fresh: moved the previous run to {}",
            moved.display()
        ));
    }
    // A checkpoint folder inside the run folder went with it.
    if let Some(checkpoints) = paths.checkpoints.local_path()
        && holds_anything(checkpoints)?
    {
        let moved = move_aside(checkpoints).wrap_err_with(|| {
            format!(
                "--fresh: cannot move the checkpoints in {} aside",
                checkpoints.display()
            )
        })?;
        said.push(format!(
            "--fresh: moved the previous checkpoints to {}",
            moved.display()
        ));
    }
    Ok(said)
}

/// The device probe to record in checkpoints, and (in a build with CUDA) a check that a CUDA
/// device asked for exists: candle's own error says less, and without a GPU it is a bare
/// driver code. A build without CUDA leaves the refusal to `parse_device`, which says so.
fn probe(device: &str) -> miette::Result<Option<ProbeReport>> {
    let report = probe_with_timeout(DriverProbe::default(), Duration::from_secs(10));
    let wants_cuda = device.starts_with("cuda") && cfg!(feature = "cuda");
    let report = match report {
        Ok(report) => report,
        Err(error) if wants_cuda => miette::bail!(
            help = "check `nvidia-smi`, or train with `--device cpu`",
            "device `{device}`: {error}"
        ),
        Err(_) => return Ok(None),
    };
    if wants_cuda {
        if report.driver.is_none() {
            miette::bail!("device `{device}`: no CUDA driver found on this node (`keel probe`)");
        }
        let ordinal: usize = device
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if ordinal >= report.devices.len() {
            miette::bail!(
                "device `{device}`: this node has {} visible GPU(s) ({})",
                report.devices.len(),
                report.summary()
            );
        }
    }
    Ok(report.driver.is_some().then_some(report))
}

/// The configuration file's bytes, for the gate's hash. `TrainConfig::from_path` has read
/// and checked the file (regular, at most `MAX_CONFIG_BYTES`); this reads it again the same
/// way, bounded.
fn config_bytes(path: &Path) -> miette::Result<Vec<u8>> {
    let file = fs_err::File::open(path).into_diagnostic()?;
    if !file.metadata().into_diagnostic()?.is_file() {
        miette::bail!("{} is not a regular file", path.display());
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, keel_train::MAX_CONFIG_BYTES),
        &mut bytes,
    )
    .into_diagnostic()?;
    Ok(bytes)
}

/// Everything a rank checks and learns before the gate: the settings, the device, the
/// environment, and the facts that must agree across ranks. Nothing is written yet.
struct Prepared {
    config: TrainConfig,
    device_probe: Option<serde_json::Value>,
    environment: gate::Environment,
    facts: keel_dist::RankFacts,
}

fn prepare(args: &TrainArgs, world: &dyn Collective, host: &str) -> miette::Result<Prepared> {
    let (mut config, bytes) = match &args.config {
        Some(path) => (
            TrainConfig::from_path(path).into_diagnostic()?,
            config_bytes(path)?,
        ),
        None => (TrainConfig::default(), Vec::new()),
    };
    if let Some(device) = &args.device {
        config.device.clone_from(device);
    }
    if let Some(epochs) = args.epochs {
        if epochs == 0 {
            miette::bail!("--epochs must be at least 1");
        }
        config.epochs = epochs;
    }
    if let Some(runs_dir) = &args.runs_dir {
        config.runs_dir.clone_from(runs_dir);
    }
    // Fail on a device this build or node cannot use before touching anything: keel-cuda's
    // probe first (no driver, a driver that fails, no such ordinal), then candle's own check.
    let report = probe(&config.device)?;
    keel_train::parse_device(&config.device).into_diagnostic()?;
    let prefix = gate::prefix_to_hash(args.prefix.as_deref(), world.size() > 1);
    let environment = gate::environment(prefix.as_deref(), args.environment.as_deref(), host)?;
    let facts = gate::facts(
        world.rank(),
        host,
        &environment,
        report.as_ref(),
        gate::config_hash(&bytes, args.epochs, args.runs_dir.as_deref()),
    );
    Ok(Prepared {
        config,
        device_probe: report.and_then(|r| serde_json::to_value(&r).ok()),
        environment,
        facts,
    })
}

pub(crate) fn run(args: &TrainArgs) -> miette::Result<Exit> {
    // A build without the `mpi` feature refuses to be one of several ranks here: N copies
    // started by `mpirun -np N` or `srun -n N` would each train alone and write one store.
    // With it, the launcher's ranks become one MPI world; a process no launcher started is a
    // world of one and never initialises MPI.
    let shared = world::connect()?;
    let world = &*shared;
    let host = world::host_name();
    // Every rank checks its settings, device and environment; a failure on any rank stops all
    // of them (rank 0 names it) before the gate, so no rank waits in a collective alone.
    let prepared = match world::agree(world, prepare(args, world, &host), &host)? {
        Agreed::Go(prepared) => prepared,
        Agreed::Stop => return Ok(Exit::BadInput),
    };
    // The environment gate, before any checkpoint is read: every rank learns every rank's
    // facts and reaches the same verdict.
    let (report, every_rank) = keel_dist::gate_facts(world, &prepared.facts).into_diagnostic()?;
    if !report.is_uniform() {
        if world.rank() == 0 {
            let _ = writeln!(
                std::io::stderr(),
                "{}",
                gate::refusal(&report, args.allow_env_drift)
            );
        }
        if !args.allow_env_drift {
            world::stop_together(world)?;
            return Ok(Exit::BadInput);
        }
    }
    let Prepared {
        config,
        device_probe,
        environment,
        facts: _,
    } = prepared;
    let lead = world.rank() == 0;
    let paths = config.paths();
    if args.fresh {
        // Rank 0 writes the run (a shared folder for several ranks): it alone moves it aside,
        // and every rank learns whether that worked before any of them reads it.
        let moved = if lead {
            start_fresh(&paths)
        } else {
            Ok(Vec::new())
        };
        match world::agree(world, moved, &host)? {
            Agreed::Go(lines) => {
                for line in lines {
                    let _ = writeln!(std::io::stderr(), "{line}");
                }
            }
            Agreed::Stop => return Ok(Exit::BadInput),
        }
    }
    // Every rank's host and environment root go into each checkpoint beside rank 0's
    // fingerprint, so a resume on another set of hosts or environments says what changed.
    let recorded = environment.fingerprint.map(|mut fingerprint| {
        if world.size() > 1
            && let Some(object) = fingerprint.as_object_mut()
        {
            let ranks: Vec<serde_json::Value> = every_rank
                .iter()
                .map(|facts| {
                    serde_json::json!({
                        "rank": facts.rank,
                        "host": facts.host,
                        "root": facts.fingerprint_root,
                    })
                })
                .collect();
            object.insert("ranks".into(), ranks.into());
        }
        fingerprint
    });
    let options = RunOptions {
        // The store must now be empty: the trainer refuses one that is not (object storage,
        // or checkpoints written in between) rather than resume from it.
        fresh: args.fresh,
        nan_at_step: args.inject_nan_at,
        environment: recorded,
        device_probe,
    };
    let stop = StopSignal::install().into_diagnostic()?;
    // Rank 0 shows the run; the other ranks train silently but for their own warnings.
    let bar = if lead {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:20} {pos}/{len} steps  {msg}",
        )
        .into_diagnostic()?,
    );
    let started = Instant::now();
    let epochs = config.epochs;
    let mut steps_done_before = 0;
    // Lines go above the bar on a terminal, straight to stderr in a batch job's log.
    let several = world.size() > 1;
    let rank = world.rank();
    let say = |line: String| {
        if !lead {
            return;
        }
        if bar.is_hidden() {
            let _ = writeln!(std::io::stderr(), "{line}");
        } else {
            bar.println(line);
        }
    };
    let warn = |line: String| {
        if lead {
            say(format!("warning: {line}"));
        } else if several {
            let _ = writeln!(std::io::stderr(), "warning: rank {rank}: {line}");
        }
    };
    let mut observer = |event: &Event<'_>| match event {
        Event::Fresh { why } => say(format!("starting fresh: {why}")),
        Event::Resumed {
            id,
            step,
            epoch,
            batch,
            skipped,
            environment_changes,
        } => {
            for (id, why) in *skipped {
                say(format!("warning: skipped checkpoint {id}: {why}"));
            }
            for change in *environment_changes {
                say(format!("warning: {change}"));
            }
            if environment_changes
                .iter()
                .any(|change| change.starts_with("environment fingerprint changed"))
            {
                say("note: `keel diff` on the two fingerprints says what changed".into());
            }
            say(format!(
                "resuming from {id} (step {step}, epoch {epoch}, batch {batch})"
            ));
        }
        Event::Plan {
            total_steps, done, ..
        } => {
            steps_done_before = *done;
            bar.set_length(*total_steps);
            bar.set_position(*done);
        }
        Event::Step(row) => {
            bar.set_position(row.step);
            bar.set_message(format!(
                "epoch {}/{epochs}  loss {:.4}  {:.0}/s",
                row.epoch + 1,
                row.loss,
                row.samples_per_sec
            ));
        }
        Event::Evaluated {
            epoch,
            test_loss,
            test_accuracy,
        } => say(format!(
            "epoch {epoch}/{epochs}: test accuracy {:.2}%, test loss {test_loss:.4}",
            test_accuracy * 100.0
        )),
        Event::Saved { .. } => {}
        Event::SaveFailed(why) => warn(format!("a checkpoint save failed: {why}")),
        Event::Warning(why) => warn(why.to_string()),
    };
    let result = config.run_on(shared.clone(), &options, &stop, &mut observer);
    bar.finish_and_clear();
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(error @ TrainError::StepFailed { .. }) => {
            render::error(&miette::Report::msg(error.to_string()));
            return Ok(Exit::Found);
        }
        // What to do about a checkpoint of another run is the CLI's to say.
        Err(error @ (TrainError::Incompatible { .. } | TrainError::DataChanged { .. })) => {
            let result: miette::Result<Exit> = Err(miette::miette!(
                help = "train with --fresh (the old run is moved aside), or under another run \
                        name, to start over",
                "{error}"
            ));
            return match &args.config {
                Some(path) => result.wrap_err_with(|| format!("keel train {}", path.display())),
                None => result,
            };
        }
        Err(error @ TrainError::FreshNotEmpty { .. }) => {
            let help = if paths.checkpoints.is_local() {
                format!(
                    "move the checkpoints in {} away, or train under another run name",
                    paths.checkpoints
                )
            } else {
                format!(
                    "--fresh cannot move objects aside: delete or move the checkpoints under \
                     {}, or set [checkpoint] dir to another prefix",
                    paths.checkpoints
                )
            };
            return Err(miette::miette!(help = help, "{error}"));
        }
        // The configuration file is named: a data file's error alone does not say which
        // configuration pointed at it.
        Err(error) => {
            let result: miette::Result<Exit> = Err(error).into_diagnostic();
            return match &args.config {
                Some(path) => result.wrap_err_with(|| format!("keel train {}", path.display())),
                None => result,
            };
        }
    };
    let elapsed = started.elapsed();
    let code = match outcome.status {
        Status::Completed => Exit::Ok,
        Status::Interrupted { signal } => Exit::Signal(signal),
    };
    if !lead {
        // Every rank reached the same outcome; rank 0 reports it.
        return Ok(code);
    }
    let checkpoint = outcome.checkpoint.as_ref().map(ToString::to_string);
    if args.json {
        render::json(&json!({
            "status": match outcome.status {
                Status::Completed => "completed".to_string(),
                Status::Interrupted { signal } => format!("interrupted by {}", signal_name(signal)),
            },
            "step": outcome.step,
            "epoch": outcome.epoch,
            "test_accuracy": outcome.test_accuracy,
            "test_loss": outcome.test_loss,
            "checkpoints": paths.checkpoints,
            "checkpoint": checkpoint,
            "metrics": paths.metrics,
            "plot": paths.plot,
            "seconds": elapsed.as_secs_f64(),
        }))?;
    } else {
        let mut out = std::io::stdout().lock();
        let _ = match outcome.status {
            Status::Completed if outcome.step == steps_done_before => writeln!(
                out,
                "already trained: {} epochs ({} steps) done",
                outcome.epoch, outcome.step
            ),
            Status::Completed => writeln!(
                out,
                "trained {} epochs ({} steps) in {:.1} s",
                outcome.epoch,
                outcome.step,
                elapsed.as_secs_f64()
            ),
            Status::Interrupted { signal } => writeln!(
                out,
                "stopped by {} after step {} (epoch {}); run the same command to resume",
                signal_name(signal),
                outcome.step,
                outcome.epoch
            ),
        };
        if let (Some(accuracy), Some(loss)) = (outcome.test_accuracy, outcome.test_loss) {
            let _ = writeln!(
                out,
                "test accuracy {:.2}%, test loss {loss:.4}",
                accuracy * 100.0
            );
        }
        let _ = writeln!(
            out,
            "checkpoints: {}{}",
            paths.checkpoints,
            checkpoint
                .map(|c| format!(" (latest {c})"))
                .unwrap_or_default()
        );
        let _ = writeln!(out, "metrics:     {}", paths.metrics.display());
        if let Some(plot) = &paths.plot {
            let _ = writeln!(out, "loss plot:   {}", plot.display());
        }
    }
    Ok(code)
}
