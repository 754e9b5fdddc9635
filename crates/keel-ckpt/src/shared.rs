//! One checkpoint written by several ranks, committed once: rank 0 begins it and hands its
//! name to the others, every rank writes and fsyncs its own files, rank 0 gathers what each
//! wrote and writes the one manifest last.
//!
//! keel-ckpt moves no bytes between ranks: [`PendingCheckpoint`] and [`SharedPart`] turn into
//! bytes and back so that the trainer sends them with its own collectives (a broadcast from
//! rank 0, a gather to rank 0).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::CkptError;
use crate::model::{
    FORMAT_VERSION, FileEntry, Kind, MAX_MANIFEST_BYTES, MAX_STEP, MAX_UNIX_MS, Manifest, Snapshot,
    TensorGroup, check_file_name, folder_name, seal_manifest, valid_group_name,
};
use crate::storage::StoreLock;
use crate::store::{
    CheckpointId, CheckpointStore, Retention, check_name_parts, group_files, now_ms, write_hashing,
};

/// The most ranks a checkpoint may have.
pub const MAX_WORLD_SIZE: usize = 1 << 20;

/// The largest [`PendingCheckpoint`] in bytes that [`PendingCheckpoint::from_bytes`] reads.
const MAX_PENDING_BYTES: usize = 4096;

/// The rank a tensor group belongs to, by keel's naming rule: a group that one rank owns ends
/// in `-rank<N>` (decimal, no leading zeros: `optimizer-rank1`) and only rank `N` writes it;
/// every other group (`model`) is shared, and only rank 0 writes it. `None` for a shared group.
///
/// ```
/// assert_eq!(keel_ckpt::group_rank("optimizer-rank12"), Some(12));
/// assert_eq!(keel_ckpt::group_rank("model"), None);
/// ```
pub fn group_rank(group: &str) -> Option<usize> {
    let digits = rank_suffix(group)?;
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// The name of rank `rank`'s own share of `group`: `<group>-rank<rank>`.
///
/// ```
/// assert_eq!(keel_ckpt::rank_group("optimizer", 3), "optimizer-rank3");
/// ```
pub fn rank_group(group: &str, rank: usize) -> String {
    format!("{group}-rank{rank}")
}

/// The digits after a group name's last `-rank`, when there are only digits after it.
fn rank_suffix(group: &str) -> Option<&str> {
    let (_, digits) = group.rsplit_once("-rank")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// Whether rank `rank` of `world_size` may write `group` (see [`group_rank`]).
pub(crate) fn check_group_rank(group: &str, rank: usize, world_size: usize) -> Result<(), String> {
    if rank >= world_size {
        return Err(format!(
            "group `{group}` is written by rank {rank}, in a world of {world_size} ranks"
        ));
    }
    if !valid_group_name(group) {
        return Err(format!(
            "tensor group name `{group}`: use letters, digits, `_` and `-`"
        ));
    }
    match (rank_suffix(group), group_rank(group)) {
        (Some(_), None) => Err(format!(
            "group `{group}`: a rank suffix is `-rank<N>`, N without leading zeros and at most {}",
            usize::MAX
        )),
        (_, Some(owner)) if owner != rank => Err(format!(
            "group `{group}` belongs to rank {owner}, but rank {rank} wrote it"
        )),
        (_, Some(_)) => Ok(()),
        (_, None) if rank != 0 => Err(format!(
            "group `{group}` is shared (no `-rank<N>` suffix) and only rank 0 writes shared groups; rank {rank} names its own `{}`",
            rank_group(group, rank)
        )),
        (_, None) => Ok(()),
    }
}

/// A multi-rank checkpoint begun by rank 0 and not yet committed: its kind, step, save time
/// (together its folder name) and how many ranks write it. Rank 0 gets it from
/// [`CheckpointStore::begin_shared`] and sends [`PendingCheckpoint::to_bytes`] to every
/// other rank, which reads it back with [`PendingCheckpoint::from_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingCheckpoint {
    kind: Kind,
    step: u64,
    created_unix_ms: u64,
    world_size: usize,
}

impl PendingCheckpoint {
    /// The kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The step.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// How many ranks write it (ranks `0..world_size`).
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The id it has once committed.
    pub fn id(&self) -> CheckpointId {
        CheckpointId {
            kind: self.kind,
            name: folder_name(self.step, self.created_unix_ms),
        }
    }

    /// As bytes, to send to the other ranks (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads what [`PendingCheckpoint::to_bytes`] wrote, on another rank: bytes from the
    /// network are input, so the size, fields and ranges are checked.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CkptError> {
        let refuse = |reason: String| CkptError::Shared {
            what: "the pending checkpoint received".into(),
            reason,
        };
        if bytes.len() > MAX_PENDING_BYTES {
            return Err(refuse(format!(
                "{} bytes, more than the {MAX_PENDING_BYTES} a pending checkpoint takes",
                bytes.len()
            )));
        }
        let pending: PendingCheckpoint = serde_json::from_slice(bytes)
            .map_err(|e| refuse(format!("not one keel wrote: {e}")))?;
        if pending.step > MAX_STEP || pending.created_unix_ms > MAX_UNIX_MS {
            return Err(refuse(format!(
                "step {} at {} ms does not fit a checkpoint name",
                pending.step, pending.created_unix_ms
            )));
        }
        check_world_size(pending.world_size).map_err(refuse)?;
        Ok(pending)
    }
}

