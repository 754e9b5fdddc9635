//! Solve a conda environment spec into an exact, multi-platform lock that every node installs
//! identically.
//!
//! `keel-solve` takes a [`keel_spec::EnvironmentSpec`], loads repodata for its channels
//! (local directories and `file://` URLs offline, remote channels through
//! `rattler_repodata_gateway` and its cache), solves each platform with `rattler_solve`'s
//! resolvo backend in strict channel priority (as conda's `channel_priority: strict`), and
//! writes the result with `rattler_lock` in the pixi lock format, which pixi reads. A lock is a
//! function of its declared inputs: each platform assumes its baseline virtual packages plus
//! the ones given (or, when asked, this node's), records them, and keeps them on re-lock, so
//! the same file gives the same lock on a login node and on a GPU node; a hash of the inputs
//! in the lock's header tells whether it is stale.
//! The `pip:` section is resolved with `uv pip compile` against the Python the conda solve
//! picked and recorded as PyPI packages (without uv, exact `==` pins are recorded as given).
//! The lock exports to conda's `@EXPLICIT` lists and to conda-lock's `conda-lock.yml`.
//!
//! It does not install anything; `keel-prefix` does.
//!
//! ```
//! use keel_solve::{LockOptions, inputs_hash, target_platforms};
//! use rattler_conda_types::Subdir;
//!
//! let spec = keel_spec::parse_str("dependencies: [python=3.10]\nplatforms: [linux-64, osx-arm64]", "env.yml")?
//!     .spec;
//! let options = LockOptions::default();
//! let platforms = target_platforms(&spec, &options)?;
//! assert_eq!(platforms, [Subdir::Linux64, Subdir::OsxArm64]);
//! // The same inputs give the same hash on every machine.
//! assert_eq!(inputs_hash(&spec, &platforms, &options), inputs_hash(&spec, &platforms, &options));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod channels;
mod client;
mod error;
mod export;
mod fresh;
mod lockfile;
mod options;
mod pypi;
mod redact;
mod repodata_error;
mod solve;
mod virtual_packages;

pub use channels::{ResolvedChannel, resolve_channels};
pub use client::{
    AUTH_FILE_ENV, HttpOptions, TIMEOUT_ENV, http_client, parse_timeout, transient_status,
};
pub use error::{Redacted, SolveError, SpecLine};
pub use export::{conda_lock_yml, explicit};
pub use fresh::{Freshness, Stale, check_fresh};
pub use lockfile::{
    Locked, MAX_LOCK_BYTES, PlatformSummary, check_locked_location, inputs_hash,
    platform_content_hash, pypi_location, read_lock, recorded_hash,
};
pub use options::{LockOptions, LockProgress};
pub use pypi::{Uv, pip_url};
pub use rattler_solve::ChannelPriority;
pub use redact::{REDACTED, Secrets, redact_template, redact_text, redact_url};
pub use solve::{lock, target_platforms};
pub use virtual_packages::{
    Assumed, AssumedFrom, NodeVirtualPackages, VirtualPackageOverridesByPlatform,
    assumed_virtual_packages, baseline_virtual_packages, detect_node, recorded_spelling,
    unassumed_on_node, virtual_package_flag,
};
