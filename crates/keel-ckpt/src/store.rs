//! The checkpoint store: save, list, verify, load, resume, prune.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::CkptError;
use crate::model::{
    FORMAT_VERSION, FileEntry, Kind, MANIFEST, Manifest, Snapshot, group_file, parse_group,
};
use crate::storage::{Backend, Local, Objects};

/// Names a checkpoint: its kind and folder (`regular/step-000000000120-1764000000000`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct CheckpointId {
    /// The kind (its folder).
    pub kind: Kind,
    /// The checkpoint's folder name.
    pub name: String,
}

impl std::fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// A checkpoint as listed: its manifest when it has a readable one.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// Which.
    pub id: CheckpointId,
    /// The manifest, when present and readable.
    pub manifest: Option<Manifest>,
    /// Why there is no manifest (incomplete write, unreadable, newer format).
    pub problem: Option<String>,
}

/// What [`CheckpointStore::latest_valid`] found.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The checkpoint loaded.
    pub id: CheckpointId,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its contents.
    pub snapshot: Snapshot,
    /// Newer checkpoints that did not verify, newest first, with the reason.
    pub skipped: Vec<(CheckpointId, String)>,
}

/// Which checkpoints to keep. Deletion happens only after a new checkpoint is committed, and
/// never removes the newest valid checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retention {
    /// Keep the newest K regular checkpoints (and K interrupted, K emergency); 0 keeps all.
    pub keep_last: usize,
    /// Keep the best K `best` checkpoints by `best_metric`; 0 keeps all.
    pub keep_best: usize,
    /// Also keep every regular checkpoint whose step is a multiple of N.
    pub keep_every: Option<u64>,
    /// The metric that ranks `best` checkpoints, and whether lower is better.
    pub best_metric: Option<(String, Goal)>,
}

/// Whether a metric improves downwards (loss) or upwards (accuracy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Goal {
    /// Lower is better.
    Min,
    /// Higher is better.
    Max,
}

impl Goal {
    /// `a` is better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Goal::Min => a < b,
            Goal::Max => a > b,
        }
    }
}

/// A checkpoint store on local disk, NFS or object storage.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    backend: Arc<dyn Backend>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The step and time a folder name says (`step-<step>-<ms>`), for ordering.
fn name_key(name: &str) -> (u64, u64) {
    let mut parts = name.strip_prefix("step-").unwrap_or("").split('-');
    let step = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let ms = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (step, ms)
}

impl CheckpointStore {
    /// A store in a local (or NFS-mounted) folder, created if needed.
    pub fn local(root: &Path) -> Result<Self, CkptError> {
        Ok(CheckpointStore {
            backend: Arc::new(Local::new(root)?),
        })
    }

    /// A store at `location`: a path, a `file://` URL, or an object-store URL (`s3://bucket/
    /// prefix`, with credentials, region and endpoint from the usual `AWS_*` variables:
    /// `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ALLOW_HTTP`).
    pub fn open(location: &str) -> Result<Self, CkptError> {
        let url = match url::Url::parse(location) {
            Ok(url) if url.scheme().len() > 1 => url,
            // A path (also `C:\...`, whose drive letter parses as a scheme).
            _ => return CheckpointStore::local(Path::new(location)),
        };
        if url.scheme() == "file" {
            let path = url.to_file_path().map_err(|()| CkptError::Location {
                location: location.to_string(),
                reason: "not a local path".to_string(),
            })?;
            return CheckpointStore::local(&path);
        }
        let options: Vec<(String, String)> = std::env::vars()
            .filter(|(key, _)| key.starts_with("AWS_"))
            .map(|(key, value)| (key.to_ascii_lowercase(), value))
            .collect();
        let (store, prefix) =
            object_store::parse_url_opts(&url, options).map_err(|e| CkptError::Location {
                location: location.to_string(),
                reason: e.to_string(),
            })?;
        CheckpointStore::object_store(Arc::from(store), prefix, location)
    }

    /// A store in any `object_store` backend, under `prefix`. The store runs the client's
    /// calls on a tokio runtime of its own, so give it a client that no other runtime uses (an
    /// HTTP connection pooled on another runtime stalls until it times out).
    pub fn object_store(
        store: Arc<dyn object_store::ObjectStore>,
        prefix: object_store::path::Path,
        url: &str,
    ) -> Result<Self, CkptError> {
        Ok(CheckpointStore {
            backend: Arc::new(Objects::new(store, prefix, url.to_string())?),
        })
    }

    /// Where the store is, for messages.
    pub fn location(&self) -> String {
        self.backend.describe()
    }

