//! Multi-rank `keel train` and `keel fleet` (issue #12) on real prefixes (packages built by the
//! test, locked, installed): the environment gate at job start and the grouped fleet reports,
//! under a real `mpirun --oversubscribe -np 2` (the `mpi` feature; a missing `mpirun` fails
//! the test, naming it) and as a world of one.
//!
//! Each rank gets its own prefix through a wrapper script that picks it by
//! `$OMPI_COMM_WORLD_RANK`, as two nodes without a shared file system would have, and writes
//! its exit code to `rc.<rank>`, then exits 0: mpirun kills every rank when the first one
//! exits non-zero, which would race with the others recording theirs.

mod common;

use keel_test_support::channel;

use std::path::Path;
use std::process::Output;

use channel::{Content, Package, binary_with_placeholder, build_channel};
use common::{keel_in, text};

fn libdemo(version: &'static str) -> Package {
    Package {
        name: "libdemo",
        version,
        depends: vec![],
        files: vec![
            (
                "lib/libdemo.so.1",
                Content::BinaryWithPrefix(binary_with_placeholder(version)),
            ),
            (
                "share/libdemo/VERSION",
                Content::Text(format!("libdemo {version}\n")),
            ),
        ],
        tar_bz2: false,
    }
}

fn keel(dir: &Path, args: &[&str]) -> Output {
    keel_in(dir)
        .args(args)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("RATTLER_CACHE_DIR", dir.join("rattler-cache"))
        .env_remove("CONDA_OVERRIDE_CUDA")
        .env_remove("CONDA_PREFIX")
        .output()
        .unwrap()
}

