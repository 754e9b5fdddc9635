//! Where checkpoints live: a local (or NFS) folder, or S3-compatible object storage.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

use crate::CkptError;
use crate::model::{FileParts, Kind, MANIFEST, parse_folder_name};

/// The operations a store needs. A checkpoint is a folder `KIND/NAME/` of files; it counts only
/// once its manifest is there, and it is written last.
pub(crate) trait Backend: Send + Sync + std::fmt::Debug {
    /// Where, for messages.
    fn describe(&self) -> String;
    /// Whether the store is there (local: the folder exists; objects: always).
    fn exists(&self) -> Result<bool, CkptError>;
    /// Excludes saves (`exclusive` false: they may run together) from prunes (`exclusive`
    /// true) of this store until the guard is dropped. Only a save creates the store.
    fn lock(&self, exclusive: bool) -> Result<StoreLock, CkptError>;
    /// Writes the data files of a checkpoint durably where no reader looks for checkpoints
    /// (local: a temporary folder; objects: under the final key, with a write marker, which
    /// counts only once its manifest is there).
    fn write_data(&self, kind: Kind, name: &str, files: &[FileParts<'_>]) -> Result<(), CkptError>;
    /// Starts a checkpoint that several writers fill ([`Backend::write_part`]) before one
    /// [`Backend::commit`]: local: its temporary folder, empty; objects: its write marker.
    fn begin(&self, kind: Kind, name: &str) -> Result<(), CkptError>;
    /// Writes some data files of a begun checkpoint durably beside the others' (local: into
    /// its temporary folder, created if this writer sees none yet; objects: under the final
    /// key). Files of other writers are left as they are.
    fn write_part(&self, kind: Kind, name: &str, files: &[FileParts<'_>]) -> Result<(), CkptError>;
    /// The size of a data file of a begun, uncommitted checkpoint; `None` when it is not
    /// there. Only a regular file counts.
    fn pending_size(&self, kind: Kind, name: &str, file: &str) -> Result<Option<u64>, CkptError>;
    /// Writes the manifest and makes the checkpoint visible: the commit point.
    fn commit(&self, kind: Kind, name: &str, manifest: &[u8]) -> Result<(), CkptError>;
    /// Removes what a failed `write_data` or `commit` left; never touches other checkpoints.
    fn abort(&self, kind: Kind, name: &str);
    /// The checkpoint folders of a kind (complete or not, keel's or not), unsorted; never
    /// keel's own temporaries.
    fn list(&self, kind: Kind) -> Result<Vec<String>, CkptError>;
    /// A small file of a checkpoint (at most `limit` bytes, else an error); `None` when it
    /// does not exist. Only a regular file is read.
    fn read(
        &self,
        kind: Kind,
        name: &str,
        file: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, CkptError>;
    /// A file of a checkpoint to stream, with its size (known before any byte is read);
    /// `None` when it does not exist. Only a regular file is opened.
    fn open(&self, kind: Kind, name: &str, file: &str) -> Result<Option<Sized<'_>>, CkptError>;
    /// Removes a checkpoint so that no reader ever sees half of it as valid.
    fn remove(&self, kind: Kind, name: &str) -> Result<(), CkptError>;
    /// Whether a checkpoint without a manifest is provably an abandoned write of keel's
    /// (objects: its write marker is older than [`ABANDONED_AFTER_MS`]); local folders
    /// never are (keel writes them under a temporary name).
    fn abandoned(&self, kind: Kind, name: &str) -> Result<bool, CkptError>;
    /// Removes what interrupted writes left behind (local temporary folders keel named);
    /// call with the exclusive lock held. Returns their names.
    fn clean_temporaries(&self) -> Result<Vec<String>, CkptError>;
}

/// A reader with the size of what it reads.
pub(crate) type Sized<'a> = (Box<dyn Read + 'a>, u64);

/// A write marker on object storage older than this (24 h) is an abandoned save.
pub(crate) const ABANDONED_AFTER_MS: i64 = 24 * 60 * 60 * 1000;

/// The object a save puts first and deletes after its commit: its age tells an abandoned
/// write from one in flight.
const WRITE_MARKER: &str = ".keel-writing";

/// The lock file at a local store's root.
const LOCK_FILE: &str = ".keel-lock";

/// Held while a save or prune runs (see [`Backend::lock`]). Owns what it holds, so that a
/// multi-rank save can keep it from its begin to its commit. The file lock is released first.
#[derive(Debug)]
pub(crate) struct StoreLock {
    _file: Option<fs_err::File>,
    _gate: Option<GateGuard>,
}

impl StoreLock {
    fn none() -> Self {
        StoreLock {
            _file: None,
            _gate: None,
        }
    }
}

/// The lock of one store inside the process: many shared holders or one exclusive. Readers
/// are let in while a writer waits (as `flock` does between processes): the ranks of one
/// multi-rank save, simulated as threads of one process, each take it shared while rank 0
/// already holds it, and a waiting prune must not stall them.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    readers: usize,
    writer: bool,
}

impl Gate {
    fn enter(self: &Arc<Self>, exclusive: bool) -> GateGuard {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let free = if exclusive {
                !state.writer && state.readers == 0
            } else {
                !state.writer
            };
            if free {
                break;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if exclusive {
            state.writer = true;
        } else {
            state.readers += 1;
        }
        GateGuard {
            gate: Arc::clone(self),
            exclusive,
        }
    }
}

/// One holder of a [`Gate`]; leaving wakes the waiters.
#[derive(Debug)]
struct GateGuard {
    gate: Arc<Gate>,
    exclusive: bool,
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        let mut state = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.exclusive {
            state.writer = false;
        } else {
            state.readers = state.readers.saturating_sub(1);
        }
        drop(state);
        self.gate.changed.notify_all();
    }
}

/// Opens a file only if it is a regular one: checked before opening (a FIFO would block the
/// open itself) and again on the opened handle (the name may have changed in between).
/// `None` when it does not exist; any other failure (permissions, I/O) is an error.
pub(crate) fn open_regular(path: &Path) -> Result<Option<(fs_err::File, u64)>, CkptError> {
    let not_regular = || CkptError::File {
        path: path.to_path_buf(),
        reason:
            "not a regular file (a FIFO, device, folder or link); keel reads only files it wrote"
                .into(),
    };
    match fs_err::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(not_regular()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let file = match fs_err::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    Ok(Some((file, meta.len())))
}

/// A local or NFS folder. Writes go to a temporary folder beside the final one: each file is
/// fsynced, the manifest is written and fsynced last, the folder is fsynced, renamed into place,
/// and the parent fsynced, so a crash at any moment leaves either the whole checkpoint or none.
#[derive(Debug)]
pub(crate) struct Local {
    root: PathBuf,
    /// Excludes saves and prunes of this store inside the process (the file lock does
    /// between processes; on NFS it is a POSIX lock, which is per process).
    gate: Arc<Gate>,
}

const TEMP_PREFIX: &str = ".tmp-";

impl Local {
    /// A store at `root`, which need not exist yet (the first save creates it); nothing is
    /// created here.
    pub(crate) fn new(root: &Path) -> Result<Self, CkptError> {
        match fs_err::metadata(root) {
            Ok(meta) if !meta.is_dir() => {
                return Err(CkptError::NotADirectory(root.to_path_buf()));
            }
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error.into()),
        }
        Ok(Local {
            root: root.to_path_buf(),
            gate: Arc::default(),
        })
    }

    fn kind_dir(&self, kind: Kind) -> PathBuf {
        self.root.join(kind.as_str())
    }

    fn temp_dir(&self, kind: Kind, name: &str) -> PathBuf {
        self.kind_dir(kind).join(format!("{TEMP_PREFIX}{name}"))
    }
}

/// fsync a folder, so that a rename or a new entry in it is durable.
fn sync_dir(dir: &Path) -> Result<(), CkptError> {
    #[cfg(unix)]
    {
        fs_err::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
    }
    Ok(())
}

fn write_synced<'a>(
    path: &Path,
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), CkptError> {
    use std::io::Write as _;
    let mut file = fs_err::File::create(path)?;
    for part in parts {
        file.write_all(part)?;
    }
    file.sync_all()?;
    Ok(())
}

/// Whether `name` in a kind folder is one of keel's temporaries (`.tmp-<checkpoint name>`).
fn temporary(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX)
        .is_some_and(|rest| parse_folder_name(rest).is_some())
}

impl Backend for Local {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn exists(&self) -> Result<bool, CkptError> {
        match fs_err::metadata(&self.root) {
            Ok(meta) if meta.is_dir() => Ok(true),
            Ok(_) => Err(CkptError::NotADirectory(self.root.clone())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    fn lock(&self, exclusive: bool) -> Result<StoreLock, CkptError> {
        let mut lock = StoreLock::none();
        if exclusive {
            // A prune of a store that is not there has nothing to exclude.
            if !self.exists()? {
                return Ok(lock);
            }
        } else if !self.exists()? {
            fs_err::create_dir_all(&self.root)?;
        }
        lock._gate = Some(self.gate.enter(exclusive));
        let file = fs_err::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.root.join(LOCK_FILE))?;
        if exclusive {
            file.lock()?;
        } else {
            file.lock_shared()?;
        }
        lock._file = Some(file);
        Ok(lock)
    }

    fn write_data(&self, kind: Kind, name: &str, files: &[FileParts<'_>]) -> Result<(), CkptError> {
        let kind_dir = self.kind_dir(kind);
        if !kind_dir.is_dir() {
            fs_err::create_dir_all(&kind_dir)?;
            sync_dir(&self.root)?;
        }
        let temp = self.temp_dir(kind, name);
        if fs_err::symlink_metadata(&temp).is_ok() {
            fs_err::remove_dir_all(&temp)?;
        }
        fs_err::create_dir(&temp)?;
        for file in files {
            write_synced(&temp.join(&file.name), file.parts())?;
        }
        Ok(())
    }

    fn commit(&self, kind: Kind, name: &str, manifest: &[u8]) -> Result<(), CkptError> {
        let kind_dir = self.kind_dir(kind);
        let temp = self.temp_dir(kind, name);
        write_synced(&temp.join(MANIFEST), [manifest])?;
        sync_dir(&temp)?;
        fs_err::rename(&temp, kind_dir.join(name))?;
        sync_dir(&kind_dir)
    }

    fn begin(&self, kind: Kind, name: &str) -> Result<(), CkptError> {
        let kind_dir = self.kind_dir(kind);
        if !kind_dir.is_dir() {
            fs_err::create_dir_all(&kind_dir)?;
            sync_dir(&self.root)?;
        }
        let temp = self.temp_dir(kind, name);
        if fs_err::symlink_metadata(&temp).is_ok() {
            fs_err::remove_dir_all(&temp)?;
        }
        fs_err::create_dir(&temp)?;
        sync_dir(&kind_dir)
    }

    fn write_part(&self, kind: Kind, name: &str, files: &[FileParts<'_>]) -> Result<(), CkptError> {
        let temp = self.temp_dir(kind, name);
        match fs_err::symlink_metadata(&temp) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(CkptError::NotADirectory(temp)),
            // Not visible here yet (another host's NFS cache) or never begun: other writers
            // may create it at the same moment, which create_dir_all allows.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                fs_err::create_dir_all(&temp)?;
                sync_dir(&self.kind_dir(kind))?;
            }
            Err(error) => return Err(error.into()),
        }
        for file in files {
            write_synced(&temp.join(&file.name), file.parts())?;
        }
        sync_dir(&temp)
    }

    fn pending_size(&self, kind: Kind, name: &str, file: &str) -> Result<Option<u64>, CkptError> {
        // Opened, not only looked up: on NFS an open revalidates what another client wrote.
        Ok(open_regular(&self.temp_dir(kind, name).join(file))?.map(|(_, size)| size))
    }

    fn abort(&self, kind: Kind, name: &str) {
        // Leave nothing that could be mistaken for a checkpoint; the others are untouched.
        let _ = fs_err::remove_dir_all(self.temp_dir(kind, name));
    }

    fn list(&self, kind: Kind) -> Result<Vec<String>, CkptError> {
        let dir = self.kind_dir(kind);
        match fs_err::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(CkptError::NotADirectory(dir)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        }
        let mut names = Vec::new();
        for entry in fs_err::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !temporary(&name) && entry.file_type()?.is_dir() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read(
        &self,
        kind: Kind,
        name: &str,
        file: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, CkptError> {
        let path = self.kind_dir(kind).join(name).join(file);
        let Some((file, size)) = open_regular(&path)? else {
            return Ok(None);
        };
        if size > limit {
            return Err(CkptError::TooLarge {
                location: path.display().to_string(),
                size,
                limit,
            });
        }
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(CkptError::TooLarge {
                location: path.display().to_string(),
                size: bytes.len() as u64,
                limit,
            });
        }
        Ok(Some(bytes))
    }

    fn open(&self, kind: Kind, name: &str, file: &str) -> Result<Option<Sized<'_>>, CkptError> {
        let path = self.kind_dir(kind).join(name).join(file);
        Ok(open_regular(&path)?.map(|(file, size)| {
            let reader: Box<dyn Read> = Box::new(std::io::BufReader::new(file));
            (reader, size)
        }))
    }

    fn remove(&self, kind: Kind, name: &str) -> Result<(), CkptError> {
        // Renamed out of sight first (one atomic step), then deleted: a crash in between
        // leaves a temporary, which the next prune removes, never half a checkpoint.
        let dir = self.kind_dir(kind).join(name);
        let temp = self.temp_dir(kind, name);
        if fs_err::symlink_metadata(&temp).is_ok() {
            fs_err::remove_dir_all(&temp)?;
        }
        fs_err::rename(&dir, &temp)?;
        sync_dir(&self.kind_dir(kind))?;
        fs_err::remove_dir_all(&temp)?;
        Ok(())
    }

    fn abandoned(&self, _kind: Kind, _name: &str) -> Result<bool, CkptError> {
        Ok(false)
    }

    fn clean_temporaries(&self) -> Result<Vec<String>, CkptError> {
        let mut cleaned = Vec::new();
        for kind in Kind::ALL {
            for name in self.list_all(kind)? {
                let path = self.kind_dir(kind).join(&name);
                // Only folders keel named; a stray file or link of that name is left alone.
                let is_dir = fs_err::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
                if temporary(&name) && is_dir {
                    fs_err::remove_dir_all(&path)?;
                    cleaned.push(format!("{kind}/{name}"));
                }
            }
        }
        Ok(cleaned)
    }
}

impl Local {
    /// Every entry name of a kind folder (none when it is missing).
    fn list_all(&self, kind: Kind) -> Result<Vec<String>, CkptError> {
        let dir = self.kind_dir(kind);
        if !fs_err::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        for entry in fs_err::read_dir(&dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
}

/// S3-compatible object storage (any `object_store` backend). Data objects are put first and
/// the manifest last; a checkpoint whose manifest is missing is incomplete and never loaded.
pub(crate) struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    runtime: tokio::runtime::Runtime,
    /// The longest one request (a small put, one part of a multipart upload, a ranged get,
    /// a delete) may take, retries included, before the operation fails naming its object.
    deadline: std::time::Duration,
}

/// How long one request to object storage may take by default before keel gives up on it
/// (see [`CheckpointStore::object_store_with_deadline`](crate::CheckpointStore::object_store_with_deadline)).
pub(crate) const DEFAULT_REQUEST_DEADLINE: std::time::Duration =
    std::time::Duration::from_secs(120);

/// A data file larger than this goes up as a multipart upload, in parts of this size (or
/// larger, so that a file needs at most [`MAX_PARTS`] parts).
pub(crate) const PART_BYTES: usize = 16 << 20;

/// At most this many parts of one file are in flight: memory for an upload is at most
/// `(PARALLEL_PARTS + 1) * part size`, whatever the file's size.
pub(crate) const PARALLEL_PARTS: usize = 4;

/// S3 allows 10,000 parts per upload; keel stays under with a margin.
const MAX_PARTS: u64 = 9_000;

/// The part size for a file of `len` bytes: [`PART_BYTES`], or more for a file that would
/// otherwise need more than [`MAX_PARTS`] parts.
pub(crate) fn part_size(len: u64) -> usize {
    let at_least = len.div_ceil(MAX_PARTS);
    usize::try_from(at_least).map_or(usize::MAX, |n| n.max(PART_BYTES))
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").field("url", &self.url).finish()
    }
}

impl Objects {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        url: String,
        deadline: std::time::Duration,
    ) -> Result<Self, CkptError> {
        // Two workers: the parts of an upload are signed (SHA-256 of each body) and sent in
        // parallel, not one after another on the calling thread.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("keel-ckpt-objects")
            .enable_all()
            .build()?;
        Ok(Objects {
            store,
            prefix,
            url,
            runtime,
            deadline,
        })
    }