fn check_world_size(world_size: usize) -> Result<(), String> {
    if world_size == 0 || world_size > MAX_WORLD_SIZE {
        return Err(format!(
            "a world of {world_size} ranks (1 to {MAX_WORLD_SIZE})"
        ));
    }
    Ok(())
}

/// What one rank wrote into a pending checkpoint: its rank and its files' names, sizes and
/// BLAKE3. [`CheckpointStore::write_part`] returns it; the rank sends
/// [`SharedPart::to_bytes`] to rank 0, which reads it with [`SharedPart::from_bytes`] and
/// hands every rank's part to [`SharedSave::commit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedPart {
    /// The rank that wrote it.
    pub rank: usize,
    /// Its files (each with `rank` set).
    pub files: Vec<FileEntry>,
}

impl SharedPart {
    /// As bytes, to send to rank 0 (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads what [`SharedPart::to_bytes`] wrote (at most 16 MiB, file names checked with
    /// [`check_file_name`]); [`SharedSave::commit`] checks the rest.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CkptError> {
        let refuse = |reason: String| CkptError::Shared {
            what: "a part received".into(),
            reason,
        };
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(refuse(format!(
                "{} bytes, more than the {MAX_MANIFEST_BYTES} a part's list of files takes",
                bytes.len()
            )));
        }
        let part: SharedPart = serde_json::from_slice(bytes)
            .map_err(|e| refuse(format!("not one keel wrote: {e}")))?;
        for entry in &part.files {
            check_file_name(&entry.name)
                .map_err(|reason| refuse(format!("rank {}: {reason}", part.rank)))?;
        }
        Ok(part)
    }
}

/// Rank 0's handle on a pending multi-rank checkpoint, from [`CheckpointStore::begin_shared`]
/// to [`SharedSave::commit`] or [`SharedSave::abort`]. While it lives it holds the store's
/// lock shared (local and NFS stores), so a prune (which takes it exclusively) waits for the
/// whole save, not only for each rank's write; do not prune on the thread that holds it
/// ([`SharedSave::commit_retaining`] prunes after releasing it). Dropped without a commit,
/// it aborts: the pending checkpoint is removed.
#[derive(Debug)]
pub struct SharedSave {
    store: CheckpointStore,
    pending: PendingCheckpoint,
    /// Whether the pending checkpoint is still there to remove on drop.
    open: bool,
    _lock: StoreLock,
}

impl Drop for SharedSave {
    fn drop(&mut self) {
        // Runs before the lock (a field) is released: a prune never sees half an abort.
        if self.open {
            let id = self.pending.id();
            self.store.backend.abort(id.kind, &id.name);
        }
    }
}

impl SharedSave {
    /// The pending checkpoint, to send to the other ranks and to write rank 0's own part.
    pub fn pending(&self) -> &PendingCheckpoint {
        &self.pending
    }

    /// Commits the checkpoint once every rank wrote its part: checks that each rank
    /// `0..world_size` reported exactly once, that no file is reported twice, that every
    /// group follows the naming rule of [`group_rank`], and that each file is in the pending
    /// checkpoint with the size its rank reported (each rank hashed its files as it wrote
    /// them); then writes the sealed manifest (`world_size`, every file with its rank) last
    /// and makes the checkpoint visible (local: fsync and rename; objects: the manifest
    /// object). `snapshot` gives the metadata (step, epoch, metrics, the trainer's JSON,
    /// environment, device) and must hold no tensors: they are in the parts.
    ///
    /// Any refusal or failure removes the pending checkpoint; the checkpoints before it are
    /// untouched.
    pub fn commit(
        mut self,
        snapshot: &Snapshot,
        parts: &[SharedPart],
    ) -> Result<CheckpointId, CkptError> {
        let id = self.commit_inner(snapshot, parts)?;
        self.open = false;
        Ok(id)
    }

