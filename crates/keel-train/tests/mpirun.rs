//! Data-parallel training under a real `mpirun`: the example `dp_digits` (built by
//! `cargo test` beside this test, with the `mpi` feature) trains the digits MLP on every rank
//! into one checkpoint store and writes what each rank saw; these tests check the reports and
//! the store. Run them as `cargo test -p keel-train --features mpi` (with `--test mpirun`
//! alone cargo does not rebuild the example, and the tests run an old one).
//!
//! Without `mpirun` they fail, naming it (`.ci/test-tools` installs Open MPI).
#![cfg(feature = "mpi")]

#[path = "common/mpi.rs"]
mod mpi;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use keel_ckpt::{CheckpointStore, Kind, Snapshot};
use serde_json::Value;

/// The example these tests start under `mpirun`.
fn example() -> PathBuf {
    mpi::example("dp_digits")
}

/// `mpirun -np N dp_digits STORE OUT ARGS...`, started.
fn start(mpirun: &Path, np: usize, store: &Path, out: &Path, args: &[&str]) -> Child {
    fs_err::create_dir_all(out).expect("the report folder");
    let version = Command::new(mpirun)
        .arg("--version")
        .output()
        .expect("mpirun --version");
    let mut command = Command::new(mpirun);
    if String::from_utf8_lossy(&version.stdout).contains("Open MPI") {
        // Containers and CI run as root; a 2-core machine has fewer slots than ranks.
        command.args(["--allow-run-as-root", "--oversubscribe"]);
    }
    command
        .args(["-np", &np.to_string()])
        .arg(example())
        .arg(store)
        .arg(out)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun starts")
}

