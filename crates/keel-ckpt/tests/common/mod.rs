//! A deterministic training state per step, so that a test can tell exactly what a loaded
//! checkpoint must hold.

#![allow(dead_code)]

use keel_ckpt::{Dtype, Snapshot, Tensor};

/// The state "saved at" `step`: model and optimizer groups of several dtypes, with contents
/// that differ at every step, and `size` f32 values in the largest tensor.
pub(crate) fn snapshot_for(step: u64, size: usize) -> Snapshot {
    let weights: Vec<f32> = (0..size)
        .map(|i| ((step as f32) * 0.5 + i as f32 * 0.001).sin())
        .collect();
    let moments: Vec<f32> = weights.iter().map(|w| w * w).collect();
    let mut snapshot = Snapshot {
        step,
        epoch: step / 10,
        user: serde_json::json!({ "rng": [step, step * 7 + 1], "data_position": step * 32 }),
        ..Snapshot::default()
    };
    snapshot
        .metrics
        .insert("loss".into(), 1.0 / (1.0 + step as f64));
    let model = snapshot.groups.entry("model".into()).or_default();
    model.insert(
        "layer.weight".into(),
        Tensor::from_f32(vec![size / 8, 8], &weights).unwrap(),
    );
    model.insert(
        "layer.bias".into(),
        Tensor::new(
            "layer.bias",
            Dtype::F64,
            vec![3],
            [step as f64, 2.0, -1.5]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )
        .unwrap(),
    );
    let optimizer = snapshot.groups.entry("optimizer".into()).or_default();
    optimizer.insert(
        "layer.weight.exp_avg_sq".into(),
        Tensor::from_f32(vec![size], &moments).unwrap(),
    );
    optimizer.insert(
        "step".into(),
        Tensor::new(
            "step",
            Dtype::I64,
            vec![],
            (step as i64).to_le_bytes().to_vec(),
        )
        .unwrap(),
    );
    snapshot
}

/// Where two snapshots differ, briefly (the first differing field, tensor and byte).
pub(crate) fn difference(a: &Snapshot, b: &Snapshot) -> Option<String> {
    if (a.step, a.epoch) != (b.step, b.epoch) {
        return Some(format!(
            "step/epoch {}/{} vs {}/{}",
            a.step, a.epoch, b.step, b.epoch
        ));
    }
    if a.metrics != b.metrics || a.user != b.user {
        return Some(format!(
            "metrics/user {:?} {} vs {:?} {}",
            a.metrics, a.user, b.metrics, b.user
        ));
    }
    for (group, tensors) in &a.groups {
        let Some(other) = b.groups.get(group) else {
            return Some(format!("group {group} missing"));
        };
        for (name, tensor) in tensors {
            let Some(that) = other.get(name) else {
                return Some(format!("{group}/{name} missing"));
            };
            if tensor.dtype != that.dtype || tensor.shape != that.shape {
                return Some(format!("{group}/{name} dtype/shape"));
            }
            if let Some(i) = tensor.data.iter().zip(&that.data).position(|(x, y)| x != y) {
                return Some(format!("{group}/{name} byte {i} of {}", tensor.data.len()));
            }
        }
    }
    (a != b).then(|| "other".to_string())
}