    /// [`SharedSave::commit`], then (after releasing the lock) [`CheckpointStore::prune_after`]
    /// when `retention` is given. A prune failure after the commit is
    /// [`CkptError::Pruning`], which names the committed checkpoint.
    pub fn commit_retaining(
        self,
        snapshot: &Snapshot,
        parts: &[SharedPart],
        retention: Option<&Retention>,
    ) -> Result<CheckpointId, CkptError> {
        let store = self.store.clone();
        let id = self.commit(snapshot, parts)?;
        if let Some(retention) = retention
            && let Err(error) = store.prune_after(retention, &id)
        {
            return Err(CkptError::Pruning {
                saved: id,
                source: Box::new(error),
            });
        }
        Ok(id)
    }

    /// Removes the pending checkpoint (what every rank wrote into it): when any rank failed
    /// to write its part, the ranks agree on it (an all-reduce) and rank 0 aborts.
    pub fn abort(self) {
        // Drop does it.
    }

    fn commit_inner(
        &self,
        snapshot: &Snapshot,
        parts: &[SharedPart],
    ) -> Result<CheckpointId, CkptError> {
        let pending = &self.pending;
        let id = pending.id();
        let refuse = |reason: String| CkptError::Shared {
            what: format!("multi-rank checkpoint {id}"),
            reason: format!("{reason}; nothing is committed"),
        };
        if !snapshot.groups.is_empty() {
            let groups: Vec<&str> = snapshot.groups.keys().map(String::as_str).collect();
            return Err(refuse(format!(
                "the snapshot to commit holds tensor groups ({}); each rank writes its own with write_part",
                groups.join(", ")
            )));
        }
        if snapshot.step != pending.step {
            return Err(refuse(format!(
                "the snapshot is of step {}, the pending checkpoint of step {}",
                snapshot.step, pending.step
            )));
        }
        let world = pending.world_size;
        let mut by_rank: Vec<Option<&SharedPart>> = vec![None; world];
        for part in parts {
            let slot = by_rank.get_mut(part.rank).ok_or_else(|| {
                refuse(format!(
                    "a part says it is from rank {}, in a world of {world} ranks",
                    part.rank
                ))
            })?;
            if slot.replace(part).is_some() {
                return Err(refuse(format!("rank {} reported twice", part.rank)));
            }
        }
        let missing: Vec<String> = (0..world)
            .filter(|rank| by_rank[*rank].is_none())
            .map(|rank| rank.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(refuse(format!(
                "rank {} of {world} did not report its files",
                missing.join(", ")
            )));
        }
        let mut files = Vec::new();
        for (rank, part) in by_rank.iter().enumerate() {
            let Some(part) = part else { continue };
            // Names are unique across ranks by the naming rule (a name says its rank).
            let mut names = BTreeSet::new();
            for entry in &part.files {
                let group = check_file_name(&entry.name)
                    .map_err(|reason| refuse(format!("rank {rank}: {reason}")))?;
                check_group_rank(group, rank, world).map_err(&refuse)?;
                if entry.rank.is_some_and(|r| r != rank) {
                    return Err(refuse(format!(
                        "rank {rank}'s part lists {} as written by rank {}",
                        entry.name,
                        entry.rank.unwrap_or_default()
                    )));
                }
                if entry.blake3.len() != 64
                    || !entry
                        .blake3
                        .bytes()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                {
                    return Err(refuse(format!(
                        "rank {rank}'s {} has no BLAKE3 in hex",
                        entry.name
                    )));
                }
                if !names.insert(entry.name.as_str()) {
                    return Err(refuse(format!("rank {rank} reported {} twice", entry.name)));
                }
                match self
                    .store
                    .backend
                    .pending_size(id.kind, &id.name, &entry.name)?
                {
                    None => {
                        return Err(refuse(format!(
                            "rank {rank}'s {} is not in the pending checkpoint",
                            entry.name
                        )));
                    }
                    Some(size) if size != entry.size => {
                        return Err(refuse(format!(
                            "rank {rank}'s {} has {size} bytes, rank {rank} reported {}",
                            entry.name, entry.size
                        )));
                    }
                    Some(_) => {}
                }
                files.push(FileEntry {
                    rank: Some(rank),
                    ..entry.clone()
                });
            }
        }
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            kind: pending.kind,
            step: pending.step,
            epoch: snapshot.epoch,
            created_unix_ms: pending.created_unix_ms,
            metrics: snapshot.metrics.clone(),
            user: snapshot.user.clone(),
            environment: snapshot.environment.clone(),
            device: snapshot.device.clone(),
            world_size: Some(world),
            files,
        };
        let bytes =
            seal_manifest(serde_json::to_value(&manifest).map_err(|e| CkptError::Io(e.into()))?);
        self.store.backend.commit(id.kind, &id.name, &bytes)?;
        Ok(id)
    }
}