/// Waits for `child`; a guard against a hung collective, not a timing assertion.
fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if child.try_wait().expect("waiting for mpirun").is_some() {
            return child.wait_with_output().expect("mpirun's output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("mpirun's output");
            panic!(
                "mpirun did not finish: a collective hangs\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What every rank reported, in rank order.
fn reports(out: &Path, np: usize, output: &Output) -> Vec<Value> {
    (0..np)
        .map(|rank| {
            let path = out.join(format!("rank-{rank}.json"));
            let text = fs_err::read_to_string(&path).unwrap_or_else(|error| {
                panic!(
                    "{error}\nmpirun: {}\nstdout:\n{}\nstderr:\n{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                )
            });
            serde_json::from_str(&text).expect("a report is JSON")
        })
        .collect()
}

/// A run of the example into `store`, and every rank's report.
fn train(mpirun: &Path, np: usize, store: &Path, args: &[&str]) -> Vec<Value> {
    let out = tempfile::tempdir().expect("a temporary folder");
    let output = finish(start(mpirun, np, store, out.path(), args));
    reports(out.path(), np, &output)
}

/// The newest valid checkpoint's snapshot.
fn latest(store: &Path) -> Snapshot {
    CheckpointStore::local(store)
        .expect("the store")
        .latest_valid()
        .expect("a valid checkpoint")
        .snapshot
}

/// The model's weights in a snapshot, by name, as `f32`.
fn weights(snapshot: &Snapshot) -> Vec<(String, Vec<f32>)> {
    snapshot.groups["model"]
        .iter()
        .map(|(name, tensor)| {
            let values = tensor
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name.clone(), values)
        })
        .collect()
}

/// The checkpoints of a kind in a store, with their steps.
fn steps_of(store: &Path, kind: Kind) -> Vec<u64> {
    CheckpointStore::local(store)
        .expect("the store")
        .list()
        .expect("the listing")
        .into_iter()
        .filter(|listed| listed.id.kind == kind)
        .map(|listed| listed.manifest.expect("a readable manifest").step)
        .collect()
}

/// Every rank of a run agrees: the same outcome, the same final weights.
fn assert_ranks_agree(reports: &[Value]) {
    for report in &reports[1..] {
        assert_eq!(report["outcome"], reports[0]["outcome"], "{reports:#?}");
        assert_eq!(report["weights_blake3"], reports[0]["weights_blake3"]);
        assert_eq!(
            report["steps"], reports[0]["steps"],
            "the same losses logged"
        );
    }
}

/// The steps a rank took, in order.
fn steps_taken(report: &Value) -> Vec<u64> {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["step"].as_u64().expect("a step number"))
        .collect()
}

fn accuracy(report: &Value) -> f64 {
    report["outcome"]["test_accuracy"]
        .as_f64()
        .unwrap_or_else(|| panic!("an accuracy in {report:#}"))
}

/// Every rank's report and the final snapshot of one run.
type Run = (Vec<Value>, Snapshot);

/// An uninterrupted run of 3 epochs (69 steps of 64 rows) on `np` ranks: its reports and
/// final snapshot, made once for all tests.
fn uninterrupted(np: usize) -> Option<&'static Run> {
    static RUNS: [OnceLock<Option<Run>>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    RUNS[np]
        .get_or_init(|| {
            let mpirun = mpi::mpirun();
            let store = tempfile::tempdir().expect("a temporary folder");
            let reports = train(&mpirun, np, store.path(), &[]);
            assert_ranks_agree(&reports);
            assert_eq!(reports[0]["outcome"]["status"], "completed", "{reports:#?}");
            assert_eq!(reports[0]["outcome"]["step"], 69);
            Some((reports, latest(store.path())))
        })
        .as_ref()
}

/// Two ranks with global batch 64 against one rank with batch 64. The mean gradient is the
/// same in exact arithmetic (each rank's slice mean weighted by its rows, summed, divided by
/// 64), but the floating-point sums run in another order (two partial sums, the weighting and
/// the all-reduce, against one sum over 64 rows), so the weights differ by rounding: about
/// 1e-7 relative per step (f32), compounded over 69 AdamW steps. Measured here: 7.5e-8 at
/// most on weights of up to 0.4. The bound is 1e-5 absolute (a hundred times that), and the
/// held-out accuracies must agree to 1 percentage point (360 rows: ~3 predictions).
#[test]
fn two_ranks_train_what_one_rank_trains_up_to_summation_order() {
    let (Some((two, two_state)), Some((one, one_state))) = (uninterrupted(2), uninterrupted(1))
    else {
        return;
    };
    assert_eq!(two[0]["size"], 2);
    assert_eq!(one[0]["size"], 1);
    let mut max_diff = 0.0f32;
    for ((name, a), (other, b)) in weights(two_state).iter().zip(weights(one_state).iter()) {
        assert_eq!(name, other);
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            max_diff = max_diff.max((x - y).abs());
        }
    }
    assert!(max_diff < 1e-5, "max |w2 - w1| = {max_diff}");
    assert!(
        (accuracy(&two[0]) - accuracy(&one[0])).abs() <= 0.01,
        "accuracy {} on 2 ranks, {} on 1",
        accuracy(&two[0]),
        accuracy(&one[0])
    );
    assert_eq!(two_state.user["world_size"], 2);
    assert_eq!(one_state.user["world_size"], 1);
}

/// Two 2-rank runs of the same settings end with the same checkpoint, byte for byte: the
/// weights, the optimizer's moments and the trainer state (the reductions run in the same
/// order every time).
#[test]
fn two_rank_runs_are_bit_identical() {
    let Some((_, first)) = uninterrupted(2) else {
        return;
    };
    let mpirun = mpi::mpirun();
    let store = tempfile::tempdir().expect("a temporary folder");
    let again = train(&mpirun, 2, store.path(), &[]);
    assert_ranks_agree(&again);
    let second = latest(store.path());
    assert_eq!(
        first.groups.keys().collect::<Vec<_>>(),
        ["model", "optimizer"]
    );
    for (group, tensors) in &first.groups {
        for (name, tensor) in tensors {
            assert!(
                second.groups[group][name].data == tensor.data,
                "{group}/{name} differs between two 2-rank runs"
            );
        }
    }
    assert_eq!(first.user, second.user);
}

/// Stopped at step 30 (mid-epoch 2) on `from` ranks, resumed on `to` ranks: the resumed run
/// takes steps 31 to 69 exactly (the data position is global: no batch skipped or repeated),
/// says that the world size changed, and ends within 2 points of the uninterrupted run's
/// accuracy (the state is the same, the summation order is not).
fn resume_across_world_sizes(from: usize, to: usize) {
    let Some((reference, _)) = uninterrupted(to) else {
        return;
    };
    let mpirun = mpi::mpirun();
    let store = tempfile::tempdir().expect("a temporary folder");
    let stopped = train(&mpirun, from, store.path(), &["stop=0:30"]);
    assert_ranks_agree(&stopped);
    assert_eq!(stopped[0]["outcome"]["status"], "interrupted 15");
    assert_eq!(stopped[0]["outcome"]["step"], 30);
    assert_eq!(steps_of(store.path(), Kind::Interrupted), [30]);

    let resumed = train(&mpirun, to, store.path(), &[]);
    assert_ranks_agree(&resumed);
    for report in &resumed {
        assert_eq!(report["resumed"]["step"], 30, "{report:#}");
        assert_eq!(steps_taken(report), (31..=69).collect::<Vec<_>>());
        assert_eq!(report["outcome"]["status"], "completed");
        let warnings = report["warnings"].to_string();
        assert!(
            warnings.contains(&format!("written by {from} rank(s), this run has {to}")),
            "{warnings}"
        );
    }
    assert!(
        (accuracy(&resumed[0]) - accuracy(&reference[0])).abs() <= 0.02,
        "resumed {from} -> {to}: accuracy {}, uninterrupted on {to}: {}",
        accuracy(&resumed[0]),
        accuracy(&reference[0])
    );
    assert_eq!(latest(store.path()).user["world_size"], to);
}

#[test]
fn resume_from_two_ranks_on_one_continues_to_the_same_accuracy() {
    resume_across_world_sizes(2, 1);
}

#[test]
fn resume_from_one_rank_on_two_continues_to_the_same_accuracy() {
    resume_across_world_sizes(1, 2);
}

/// SIGTERM sent (with `kill`) to rank 1 alone, while it is between steps 20 and 21: both
/// ranks stop after step 20 and exit 143, and the store holds one `interrupted` checkpoint,
/// of step 20.
#[test]
fn sigterm_to_rank_one_stops_both_ranks_after_the_same_step() {
    let mpirun = mpi::mpirun();
    let store = tempfile::tempdir().expect("a temporary folder");
    let out = tempfile::tempdir().expect("a temporary folder");
    let child = start(&mpirun, 2, store.path(), out.path(), &["pause=1:20"]);
    let marker = out.path().join("paused-1");
    // A guard against a run that never pauses, not a timing assertion.
    let deadline = Instant::now() + Duration::from_secs(300);
    let pid = loop {
        if let Ok(text) = fs_err::read_to_string(&marker)
            && let Ok(pid) = text.trim().parse::<u32>()
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "rank 1 never paused at step 20");
        std::thread::sleep(Duration::from_millis(20));
    };
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success(), "kill -TERM {pid}");
    let output = finish(child);
    let reports = reports(out.path(), 2, &output);
    assert_ranks_agree(&reports);
    for report in &reports {
        assert_eq!(report["outcome"]["status"], "interrupted 15", "{report:#}");
        assert_eq!(report["outcome"]["step"], 20);
        assert_eq!(steps_taken(report), (1..=20).collect::<Vec<_>>());
    }
    assert_eq!(reports[1]["pid"], pid);
    assert!(
        !output.status.success(),
        "the ranks exit 143: {}",
        output.status
    );
    assert_eq!(steps_of(store.path(), Kind::Interrupted), [20]);
    assert_eq!(
        reports[0]["outcome"]["checkpoint"],
        reports[1]["outcome"]["checkpoint"]
    );
}

