//! The stat cache: what each file of a prefix looked like when it was last hashed, so that an
//! unchanged file is not read again. A damaged cache is ignored, never trusted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::FINGERPRINT_LIMIT;
use crate::PrefixError;
use crate::paths::read_regular;

/// The stat cache's own format version.
pub(super) const CACHE_VERSION: u32 = 1;

/// How long before the previous run's start a file must have last changed for its cached hash
/// to be trusted (file-system clocks tick in up to 10 ms steps).
const SETTLE_NS: i128 = 100_000_000;

/// The stat cache of one prefix: what each file looked like when it was last hashed.
///
/// Stored with postcard (a compact binary serde format): it is read on every `keel hash`, and
/// a JSON cache of a 20,000-file prefix takes longer to parse than the prefix takes to stat.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StatCache {
    pub(super) version: u32,
    pub(super) prefix: PathBuf,
    /// When the hashing that wrote this cache started (ns since the epoch). Entries changed
    /// at or after it may have changed again unseen ("racily clean" in git's words).
    pub(super) started_ns: i128,
    pub(super) entries: Vec<(String, CacheEntry)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CacheEntry {
    pub(super) stat: Stat,
    pub(super) size: u64,
    pub(super) blake3: [u8; 32],
    pub(super) prefix_replaced: bool,
}

/// A loaded cache, by path.
pub(super) struct LoadedCache {
    started_ns: i128,
    entries: HashMap<String, CacheEntry>,
}

impl LoadedCache {
    /// The cached entry of `relative`, when the file's stat is the cached one and it last
    /// changed more than [`SETTLE_NS`] before the run that cached it started: file times come
    /// from a coarse clock that can lag the real one by a tick, so changes this close to the
    /// last run's start are hashed again.
    pub(super) fn trusted(&self, relative: &str, stat: &Stat) -> Option<CacheEntry> {
        let entry = self.entries.get(relative)?;
        let horizon = self.started_ns - SETTLE_NS;
        let settled = stat.mtime_ns < horizon && stat.ctime_ns < horizon;
        (entry.stat == *stat && settled).then(|| entry.clone())
    }
}

/// What the cache compares: a file with the same stat is taken to have the same contents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Stat {
    pub(super) len: u64,
    pub(super) mtime_ns: i128,
    pub(super) ctime_ns: i128,
    pub(super) inode: u64,
    pub(super) device: u64,
    pub(super) executable: bool,
}

impl Stat {
    pub(super) fn of(metadata: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Stat {
                len: metadata.len(),
                mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                    + i128::from(metadata.mtime_nsec()),
                ctime_ns: i128::from(metadata.ctime()) * 1_000_000_000
                    + i128::from(metadata.ctime_nsec()),
                inode: metadata.ino(),
                device: metadata.dev(),
                executable: metadata.mode() & 0o100 != 0,
            }
        }
        #[cfg(not(unix))]
        {
            let mtime_ns = metadata
                .modified()
                .ok()
                .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |duration| duration.as_nanos() as i128);
            Stat {
                len: metadata.len(),
                mtime_ns,
                ctime_ns: mtime_ns,
                inode: 0,
                device: 0,
                executable: false,
            }
        }
    }
}

pub(super) fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |duration| duration.as_nanos() as i128)
}

/// The cache file for one prefix path inside `cache_dir`.
pub(super) fn cache_file(cache_dir: &Path, prefix: &Path) -> PathBuf {
    let key = blake3::hash(prefix.as_os_str().as_encoded_bytes()).to_hex();
    cache_dir.join(format!("{}.stat-cache", &key[..32]))
}

/// The cache of `prefix`, when there is a readable one of this version. A damaged cache is
/// ignored (every file is hashed), never trusted.
pub(super) fn load_cache(path: &Path, prefix: &Path) -> Option<LoadedCache> {
    let bytes = read_regular(path, FINGERPRINT_LIMIT, "stat caches").ok()?;
    let cache: StatCache = postcard::from_bytes(&bytes).ok()?;
    (cache.version == CACHE_VERSION && cache.prefix == prefix).then(|| LoadedCache {
        started_ns: cache.started_ns,
        entries: cache.entries.into_iter().collect(),
    })
}

pub(super) fn save_cache(path: &Path, cache: &StatCache) -> Result<(), PrefixError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs_err::create_dir_all(dir)?;
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(|source| {
        PrefixError::Io(std::io::Error::new(
            source.kind(),
            format!(
                "failed to create a temporary file in {}: {source}",
                dir.display()
            ),
        ))
    })?;
    let bytes = postcard::to_stdvec(cache).map_err(std::io::Error::other)?;
    std::io::Write::write_all(temp.as_file_mut(), &bytes).map_err(|source| {
        PrefixError::Io(std::io::Error::new(
            source.kind(),
            format!("failed to write {}: {source}", temp.path().display()),
        ))
    })?;
    temp.persist(path).map_err(|error| {
        PrefixError::Io(std::io::Error::new(
            error.error.kind(),
            format!("failed to write {}: {}", path.display(), error.error),
        ))
    })?;
    Ok(())
}