impl CheckpointStore {
    /// Rank 0 begins a checkpoint that `world_size` ranks write: picks its name (the folder
    /// rule of [`CheckpointStore::save`]: kind, step, save time) and creates its pending
    /// location (local: the temporary folder `KIND/.tmp-step-...`, which no reader lists and
    /// a prune removes only when no save holds the store's lock; objects: the write marker,
    /// which keeps a prune away for 24 hours). Send [`SharedSave::pending`] to the other
    /// ranks; every rank (0 too) then calls [`CheckpointStore::write_part`].
    ///
    /// Two ranks, one after the other here (a trainer runs them as processes and sends the
    /// bytes with its collectives):
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use keel_ckpt::{CheckpointStore, Kind, PendingCheckpoint, SharedPart, Snapshot, Tensor};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = CheckpointStore::local(dir.path())?;
    /// let group = |value: f32| BTreeMap::from([("w".to_string(), Tensor::from_f32(vec![1], &[value]).unwrap())]);
    ///
    /// // Rank 0 begins and broadcasts the pending checkpoint.
    /// let save = store.begin_shared(Kind::Regular, 10, 2)?;
    /// let broadcast = save.pending().to_bytes();
    /// // Every rank writes its own groups and sends what it wrote to rank 0.
    /// let part0 = store.write_part(save.pending(), 0, &BTreeMap::from([
    ///     ("model".to_string(), group(1.0)),
    ///     ("optimizer-rank0".to_string(), group(2.0)),
    /// ]))?;
    /// let pending = PendingCheckpoint::from_bytes(&broadcast)?;
    /// let part1 = store.write_part(&pending, 1, &BTreeMap::from([("optimizer-rank1".to_string(), group(3.0))]))?;
    /// let gathered = [part0.to_bytes(), part1.to_bytes()];
    /// // Rank 0 commits the one manifest.
    /// let parts = gathered.iter().map(|b| SharedPart::from_bytes(b)).collect::<Result<Vec<_>, _>>()?;
    /// let id = save.commit(&Snapshot { step: 10, ..Snapshot::default() }, &parts)?;
    ///
    /// let (manifest, snapshot) = store.load(&id)?;
    /// assert_eq!(manifest.world_size, Some(2));
    /// assert_eq!(snapshot.groups.keys().collect::<Vec<_>>(), ["model", "optimizer-rank0", "optimizer-rank1"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn begin_shared(
        &self,
        kind: Kind,
        step: u64,
        world_size: usize,
    ) -> Result<SharedSave, CkptError> {
        check_world_size(world_size).map_err(CkptError::Setting)?;
        let created_unix_ms = now_ms();
        check_name_parts(step, created_unix_ms)?;
        let pending = PendingCheckpoint {
            kind,
            step,
            created_unix_ms,
            world_size,
        };
        let lock = self.backend.lock(false)?;
        let id = pending.id();
        // Made before the begin, so that a failed begin is aborted by its drop.
        let save = SharedSave {
            store: self.clone(),
            pending,
            open: true,
            _lock: lock,
        };
        self.backend.begin(id.kind, &id.name)?;
        Ok(save)
    }

    /// Every rank (0 too) writes its tensor groups into the pending checkpoint, one
    /// `<group>.safetensors` each, fsynced (and the folder), hashing while it writes; returns
    /// what it wrote, for rank 0's [`SharedSave::commit`]. Groups follow the rule of
    /// [`group_rank`]: rank `r`'s own groups end in `-rank<r>`, shared groups (no suffix) come
    /// from rank 0 only. Holds the store's lock shared while it writes, so no prune removes
    /// the pending folder under it. A failure may leave some of its files there: the ranks
    /// agree that the save failed and rank 0 aborts it.
    pub fn write_part(
        &self,
        pending: &PendingCheckpoint,
        rank: usize,
        groups: &BTreeMap<String, TensorGroup>,
    ) -> Result<SharedPart, CkptError> {
        let id = pending.id();
        let refuse = |reason: String| CkptError::Shared {
            what: format!("multi-rank checkpoint {id}"),
            reason,
        };
        for group in groups.keys() {
            check_group_rank(group, rank, pending.world_size).map_err(refuse)?;
        }
        let files = group_files(groups)?;
        let _lock = self.backend.lock(false)?;
        let mut entries = write_hashing(&files, || {
            self.backend.write_part(id.kind, &id.name, &files)
        })?;
        for entry in &mut entries {
            entry.rank = Some(rank);
        }
        Ok(SharedPart {
            rank,
            files: entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_rank_reads_only_canonical_suffixes() {
        assert_eq!(group_rank("optimizer-rank0"), Some(0));
        assert_eq!(group_rank("optimizer-rank1"), Some(1));
        assert_eq!(group_rank("a-rank2-rank3"), Some(3));
        assert_eq!(group_rank("optimizer-rank01"), None);
        assert_eq!(group_rank("optimizer-rank"), None);
        assert_eq!(group_rank("optimizer-rankx"), None);
        assert_eq!(group_rank("model"), None);
        assert_eq!(group_rank("rank1"), None);
        assert_eq!(group_rank("x-rank99999999999999999999999"), None);
    }

    #[test]
    fn each_group_is_written_by_its_own_rank_only() {
        assert!(check_group_rank("model", 0, 2).is_ok());
        assert!(check_group_rank("optimizer-rank1", 1, 2).is_ok());
        assert!(check_group_rank("optimizer-rank0", 0, 2).is_ok());
        for (group, rank, world, says) in [
            ("model", 1, 2, "only rank 0 writes shared groups"),
            ("optimizer-rank1", 0, 2, "belongs to rank 1"),
            ("optimizer-rank0", 1, 2, "belongs to rank 0"),
            ("optimizer-rank2", 2, 2, "in a world of 2 ranks"),
            ("optimizer-rank01", 1, 2, "without leading zeros"),
            ("optimizer-rank01", 0, 2, "without leading zeros"),
            ("bad/name-rank1", 1, 2, "letters, digits"),
        ] {
            let error = check_group_rank(group, rank, world).unwrap_err();
            assert!(error.contains(says), "{group} from {rank}: {error}");
        }
    }

    #[test]
    fn pending_checkpoint_round_trips_and_refuses_what_keel_never_sends() {
        let pending = PendingCheckpoint {
            kind: Kind::Interrupted,
            step: 42,
            created_unix_ms: 1_700_000_000_000,
            world_size: 3,
        };
        let back = PendingCheckpoint::from_bytes(&pending.to_bytes()).unwrap();
        assert_eq!(back, pending);
        assert_eq!(
            back.id().to_string(),
            "interrupted/step-000000000042-1700000000000"
        );
        for bad in [
            &b"not json"[..],
            br#"{"kind":"regular","step":1,"created_unix_ms":1,"world_size":0}"#,
            br#"{"kind":"regular","step":1,"created_unix_ms":1,"world_size":2000000}"#,
            br#"{"kind":"regular","step":1000000000000,"created_unix_ms":1,"world_size":2}"#,
            br#"{"kind":"regular","step":1,"created_unix_ms":10000000000000,"world_size":2}"#,
            br#"{"kind":"regular","step":1,"created_unix_ms":1,"world_size":2,"extra":1}"#,
            br#"{"kind":"other","step":1,"created_unix_ms":1,"world_size":2}"#,
            &[b' '; 5000][..],
        ] {
            let error = PendingCheckpoint::from_bytes(bad).unwrap_err();
            assert!(
                error.to_string().contains("pending checkpoint received"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_part_with_a_file_outside_its_checkpoint_is_refused() {
        let part = SharedPart {
            rank: 1,
            files: vec![FileEntry {
                name: "../model.safetensors".into(),
                size: 1,
                blake3: "0".repeat(64),
                rank: Some(1),
            }],
        };
        let error = SharedPart::from_bytes(&part.to_bytes()).unwrap_err();
        assert!(error.to_string().contains("rank 1"), "{error}");
        assert!(error.to_string().contains("separator"), "{error}");
    }
}
