//! `keel hash`: a fingerprint of an installed prefix, per package and per file, with one root
//! hash that is the same on every machine that has the same install.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use globset::{Glob, GlobSet, GlobSetBuilder};
use memchr::memmem::Finder;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::PrefixError;
use crate::meta::{read_records, slash_path};
use crate::paths::{enclosed_str, open_regular, read_regular, read_regular_text};

/// The most keel reads of a fingerprint file (a 100,000-file prefix's is about 30 MiB).
const FINGERPRINT_LIMIT: u64 = 1 << 30;

/// The schema version of [`Fingerprint`]. A fingerprint of another version is refused.
pub const FINGERPRINT_SCHEMA: u32 = 1;

/// What stands for the prefix path in hashed contents and symlink targets.
pub const PREFIX_PLACEHOLDER: &str = "${PREFIX}";

/// The stat cache's own format version.
const CACHE_VERSION: u32 = 1;

/// How long before the previous run's start a file must have last changed for its cached hash
/// to be trusted (file-system clocks tick in up to 10 ms steps).
const SETTLE_NS: i128 = 100_000_000;

/// Files at least this large are hashed in chunks with BLAKE3's multithreaded `update_rayon`.
const LARGE_FILE: u64 = 4 << 20;

/// How a prefix is fingerprinted.
#[derive(Debug, Clone, Default)]
pub struct HashOptions {
    /// The folder for the stat cache (`None`: no cache). One file per prefix path lives there.
    pub cache_dir: Option<PathBuf>,
    /// Hash every file, ignoring (and then refreshing) the stat cache.
    pub full: bool,
    /// Glob patterns, relative to the prefix (`**/__pycache__/**`), of files to leave out.
    pub exclude: Vec<String>,
    /// How this node is named in the fingerprint (default: the host name).
    pub label: Option<String>,
    /// Threads to hash with (default: one per core).
    pub threads: Option<usize>,
    /// Told how much there is to hash and how it goes (for a progress bar).
    pub progress: Option<Arc<dyn HashProgress>>,
}

/// Progress of a fingerprint, for a progress bar. Called from the hashing threads.
pub trait HashProgress: Send + Sync + std::fmt::Debug {
    /// The walk is done: this many files and bytes are to be fingerprinted.
    fn total(&self, files: u64, bytes: u64);
    /// One more file is done (hashed, or found unchanged in the stat cache).
    fn file_done(&self, bytes: u64);
}

/// A fingerprint of one installed prefix (`keel hash --json`).
///
/// `root` covers `schema`, `packages` and `files` only, so the same install at another path
/// or on another machine has the same root: contents are hashed with the prefix path replaced
/// by [`PREFIX_PLACEHOLDER`] (conda writes the prefix into text and binary files at install).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// [`FINGERPRINT_SCHEMA`].
    pub schema: u32,
    /// BLAKE3 of the canonical JSON of `schema`, `packages` and `files`.
    pub root: String,
    /// The node this fingerprint was taken on (host name unless given).
    pub label: String,
    /// The prefix path on that node (not part of `root`).
    pub prefix: PathBuf,
    /// The keel version that took it.
    pub keel_version: String,
    /// Counts, for the human summary.
    pub summary: Summary,
    /// The installed conda packages, by name.
    pub packages: Vec<PackageFingerprint>,
    /// Every file, symlink, FIFO, socket and device under the prefix except `conda-meta/` and
    /// `CACHEDIR.TAG`, by path.
    pub files: Vec<FileFingerprint>,
}

/// Counts over a fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Conda packages.
    pub packages: usize,
    /// Regular files.
    pub files: usize,
    /// Symlinks.
    pub symlinks: usize,
    /// Bytes in regular files (as hashed).
    pub bytes: u64,
    /// FIFOs, sockets and devices (listed, never opened).
    #[serde(default)]
    pub special: usize,
    /// Files that belong to no conda package.
    pub unowned: usize,
    /// Files whose contents held the prefix path.
    pub prefix_files: usize,
}

/// One installed conda package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageFingerprint {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Build string.
    pub build: String,
    /// Subdir the package came from (`linux-64`, `noarch`).
    pub subdir: String,
    /// The channel it came from, as recorded in conda-meta (credentials removed).
    pub channel: Option<String>,
    /// sha256 of the package archive, when recorded.
    pub sha256: Option<String>,
    /// How many files the package installed.
    pub files: usize,
}

