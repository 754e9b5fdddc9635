//! The crash campaign: a child process saves checkpoints in a loop (resuming from the newest
//! valid one each time it starts) and is killed with SIGKILL at random moments. After every
//! kill, `latest_valid()` must load a checkpoint whose contents are exactly what was saved at
//! its step. 20 kills here; `cargo test -p keel-ckpt --test crash -- --ignored campaign_200`
//! runs 200.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::snapshot_for;

use keel_ckpt::{CheckpointStore, Kind, Retention};

/// Values in the largest tensor: 1 MiB of f32, so that a kill often lands inside a write.
const SIZE: usize = 256 * 1024;

/// The child: save forever, from the step after the newest valid checkpoint.
#[test]
#[ignore = "run by the campaign tests as their child process"]
fn crash_child() {
    let Some(dir) = std::env::var_os("KEEL_CKPT_CRASH_DIR") else {
        return;
    };
    let store = CheckpointStore::local(Path::new(&dir)).unwrap();
    let mut step = store.latest_valid().map_or(1, |r| r.manifest.step + 1);
    let retention = Retention {
        keep_last: 3,
        ..Retention::default()
    };
    loop {
        store
            .save(Kind::Regular, &snapshot_for(step, SIZE))
            .unwrap();
        store.prune(&retention).unwrap();
        step += 1;
    }
}

/// A small deterministic generator for the kill delays (no dependency needed for this).
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

fn campaign(kills: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x6b65656c_u64;
    let mut last_step = 0;
    let mut progressed = 0;
    for round in 0..kills {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KEEL_CKPT_CRASH_DIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = 30 + next(&mut seed) % 250;
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.code().is_none(),
            "round {round}: the child stopped by itself: {status}"
        );

        let store = CheckpointStore::local(dir.path()).unwrap();
        match store.latest_valid() {
            Ok(resume) => {
                let step = resume.manifest.step;
                let expected = snapshot_for(step, SIZE);
                assert!(
                    resume.snapshot == expected,
                    "round {round}: {} holds other contents than were saved at step {step}: {:?}",
                    resume.id,
                    common::difference(&resume.snapshot, &expected)
                );
                assert!(
                    step >= last_step,
                    "round {round}: went back from {last_step} to {step}"
                );
                progressed += usize::from(step > last_step);
                last_step = step;
            }
            Err(error) => {
                // Only before the very first save has completed.
                assert_eq!(last_step, 0, "round {round}: {error}");
            }
        }
    }
    assert!(
        progressed * 2 >= kills,
        "saves progressed in only {progressed} of {kills} rounds"
    );
}

#[test]
fn campaign_20_kills() {
    campaign(20);
}

#[test]
#[ignore = "200 kills take a few minutes; run on demand"]
fn campaign_200_kills() {
    campaign(200);
}
