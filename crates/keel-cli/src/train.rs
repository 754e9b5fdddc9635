//! `keel train`: the configured run with a progress bar, and where everything went.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use keel_cuda::{DriverProbe, probe_with_timeout};
use keel_train::{Event, RunOptions, Status, StopSignal, TrainConfig, TrainError};
use miette::{IntoDiagnostic as _, WrapErr as _};
use serde_json::json;

use crate::args::TrainArgs;
use crate::render;

fn signal_name(signal: i32) -> String {
    match signal {
        2 => "SIGINT".into(),
        15 => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}

/// Moves an existing run folder aside for `--fresh`; returns where it went.
fn move_aside(run_dir: &std::path::Path) -> miette::Result<Option<std::path::PathBuf>> {
    if !run_dir.exists() {
        return Ok(None);
    }
    let name = run_dir.file_name().unwrap_or_default().to_string_lossy();
    let stamp = format!("{name}.{}", jiff::Zoned::now().strftime("%Y%m%d-%H%M%S"));
    let mut target = run_dir.with_file_name(&stamp);
    let mut n = 1;
    while target.exists() {
        n += 1;
        target = run_dir.with_file_name(format!("{stamp}-{n}"));
    }
    fs_err::rename(run_dir, &target).into_diagnostic()?;
    Ok(Some(target))
}

/// The device probe to record in checkpoints, and (in a build with CUDA) a check that a CUDA
/// device asked for exists: candle's own error says less, and without a GPU it is a bare
/// driver code. A build without CUDA leaves the refusal to `parse_device`, which says so.
fn probe(device: &str) -> miette::Result<Option<serde_json::Value>> {
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
    Ok(report
        .driver
        .is_some()
        .then(|| serde_json::to_value(&report).ok())
        .flatten())
}

pub(crate) fn run(args: &TrainArgs) -> miette::Result<ExitCode> {
    // Multi-rank training is not in this build: N copies started by `mpirun -np N` or
    // `srun -n N` would each train alone and write one store, so they refuse before anything.
    let launch = keel_dist::Launch::detect().into_diagnostic()?;
    keel_dist::refuse_without_mpi(&launch).into_diagnostic()?;
    let mut config = match &args.config {
        Some(path) => TrainConfig::from_path(path).into_diagnostic()?,
        None => TrainConfig::default(),
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
    let device_probe = probe(&config.device)?;
    keel_train::parse_device(&config.device).into_diagnostic()?;
    let paths = config.paths();
    let mut stderr = std::io::stderr();
    let mut fresh = false;
    if args.fresh {
        if config
            .checkpoint
            .dir
            .as_deref()
            .is_some_and(|d| d.contains("://"))
        {
            // Object storage cannot be moved aside: the library refuses a non-empty store.
            fresh = true;
        } else if let Some(moved) = move_aside(&paths.run_dir)? {
            let _ = writeln!(
                stderr,
                "--fresh: moved the previous run to {}",
                moved.display()
            );
        }
    }
    let environment = match &args.environment {
        Some(path) => Some(
            serde_json::from_str(&fs_err::read_to_string(path).into_diagnostic()?)
                .into_diagnostic()
                .map_err(|e| e.wrap_err(format!("{} is not JSON", path.display())))?,
        ),
        None => None,
    };
    let options = RunOptions {
        fresh,
        nan_at_step: args.inject_nan_at,
        environment,
        device_probe,
    };
    let stop = StopSignal::install().into_diagnostic()?;
    let bar = ProgressBar::new(0);
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
    let say = |line: String| {
        if bar.is_hidden() {
            let _ = writeln!(std::io::stderr(), "{line}");
        } else {
            bar.println(line);
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
        Event::SaveFailed(why) => say(format!("warning: a checkpoint save failed: {why}")),
        Event::Warning(why) => say(format!("warning: {why}")),
    };
    let result = config.run(&options, &stop, &mut observer);
    bar.finish_and_clear();
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(error @ TrainError::StepFailed { .. }) => {
            render::error(&miette::Report::msg(error.to_string()));
            return Ok(ExitCode::from(1));
        }
        // The configuration file is named: a data file's error alone does not say which
        // configuration pointed at it.
        Err(error) => {
            let result: miette::Result<ExitCode> = Err(error).into_diagnostic();
            return match &args.config {
                Some(path) => result.wrap_err_with(|| format!("keel train {}", path.display())),
                None => result,
            };
        }
    };
    let elapsed = started.elapsed();
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
    Ok(match outcome.status {
        Status::Completed => ExitCode::SUCCESS,
        Status::Interrupted { signal } => ExitCode::from((128 + signal).clamp(0, 255) as u8),
    })
}