/// What a path in the prefix is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A symbolic link (never followed).
    Symlink,
    /// A named pipe (never opened: reading one blocks until a writer comes).
    Fifo,
    /// A Unix socket (never opened).
    Socket,
    /// A block or character device (never opened).
    Device,
}

impl FileKind {
    /// The kind of a walked entry (its `lstat`), `None` for a directory.
    fn of(file_type: std::fs::FileType) -> Option<Self> {
        if file_type.is_dir() {
            return None;
        }
        if file_type.is_file() {
            return Some(FileKind::File);
        }
        if file_type.is_symlink() {
            return Some(FileKind::Symlink);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt as _;
            if file_type.is_fifo() {
                return Some(FileKind::Fifo);
            }
            if file_type.is_socket() {
                return Some(FileKind::Socket);
            }
        }
        Some(FileKind::Device)
    }
}

/// One file or symlink of the prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFingerprint {
    /// Path relative to the prefix, `/`-separated.
    pub path: String,
    /// File or symlink.
    pub kind: FileKind,
    /// Size in bytes of the hashed contents (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// BLAKE3 of the contents, prefix path replaced (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// The owner's execute bit (the other mode bits follow the umask and are not drift).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub executable: bool,
    /// The contents held the prefix path, which was replaced before hashing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefix_replaced: bool,
    /// The link target as stored, the prefix path replaced (symlinks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The conda package that installed this path, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// What one `fingerprint` call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashStats {
    /// Files whose contents were read and hashed.
    pub hashed: usize,
    /// Files whose hash came from the stat cache.
    pub cached: usize,
    /// Bytes read and hashed.
    pub bytes_hashed: u64,
}

/// The part of a fingerprint that `root` covers.
#[derive(Serialize)]
struct RootInput<'a> {
    schema: u32,
    packages: &'a [PackageFingerprint],
    files: &'a [FileFingerprint],
}

impl Fingerprint {
    /// Reads a fingerprint written by `keel hash --json`, refusing other schemas and files
    /// whose root does not match their contents.
    pub fn from_path(path: &Path) -> Result<Self, PrefixError> {
        let text = read_regular_text(path, FINGERPRINT_LIMIT, "fingerprints")?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| PrefixError::FingerprintJson {
                path: path.to_path_buf(),
                source,
            })?;
        let schema_error = |reason: String| PrefixError::FingerprintSchema {
            path: path.to_path_buf(),
            expected: FINGERPRINT_SCHEMA,
            reason,
        };
        match value.get("schema").and_then(serde_json::Value::as_u64) {
            Some(schema) if schema == u64::from(FINGERPRINT_SCHEMA) => {}
            Some(schema) => return Err(schema_error(format!("it has schema {schema}"))),
            None => return Err(schema_error("it has no `schema` field".to_string())),
        }
        let fingerprint: Fingerprint =
            serde_json::from_value(value).map_err(|source| PrefixError::FingerprintJson {
                path: path.to_path_buf(),
                source,
            })?;
        // Paths are relative to a prefix; one that could leave it is not a fingerprint keel
        // wrote (and nothing downstream should ever join it).
        for file in &fingerprint.files {
            if let Err(reason) = enclosed_str(&file.path) {
                return Err(schema_error(format!(
                    "it lists the path {:?} ({reason})",
                    file.path
                )));
            }
        }
        let root = root_hash(&fingerprint.packages, &fingerprint.files);
        if root != fingerprint.root {
            return Err(schema_error(format!(
                "its root {} does not match its contents ({root}); the file was edited or truncated",
                fingerprint.root
            )));
        }
        Ok(fingerprint)
    }
}

fn root_hash(packages: &[PackageFingerprint], files: &[FileFingerprint]) -> String {
    let input = RootInput {
        schema: FINGERPRINT_SCHEMA,
        packages,
        files,
    };
    let bytes = serde_json::to_vec(&input).expect("fingerprint types always serialize");
    blake3::hash(&bytes).to_hex().to_string()
}

