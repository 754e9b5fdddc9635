//! Optimizer-state sharding (ZeRO-1) in one process: a world of one with
//! `OptimizerSharding::Sharded` runs the sharded path (the update of its share, the
//! all-gather of the parameters, the multi-rank commit of `model` + `optimizer-rank0`) and
//! must train exactly what replicated training trains, bit for bit; a run resumes across the
//! two layouts bit for bit; a failed step leaves an emergency checkpoint of its shares. The
//! runs on several ranks are in `tests/mpirun.rs`.

use keel_ckpt::{CheckpointStore, EveryNSteps, Kind, Snapshot};
use keel_train::{
    AdamW, AdamWConfig, Dataset, Event, Mlp, Model, OptimizerSharding, Outcome, SgdConfig,
    SgdMomentum, StopSignal, TrainError, TrainRng, TrainSettings, Trainer,
};
use serde_json::json;

const SEED: u64 = 17;

#[derive(Clone, Copy, Debug)]
enum Opt {
    AdamW,
    Sgd,
}

fn settings(sharding: OptimizerSharding) -> TrainSettings {
    TrainSettings {
        epochs: 2,
        batch_size: 50,
        policy: Box::new(EveryNSteps(10)),
        trajectory: json!({"test": "zero"}),
        optimizer_sharding: sharding,
        ..TrainSettings::new(SEED, 3e-3)
    }
}

/// A run as a fresh process makes it (dropout on: the generator matters), stopped after
/// step `stop_at` when given.
fn run(
    store: &CheckpointStore,
    opt: Opt,
    settings: TrainSettings,
    stop_at: Option<u64>,
) -> Result<Outcome, TrainError> {
    let (train, test) = Dataset::digits().unwrap().split(0.25, 3).unwrap();
    let device = candle_core::Device::Cpu;
    let mut rng = TrainRng::new(SEED);
    let model = Mlp::new(&[64, 32, 10], 0.1, &device, &mut rng).unwrap();
    let stop = StopSignal::new();
    let mut observer = |event: &Event<'_>| {
        if let (Event::Step(row), Some(at)) = (event, stop_at)
            && row.step == at
        {
            stop.request(15);
        }
    };
    match opt {
        Opt::AdamW => {
            let optimizer = AdamW::named(model.parameters(), AdamWConfig::default()).unwrap();
            Trainer::new(model, optimizer, rng, device, store.clone(), settings).run(
                &train,
                &test,
                &stop,
                &mut observer,
            )
        }
        Opt::Sgd => {
            let config = SgdConfig {
                lr: 0.05,
                nesterov: true,
                weight_decay: 1e-4,
                ..SgdConfig::default()
            };
            let optimizer = SgdMomentum::named(model.parameters(), config).unwrap();
            Trainer::new(model, optimizer, rng, device, store.clone(), settings).run(
                &train,
                &test,
                &stop,
                &mut observer,
            )
        }
    }
}

fn latest(store: &CheckpointStore) -> Snapshot {
    store.latest_valid().unwrap().snapshot
}

/// Every tensor's bytes by group and name, the optimizer's group name set aside: a
/// replicated and a sharded world of one hold the same bytes (the shard of a world of one
/// is every element, each parameter's moments flattened).
fn bytes(snapshot: &Snapshot) -> Vec<(String, String, Vec<u8>)> {
    snapshot
        .groups
        .iter()
        .flat_map(|(group, tensors)| {
            let group = if group.starts_with("optimizer") {
                "optimizer"
            } else {
                group
            };
            tensors
                .iter()
                .map(move |(name, t)| (group.to_string(), name.clone(), t.data.clone()))
        })
        .collect()
}

fn fresh() -> (tempfile::TempDir, CheckpointStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    (dir, store)
}

/// A world of one with sharding on trains the weights and moments of replicated training,
/// byte for byte, for AdamW and SGD (Nesterov, weight decay); its checkpoints hold the
/// model and `optimizer-rank0`, committed by rank 0 as a multi-rank checkpoint of one rank,
/// with the partition recorded.
#[test]
fn sharded_world_of_one_trains_the_replicated_weights_bit_for_bit() {
    for opt in [Opt::AdamW, Opt::Sgd] {
        let (_a, replicated) = fresh();
        let (_b, sharded) = fresh();
        let one = run(
            &replicated,
            opt,
            settings(OptimizerSharding::Replicated),
            None,
        )
        .unwrap();
        let other = run(&sharded, opt, settings(OptimizerSharding::Sharded), None).unwrap();
        assert_eq!(one.step, other.step);
        let (r, s) = (latest(&replicated), latest(&sharded));
        assert_eq!(r.groups.keys().collect::<Vec<_>>(), ["model", "optimizer"]);
        assert_eq!(
            s.groups.keys().collect::<Vec<_>>(),
            ["model", "optimizer-rank0"]
        );
        assert!(bytes(&r) == bytes(&s), "{opt:?}: the bytes differ");
        assert_eq!(one.test_accuracy, other.test_accuracy);
        let sharding = &s.user["optimizer"]["sharding"];
        assert_eq!(sharding["world_size"], 1, "{sharding}");
        assert_eq!(sharding["ranges"][0][0], 0);
        assert_eq!(sharding["ranges"][0][1], sharding["elements"]);
        assert!(r.user["optimizer"].get("sharding").is_none());
        let id = sharded.latest_valid().unwrap().id;
        let manifest = sharded.manifest(&id).unwrap();
        assert_eq!(manifest.world_size, Some(1));
        assert!(
            manifest.files.iter().all(|f| f.rank == Some(0)),
            "{manifest:?}"
        );
    }
}

