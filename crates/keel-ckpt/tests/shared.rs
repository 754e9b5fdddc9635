//! One checkpoint across ranks (issue #12): rank 0 begins it and broadcasts its name, every
//! rank writes its own files, rank 0 commits the one manifest last. Ranks are threads (each
//! with a store of its own on the same folder, as separate processes would have) or a child
//! process killed mid-save; what they exchange goes through `to_bytes`/`from_bytes`, as it
//! would through MPI. The S3 cases are in `tests/s3.rs`.

mod common;

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};

use common::snapshot_for;
use keel_ckpt::{
    CheckpointId, CheckpointStore, CkptError, Kind, PendingCheckpoint, Retention, SharedPart,
    Snapshot, TensorGroup, group_rank, rank_group,
};

fn keep_last(n: usize) -> Retention {
    Retention {
        keep_last: n,
        ..Retention::default()
    }
}

/// What rank `rank` of a job holds at `step`: rank 0 the model (shared) and its optimizer
/// share, every other rank its optimizer share and its RNG state; contents differ by rank.
fn rank_groups(step: u64, rank: usize) -> BTreeMap<String, TensorGroup> {
    let state = snapshot_for(step * 10 + rank as u64, 64);
    let mut groups = BTreeMap::new();
    if rank == 0 {
        groups.insert("model".to_string(), state.groups["model"].clone());
    }
    groups.insert(
        rank_group("optimizer", rank),
        state.groups["optimizer"].clone(),
    );
    if rank > 0 {
        let mut rng = TensorGroup::new();
        rng.insert(
            "state".into(),
            keel_ckpt::Tensor::from_f32(vec![2], &[rank as f32, step as f32]).unwrap(),
        );
        groups.insert(rank_group("rng", rank), rng);
    }
    groups
}

/// The metadata rank 0 commits (no tensors: they are in the parts).
fn metadata(step: u64) -> Snapshot {
    Snapshot {
        groups: BTreeMap::new(),
        ..snapshot_for(step, 8)
    }
}

/// Every group of every rank at `step`: what loading the checkpoint must give.
fn all_groups(step: u64, world: usize) -> BTreeMap<String, TensorGroup> {
    (0..world)
        .flat_map(|rank| rank_groups(step, rank))
        .collect()
}

/// A whole multi-rank save: rank 0 begins and broadcasts, every rank (a thread with its own
/// store on `root`) writes its part and "sends" it back as bytes, rank 0 commits.
fn shared_save(root: &Path, step: u64, world: usize) -> Result<CheckpointId, CkptError> {
    let store = CheckpointStore::local(root).unwrap();
    let save = store.begin_shared(Kind::Regular, step, world)?;
    let broadcast = save.pending().to_bytes();
    let gathered: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let ranks: Vec<_> = (0..world)
            .map(|rank| {
                let broadcast = &broadcast;
                scope.spawn(move || {
                    let store = CheckpointStore::local(root).unwrap();
                    let pending = PendingCheckpoint::from_bytes(broadcast).unwrap();
                    store
                        .write_part(&pending, rank, &rank_groups(step, rank))
                        .unwrap()
                        .to_bytes()
                })
            })
            .collect();
        ranks.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let parts: Vec<SharedPart> = gathered
        .iter()
        .map(|bytes| SharedPart::from_bytes(bytes).unwrap())
        .collect();
    save.commit(&metadata(step), &parts)
}

fn temporaries(root: &Path) -> Vec<String> {
    let dir = root.join("regular");
    if !dir.is_dir() {
        return Vec::new();
    }
    let mut names: Vec<String> = fs_err::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    names.sort();
    names
}

#[test]
fn two_and_three_ranks_commit_one_checkpoint_holding_every_ranks_groups() {
    for world in [2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let id = shared_save(dir.path(), 7, world).unwrap();
        let store = CheckpointStore::local(dir.path()).unwrap();
        let resume = store.latest_valid().unwrap();
        assert_eq!(resume.id, id);
        assert_eq!(resume.manifest.world_size, Some(world));
        let expected = Snapshot {
            groups: all_groups(7, world),
            ..metadata(7)
        };
        assert!(
            resume.snapshot == expected,
            "world {world}: {:?}",
            common::difference(&resume.snapshot, &expected)
        );
        // Every file is recorded with the rank that wrote it, and the rule holds.
        for entry in &resume.manifest.files {
            let group = entry.name.strip_suffix(".safetensors").unwrap();
            assert_eq!(
                entry.rank,
                Some(group_rank(group).unwrap_or(0)),
                "{}",
                entry.name
            );
        }
        let ranks: std::collections::BTreeSet<_> =
            resume.manifest.files.iter().map(|e| e.rank).collect();
        assert_eq!(ranks.len(), world, "{:?}", resume.manifest.files);
        // The files on disk are the bytes safetensors writes for each rank's group.
        for (group, tensors) in all_groups(7, world) {
            let on_disk = fs_err::read(
                dir.path()
                    .join("regular")
                    .join(&id.name)
                    .join(format!("{group}.safetensors")),
            )
            .unwrap();
            let expected =
                safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
            assert!(on_disk == expected, "world {world}: {group} differs");
        }
        assert_eq!(temporaries(dir.path()), Vec::<String>::new());

        // A rank loads only the shared groups and its own share; everything is verified.
        let (_, mine) = store
            .load_groups(&id, |group| group_rank(group).is_none_or(|r| r == 1))
            .unwrap();
        let names: Vec<&str> = mine.groups.keys().map(String::as_str).collect();
        assert_eq!(names, ["model", "optimizer-rank1", "rng-rank1"]);
        assert_eq!(
            mine.groups["optimizer-rank1"],
            all_groups(7, world)["optimizer-rank1"]
        );
    }
}