    /// Saves a checkpoint and returns its id once it is committed (durable on local disks).
    /// A failure leaves every earlier checkpoint as it was and nothing that looks valid.
    pub fn save(&self, kind: Kind, snapshot: &Snapshot) -> Result<CheckpointId, CkptError> {
        let created_unix_ms = now_ms();
        for group in snapshot.groups.keys() {
            if !valid_group_name(group) {
                return Err(CkptError::Setting(format!(
                    "tensor group name `{group}`: use letters, digits, `_` and `-`"
                )));
            }
        }
        // Each group is written straight from the snapshot's tensors (no serialized copy),
        // and hashed on another thread while this one writes and fsyncs: the disk, not the
        // CPU, sets the pace.
        let files = snapshot
            .groups
            .iter()
            .map(|(group, tensors)| group_file(format!("{group}.safetensors"), tensors))
            .collect::<Result<Vec<_>, _>>()?;
        let name = format!("step-{:012}-{created_unix_ms:013}", snapshot.step);
        let result = std::thread::scope(|scope| {
            let hashes = scope.spawn(|| {
                files
                    .iter()
                    .map(|file| {
                        let mut hasher = blake3::Hasher::new();
                        for part in file.parts() {
                            hasher.update(part);
                        }
                        FileEntry {
                            name: file.name.clone(),
                            size: file.len(),
                            blake3: hasher.finalize().to_hex().to_string(),
                        }
                    })
                    .collect::<Vec<_>>()
            });
            let written = self.backend.write_data(kind, &name, &files);
            let entries = hashes.join().expect("hashing a checkpoint panicked");
            written?;
            let manifest = Manifest {
                format_version: FORMAT_VERSION,
                kind,
                step: snapshot.step,
                epoch: snapshot.epoch,
                created_unix_ms,
                metrics: snapshot.metrics.clone(),
                user: snapshot.user.clone(),
                environment: snapshot.environment.clone(),
                device: snapshot.device.clone(),
                files: entries,
            };
            let manifest_bytes =
                serde_json::to_vec_pretty(&manifest).map_err(|e| CkptError::Io(e.into()))?;
            self.backend.commit(kind, &name, &manifest_bytes)
        });
        if let Err(error) = result {
            self.backend.abort(kind, &name);
            return Err(error);
        }
        Ok(CheckpointId { kind, name })
    }

    /// Every checkpoint of every kind, oldest first (by step, then time), with its manifest
    /// when readable. Does not read the data files; [`CheckpointStore::verify`] does.
    pub fn list(&self) -> Result<Vec<Listed>, CkptError> {
        let mut listed = Vec::new();
        for kind in Kind::ALL {
            for name in self.backend.list(kind)? {
                let id = CheckpointId { kind, name };
                match self.manifest(&id) {
                    Ok(manifest) => listed.push(Listed {
                        id,
                        manifest: Some(manifest),
                        problem: None,
                    }),
                    Err(error) => listed.push(Listed {
                        id,
                        manifest: None,
                        problem: Some(error.to_string()),
                    }),
                }
            }
        }
        listed.sort_by_key(|l| {
            let (step, ms) = name_key(&l.id.name);
            (step, ms, l.id.kind)
        });
        Ok(listed)
    }

