//! `keel diff`: compare the fingerprints of many nodes, group the identical ones and say what
//! differs in the others, most significant first.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::fingerprint::{FileFingerprint, Fingerprint, PackageFingerprint};

/// Nodes whose prefixes are identical (same root hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    /// The shared root hash.
    pub root: String,
    /// The nodes, in the order given.
    pub labels: Vec<String>,
}

/// One difference between a group and the reference group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A package in another version (or build) than on the reference nodes.
    PackageVersion {
        /// Package name.
        name: String,
        /// `version build` on the reference nodes.
        reference: String,
        /// `version build` here.
        here: String,
    },
    /// Same name, version and build, but another archive (sha256) or channel.
    PackageSource {
        /// Package name.
        name: String,
        /// `channel sha256` on the reference nodes.
        reference: String,
        /// `channel sha256` here.
        here: String,
    },
    /// A package only these nodes have.
    PackageAdded {
        /// Package name.
        name: String,
        /// `version build`.
        here: String,
    },
    /// A package only the reference nodes have.
    PackageRemoved {
        /// Package name.
        name: String,
        /// `version build` on the reference nodes.
        reference: String,
    },
    /// A file whose contents, mode or target differ.
    FileChanged {
        /// Path relative to the prefix.
        path: String,
        /// The package that installed it, if any.
        owner: Option<String>,
        /// What differs: `contents`, `executable bit`, `symlink target`, `file type`.
        what: String,
    },
    /// A file only these nodes have.
    FileAdded {
        /// Path relative to the prefix.
        path: String,
        /// The package that installed it, if any.
        owner: Option<String>,
    },
    /// A file only the reference nodes have.
    FileRemoved {
        /// Path relative to the prefix.
        path: String,
        /// The package that installed it on the reference nodes, if any.
        owner: Option<String>,
    },
}

impl Change {
    /// Lower is more significant: package versions, package sources, added/removed packages,
    /// changed files of packages, added/removed files of packages, then unowned files.
    fn rank(&self) -> u8 {
        match self {
            Change::PackageVersion { .. } => 0,
            Change::PackageSource { .. } => 1,
            Change::PackageAdded { .. } | Change::PackageRemoved { .. } => 2,
            Change::FileChanged { owner: Some(_), .. } => 3,
            Change::FileAdded { owner: Some(_), .. }
            | Change::FileRemoved { owner: Some(_), .. } => 4,
            Change::FileChanged { owner: None, .. } => 5,
            Change::FileAdded { owner: None, .. } | Change::FileRemoved { owner: None, .. } => 6,
        }
    }
}

/// How one group differs from the reference group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupDiff {
    /// The nodes of this group.
    pub labels: Vec<String>,
    /// The differences, most significant first.
    pub changes: Vec<Change>,
    /// File differences left out because they belong to a package listed as changed (a new
    /// version changes its files; listing them would hide the rest).
    pub files_of_changed_packages: usize,
}

/// The comparison of many fingerprints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    /// The groups of identical nodes, the largest first (the first is the reference).
    pub groups: Vec<Group>,
    /// For every group but the reference, what differs from it.
    pub differences: Vec<GroupDiff>,
}

impl DiffReport {
    /// Every node has the same prefix.
    pub fn all_identical(&self) -> bool {
        self.groups.len() <= 1
    }
}

fn version_build(package: &PackageFingerprint) -> String {
    format!("{} {}", package.version, package.build)
}

fn source(package: &PackageFingerprint) -> String {
    format!(
        "{} {}",
        package.channel.as_deref().unwrap_or("(no channel)"),
        package.sha256.as_deref().unwrap_or("(no sha256)")
    )
}

fn file_difference(reference: &FileFingerprint, here: &FileFingerprint) -> Option<&'static str> {
    if reference.kind != here.kind {
        Some("file type")
    } else if reference.blake3 != here.blake3 || reference.size != here.size {
        Some("contents")
    } else if reference.target != here.target {
        Some("symlink target")
    } else if reference.executable != here.executable {
        Some("executable bit")
    } else {
        None
    }
}

