//! `read_lock` on input it does not control: the hostile locks of the bad-input corpus, and
//! the files that cannot live in git (a FIFO, a folder, a huge sparse file).

use std::path::{Path, PathBuf};

use keel_solve::{MAX_LOCK_BYTES, SolveError, read_lock};

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../keel-cli/tests/hostile/keel-lock")
}

/// A refused lock: an error (never a panic, never `Ok`) whose message names the file.
fn refused(path: &Path) -> String {
    let error = match read_lock(path) {
        Ok(Some(_)) => panic!("{} was read as a lock", path.display()),
        Ok(None) => panic!("{} was taken for a missing lock", path.display()),
        Err(error) => error,
    };
    let chain = error_chain(&error);
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(chain.contains(&*name), "{chain}");
    chain
}

/// Hardening issue #13: every hostile lock of the bad-input corpus (not YAML, truncated, a
/// wrong version, an alias bomb, a package outside the lock's folder, ...) is refused with an
/// error naming the file. `@VICTIM@` stands for a file outside the lock's folder.
#[test]
fn every_hostile_lock_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    fs_err::write(&victim, "a file keel must never touch\n").unwrap();
    let work = dir.path().join("work");
    fs_err::create_dir_all(&work).unwrap();
    let mut seen = 0;
    for entry in fs_err::read_dir(corpus()).unwrap() {
        let source = entry.unwrap().path();
        let bytes = fs_err::read(&source).unwrap();
        let bytes = match String::from_utf8(bytes) {
            Ok(text) => text
                .replace("@VICTIM@", victim.to_str().unwrap())
                .into_bytes(),
            Err(error) => error.into_bytes(),
        };
        let path = work.join(source.file_name().unwrap());
        fs_err::write(&path, bytes).unwrap();
        refused(&path);
        seen += 1;
    }
    assert!(seen >= 10, "the corpus has {seen} files");
}

/// Hardening issue #13: a package at `../x.conda` (outside the lock's folder) is refused by
/// the one location check, with the package named.
#[test]
fn record_path_with_dotdot_is_refused() {
    let chain = refused(&corpus().join("url-with-dotdot.lock"));
    assert!(chain.contains("`..`"), "{chain}");
    assert!(chain.contains("libzlib-1.2.13-hd590300_5.conda"), "{chain}");
}

/// Hardening issue #13: a FIFO named as the lock is refused without being opened for a read
/// that would wait for a writer forever.
#[test]
fn lock_that_is_a_fifo_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.lock");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let chain = refused(&fifo);
    assert!(chain.contains("not a regular file"), "{chain}");
}

/// Hardening issue #13: a folder, and a file larger than any lock (sparse, so the test
/// writes nothing), are refused before anything is read.
#[test]
fn lock_that_is_a_folder_or_huge_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("folder.lock");
    fs_err::create_dir(&folder).unwrap();
    assert!(refused(&folder).contains("folder"));

    let huge = dir.path().join("huge.lock");
    let file = fs_err::File::create(&huge).unwrap();
    file.set_len(MAX_LOCK_BYTES + 1).unwrap();
    let chain = refused(&huge);
    assert!(chain.contains("bytes"), "{chain}");
    assert!(matches!(read_lock(&huge), Err(SolveError::NotALock { .. })));
}

/// A missing lock is not an error: `keel lock` makes the first one.
#[test]
fn a_missing_lock_is_none() {
    let dir = tempfile::tempdir().unwrap();
    assert!(read_lock(&dir.path().join("keel.lock")).unwrap().is_none());
}