/// The stat cache of one prefix: what each file looked like when it was last hashed.
///
/// Stored with postcard (a compact binary serde format): it is read on every `keel hash`, and
/// a JSON cache of a 20,000-file prefix takes longer to parse than the prefix takes to stat.
#[derive(Debug, Serialize, Deserialize)]
struct StatCache {
    version: u32,
    prefix: PathBuf,
    /// When the hashing that wrote this cache started (ns since the epoch). Entries changed
    /// at or after it may have changed again unseen ("racily clean" in git's words).
    started_ns: i128,
    entries: Vec<(String, CacheEntry)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    stat: Stat,
    size: u64,
    blake3: [u8; 32],
    prefix_replaced: bool,
}

/// A loaded cache, by path.
struct LoadedCache {
    started_ns: i128,
    entries: HashMap<String, CacheEntry>,
}

/// What the cache compares: a file with the same stat is taken to have the same contents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Stat {
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
    device: u64,
    executable: bool,
}

impl Stat {
    fn of(metadata: &std::fs::Metadata) -> Self {
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

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |duration| duration.as_nanos() as i128)
}

/// The cache file for one prefix path inside `cache_dir`.
fn cache_file(cache_dir: &Path, prefix: &Path) -> PathBuf {
    let key = blake3::hash(prefix.as_os_str().as_encoded_bytes()).to_hex();
    cache_dir.join(format!("{}.stat-cache", &key[..32]))
}

/// The cache of `prefix`, when there is a readable one of this version. A damaged cache is
/// ignored (every file is hashed), never trusted.
fn load_cache(path: &Path, prefix: &Path) -> Option<LoadedCache> {
    let bytes = read_regular(path, FINGERPRINT_LIMIT, "stat caches").ok()?;
    let cache: StatCache = postcard::from_bytes(&bytes).ok()?;
    (cache.version == CACHE_VERSION && cache.prefix == prefix).then(|| LoadedCache {
        started_ns: cache.started_ns,
        entries: cache.entries.into_iter().collect(),
    })
}

