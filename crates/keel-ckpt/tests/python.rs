//! PyTorch users open keel's checkpoints: Python's `safetensors` (PyPI) reads every group
//! file of a checkpoint keel wrote, with the same dtypes, shapes and values.

mod common;

use std::process::Command;

use common::snapshot_for;
use keel_ckpt::{CheckpointStore, Dtype, Kind};

const SCRIPT: &str = r#"
import json, sys
import numpy as np
from safetensors.numpy import load_file

folder, expected_path = sys.argv[1], sys.argv[2]
expected = json.load(open(expected_path))
for group, tensors in expected.items():
    loaded = load_file(f"{folder}/{group}.safetensors")
    assert sorted(loaded) == sorted(tensors), (group, sorted(loaded), sorted(tensors))
    for name, want in tensors.items():
        got = loaded[name]
        assert str(got.dtype) == want["dtype"], (name, got.dtype, want["dtype"])
        assert list(got.shape) == want["shape"], (name, got.shape, want["shape"])
        values = np.array(want["values"], dtype=got.dtype).reshape(want["shape"])
        assert np.array_equal(got, values), name
print("ok", sum(len(t) for t in expected.values()))
"#;

fn numpy_dtype(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F32 => "float32",
        Dtype::F64 => "float64",
        Dtype::I64 => "int64",
        other => panic!("not used here: {other:?}"),
    }
}

#[test]
fn python_safetensors_reads_what_keel_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::local(dir.path()).unwrap();
    let snapshot = snapshot_for(42, 1024);
    let id = store.save(Kind::Regular, &snapshot).unwrap();

    // What Python must find, values as JSON numbers (f32 values print exactly as f64).
    let mut expected = serde_json::Map::new();
    for (group, tensors) in &snapshot.groups {
        let mut entries = serde_json::Map::new();
        for (name, tensor) in tensors {
            let values: Vec<serde_json::Value> = match tensor.dtype {
                Dtype::F32 => tensor
                    .data
                    .chunks_exact(4)
                    .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())).into())
                    .collect(),
                Dtype::F64 => tensor
                    .data
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()).into())
                    .collect(),
                Dtype::I64 => tensor
                    .data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()).into())
                    .collect(),
                other => panic!("{other:?}"),
            };
            entries.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": numpy_dtype(tensor.dtype),
                    "shape": tensor.shape,
                    "values": values,
                }),
            );
        }
        expected.insert(group.clone(), entries.into());
    }
    let expected_path = dir.path().join("expected.json");
    fs_err::write(&expected_path, serde_json::to_vec(&expected).unwrap()).unwrap();
    let folder = dir.path().join(id.kind.as_str()).join(&id.name);
    let python = keel_test_support::python(&["safetensors.numpy", "numpy"]);
    let output = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(&folder)
        .arg(&expected_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok 4");
}