/// What differs in `here` compared with `reference`.
pub fn compare(reference: &Fingerprint, here: &Fingerprint) -> GroupDiff {
    let mut changes = Vec::new();
    let reference_packages: BTreeMap<&str, &PackageFingerprint> = reference
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p))
        .collect();
    let here_packages: BTreeMap<&str, &PackageFingerprint> =
        here.packages.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut changed_packages: HashSet<&str> = HashSet::new();
    let names: BTreeSet<&str> = reference_packages
        .keys()
        .chain(here_packages.keys())
        .copied()
        .collect();
    for name in names {
        match (reference_packages.get(name), here_packages.get(name)) {
            (Some(a), Some(b)) => {
                if (&a.version, &a.build) != (&b.version, &b.build) {
                    changes.push(Change::PackageVersion {
                        name: name.to_string(),
                        reference: version_build(a),
                        here: version_build(b),
                    });
                    changed_packages.insert(name);
                } else if a.sha256 != b.sha256 || a.channel != b.channel {
                    changes.push(Change::PackageSource {
                        name: name.to_string(),
                        reference: source(a),
                        here: source(b),
                    });
                    changed_packages.insert(name);
                }
            }
            (None, Some(b)) => {
                changes.push(Change::PackageAdded {
                    name: name.to_string(),
                    here: version_build(b),
                });
                changed_packages.insert(name);
            }
            (Some(a), None) => {
                changes.push(Change::PackageRemoved {
                    name: name.to_string(),
                    reference: version_build(a),
                });
                changed_packages.insert(name);
            }
            (None, None) => {}
        }
    }

    let follows_package = |file: &FileFingerprint| {
        file.owner
            .as_deref()
            .is_some_and(|owner| changed_packages.contains(owner))
    };
    let mut files_of_changed_packages = 0;
    let (mut i, mut j) = (0, 0);
    let (a, b) = (&reference.files, &here.files);
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.path.cmp(&y.path),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        let change = match order {
            std::cmp::Ordering::Equal => {
                let (x, y) = (&a[i], &b[j]);
                i += 1;
                j += 1;
                let Some(what) = file_difference(x, y) else {
                    continue;
                };
                if follows_package(x) || follows_package(y) {
                    files_of_changed_packages += 1;
                    continue;
                }
                Change::FileChanged {
                    path: y.path.clone(),
                    owner: y.owner.clone().or_else(|| x.owner.clone()),
                    what: what.to_string(),
                }
            }
            std::cmp::Ordering::Less => {
                let x = &a[i];
                i += 1;
                if follows_package(x) {
                    files_of_changed_packages += 1;
                    continue;
                }
                Change::FileRemoved {
                    path: x.path.clone(),
                    owner: x.owner.clone(),
                }
            }
            std::cmp::Ordering::Greater => {
                let y = &b[j];
                j += 1;
                if follows_package(y) {
                    files_of_changed_packages += 1;
                    continue;
                }
                Change::FileAdded {
                    path: y.path.clone(),
                    owner: y.owner.clone(),
                }
            }
        };
        changes.push(change);
    }
    // Stable: within a rank, packages by name and files by path, as produced.
    changes.sort_by_key(Change::rank);
    GroupDiff {
        labels: vec![here.label.clone()],
        changes,
        files_of_changed_packages,
    }
}

/// Groups the fingerprints by root hash (the largest group is the reference; ties go to the
/// one given first) and compares every other group with it.
pub fn diff(fingerprints: &[Fingerprint]) -> DiffReport {
    let mut groups: Vec<(Group, usize)> = Vec::new();
    // Root -> its group's place in `groups` (a scan of the groups per node would grow with
    // nodes times groups).
    let mut by_root: HashMap<&str, usize> = HashMap::new();
    for (index, fingerprint) in fingerprints.iter().enumerate() {
        match by_root.get(fingerprint.root.as_str()) {
            Some(&at) => groups[at].0.labels.push(fingerprint.label.clone()),
            None => {
                by_root.insert(&fingerprint.root, groups.len());
                groups.push((
                    Group {
                        root: fingerprint.root.clone(),
                        labels: vec![fingerprint.label.clone()],
                    },
                    index,
                ));
            }
        }
    }
    // Largest first; equal sizes keep the order given.
    groups.sort_by_key(|(group, first)| (std::cmp::Reverse(group.labels.len()), *first));
    let differences = match groups.split_first() {
        Some(((_, reference_index), rest)) => rest
            .iter()
            .map(|(group, index)| {
                let mut difference =
                    compare(&fingerprints[*reference_index], &fingerprints[*index]);
                difference.labels = group.labels.clone();
                difference
            })
            .collect(),
        None => Vec::new(),
    };
    DiffReport {
        groups: groups.into_iter().map(|(group, _)| group).collect(),
        differences,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Summary;

    fn node(label: &str, root: &str) -> Fingerprint {
        Fingerprint {
            schema: crate::FINGERPRINT_SCHEMA,
            root: root.to_string(),
            label: label.to_string(),
            prefix: std::path::PathBuf::from("/opt/env"),
            keel_version: "0.1.0".to_string(),
            summary: Summary::default(),
            packages: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Interleaved roots group by root, the largest group first and equal sizes in the order
    /// first seen, each group's labels in the order given.
    #[test]
    fn interleaved_roots_group_largest_first_in_given_order() {
        let nodes = [
            node("n0", "a"),
            node("n1", "b"),
            node("n2", "c"),
            node("n3", "a"),
            node("n4", "b"),
            node("n5", "a"),
            node("n6", "d"),
        ];
        let report = diff(&nodes);
        let groups: Vec<(&str, Vec<&str>)> = report
            .groups
            .iter()
            .map(|g| {
                (
                    g.root.as_str(),
                    g.labels.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            groups,
            [
                ("a", vec!["n0", "n3", "n5"]),
                ("b", vec!["n1", "n4"]),
                ("c", vec!["n2"]),
                ("d", vec!["n6"]),
            ]
        );
        let labels: Vec<&Vec<String>> = report.differences.iter().map(|d| &d.labels).collect();
        assert_eq!(
            labels,
            [
                &vec!["n1".to_string(), "n4".to_string()],
                &vec!["n2".to_string()],
                &vec!["n6".to_string()]
            ]
        );
    }
}
