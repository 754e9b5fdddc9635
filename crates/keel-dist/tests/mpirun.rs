//! keel-dist under a real `mpirun -np 2`: the example `collectives` (built by `cargo test`
//! beside this test, with the `mpi` feature) runs every collective and the environment gate
//! on both ranks and writes what each rank got; these tests check it. Run them as
//! `cargo test -p keel-dist --features mpi`: with `--test mpirun` alone cargo does not rebuild
//! the example, and the tests run an old one.
//!
//! Without `mpirun` they fail, naming it (`.ci/test-tools` installs Open MPI).
#![cfg(feature = "mpi")]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The example these tests start under `mpirun`.
fn example() -> PathBuf {
    keel_test_support::example("collectives", "cargo test -p keel-dist --features mpi")
}

/// One `mpirun -np 2` for all tests: the results of rank 0 and rank 1.
fn results() -> &'static [Value] {
    static RESULTS: OnceLock<Vec<Value>> = OnceLock::new();
    RESULTS.get_or_init(run_mpirun)
}

fn run_mpirun() -> Vec<Value> {
    let mpirun = keel_test_support::mpirun();
    let out = tempfile::tempdir().expect("a temporary folder");
    let version = Command::new(&mpirun)
        .arg("--version")
        .output()
        .expect("mpirun --version");
    let open_mpi = String::from_utf8_lossy(&version.stdout).contains("Open MPI");

    let mut command = Command::new(&mpirun);
    if open_mpi {
        // Containers and CI run as root; a 2-core machine has fewer slots than ranks.
        command.args(["--allow-run-as-root", "--oversubscribe"]);
    }
    command
        .args(["-np", "2"])
        .arg(example())
        .arg(out.path())
        // Rank 1 reports another numpy version in the second gate.
        .arg("1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("mpirun starts");
    // A guard against a hung collective, not a timing assertion.
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for mpirun") {
            break status;
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
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("mpirun's output");
    assert!(
        status.success(),
        "mpirun failed ({status})\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (0..2)
        .map(|rank| {
            let text = fs_err::read_to_string(out.path().join(format!("rank-{rank}.json")))
                .expect("every rank writes its results");
            serde_json::from_str(&text).expect("the results are JSON")
        })
        .collect()
}

#[test]
fn launch_detect_under_mpirun_sees_two_distinct_ranks() {
    let results = results();
    for (rank, result) in results.iter().enumerate() {
        assert_eq!(result["rank"], rank);
        assert_eq!(result["size"], 2);
        assert_eq!(result["launch"]["size"], 2, "{}", result["launch"]);
        assert_eq!(result["launch"]["rank"], rank, "{}", result["launch"]);
    }
}

#[test]
fn all_reduce_sums_under_mpirun() {
    let results = results();
    for result in results {
        // Rank r gave [r + 1, 2(r + 1), 0.5], [r, 10], [r + 0.25, -1].
        assert_eq!(result["sum_f32"], serde_json::json!([3.0, 6.0, 1.0]));
        assert_eq!(result["mean_f32"], serde_json::json!([0.5, 10.0]));
        assert_eq!(result["sum_f64"], serde_json::json!([1.5, -2.0]));
        assert_eq!(result["max"], 17);
    }
}

#[test]
fn stop_flag_of_one_rank_reaches_every_rank_under_mpirun() {
    let results = results();
    for result in results {
        assert_eq!(result["stop_last"], true);
        assert_eq!(result["stop_none"], false);
    }
}

#[test]
fn broadcast_replaces_buffers_of_any_length_under_mpirun() {
    let results = results();
    let expected: Vec<u64> = (0..3000u64).map(|i| i % 251).collect();
    for result in results {
        assert_eq!(result["broadcast"], serde_json::json!(expected));
        assert_eq!(result["broadcast_empty"], serde_json::json!([]));
    }
}

#[test]
fn gather_of_variable_length_bytes_under_mpirun() {
    let results = results();
    // Rank 0 sent nothing, rank 1 three bytes of 1.
    let all = serde_json::json!([[], [1, 1, 1]]);
    assert_eq!(results[0]["gathered"], all);
    assert_eq!(results[1]["gathered"], Value::Null);
    for result in results {
        assert_eq!(result["all_gathered"], all);
    }
}

/// Hardening issue #12: when every rank sent nothing, `MPI_Gatherv` was called with empty send
/// and receive buffers at Rust's one dangling address, and Open MPI aborted the job with
/// MPI_ERR_ARG (aliased buffers).
#[test]
fn gather_when_every_rank_sends_nothing_under_mpirun() {
    let results = results();
    assert_eq!(results[0]["gathered_empty"], serde_json::json!([[], []]));
    assert_eq!(results[1]["gathered_empty"], Value::Null);
    for result in results {
        assert_eq!(result["all_gathered_empty"], serde_json::json!([[], []]));
    }
}

/// Multi-rank issue #12: a rank other than the root that sends nothing handed MPI an empty
/// slice, whose dangling address (0x1) is Open MPI's `MPI_IN_PLACE`, and the gather failed
/// with MPI_ERR_ARG; an empty send now points at real memory.
#[test]
fn gather_when_only_the_root_sends_under_mpirun() {
    let results = results();
    assert_eq!(
        results[0]["gathered_only_root"],
        serde_json::json!([[7], []])
    );
    assert_eq!(results[1]["gathered_only_root"], Value::Null);
    for result in results {
        assert_eq!(
            result["all_gathered_only_root"],
            serde_json::json!([[7], []])
        );
    }
}

/// Hardening issue #12: started without `mpirun`, MPI makes a world of one, where rank 0's
/// empty contribution is the whole gather; that aborted the process (MPI_ERR_ARG).
#[test]
fn singleton_world_without_mpirun_runs_every_collective() {
    // Without mpirun there is no MPI runtime either: that fails here, naming it.
    keel_test_support::mpirun();
    let out = tempfile::tempdir().expect("a temporary folder");
    let output = Command::new(example())
        .arg(out.path())
        .env_remove("OMPI_COMM_WORLD_SIZE")
        .env_remove("OMPI_COMM_WORLD_RANK")
        .env_remove("PMIX_RANK")
        .stdin(Stdio::null())
        .output()
        .expect("the example starts");
    assert!(
        output.status.success(),
        "the singleton run failed ({})\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let text = fs_err::read_to_string(out.path().join("rank-0.json")).expect("rank 0's results");
    let result: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(result["size"], 1);
    assert_eq!(result["launch"]["launcher"], "none");
    assert_eq!(result["gathered"], serde_json::json!([[]]));
    assert_eq!(result["all_gathered_empty"], serde_json::json!([[]]));
    assert_eq!(result["sum_f32"], serde_json::json!([1.0, 2.0, 0.5]));
    assert_eq!(
        result["uniform"]["text"],
        "1 rank, nothing to compare (on node-0)"
    );
}

#[test]
fn gate_with_identical_facts_is_uniform_under_mpirun() {
    let results = results();
    for result in results {
        let gate = &result["uniform"];
        assert_eq!(gate["is_uniform"], true, "{}", gate["text"]);
        assert_eq!(
            gate["text"],
            "all 2 ranks have the same environment (on node-0, node-1)"
        );
    }
}

#[test]
fn gate_names_the_skewed_package_and_rank_on_every_rank_under_mpirun() {
    let results = results();
    for result in results {
        let gate = &result["skewed"];
        assert_eq!(gate["is_uniform"], false, "{}", gate["text"]);
        let text = gate["text"].as_str().expect("the report's text");
        assert!(
            text.contains("rank 1 on node-1 differs from the reference"),
            "{text}"
        );
        assert!(
            text.contains("package numpy: 1.26.4 py312_0 -> 2.0.0 py312_0"),
            "{text}"
        );
        let difference = &gate["report"]["differences"][0];
        assert_eq!(difference["group"]["ranks"], serde_json::json!([1]));
        assert_eq!(difference["changes"][0]["name"], "numpy");
    }
    // Both ranks reached the same verdict.
    assert_eq!(results[0]["skewed"], results[1]["skewed"]);
}
