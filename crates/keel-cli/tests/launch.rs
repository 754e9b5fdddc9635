//! `keel train` started as one of several ranks by a launcher, in a build without the `mpi`
//! feature: this build trains one process, so every rank refuses (exit 2, saying why) before it reads data or writes a store, instead
//! of N copies training alone into one store (multi-rank issue #12). `keel fleet` refuses
//! alike. A build with the `mpi` feature joins the launcher's world instead (tests/multirank.rs).
#![cfg(not(feature = "mpi"))]

mod common;

use std::path::Path;
use std::process::Command;

use common::{keel_in, text};

fn config(dir: &Path) {
    fs_err::write(
        dir.join("run.toml"),
        "epochs = 1\n\n[data]\ndataset = \"digits\"\n",
    )
    .unwrap();
}

/// Slurm's `srun -n 2` step and Open MPI's `mpirun -np 2`, as their variables say.
#[test]
fn a_rank_of_several_refuses_without_mpi() {
    let dir = tempfile::tempdir().unwrap();
    config(dir.path());
    for vars in [
        &[
            ("SLURM_STEP_NUM_TASKS", "2"),
            ("SLURM_PROCID", "1"),
            ("SLURM_LOCALID", "1"),
        ][..],
        &[
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
        ][..],
    ] {
        let mut command = keel_in(dir.path());
        command.args(["train", "run.toml", "--runs-dir", "runs"]);
        for (key, value) in vars {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{vars:?}: {stderr}");
        assert!(stderr.contains("mpi"), "{vars:?}: {stderr}");
        assert!(!dir.path().join("runs").exists(), "{vars:?} wrote a run");
    }
    // An sbatch script's own step (SLURM_NTASKS set, no srun step) is one process: it trains.
    let output = keel_in(dir.path())
        .args(["train", "run.toml", "--runs-dir", "runs"])
        .env("SLURM_NTASKS", "4")
        .env("SLURM_JOB_ID", "7")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
}

/// The real launcher: `mpirun -np 2 keel train` (a missing Open MPI fails the test, naming it).
#[test]
fn mpirun_two_ranks_refuse_without_mpi() {
    let mpirun = keel_test_support::mpirun();
    let dir = tempfile::tempdir().unwrap();
    config(dir.path());
    let output = Command::new(mpirun)
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(env!("CARGO_BIN_EXE_keel"))
        .args(["train", "run.toml", "--runs-dir", "runs"])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stderr
            .matches("this build has no multi-rank support")
            .count(),
        2,
        "both ranks say why: {stderr}"
    );
    assert!(!dir.path().join("runs").exists());
}

/// `keel fleet` under a launcher of two ranks, without the `mpi` feature: each rank would
/// report alone, so it refuses as train does.
#[test]
fn fleet_refuses_several_ranks_without_mpi() {
    let dir = tempfile::tempdir().unwrap();
    fs_err::create_dir_all(dir.path().join("env/conda-meta")).unwrap();
    for command in ["hash", "verify"] {
        let output = keel_in(dir.path())
            .args(["fleet", command, "env"])
            .env("OMPI_COMM_WORLD_SIZE", "2")
            .env("OMPI_COMM_WORLD_RANK", "1")
            .output()
            .unwrap();
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("this build has no multi-rank support"),
            "{command}: {stderr}"
        );
    }
}
