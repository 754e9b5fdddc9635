//! Resume bit for bit: a run stopped at arbitrary steps and resumed (by a new trainer, as a new
//! process would) ends with the same weights and optimizer state as one never stopped, and a
//! failed step leaves the state of the step before as an emergency checkpoint.

use std::collections::BTreeSet;

use keel_ckpt::{AtSteps, CheckpointStore, EveryNSteps, Kind, SavePolicy, TensorGroup};
use keel_train::{
    AdamW, AdamWConfig, Dataset, Event, Mlp, Model, OptimizerState, Schedule, SgdConfig,
    SgdMomentum, Status, StopSignal, TrainError, TrainRng, TrainSettings, Trainer,
};
use serde_json::json;

const SEED: u64 = 11;

fn data() -> (Dataset, Dataset) {
    Dataset::digits().unwrap().split(0.25, 3).unwrap()
}

fn settings(policy: Box<dyn SavePolicy>, save_async: bool) -> TrainSettings {
    TrainSettings {
        epochs: 3,
        batch_size: 50,
        policy,
        save_async,
        schedule: Schedule::Cosine {
            warmup_steps: 5,
            min_lr: 1e-5,
        },
        trajectory: json!({"test": "resume"}),
        ..TrainSettings::new(SEED, 3e-3)
    }
}

/// A trainer as a fresh process builds it: model initialised from the seed (dropout on, so
/// the generator's state matters), AdamW or SGD.
fn run_adamw(
    store: &CheckpointStore,
    settings: TrainSettings,
    stop: &StopSignal,
    stop_at: Option<u64>,
) -> Result<keel_train::Outcome, TrainError> {
    run_adamw_on(candle_core::Device::Cpu, store, settings, stop, stop_at)
}

fn run_adamw_on(
    device: candle_core::Device,
    store: &CheckpointStore,
    settings: TrainSettings,
    stop: &StopSignal,
    stop_at: Option<u64>,
) -> Result<keel_train::Outcome, TrainError> {
    let (train, test) = data();
    let mut rng = TrainRng::new(SEED);
    let model = Mlp::new(&[64, 48, 32, 10], 0.2, &device, &mut rng).unwrap();
    let optimizer = AdamW::named(model.parameters(), AdamWConfig::default()).unwrap();
    let mut trainer = Trainer::new(model, optimizer, rng, device, store.clone(), settings);
    trainer.run(&train, &test, stop, &mut |event| {
        if let (Event::Step(row), Some(at)) = (event, stop_at)
            && row.step == at
        {
            stop.request(2);
        }
    })
}

fn run_sgd(store: &CheckpointStore, stop_at: Option<u64>) -> keel_train::Outcome {
    let (train, test) = data();
    let device = candle_core::Device::Cpu;
    let mut rng = TrainRng::new(SEED);
    let model = Mlp::new(&[64, 32, 10], 0.1, &device, &mut rng).unwrap();
    let optimizer = SgdMomentum::named(
        model.parameters(),
        SgdConfig {
            lr: 0.05,
            nesterov: true,
            weight_decay: 1e-4,
            ..SgdConfig::default()
        },
    )
    .unwrap();
    assert_eq!(optimizer.kind(), "sgd");
    let settings = TrainSettings {
        schedule: Schedule::Step {
            every_steps: 20,
            gamma: 0.5,
        },
        ..settings(Box::new(EveryNSteps(4)), false)
    };
    let stop = StopSignal::new();
    let mut trainer = Trainer::new(model, optimizer, rng, device, store.clone(), settings);
    trainer
        .run(&train, &test, &stop, &mut |event| {
            if let (Event::Step(row), Some(at)) = (event, stop_at)
                && row.step == at
            {
                stop.request(15);
            }
        })
        .unwrap()
}

/// Trains to the end (resuming whatever `store` holds).
fn complete(store: &CheckpointStore, every: u64, background: bool) -> keel_train::Outcome {
    run_adamw(
        store,
        settings(Box::new(EveryNSteps(every)), background),
        &StopSignal::new(),
        None,
    )
    .unwrap()
}