#[test]
fn a_rank_that_never_reports_commits_nothing_and_the_previous_checkpoint_stays() {
    let dir = tempfile::tempdir().unwrap();
    let before = shared_save(dir.path(), 1, 2).unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();

    // Rank 1 wrote its files but its report never reached rank 0; then one that never wrote.
    for rank_1_writes in [true, false] {
        let save = store.begin_shared(Kind::Regular, 2, 2).unwrap();
        let pending = save.pending().clone();
        let part0 = store.write_part(&pending, 0, &rank_groups(2, 0)).unwrap();
        if rank_1_writes {
            store.write_part(&pending, 1, &rank_groups(2, 1)).unwrap();
        }
        let error = save.commit(&metadata(2), &[part0]).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("rank 1 of 2 did not report"), "{message}");
        assert!(message.contains(&pending.id().to_string()), "{message}");
        assert!(message.contains("nothing is committed"), "{message}");
        assert!(store.manifest(&pending.id()).is_err());
        assert_eq!(temporaries(dir.path()), Vec::<String>::new(), "not aborted");
        let resume = store.latest_valid().unwrap();
        assert_eq!(resume.id, before);
        assert!(resume.skipped.is_empty(), "{:?}", resume.skipped);
        assert_eq!(store.list().unwrap().len(), 1);
    }
}

#[test]
fn commit_refuses_a_part_whose_file_is_not_what_its_rank_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    type Spoil = fn(&Path, &mut Vec<SharedPart>);
    let cases: [(&str, Spoil); 8] = [
        ("has 10 bytes, rank 1 reported", |temp, _| {
            let file = fs_err::OpenOptions::new()
                .write(true)
                .open(temp.join("optimizer-rank1.safetensors"))
                .unwrap();
            file.set_len(10).unwrap();
        }),
        (
            "rank 1's rng-rank1.safetensors is not in the pending",
            |temp, _| {
                fs_err::remove_file(temp.join("rng-rank1.safetensors")).unwrap();
            },
        ),
        ("rank 1 reported twice", |_, parts| {
            parts.push(parts[1].clone());
        }),
        (
            "rank 1 reported optimizer-rank1.safetensors twice",
            |_, parts| {
                let again = parts[1].files[0].clone();
                parts[1].files.push(again);
            },
        ),
        ("belongs to rank 0, but rank 1 wrote it", |_, parts| {
            let stolen = parts[0].files.remove(1);
            assert_eq!(stolen.name, "optimizer-rank0.safetensors");
            parts[1].files.push(keel_ckpt::FileEntry {
                rank: None,
                ..stolen
            });
        }),
        (
            "lists optimizer-rank1.safetensors as written by rank 0",
            |_, parts| {
                parts[1].files[0].rank = Some(0);
            },
        ),
        ("has no BLAKE3 in hex", |_, parts| {
            parts[1].files[0].blake3 = "Z".repeat(64);
        }),
        ("only rank 0 writes shared groups", |_, parts| {
            let mut model = parts[0].files.remove(0);
            model.rank = None;
            parts[1].files.push(model);
        }),
    ];
    for (says, spoil) in cases {
        let save = store.begin_shared(Kind::Regular, 3, 2).unwrap();
        let pending = save.pending().clone();
        let mut parts: Vec<SharedPart> = (0..2)
            .map(|rank| {
                store
                    .write_part(&pending, rank, &rank_groups(3, rank))
                    .unwrap()
            })
            .collect();
        let temp = dir
            .path()
            .join("regular")
            .join(format!(".tmp-{}", pending.id().name));
        spoil(&temp, &mut parts);
        let error = save.commit(&metadata(3), &parts).unwrap_err();
        assert!(error.to_string().contains(says), "{says}: {error}");
        assert!(store.list().unwrap().is_empty(), "{says}");
        assert_eq!(temporaries(dir.path()), Vec::<String>::new(), "{says}");
    }
}

