//! How to lock: the options every step of a lock reads (the solve, the lock's inputs hash and
//! its freshness check), kept below all of them.

use std::path::PathBuf;

use indicatif::MultiProgress;
use rattler_conda_types::Subdir;
use rattler_solve::ChannelPriority;

use crate::pypi::Uv;
use crate::virtual_packages::VirtualPackageOverridesByPlatform;

/// How to lock.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// Platforms to lock for. Empty: the file's `platforms:`, or else this machine's platform.
    pub platforms: Vec<Subdir>,
    /// Virtual packages given on the command line.
    pub virtual_packages: VirtualPackageOverridesByPlatform,
    /// Where the gateway caches remote repodata.
    pub cache_dir: PathBuf,
    /// Packages to move to their newest allowed version; every other package keeps its pin
    /// from the previous lock where the specs still allow it.
    pub update: Vec<String>,
    /// `strict` (conda's `channel_priority: strict`, the default) or `disabled`.
    pub channel_priority: ChannelPriority,
    /// Draw progress bars here while repodata loads.
    pub progress: Option<MultiProgress>,
    /// Which uv resolves pip sections.
    pub uv: Uv,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            platforms: Vec::new(),
            virtual_packages: VirtualPackageOverridesByPlatform::default(),
            cache_dir: std::env::temp_dir().join("keel-repodata-cache"),
            update: Vec::new(),
            channel_priority: ChannelPriority::Strict,
            progress: None,
            uv: Uv::Auto,
        }
    }
}
