//! The trainer's own state in a checkpoint (the manifest's `user` field): one serde struct,
//! written and read whole. The field names and layout are those keel-train has always
//! written (format [`STATE_VERSION`]); fields that older checkpoints lack have defaults.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rng::RngState;

/// The version of the trainer state keel-train writes (its `keel_train` field).
pub(crate) const STATE_VERSION: u64 = 1;

/// What keel-train needs, besides the tensors, to resume bit for bit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TrainerState {
    /// The format version ([`STATE_VERSION`]).
    pub(crate) keel_train: u64,
    /// The ranks that trained (1 when not recorded).
    #[serde(default = "one")]
    pub(crate) world_size: u64,
    /// The settings that change the trajectory, compared on resume.
    #[serde(default)]
    pub(crate) trajectory: Value,
    /// Name, shape and BLAKE3 of the training and held-out sets; `None` in checkpoints of a
    /// keel that did not record them.
    #[serde(default)]
    pub(crate) data: Option<Value>,
    /// The batch within the epoch to train next.
    pub(crate) batch: u64,
    /// The trainer's generator.
    pub(crate) rng: RngState,
    /// The optimizer's counters and layout (its moments are tensors).
    pub(crate) optimizer: OptimizerRecord,
    /// The best value of the best metric so far, when there is a best metric.
    #[serde(default)]
    pub(crate) best: Option<BestRecord>,
}

/// The optimizer part of [`TrainerState`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OptimizerRecord {
    /// `adamw` or `sgd`.
    pub(crate) kind: String,
    /// Updates taken.
    pub(crate) steps: u64,
    /// The learning rate of the last update.
    pub(crate) lr: f64,
    /// The ZeRO-1 partition (`world_size`, `elements`, `ranges`), when sharded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sharding: Option<Value>,
}

/// The best metric and its best value so far (`None` before the first evaluation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BestRecord {
    /// `test_accuracy` or `test_loss`.
    pub(crate) metric: String,
    /// Its best value.
    pub(crate) value: Option<f64>,
}

fn one() -> u64 {
    1
}

impl TrainerState {
    /// The state as the manifest's `user` JSON.
    pub(crate) fn to_user(&self) -> Result<Value, crate::TrainError> {
        serde_json::to_value(self).map_err(|e| crate::TrainError::Io(e.into()))
    }

    /// Reads a manifest's `user` JSON: why not, when it is no keel-train state of
    /// [`STATE_VERSION`] or a field does not read.
    pub(crate) fn from_user(user: &Value) -> Result<Self, String> {
        if user.get("keel_train").and_then(Value::as_u64) != Some(STATE_VERSION) {
            return Err(format!(
                "it holds no keel-train state of version {STATE_VERSION}"
            ));
        }
        TrainerState::deserialize(user).map_err(|e| format!("its keel-train state: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The state as keel-train has written it since format 1 (json! field by field): it
    /// reads, and writes back the same JSON.
    #[test]
    fn the_format_written_so_far_reads_and_writes_back_the_same() {
        let written = json!({
            "keel_train": 1,
            "world_size": 2,
            "trajectory": {"seed": 7, "batch_size": 50},
            "data": {"train": {"rows": 10}, "test": {"rows": 2}},
            "batch": 3,
            "rng": {"seed": "ab".repeat(32), "stream": 0, "word_pos": "128"},
            "optimizer": {
                "kind": "adamw", "steps": 40, "lr": 0.001,
                "sharding": {"world_size": 2, "elements": 10, "ranges": [[0, 5], [5, 10]]},
            },
            "best": {"metric": "test_accuracy", "value": 0.75},
        });
        let state = TrainerState::from_user(&written).unwrap();
        assert_eq!(state.batch, 3);
        assert_eq!(state.optimizer.steps, 40);
        assert_eq!(state.best.as_ref().unwrap().value, Some(0.75));
        assert_eq!(state.to_user().unwrap(), written);

        // Replicated, no best metric, no value yet: `sharding` is left out, `best` is null.
        let mut replicated = written.clone();
        replicated["optimizer"]
            .as_object_mut()
            .unwrap()
            .remove("sharding");
        replicated["best"] = Value::Null;
        let state = TrainerState::from_user(&replicated).unwrap();
        assert_eq!(state.optimizer.sharding, None);
        assert_eq!(state.to_user().unwrap(), replicated);
    }

    /// Fields older checkpoints lack have their defaults: one rank, no data record.
    #[test]
    fn older_states_read_with_defaults() {
        let older = json!({
            "keel_train": 1,
            "trajectory": {},
            "batch": 0,
            "rng": {"seed": "00".repeat(32), "stream": 0, "word_pos": "0"},
            "optimizer": {"kind": "sgd", "steps": 0, "lr": 0.1},
        });
        let state = TrainerState::from_user(&older).unwrap();
        assert_eq!((state.world_size, state.data, state.best), (1, None, None));
    }

    #[test]
    fn other_states_are_refused_saying_why() {
        assert_eq!(
            TrainerState::from_user(&json!({"note": "not keel-train"})).unwrap_err(),
            "it holds no keel-train state of version 1"
        );
        let error = TrainerState::from_user(&json!({"keel_train": 1, "batch": 0})).unwrap_err();
        assert!(
            error.starts_with("its keel-train state: missing field"),
            "{error}"
        );
    }
}
