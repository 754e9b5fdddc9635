//! `keel hash`: a fingerprint of an installed prefix, per package and per file, with one root
//! hash that is the same on every machine that has the same install.
//!
//! `walk` lists the prefix, `cache` keeps what each file looked like when it was last hashed,
//! `normalize` hashes contents with the prefix path replaced; this module puts them together.

mod cache;
mod normalize;
mod walk;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memchr::memmem::Finder;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::PrefixError;
use crate::meta::{read_records, slash_path};
use crate::paths::{enclosed_str, read_regular_text};
use cache::{
    CACHE_VERSION, CacheEntry, LoadedCache, Stat, StatCache, cache_file, load_cache, now_ns,
    save_cache,
};
use normalize::{hash_file, normalize_target, prefix_spellings};
pub(crate) use walk::walk_prefix;
use walk::{Found, exclude_set};

/// The most keel reads of a fingerprint file (a 100,000-file prefix's is about 30 MiB).
const FINGERPRINT_LIMIT: u64 = 1 << 30;

/// The schema version of [`Fingerprint`]. A fingerprint of another version is refused.
pub const FINGERPRINT_SCHEMA: u32 = 1;

/// What stands for the prefix path in hashed contents and symlink targets.
pub const PREFIX_PLACEHOLDER: &str = "${PREFIX}";

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
    /// Every file, symlink, FIFO, socket and device under the prefix except `conda-meta/`,
    /// `CACHEDIR.TAG` and uv's `.lock`, by path.
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

/// The `schema` of a fingerprint file, read before the rest (which it skips).
#[derive(Deserialize)]
struct SchemaProbe {
    #[serde(default)]
    schema: Option<serde_json::Value>,
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
        let json_error = |source| PrefixError::FingerprintJson {
            path: path.to_path_buf(),
            source,
        };
        let schema_error = |reason: String| PrefixError::FingerprintSchema {
            path: path.to_path_buf(),
            expected: FINGERPRINT_SCHEMA,
            reason,
        };
        // The schema first, skipping the rest unread (no `serde_json::Value` of the whole
        // file: its allocations were most of `keel diff`'s time, and grew with the nodes).
        // Valid JSON that is not an object has no schema either.
        let schema = if text.trim_start().starts_with('{') {
            serde_json::from_str::<SchemaProbe>(&text)
                .map_err(json_error)?
                .schema
        } else {
            serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(json_error)?;
            None
        };
        match schema.as_ref().and_then(serde_json::Value::as_u64) {
            Some(schema) if schema == u64::from(FINGERPRINT_SCHEMA) => {}
            Some(schema) => return Err(schema_error(format!("it has schema {schema}"))),
            None => return Err(schema_error("it has no `schema` field".to_string())),
        }
        let fingerprint: Fingerprint = serde_json::from_str(&text).map_err(json_error)?;
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
    let cached = previous.and_then(|cache| cache.trusted(&item.relative, &stat));
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

    fn sample() -> Fingerprint {
        let files = vec![FileFingerprint {
            path: "lib/a.py".to_string(),
            kind: FileKind::File,
            size: Some(3),
            blake3: Some(blake3::hash(b"abc").to_hex().to_string()),
            executable: false,
            prefix_replaced: false,
            target: None,
            owner: None,
        }];
        Fingerprint {
            schema: FINGERPRINT_SCHEMA,
            root: root_hash(&[], &files),
            label: "node0".to_string(),
            prefix: PathBuf::from("/opt/env"),
            keel_version: "0.1.0".to_string(),
            summary: Summary::default(),
            packages: Vec::new(),
            files,
        }
    }

    fn read(dir: &Path, text: &str) -> Result<Fingerprint, PrefixError> {
        let path = dir.join("node.json");
        fs_err::write(&path, text).unwrap();
        Fingerprint::from_path(&path)
    }

    /// What `from_path` accepts and how it refuses the rest (read straight into the types,
    /// with the schema checked first): a written fingerprint reads back equal; another schema,
    /// a missing one and a document that is no object are schema errors naming the file; text
    /// that is no JSON, or a field of the wrong type, is a JSON error naming the file.
    #[test]
    fn from_path_reads_what_hash_writes_and_names_the_file_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let print = sample();
        let text = serde_json::to_string_pretty(&print).unwrap();
        assert_eq!(read(dir.path(), &text).unwrap(), print);

        let mut value = serde_json::to_value(&print).unwrap();
        value["schema"] = serde_json::json!(2);
        let error = read(dir.path(), &value.to_string()).unwrap_err();
        assert!(
            matches!(error, PrefixError::FingerprintSchema { .. })
                && error.to_string().contains("node.json"),
            "{error}"
        );
        value.as_object_mut().unwrap().remove("schema");
        let error = read(dir.path(), &value.to_string()).unwrap_err();
        assert!(
            matches!(&error, PrefixError::FingerprintSchema { reason, .. } if reason.contains("no `schema`")),
            "{error}"
        );
        let error = read(dir.path(), "[1, 2]").unwrap_err();
        assert!(
            matches!(error, PrefixError::FingerprintSchema { .. }),
            "{error}"
        );
        let error = read(dir.path(), "{\"schema\": 1, ").unwrap_err();
        assert!(
            matches!(error, PrefixError::FingerprintJson { .. })
                && error.to_string().contains("node.json"),
            "{error}"
        );
        let mut value = serde_json::to_value(&print).unwrap();
        value["files"][0]["size"] = serde_json::json!("three");
        let error = read(dir.path(), &value.to_string()).unwrap_err();
        assert!(
            matches!(error, PrefixError::FingerprintJson { .. }),
            "{error}"
        );
        // An edited file still fails its root.
        let mut value = serde_json::to_value(&print).unwrap();
        value["files"][0]["size"] = serde_json::json!(4);
        let error = read(dir.path(), &value.to_string()).unwrap_err();
        assert!(error.to_string().contains("does not match"), "{error}");
    }
}
