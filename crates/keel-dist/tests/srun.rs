//! keel-dist under a real Slurm: `srun -n 2 --mpi=pmix` starts the example `collectives` (the
//! one `mpirun.rs` runs) as a two-task job step; both tasks see the world Slurm made, the
//! collectives work over PMIx, and the gate names the package rank 1 has in another version.
//!
//! `.ci/run` brings up a single-host Slurm (`.ci/slurm up`) and sets `SLURM_CONF`; without
//! `srun` and a configured cluster the test fails, saying how to start one.
#![cfg(feature = "mpi")]

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

fn example() -> PathBuf {
    keel_test_support::example("collectives", "cargo test -p keel-dist --features mpi")
}

#[test]
fn srun_two_tasks_run_the_collectives_and_the_gate() {
    let srun = keel_test_support::slurm();
    let out = tempfile::tempdir().expect("a temporary folder");
    let output = Command::new(&srun)
        .args(["-n", "2", "--mpi=pmix", "--time=5"])
        .arg(example())
        .arg(out.path())
        .arg("1")
        .stdin(Stdio::null())
        .output()
        .expect("srun starts");
    assert!(
        output.status.success(),
        "srun failed ({})\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for rank in 0..2 {
        let text = fs_err::read_to_string(out.path().join(format!("rank-{rank}.json")))
            .expect("every task writes its results");
        let result: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(result["rank"], rank);
        assert_eq!(result["size"], 2);
        assert_eq!(result["launch"]["size"], 2, "{}", result["launch"]);
        assert_eq!(result["launch"]["rank"], rank, "{}", result["launch"]);
        assert_eq!(result["sum_f32"], serde_json::json!([3.0, 6.0, 1.0]));
        assert_eq!(result["stop_last"], true);
        assert_eq!(result["uniform"]["is_uniform"], true);
        assert_eq!(
            result["skewed"]["is_uniform"], false,
            "{}",
            result["skewed"]
        );
        let text = result["skewed"]["text"].as_str().unwrap_or_default();
        assert!(text.contains("numpy"), "{text}");
    }
}