/// A NaN loss at step 10 on rank 1 alone: both ranks stop at step 10, rank 1 with its own
/// error and rank 0 naming rank 1, and the store holds one `emergency` checkpoint, of the
/// state after step 9 (the last good one, identical on both ranks).
#[test]
fn nan_on_one_rank_stops_every_rank_with_one_emergency_checkpoint() {
    let mpirun = mpi::mpirun();
    let store = tempfile::tempdir().expect("a temporary folder");
    let reports = train(&mpirun, 2, store.path(), &["nan=1:10"]);
    let errors: Vec<String> = reports
        .iter()
        .map(|r| {
            r["outcome"]["error"]
                .as_str()
                .expect("an error")
                .to_string()
        })
        .collect();
    assert!(
        errors[1].contains("training stopped at step 10: loss is NaN at step 10"),
        "{errors:?}"
    );
    assert!(
        errors[0].contains(
            "training stopped at step 10: another rank failed at step 10 (rank 1: loss is NaN at step 10"
        ),
        "{errors:?}"
    );
    for error in &errors {
        assert!(
            error.contains("the last good state (step 9) is saved as emergency/"),
            "{error}"
        );
    }
    assert_eq!(reports[0]["weights_blake3"], reports[1]["weights_blake3"]);
    assert_eq!(steps_of(store.path(), Kind::Emergency), [9]);
    for report in &reports {
        assert_eq!(steps_taken(report), (1..=9).collect::<Vec<_>>());
    }
}