    /// Awaits one request to `location` within the deadline; a failure or a stall names
    /// the object.
    async fn call<T>(
        &self,
        location: &ObjectPath,
        request: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T, CkptError> {
        match tokio::time::timeout(self.deadline, request).await {
            Ok(result) => result.map_err(|e| self.error(location, e)),
            Err(_) => Err(self.stalled(location)),
        }
    }

    /// [`Objects::call`] for a request whose "not found" is an answer, not an error.
    async fn call_found<T>(
        &self,
        location: &ObjectPath,
        request: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<Option<T>, CkptError> {
        match tokio::time::timeout(self.deadline, request).await {
            Ok(Ok(value)) => Ok(Some(value)),
            Ok(Err(object_store::Error::NotFound { .. })) => Ok(None),
            Ok(Err(e)) => Err(self.error(location, e)),
            Err(_) => Err(self.stalled(location)),
        }
    }

    fn stalled(&self, location: &ObjectPath) -> CkptError {
        CkptError::Stalled {
            location: self.location(location),
            deadline: self.deadline,
        }
    }

    /// Puts the data files of a checkpoint under `KIND/NAME/`: a small file in one request,
    /// a large one as a multipart upload whose parts go up in parallel. The tensors are read
    /// where they are; at most [`PARALLEL_PARTS`] + 1 parts of one file are copied at a time.
    async fn put_files(
        &self,
        kind: Kind,
        name: &str,
        files: &[FileParts<'_>],
    ) -> Result<(), CkptError> {
        for file in files {
            let path = self.path(&[kind.as_str(), name, &file.name]);
            if file.len() <= PART_BYTES as u64 {
                let payload: PutPayload = file.parts().map(bytes::Bytes::copy_from_slice).collect();
                self.call(&path, self.store.put(&path, payload)).await?;
            } else {
                self.put_multipart(&path, file).await?;
            }
        }
        Ok(())
    }

    /// One file as a multipart upload; on any failure or stall the upload is aborted (within
    /// the deadline too) and the error names the object.
    async fn put_multipart(
        &self,
        path: &ObjectPath,
        file: &FileParts<'_>,
    ) -> Result<(), CkptError> {
        let mut upload = self.call(path, self.store.put_multipart(path)).await?;
        let result = self.send_parts(path, file, upload.as_mut()).await;
        let result = match result {
            Ok(()) => self.call(path, upload.complete()).await.map(|_| ()),
            Err(error) => Err(error),
        };
        if result.is_err() {
            // Parts of an upload never completed are not an object; aborting frees them.
            let _ = tokio::time::timeout(self.deadline, upload.abort()).await;
        }
        result
    }

    async fn send_parts(
        &self,
        path: &ObjectPath,
        file: &FileParts<'_>,
        upload: &mut dyn object_store::MultipartUpload,
    ) -> Result<(), CkptError> {
        let part = part_size(file.len());
        let mut in_flight = tokio::task::JoinSet::new();
        let deadline = self.deadline;
        let mut send = |chunk: Vec<u8>, in_flight: &mut tokio::task::JoinSet<_>| {
            let request = upload.put_part(PutPayload::from(chunk));
            in_flight.spawn(tokio::time::timeout(deadline, request));
        };
        let mut chunk = Vec::with_capacity(part);
        for mut bytes in file.parts() {
            while !bytes.is_empty() {
                let take = bytes.len().min(part - chunk.len());
                chunk.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if chunk.len() == part {
                    while in_flight.len() >= PARALLEL_PARTS {
                        self.part_done(path, in_flight.join_next().await)?;
                    }
                    send(
                        std::mem::replace(&mut chunk, Vec::with_capacity(part)),
                        &mut in_flight,
                    );
                }
            }
        }
        if !chunk.is_empty() {
            send(chunk, &mut in_flight);
        }
        while let Some(done) = in_flight.join_next().await {
            self.part_done(path, Some(done))?;
        }
        Ok(())
    }

    /// The outcome of one part's request.
    fn part_done(
        &self,
        path: &ObjectPath,
        done: Option<
            Result<
                Result<object_store::Result<()>, tokio::time::error::Elapsed>,
                tokio::task::JoinError,
            >,
        >,
    ) -> Result<(), CkptError> {
        match done {
            None | Some(Ok(Ok(Ok(())))) => Ok(()),
            Some(Ok(Ok(Err(e)))) => Err(self.error(path, e)),
            Some(Ok(Err(_))) => Err(self.stalled(path)),
            Some(Err(e)) => Err(CkptError::Object {
                location: self.location(path),
                source: Box::new(object_store::Error::JoinError { source: e }),
            }),
        }
    }

    /// Runs a future to completion, also from inside another tokio runtime (on a thread of
    /// its own, since a runtime cannot block inside another).
    fn block<T: Send>(&self, future: impl std::future::Future<Output = T> + Send) -> T {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|scope| {
                scope
                    .spawn(|| self.runtime.block_on(future))
                    .join()
                    .expect("object storage call panicked")
            })
        } else {
            self.runtime.block_on(future)
        }
    }

    fn path(&self, parts: &[&str]) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in parts {
            path = path.clone().join(*part);
        }
        path
    }

