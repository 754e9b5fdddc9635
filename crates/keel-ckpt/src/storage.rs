//! Where checkpoints live: a local (or NFS) folder, or S3-compatible object storage.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

use crate::CkptError;
use crate::model::{FileParts, Kind, MANIFEST};

/// The operations a store needs. A checkpoint is a folder `KIND/NAME/` of files; it counts only
/// once its manifest is there, and it is written last.
pub(crate) trait Backend: Send + Sync + std::fmt::Debug {
    /// Where, for messages.
    fn describe(&self) -> String;
    /// Writes the data files of a checkpoint durably where no reader looks for checkpoints
    /// (local: a temporary folder; objects: under the final key, which counts only once its
    /// manifest is there).
    fn write_data(&self, kind: Kind, name: &str, files: &[FileParts<'_>]) -> Result<(), CkptError>;
    /// Writes the manifest and makes the checkpoint visible: the commit point.
    fn commit(&self, kind: Kind, name: &str, manifest: &[u8]) -> Result<(), CkptError>;
    /// Removes what a failed `write_data` or `commit` left; never touches other checkpoints.
    fn abort(&self, kind: Kind, name: &str);
    /// The checkpoint folders of a kind (complete or not), unsorted.
    fn list(&self, kind: Kind) -> Result<Vec<String>, CkptError>;
    /// A file of a checkpoint; `None` when it does not exist.
    fn read(&self, kind: Kind, name: &str, file: &str) -> Result<Option<Vec<u8>>, CkptError>;
    /// Removes a checkpoint: the manifest first, so that a half-removed one is not valid.
    fn remove(&self, kind: Kind, name: &str) -> Result<(), CkptError>;
    /// Removes what interrupted writes left behind (local temporary folders).
    fn clean_temporaries(&self) -> Result<(), CkptError>;
}

/// A local or NFS folder. Writes go to a temporary folder beside the final one: each file is
/// fsynced, the manifest is written and fsynced last, the folder is fsynced, renamed into place,
/// and the parent fsynced, so a crash at any moment leaves either the whole checkpoint or none.
#[derive(Debug)]
pub(crate) struct Local {
    root: PathBuf,
}

const TEMP_PREFIX: &str = ".tmp-";

impl Local {
    pub(crate) fn new(root: &Path) -> Result<Self, CkptError> {
        fs_err::create_dir_all(root)?;
        if !root.is_dir() {
            return Err(CkptError::NotADirectory(root.to_path_buf()));
        }
        Ok(Local {
            root: root.to_path_buf(),
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

impl Backend for Local {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn write_data(&self, kind: Kind, name: &str, files: &[FileParts<'_>]) -> Result<(), CkptError> {
        let kind_dir = self.kind_dir(kind);
        if !kind_dir.is_dir() {
            fs_err::create_dir_all(&kind_dir)?;
            sync_dir(&self.root)?;
        }
        let temp = self.temp_dir(kind, name);
        if temp.exists() {
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

    fn abort(&self, kind: Kind, name: &str) {
        // Leave nothing that could be mistaken for a checkpoint; the others are untouched.
        let _ = fs_err::remove_dir_all(self.temp_dir(kind, name));
    }

    fn list(&self, kind: Kind) -> Result<Vec<String>, CkptError> {
        let dir = self.kind_dir(kind);
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        for entry in fs_err::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(TEMP_PREFIX) && entry.file_type()?.is_dir() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read(&self, kind: Kind, name: &str, file: &str) -> Result<Option<Vec<u8>>, CkptError> {
        match fs_err::read(self.kind_dir(kind).join(name).join(file)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    fn remove(&self, kind: Kind, name: &str) -> Result<(), CkptError> {
        let dir = self.kind_dir(kind).join(name);
        match fs_err::remove_file(dir.join(MANIFEST)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error.into()),
        }
        sync_dir(&dir)?;
        fs_err::remove_dir_all(&dir)?;
        Ok(())
    }

    fn clean_temporaries(&self) -> Result<(), CkptError> {
        for kind in Kind::ALL {
            let dir = self.kind_dir(kind);
            if !dir.is_dir() {
                continue;
            }
            for entry in fs_err::read_dir(&dir)? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    fs_err::remove_dir_all(entry.path())?;
                }
            }
        }
        Ok(())
    }
}

/// S3-compatible object storage (any `object_store` backend). Data objects are put first and
/// the manifest last; a checkpoint whose manifest is missing is incomplete and never loaded.
pub(crate) struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    runtime: tokio::runtime::Runtime,
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
    ) -> Result<Self, CkptError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Objects {
            store,
            prefix,
            url,
            runtime,
        })
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
    fn error(&self, location: &ObjectPath, source: object_store::Error) -> CkptError {
        let base = url::Url::parse(&self.url)
            .ok()
            .map(|url| format!("{}://{}", url.scheme(), url.host_str().unwrap_or("")))
            .unwrap_or_default();
        CkptError::Object {
            location: format!("{base}/{location}"),
            source: Box::new(source),
        }
    }
}

impl Backend for Objects {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn write_data(&self, kind: Kind, name: &str, files: &[FileParts<'_>]) -> Result<(), CkptError> {
        self.block(async {
            for file in files {
                let path = self.path(&[kind.as_str(), name, &file.name]);
                let payload: PutPayload = file.parts().map(bytes::Bytes::copy_from_slice).collect();
                self.store
                    .put(&path, payload)
                    .await
                    .map_err(|e| self.error(&path, e))?;
            }
            Ok(())
        })
    }

    fn commit(&self, kind: Kind, name: &str, manifest: &[u8]) -> Result<(), CkptError> {
        let path = self.path(&[kind.as_str(), name, MANIFEST]);
        self.block(self.store.put(&path, PutPayload::from(manifest.to_vec())))
            .map_err(|e| self.error(&path, e))?;
        Ok(())
    }

    fn abort(&self, kind: Kind, name: &str) {
        // Data objects without a manifest are never loaded; removing them is tidiness.
        let _ = self.remove(kind, name);
    }

    fn list(&self, kind: Kind) -> Result<Vec<String>, CkptError> {
        let prefix = self.path(&[kind.as_str()]);
        let listed = self
            .block(self.store.list_with_delimiter(Some(&prefix)))
            .map_err(|e| self.error(&prefix, e))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    fn read(&self, kind: Kind, name: &str, file: &str) -> Result<Option<Vec<u8>>, CkptError> {
        let path = self.path(&[kind.as_str(), name, file]);
        self.block(async {
            match self.store.get(&path).await {
                Ok(result) => match result.bytes().await {
                    Ok(bytes) => Ok(Some(bytes.to_vec())),
                    Err(e) => Err(self.error(&path, e)),
                },
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.error(&path, e)),
            }
        })
    }

    fn remove(&self, kind: Kind, name: &str) -> Result<(), CkptError> {
        let manifest = self.path(&[kind.as_str(), name, MANIFEST]);
        let dir = self.path(&[kind.as_str(), name]);
        self.block(async {
            match self.store.delete(&manifest).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(&manifest, e)),
            }
            let listed = self
                .store
                .list_with_delimiter(Some(&dir))
                .await
                .map_err(|e| self.error(&dir, e))?;
            for object in listed.objects {
                match self.store.delete(&object.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.error(&object.location, e)),
                }
            }
            Ok(())
        })
    }

    fn clean_temporaries(&self) -> Result<(), CkptError> {
        Ok(())
    }
}