/// Rank 1 starts from other weights (one moved by 1e-3), so the replicas differ although
/// every update is the same: the divergence check of the first checkpoint (the end of epoch
/// 1, step 23) stops both ranks naming rank 1, and nothing is saved.
#[test]
fn diverged_replicas_stop_every_rank_at_the_first_checkpoint_naming_the_rank() {
    let mpirun = mpi::mpirun();
    let store = tempfile::tempdir().expect("a temporary folder");
    let reports = train(&mpirun, 2, store.path(), &["skew=1"]);
    for report in &reports {
        let error = report["outcome"]["error"].as_str().expect("an error");
        assert!(
            error.starts_with(
                "the replicated state diverged at step 23: rank(s) 1 differ from rank 0"
            ),
            "{error}"
        );
        assert_eq!(steps_taken(report), (1..=23).collect::<Vec<_>>());
    }
    assert_ne!(reports[0]["weights_blake3"], reports[1]["weights_blake3"]);
    let store = CheckpointStore::local(store.path()).expect("the store");
    assert!(store.list().expect("the listing").is_empty());
}

/// The newest valid checkpoint's files: name and the rank that wrote it.
fn files_of(store: &Path) -> Files {
    let store = CheckpointStore::local(store).expect("the store");
    let id = store.latest_valid().expect("a valid checkpoint").id;
    let manifest = store.manifest(&id).expect("its manifest");
    manifest
        .files
        .iter()
        .map(|f| (f.name.clone(), f.rank))
        .collect()
}

/// The files a sharded checkpoint of `np` ranks holds: the model from rank 0, then one
/// optimizer share per rank, each written by its rank.
fn sharded_files(np: usize) -> Files {
    let mut files = vec![("model.safetensors".to_string(), Some(0))];
    files.extend((0..np).map(|r| (format!("optimizer-rank{r}.safetensors"), Some(r))));
    files
}

/// A sharded checkpoint's moments put together per tensor: each `<moment>.<parameter>`'s
/// pieces in rank order (the shares are contiguous element ranges in rank order, so the
/// pieces of one parameter tile it).
fn sharded_moments(snapshot: &Snapshot, np: usize) -> Vec<(String, Vec<u8>)> {
    let mut moments: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for rank in 0..np {
        for (name, tensor) in &snapshot.groups[&format!("optimizer-rank{rank}")] {
            assert_eq!(tensor.shape.len(), 1, "{name} of rank {rank} is 1-D");
            moments
                .entry(name.clone())
                .or_default()
                .extend_from_slice(&tensor.data);
        }
    }
    moments.into_iter().collect()
}

/// An uninterrupted sharded (`zero=1`) run of 3 epochs on 2 ranks: its reports, final
/// snapshot and files, made once for all tests.
/// The files of a checkpoint: name and the rank that wrote it.
type Files = Vec<(String, Option<usize>)>;

/// A run's reports, final snapshot and the files of its final checkpoint.
type ShardedRun = (Vec<Value>, Snapshot, Files);

fn uninterrupted_sharded() -> Option<&'static ShardedRun> {
    static RUN: OnceLock<Option<ShardedRun>> = OnceLock::new();
    RUN.get_or_init(|| {
        let mpirun = mpi::mpirun();
        let store = tempfile::tempdir().expect("a temporary folder");
        let reports = train(&mpirun, 2, store.path(), &["zero=1"]);
        assert_ranks_agree(&reports);
        assert_eq!(reports[0]["outcome"]["status"], "completed", "{reports:#?}");
        assert_eq!(reports[0]["outcome"]["step"], 69);
        Some((reports, latest(store.path()), files_of(store.path())))
    })
    .as_ref()
}

