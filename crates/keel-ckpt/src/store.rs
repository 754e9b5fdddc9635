//! The checkpoint store: save, list, verify, load, resume, prune.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::CkptError;
use crate::location::{Location, Where};
use crate::model::{
    FORMAT_VERSION, FileEntry, Kind, MANIFEST, MAX_MANIFEST_BYTES, MAX_STEP, MAX_UNIX_MS, Manifest,
    Snapshot, TensorGroup, check_file_name, check_seal, folder_name, group_file, parse_folder_name,
    read_group, seal_manifest, valid_group_name,
};
use crate::shared::{MAX_WORLD_SIZE, check_group_rank};
use crate::storage::{Backend, DEFAULT_REQUEST_DEADLINE, Local, Objects};

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
    /// What the listing could tell about it; prune deletes only what this proves keel's.
    pub status: Status,
}

/// What a listed folder is, as far as its manifest tells (the data is not read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// A keel checkpoint whose manifest reads and agrees with its folder name.
    Readable,
    /// A keel checkpoint folder without a manifest: a write cut short, or one in flight.
    Incomplete,
    /// A manifest keel cannot read or does not trust: I/O error, permissions, a newer
    /// format, bad JSON, a digest or name that does not agree. Never deleted.
    Unreadable,
    /// Not named as keel names checkpoints (`step-<12 digits>-<13 digits>`): not keel's,
    /// never deleted, not a failure of the store.
    Foreign,
}

