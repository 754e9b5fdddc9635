//! What changed since a checkpoint was saved: its trajectory settings and the environment and
//! device recorded in it, against this run's. One JSON difference walk serves both.

use serde_json::Value;

/// One place where two JSON values differ: its path (`optimizer.lr`, `devices.0.name`; empty
/// for the values themselves) and the value on each side (`None`: not there).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Difference<'a> {
    pub(crate) path: String,
    pub(crate) before: Option<&'a Value>,
    pub(crate) after: Option<&'a Value>,
}

impl std::fmt::Display for Difference<'_> {
    /// `path: before -> after` (`unset` for a value that is not there).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: Option<&Value>| v.map_or("unset".to_string(), Value::to_string);
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{} -> {}", show(self.before), show(self.after))
    }
}

/// Every place where `before` and `after` differ, in key order: objects key by key, arrays of
/// the same length element by element, anything else as a whole. Keys `skip` accepts are not
/// compared (nor anything under them).
pub(crate) fn json_differences<'a>(
    before: &'a Value,
    after: &'a Value,
    skip: &dyn Fn(&str) -> bool,
) -> Vec<Difference<'a>> {
    let mut out = Vec::new();
    walk(String::new(), Some(before), Some(after), skip, &mut out);
    out
}

fn walk<'a>(
    path: String,
    before: Option<&'a Value>,
    after: Option<&'a Value>,
    skip: &dyn Fn(&str) -> bool,
    out: &mut Vec<Difference<'a>>,
) {
    let child = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (before, after) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys.into_iter().filter(|key| !skip(key)) {
                walk(child(key), a.get(key), b.get(key), skip, out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk(child(&i.to_string()), Some(x), Some(y), skip, out);
            }
        }
        _ if before != after => out.push(Difference {
            path,
            before,
            after,
        }),
        _ => {}
    }
}

/// What differs between the environment and device recorded in a checkpoint and this run's
/// (opaque JSON to keel-ckpt; here the fingerprint keel train records: its `root` digest and,
/// for several ranks, each rank's `host` and `root` under `ranks`; and the device probe): one
/// line per difference. Free memory and timing fields are not compared; what is not recorded
/// on both sides is not compared.
pub(crate) fn environment_changes(
    saved_environment: Option<&Value>,
    saved_device: Option<&Value>,
    environment: Option<&Value>,
    device: Option<&Value>,
) -> Vec<String> {
    let mut changes = Vec::new();
    if let (Some(before), Some(now)) = (saved_environment, environment) {
        let root = |v: &Value| v.get("root").and_then(Value::as_str).map(str::to_string);
        if root(before) != root(now) {
            changes.push(format!(
                "environment fingerprint changed: {} when saved, {} now",
                root(before).unwrap_or_else(|| "unknown".into()),
                root(now).unwrap_or_else(|| "unknown".into())
            ));
        }
        changes.extend(rank_changes(before, now));
    }
    if let (Some(before), Some(now)) = (saved_device, device) {
        let volatile =
            |key: &str| key.contains("free") || key.contains("elapsed") || key.contains("time");
        for difference in json_differences(before, now, &volatile) {
            let path = if difference.path.is_empty() {
                "its root"
            } else {
                &difference.path
            };
            changes.push(format!("device probe differs at {path}"));
        }
    }
    changes
}

