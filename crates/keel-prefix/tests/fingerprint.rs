//! `keel_prefix::fingerprint` on prefixes the tests write: determinism, the prefix path in
//! large files, the stat cache, symlinks that leave the prefix, excludes, unreadable files.

use std::path::Path;

use keel_prefix::{Fingerprint, HashOptions, PrefixError, fingerprint};

fn prefix() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs_err::create_dir_all(dir.path().join("conda-meta")).unwrap();
    dir
}

fn write(prefix: &Path, path: &str, contents: &[u8]) {
    let path = prefix.join(path);
    fs_err::create_dir_all(path.parent().unwrap()).unwrap();
    fs_err::write(path, contents).unwrap();
}

fn hash(prefix: &Path, options: &HashOptions) -> (Fingerprint, keel_prefix::HashStats) {
    fingerprint(prefix, options).unwrap()
}

/// The root depends on contents only: files created in another order, at another path, give
/// the same root; one changed byte gives another.
#[test]
fn root_is_independent_of_creation_order_and_path() {
    let names: Vec<String> = (0..200)
        .map(|i| format!("d{}/f{i:03}.txt", i % 7))
        .collect();
    let a = prefix();
    let b = prefix();
    for name in &names {
        write(a.path(), name, name.as_bytes());
    }
    for name in names.iter().rev() {
        write(b.path(), name, name.as_bytes());
    }
    let (fa, _) = hash(a.path(), &HashOptions::default());
    let (fb, _) = hash(b.path(), &HashOptions::default());
    assert_eq!(fa.root, fb.root);
    assert_eq!(fa.files.len(), 200);
    write(b.path(), &names[17], b"changed");
    let (fb, _) = hash(b.path(), &HashOptions::default());
    assert_ne!(fa.root, fb.root);
}

/// A large file (hashed in chunks) that holds the prefix path across a chunk boundary is
/// still found and replaced, so two installs at different paths agree.
#[test]
fn prefix_in_large_file_across_chunks() {
    let chunk = 4usize << 20;
    let a = prefix();
    let b = prefix();
    for dir in [a.path(), b.path()] {
        let path = dir.display().to_string();
        let mut contents = vec![0x55u8; chunk - path.len() / 2];
        contents.extend_from_slice(path.as_bytes());
        contents.extend_from_slice(b"/lib/python3.12\n");
        contents.extend(std::iter::repeat_n(0x66u8, chunk));
        write(dir, "lib/libbig.so", &contents);
    }
    let (fa, _) = hash(a.path(), &HashOptions::default());
    let (fb, _) = hash(b.path(), &HashOptions::default());
    assert!(fa.files[0].prefix_replaced);
    assert_eq!(fa.root, fb.root);
    // Without the prefix: the streamed hash equals BLAKE3 of the whole file.
    let c = prefix();
    let contents: Vec<u8> = (0..(9 << 20)).map(|i: u32| (i % 251) as u8).collect();
    write(c.path(), "data.bin", &contents);
    let (fc, _) = hash(c.path(), &HashOptions::default());
    assert_eq!(
        fc.files[0].blake3.as_deref(),
        Some(blake3::hash(&contents).to_hex().as_str())
    );
    assert!(!fc.files[0].prefix_replaced);
}

/// The stat cache serves unchanged files and never hides a change; `full` ignores it.
#[test]
fn stat_cache_serves_unchanged_files_only() {
    let p = prefix();
    let cache = tempfile::tempdir().unwrap();
    for i in 0..50 {
        write(p.path(), &format!("f{i}"), format!("file {i}").as_bytes());
    }
    let options = HashOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..HashOptions::default()
    };
    // Let the files' times settle before the first hash (the cache trusts only files last
    // changed before the previous hash started).
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (first, stats) = hash(p.path(), &options);
    assert_eq!((stats.hashed, stats.cached), (50, 0));
    let (second, stats) = hash(p.path(), &options);
    assert_eq!((stats.hashed, stats.cached), (0, 50));
    assert_eq!(first, second);

    // Same size, other contents.
    write(p.path(), "f7", b"FILE 7");
    let (third, stats) = hash(p.path(), &options);
    assert_eq!(stats.hashed, 1);
    assert_ne!(third.root, first.root);
    let full = HashOptions {
        full: true,
        ..options.clone()
    };
    let (fourth, stats) = hash(p.path(), &full);
    assert_eq!(stats.hashed, 50);
    assert_eq!(fourth.root, third.root);
}