/// Stopped at step 17 with one layout and resumed with the other (sharded -> replicated and
/// replicated -> sharded): the resumed run ends where an uninterrupted replicated run does,
/// byte for byte: moments are moments, whichever layout saved them.
#[test]
fn a_run_resumes_across_layouts_bit_for_bit() {
    for opt in [Opt::AdamW, Opt::Sgd] {
        let (_r, reference) = fresh();
        run(
            &reference,
            opt,
            settings(OptimizerSharding::Replicated),
            None,
        )
        .unwrap();
        let want = bytes(&latest(&reference));
        for (first, then) in [
            (OptimizerSharding::Sharded, OptimizerSharding::Replicated),
            (OptimizerSharding::Replicated, OptimizerSharding::Sharded),
        ] {
            let (_d, store) = fresh();
            let stopped = run(&store, opt, settings(first), Some(17)).unwrap();
            assert_eq!(stopped.step, 17);
            let done = run(&store, opt, settings(then), None).unwrap();
            assert_eq!(done.step, 54);
            assert!(
                bytes(&latest(&store)) == want,
                "{opt:?} {first:?} -> {then:?}: the bytes differ from the uninterrupted run"
            );
        }
    }
}

/// A NaN loss at step 12 of a sharded run: the step is not taken, and the emergency
/// checkpoint holds the state after step 11 (its model and `optimizer-rank0`), which a
/// replicated run resumes from.
#[test]
fn a_failed_sharded_step_leaves_an_emergency_checkpoint_of_its_shares() {
    let (_d, store) = fresh();
    let failing = TrainSettings {
        nan_at_step: Some(12),
        ..settings(OptimizerSharding::Sharded)
    };
    let error = run(&store, Opt::AdamW, failing, None).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("training stopped at step 12")
            && text.contains("the last good state (step 11) is saved as emergency/"),
        "{text}"
    );
    let resume = store.latest_valid().unwrap();
    assert_eq!(resume.id.kind, Kind::Emergency);
    assert_eq!(resume.manifest.step, 11);
    assert_eq!(
        resume.snapshot.groups.keys().collect::<Vec<_>>(),
        ["model", "optimizer-rank0"]
    );
    assert_eq!(resume.snapshot.user["optimizer"]["steps"], 11);
    let done = run(
        &store,
        Opt::AdamW,
        settings(OptimizerSharding::Replicated),
        None,
    )
    .unwrap();
    assert_eq!(done.step, 54);
}

/// A sharded checkpoint whose recorded partition or shares do not fit is refused naming the
/// checkpoint, before anything is assigned: one saved without a world size (a single-rank
/// save of sharded state), and one committed across "ranks" whose share of a parameter is
/// one element short.
#[test]
fn sharded_checkpoint_that_does_not_fit_is_refused_naming_it() {
    let (_d, store) = fresh();
    run(
        &store,
        Opt::AdamW,
        settings(OptimizerSharding::Sharded),
        Some(17),
    )
    .unwrap();
    let good = store.latest_valid().unwrap().snapshot;

    // Re-saved by a single writer: the manifest records no world size.
    let (_e, single) = fresh();
    let id = single.save(Kind::Regular, &good).unwrap();
    let error = run(
        &single,
        Opt::AdamW,
        settings(OptimizerSharding::Sharded),
        None,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        error,
        format!(
            "checkpoint {id} cannot be resumed: its optimizer is sharded over 1 ranks, its \
             manifest records no world size"
        )
    );

    // Committed by the multi-rank protocol, one moment one element short.
    let (_f, short) = fresh();
    let mut groups = good.groups.clone();
    let share = groups.get_mut("optimizer-rank0").unwrap();
    let (name, tensor) = share.iter_mut().next().unwrap();
    let name = name.clone();
    let n = tensor.shape[0];
    tensor.shape = vec![n - 1];
    tensor.data.truncate((n - 1) * 4);
    let meta = Snapshot {
        groups: Default::default(),
        ..good.clone()
    };
    let save = short.begin_shared(Kind::Regular, good.step, 1).unwrap();
    let part = short.write_part(save.pending(), 0, &groups).unwrap();
    let id = save.commit(&meta, &[part]).unwrap();
    for sharding in [OptimizerSharding::Sharded, OptimizerSharding::Replicated] {
        let error = run(&short, Opt::AdamW, settings(sharding), None)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!(
                "checkpoint {id} cannot be resumed: optimizer state `optimizer-rank0/{name}` is \
                 F32 [{}]",
                n - 1
            )),
            "{error}"
        );
    }
}
