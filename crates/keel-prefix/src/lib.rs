//! Install a keel lock into a conda prefix, fingerprint the installed prefix file by file,
//! verify it against the lock, and compare fingerprints across nodes.
//!
//! This is the "it ran on node A, not on node B" crate. [`install`] links the lock's conda
//! packages with rattler's installer (the prefix stays readable by conda and pixi), checking
//! every archive's sha256 and repairing an interrupted install on the next run; every archive
//! is in the package cache before the prefix is touched, so a download that fails
//! ([`FetchFailure`]) leaves the prefix as it was.
//! [`fingerprint`] hashes every file of a prefix with BLAKE3 in parallel (a stat cache makes an
//! unchanged prefix near-instant) into one root hash that is the same for the same install on
//! any path of any machine. [`verify`] checks a prefix against its packages' recorded sha256
//! and the lock, naming files changed by hand, pip installs outside the lock and files no
//! package owns. [`diff()`] groups many nodes' fingerprints and lists what differs.
//!
//! It does not solve environments (`keel-solve` does) or read environment files.
//!
//! ```
//! use keel_prefix::{HashOptions, diff, fingerprint};
//!
//! // A prefix is a folder with conda-meta/ (here an empty one and a hand-made file).
//! let a = tempfile::tempdir()?;
//! let b = tempfile::tempdir()?;
//! for prefix in [a.path(), b.path()] {
//!     fs_err::create_dir_all(prefix.join("conda-meta"))?;
//!     fs_err::create_dir_all(prefix.join("bin"))?;
//!     // A script that names its own prefix, as conda writes them.
//!     fs_err::write(prefix.join("bin/tool"), format!("#!{}/bin/python\n", prefix.display()))?;
//! }
//! let options = HashOptions { label: Some("node-a".into()), ..HashOptions::default() };
//! let (fa, _) = fingerprint(a.path(), &options)?;
//! let options = HashOptions { label: Some("node-b".into()), ..HashOptions::default() };
//! let (fb, _) = fingerprint(b.path(), &options)?;
//! // Same install at two paths: the same root.
//! assert_eq!(fa.root, fb.root);
//! assert!(diff(&[fa, fb]).all_identical());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod diff;
mod error;
mod fetch;
mod fingerprint;
mod install;
mod lock;
mod meta;
mod paths;
mod verify;

pub use diff::{Change, DiffReport, Group, GroupDiff, compare, diff};
pub use error::PrefixError;
pub use fetch::FetchFailure;
pub use fingerprint::{
    FINGERPRINT_SCHEMA, FileFingerprint, FileKind, Fingerprint, HashOptions, HashProgress,
    HashStats, PREFIX_PLACEHOLDER, PackageFingerprint, Summary, fingerprint,
};
pub use install::{INSTALL_MARKER, InstallOptions, InstallReport, install};
pub use lock::{LockedPlatform, LockedPypi, locked_packages};
pub use meta::{PythonDist, installed_packages};
pub use paths::{UnsafePath, enclosed_path};
pub use verify::{
    ChangedFile, FileProblem, OutsideRecordPath, PackageChange, PackageRef, VerifyReport, verify,
};
