//! Platform selectors on dependency lines.
//!
//! Two forms exist in the wild: conda-lock's comment selectors (`- cudatoolkit  # [linux64]`,
//! taken from conda-build) and mamba's key selectors (`- sel(linux): cudatoolkit`). conda itself
//! ignores both (the first is a comment to it; the second a sub-section it does not install).
//! keel honours them when it locks for several platforms, with conda-lock's table of names.

use rattler_conda_types::{Arch, Subdir};
use serde::Serialize;

/// A platform selector attached to a dependency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selector {
    /// Which form was written.
    pub style: SelectorStyle,
    /// The condition: a selector name such as `linux64`, `osx`, `win` or `unix`.
    pub condition: String,
}

/// How a selector was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectorStyle {
    /// `- pkg  # [linux64]` (conda-lock, conda-build).
    Comment,
    /// `- sel(linux): pkg` (mamba).
    Mamba,
}

/// Selector names keel understands; anything else is reported as unknown.
pub(crate) const KNOWN: &[&str] = &[
    "linux", "linux32", "linux64", "aarch64", "ppc64le", "armv6l", "armv7l", "s390x", "osx",
    "osx64", "arm64", "win", "win32", "win64", "unix", "x86", "x86_64",
];

impl Selector {
    /// Whether a dependency with this selector applies on `platform`.
    pub fn matches(&self, platform: Subdir) -> bool {
        names_for(platform).contains(&self.condition.trim())
    }

    /// Whether keel knows the selector's name.
    pub fn is_known(&self) -> bool {
        KNOWN.contains(&self.condition.trim())
    }
}

/// The selector names that hold on a platform (conda-lock's table, extended to every platform
/// conda knows in the same spirit).
fn names_for(platform: Subdir) -> Vec<&'static str> {
    let mut names = Vec::new();
    if platform.is_linux() {
        names.extend(["linux", "unix"]);
    }
    if platform.is_osx() {
        names.extend(["osx", "unix"]);
    }
    if platform.is_windows() {
        names.push("win");
    }
    names.extend(match platform {
        Subdir::Linux32 => &["linux32", "x86"][..],
        Subdir::Linux64 => &["linux64", "x86_64"][..],
        Subdir::LinuxAarch64 => &["aarch64"][..],
        Subdir::LinuxPpc64le => &["ppc64le"][..],
        Subdir::LinuxArmV6l => &["armv6l"][..],
        Subdir::LinuxArmV7l => &["armv7l"][..],
        Subdir::LinuxS390X => &["s390x"][..],
        Subdir::Osx64 => &["osx64", "x86_64"][..],
        Subdir::OsxArm64 => &["arm64"][..],
        Subdir::Win32 => &["win32", "x86"][..],
        Subdir::Win64 => &["win64", "x86_64"][..],
        Subdir::WinArm64 => &["arm64"][..],
        _ => &[][..],
    });
    if platform.arch() == Some(Arch::X86_64) && !names.contains(&"x86_64") {
        names.push("x86_64");
    }
    names
}

/// Finds a `# [selector]` comment in the text that follows a value on its line.
pub(crate) fn comment_selector(rest_of_line: &str) -> Option<Selector> {
    let trimmed = rest_of_line.trim_start();
    if trimmed.len() == rest_of_line.len() && !rest_of_line.is_empty() {
        // A `#` glued to the value is part of it, not a comment.
        return None;
    }
    let comment = trimmed.strip_prefix('#')?;
    let open = comment.find('[')?;
    let close = comment[open..].find(']')? + open;
    let condition = comment[open + 1..close].trim();
    if condition.is_empty() || condition.contains('[') {
        return None;
    }
    Some(Selector {
        style: SelectorStyle::Comment,
        condition: condition.to_owned(),
    })
}

/// Reads mamba's `sel(COND)` key.
pub(crate) fn mamba_selector(key: &str) -> Option<Selector> {
    let condition = key.trim().strip_prefix("sel(")?.strip_suffix(')')?;
    Some(Selector {
        style: SelectorStyle::Mamba,
        condition: condition.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_selectors_follow_conda_lock() {
        let selector = comment_selector("   # [linux64]").unwrap();
        assert!(selector.matches(Subdir::Linux64));
        assert!(!selector.matches(Subdir::LinuxAarch64));
        let unix = comment_selector(" # cuda only [unix]").unwrap();
        assert!(unix.matches(Subdir::OsxArm64));
        assert!(!unix.matches(Subdir::Win64));
        assert!(
            comment_selector("# [linux]").is_none(),
            "glued `#` is not a comment"
        );
        assert!(comment_selector("  # plain comment").is_none());
    }

    #[test]
    fn mamba_selectors() {
        let selector = mamba_selector("sel(win)").unwrap();
        assert!(selector.matches(Subdir::Win64));
        assert!(!selector.matches(Subdir::Linux64));
        assert!(mamba_selector("pip").is_none());
    }
}
