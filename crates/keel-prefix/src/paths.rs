//! The one check every path read from a file goes through before it is joined onto a prefix,
//! and the one way files named by input are opened.
//!
//! A path in a `conda-meta` record, a fingerprint or a `*.dist-info/RECORD` is input keel does
//! not control: rattler's unlink removes `prefix.join(path)`, verify hashes it. [`enclosed_path`]
//! is the model of the `zip` crate's `ZipFile::enclosed_name`: relative, no `..`, no root, no
//! drive, no NUL, on every platform's separators. [`Enclosure`] adds what only the disk knows:
//! a symlink inside the prefix that leads out of it is never followed.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

/// Why a path read from a file was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UnsafePath {
    /// The path is empty (or only `.` components): it names the prefix itself.
    #[error("the path is empty")]
    Empty,
    /// The path starts at a root (`/`, `\`).
    #[error("the path is absolute")]
    Absolute,
    /// The path starts with a drive (`C:`) or another Windows path prefix.
    #[error("the path starts with a drive or a Windows path prefix")]
    Drive,
    /// The path has a `..` component (with `/` or `\` as separator).
    #[error("the path has a `..` component")]
    ParentDir,
    /// The path holds a NUL byte.
    #[error("the path holds a NUL byte")]
    Nul,
    /// The path is lexically inside the prefix but a symlink on the way leads out of it.
    #[error("the path leads outside the prefix through a symlink")]
    ThroughSymlink,
    /// A symlink a package ships points outside the prefix (or at an absolute path).
    #[error("the symlink's target leads outside the prefix")]
    SymlinkTarget,
}

/// `path` as a path relative to a prefix, when joining it onto the prefix cannot leave it;
/// `.` and empty components are dropped.
///
/// Refused: an empty path, an absolute one (`/x`, `\x`), a drive or Windows prefix (`C:x`,
/// `\\?\x`), any `..` component (`\` counts as a separator, as it does on Windows), a NUL.
/// This is the check every reader of a path from a file calls before it joins it.
pub fn enclosed_path(path: &Path) -> Result<PathBuf, UnsafePath> {
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.is_empty() {
        return Err(UnsafePath::Empty);
    }
    if bytes.contains(&0) {
        return Err(UnsafePath::Nul);
    }
    if matches!(bytes[0], b'/' | b'\\') {
        return Err(UnsafePath::Absolute);
    }
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err(UnsafePath::Drive);
    }
    let mut pieces = 0usize;
    for piece in bytes.split(|&byte| byte == b'/' || byte == b'\\') {
        match piece {
            b"" | b"." => {}
            b".." => return Err(UnsafePath::ParentDir),
            _ => pieces += 1,
        }
    }
    if pieces == 0 {
        return Err(UnsafePath::Empty);
    }
    // What this platform's own parser makes of it (Windows prefixes, verbatim paths).
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(UnsafePath::ParentDir),
            Component::RootDir => return Err(UnsafePath::Absolute),
            Component::Prefix(_) => return Err(UnsafePath::Drive),
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(UnsafePath::Empty);
    }
    Ok(relative)
}

/// [`enclosed_path`] for a path written as text (`RECORD` lines, fingerprints).
pub(crate) fn enclosed_str(path: &str) -> Result<PathBuf, UnsafePath> {
    enclosed_path(Path::new(path))
}

/// Where the symlink `link` (relative to the prefix, already [`enclosed_path`]) points, as a
/// path relative to the prefix, when that stays inside it; `None` when `target` is absolute
/// (the package cannot know where it will be installed), or climbs out of the prefix.
///
/// `symlinks` are the other symlinks of the same package (prefix-relative path to target): a
/// component of the target that is one of them is followed, so `a -> d/l/..` with `d/l -> ..`
/// is seen for what it is. Only the lexical view and those links are known; a chain longer
/// than 40 links is refused.
pub(crate) fn enclosed_symlink_target(
    link: &Path,
    target: &Path,
    symlinks: &HashMap<PathBuf, PathBuf>,
) -> Option<PathBuf> {
    /// A path's components as text, `None` for a root or a drive.
    fn parts(path: &Path) -> Option<Vec<OsString>> {
        let mut parts = Vec::new();
        for component in path.components() {
            match component {
                Component::Normal(part) => parts.push(part.to_os_string()),
                Component::ParentDir => parts.push(OsString::from("..")),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => return None,
            }
        }
        Some(parts)
    }
    let mut resolved = parts(link.parent().unwrap_or(Path::new("")))?;
    let mut queue: VecDeque<OsString> = parts(target)?.into();
    let mut followed = 0usize;
    while let Some(part) = queue.pop_front() {
        if part == ".." {
            resolved.pop()?;
            continue;
        }
        resolved.push(part);
        let here: PathBuf = resolved.iter().collect();
        if let Some(next) = symlinks.get(&here) {
            followed += 1;
            if followed > 40 {
                return None;
            }
            resolved.pop();
            for part in parts(next)?.into_iter().rev() {
                queue.push_front(part);
            }
        }
    }
    Some(resolved.iter().collect())
}