/// ZeRO-1 against replicated training, both on 2 ranks: AdamW is elementwise, so each
/// rank's update of its share is, bit for bit, that share of the replicated update, and the
/// all-gathered weights are the replicated weights. Compared as bytes: every weight, and
/// every moment (the shares of `optimizer-rank0` and `-rank1` put together against the
/// replicated `optimizer`), the same losses at every step and the same accuracy.
#[test]
fn sharded_optimizer_on_two_ranks_trains_the_replicated_weights_bit_for_bit() {
    let (Some((replicated, r)), Some((sharded, s, _))) =
        (uninterrupted(2), uninterrupted_sharded())
    else {
        return;
    };
    assert!(r.groups["model"] == s.groups["model"], "the weights differ");
    let want: Vec<(String, Vec<u8>)> = r.groups["optimizer"]
        .iter()
        .map(|(name, t)| (name.clone(), t.data.clone()))
        .collect();
    assert!(sharded_moments(s, 2) == want, "the moments differ");
    assert_eq!(
        replicated[0]["weights_blake3"],
        sharded[0]["weights_blake3"]
    );
    assert_eq!(replicated[0]["steps"], sharded[0]["steps"]);
    assert_eq!(
        replicated[0]["outcome"]["test_accuracy"],
        sharded[0]["outcome"]["test_accuracy"]
    );
    assert_eq!(s.user["optimizer"]["steps"], 69);
    assert_eq!(s.user["optimizer"]["sharding"]["world_size"], 2);
}

/// A sharded checkpoint is one multi-rank commit: the model written by rank 0 and one
/// optimizer file per rank, each listed with the rank that wrote it, and it loads (every
/// file verified).
#[test]
fn sharded_checkpoint_holds_one_optimizer_file_per_rank_and_loads() {
    let Some((_, snapshot, files)) = uninterrupted_sharded() else {
        return;
    };
    assert_eq!(*files, sharded_files(2));
    assert_eq!(
        snapshot.groups.keys().collect::<Vec<_>>(),
        ["model", "optimizer-rank0", "optimizer-rank1"]
    );
    let ranges = &snapshot.user["optimizer"]["sharding"]["ranges"];
    let elements = snapshot.user["optimizer"]["sharding"]["elements"]
        .as_u64()
        .unwrap();
    assert_eq!(ranges[0][0], 0);
    assert_eq!(ranges[0][1], ranges[1][0]);
    assert_eq!(ranges[1][1], elements);
    // 64x32 + 32 + 32x10 + 10 = 2410 elements: 1205 each.
    assert_eq!(elements, 2410);
    assert_eq!(ranges[0][1], 1205);
}

/// Sharded (`zero=1`) on `from` ranks, stopped at step 30, resumed sharded on `to` ranks:
/// the shares are re-split from the recorded partition, the resumed run takes steps 31 to
/// 69 exactly, ends within 2 points of the uninterrupted run's accuracy, and its checkpoint
/// has one optimizer file per rank of the new world.
fn resume_sharded_across_world_sizes(from: usize, to: usize) -> Option<Snapshot> {
    let (reference, _) = uninterrupted(to)?;
    let mpirun = mpi::mpirun();
    let store = tempfile::tempdir().expect("a temporary folder");
    let stopped = train(&mpirun, from, store.path(), &["stop=0:30", "zero=1"]);
    assert_ranks_agree(&stopped);
    assert_eq!(
        stopped[0]["outcome"]["status"], "interrupted 15",
        "{stopped:#?}"
    );
    assert_eq!(steps_of(store.path(), Kind::Interrupted), [30]);
    assert_eq!(files_of(store.path()), sharded_files(from));

    let resumed = train(&mpirun, to, store.path(), &["zero=1"]);
    assert_ranks_agree(&resumed);
    for report in &resumed {
        assert_eq!(report["resumed"]["step"], 30, "{report:#}");
        assert_eq!(steps_taken(report), (31..=69).collect::<Vec<_>>());
        assert_eq!(report["outcome"]["status"], "completed");
    }
    assert!(
        (accuracy(&resumed[0]) - accuracy(&reference[0])).abs() <= 0.02,
        "resumed sharded {from} -> {to}: accuracy {}, uninterrupted on {to}: {}",
        accuracy(&resumed[0]),
        accuracy(&reference[0])
    );
    assert_eq!(files_of(store.path()), sharded_files(to));
    Some(latest(store.path()))
}

