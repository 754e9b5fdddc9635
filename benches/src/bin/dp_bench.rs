//! Data-parallel training measured on this machine: the step time at 1 and 2 ranks on the
//! same global batch, and what a checkpoint costs the loop there, from keel-train's example
//! `dp_kill` run under `mpirun` (each rank reports its step and save times); and keel-ckpt's
//! one-writer save against the multi-rank commit (`begin_shared`, one `write_part` per rank,
//! `commit`, the name and the parts sent over MPI) of the same bytes, in the example's
//! `savebench` mode. Medians of every repeat; nothing is asserted.
//!
//! ```sh
//! cargo build --release -p keel-train --features mpi --example dp_kill
//! cargo run --release -p keel-benches --bin dp-bench -- --out target/dp-bench
//! ```
//!
//! `--example PATH` (default `target/release/examples/dp_kill`), `--repeats N` (5),
//! `--out DIR` (where the table `dp-bench.md` goes; the stores go to the system's
//! temporary folder, or `KEEL_BENCH_DIR`).

use serde_json::Value;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The example's settings: the 10k MNIST rows (8000 to train), a 784-256-256-10 MLP (269k
/// parameters: 1.1 MB of weights, 2.2 MB of AdamW moments), global batch 256 (32 steps), a
/// regular checkpoint every 8 steps.
const RUN: &[&str] = &[
    "data=mnist10k",
    "hidden=256,256",
    "epochs=1",
    "batch=256",
    "every=8",
    "keep=2",
];
const EVERY: u64 = 8;

