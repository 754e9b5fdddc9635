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
        cause,
        emergency,
    } = &error
    else {
        panic!("{error}")
    };
    assert_eq!((*step, *saved_step), (37, 36));
    assert!(
        matches!(**cause, TrainError::NonFinite { step: 37, .. }),
        "{cause}"
    );
    // The cause reads in the message and is not also the error's source, which a renderer
    // walking the chain (miette, keel's error_chain) would print a second time.
    assert!(std::error::Error::source(&error).is_none());
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

/// Trains the AdamW MLP on `train`/`test` (the shape of `run_adamw`), stopping after step
/// `stop_at` when given; returns the outcome and the warnings the loop reported.
fn run_on_data(
    train: &Dataset,
    test: &Dataset,
    store: &CheckpointStore,
    settings: TrainSettings,
    stop_at: Option<u64>,
) -> (Result<keel_train::Outcome, TrainError>, Vec<String>) {
    let device = candle_core::Device::Cpu;
    let mut rng = TrainRng::new(SEED);
    let model = Mlp::new(&[64, 48, 32, 10], 0.2, &device, &mut rng).unwrap();
    let optimizer = AdamW::named(model.parameters(), AdamWConfig::default()).unwrap();
    let mut trainer = Trainer::new(model, optimizer, rng, device, store.clone(), settings);
    let stop = StopSignal::new();
    let mut warnings = Vec::new();
    let outcome = trainer.run(train, test, &stop, &mut |event| match event {
        Event::Step(row) if Some(row.step) == stop_at => stop.request(2),
        Event::Warning(w) => warnings.push(w.clone()),
        _ => {}
    });
    (outcome, warnings)
}

/// A store holding one checkpoint: the state at step 40 (epoch 1, batch 13 of 27) as
/// `change` leaves it.
fn tampered(change: impl FnOnce(&mut keel_ckpt::Snapshot)) -> (tempfile::TempDir, CheckpointStore) {
    let (train, test) = data();
    let first = tempfile::tempdir().unwrap();
    let first = CheckpointStore::local(first.path()).unwrap();
    let settings = settings(Box::new(EveryNSteps(1000)), false);
    let (outcome, _) = run_on_data(&train, &test, &first, settings, Some(40));
    assert_eq!(outcome.unwrap().status, Status::Interrupted { signal: 2 });
    let mut snapshot = first.latest_valid().unwrap().snapshot;
    change(&mut snapshot);
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    store.save(Kind::Interrupted, &snapshot).unwrap();
    (dir, store)
}

/// Hardening issue #13: the dataset at the same path replaced by a smaller one made resume
/// spin forever (the saved batch at or past the batches per epoch), and same-size replaced
/// data resumed silently. The checkpoint records each set's shape and BLAKE3; a change is
/// refused naming the set, the old and new sizes and digests.
#[test]
fn replaced_dataset_is_refused_with_what_changed() {
    let (train, test) = data();
    let (_dir, store) = tampered(|_| {});
    let smaller = train.subset(&(0..500).collect::<Vec<_>>(), &train.name);
    let (outcome, _) = run_on_data(
        &smaller,
        &test,
        &store,
        settings(Box::new(EveryNSteps(5)), false),
        None,
    );
    let text = outcome.unwrap_err().to_string();
    assert!(
        text.starts_with("checkpoint interrupted/step-000000000040-")
            && text.contains("was trained on other data (`digits (train)`: 1348 rows x 64 features, 10 classes, blake3 ")
            && text.contains(" -> 500 rows x 64 features, 10 classes, blake3 "),
        "{text}"
    );
    let mut same_size = train.clone();
    same_size.inputs[7] = 1.0 - same_size.inputs[7];
    let (outcome, _) = run_on_data(
        &same_size,
        &test,
        &store,
        settings(Box::new(EveryNSteps(5)), false),
        None,
    );
    let text = outcome.unwrap_err().to_string();
    let old = train.digest();
    let new = same_size.digest();
    assert!(
        text.contains(&format!("1348 rows x 64 features, 10 classes, blake3 {old} -> 1348 rows x 64 features, 10 classes, blake3 {new}")),
        "{text}"
    );
    // A dataset whose fields disagree is an error naming it, not a panic.
    let mut broken = train.clone();
    broken.inputs.truncate(100);
    let (outcome, _) = run_on_data(
        &broken,
        &test,
        &store,
        settings(Box::new(EveryNSteps(5)), false),
        None,
    );
    let text = outcome.unwrap_err().to_string();
    assert!(
        text.starts_with(
            "digits (train): 1348 rows of 64 features need 86272 values, there are 100"
        ),
        "{text}"
    );
}