/// A prefix with its real (symlink-free) location, to check where paths under it really lead.
#[derive(Debug, Clone)]
pub(crate) struct Enclosure {
    prefix: PathBuf,
    real: PathBuf,
}

impl Enclosure {
    /// The prefix as given (absolute) and as the file system resolves it.
    pub(crate) fn new(prefix: &Path) -> std::io::Result<Self> {
        Ok(Enclosure {
            prefix: prefix.to_path_buf(),
            real: fs_err::canonicalize(prefix)?,
        })
    }

    /// `relative` joined onto the prefix, after [`enclosed_path`].
    pub(crate) fn join(&self, relative: &Path) -> Result<PathBuf, UnsafePath> {
        Ok(self.prefix.join(enclosed_path(relative)?))
    }

    /// Where `path` (under the prefix) really is, every symlink resolved: `Ok(None)` when that
    /// is outside the prefix; the error of the resolution otherwise (`NotFound` for a missing
    /// path or a dangling symlink).
    pub(crate) fn resolve(&self, path: &Path) -> std::io::Result<Option<PathBuf>> {
        let real = fs_err::canonicalize(path)?;
        Ok(real.starts_with(&self.real).then_some(real))
    }

    /// Whether the existing directories above `path` (under the prefix) stay inside it when
    /// their symlinks are followed. A missing directory holds nothing to delete or read.
    pub(crate) fn parents_inside(&self, path: &Path) -> std::io::Result<bool> {
        let Some(parent) = path.parent() else {
            return Ok(true);
        };
        match self.resolve(parent) {
            Ok(real) => Ok(real.is_some()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(error) => Err(error),
        }
    }
}

/// What a path that is not a regular file is, for messages.
fn kind_of(file_type: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_block_device() || file_type.is_char_device() {
            return "a device";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

fn not_regular(path: &Path, file_type: std::fs::FileType) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "{} is {} (keel reads only regular files)",
            path.display(),
            kind_of(file_type)
        ),
    )
}

/// Opens `path` for reading only when it is a regular file (symlinks followed).
///
/// The type is checked before opening (opening a FIFO for reading blocks until a writer comes)
/// and again on the opened handle, so what is read is the regular file that was checked.
pub(crate) fn open_regular(path: &Path) -> std::io::Result<fs_err::File> {
    let before = fs_err::metadata(path)?;
    if !before.is_file() {
        return Err(not_regular(path, before.file_type()));
    }
    let file = fs_err::File::open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(not_regular(path, metadata.file_type()));
    }
    Ok(file)
}