    /// `scheme://bucket/key` of an object, for messages.
    fn location(&self, location: &ObjectPath) -> String {
        let base = url::Url::parse(&self.url)
            .ok()
            .map(|url| format!("{}://{}", url.scheme(), url.host_str().unwrap_or("")))
            .unwrap_or_default();
        format!("{base}/{location}")
    }

    /// An object storage error naming the object.
    fn error(&self, location: &ObjectPath, source: object_store::Error) -> CkptError {
        CkptError::Object {
            location: self.location(location),
            source: Box::new(source),
        }
    }
}

/// The size of one ranged read of an object.
const RANGE_BYTES: u64 = 8 << 20;

/// How many ranged reads of one object are in flight: a reader holds at most this many
/// ranges (32 MiB), whatever the object's size.
const RANGES_AHEAD: usize = 4;

/// A ranged read in flight: its length and the request.
type Pending = (
    u64,
    tokio::task::JoinHandle<Result<bytes::Bytes, CkptError>>,
);

/// Reads an object in ranged requests of 8 MiB, the next ones requested while the current one
/// is consumed, so that nothing holds the whole object and the reads do not wait on each
/// request's round trip one after another.
struct ObjectReader<'a> {
    objects: &'a Objects,
    path: ObjectPath,
    /// Where the next range to request starts.
    next: u64,
    size: u64,
    pending: std::collections::VecDeque<Pending>,
    buffer: bytes::Bytes,
}

impl ObjectReader<'_> {
    /// Requests ranges until [`RANGES_AHEAD`] are in flight or the object is covered.
    fn request_ahead(&mut self) {
        while self.pending.len() < RANGES_AHEAD && self.next < self.size {
            let end = self.size.min(self.next + RANGE_BYTES);
            let range = self.next..end;
            let (store, path) = (Arc::clone(&self.objects.store), self.path.clone());
            let (deadline, location) = (self.objects.deadline, self.objects.location(&path));
            let request = async move {
                match tokio::time::timeout(deadline, store.get_range(&path, range)).await {
                    Ok(Ok(bytes)) => Ok(bytes),
                    Ok(Err(source)) => Err(CkptError::Object {
                        location,
                        source: Box::new(source),
                    }),
                    Err(_) => Err(CkptError::Stalled { location, deadline }),
                }
            };
            let handle = self.objects.runtime.spawn(request);
            self.pending.push_back((end - self.next, handle));
            self.next = end;
        }
    }
}