/// Hardening issue #13: a saved position outside the epoch (here: the same data in larger
/// batches, 3 per epoch, with the checkpoint at batch 13) is an error naming the checkpoint,
/// never a loop.
#[test]
fn saved_position_outside_the_epoch_is_an_error_naming_the_checkpoint() {
    let (train, test) = data();
    let (_dir, store) = tampered(|_| {});
    let larger = TrainSettings {
        batch_size: 500,
        ..settings(Box::new(EveryNSteps(5)), false)
    };
    let (outcome, _) = run_on_data(&train, &test, &store, larger, None);
    let text = outcome.unwrap_err().to_string();
    assert!(
        text.starts_with("checkpoint interrupted/step-000000000040-")
            && text.ends_with("cannot be resumed: its data position (batch 13 of epoch 1) is outside an epoch of 3 batches (1348 rows in batches of 500)"),
        "{text}"
    );
}

/// A change made to a saved state.
type Tamper = dyn FnOnce(&mut keel_ckpt::Snapshot);

/// Hardening issue #13: every value loaded from a checkpoint is checked against the others
/// and the model before use; a disagreement is an error naming the checkpoint.
#[test]
fn inconsistent_checkpoint_values_are_refused_naming_the_checkpoint() {
    let (train, test) = data();
    let cases: Vec<(Box<Tamper>, &str)> = vec![
        (
            Box::new(|s| s.user["optimizer"]["steps"] = json!(39)),
            "its optimizer took 39 steps, its manifest says step 40",
        ),
        (
            Box::new(|s| s.user["batch"] = json!(12)),
            "its step 40 is not epoch 1 x 27 batches + batch 12",
        ),
        (
            Box::new(|s| s.user["rng"]["seed"] = json!("00".repeat(32))),
            "its random generator was seeded differently from this run's",
        ),
        (
            Box::new(|s| s.user["rng"]["word_pos"] = json!("-1")),
            "bad RNG state",
        ),
        (
            Box::new(|s| {
                let w = s
                    .groups
                    .get_mut("model")
                    .unwrap()
                    .get_mut("linear0.bias")
                    .unwrap();
                *w = keel_ckpt::Tensor::from_f32(vec![2, 24], &[0.5; 48]).unwrap();
            }),
            "parameter `linear0.bias` is F32 [2, 24], the model's F32 [48]",
        ),
        (
            Box::new(|s| {
                let w = s
                    .groups
                    .get_mut("model")
                    .unwrap()
                    .get_mut("linear0.bias")
                    .unwrap();
                *w = keel_ckpt::Tensor::from_f32(vec![48], &[f32::NAN; 48]).unwrap();
            }),
            "tensor `linear0.bias` holds NaN: it is not a good state",
        ),
    ];
    for (change, want) in cases {
        let (_dir, store) = tampered(change);
        let (outcome, _) = run_on_data(
            &train,
            &test,
            &store,
            settings(Box::new(EveryNSteps(5)), false),
            None,
        );
        let text = outcome.unwrap_err().to_string();
        assert!(
            text.starts_with("checkpoint interrupted/step-000000000040-") && text.contains(want),
            "{text}\nwanted {want}"
        );
    }
}

/// Hardening issue #13, the decision for checkpoints written before the data digest: they
/// resume (the position checks still hold) with a warning naming the checkpoint.
#[test]
fn checkpoint_without_a_data_digest_resumes_with_a_warning() {
    let (train, test) = data();
    let (_dir, store) = tampered(|s| {
        s.user.as_object_mut().unwrap().remove("data");
    });
    let (outcome, warnings) = run_on_data(
        &train,
        &test,
        &store,
        settings(Box::new(EveryNSteps(1000)), false),
        None,
    );
    assert_eq!(outcome.unwrap().step, 81);
    assert!(
        warnings.len() == 1
            && warnings[0].starts_with("checkpoint interrupted/step-000000000040-")
            && warnings[0].contains("records no digest of its data"),
        "{warnings:?}"
    );
}

/// AdamW that, after step `poison_after`, overwrites the first parameter with NaN: an
/// optimizer not written by keel that lets non-finite weights through.
struct Poisoning {
    inner: AdamW,
    first: candle_core::Var,
    poison_after: u64,
}