#[test]
fn a_rank_may_write_only_its_own_groups() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    let save = store.begin_shared(Kind::Regular, 4, 2).unwrap();
    for (rank, groups, says) in [
        (1, rank_groups(4, 0), "only rank 0 writes shared groups"),
        (0, rank_groups(4, 1), "belongs to rank 1"),
        (2, rank_groups(4, 1), "in a world of 2 ranks"),
    ] {
        let error = store.write_part(save.pending(), rank, &groups).unwrap_err();
        assert!(error.to_string().contains(says), "rank {rank}: {error}");
    }
    let error = store.begin_shared(Kind::Regular, 4, 0).unwrap_err();
    assert!(error.to_string().contains("world of 0"), "{error}");
    let pending = save.pending().clone();
    let parts: Vec<SharedPart> = (0..2)
        .map(|rank| {
            store
                .write_part(&pending, rank, &rank_groups(4, rank))
                .unwrap()
        })
        .collect();
    let error = save.commit(&snapshot_for(4, 8), &parts).unwrap_err();
    assert!(error.to_string().contains("holds tensor groups"), "{error}");
    let save = store.begin_shared(Kind::Regular, 4, 1).unwrap();
    let part = store
        .write_part(save.pending(), 0, &rank_groups(4, 0))
        .unwrap();
    let error = save.commit(&metadata(5), &[part]).unwrap_err();
    assert!(
        error.to_string().contains("the snapshot is of step 5"),
        "{error}"
    );
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn a_missing_or_truncated_rank_file_after_commit_fails_verify_and_resume_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let good = shared_save(dir.path(), 1, 2).unwrap();
    let missing = shared_save(dir.path(), 2, 2).unwrap();
    let truncated = shared_save(dir.path(), 3, 3).unwrap();
    let folder = |id: &CheckpointId| dir.path().join("regular").join(&id.name);
    fs_err::remove_file(folder(&missing).join("optimizer-rank1.safetensors")).unwrap();
    let file = fs_err::OpenOptions::new()
        .write(true)
        .open(folder(&truncated).join("rng-rank2.safetensors"))
        .unwrap();
    file.set_len(20).unwrap();

    let store = CheckpointStore::local(dir.path()).unwrap();
    let error = store.verify(&missing).unwrap_err().to_string();
    assert!(
        error.contains("optimizer-rank1.safetensors is missing"),
        "{error}"
    );
    let error = store.verify(&truncated).unwrap_err().to_string();
    assert!(
        error.contains("rng-rank2.safetensors has 20 bytes"),
        "{error}"
    );
    let resume = store.latest_valid().unwrap();
    assert_eq!(resume.id, good);
    let skipped: Vec<&CheckpointId> = resume.skipped.iter().map(|(id, _)| id).collect();
    assert_eq!(skipped, [&truncated, &missing]);
    // Nor does a rank that loads only its own share get a checkpoint missing another's.
    assert!(store.load_groups(&missing, |g| g == "model").is_err());
}

/// A prune (here another store on the folder, as `keel ckpt prune` in another process would
/// open it, and then the training's own store) waits while rank 1 still writes: from rank
/// 0's begin to its commit, not only while each rank writes. The commit then succeeds and
/// the prune keeps it (it is the newest).
#[test]
fn a_prune_during_an_in_flight_shared_save_deletes_none_of_it() {
    for prune_from_own_store in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        for step in 1..=2 {
            shared_save(dir.path(), step, 2).unwrap();
        }
        let store = CheckpointStore::local(dir.path()).unwrap();
        let save = store.begin_shared(Kind::Regular, 3, 2).unwrap();
        let pending = save.pending().clone();
        let part0 = store.write_part(&pending, 0, &rank_groups(3, 0)).unwrap();
        let pruner = {
            let pruning = if prune_from_own_store {
                store.clone()
            } else {
                CheckpointStore::local(dir.path()).unwrap()
            };
            std::thread::spawn(move || pruning.prune(&keep_last(1)))
        };
        // Give the prune every chance to run; it must still be waiting.
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!pruner.is_finished(), "the prune did not wait");
        assert_eq!(temporaries(dir.path()).len(), 1);
        // Rank 1 (its own store, or a thread of this one) writes while the prune waits.
        let rank1 = if prune_from_own_store {
            store.clone()
        } else {
            CheckpointStore::local(dir.path()).unwrap()
        };
        let part1 = rank1.write_part(&pending, 1, &rank_groups(3, 1)).unwrap();
        assert!(
            !pruner.is_finished(),
            "the prune did not wait for the commit"
        );
        let id = save.commit(&metadata(3), &[part1, part0]).unwrap();
        let pruned = pruner.join().unwrap().unwrap();
        assert!(pruned.temporaries.is_empty(), "{pruned:?}");
        assert_eq!(pruned.deleted.len(), 2, "{pruned:?}");
        let resume = store.latest_valid().unwrap();
        assert_eq!(resume.id, id);
        assert_eq!(resume.snapshot.groups, all_groups(3, 2));
    }
}