/// The bytes of the regular file `path`, refused when it is larger than `limit` (`what` names
/// the format in the message). The read stops at the limit even if the file grows meanwhile.
pub(crate) fn read_regular(path: &Path, limit: u64, what: &str) -> std::io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    let too_large = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is larger than the {} MiB keel reads of {what}",
                path.display(),
                limit >> 20
            ),
        )
    };
    if len > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read_regular`] as UTF-8 text.
pub(crate) fn read_regular_text(path: &Path, limit: u64, what: &str) -> std::io::Result<String> {
    String::from_utf8(read_regular(path, limit, what)?).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not UTF-8 text", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_pass_and_are_normalized() {
        assert_eq!(
            enclosed_path(Path::new("lib/./libz.so")),
            Ok(PathBuf::from("lib/libz.so"))
        );
        assert_eq!(
            enclosed_path(Path::new("bin//tool/")),
            Ok(PathBuf::from("bin/tool"))
        );
        assert_eq!(
            enclosed_path(Path::new("share/ünï/ƒile")),
            Ok(PathBuf::from("share/ünï/ƒile"))
        );
        assert_eq!(
            enclosed_path(Path::new("lib/a..b/..c")),
            Ok(PathBuf::from("lib/a..b/..c"))
        );
    }

    /// Hardening issue #13: every escape the records of the report used, and its siblings.
    #[test]
    fn record_path_with_dotdot_is_refused() {
        for path in [
            "../victim.txt",
            "lib/../../victim.txt",
            "a/..",
            "lib\\..\\..\\x",
        ] {
            assert_eq!(
                enclosed_path(Path::new(path)),
                Err(UnsafePath::ParentDir),
                "{path}"
            );
        }
        for path in ["/etc/passwd", "\\Windows\\x", "//server/share"] {
            assert_eq!(
                enclosed_path(Path::new(path)),
                Err(UnsafePath::Absolute),
                "{path}"
            );
        }
        for path in ["C:\\x", "c:x", "Z:/x"] {
            assert_eq!(
                enclosed_path(Path::new(path)),
                Err(UnsafePath::Drive),
                "{path}"
            );
        }
        for path in ["", ".", "./", "./."] {
            assert_eq!(
                enclosed_path(Path::new(path)),
                Err(UnsafePath::Empty),
                "{path:?}"
            );
        }
        assert_eq!(enclosed_path(Path::new("lib/x\0y")), Err(UnsafePath::Nul));
    }

    /// Joins `relative` onto `base` the way the file system reads a path without symlinks:
    /// `..` pops, `.` stays, a root or prefix restarts.
    fn lexical_join(base: &Path, relative: &Path) -> PathBuf {
        let mut out = PathBuf::new();
        for component in base.join(relative).components() {
            match component {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    }

    /// The pieces the exhaustive check below combines.
    const PIECES: [&str; 12] = [
        "..", ".", "", "/", "\\", "C:", "\0", "..\\..", "lib", "ünï", "名前", "a.b",
    ];

    /// Rule (hardening issue #13): a path `enclosed_path` accepts, joined onto a prefix (as
    /// given, the way rattler's unlink joins it, or as returned), stays strictly under the
    /// prefix after lexical normalization, also when `\` is read as a separator (Windows).
    /// Checked exhaustively over every sequence of up to four pieces (`..`, `.`, empty, `/`,
    /// `\`, `C:`, NUL, unicode, plain names) joined by `/` or by `\` (a proptest would need a
    /// new dev-dependency edge in Cargo.lock; the whole space is small enough to walk).
    #[test]
    fn accepted_paths_stay_inside() {
        let prefix = Path::new("/prefix/env");
        let mut accepted = 0;
        for length in 0..=4u32 {
            for number in 0..PIECES.len().pow(length) {
                let mut rest = number;
                let parts: Vec<&str> = (0..length)
                    .map(|_| {
                        let piece = PIECES[rest % PIECES.len()];
                        rest /= PIECES.len();
                        piece
                    })
                    .collect();
                for separator in ["/", "\\"] {
                    let text = parts.join(separator);
                    let Ok(relative) = enclosed_path(Path::new(&text)) else {
                        continue;
                    };
                    accepted += 1;
                    let windows = text.replace('\\', "/");
                    for joined in [
                        lexical_join(prefix, Path::new(&text)),
                        lexical_join(prefix, &relative),
                        lexical_join(prefix, Path::new(&windows)),
                    ] {
                        assert!(
                            joined.starts_with(prefix) && joined.as_path() != prefix,
                            "{text:?} -> {joined:?}"
                        );
                    }
                }
            }
        }
        // The check is not vacuous: plenty of sequences pass.
        assert!(accepted > 1000, "{accepted}");
    }

    /// Rule (hardening issue #13): a symlink target is accepted only when, resolved from the
    /// link's folder (`..` pops, the package's other symlinks followed), it never climbs above
    /// the prefix; absolute targets and loops are refused.
    #[test]
    fn symlink_targets_stay_inside() {
        let none = HashMap::new();
        let target = |link: &str, target: &str, links: &HashMap<PathBuf, PathBuf>| {
            enclosed_symlink_target(Path::new(link), Path::new(target), links)
        };
        assert_eq!(
            target("lib/libz.so", "libz.so.1", &none),
            Some(PathBuf::from("lib/libz.so.1"))
        );
        assert_eq!(
            target("bin/x", "../lib/./y", &none),
            Some(PathBuf::from("lib/y"))
        );
        assert_eq!(target("x", ".", &none), Some(PathBuf::new()));
        assert_eq!(target("lib/x", "../../victim", &none), None);
        assert_eq!(target("x", "..", &none), None);
        assert_eq!(target("lib/x", "/lib/y", &none), None);
        let links: HashMap<PathBuf, PathBuf> = [
            (PathBuf::from("d/up"), PathBuf::from("..")),
            (PathBuf::from("loop"), PathBuf::from("loop")),
        ]
        .into();
        assert_eq!(target("x", "d/up/y", &links), Some(PathBuf::from("y")));
        assert_eq!(target("x", "d/up/../y", &links), None);
        assert_eq!(target("x", "loop/y", &links), None);
    }

    /// Hardening issue #13: a FIFO where a record or METADATA belongs is refused without
    /// opening it (opening would block until a writer comes).
    #[cfg(unix)]
    #[test]
    fn fifo_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("METADATA");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let error = read_regular(&fifo, 1 << 20, "metadata").unwrap_err();
        assert!(error.to_string().contains("is a FIFO"), "{error}");
        assert!(error.to_string().contains("METADATA"), "{error}");
    }

    #[test]
    fn oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.json");
        fs_err::write(&path, vec![b' '; 2 << 20]).unwrap();
        let error = read_regular(&path, 1 << 20, "conda-meta records").unwrap_err();
        assert!(
            error.to_string().contains("larger than the 1 MiB"),
            "{error}"
        );
        assert_eq!(read_regular(&path, 4 << 20, "x").unwrap().len(), 2 << 20);
    }
}