/// What changed in a multi-rank job's `ranks` (each rank's host and environment root, as
/// keel train records them beside rank 0's fingerprint): the world size, and every rank whose
/// host or root is not what it was.
fn rank_changes(before: &Value, now: &Value) -> Vec<String> {
    let ranks = |v: &Value| -> Vec<(String, String)> {
        v.get("ranks")
            .and_then(Value::as_array)
            .map(|ranks| {
                ranks
                    .iter()
                    .map(|rank| {
                        let text = |key: &str| {
                            rank.get(key)
                                .and_then(Value::as_str)
                                .unwrap_or("unknown")
                                .to_string()
                        };
                        (text("host"), text("root"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (then, today) = (ranks(before), ranks(now));
    if then.is_empty() && today.is_empty() {
        return Vec::new();
    }
    let mut changes = Vec::new();
    let (was, is) = (then.len().max(1), today.len().max(1));
    if was != is {
        changes.push(format!("the job had {was} rank(s) when saved, {is} now"));
    }
    for rank in 0..then.len().max(today.len()) {
        match (then.get(rank), today.get(rank)) {
            (Some(a), Some(b)) if a != b => changes.push(format!(
                "rank {rank}: {} with environment {} when saved, {} with {} now",
                a.0, a.1, b.0, b.1
            )),
            _ => {}
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_name_the_path_and_both_values() {
        let before =
            json!({"seed": 1, "optimizer": {"kind": "adamw", "lr": 0.001}, "hidden": [256]});
        let after = json!({"seed": 1, "optimizer": {"kind": "adamw", "lr": 0.002}, "hidden": [256, 64], "epochs": 3});
        let shown: Vec<String> = json_differences(&before, &after, &|_| false)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "epochs: unset -> 3",
                "hidden: [256] -> [256,64]",
                "optimizer.lr: 0.001 -> 0.002"
            ]
        );
        assert!(json_differences(&before, &before, &|_| false).is_empty());
        let (one, text) = (json!(1), json!("a"));
        let root = json_differences(&one, &text, &|_| false);
        assert_eq!(root[0].to_string(), "1 -> \"a\"");
        let (low, high) = (json!({"free": 1}), json!({"free": 2}));
        let skipped = json_differences(&low, &high, &|k| k == "free");
        assert!(skipped.is_empty());
    }

    /// The environment recorded in a checkpoint against the current one, as on resume: the
    /// fingerprint's root and every device field that differs, not free memory or timings.
    #[test]
    fn environment_and_device_changes_are_listed() {
        let saved_env = json!({"root": "abc", "label": "node-a"});
        let saved_device = json!({"driver_version": 12040, "gpus": [{"name": "H100", "free_bytes": 1}], "elapsed_ms": 3});
        let now_env = json!({"root": "def", "label": "node-b"});
        let now_device = json!({"driver_version": 12020, "gpus": [{"name": "H100", "free_bytes": 2}], "elapsed_ms": 9});
        let changes = environment_changes(
            Some(&saved_env),
            Some(&saved_device),
            Some(&now_env),
            Some(&now_device),
        );
        assert_eq!(
            changes,
            [
                "environment fingerprint changed: abc when saved, def now",
                "device probe differs at driver_version"
            ]
        );
        let same = environment_changes(
            Some(&saved_env),
            Some(&saved_device),
            Some(&saved_env),
            Some(&saved_device),
        );
        assert!(same.is_empty(), "{same:?}");
        assert!(environment_changes(Some(&saved_env), None, None, Some(&now_device)).is_empty());
    }

    /// Multi-rank issue #12: a job records each rank's host and environment root; a resume on another
    /// set of ranks, hosts or roots says what changed, rank by rank.
    #[test]
    fn resume_on_another_set_of_ranks_says_what_changed() {
        let ranks = |list: &[(&str, &str)]| {
            let ranks: Vec<Value> = list
                .iter()
                .enumerate()
                .map(|(rank, (host, root))| json!({"rank": rank, "host": host, "root": root}))
                .collect();
            json!({"root": "aaa", "ranks": ranks})
        };
        let saved = ranks(&[("node-a", "aaa"), ("node-b", "aaa")]);
        let changes = |now: &Value| environment_changes(Some(&saved), None, Some(now), None);

        assert!(changes(&ranks(&[("node-a", "aaa"), ("node-b", "aaa")])).is_empty());
        assert_eq!(
            changes(&ranks(&[("node-a", "aaa"), ("node-c", "bbb")])),
            ["rank 1: node-b with environment aaa when saved, node-c with bbb now"]
        );
        assert_eq!(
            changes(&json!({"root": "aaa"})),
            ["the job had 2 rank(s) when saved, 1 now"]
        );
    }
}