#[test]
fn sharded_resume_from_two_ranks_on_one_continues_to_the_same_accuracy() {
    resume_sharded_across_world_sizes(2, 1);
}

#[test]
fn sharded_resume_from_one_rank_on_two_continues_to_the_same_accuracy() {
    resume_sharded_across_world_sizes(1, 2);
}

#[test]
fn sharded_resume_from_two_ranks_on_three_continues_to_the_same_accuracy() {
    resume_sharded_across_world_sizes(2, 3);
}

/// Sharded on 2 ranks, stopped at step 30 and resumed on 2 ranks: the same world size, so
/// the same summation order, and the checkpoint ends byte for byte where the uninterrupted
/// sharded run's does (weights, every rank's moments, trainer state).
#[test]
fn sharded_resume_on_the_same_two_ranks_is_bit_exact() {
    let Some((_, want, _)) = uninterrupted_sharded() else {
        return;
    };
    let Some(got) = resume_sharded_across_world_sizes(2, 2) else {
        return;
    };
    assert_eq!(
        got.groups.keys().collect::<Vec<_>>(),
        want.groups.keys().collect::<Vec<_>>()
    );
    for (group, tensors) in &want.groups {
        for (name, tensor) in tensors {
            assert!(
                got.groups[group][name].data == tensor.data,
                "{group}/{name} differs from the uninterrupted sharded run"
            );
        }
    }
    assert_eq!(got.user, want.user);
}

/// A replicated 2-rank checkpoint (step 30) resumed with sharding on, on 2 ranks, and a
/// sharded one resumed replicated: moments are moments, so both end with the uninterrupted
/// run's weights, byte for byte.
#[test]
fn two_ranks_resume_across_replicated_and_sharded_bit_for_bit() {
    let Some((_, want)) = uninterrupted(2) else {
        return;
    };
    let mpirun = mpi::mpirun();
    for (first, then) in [("zero=0", "zero=1"), ("zero=1", "zero=0")] {
        let store = tempfile::tempdir().expect("a temporary folder");
        let stopped = train(&mpirun, 2, store.path(), &["stop=0:30", first]);
        assert_eq!(stopped[0]["outcome"]["step"], 30, "{stopped:#?}");
        let resumed = train(&mpirun, 2, store.path(), &[then]);
        assert_ranks_agree(&resumed);
        assert_eq!(resumed[0]["resumed"]["step"], 30, "{resumed:#?}");
        let got = latest(store.path());
        assert!(
            got.groups["model"] == want.groups["model"],
            "{first} -> {then}: the weights differ from the uninterrupted run"
        );
    }
}

/// A NaN loss at step 10 on rank 1 of a sharded run: no rank applies its share of step 10
/// (the shares are agreed before any is assigned), and the one emergency checkpoint holds
/// the state after step 9 as a multi-rank commit (the model and both shares), which a
/// sharded run on 2 ranks resumes to the end.
#[test]
fn sharded_nan_on_one_rank_leaves_one_emergency_checkpoint_of_every_share() {
    let mpirun = mpi::mpirun();
    let store = tempfile::tempdir().expect("a temporary folder");
    let reports = train(&mpirun, 2, store.path(), &["nan=1:10", "zero=1"]);
    for report in &reports {
        let error = report["outcome"]["error"].as_str().expect("an error");
        assert!(
            error.contains("the last good state (step 9) is saved as emergency/"),
            "{error}"
        );
        assert_eq!(steps_taken(report), (1..=9).collect::<Vec<_>>());
    }
    assert_eq!(reports[0]["weights_blake3"], reports[1]["weights_blake3"]);
    assert_eq!(steps_of(store.path(), Kind::Emergency), [9]);
    assert_eq!(files_of(store.path()), sharded_files(2));
    let resumed = train(&mpirun, 2, store.path(), &["zero=1"]);
    assert_ranks_agree(&resumed);
    assert_eq!(resumed[0]["resumed"]["step"], 9, "{resumed:#?}");
    assert_eq!(resumed[0]["outcome"]["step"], 69);
}