/// What a prune did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    /// Checkpoints deleted: not kept by the retention rule, or provably abandoned writes.
    pub deleted: Vec<CheckpointId>,
    /// Keel's own temporaries of interrupted writes removed (`KIND/.tmp-...`).
    pub temporaries: Vec<String>,
    /// What was left alone because keel cannot prove it may delete it, and why.
    pub left: Vec<(CheckpointId, String)>,
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
    pub(crate) backend: Arc<dyn Backend>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The step and time a folder name says, for ordering (names not keel's sort first).
fn name_key(name: &str) -> (u64, u64) {
    parse_folder_name(name).unwrap_or((0, 0))
}

impl CheckpointStore {
    /// A store in a local (or NFS-mounted) folder. Nothing is created until the first save;
    /// a folder that is not there lists no checkpoints (see [`CheckpointStore::open_existing`]
    /// for readers that must find one).
    pub fn local(root: &Path) -> Result<Self, CkptError> {
        Ok(CheckpointStore {
            backend: Arc::new(Local::new(root)?),
        })
    }

    /// A store at `location` (a path, a `file://` URL or `s3://bucket/prefix`), parsed as a
    /// [`Location`], then opened by [`CheckpointStore::at`].
    pub fn open(location: &str) -> Result<Self, CkptError> {
        CheckpointStore::at(&location.parse()?)
    }

    /// A store at `location`: a local folder ([`CheckpointStore::local`]), or object storage
    /// with credentials, region and endpoint from the usual `AWS_*` variables:
    /// `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ALLOW_HTTP`. Messages name it as [`Location`]'s `Display` does (no credentials).
    pub fn at(location: &Location) -> Result<Self, CkptError> {
        let url = match &location.0 {
            Where::Local(path) => return CheckpointStore::local(path),
            Where::Object { url, .. } => url,
        };
        let options: Vec<(String, String)> = std::env::vars()
            .filter(|(key, _)| key.starts_with("AWS_"))
            .map(|(key, value)| (key.to_ascii_lowercase(), value))
            .collect();
        let (store, prefix) =
            object_store::parse_url_opts(url, options).map_err(|e| CkptError::Location {
                location: location.to_string(),
                reason: e.to_string(),
            })?;
        CheckpointStore::object_store(Arc::from(store), prefix, &location.to_string())
    }

    /// A store in any `object_store` backend, under `prefix`. The store runs the client's
    /// calls on a tokio runtime of its own, so give it a client that no other runtime uses (an
    /// HTTP connection pooled on another runtime stalls until it times out).
    ///
    /// Data files over 16 MiB go up as multipart uploads, parts of 16 MiB (more for files
    /// over 140 GiB) four at a time, copied from the tensors one part at a time; smaller ones
    /// in one request. Every request (a put, one part, a ranged get, a listing) must finish
    /// within 120 s, retries included, or the operation fails with
    /// [`CkptError::Stalled`] naming the object ([`CheckpointStore::object_store_with_deadline`]
    /// sets another deadline).
    pub fn object_store(
        store: Arc<dyn object_store::ObjectStore>,
        prefix: object_store::path::Path,
        url: &str,
    ) -> Result<Self, CkptError> {
        Self::object_store_with_deadline(store, prefix, url, DEFAULT_REQUEST_DEADLINE)
    }

    /// [`CheckpointStore::object_store`] with `deadline` for each request. A save whose
    /// request stalls past it fails naming the object, and leaves no checkpoint that loads
    /// (its manifest, put last, is never written).
    pub fn object_store_with_deadline(
        store: Arc<dyn object_store::ObjectStore>,
        prefix: object_store::path::Path,
        url: &str,
        deadline: std::time::Duration,
    ) -> Result<Self, CkptError> {
        if deadline.is_zero() {
            return Err(CkptError::Setting(
                "the object storage deadline must be more than zero".into(),
            ));
        }
        Ok(CheckpointStore {
            backend: Arc::new(Objects::new(store, prefix, url.to_string(), deadline)?),
        })
    }

    /// [`CheckpointStore::open`] for commands that only read: a local store that is not there
    /// is [`CkptError::NoStore`] (nothing is created). An object-store prefix always exists.
    pub fn open_existing(location: &str) -> Result<Self, CkptError> {
        CheckpointStore::at_existing(&location.parse()?)
    }

    /// [`CheckpointStore::at`] for commands that only read, as
    /// [`CheckpointStore::open_existing`].
    pub fn at_existing(location: &Location) -> Result<Self, CkptError> {
        let store = CheckpointStore::at(location)?;
        if !store.backend.exists()? {
            return Err(CkptError::NoStore {
                location: location.to_string(),
            });
        }
        Ok(store)
    }

    /// Where the store is, for messages.
    pub fn location(&self) -> String {
        self.backend.describe()
    }

    /// Saves a checkpoint and returns its id once it is committed (durable on local disks).
    /// A failure leaves every earlier checkpoint as it was and nothing that looks valid.
    pub fn save(&self, kind: Kind, snapshot: &Snapshot) -> Result<CheckpointId, CkptError> {
        let created_unix_ms = now_ms();
        check_name_parts(snapshot.step, created_unix_ms)?;
        let files = group_files(&snapshot.groups)?;
        let name = folder_name(snapshot.step, created_unix_ms);
        // Saves may run together; a prune waits for them (and they for it).
        let _lock = self.backend.lock(false)?;
        let result = (|| {
            let entries = write_hashing(&files, || self.backend.write_data(kind, &name, &files))?;
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
                world_size: None,
                files: entries,
            };
            let manifest_bytes = seal_manifest(
                serde_json::to_value(&manifest).map_err(|e| CkptError::Io(e.into()))?,
            );
            self.backend.commit(kind, &name, &manifest_bytes)
        })();
        if let Err(error) = result {
            self.backend.abort(kind, &name);
            return Err(error);
        }
        Ok(CheckpointId { kind, name })
    }

    /// Every checkpoint of every kind, oldest first (by step, then time), with its manifest
    /// when readable, and every other folder under a kind (as [`Status::Foreign`]). Does not
    /// read the data files; [`CheckpointStore::verify`] does.
    pub fn list(&self) -> Result<Vec<Listed>, CkptError> {
        let mut listed = Vec::new();
        for kind in Kind::ALL {
            for name in self.backend.list(kind)? {
                let id = CheckpointId { kind, name };
                let (status, manifest, problem) = if parse_folder_name(&id.name).is_none() {
                    (
                        Status::Foreign,
                        None,
                        Some(
                            "not a keel checkpoint (keel names them step-<12 digits>-<13 digits>); left alone"
                                .to_string(),
                        ),
                    )
                } else {
                    match self
                        .backend
                        .read(kind, &id.name, MANIFEST, MAX_MANIFEST_BYTES)
                    {
                        Ok(None) => (
                            Status::Incomplete,
                            None,
                            Some(format!("no {MANIFEST} (an incomplete write)")),
                        ),
                        Ok(Some(bytes)) => match parse_manifest(&id, &bytes) {
                            Ok(manifest) => (Status::Readable, Some(manifest), None),
                            Err(error) => (Status::Unreadable, None, Some(error.to_string())),
                        },
                        Err(error) => (Status::Unreadable, None, Some(error.to_string())),
                    }
                };
                listed.push(Listed {
                    id,
                    manifest,
                    problem,
                    status,
                });
            }
        }
        listed.sort_by_key(|l| {
            let (step, ms) = name_key(&l.id.name);
            (step, ms, l.id.kind, l.id.name.clone())
        });
        Ok(listed)
    }

    /// The manifest of a checkpoint, checked (format, its own digest, that it agrees with
    /// the folder it is in, its file names) but not against the data.
    pub fn manifest(&self, id: &CheckpointId) -> Result<Manifest, CkptError> {
        let bytes = self
            .backend
            .read(id.kind, &id.name, MANIFEST, MAX_MANIFEST_BYTES)?
            .ok_or_else(|| CkptError::Invalid {
                id: id.to_string(),
                reason: format!("no {MANIFEST} (an incomplete write)"),
            })?;
        parse_manifest(id, &bytes)
    }

    /// Loads and verifies a checkpoint: every file present, of the recorded size (checked
    /// before it is read) and BLAKE3, and a safetensors file whose header agrees with its
    /// data. Files are read one at a time, as a stream into the tensors.
    pub fn load(&self, id: &CheckpointId) -> Result<(Manifest, Snapshot), CkptError> {
        self.load_groups(id, |_| true)
    }

    /// [`CheckpointStore::load`] keeping only the groups `wanted` accepts (by group name, as
    /// in [`Snapshot::groups`]): every file is still verified (the others are streamed
    /// through their BLAKE3, never held), so memory is what the kept groups take. A rank of a
    /// multi-rank job loads the shared groups and its own share this way.
    pub fn load_groups(
        &self,
        id: &CheckpointId,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<(Manifest, Snapshot), CkptError> {
        let manifest = self.manifest(id)?;
        let groups = self.check_files(id, &manifest, &wanted)?;
        let snapshot = Snapshot {
            step: manifest.step,
            epoch: manifest.epoch,
            metrics: manifest.metrics.clone(),
            user: manifest.user.clone(),
            environment: manifest.environment.clone(),
            device: manifest.device.clone(),
            groups,
        };
        Ok((manifest, snapshot))
    }

    /// Verifies a checkpoint as [`CheckpointStore::load`] does, streaming: memory stays at a
    /// buffer and a safetensors header whatever the checkpoint's size.
    pub fn verify(&self, id: &CheckpointId) -> Result<Manifest, CkptError> {
        let manifest = self.manifest(id)?;
        self.check_files(id, &manifest, &|_| false)?;
        Ok(manifest)
    }

    /// Reads every data file of `manifest` (tensors kept for the groups `keep` accepts),
    /// checking each.
    fn check_files(
        &self,
        id: &CheckpointId,
        manifest: &Manifest,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<std::collections::BTreeMap<String, TensorGroup>, CkptError> {
        let invalid = |reason: String| CkptError::Invalid {
            id: id.to_string(),
            reason,
        };
        let mut groups = std::collections::BTreeMap::new();
        for entry in &manifest.files {
            // Checked when the manifest was read; the same one check again before the join.
            let group = check_file_name(&entry.name).map_err(&invalid)?;
            let (mut reader, size) = self
                .backend
                .open(id.kind, &id.name, &entry.name)?
                .ok_or_else(|| invalid(format!("{} is missing", entry.name)))?;
            if size != entry.size {
                return Err(invalid(format!(
                    "{} has {size} bytes, the manifest says {} (truncated or overwritten)",
                    entry.name, entry.size
                )));
            }
            let (hash, tensors) = read_group(&mut reader, size, keep(group))
                .map_err(|reason| invalid(format!("{}: {reason}", entry.name)))?;
            if hash != entry.blake3 {
                return Err(invalid(format!(
                    "{} does not match its BLAKE3 in the manifest (the file changed on disk)",
                    entry.name
                )));
            }
            if let Some(tensors) = tensors {
                groups.insert(group.to_string(), tensors);
            }
        }
        Ok(groups)
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
            match listed.status {
                // Not keel's: not a checkpoint at all.
                Status::Foreign => continue,
                Status::Readable => {}
                _ => {
                    let problem = listed.problem.clone().unwrap_or_default();
                    skipped.push((listed.id.clone(), problem));
                    continue;
                }
            }
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
            skipped,
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
    /// training loop does after each save. When the save committed and the prune after it
    /// failed, the error is [`CkptError::Pruning`], which names the saved checkpoint (see
    /// [`CkptError::saved`]): never a save failure.
    pub fn save_retaining(
        &self,
        kind: Kind,
        snapshot: &Snapshot,
        retention: Option<&Retention>,
    ) -> Result<CheckpointId, CkptError> {
        let id = self.save(kind, snapshot)?;
        if let Some(retention) = retention
            && let Err(error) = self.prune_after(retention, &id)
        {
            return Err(CkptError::Pruning {
                saved: id,
                source: Box::new(error),
            });
        }
        Ok(id)
    }

    /// Deletes what `retention` does not keep, and leftovers of keel's interrupted writes.
    /// Never deletes the newest valid checkpoint, nor anything keel cannot prove it made and
    /// may delete: folders not named as keel names checkpoints, manifests it cannot read (a
    /// newer format, permissions, I/O errors, a bad digest), writes that may be in flight.
    /// Those are reported in [`Pruned::left`]. Excludes saves of the store while it runs
    /// (a lock file on local and NFS stores).
    pub fn prune(&self, retention: &Retention) -> Result<Pruned, CkptError> {
        self.prune_with(retention, None)
    }

    /// [`CheckpointStore::prune`] right after `committed` was saved: that checkpoint is the
    /// one kept whatever the rule says, without reading it back (on object storage, reading a
    /// large checkpoint back after every save would download it).
    pub fn prune_after(
        &self,
        retention: &Retention,
        committed: &CheckpointId,
    ) -> Result<Pruned, CkptError> {
        self.prune_with(retention, Some(committed))
    }

    fn prune_with(
        &self,
        retention: &Retention,
        committed: Option<&CheckpointId>,
    ) -> Result<Pruned, CkptError> {
        // Listed under the lock: no local save is between its data and its commit now.
        let _lock = self.backend.lock(true)?;
        let mut pruned = Pruned {
            temporaries: self.backend.clean_temporaries()?,
            ..Pruned::default()
        };
        let listed = self.list()?;
        let newest_valid = match committed {
            Some(id) => Some(id.clone()),
            None => listed
                .iter()
                .rev()
                .filter(|l| l.status == Status::Readable)
                .find(|l| self.verify(&l.id).is_ok())
                .map(|l| l.id.clone()),
        };
        let mut delete = Vec::new();
        for listed in &listed {
            match listed.status {
                Status::Readable => {}
                Status::Incomplete if self.backend.abandoned(listed.id.kind, &listed.id.name)? => {
                    delete.push(listed.id.clone());
                }
                Status::Incomplete => pruned.left.push((
                    listed.id.clone(),
                    format!(
                        "no {MANIFEST}, and keel cannot prove the write abandoned (it may be in flight); left alone"
                    ),
                )),
                _ => pruned.left.push((
                    listed.id.clone(),
                    listed.problem.clone().unwrap_or_default(),
                )),
            }
        }
        for kind in Kind::ALL {
            // Newest first; only checkpoints whose manifest reads count and may go.
            let mut of_kind: Vec<&Listed> = listed
                .iter()
                .rev()
                .filter(|l| l.id.kind == kind && l.status == Status::Readable)
                .collect();
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
        for id in delete {
            self.backend.remove(id.kind, &id.name)?;
            pruned.deleted.push(id);
        }
        Ok(pruned)
    }
}

/// Refuses a step or save time that a checkpoint folder name cannot hold.
pub(crate) fn check_name_parts(step: u64, created_unix_ms: u64) -> Result<(), CkptError> {
    if step > MAX_STEP {
        return Err(CkptError::Setting(format!(
            "step {step} does not fit a checkpoint name (at most {MAX_STEP})"
        )));
    }
    if created_unix_ms > MAX_UNIX_MS {
        return Err(CkptError::Setting(format!(
            "the clock says {created_unix_ms} ms since 1970, past what a checkpoint name holds"
        )));
    }
    Ok(())
}

/// The files of `groups`, one `<group>.safetensors` each, written straight from the tensors
/// (no serialized copy). Group names are checked.
pub(crate) fn group_files(
    groups: &std::collections::BTreeMap<String, TensorGroup>,
) -> Result<Vec<crate::model::FileParts<'_>>, CkptError> {
    for group in groups.keys() {
        if !valid_group_name(group) {
            return Err(CkptError::Setting(format!(
                "tensor group name `{group}`: use letters, digits, `_` and `-`"
            )));
        }
    }
    groups
        .iter()
        .map(|(group, tensors)| group_file(format!("{group}.safetensors"), tensors))
        .collect()
}

/// Runs `write` (which writes `files`) while another thread hashes them: the disk, not the
/// CPU, sets the pace. Returns the files' entries once both are done and the write worked.
pub(crate) fn write_hashing(
    files: &[crate::model::FileParts<'_>],
    write: impl FnOnce() -> Result<(), CkptError>,
) -> Result<Vec<FileEntry>, CkptError> {
    std::thread::scope(|scope| {
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
                        rank: None,
                    }
                })
                .collect::<Vec<_>>()
        });
        let written = write();
        let entries = hashes.join().expect("hashing a checkpoint panicked");
        written.map(|()| entries)
    })
}

