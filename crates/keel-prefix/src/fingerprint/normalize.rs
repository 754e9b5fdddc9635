//! Content normalisation: the prefix path replaced by [`PREFIX_PLACEHOLDER`] in file contents
//! (conda writes it into text and binary files at install) and symlink targets, then BLAKE3.

use std::cell::RefCell;
use std::io::Read;
use std::path::Path;

use memchr::memmem::Finder;

use super::PREFIX_PLACEHOLDER;
use crate::paths::open_regular;

/// Files at least this large are hashed in chunks with BLAKE3's multithreaded `update_rayon`.
const LARGE_FILE: u64 = 4 << 20;

/// The absolute forms of the prefix path whose occurrences are replaced before hashing.
pub(super) fn prefix_spellings(prefix: &Path) -> Vec<Vec<u8>> {
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

pub(super) struct Hashed {
    pub(super) size: u64,
    pub(super) blake3: [u8; 32],
    pub(super) prefix_replaced: bool,
}

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Hashes one file, replacing the prefix path in its contents when it holds it.
pub(super) fn hash_file(path: &Path, len: u64, finders: &[Finder<'_>]) -> std::io::Result<Hashed> {
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
pub(super) fn replace_prefix(contents: &[u8], finders: &[Finder<'_>]) -> Vec<u8> {
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
pub(super) fn normalize_target(target: &Path, spellings: &[Vec<u8>]) -> String {
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