/// Symlinks are recorded, never followed, wherever they point.
#[test]
fn symlinks_recorded_not_followed() {
    let p = prefix();
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret", b"outside the prefix");
    std::os::unix::fs::symlink(outside.path().join("secret"), p.path().join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.path(), p.path().join("dir-link")).unwrap();
    std::os::unix::fs::symlink(p.path().join("missing"), p.path().join("dangling")).unwrap();
    let (f, _) = hash(p.path(), &HashOptions::default());
    let paths: Vec<(&str, Option<&str>)> = f
        .files
        .iter()
        .map(|file| (file.path.as_str(), file.target.as_deref()))
        .collect();
    let escape = outside.path().join("secret").display().to_string();
    let dir_link = outside.path().display().to_string();
    assert_eq!(
        paths,
        [
            ("dangling", Some("${PREFIX}/missing")),
            ("dir-link", Some(dir_link.as_str())),
            ("escape", Some(escape.as_str())),
        ]
    );
}

#[test]
fn excludes_and_bad_patterns() {
    let p = prefix();
    write(p.path(), "lib/a.py", b"a");
    write(p.path(), "lib/__pycache__/a.cpython-312.pyc", b"\x00");
    let options = HashOptions {
        exclude: vec!["**/__pycache__/**".into()],
        ..HashOptions::default()
    };
    let (f, _) = hash(p.path(), &options);
    assert_eq!(f.files.len(), 1);
    let bad = HashOptions {
        exclude: vec!["lib/[".into()],
        ..HashOptions::default()
    };
    let error = fingerprint(p.path(), &bad).unwrap_err();
    assert!(matches!(error, PrefixError::Exclude { .. }), "{error}");
}

/// A file that cannot be read fails the fingerprint (never a partial one) and names the file.
#[test]
fn unreadable_file_names_the_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let p = prefix();
    write(p.path(), "lib/locked.so", b"x");
    let path = p.path().join("lib/locked.so");
    fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    if fs_err::File::open(&path).is_ok() {
        // Running as root: permissions do not stop reads, nothing to test here.
        return;
    }
    let error = fingerprint(p.path(), &HashOptions::default()).unwrap_err();
    assert!(error.to_string().contains("locked.so"), "{error}");
}

#[test]
fn not_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let error = fingerprint(dir.path(), &HashOptions::default()).unwrap_err();
    assert!(matches!(error, PrefixError::NotAPrefix(_)), "{error}");
}

/// Progress is told the totals after the walk and every file once, cached or hashed.
#[test]
fn progress_counts_every_file_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Debug, Default)]
    struct Count {
        files: AtomicU64,
        bytes: AtomicU64,
        done_files: AtomicU64,
        done_bytes: AtomicU64,
    }
    impl keel_prefix::HashProgress for Count {
        fn total(&self, files: u64, bytes: u64) {
            self.files.store(files, Ordering::SeqCst);
            self.bytes.store(bytes, Ordering::SeqCst);
        }
        fn file_done(&self, bytes: u64) {
            self.done_files.fetch_add(1, Ordering::SeqCst);
            self.done_bytes.fetch_add(bytes, Ordering::SeqCst);
        }
    }
    let p = prefix();
    for i in 0..30 {
        write(p.path(), &format!("d/f{i}"), &vec![b'x'; i * 100]);
    }
    std::os::unix::fs::symlink("d/f1", p.path().join("link")).unwrap();
    let count = Arc::new(Count::default());
    let options = HashOptions {
        progress: Some(count.clone()),
        ..HashOptions::default()
    };
    hash(p.path(), &options);
    let expected_bytes: u64 = (0..30).map(|i| i * 100).sum();
    assert_eq!(count.files.load(Ordering::SeqCst), 31);
    assert_eq!(count.done_files.load(Ordering::SeqCst), 31);
    assert_eq!(count.bytes.load(Ordering::SeqCst), expected_bytes);
    assert_eq!(count.done_bytes.load(Ordering::SeqCst), expected_bytes);
}