fn save_cache(path: &Path, cache: &StatCache) -> Result<(), PrefixError> {
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

/// The absolute forms of the prefix path whose occurrences are replaced before hashing.
fn prefix_spellings(prefix: &Path) -> Vec<Vec<u8>> {
    let mut spellings: Vec<Vec<u8>> = Vec::new();
    let absolute = std::path::absolute(prefix).unwrap_or_else(|_| prefix.to_path_buf());
    for path in [Some(absolute), std::fs::canonicalize(prefix).ok()]
        .into_iter()
        .flatten()
    {
        let bytes = path.as_os_str().as_encoded_bytes().to_vec();
        // A root-like prefix would match everywhere; such prefixes are not replaced.
        if bytes.len() >= 4 && !spellings.contains(&bytes) {
            spellings.push(bytes);
        }
    }
    // The longest first, so that `/a/b` does not stop `/a/b/c` from matching.
    spellings.sort_by_key(|bytes| std::cmp::Reverse(bytes.len()));
    spellings
}

struct Hashed {
    size: u64,
    blake3: [u8; 32],
    prefix_replaced: bool,
}

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Hashes one file, replacing the prefix path in its contents when it holds it.
fn hash_file(path: &Path, len: u64, finders: &[Finder<'_>]) -> std::io::Result<Hashed> {
    // The walk saw a regular file (lstat); the handle is checked again, so a FIFO put in its
    // place meanwhile is an error, not a read that never ends.
    let mut file = open_regular(path)?;
    let longest = finders.iter().map(|f| f.needle().len()).max().unwrap_or(0);
    if len < LARGE_FILE {
        return BUFFER.with_borrow_mut(|buffer| {
            buffer.clear();
            file.read_to_end(buffer)?;
            if finders.iter().any(|finder| finder.find(buffer).is_some()) {
                let normalized = replace_prefix(buffer, finders);
                return Ok(Hashed {
                    size: normalized.len() as u64,
                    blake3: *blake3::hash(&normalized).as_bytes(),
                    prefix_replaced: true,
                });
            }
            Ok(Hashed {
                size: buffer.len() as u64,
                blake3: *blake3::hash(buffer).as_bytes(),
                prefix_replaced: false,
            })
        });
    }
    // Large files: stream in chunks, hashing each with all cores, and look for the prefix
    // across chunk boundaries. A file that holds it is re-read whole and replaced.
    let mut hasher = blake3::Hasher::new();
    let mut chunk = vec![0u8; LARGE_FILE as usize];
    let mut tail: Vec<u8> = Vec::new();
    let mut size = 0u64;
    loop {
        let read = read_full(&mut file, &mut chunk)?;
        if read == 0 {
            break;
        }
        let data = &chunk[..read];
        let mut window = std::mem::take(&mut tail);
        window.extend_from_slice(&data[..data.len().min(longest)]);
        let found = finders
            .iter()
            .any(|finder| finder.find(&window).is_some() || finder.find(data).is_some());
        if found {
            // The same handle, so that what is hashed is the file that was checked.
            std::io::Seek::rewind(&mut file)?;
            let mut contents = Vec::new();
            file.read_to_end(&mut contents)?;
            let normalized = replace_prefix(&contents, finders);
            return Ok(Hashed {
                size: normalized.len() as u64,
                blake3: *blake3::hash(&normalized).as_bytes(),
                prefix_replaced: true,
            });
        }
        tail = data[data.len().saturating_sub(longest)..].to_vec();
        hasher.update_rayon(data);
        size += read as u64;
    }
    Ok(Hashed {
        size,
        blake3: *hasher.finalize().as_bytes(),
        prefix_replaced: false,
    })
}

fn read_full(file: &mut fs_err::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// The contents with every occurrence of the prefix replaced by [`PREFIX_PLACEHOLDER`].
///
/// In binary files (a NUL in the first 8,000 bytes, git's rule) conda replaces the prefix
/// inside a NUL-terminated string and pads the string with NULs to keep offsets; the padding
/// length depends on the prefix length, so the run of NULs ending such a string is written as
/// one NUL.
fn replace_prefix(contents: &[u8], finders: &[Finder<'_>]) -> Vec<u8> {
    let binary = memchr::memchr(0, &contents[..contents.len().min(8000)]).is_some();
    let mut out = Vec::with_capacity(contents.len());
    let mut position = 0;
    while position < contents.len() {
        let next = finders
            .iter()
            .filter_map(|finder| {
                finder
                    .find(&contents[position..])
                    .map(|at| (at, finder.needle().len()))
            })
            // The earliest match; at equal starts the longest spelling.
            .min_by_key(|&(at, len)| (at, std::cmp::Reverse(len)));
        let Some((at, len)) = next else {
            out.extend_from_slice(&contents[position..]);
            break;
        };
        out.extend_from_slice(&contents[position..position + at]);
        out.extend_from_slice(PREFIX_PLACEHOLDER.as_bytes());
        position += at + len;
        if binary {
            // Copy the rest of this C string (replacing further prefixes in it), then one NUL
            // for the whole run of padding.
            let end =
                memchr::memchr(0, &contents[position..]).map_or(contents.len(), |i| position + i);
            let rest = &contents[position..end];
            if finders.iter().any(|finder| finder.find(rest).is_some()) {
                continue;
            }
            out.extend_from_slice(rest);
            position = end;
            if position < contents.len() {
                out.push(0);
                while position < contents.len() && contents[position] == 0 {
                    position += 1;
                }
            }
        }
    }
    out
}

/// Replaces the prefix at the start of an absolute symlink target.
fn normalize_target(target: &Path, spellings: &[Vec<u8>]) -> String {
    let bytes = target.as_os_str().as_encoded_bytes();
    for spelling in spellings {
        if let Some(rest) = bytes.strip_prefix(spelling.as_slice())
            && (rest.is_empty() || rest[0] == b'/' || rest[0] == b'\\')
        {
            return format!("{PREFIX_PLACEHOLDER}{}", String::from_utf8_lossy(rest));
        }
    }
    target.to_string_lossy().into_owned()
}

fn exclude_set(patterns: &[String]) -> Result<GlobSet, PrefixError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = Glob::new(pattern).map_err(|source| PrefixError::Exclude {
            pattern: pattern.clone(),
            source,
        })?;
        builder.add(glob);
    }
    builder.build().map_err(|source| PrefixError::Exclude {
        pattern: patterns.join(", "),
        source,
    })
}

/// What installers keep at the top of a prefix about the prefix (package records, history,
/// rattler's backup-exclusion tag): not environment contents, never fingerprinted.
const INSTALLER_FILES: [&str; 2] = ["conda-meta", "CACHEDIR.TAG"];

/// One path found by the walk.
pub(crate) struct Found {
    /// Relative to the prefix, `/`-separated.
    pub(crate) relative: String,
    pub(crate) path: PathBuf,
    pub(crate) kind: FileKind,
    /// The file's `lstat`, taken during the walk (files only).
    stat: Option<Stat>,
}

/// Every file and symlink under `prefix` except [`INSTALLER_FILES`] and the excluded, by path.
/// Directories are read in parallel (on the current rayon pool), and each file is `lstat`ed
/// relative to its open directory (`DirEntry::metadata`), which spares the kernel a lookup of
/// the whole path per file.
pub(crate) fn walk_prefix(prefix: &Path, excluded: &GlobSet) -> Result<Vec<Found>, PrefixError> {
    let mut found = walk_dir(prefix.to_path_buf(), String::new(), excluded)?;
    found.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(found)
}

fn walk_dir(dir: PathBuf, relative: String, excluded: &GlobSet) -> Result<Vec<Found>, PrefixError> {
    let mut found = Vec::new();
    let mut subdirs = Vec::new();
    // fs-err's errors name the directory or file.
    for entry in fs_err::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if relative.is_empty() && INSTALLER_FILES.iter().any(|installer| name == *installer) {
            continue;
        }
        let name = name.to_string_lossy();
        let path_in_prefix = if relative.is_empty() {
            name.into_owned()
        } else {
            format!("{relative}/{name}")
        };
        let file_type = entry.file_type()?;
        // FIFOs, sockets and devices are listed as what they are, never opened.
        let Some(kind) = FileKind::of(file_type) else {
            subdirs.push((entry.path(), path_in_prefix));
            continue;
        };
        if excluded.is_match(&path_in_prefix) {
            continue;
        }
        let stat = if file_type.is_file() {
            Some(Stat::of(&entry.metadata()?))
        } else {
            None
        };
        found.push(Found {
            relative: path_in_prefix,
            path: entry.path(),
            kind,
            stat,
        });
    }
    let nested: Vec<Result<Vec<Found>, PrefixError>> = subdirs
        .into_par_iter()
        .map(|(path, relative)| walk_dir(path, relative, excluded))
        .collect();
    for files in nested {
        found.extend(files?);
    }
    Ok(found)
}

/// A channel as recorded, without user names, passwords, `/t/<token>/` or query strings: the
/// fingerprint is shared with other nodes and must not carry credentials.
fn strip_credentials(channel: &str) -> String {
    match url::Url::parse(channel) {
        Ok(url) => rattler_redaction::strip_url_for_serialization(&url).to_string(),
        Err(_) => channel.to_string(),
    }
}

/// One walked path: its fingerprint, its cache entry (files only), whether that came from the
/// cache.
type Walked = (FileFingerprint, Option<CacheEntry>, bool);

/// The host name of this machine, for labelling fingerprints.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            fs_err::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_string())
        })
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Fingerprints the prefix: every conda package and every file, in parallel.
///
/// Fails (rather than returning a partial fingerprint) when the prefix is not a conda prefix,
/// a `conda-meta` record is corrupted, or a file cannot be read.
pub fn fingerprint(
    prefix: &Path,
    options: &HashOptions,
) -> Result<(Fingerprint, HashStats), PrefixError> {
    let started_ns = now_ns();
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(threads) = options.threads {
        pool = pool.num_threads(threads);
    }
    let pool = Arc::new(
        pool.build()
            .map_err(|error| PrefixError::Io(std::io::Error::other(error)))?,
    );
    let prefix = std::path::absolute(prefix)?;
    let records = read_records(&prefix)?;
    let excluded = exclude_set(&options.exclude)?;

    let mut owners: HashMap<String, String> = HashMap::new();
    let mut packages = Vec::with_capacity(records.len());
    for (_, record) in &records {
        let package = &record.repodata_record.package_record;
        let name = package.name.as_normalized().to_string();
        for file in &record.files {
            owners.insert(slash_path(file), name.clone());
        }
        packages.push(PackageFingerprint {
            name,
            version: package.version.to_string(),
            build: package.build.to_string(),
            subdir: package.subdir.clone(),
            channel: record
                .repodata_record
                .channel
                .as_deref()
                .map(strip_credentials),
            sha256: package.sha256.map(hex::encode),
            files: record.files.len(),
        });
    }

    let cache_path = options
        .cache_dir
        .as_deref()
        .map(|dir| cache_file(dir, &prefix));
    // The cache is read while the prefix is walked.
    let (previous, found) = std::thread::scope(|scope| {
        let loader = scope.spawn(|| match (&cache_path, options.full) {
            (Some(path), false) => load_cache(path, &prefix),
            _ => None,
        });
        let found = pool.install(|| walk_prefix(&prefix, &excluded));
        (loader.join().ok().flatten(), found)
    });
    let found = found?;
    if let Some(progress) = &options.progress {
        let bytes = found
            .iter()
            .filter_map(|item| item.stat.map(|stat| stat.len))
            .sum();
        progress.total(found.len() as u64, bytes);
    }

    let spellings = prefix_spellings(&prefix);
    let finders: Vec<Finder<'_>> = spellings.iter().map(Finder::new).collect();
    let results: Vec<Result<Walked, PrefixError>> = pool.install(|| {
        found
            .par_iter()
            .map(|item| {
                let result =
                    fingerprint_one(item, &owners, previous.as_ref(), &spellings, &finders);
                if let Some(progress) = &options.progress {
                    progress.file_done(item.stat.map_or(0, |stat| stat.len));
                }
                result
            })
            .collect()
    });

    let mut walked = Vec::with_capacity(results.len());
    let mut stats = HashStats::default();
    let mut summary = Summary {
        packages: packages.len(),
        ..Summary::default()
    };
    for result in results {
        let (file, entry, from_cache) = result?;
        match file.kind {
            FileKind::File => {
                summary.files += 1;
                summary.bytes += file.size.unwrap_or(0);
                if from_cache {
                    stats.cached += 1;
                } else {
                    stats.hashed += 1;
                    stats.bytes_hashed += entry.as_ref().map_or(0, |entry| entry.stat.len);
                }
            }
            FileKind::Symlink => summary.symlinks += 1,
            FileKind::Fifo | FileKind::Socket | FileKind::Device => summary.special += 1,
        }
        summary.unowned += usize::from(file.owner.is_none());
        summary.prefix_files += usize::from(file.prefix_replaced);
        walked.push((file, entry));
    }

    if let Some(path) = &cache_path
        && (stats.hashed > 0 || previous.is_none())
    {
        let entries = walked
            .iter()
            .filter_map(|(file, entry)| Some((file.path.clone(), entry.clone()?)))
            .collect();
        save_cache(
            path,
            &StatCache {
                version: CACHE_VERSION,
                prefix: prefix.clone(),
                started_ns,
                entries,
            },
        )?;
    }

    let files: Vec<FileFingerprint> = walked.into_iter().map(|(file, _)| file).collect();
    let root = root_hash(&packages, &files);
    let fingerprint = Fingerprint {
        schema: FINGERPRINT_SCHEMA,
        root,
        label: options.label.clone().unwrap_or_else(host_name),
        prefix,
        keel_version: env!("CARGO_PKG_VERSION").to_string(),
        summary,
        packages,
        files,
    };
    Ok((fingerprint, stats))
}