/// The final checkpoint's tensors (model and optimizer) and the trainer state beside them.
fn final_state(store: &CheckpointStore) -> (Vec<(String, TensorGroup)>, u64, serde_json::Value) {
    let resume = store.latest_valid().unwrap();
    let mut user = resume.snapshot.user.clone();
    user.as_object_mut().unwrap().remove("best");
    (
        resume.snapshot.groups.into_iter().collect(),
        resume.manifest.step,
        user,
    )
}

#[test]
fn stopped_and_resumed_runs_end_bit_identical() {
    let reference = tempfile::tempdir().unwrap();
    let reference = CheckpointStore::local(reference.path()).unwrap();
    let outcome = complete(&reference, 5, true);
    assert_eq!(
        (outcome.status, outcome.step, outcome.epoch),
        (Status::Completed, 81, 3)
    );

    // Stops mid-epoch, right after a save, at an epoch boundary, and twice in a row.
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    for at in [3, 10, 27, 28, 44, 54, 70] {
        let stop = StopSignal::new();
        let outcome = run_adamw(
            &store,
            settings(Box::new(EveryNSteps(5)), true),
            &stop,
            Some(at),
        )
        .unwrap();
        assert_eq!(outcome.status, Status::Interrupted { signal: 2 });
        assert_eq!(outcome.step, at);
        let listed = store.list().unwrap();
        assert!(
            listed
                .iter()
                .any(|l| l.id.kind == Kind::Interrupted && l.manifest.as_ref().unwrap().step == at),
            "no interrupted checkpoint at step {at}"
        );
    }
    let outcome = complete(&store, 5, true);
    assert_eq!((outcome.status, outcome.step), (Status::Completed, 81));
    assert_eq!(final_state(&store), final_state(&reference));

    // Running again after the end trains nothing and keeps the result.
    let again = complete(&store, 5, true);
    assert_eq!(again.step, 81);
    assert_eq!(final_state(&store), final_state(&reference));
}

#[test]
fn sgd_with_momentum_resumes_bit_identical() {
    let reference = tempfile::tempdir().unwrap();
    let reference = CheckpointStore::local(reference.path()).unwrap();
    run_sgd(&reference, None);
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    for at in [1, 19, 40] {
        assert_eq!(
            run_sgd(&store, Some(at)).status,
            Status::Interrupted { signal: 15 }
        );
    }
    run_sgd(&store, None);
    let (groups, step, _) = final_state(&store);
    assert_eq!(step, 81);
    assert!(groups.iter().any(
        |(name, g)| name == "optimizer" && g.keys().all(|k| k.starts_with("momentum_buffer."))
    ));
    assert_eq!(final_state(&store), final_state(&reference));
}

/// Resuming from an older checkpoint (the newer ones lost) still lands on the same weights:
/// what a SIGKILL between saves amounts to.
#[test]
fn resuming_from_an_older_checkpoint_repeats_the_lost_steps_exactly() {
    let reference = tempfile::tempdir().unwrap();
    let reference = CheckpointStore::local(reference.path()).unwrap();
    complete(&reference, 5, false);

    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    run_adamw(
        &store,
        settings(Box::new(EveryNSteps(5)), false),
        &StopSignal::new(),
        Some(33),
    )
    .unwrap();
    // Drop the interrupted checkpoint and the newest regular one: resume from step 25.
    for listed in store.list().unwrap() {
        let step = listed.manifest.as_ref().unwrap().step;
        if step > 25 {
            fs_err::remove_dir_all(
                dir.path()
                    .join(listed.id.kind.as_str())
                    .join(&listed.id.name),
            )
            .unwrap();
        }
    }
    complete(&store, 5, false);
    assert_eq!(final_state(&store), final_state(&reference));
}