    /// The manifest of a checkpoint, checked for format but not against the data.
    pub fn manifest(&self, id: &CheckpointId) -> Result<Manifest, CkptError> {
        let invalid = |reason: String| CkptError::Invalid {
            id: id.to_string(),
            reason,
        };
        let bytes = self
            .backend
            .read(id.kind, &id.name, MANIFEST)?
            .ok_or_else(|| invalid("no manifest (an incomplete write)".to_string()))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("{MANIFEST} is not valid JSON: {e}")))?;
        let version = value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| invalid(format!("{MANIFEST} has no format_version")))?;
        if version > u64::from(FORMAT_VERSION) {
            return Err(CkptError::NewerFormat {
                id: id.to_string(),
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: FORMAT_VERSION,
            });
        }
        serde_json::from_value(value).map_err(|e| invalid(format!("{MANIFEST}: {e}")))
    }

    /// Loads and verifies a checkpoint: every file present, of the recorded size and BLAKE3,
    /// and a safetensors file whose header agrees with its data.
    pub fn load(&self, id: &CheckpointId) -> Result<(Manifest, Snapshot), CkptError> {
        let manifest = self.manifest(id)?;
        let invalid = |reason: String| CkptError::Invalid {
            id: id.to_string(),
            reason,
        };
        let mut snapshot = Snapshot {
            step: manifest.step,
            epoch: manifest.epoch,
            metrics: manifest.metrics.clone(),
            user: manifest.user.clone(),
            environment: manifest.environment.clone(),
            device: manifest.device.clone(),
            groups: Default::default(),
        };
        for entry in &manifest.files {
            let bytes = self
                .backend
                .read(id.kind, &id.name, &entry.name)?
                .ok_or_else(|| invalid(format!("{} is missing", entry.name)))?;
            if bytes.len() as u64 != entry.size {
                return Err(invalid(format!(
                    "{} has {} bytes, the manifest says {} (truncated or overwritten)",
                    entry.name,
                    bytes.len(),
                    entry.size
                )));
            }
            let hash = blake3::hash(&bytes).to_hex().to_string();
            if hash != entry.blake3 {
                return Err(invalid(format!(
                    "{} does not match its BLAKE3 in the manifest (the file changed on disk)",
                    entry.name
                )));
            }
            let group = entry
                .name
                .strip_suffix(".safetensors")
                .ok_or_else(|| invalid(format!("{} is not a safetensors file", entry.name)))?;
            snapshot.groups.insert(
                group.to_string(),
                parse_group(&bytes, &id.to_string(), &entry.name)?,
            );
        }
        Ok((manifest, snapshot))
    }

    /// Verifies a checkpoint (see [`CheckpointStore::load`]) and returns its manifest.
    pub fn verify(&self, id: &CheckpointId) -> Result<Manifest, CkptError> {
        self.load(id).map(|(manifest, _)| manifest)
    }

    /// The newest checkpoint (by step, then time, any kind) that verifies, loaded. Newer ones
    /// that do not verify are skipped and reported; nothing is deleted.
    pub fn latest_valid(&self) -> Result<Resume, CkptError> {
        self.latest_valid_of(&self.list()?)
    }

    /// [`CheckpointStore::latest_valid`] among checkpoints already listed.
    fn latest_valid_of(&self, listed: &[Listed]) -> Result<Resume, CkptError> {
        let mut skipped = Vec::new();
        for listed in listed.iter().rev() {
            match self.load(&listed.id) {
                Ok((manifest, snapshot)) => {
                    return Ok(Resume {
                        id: listed.id.clone(),
                        manifest,
                        snapshot,
                        skipped,
                    });
                }
                Err(error) => skipped.push((listed.id.clone(), error.to_string())),
            }
        }
        Err(CkptError::NoValidCheckpoint {
            root: self.location(),
        })
    }

    /// The best value of `metric` among the `best` checkpoints, if any has it.
    pub fn best_value(&self, metric: &str, goal: Goal) -> Result<Option<f64>, CkptError> {
        let mut best: Option<f64> = None;
        for listed in self.list()? {
            if listed.id.kind != Kind::Best {
                continue;
            }
            let Some(value) = listed
                .manifest
                .as_ref()
                .and_then(|m| m.metrics.get(metric).copied())
            else {
                continue;
            };
            if best.is_none_or(|b| goal.better(value, b)) {
                best = Some(value);
            }
        }
        Ok(best)
    }

    /// Saves `snapshot` as a `best` checkpoint when its `metric` beats every earlier `best`
    /// (lower for [`Goal::Min`], higher for [`Goal::Max`]); returns the new id, or `None` when
    /// it does not improve. A snapshot without the metric is an error.
    pub fn save_if_best(
        &self,
        metric: &str,
        goal: Goal,
        snapshot: &Snapshot,
    ) -> Result<Option<CheckpointId>, CkptError> {
        let value = *snapshot.metrics.get(metric).ok_or_else(|| {
            CkptError::Setting(format!(
                "the best checkpoint is chosen by `{metric}`, which step {} does not report",
                snapshot.step
            ))
        })?;
        if value.is_nan() {
            return Ok(None);
        }
        match self.best_value(metric, goal)? {
            Some(best) if !goal.better(value, best) => Ok(None),
            _ => self.save(Kind::Best, snapshot).map(Some),
        }
    }

    /// Saves, then applies `retention` (when given) with the new checkpoint kept: what a
    /// training loop does after each save. A failed prune is returned as the error (the
    /// checkpoint itself is committed by then).
    pub fn save_retaining(
        &self,
        kind: Kind,
        snapshot: &Snapshot,
        retention: Option<&Retention>,
    ) -> Result<CheckpointId, CkptError> {
        let id = self.save(kind, snapshot)?;
        if let Some(retention) = retention {
            self.prune_after(retention, &id)?;
        }
        Ok(id)
    }

    /// Deletes what `retention` does not keep, and leftovers of interrupted writes. Never
    /// deletes the newest valid checkpoint. Returns what was deleted.
    pub fn prune(&self, retention: &Retention) -> Result<Vec<CheckpointId>, CkptError> {
        let listed = self.list()?;
        let newest_valid = self.latest_valid_of(&listed).ok().map(|resume| resume.id);
        self.prune_listed(retention, newest_valid, &listed)
    }

    /// [`CheckpointStore::prune`] right after `committed` was saved: that checkpoint is the
    /// one kept whatever the rule says, without reading it back (on object storage, reading a
    /// large checkpoint back after every save would download it).
    pub fn prune_after(
        &self,
        retention: &Retention,
        committed: &CheckpointId,
    ) -> Result<Vec<CheckpointId>, CkptError> {
        self.prune_listed(retention, Some(committed.clone()), &self.list()?)
    }

    fn prune_listed(
        &self,
        retention: &Retention,
        newest_valid: Option<CheckpointId>,
        listed: &[Listed],
    ) -> Result<Vec<CheckpointId>, CkptError> {
        self.backend.clean_temporaries()?;
        let newest_step = newest_valid
            .as_ref()
            .map(|id| name_key(&id.name).0)
            .unwrap_or(0);
        let mut delete = Vec::new();
        for kind in Kind::ALL {
            // Newest first.
            let mut of_kind: Vec<&Listed> =
                listed.iter().rev().filter(|l| l.id.kind == kind).collect();
            // Incomplete ones older than the newest valid checkpoint will never complete.
            of_kind.retain(|l| {
                if l.manifest.is_none() && name_key(&l.id.name).0 < newest_step {
                    delete.push(l.id.clone());
                    false
                } else {
                    l.manifest.is_some()
                }
            });
            let keep = match kind {
                Kind::Best => {
                    if let Some((metric, goal)) = &retention.best_metric {
                        of_kind.sort_by(|a, b| {
                            let value = |l: &Listed| {
                                l.manifest
                                    .as_ref()
                                    .and_then(|m| m.metrics.get(metric).copied())
                            };
                            match (value(a), value(b)) {
                                (Some(x), Some(y)) if goal.better(x, y) => std::cmp::Ordering::Less,
                                (Some(x), Some(y)) if goal.better(y, x) => {
                                    std::cmp::Ordering::Greater
                                }
                                (Some(_), None) => std::cmp::Ordering::Less,
                                (None, Some(_)) => std::cmp::Ordering::Greater,
                                _ => std::cmp::Ordering::Equal,
                            }
                        });
                    }
                    retention.keep_best
                }
                _ => retention.keep_last,
            };
            if keep == 0 {
                continue;
            }
            for listed in of_kind.into_iter().skip(keep) {
                let step = listed.manifest.as_ref().map_or(0, |m| m.step);
                let kept_every = kind == Kind::Regular
                    && retention.keep_every.is_some_and(|n| n > 0 && step % n == 0);
                if kept_every || Some(&listed.id) == newest_valid.as_ref() {
                    continue;
                }
                delete.push(listed.id.clone());
            }
        }
        for id in &delete {
            self.backend.remove(id.kind, &id.name)?;
        }
        Ok(delete)
    }
}