/// Reads a manifest's bytes: JSON of a format this keel reads, its own digest (format 2 and
/// later), a kind, step and save time that agree with the folder it is in, and data file
/// names that pass [`check_file_name`]. Every reason names the manifest.
fn parse_manifest(id: &CheckpointId, bytes: &[u8]) -> Result<Manifest, CkptError> {
    let invalid = |reason: String| CkptError::Invalid {
        id: id.to_string(),
        reason,
    };
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("{MANIFEST} is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(invalid(format!("{MANIFEST} is not a JSON object")));
    }
    let version = value
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| invalid(format!("{MANIFEST} has no format_version")))?;
    if version == 0 {
        return Err(invalid(format!(
            "{MANIFEST} has format_version 0, which no keel writes"
        )));
    }
    if version > u64::from(FORMAT_VERSION) {
        return Err(CkptError::NewerFormat {
            id: id.to_string(),
            found: u32::try_from(version).unwrap_or(u32::MAX),
            supported: FORMAT_VERSION,
        });
    }
    // Format 1 had no digest: read as it is, unverified.
    if version >= 2 {
        check_seal(bytes, &value).map_err(invalid)?;
    }
    let manifest: Manifest =
        serde_json::from_value(value).map_err(|e| invalid(format!("{MANIFEST}: {e}")))?;
    if manifest.kind != id.kind {
        return Err(invalid(format!(
            "{MANIFEST} says kind `{}`, but it is under `{}`",
            manifest.kind, id.kind
        )));
    }
    let (step, ms) = parse_folder_name(&id.name).ok_or_else(|| {
        invalid("the folder name is not step-<12 digits>-<13 digits>".to_string())
    })?;
    if (manifest.step, manifest.created_unix_ms) != (step, ms) {
        return Err(invalid(format!(
            "{MANIFEST} says step {} saved at {} ms, its folder name step {step} at {ms}",
            manifest.step, manifest.created_unix_ms
        )));
    }
    let world_size = manifest.world_size.unwrap_or(1);
    if world_size == 0 || world_size > MAX_WORLD_SIZE {
        return Err(invalid(format!(
            "{MANIFEST} says world_size {world_size} (1 to {MAX_WORLD_SIZE})"
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for entry in &manifest.files {
        let group = check_file_name(&entry.name).map_err(&invalid)?;
        if !seen.insert(entry.name.as_str()) {
            return Err(invalid(format!("{MANIFEST} lists {} twice", entry.name)));
        }
        match entry.rank {
            Some(rank) => check_group_rank(group, rank, world_size)
                .map_err(|reason| invalid(format!("{MANIFEST}: {reason}")))?,
            None if manifest.world_size.is_some() => {
                return Err(invalid(format!(
                    "{MANIFEST} is of {world_size} ranks but does not say which rank wrote {}",
                    entry.name
                )));
            }
            None => {}
        }
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealed(step: u64, metrics: &[(String, f64)], user: &str) -> (CheckpointId, Vec<u8>) {
        let ms = 1_700_000_000_000;
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            kind: Kind::Regular,
            step,
            epoch: step / 3,
            created_unix_ms: ms,
            metrics: metrics.iter().cloned().collect(),
            user: serde_json::json!({ "note": user, "rng": [step, 7] }),
            environment: None,
            device: None,
            world_size: None,
            files: vec![FileEntry {
                name: "model.safetensors".into(),
                size: 123,
                blake3: blake3::hash(user.as_bytes()).to_hex().to_string(),
                rank: None,
            }],
        };
        let id = CheckpointId {
            kind: Kind::Regular,
            name: folder_name(step, ms),
        };
        (id, seal_manifest(serde_json::to_value(&manifest).unwrap()))
    }

    proptest! {
        /// Hardening issue #13: any single-bit flip anywhere in a sealed manifest.json is
        /// detected: the manifest is refused (bad JSON, a newer or unknown format, a digest
        /// that does not match, or a field that no longer agrees with its folder).
        #[test]
        fn any_single_bit_flip_in_a_manifest_is_detected(
            step in 0..=MAX_STEP,
            metrics in proptest::collection::vec(("[a-z_]{1,8}", -1e6f64..1e6), 0..4),
            user in "\\PC{0,40}",
            at in any::<proptest::sample::Index>(),
            bit in 0..8u8,
        ) {
            let (id, bytes) = sealed(step, &metrics, &user);
            prop_assert!(parse_manifest(&id, &bytes).is_ok());
            let mut flipped = bytes.clone();
            let at = at.index(flipped.len());
            flipped[at] ^= 1 << bit;
            prop_assert!(
                parse_manifest(&id, &flipped).is_err(),
                "flipping bit {} of byte {} went unnoticed", bit, at
            );
        }
    }

    /// Every bit of one manifest, exhaustively (the property above samples).
    #[test]
    fn every_bit_flip_of_one_manifest_is_detected() {
        let (id, bytes) = sealed(250, &[("loss".into(), 0.25)], "state");
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[at] ^= 1 << bit;
                assert!(
                    parse_manifest(&id, &flipped).is_err(),
                    "bit {bit} of byte {at}"
                );
            }
        }
    }
}