fn expect(dir: &Path, args: &[&str], code: i32) -> String {
    let output = keel(dir, args);
    assert_eq!(
        output.status.code(),
        Some(code),
        "keel {args:?}\nstdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// A project: a channel with libdemo 1.0 and 1.1, a lock of each, the prefixes `env-1.0` and
/// `env-1.1` installed from them, a tiny digits run (1 epoch) and the rank wrapper.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    build_channel(&root.join("channel"), &[libdemo("1.0"), libdemo("1.1")]);
    for version in ["1.0", "1.1"] {
        let env = format!("env-{version}.yml");
        let lock = format!("lock-{version}.lock");
        fs_err::write(
            root.join(&env),
            format!("channels:\n  - ./channel\ndependencies:\n  - libdemo ={version}\n"),
        )
        .unwrap();
        expect(root, &["lock", &env, "-o", &lock, "--no-uv"], 0);
        let prefix = format!("env-{version}");
        expect(root, &["install", "-l", &lock, "-p", &prefix, "--json"], 0);
    }
    fs_err::write(
        root.join("run.toml"),
        "epochs = 1\n\n[data]\ndataset = \"digits\"\n",
    )
    .unwrap();
    // `@PREFIX@` in the arguments becomes $PREFIX_<rank>.
    fs_err::write(
        root.join("rank.sh"),
        "#!/bin/bash\n\
         rank=\"${OMPI_COMM_WORLD_RANK:-${SLURM_PROCID:-0}}\"\n\
         var=\"PREFIX_$rank\"\n\
         prefix=\"${!var}\"\n\
         args=(\"${@//@PREFIX@/$prefix}\")\n\
         \"$KEEL\" \"${args[@]}\"\n\
         rc=$?\n\
         echo \"$rc\" > \"rc.$rank\"\n",
    )
    .unwrap();
    dir
}

/// Single-process behaviour, in every build.
#[test]
fn fleet_hash_without_a_launcher_is_a_world_of_one() {
    let project = project();
    let dir = project.path();
    let stdout = expect(dir, &["fleet", "hash", "env-1.0"], 0);
    assert!(stdout.contains("rank 0 on"), "{stdout}");
    assert!(stdout.contains("1 rank, nothing to compare"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&expect(dir, &["fleet", "hash", "env-1.0", "--json"], 0)).unwrap();
    assert_eq!(json["world"], 1);
    assert_eq!(json["uniform"], true);
    let stdout = expect(
        dir,
        &["fleet", "verify", "env-1.0", "-l", "lock-1.0.lock"],
        0,
    );
    assert!(stdout.contains("clean"), "{stdout}");
    // Drift on the one rank is a finding (exit 1), not an error.
    let stdout = expect(
        dir,
        &["fleet", "verify", "env-1.1", "-l", "lock-1.0.lock"],
        1,
    );
    assert!(
        stdout.contains("changed package   libdemo 1.1 h0_0 (locked 1.0 h0_0)"),
        "{stdout}"
    );
    // No prefix at all: an error naming what is missing.
    let output = keel(dir, &["fleet", "hash"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("CONDA_PREFIX"));
}

/// One process with `--prefix`: the gate is trivially uniform, and the fingerprint taken at
/// start goes into the checkpoints, as `--environment` does.
#[test]
fn single_process_train_records_the_prefix_fingerprint() {
    let project = project();
    let dir = project.path();
    let fingerprint: serde_json::Value = serde_json::from_str(&expect(
        dir,
        &["hash", "env-1.0", "--json", "--label", "x"],
        0,
    ))
    .unwrap();
    let stdout = expect(
        dir,
        &[
            "train",
            "run.toml",
            "--runs-dir",
            "runs",
            "--prefix",
            "env-1.0",
            "--json",
        ],
        0,
    );
    let outcome: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(outcome["status"], "completed");
    let store = outcome["checkpoints"].as_str().unwrap();
    let regular = Path::new(store).join("regular");
    let newest = fs_err::read_dir(dir.join(&regular))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .max()
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(newest.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["environment"]["root"], fingerprint["root"],
        "{manifest}"
    );
    // A prefix that is not one stops the run before anything is written.
    let output = keel(
        dir,
        &[
            "train",
            "run.toml",
            "--runs-dir",
            "other-runs",
            "--prefix",
            "no-such-env",
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("no-such-env"));
    assert!(!dir.join("other-runs").exists());
}

#[cfg(feature = "mpi")]
mod mpirun {
    use super::*;

    /// Whether `mpirun` is here: a missing one fails the test, naming it.
    fn have_mpirun() -> bool {
        keel_test_support::mpirun().is_file()
    }

    /// What `mpirun -np 2` printed (both ranks) and each rank's exit code.
    struct Ranks {
        stdout: String,
        stderr: String,
        codes: [Option<i32>; 2],
    }

    /// `mpirun -np 2 rank.sh keel ARGS`, rank r on prefix `prefixes[r]`.
    fn mpirun(dir: &Path, prefixes: [&str; 2], args: &[&str]) -> Ranks {
        let mut launcher = std::process::Command::new("mpirun");
        launcher.args(["--allow-run-as-root", "--oversubscribe", "-np", "2"]);
        launch(launcher, dir, prefixes, args)
    }

    /// `srun -n 2 --mpi=pmix rank.sh keel ARGS` on the Slurm cluster `SLURM_CONF` names.
    fn srun(dir: &Path, prefixes: [&str; 2], args: &[&str]) -> Ranks {
        let mut launcher = std::process::Command::new("srun");
        launcher.args(["-n", "2", "--mpi=pmix", "--time=5"]);
        launch(launcher, dir, prefixes, args)
    }

    fn launch(
        mut launcher: std::process::Command,
        dir: &Path,
        prefixes: [&str; 2],
        args: &[&str],
    ) -> Ranks {
        for rank in 0..2 {
            let _ = fs_err::remove_file(dir.join(format!("rc.{rank}")));
        }
        let output = launcher
            .arg("bash")
            .arg(dir.join("rank.sh"))
            .args(args)
            .current_dir(dir)
            .env("KEEL", env!("CARGO_BIN_EXE_keel"))
            .env("PREFIX_0", dir.join(prefixes[0]))
            .env("PREFIX_1", dir.join(prefixes[1]))
            .env("NO_COLOR", "1")
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .env_remove("CONDA_PREFIX")
            .output()
            .unwrap();
        let code = |rank: usize| {
            fs_err::read_to_string(dir.join(format!("rc.{rank}")))
                .ok()
                .and_then(|t| t.trim().parse().ok())
        };
        Ranks {
            stdout: text(&output.stdout),
            stderr: text(&output.stderr),
            codes: [code(0), code(1)],
        }
    }

    const TRAIN: &[&str] = &[
        "train",
        "run.toml",
        "--runs-dir",
        "runs",
        "--prefix",
        "@PREFIX@",
    ];

    #[test]
    fn gate_refuses_ranks_whose_prefixes_differ_by_one_package() {
        if !have_mpirun() {
            return;
        }
        let project = project();
        let dir = project.path();
        let ranks = mpirun(dir, ["env-1.0", "env-1.1"], TRAIN);
        assert_eq!(ranks.codes, [Some(2), Some(2)], "{}", ranks.stderr);
        assert!(
            ranks.stderr.contains("the ranks' environments differ"),
            "{}",
            ranks.stderr
        );
        assert!(
            ranks
                .stderr
                .contains("package libdemo: 1.0 h0_0 -> 1.1 h0_0"),
            "{}",
            ranks.stderr
        );
        assert!(ranks.stderr.contains("rank 1 on"), "{}", ranks.stderr);
        // Rank 0 alone prints the report.
        assert_eq!(
            ranks
                .stderr
                .matches("the ranks' environments differ")
                .count(),
            1,
            "{}",
            ranks.stderr
        );
        assert!(!dir.join("runs").exists(), "a refused job wrote a run");
    }

    /// The run both ranks trained: rank 0's one report on stdout, and a store.
    fn trained(dir: &Path, ranks: &Ranks) {
        assert_eq!(ranks.codes, [Some(0), Some(0)], "{}", ranks.stderr);
        assert_eq!(
            ranks.stdout.matches("trained 1 epochs").count(),
            1,
            "rank 0 alone reports: {}",
            ranks.stdout
        );
        assert!(dir.join("runs").is_dir(), "{}", ranks.stdout);
    }

    #[test]
    fn allow_env_drift_trains_with_a_warning() {
        if !have_mpirun() {
            return;
        }
        let project = project();
        let dir = project.path();
        let mut args = TRAIN.to_vec();
        args.push("--allow-env-drift");
        let ranks = mpirun(dir, ["env-1.0", "env-1.1"], &args);
        assert!(
            ranks
                .stderr
                .contains("warning: the ranks' environments differ; --allow-env-drift"),
            "{}",
            ranks.stderr
        );
        assert!(
            ranks
                .stderr
                .contains("package libdemo: 1.0 h0_0 -> 1.1 h0_0"),
            "{}",
            ranks.stderr
        );
        trained(dir, &ranks);
    }

    #[test]
    fn identical_prefixes_pass_the_gate_and_train() {
        if !have_mpirun() {
            return;
        }
        let project = project();
        let dir = project.path();
        let ranks = mpirun(dir, ["env-1.0", "env-1.0"], TRAIN);
        assert!(
            !ranks.stderr.contains("environments differ"),
            "{}",
            ranks.stderr
        );
        trained(dir, &ranks);
        // Every checkpoint records each rank's host and root beside rank 0's fingerprint
        // (its packages and root, not its list of files).
        let regular = dir.join("runs/mnist-mlp/checkpoints/regular");
        let newest = fs_err::read_dir(&regular)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("step-")
            })
            .max()
            .unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs_err::read(newest.join("manifest.json")).unwrap()).unwrap();
        let environment = &manifest["environment"];
        assert!(environment.get("files").is_none(), "{environment}");
        assert_eq!(environment["ranks"].as_array().map(Vec::len), Some(2));
        assert_eq!(environment["ranks"][1]["root"], environment["root"]);
    }

    #[test]
    fn fleet_hash_names_the_differing_package_and_rank() {
        if !have_mpirun() {
            return;
        }
        let project = project();
        let dir = project.path();
        let ranks = mpirun(dir, ["env-1.0", "env-1.1"], &["fleet", "hash", "@PREFIX@"]);
        assert_eq!(ranks.codes, [Some(1), Some(1)], "{}", ranks.stderr);
        let out = &ranks.stdout;
        assert_eq!(out.matches("reference").count(), 2, "one report: {out}");
        assert!(out.contains(" reference rank 0 on "), "{out}");
        assert!(out.contains(" differs   rank 1 on "), "{out}");
        assert!(
            out.contains("package libdemo: 1.1 h0_0 (reference 1.0 h0_0)"),
            "{out}"
        );

        let ranks = mpirun(
            dir,
            ["env-1.0", "env-1.1"],
            &["fleet", "hash", "@PREFIX@", "--json"],
        );
        assert_eq!(ranks.codes, [Some(1), Some(1)], "{}", ranks.stderr);
        let json: serde_json::Value = serde_json::from_str(&ranks.stdout).unwrap();
        assert_eq!(json["world"], 2);
        assert_eq!(json["uniform"], false);
        assert_eq!(json["groups"][1]["ranks"], serde_json::json!([1]));

        let ranks = mpirun(dir, ["env-1.0", "env-1.0"], &["fleet", "hash", "@PREFIX@"]);
        assert_eq!(ranks.codes, [Some(0), Some(0)], "{}", ranks.stderr);
        assert!(
            ranks.stdout.contains("all 2 ranks have the same prefix"),
            "{}",
            ranks.stdout
        );
        assert!(ranks.stdout.contains("ranks 0-1 on"), "{}", ranks.stdout);
    }

    #[test]
    fn fleet_verify_names_the_drifted_rank_and_package() {
        if !have_mpirun() {
            return;
        }
        let project = project();
        let dir = project.path();
        let args = ["fleet", "verify", "@PREFIX@", "-l", "lock-1.0.lock"];
        let ranks = mpirun(dir, ["env-1.0", "env-1.1"], &args);
        assert_eq!(ranks.codes, [Some(1), Some(1)], "{}", ranks.stderr);
        let out = &ranks.stdout;
        assert!(out.contains("reference clean   rank 0 on"), "{out}");
        assert!(out.contains("differs   DRIFTED rank 1 on"), "{out}");
        assert!(
            out.contains("package libdemo: 1.1 h0_0 (reference 1.0 h0_0)"),
            "{out}"
        );
        assert!(
            out.contains("changed package   libdemo 1.1 h0_0 (locked 1.0 h0_0)"),
            "{out}"
        );

        let ranks = mpirun(dir, ["env-1.0", "env-1.0"], &args);
        assert_eq!(ranks.codes, [Some(0), Some(0)], "{}", ranks.stderr);
        assert!(
            ranks.stdout.contains("all 2 ranks verify clean"),
            "{}",
            ranks.stdout
        );
    }

    /// One rank that cannot hash its prefix makes every rank exit 2, and rank 0 names it.
    #[test]
    fn fleet_error_on_one_rank_stops_every_rank() {
        if !have_mpirun() {
            return;
        }
        let project = project();
        let dir = project.path();
        for command in ["hash", "verify"] {
            let ranks = mpirun(
                dir,
                ["env-1.0", "no-such-env"],
                &["fleet", command, "@PREFIX@"],
            );
            assert_eq!(
                ranks.codes,
                [Some(2), Some(2)],
                "{command}: {}",
                ranks.stderr
            );
            assert!(
                ranks.stderr.contains("rank 1 on") && ranks.stderr.contains("no-such-env"),
                "{command}: {}",
                ranks.stderr
            );
        }
        // The same for train: the failed rank's error, and nothing trained.
        let ranks = mpirun(dir, ["env-1.0", "no-such-env"], TRAIN);
        assert_eq!(ranks.codes, [Some(2), Some(2)], "{}", ranks.stderr);
        assert!(ranks.stderr.contains("no-such-env"), "{}", ranks.stderr);
        assert!(!dir.join("runs").exists());
    }

    /// Whether a Slurm cluster is configured: a missing one fails the test, saying how to
    /// start one (`.ci/run` does).
    fn have_slurm() -> bool {
        keel_test_support::slurm().is_file()
    }

    /// The same gate and fleet report under Slurm's own launcher: `srun -n 2 --mpi=pmix`.
    #[test]
    fn srun_gate_refuses_drift_then_trains_and_fleet_reports() {
        if !have_slurm() {
            return;
        }
        let project = project();
        let dir = project.path();
        let ranks = srun(dir, ["env-1.0", "env-1.1"], TRAIN);
        assert_eq!(ranks.codes, [Some(2), Some(2)], "{}", ranks.stderr);
        assert!(
            ranks
                .stderr
                .contains("package libdemo: 1.0 h0_0 -> 1.1 h0_0"),
            "{}",
            ranks.stderr
        );
        assert!(!dir.join("runs").exists(), "a refused job wrote a run");

        let ranks = srun(dir, ["env-1.0", "env-1.1"], &["fleet", "hash", "@PREFIX@"]);
        assert_eq!(ranks.codes, [Some(1), Some(1)], "{}", ranks.stderr);
        assert!(
            ranks
                .stdout
                .contains("package libdemo: 1.1 h0_0 (reference 1.0 h0_0)"),
            "{}",
            ranks.stdout
        );

        let ranks = srun(dir, ["env-1.0", "env-1.0"], TRAIN);
        trained(dir, &ranks);
    }
}