/// One path's fingerprint, from the stat cache when its stat is unchanged and settled.
fn fingerprint_one(
    item: &Found,
    owners: &HashMap<String, String>,
    previous: Option<&LoadedCache>,
    spellings: &[Vec<u8>],
    finders: &[Finder<'_>],
) -> Result<Walked, PrefixError> {
    let unreadable = |source| PrefixError::Unreadable {
        path: item.path.clone(),
        source,
    };
    let owner = owners.get(&item.relative).cloned();
    if matches!(
        item.kind,
        FileKind::Fifo | FileKind::Socket | FileKind::Device
    ) {
        return Ok((
            FileFingerprint {
                path: item.relative.clone(),
                kind: item.kind,
                size: None,
                blake3: None,
                executable: false,
                prefix_replaced: false,
                target: None,
                owner,
            },
            None,
            false,
        ));
    }
    if item.kind == FileKind::Symlink {
        let target = fs_err::read_link(&item.path).map_err(unreadable)?;
        return Ok((
            FileFingerprint {
                path: item.relative.clone(),
                kind: FileKind::Symlink,
                size: None,
                blake3: None,
                executable: false,
                prefix_replaced: false,
                target: Some(normalize_target(&target, spellings)),
                owner,
            },
            None,
            false,
        ));
    }
    let stat = match item.stat {
        Some(stat) => stat,
        None => Stat::of(&fs_err::symlink_metadata(&item.path).map_err(unreadable)?),
    };
    let cached = previous.and_then(|cache| {
        let entry = cache.entries.get(&item.relative)?;
        // File times come from a coarse clock that can lag the real one by a tick; changes
        // this close to the last run's start are hashed again.
        let horizon = cache.started_ns - SETTLE_NS;
        let settled = stat.mtime_ns < horizon && stat.ctime_ns < horizon;
        (entry.stat == stat && settled).then(|| entry.clone())
    });
    let (entry, from_cache) = match cached {
        Some(entry) => (entry, true),
        None => {
            let hashed = hash_file(&item.path, stat.len, finders).map_err(unreadable)?;
            let entry = CacheEntry {
                stat,
                size: hashed.size,
                blake3: hashed.blake3,
                prefix_replaced: hashed.prefix_replaced,
            };
            (entry, false)
        }
    };
    Ok((
        FileFingerprint {
            path: item.relative.clone(),
            kind: FileKind::File,
            size: Some(entry.size),
            blake3: Some(blake3::Hash::from_bytes(entry.blake3).to_hex().to_string()),
            executable: stat.executable,
            prefix_replaced: entry.prefix_replaced,
            target: None,
            owner,
        },
        Some(entry),
        from_cache,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finders(spellings: &[Vec<u8>]) -> Vec<Finder<'_>> {
        spellings.iter().map(Finder::new).collect()
    }

    /// Text files: the same contents written for two prefixes of different lengths hash alike.
    #[test]
    fn text_prefix_replaced() {
        let a = vec![b"/opt/envs/a".to_vec()];
        let b = vec![b"/home/user/long/path/envs/b".to_vec()];
        let text_a = b"#!/opt/envs/a/bin/python\nprint('/opt/envs/a/lib')\n";
        let text_b =
            b"#!/home/user/long/path/envs/b/bin/python\nprint('/home/user/long/path/envs/b/lib')\n";
        assert_eq!(
            replace_prefix(text_a, &finders(&a)),
            replace_prefix(text_b, &finders(&b))
        );
        assert_eq!(
            replace_prefix(text_a, &finders(&a)),
            b"#!${PREFIX}/bin/python\nprint('${PREFIX}/lib')\n"
        );
    }

    /// Binary files: conda keeps offsets by padding the string with NULs; the padding length
    /// differs between prefixes and is not drift.
    #[test]
    fn binary_prefix_padding_collapsed() {
        let a = vec![b"/opt/envs/a".to_vec()];
        let b = vec![b"/opt/envs/bbbbbb".to_vec()];
        let mut bin_a = b"\x7fELF\0\0".to_vec();
        bin_a.extend_from_slice(b"/opt/envs/a/lib:/opt/envs/a/x\0\0\0\0\0\0\0\0\0\0\0\0\0");
        bin_a.extend_from_slice(b"tail\0");
        let mut bin_b = b"\x7fELF\0\0".to_vec();
        bin_b.extend_from_slice(b"/opt/envs/bbbbbb/lib:/opt/envs/bbbbbb/x\0\0\0");
        bin_b.extend_from_slice(b"tail\0");
        assert_eq!(bin_a.len(), bin_b.len());
        assert_eq!(
            replace_prefix(&bin_a, &finders(&a)),
            replace_prefix(&bin_b, &finders(&b))
        );
        // A changed byte elsewhere still shows.
        let mut changed = bin_b.clone();
        let last = changed.len() - 2;
        changed[last] = b'X';
        assert_ne!(
            replace_prefix(&bin_a, &finders(&a)),
            replace_prefix(&changed, &finders(&b))
        );
    }

    #[test]
    fn symlink_targets_inside_prefix() {
        let spellings = vec![b"/opt/env".to_vec()];
        assert_eq!(
            normalize_target(Path::new("/opt/env/lib/libz.so.1"), &spellings),
            "${PREFIX}/lib/libz.so.1"
        );
        assert_eq!(
            normalize_target(Path::new("/opt/envx/lib"), &spellings),
            "/opt/envx/lib"
        );
        assert_eq!(
            normalize_target(Path::new("libz.so.1"), &spellings),
            "libz.so.1"
        );
    }
}
