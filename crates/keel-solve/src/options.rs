//! How to lock: the options every step of a lock reads (the solve, the lock's inputs hash and
//! its freshness check), kept below all of them.

use std::path::PathBuf;
use std::sync::Arc;

use rattler_conda_types::Subdir;
use rattler_solve::ChannelPriority;

use crate::client::HttpOptions;
use crate::pypi::Uv;
use crate::virtual_packages::{NodeVirtualPackages, VirtualPackageOverridesByPlatform};

/// Progress of a lock's repodata downloads, for progress bars. Called from the gateway's
/// tasks, several downloads at a time. Every URL is redacted ([`crate::redact_url`]) before
/// it is passed: no token, user name, password or query string reaches a reporter.
pub trait LockProgress: Send + Sync + std::fmt::Debug {
    /// A download of `url` (redacted, as text) starts; the number returned names it in the
    /// calls that follow.
    fn download_started(&self, url: &str) -> usize;
    /// Download `index` has `bytes` of `total` (`None`: the size is not known).
    fn download_progress(&self, index: usize, bytes: u64, total: Option<u64>);
    /// Download `index` is over (finished, failed or cancelled).
    fn download_done(&self, index: usize);
}

/// How to lock.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// Platforms to lock for. Empty: the file's `platforms:`, or else this machine's platform.
    pub platforms: Vec<Subdir>,
    /// Virtual packages given on the command line.
    pub virtual_packages: VirtualPackageOverridesByPlatform,
    /// `--detect`: lock this node's platform for this node's own virtual packages
    /// ([`crate::detect_node`]) instead of the platform's baseline. `None`: the lock assumes
    /// nothing of the node that solves it (see [`crate::assumed_virtual_packages`]).
    pub detected: Option<NodeVirtualPackages>,
    /// Where the gateway caches remote repodata.
    pub cache_dir: PathBuf,
    /// Packages to move to their newest allowed version; every other package keeps its pin
    /// from the previous lock where the specs still allow it.
    pub update: Vec<String>,
    /// `strict` (conda's `channel_priority: strict`, the default) or `disabled`.
    pub channel_priority: ChannelPriority,
    /// Told of every repodata download while repodata loads (the CLI draws progress bars).
    pub progress: Option<Arc<dyn LockProgress>>,
    /// Which uv resolves pip sections.
    pub uv: Uv,
    /// Timeouts and tries of every request to a channel server.
    pub http: HttpOptions,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            platforms: Vec::new(),
            virtual_packages: VirtualPackageOverridesByPlatform::default(),
            detected: None,
            cache_dir: std::env::temp_dir().join("keel-repodata-cache"),
            update: Vec::new(),
            channel_priority: ChannelPriority::Strict,
            progress: None,
            uv: Uv::Auto,
            http: HttpOptions::default(),
        }
    }
}