/// What differs between the environment and device recorded in a checkpoint and the current
/// ones (both as `keel hash --json` / `keel probe --json` values): one line per difference.
/// Free memory and timing fields are not compared.
pub fn environment_changes(
    saved: &Manifest,
    environment: Option<&serde_json::Value>,
    device: Option<&serde_json::Value>,
) -> Vec<String> {
    let mut changes = Vec::new();
    if let (Some(before), Some(now)) = (&saved.environment, environment) {
        let root =
            |v: &serde_json::Value| v.get("root").and_then(|r| r.as_str()).map(str::to_string);
        if root(before) != root(now) {
            changes.push(format!(
                "environment fingerprint changed: {} when saved, {} now (run `keel diff` on the two fingerprints)",
                root(before).unwrap_or_else(|| "unknown".into()),
                root(now).unwrap_or_else(|| "unknown".into())
            ));
        }
    }
    if let (Some(before), Some(now)) = (&saved.device, device) {
        let mut paths = Vec::new();
        json_differences("", before, now, &mut paths);
        for path in paths {
            changes.push(format!("device probe differs at {path}"));
        }
    }
    changes
}

fn json_differences(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    let volatile =
        |key: &str| key.contains("free") || key.contains("elapsed") || key.contains("time");
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                if volatile(key) {
                    continue;
                }
                let child = format!("{path}/{key}");
                match (x.get(key), y.get(key)) {
                    (Some(p), Some(q)) => json_differences(&child, p, q, out),
                    _ => out.push(child),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                json_differences(&format!("{path}/{i}"), p, q, out);
            }
        }
        _ if a != b => out.push(if path.is_empty() {
            "/".into()
        } else {
            path.into()
        }),
        _ => {}
    }
}