impl Drop for ObjectReader<'_> {
    fn drop(&mut self) {
        // A reader left early (a bad file) stops its ranged reads.
        for (_, handle) in &self.pending {
            handle.abort();
        }
    }
}

impl Read for ObjectReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buffer.is_empty() {
            self.request_ahead();
            let Some((len, handle)) = self.pending.pop_front() else {
                return Ok(0);
            };
            let bytes = self
                .objects
                .block(handle)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", self.path)))?
                .map_err(std::io::Error::other)?;
            if bytes.len() as u64 != len {
                return Err(std::io::Error::other(format!(
                    "{}: a ranged read gave {} bytes of {len} (the object changed or ended early)",
                    self.objects.location(&self.path),
                    bytes.len()
                )));
            }
            self.buffer = bytes;
            self.request_ahead();
        }
        let n = out.len().min(self.buffer.len());
        out[..n].copy_from_slice(&self.buffer.split_to(n));
        Ok(n)
    }
}

impl Backend for Objects {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn exists(&self) -> Result<bool, CkptError> {
        // A prefix is there as soon as it is named; an empty one lists nothing.
        Ok(true)
    }

    fn lock(&self, _exclusive: bool) -> Result<StoreLock, CkptError> {
        // No locks on object storage: a prune deletes only checkpoints with a manifest and
        // writes whose marker is older than ABANDONED_AFTER_MS, never a save in flight.
        Ok(StoreLock::none())
    }