struct Args {
    example: PathBuf,
    repeats: usize,
    out: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        example: PathBuf::from("target/release/examples/dp_kill"),
        repeats: 5,
        out: PathBuf::from("target/dp-bench"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--example" => args.example = PathBuf::from(value()?),
            "--repeats" => {
                let v = value()?;
                args.repeats = v
                    .parse()
                    .map_err(|_| format!("--repeats: `{v}` is not a whole number"))?;
            }
            "--out" => args.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                return Err("usage: dp-bench [--example PATH] [--repeats N] [--out DIR]".into());
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if args.repeats == 0 {
        return Err("--repeats must be at least 1".into());
    }
    if !args.example.is_file() {
        return Err(format!(
            "{} is missing: cargo build --release -p keel-train --features mpi --example dp_kill",
            args.example.display()
        ));
    }
    Ok(args)
}

fn temp_dir() -> Result<tempfile::TempDir, std::io::Error> {
    match std::env::var_os("KEEL_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// One way to run the example.
struct Setup {
    label: &'static str,
    ranks: usize,
    /// `RAYON_NUM_THREADS` for every rank (candle's CPU kernels), `None` for its default
    /// (one thread per core).
    threads: Option<usize>,
}

/// What rank 0 of one run measured.
struct RunTimes {
    /// Steps whose time holds no save and no evaluation.
    step_ms: Vec<f64>,
    /// The loop's stall of each policy save.
    save_ms: Vec<f64>,
    /// Start to report (MPI start-up and the dataset included).
    run_ms: f64,
}

fn run_once(example: &Path, setup: &Setup) -> Result<RunTimes, Box<dyn std::error::Error>> {
    let store = temp_dir()?;
    let out = temp_dir()?;
    let mut command = Command::new("mpirun");
    command.args(["--allow-run-as-root", "--oversubscribe"]);
    if let Some(threads) = setup.threads {
        command.args(["-x", &format!("RAYON_NUM_THREADS={threads}")]);
    }
    let output = command
        .args(["-np", &setup.ranks.to_string()])
        .arg(example)
        .arg(store.path())
        .arg(out.path())
        .args(RUN)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "mpirun -np {} {}: {}\n{}",
            setup.ranks,
            example.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let path = out.path().join("rank-0.json");
    let report: Value = serde_json::from_slice(&fs_err::read(&path)?)?;
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    // A step's time runs from the previous step's end: it holds the previous step's save.
    let step_ms = report["step_ms"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .filter(|s| s["step"].as_u64().is_some_and(|n| (n - 1) % EVERY != 0))
                .map(|s| number(&s["ms"]))
                .collect()
        })
        .unwrap_or_default();
    let save_ms = report["saves"]
        .as_array()
        .map(|saves| {
            saves
                .iter()
                .filter(|s| s["kind"] == "regular")
                .map(|s| number(&s["stall_ms"]))
                .collect()
        })
        .unwrap_or_default();
    Ok(RunTimes {
        step_ms,
        save_ms,
        run_ms: number(&report["run_ms"]),
    })
}

/// The example's `savebench` mode on `ranks` ranks: rank 0's one-writer save and the
/// multi-rank commit of a state of `parameters` weights, median milliseconds of each.
fn save_costs(
    example: &Path,
    parameters: usize,
    ranks: usize,
    repeats: usize,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let store = temp_dir()?;
    let out = temp_dir()?;
    let output = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe"])
        .args(["-np", &ranks.to_string()])
        .arg(example)
        .arg(store.path())
        .arg(out.path())
        .arg(format!("savebench={parameters}"))
        .arg(format!("repeats={repeats}"))
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "mpirun -np {ranks} {} savebench={parameters}: {}\n{}",
            example.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let report: Value = serde_json::from_slice(&fs_err::read(out.path().join("rank-0.json"))?)?;
    let times = |key: &str| {
        report["save_bench"][key]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    Ok((median(times("single_ms")), median(times("shared_ms"))))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let setups = [
        Setup {
            label: "1 rank, candle's threads",
            ranks: 1,
            threads: None,
        },
        Setup {
            label: "1 rank, 1 thread",
            ranks: 1,
            threads: Some(1),
        },
        Setup {
            label: "2 ranks, 1 thread each",
            ranks: 2,
            threads: Some(1),
        },
        Setup {
            label: "2 ranks, candle's threads each",
            ranks: 2,
            threads: None,
        },
    ];
    let mut table = String::new();
    let _ = writeln!(
        table,
        "# Data-parallel training on {cores} cores: MNIST 10k, MLP 784-256-256-10, global batch 256\n"
    );
    let _ = writeln!(
        table,
        "Medians over {} runs of 32 steps each (rank 0's times; a save every {EVERY} steps).\n",
        args.repeats
    );
    let _ = writeln!(
        table,
        "| setup | step (ms) | vs 1 rank, candle's threads | save stall (ms) | run (ms) |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|");
    let mut baseline = None;
    for setup in &setups {
        let (mut steps, mut saves, mut runs) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.repeats {
            let times = run_once(&args.example, setup)?;
            steps.extend(times.step_ms);
            saves.extend(times.save_ms);
            runs.push(times.run_ms);
        }
        let step = median(steps);
        let base = *baseline.get_or_insert(step);
        let _ = writeln!(
            table,
            "| {} | {step:.2} | {:.2}x | {:.2} | {:.0} |",
            setup.label,
            step / base,
            median(saves),
            median(runs)
        );
    }
    let repeats = args.repeats.max(10);
    let _ = writeln!(
        table,
        "\n## One writer against the multi-rank commit, under mpirun\n\n\
         Weights plus AdamW's two moments (12 bytes a parameter). One writer: rank 0 `save`s \
         all of it. Multi-rank: rank 0 `begin_shared`s and broadcasts the name, every rank \
         `write_part`s (rank 0 `model` and its share of the moments, rank R \
         `optimizer-rank<R>`), rank 0 gathers the parts and `commit`s. Medians of {repeats}.\n"
    );
    let _ = writeln!(
        table,
        "| state | ranks | one writer (ms) | multi-rank commit (ms) | ratio |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|");
    for (label, parameters) in [
        ("269k parameters (3.2 MB)", 269_322usize),
        ("16M parameters (192 MiB)", 16 << 20),
    ] {
        for ranks in [1, 2] {
            let (single, shared) = save_costs(&args.example, parameters, ranks, repeats)?;
            let _ = writeln!(
                table,
                "| {label} | {ranks} | {single:.2} | {shared:.2} | {:.2}x |",
                shared / single
            );
        }
    }
    fs_err::create_dir_all(&args.out)?;
    let table_path = args.out.join("dp-bench.md");
    fs_err::write(&table_path, &table)?;
    std::io::stdout().write_all(table.as_bytes())?;
    Ok(())
}
