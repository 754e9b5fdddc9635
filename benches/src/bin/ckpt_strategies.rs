//! The checkpoint-strategy report for `keel train`'s MNIST run: measures each strategy's
//! overhead per epoch on this machine, simulates goodput under failures from the measured
//! costs, and writes a Markdown table and an SVG plot.
//!
//! ```sh
//! cargo run --release -p keel-benches --bin ckpt-strategies -- --mtbf 60 --out target/ckpt-strategies
//! ```

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use keel_benches::strategies::{
    Costs, Measured, Rule, measure, median, simulate, strategies, strategy_config,
};
use keel_train::{RunOptions, StopSignal, TrainConfig};
use plotters::prelude::*;

struct Args {
    mtbf: f64,
    epochs: u64,
    job_epochs: u64,
    every_steps: u64,
    trials: usize,
    out: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        mtbf: 60.0,
        epochs: 5,
        job_epochs: 100,
        every_steps: 25,
        trials: 300,
        out: PathBuf::from("target/ckpt-strategies"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: `{v}` is not a number"))
        };
        match flag.as_str() {
            "--mtbf" => args.mtbf = number(value()?)?,
            "--epochs" => args.epochs = number(value()?)? as u64,
            "--job-epochs" => args.job_epochs = number(value()?)? as u64,
            "--every-steps" => args.every_steps = number(value()?)? as u64,
            "--trials" => args.trials = number(value()?)? as usize,
            "--out" => args.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                return Err("usage: ckpt-strategies [--mtbf SECS] [--epochs N measured] [--job-epochs N simulated] \
                     [--every-steps N] [--trials N] [--out DIR]"
                    .into());
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if args.mtbf.is_nan()
        || args.mtbf <= 0.0
        || args.epochs == 0
        || args.job_epochs == 0
        || args.trials == 0
    {
        return Err("--mtbf, --epochs, --job-epochs and --trials must be positive".into());
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    fs_err::create_dir_all(&args.out)?;
    let scratch = tempfile::tempdir_in(&args.out)?;
    let config = TrainConfig::default();
    let mut stderr = std::io::stderr();
    let mut measured: Vec<Measured> = Vec::new();
    for strategy in strategies(args.mtbf, args.every_steps) {
        let _ = writeln!(
            stderr,
            "measuring: {} ({} epochs)",
            strategy.name, args.epochs
        );
        measured.push(measure(&config, &strategy, args.epochs, scratch.path())?);
    }
    // Restart cost: resuming a finished run (load + verify the newest checkpoint, data, model)
    // of the every-epoch, sync strategy measured above.
    let every_epoch = measured
        .iter()
        .find(|m| m.strategy.rule == Rule::EveryEpoch && !m.strategy.background)
        .map(|m| m.strategy.clone())
        .ok_or("the every-epoch, sync strategy was not measured")?;
    let finished = strategy_config(&config, &every_epoch, args.epochs, scratch.path());
    let mut restarts = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        finished.run(&RunOptions::default(), &StopSignal::new(), &mut |_| {})?;
        restarts.push(started.elapsed().as_secs_f64());
    }
    let restart = median(&restarts);
    let baseline = measured[0].epoch();
    // A strategy that did not save while measured (Young/Daly's interval can exceed the
    // measured epochs) is replayed with the every-epoch save of the same mode.
    let stall_of = |m: &Measured| {
        if m.stalls.is_empty() {
            measured
                .iter()
                .find(|o| {
                    o.strategy.rule == Rule::EveryEpoch
                        && o.strategy.background == m.strategy.background
                })
                .map_or(0.0, Measured::stall)
        } else {
            m.stall()
        }
    };
    let sync_cost = |m: &Measured| {
        measured
            .iter()
            .find(|o| o.strategy.rule == Rule::EveryEpoch && !o.strategy.background)
            .map_or(0.0, Measured::stall)
            .max(stall_of(m))
    };
    // Compute per step: the strategy-free epoch (median of the `none` runs' epochs).
    let costs_of = |m: &Measured| Costs {
        step: baseline / m.steps_per_epoch as f64,
        stall: stall_of(m),
        commit_delay: sync_cost(m),
        restart,
        steps_per_epoch: m.steps_per_epoch,
    };

    let mut table = String::new();
    let _ = writeln!(
        table,
        "Checkpoint strategies on `keel train`'s MNIST run (784-256-10, 8,000 images, batch 64, {} steps/epoch), \
         {} epochs measured per strategy (epoch times vary by several % run to run on a shared VM; the \
         save overhead is the loop's measured time in saves); restart (resume) {:.1} ms. Goodput: {} simulated jobs of {} epochs, \
         MTBF {} s, mean (p10-p90).\n",
        measured[0].steps_per_epoch,
        args.epochs,
        restart * 1e3,
        args.trials,
        args.job_epochs,
        args.mtbf
    );
    let _ = writeln!(
        table,
        "| strategy | epoch (median) | save overhead / epoch (measured stalls) | saves / epoch | stall / save | goodput | failures / job |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|");
    for m in &measured {
        let g = simulate(
            m.strategy.rule,
            m.strategy.background,
            costs_of(m),
            args.job_epochs,
            args.mtbf,
            args.trials,
            1,
        );
        let _ = writeln!(
            table,
            "| {} | {:.1} ms | {:.2} ms ({:.2}%) | {:.2} | {:.2} ms | {:.3} ({:.3}-{:.3}) | {:.1} |",
            m.strategy.name,
            m.epoch() * 1e3,
            m.overhead() * 1e3 + 0.0,
            (m.overhead() / baseline * 100.0).max(0.0),
            m.saves_per_epoch(),
            m.stall() * 1e3,
            g.mean,
            g.p10,
            g.p90,
            g.failures
        );
    }
    let table_path = args.out.join("report.md");
    fs_err::write(&table_path, &table)?;
    std::io::stdout().write_all(table.as_bytes())?;

    // Goodput against MTBF, one line per strategy.
    let epoch_secs = baseline;
    let sweep: Vec<f64> = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]
        .iter()
        .map(|k| k * epoch_secs)
        .collect();
    let plot_path = args.out.join("goodput.svg");
    {
        let root = SVGBackend::new(&plot_path, (960, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Simulated goodput vs MTBF (measured costs, MNIST MLP)",
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(
                (sweep[0]..*sweep.last().unwrap_or(&1.0)).log_scale(),
                0.0f64..1.0,
            )?;
        chart
            .configure_mesh()
            .x_desc("MTBF (s)")
            .y_desc("goodput")
            .draw()?;
        for (i, m) in measured.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = sweep
                .iter()
                .map(|&mtbf| {
                    let rule = match m.strategy.rule {
                        Rule::YoungDaly(_) => Rule::YoungDaly(mtbf),
                        other => other,
                    };
                    (
                        mtbf,
                        simulate(
                            rule,
                            m.strategy.background,
                            costs_of(m),
                            args.job_epochs,
                            mtbf,
                            args.trials / 3 + 1,
                            1,
                        )
                        .mean,
                    )
                })
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(m.strategy.name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    let _ = writeln!(
        stderr,
        "wrote {} and {}",
        table_path.display(),
        plot_path.display()
    );
    Ok(())
}