impl OptimizerState for Poisoning {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn steps(&self) -> u64 {
        self.inner.steps()
    }
    fn lr(&self) -> f64 {
        self.inner.lr()
    }
    fn set_lr(&mut self, lr: f64) {
        self.inner.set_lr(lr);
    }
    fn update(&mut self, grads: &candle_core::backprop::GradStore) -> candle_core::Result<()> {
        self.inner.update(grads)?;
        if self.inner.steps() == self.poison_after {
            let nan = (self.first.as_tensor().zeros_like()? * f64::NAN)?;
            self.first.set(&nan)?;
        }
        Ok(())
    }
    fn state_tensors(
        &self,
    ) -> candle_core::Result<std::collections::BTreeMap<String, candle_core::Tensor>> {
        self.inner.state_tensors()
    }
    fn load_state(
        &mut self,
        steps: u64,
        tensors: &std::collections::BTreeMap<String, candle_core::Tensor>,
    ) -> Result<(), String> {
        self.inner.load_state(steps, tensors)
    }
}

/// Hardening issue #13: the "last good state" emergency checkpoint held 100% NaN weights.
/// No checkpoint records non-finite weights: the policy save after the poisoned step fails
/// (reported, training goes on), the next step fails (ReLU hides the NaN from the loss, AdamW
/// refuses the NaN gradient), and the emergency save says the state is not finite and saves
/// nothing. With keel's own optimizers a learning rate that overflows (a step schedule with
/// a huge gamma) is refused before it is applied, so the emergency checkpoint holds the last
/// finite state; a non-finite base rate is refused before training.
#[test]
fn emergency_checkpoint_never_holds_non_finite_weights() {
    let (train, test) = data();
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    let device = candle_core::Device::Cpu;
    let mut rng = TrainRng::new(SEED);
    let model = Mlp::new(&[64, 32, 10], 0.0, &device, &mut rng).unwrap();
    let parameters = model.parameters();
    let optimizer = Poisoning {
        first: parameters[0].1.clone(),
        inner: AdamW::named(parameters, AdamWConfig::default()).unwrap(),
        poison_after: 20,
    };
    let poisoned = TrainSettings {
        policy: Box::new(AtSteps(BTreeSet::from([10, 20]))),
        ..settings(Box::new(EveryNSteps(1000)), false)
    };
    let mut trainer = Trainer::new(model, optimizer, rng, device, store.clone(), poisoned);
    let mut failed_saves = Vec::new();
    let error = trainer
        .run(&train, &test, &StopSignal::new(), &mut |event| {
            if let Event::SaveFailed(why) = event {
                failed_saves.push(why.clone());
            }
        })
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with("training stopped at step 21: ")
            && text.contains("the emergency checkpoint could not be saved either: tensor `linear0.weight` of the state at step 20 holds NaN"),
        "{text}"
    );
    assert_eq!(failed_saves.len(), 1, "{failed_saves:?}");
    assert!(
        failed_saves[0].contains("a non-finite state is not saved"),
        "{failed_saves:?}"
    );
    let steps: Vec<(Kind, u64)> = store
        .list()
        .unwrap()
        .iter()
        .map(|l| (l.id.kind, l.manifest.as_ref().unwrap().step))
        .collect();
    assert_eq!(steps, [(Kind::Regular, 10)]);

    // keel's AdamW refuses the update an overflowing rate gives: the emergency checkpoint is
    // the state before it, and finite.
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    let exploding = TrainSettings {
        schedule: Schedule::Step {
            every_steps: 5,
            gamma: 1e200,
        },
        ..settings(Box::new(EveryNSteps(1000)), false)
    };
    let (outcome, _) = run_on_data(&train, &test, &store, exploding, None);
    let error = outcome.unwrap_err();
    let TrainError::StepFailed {
        step, emergency, ..
    } = &error
    else {
        panic!("{error}")
    };
    assert_eq!(*step, 6, "{error}");
    assert!(
        error
            .to_string()
            .contains("gives non-finite parameters or state; nothing was changed"),
        "{error}"
    );
    let (_, snapshot) = store.load(emergency.as_ref().unwrap()).unwrap();
    assert_eq!(snapshot.step, 5);
    for tensor in snapshot.groups.values().flat_map(|g| g.values()) {
        assert!(tensor.to_f32().unwrap().iter().all(|v| v.is_finite()));
    }
    let nan_lr = TrainSettings {
        lr: f64::NAN,
        ..settings(Box::new(EveryNSteps(1000)), false)
    };
    let (outcome, _) = run_on_data(&train, &test, &store, nan_lr, None);
    assert_eq!(
        outcome.unwrap_err().to_string(),
        "the learning rate must be a finite number >= 0, got NaN"
    );
}