#[test]
fn nan_loss_saves_the_step_before_as_emergency() {
    // The reference run saves exactly at step 36.
    let reference = tempfile::tempdir().unwrap();
    let reference = CheckpointStore::local(reference.path()).unwrap();
    run_adamw(
        &reference,
        settings(Box::new(AtSteps(BTreeSet::from([36]))), false),
        &StopSignal::new(),
        None,
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    let failing = TrainSettings {
        nan_at_step: Some(37),
        ..settings(Box::new(EveryNSteps(10)), true)
    };
    let error = run_adamw(&store, failing, &StopSignal::new(), None).unwrap_err();
    let TrainError::StepFailed {
        step,
        saved_step,
        source,
        emergency,
    } = &error
    else {
        panic!("{error}")
    };
    assert_eq!((*step, *saved_step), (37, 36));
    assert!(
        matches!(**source, TrainError::NonFinite { step: 37, .. }),
        "{source}"
    );
    let id = emergency.as_ref().unwrap();
    assert_eq!(id.kind, Kind::Emergency);
    let text = error.to_string();
    assert!(
        text.starts_with("training stopped at step 37: loss is NaN at step 37 (epoch 1, batch 9)")
            && text
                .contains("the last good state (step 36) is saved as emergency/step-000000000036-"),
        "{text}"
    );
    let (_, emergency_snapshot) = store.load(id).unwrap();
    let at_36 = reference
        .list()
        .unwrap()
        .into_iter()
        .find(|l| l.manifest.as_ref().unwrap().step == 36)
        .unwrap();
    let (_, reference_snapshot) = reference.load(&at_36.id).unwrap();
    assert_eq!(emergency_snapshot.groups, reference_snapshot.groups);
    assert_eq!(
        emergency_snapshot.user["rng"],
        reference_snapshot.user["rng"]
    );
    assert_eq!(
        emergency_snapshot.user["batch"],
        reference_snapshot.user["batch"]
    );

    // Resuming (without the fault) goes on from the emergency checkpoint to the same end.
    let full = tempfile::tempdir().unwrap();
    let full = CheckpointStore::local(full.path()).unwrap();
    complete(&full, 10, true);
    complete(&store, 10, true);
    assert_eq!(final_state(&store), final_state(&full));
}

#[test]
fn other_settings_are_refused_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    run_adamw(
        &store,
        settings(Box::new(EveryNSteps(5)), false),
        &StopSignal::new(),
        Some(12),
    )
    .unwrap();
    let changed = TrainSettings {
        trajectory: json!({"test": "other"}),
        ..settings(Box::new(EveryNSteps(5)), false)
    };
    let error = run_adamw(&store, changed, &StopSignal::new(), None).unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with("checkpoint interrupted/step-000000000012-")
            && text.contains("(test: \"resume\" -> \"other\")"),
        "{text}"
    );
    let fresh = TrainSettings {
        fresh: true,
        ..settings(Box::new(EveryNSteps(5)), false)
    };
    let error = run_adamw(&store, fresh, &StopSignal::new(), None).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("a fresh run would be mixed with them"),
        "{error}"
    );
}

/// The same body on every device this build has: the CPU always, CUDA with the `cuda` feature
/// (run on a GPU node: `cargo test -p keel-train --features cuda`).
macro_rules! on_each_device {
    ($name:ident, $body:expr) => {
        mod $name {
            #[test]
            fn cpu() {
                ($body)(candle_core::Device::Cpu);
            }
            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() {
                ($body)(candle_core::Device::new_cuda(0).unwrap());
            }
        }
    };
}

on_each_device!(stop_and_resume_on_device, |device: candle_core::Device| {
    use super::*;
    let reference = tempfile::tempdir().unwrap();
    let reference = CheckpointStore::local(reference.path()).unwrap();
    let outcome = run_adamw_on(
        device.clone(),
        &reference,
        settings(Box::new(EveryNSteps(9)), true),
        &StopSignal::new(),
        None,
    )
    .unwrap();
    assert!(outcome.test_accuracy.unwrap() > 0.7, "{outcome:?}");
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    let stop = StopSignal::new();
    run_adamw_on(
        device.clone(),
        &store,
        settings(Box::new(EveryNSteps(9)), true),
        &stop,
        Some(40),
    )
    .unwrap();
    run_adamw_on(
        device,
        &store,
        settings(Box::new(EveryNSteps(9)), true),
        &StopSignal::new(),
        None,
    )
    .unwrap();
    assert_eq!(final_state(&store), final_state(&reference));
});