    fn write_data(&self, kind: Kind, name: &str, files: &[FileParts<'_>]) -> Result<(), CkptError> {
        self.block(async {
            let marker = self.path(&[kind.as_str(), name, WRITE_MARKER]);
            let payload = PutPayload::from_static(b"keel checkpoint write in progress\n");
            self.call(&marker, self.store.put(&marker, payload)).await?;
            self.put_files(kind, name, files).await
        })
    }

    fn commit(&self, kind: Kind, name: &str, manifest: &[u8]) -> Result<(), CkptError> {
        let path = self.path(&[kind.as_str(), name, MANIFEST]);
        let payload = PutPayload::from(manifest.to_vec());
        self.block(self.call(&path, self.store.put(&path, payload)))?;
        // Committed: the marker is tidiness now (a manifest outranks it).
        let marker = self.path(&[kind.as_str(), name, WRITE_MARKER]);
        let _ = self.block(self.call(&marker, self.store.delete(&marker)));
        Ok(())
    }

    fn begin(&self, kind: Kind, name: &str) -> Result<(), CkptError> {
        // The marker first: from now on a prune leaves this prefix alone for the grace period.
        let marker = self.path(&[kind.as_str(), name, WRITE_MARKER]);
        let payload = PutPayload::from_static(b"keel checkpoint write in progress\n");
        self.block(self.call(&marker, self.store.put(&marker, payload)))?;
        Ok(())
    }

    fn write_part(&self, kind: Kind, name: &str, files: &[FileParts<'_>]) -> Result<(), CkptError> {
        self.block(self.put_files(kind, name, files))
    }

    fn pending_size(&self, kind: Kind, name: &str, file: &str) -> Result<Option<u64>, CkptError> {
        let path = self.path(&[kind.as_str(), name, file]);
        let meta = self.block(self.call_found(&path, self.store.head(&path)))?;
        Ok(meta.map(|meta| meta.size))
    }

    fn abort(&self, kind: Kind, name: &str) {
        // Data objects without a manifest are never loaded; removing them is tidiness.
        let _ = self.remove(kind, name);
    }

    fn list(&self, kind: Kind) -> Result<Vec<String>, CkptError> {
        let prefix = self.path(&[kind.as_str()]);
        let listed =
            self.block(self.call(&prefix, self.store.list_with_delimiter(Some(&prefix))))?;
        // A listing's names are input: only a plain segment directly under the kind is
        // taken (the store decides whether it is a checkpoint name).
        Ok(listed
            .common_prefixes
            .iter()
            .filter(|p| {
                p.prefix_match(&prefix)
                    .is_some_and(|mut rest| rest.next().is_some() && rest.next().is_none())
            })
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|name| !name.is_empty() && name != "." && name != "..")
            .collect())
    }

    fn read(
        &self,
        kind: Kind,
        name: &str,
        file: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, CkptError> {
        let path = self.path(&[kind.as_str(), name, file]);
        self.block(async {
            let Some(result) = self.call_found(&path, self.store.get(&path)).await? else {
                return Ok(None);
            };
            if result.meta.size > limit {
                return Err(CkptError::TooLarge {
                    location: self.location(&path),
                    size: result.meta.size,
                    limit,
                });
            }
            let bytes = self.call(&path, result.bytes()).await?;
            Ok(Some(bytes.to_vec()))
        })
    }

    fn open(&self, kind: Kind, name: &str, file: &str) -> Result<Option<Sized<'_>>, CkptError> {
        let path = self.path(&[kind.as_str(), name, file]);
        let Some(meta) = self.block(self.call_found(&path, self.store.head(&path)))? else {
            return Ok(None);
        };
        let size = meta.size;
        let reader = ObjectReader {
            objects: self,
            path,
            next: 0,
            size,
            pending: std::collections::VecDeque::new(),
            buffer: bytes::Bytes::new(),
        };
        Ok(Some((Box::new(reader), size)))
    }

    fn remove(&self, kind: Kind, name: &str) -> Result<(), CkptError> {
        let manifest = self.path(&[kind.as_str(), name, MANIFEST]);
        let dir = self.path(&[kind.as_str(), name]);
        self.block(async {
            // The manifest first: from then on nothing under the prefix loads.
            self.call_found(&manifest, self.store.delete(&manifest))
                .await?;
            let listed = self
                .call(&dir, self.store.list_with_delimiter(Some(&dir)))
                .await?;
            for object in listed.objects {
                let location = &object.location;
                self.call_found(location, self.store.delete(location))
                    .await?;
            }
            Ok(())
        })
    }

    fn abandoned(&self, kind: Kind, name: &str) -> Result<bool, CkptError> {
        let marker = self.path(&[kind.as_str(), name, WRITE_MARKER]);
        match self.block(self.call_found(&marker, self.store.head(&marker)))? {
            Some(meta) => {
                let now = crate::store::now_ms();
                let age =
                    i64::try_from(now).unwrap_or(i64::MAX) - meta.last_modified.timestamp_millis();
                Ok(age > ABANDONED_AFTER_MS)
            }
            None => Ok(false),
        }
    }

    fn clean_temporaries(&self) -> Result<Vec<String>, CkptError> {
        Ok(Vec::new())
    }
}