/// The child of the crash test: begins a 2-rank save in `KEEL_CKPT_SHARED_CRASH_DIR`, writes
/// both parts, says so on stdout and waits to be killed before it commits.
#[test]
#[ignore = "run by a_crash_between_parts_and_commit_... as its child process"]
#[expect(clippy::print_stdout, reason = "the child tells its parent on stdout")]
fn shared_crash_child() {
    let Some(dir) = std::env::var_os("KEEL_CKPT_SHARED_CRASH_DIR") else {
        return;
    };
    let store = CheckpointStore::local(Path::new(&dir)).unwrap();
    let save = store.begin_shared(Kind::Regular, 5, 2).unwrap();
    for rank in 0..2 {
        store
            .write_part(save.pending(), rank, &rank_groups(5, rank))
            .unwrap();
    }
    println!("parts written {}", save.pending().id());
    loop {
        std::thread::park();
    }
}

#[test]
fn a_crash_between_parts_and_commit_leaves_a_temporary_that_the_next_prune_removes() {
    let dir = tempfile::tempdir().unwrap();
    let before = shared_save(dir.path(), 4, 2).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "shared_crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KEEL_CKPT_SHARED_CRASH_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let pending = stdout
        .lines()
        .map(Result::unwrap)
        // On the line libtest starts with `test shared_crash_child ... `.
        .find_map(|line| {
            line.split_once("parts written ")
                .map(|(_, id)| id.to_string())
        })
        .expect("the child wrote its parts");
    child.kill().unwrap();
    child.wait().unwrap();
    let name = pending.strip_prefix("regular/").unwrap();
    assert_eq!(temporaries(dir.path()), [format!(".tmp-{name}")]);

    let store = CheckpointStore::local(dir.path()).unwrap();
    assert_eq!(store.latest_valid().unwrap().id, before);
    // The next saves work, single-rank and multi-rank, beside the leftover.
    store.save(Kind::Regular, &snapshot_for(5, 16)).unwrap();
    let after = shared_save(dir.path(), 6, 2).unwrap();
    assert_eq!(store.latest_valid().unwrap().id, after);
    assert_eq!(temporaries(dir.path()).len(), 1);
    // No save holds the lock now: the crashed job's pending folder is keel's and goes.
    let pruned = store.prune(&keep_last(10)).unwrap();
    assert_eq!(pruned.temporaries, [format!("regular/.tmp-{name}")]);
    assert!(pruned.deleted.is_empty(), "{pruned:?}");
    assert_eq!(temporaries(dir.path()), Vec::<String>::new());
    assert_eq!(store.list().unwrap().len(), 3);
    assert_eq!(
        store.latest_valid().unwrap().snapshot.groups,
        all_groups(6, 2)
    );
}

/// A manifest is input: one resealed by hand whose ranks disagree with its world (a rank past
/// it, a file without its rank, a shared group from rank 1, no world at all) is refused.
#[test]
fn a_manifest_whose_ranks_disagree_with_its_world_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let id = shared_save(dir.path(), 1, 2).unwrap();
    let path = dir
        .path()
        .join("regular")
        .join(&id.name)
        .join("manifest.json");
    let original: serde_json::Value =
        serde_json::from_slice(&fs_err::read(&path).unwrap()).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 5] = [
        ("world_size 0", |m| m["world_size"] = 0.into()),
        ("in a world of 2 ranks", |m| {
            m["files"][2]["rank"] = 2.into()
        }),
        ("does not say which rank wrote", |m| {
            m["files"][2].as_object_mut().unwrap().remove("rank");
        }),
        ("only rank 0 writes shared groups", |m| {
            m["files"][0]["rank"] = 1.into()
        }),
        ("in a world of 1 ranks", |m| {
            m.as_object_mut().unwrap().remove("world_size");
        }),
    ];
    let store = CheckpointStore::local(dir.path()).unwrap();
    for (says, edit) in cases {
        let mut manifest = original.clone();
        edit(&mut manifest);
        fs_err::write(&path, keel_ckpt::seal_manifest(manifest)).unwrap();
        let error = store.manifest(&id).unwrap_err().to_string();
        assert!(error.contains(says), "{says}: {error}");
    }
    fs_err::write(&path, keel_ckpt::seal_manifest(original)).unwrap();
    assert!(store.verify(&id).is_ok());
}
