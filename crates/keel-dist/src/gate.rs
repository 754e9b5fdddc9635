//! The environment gate: before a multi-rank job trains, every rank learns every other rank's
//! environment (packages, prefix root hash, driver, CUDA, GPUs, keel version, configuration)
//! and the same verdict: uniform, or which ranks differ from the majority and how.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Collective, DistError};

/// What one rank knows about its environment. `rank` and `host` say where the facts come
/// from; the rest must be the same on every rank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankFacts {
    /// The rank the facts come from.
    pub rank: usize,
    /// The node's host name.
    pub host: String,
    /// The root hash of the prefix's fingerprint (`keel hash`), when there is a prefix.
    #[serde(default)]
    pub fingerprint_root: Option<String>,
    /// The prefix's packages: name to `version build`.
    #[serde(default)]
    pub packages: BTreeMap<String, String>,
    /// The NVIDIA driver version, when there is a driver.
    #[serde(default)]
    pub driver: Option<String>,
    /// The CUDA version the driver supports, when there is a driver.
    #[serde(default)]
    pub cuda: Option<String>,
    /// The GPUs this rank sees, by name, in device order.
    #[serde(default)]
    pub gpus: Vec<String>,
    /// The version of keel running on this rank.
    pub keel_version: String,
    /// The hash of the training configuration this rank read.
    pub config_hash: String,
}

/// A fact other than a package that differs between groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Fact {
    /// The prefix's fingerprint root hash.
    FingerprintRoot,
    /// The NVIDIA driver version.
    Driver,
    /// The CUDA version of the driver.
    Cuda,
    /// The GPUs seen.
    Gpus,
    /// keel's own version.
    KeelVersion,
    /// The training configuration's hash.
    ConfigHash,
}

impl fmt::Display for Fact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fact::FingerprintRoot => "environment root",
            Fact::Driver => "driver",
            Fact::Cuda => "CUDA",
            Fact::Gpus => "GPUs",
            Fact::KeelVersion => "keel version",
            Fact::ConfigHash => "config hash",
        })
    }
}

/// One difference between a group of ranks and the reference group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FactChange {
    /// A package in another version (or build) than on the reference ranks.
    PackageVersion {
        /// Package name.
        name: String,
        /// `version build` on the reference ranks.
        reference: String,
        /// `version build` here.
        here: String,
    },
    /// A package only these ranks have.
    PackageAdded {
        /// Package name.
        name: String,
        /// `version build` here.
        here: String,
    },
    /// A package only the reference ranks have.
    PackageRemoved {
        /// Package name.
        name: String,
        /// `version build` on the reference ranks.
        reference: String,
    },
    /// Another fact, shown as text (`(none)` when absent).
    Fact {
        /// Which fact.
        fact: Fact,
        /// Its value on the reference ranks.
        reference: String,
        /// Its value here.
        here: String,
    },
}

/// Ranks with identical facts (everything but `rank` and `host`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RankGroup {
    /// The ranks, ascending.
    pub ranks: Vec<usize>,
    /// Their hosts, sorted, each once.
    pub hosts: Vec<String>,
}

/// How one group differs from the reference group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupDiff {
    /// The group.
    pub group: RankGroup,
    /// What differs: package versions, added and removed packages (each by name), then the
    /// root, driver, CUDA, GPUs, keel version and config hash.
    pub changes: Vec<FactChange>,
}

/// The gate's verdict, the same on every rank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateReport {
    /// How many ranks reported.
    pub world: usize,
    /// The groups of identical ranks: the largest first, ties going to the group with the
    /// lowest rank (so rank 0's group wins one). The first is the reference.
    pub groups: Vec<RankGroup>,
    /// For every group but the reference, in the order of `groups`, what differs from it.
    pub differences: Vec<GroupDiff>,
}

/// The facts that must agree, borrowed from [`RankFacts`] (all but `rank` and `host`).
#[derive(PartialEq, Eq)]
struct Environment<'a> {
    fingerprint_root: &'a Option<String>,
    packages: &'a BTreeMap<String, String>,
    driver: &'a Option<String>,
    cuda: &'a Option<String>,
    gpus: &'a [String],
    keel_version: &'a str,
    config_hash: &'a str,
}

impl RankFacts {
    fn environment(&self) -> Environment<'_> {
        Environment {
            fingerprint_root: &self.fingerprint_root,
            packages: &self.packages,
            driver: &self.driver,
            cuda: &self.cuda,
            gpus: &self.gpus,
            keel_version: &self.keel_version,
            config_hash: &self.config_hash,
        }
    }
}

fn optional(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "(none)".to_string())
}

fn gpus(gpus: &[String]) -> String {
    if gpus.is_empty() {
        "(none)".to_string()
    } else {
        gpus.join(", ")
    }
}

/// What differs in `here` compared with `reference`, in the order [`GroupDiff::changes`] says.
fn compare(reference: &RankFacts, here: &RankFacts) -> Vec<FactChange> {
    let mut versions = Vec::new();
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let names: BTreeSet<&String> = reference
        .packages
        .keys()
        .chain(here.packages.keys())
        .collect();
    for name in names {
        match (reference.packages.get(name), here.packages.get(name)) {
            (Some(a), Some(b)) if a != b => versions.push(FactChange::PackageVersion {
                name: name.clone(),
                reference: a.clone(),
                here: b.clone(),
            }),
            (None, Some(b)) => added.push(FactChange::PackageAdded {
                name: name.clone(),
                here: b.clone(),
            }),
            (Some(a), None) => removed.push(FactChange::PackageRemoved {
                name: name.clone(),
                reference: a.clone(),
            }),
            _ => {}
        }
    }
    let mut changes = versions;
    changes.append(&mut added);
    changes.append(&mut removed);
    let facts = [
        (
            Fact::FingerprintRoot,
            optional(&reference.fingerprint_root),
            optional(&here.fingerprint_root),
            reference.fingerprint_root == here.fingerprint_root,
        ),
        (
            Fact::Driver,
            optional(&reference.driver),
            optional(&here.driver),
            reference.driver == here.driver,
        ),
        (
            Fact::Cuda,
            optional(&reference.cuda),
            optional(&here.cuda),
            reference.cuda == here.cuda,
        ),
        (
            Fact::Gpus,
            gpus(&reference.gpus),
            gpus(&here.gpus),
            reference.gpus == here.gpus,
        ),
        (
            Fact::KeelVersion,
            reference.keel_version.clone(),
            here.keel_version.clone(),
            reference.keel_version == here.keel_version,
        ),
        (
            Fact::ConfigHash,
            reference.config_hash.clone(),
            here.config_hash.clone(),
            reference.config_hash == here.config_hash,
        ),
    ];
    changes.extend(facts.into_iter().filter(|(_, _, _, same)| !same).map(
        |(fact, reference, here, _)| FactChange::Fact {
            fact,
            reference,
            here,
        },
    ));
    changes
}

impl GateReport {
    /// Groups the facts (one per rank) and compares every group with the largest.
    pub fn from_facts(facts: &[RankFacts]) -> GateReport {
        // Groups as indices into `facts`, in the order of their first rank.
        let mut ordered: Vec<&RankFacts> = facts.iter().collect();
        ordered.sort_by_key(|f| f.rank);
        let mut groups: Vec<Vec<&RankFacts>> = Vec::new();
        for fact in ordered {
            match groups
                .iter_mut()
                .find(|group| group[0].environment() == fact.environment())
            {
                Some(group) => group.push(fact),
                None => groups.push(vec![fact]),
            }
        }
        // Stable: equal sizes keep the order of their lowest rank.
        groups.sort_by_key(|group| std::cmp::Reverse(group.len()));

        let rank_group = |members: &[&RankFacts]| RankGroup {
            ranks: members.iter().map(|f| f.rank).collect(),
            hosts: members
                .iter()
                .map(|f| f.host.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        let differences = match groups.first() {
            Some(reference) => groups[1..]
                .iter()
                .map(|group| GroupDiff {
                    group: rank_group(group),
                    changes: compare(reference[0], group[0]),
                })
                .collect(),
            None => Vec::new(),
        };
        GateReport {
            world: facts.len(),
            groups: groups.iter().map(|group| rank_group(group)).collect(),
            differences,
        }
    }

    /// Every rank has the same environment.
    pub fn is_uniform(&self) -> bool {
        self.groups.len() <= 1
    }
}

/// Text from another rank, with control characters escaped so that it cannot rewrite the
/// terminal.
fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// Ranks as ranges: `0-3, 5, 7-8`.
fn ranges(ranks: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut index = 0;
    while index < ranks.len() {
        let start = ranks[index];
        let mut end = start;
        while index + 1 < ranks.len() && ranks[index + 1] == end + 1 {
            index += 1;
            end = ranks[index];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        index += 1;
    }
    parts.join(", ")
}

fn label(group: &RankGroup) -> String {
    let noun = if group.ranks.len() == 1 {
        "rank"
    } else {
        "ranks"
    };
    let hosts: Vec<Cow<'_, str>> = group.hosts.iter().map(|h| shown(h)).collect();
    format!("{noun} {} on {}", ranges(&group.ranks), hosts.join(", "))
}

impl fmt::Display for GateReport {
    /// The summary `keel diff` prints for prefixes: the groups, then what differs in each
    /// group from the reference.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_uniform() {
            let hosts = self
                .groups
                .first()
                .map(|g| {
                    g.hosts
                        .iter()
                        .map(|h| shown(h))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            return if self.world == 1 {
                write!(f, "1 rank, nothing to compare (on {hosts})")
            } else {
                write!(
                    f,
                    "all {} ranks have the same environment (on {hosts})",
                    self.world
                )
            };
        }
        for (index, group) in self.groups.iter().enumerate() {
            let role = if index == 0 { "reference" } else { "differs" };
            writeln!(f, "{role:<9} {}", label(group))?;
        }
        for difference in &self.differences {
            let verb = if difference.group.ranks.len() == 1 {
                "differs"
            } else {
                "differ"
            };
            write!(
                f,
                "\n{} {verb} from the reference:",
                label(&difference.group)
            )?;
            for change in &difference.changes {
                match change {
                    FactChange::PackageVersion {
                        name,
                        reference,
                        here,
                    } => write!(
                        f,
                        "\n  package {}: {} -> {}",
                        shown(name),
                        shown(reference),
                        shown(here)
                    )?,
                    FactChange::PackageAdded { name, here } => {
                        write!(f, "\n  + package {} {}", shown(name), shown(here))?;
                    }
                    FactChange::PackageRemoved { name, reference } => {
                        write!(f, "\n  - package {} {}", shown(name), shown(reference))?;
                    }
                    FactChange::Fact {
                        fact,
                        reference,
                        here,
                    } => write!(f, "\n  {fact}: {} -> {}", shown(reference), shown(here))?,
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Every rank sends its facts to every other (an all-gather) and computes the same
/// [`GateReport`] from the same gathered bytes. A rank whose facts do not parse, or name
/// another rank, is an error on every rank alike: no rank leaves while the others wait.
pub fn gate(communicator: &dyn Collective, facts: &RankFacts) -> Result<GateReport, DistError> {
    gate_facts(communicator, facts).map(|(report, _)| report)
}

/// [`gate`], also returning every rank's facts in rank order (what a trainer records: which
/// host ran which rank on which environment root).
pub fn gate_facts(
    communicator: &dyn Collective,
    facts: &RankFacts,
) -> Result<(GateReport, Vec<RankFacts>), DistError> {
    // Serialising these types cannot fail; if it ever did, the empty message would make every
    // rank report this rank's facts as unreadable instead of leaving the others waiting.
    let mine = serde_json::to_vec(facts).unwrap_or_default();
    let gathered = communicator.all_gather_bytes(&mine)?;
    if gathered.len() != communicator.size() {
        return Err(DistError::WrongCount {
            what: "the all-gather of environment facts",
            got: gathered.len(),
            size: communicator.size(),
        });
    }
    let all = gathered
        .iter()
        .enumerate()
        .map(|(index, bytes)| {
            let facts: RankFacts =
                serde_json::from_slice(bytes).map_err(|source| DistError::Facts {
                    rank: index,
                    source,
                })?;
            if facts.rank == index {
                Ok(facts)
            } else {
                Err(DistError::FactsRank {
                    index,
                    claimed: facts.rank,
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((GateReport::from_facts(&all), all))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Single;
    use proptest::prelude::*;

    fn facts(rank: usize, host: &str) -> RankFacts {
        RankFacts {
            rank,
            host: host.to_string(),
            fingerprint_root: Some("b3-root".to_string()),
            packages: [
                ("numpy", "1.26.4 py312_0"),
                ("python", "3.12.3 h1_0"),
                ("pytorch", "2.3.0 cuda12"),
            ]
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
            driver: Some("550.54.15".to_string()),
            cuda: Some("12.4".to_string()),
            gpus: vec!["NVIDIA H100".to_string(); 2],
            keel_version: "0.1.0".to_string(),
            config_hash: "cfg-1".to_string(),
        }
    }

    /// A world of `gathered.len()` ranks seen from `rank`, whose all-gather returns what the
    /// ranks "sent": the gate's side of a job, without MPI.
    struct Gathered {
        rank: usize,
        gathered: Vec<Vec<u8>>,
    }

    impl Collective for Gathered {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.gathered.len()
        }
        fn barrier(&self) -> Result<(), DistError> {
            Ok(())
        }
        fn broadcast_bytes(&self, _root: usize, _bytes: &mut Vec<u8>) -> Result<(), DistError> {
            unreachable!("the gate all-gathers")
        }
        fn all_reduce_sum_f32(&self, _values: &mut [f32]) -> Result<(), DistError> {
            unreachable!("the gate all-gathers")
        }
        fn all_reduce_sum_f64(&self, _values: &mut [f64]) -> Result<(), DistError> {
            unreachable!("the gate all-gathers")
        }
        fn all_reduce_max_u64(&self, _value: u64) -> Result<u64, DistError> {
            unreachable!("the gate all-gathers")
        }
        fn gather_bytes(
            &self,
            _root: usize,
            _bytes: &[u8],
        ) -> Result<Option<Vec<Vec<u8>>>, DistError> {
            unreachable!("the gate all-gathers")
        }
        fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
            assert_eq!(
                bytes, self.gathered[self.rank],
                "a rank sends its own facts"
            );
            Ok(self.gathered.clone())
        }
    }

    fn sent(all: &[RankFacts]) -> Vec<Vec<u8>> {
        all.iter().map(|f| serde_json::to_vec(f).unwrap()).collect()
    }

    #[test]
    fn every_rank_of_a_world_gets_the_same_report() {
        let mut all: Vec<_> = (0..3)
            .map(|rank| facts(rank, &format!("node-{rank}")))
            .collect();
        all[2].cuda = Some("12.2".to_string());
        let reports: Vec<GateReport> = (0..3)
            .map(|rank| {
                let world = Gathered {
                    rank,
                    gathered: sent(&all),
                };
                gate(&world, &all[rank]).unwrap()
            })
            .collect();
        assert!(!reports[0].is_uniform());
        assert_eq!(reports[0].groups[1].ranks, [2]);
        assert_eq!(reports[0], reports[1]);
        assert_eq!(reports[0], reports[2]);
    }

    #[test]
    fn facts_from_another_rank_that_do_not_parse_fail_the_gate() {
        let all = [facts(0, "node-a"), facts(1, "node-b")];
        // Cut short, and empty (what a rank whose facts failed to serialise sends).
        for broken in [br#"{"rank": 1, "host": "node-b"#.to_vec(), Vec::new()] {
            let mut gathered = sent(&all);
            gathered[1] = broken;
            let error = gate(&Gathered { rank: 0, gathered }, &all[0]).unwrap_err();
            assert_eq!(
                error.to_string(),
                "rank 1 sent environment facts that do not parse (is it another keel version?)"
            );
            assert!(std::error::Error::source(&error).is_some());
        }
    }

    #[test]
    fn an_all_gather_of_the_wrong_length_fails_the_gate() {
        struct Short;
        impl Collective for Short {
            fn rank(&self) -> usize {
                0
            }
            fn size(&self) -> usize {
                2
            }
            fn barrier(&self) -> Result<(), DistError> {
                Ok(())
            }
            fn broadcast_bytes(&self, _: usize, _: &mut Vec<u8>) -> Result<(), DistError> {
                Ok(())
            }
            fn all_reduce_sum_f32(&self, _: &mut [f32]) -> Result<(), DistError> {
                Ok(())
            }
            fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<(), DistError> {
                Ok(())
            }
            fn all_reduce_max_u64(&self, value: u64) -> Result<u64, DistError> {
                Ok(value)
            }
            fn gather_bytes(&self, _: usize, _: &[u8]) -> Result<Option<Vec<Vec<u8>>>, DistError> {
                Ok(None)
            }
            fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
                Ok(vec![bytes.to_vec()])
            }
        }
        let error = gate(&Short, &facts(0, "node-a")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the all-gather of environment facts returned 1 entries for a world of 2"
        );
    }

    #[test]
    fn gate_on_single_is_uniform() {
        let report = gate(&Single, &facts(0, "node-a")).unwrap();
        assert!(report.is_uniform());
        assert_eq!(report.world, 1);
        assert!(report.differences.is_empty());
        assert_eq!(report.to_string(), "1 rank, nothing to compare (on node-a)");
    }

    #[test]
    fn gate_refuses_facts_that_name_another_rank() {
        let error = gate(&Single, &facts(3, "node-a")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the environment facts gathered from rank 0 say they come from rank 3"
        );
    }

    #[test]
    fn hosts_and_ranks_do_not_split_groups() {
        let all: Vec<_> = (0..4)
            .map(|rank| facts(rank, &format!("node-{}", rank / 2)))
            .collect();
        let report = GateReport::from_facts(&all);
        assert!(report.is_uniform());
        assert_eq!(report.groups[0].ranks, [0, 1, 2, 3]);
        assert_eq!(report.groups[0].hosts, ["node-0", "node-1"]);
        assert_eq!(
            report.to_string(),
            "all 4 ranks have the same environment (on node-0, node-1)"
        );
    }

    #[test]
    fn the_majority_is_the_reference_even_without_rank_zero() {
        let mut all: Vec<_> = (0..4).map(|rank| facts(rank, "node-a")).collect();
        all[0].driver = Some("535.104".to_string());
        let report = GateReport::from_facts(&all);
        assert_eq!(report.groups[0].ranks, [1, 2, 3]);
        assert_eq!(report.groups[1].ranks, [0]);
        assert_eq!(
            report.differences[0].changes,
            [FactChange::Fact {
                fact: Fact::Driver,
                reference: "550.54.15".to_string(),
                here: "535.104".to_string(),
            }]
        );
    }

    #[test]
    fn a_tie_goes_to_the_group_of_rank_zero() {
        let mut all: Vec<_> = (0..4).map(|rank| facts(rank, "node-a")).collect();
        all[1].config_hash = "cfg-2".to_string();
        all[3].config_hash = "cfg-2".to_string();
        let report = GateReport::from_facts(&all);
        assert_eq!(report.groups[0].ranks, [0, 2]);
        assert_eq!(report.groups[1].ranks, [1, 3]);
    }

    #[test]
    fn every_kind_of_difference_in_order() {
        let reference = facts(0, "node-a");
        let mut other = facts(1, "node-b");
        other
            .packages
            .insert("numpy".into(), "2.0.0 py312_0".into());
        other.packages.insert("aaa-extra".into(), "1.0 0".into());
        other.packages.remove("pytorch");
        other.fingerprint_root = None;
        other.driver = Some("535.104".into());
        other.cuda = Some("12.2".into());
        other.gpus = vec!["NVIDIA H100".into()];
        other.keel_version = "0.2.0".into();
        other.config_hash = "cfg-2".into();
        let third = facts(2, "node-a");
        let report = GateReport::from_facts(&[reference, other, third]);
        assert!(!report.is_uniform());
        let text = report.to_string();
        assert_eq!(
            text,
            "reference ranks 0, 2 on node-a\n\
             differs   rank 1 on node-b\n\
             \n\
             rank 1 on node-b differs from the reference:\n  \
             package numpy: 1.26.4 py312_0 -> 2.0.0 py312_0\n  \
             + package aaa-extra 1.0 0\n  \
             - package pytorch 2.3.0 cuda12\n  \
             environment root: b3-root -> (none)\n  \
             driver: 550.54.15 -> 535.104\n  \
             CUDA: 12.4 -> 12.2\n  \
             GPUs: NVIDIA H100, NVIDIA H100 -> NVIDIA H100\n  \
             keel version: 0.1.0 -> 0.2.0\n  \
             config hash: cfg-1 -> cfg-2\n"
        );
    }

    #[test]
    fn control_characters_from_another_rank_are_escaped() {
        let mut all = vec![facts(0, "node-a"), facts(1, "node\u{1b}[2Jb")];
        all[1].packages.insert("numpy".into(), "1.0\r\u{7}".into());
        let text = GateReport::from_facts(&all).to_string();
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("node\\u{1b}[2Jb"), "{text}");
    }

    #[test]
    fn rank_ranges() {
        assert_eq!(ranges(&[0, 1, 2, 3, 5, 7, 8]), "0-3, 5, 7-8");
        assert_eq!(ranges(&[4]), "4");
        assert_eq!(ranges(&[]), "");
    }

    #[test]
    fn facts_round_trip_and_unknown_fields_are_ignored() {
        let original = facts(0, "node-a");
        let mut json = serde_json::to_value(&original).unwrap();
        json["added_by_a_newer_keel"] = serde_json::json!(true);
        let back: RankFacts = serde_json::from_value(json).unwrap();
        assert_eq!(back, original);
    }

    fn any_facts(rank: usize) -> impl Strategy<Value = RankFacts> {
        (
            prop::sample::select(vec!["node-a", "node-b"]),
            prop::collection::btree_map("[a-c]", "[0-2]", 0..3),
            prop::option::of("[0-1]"),
            prop::sample::select(vec!["cfg-1", "cfg-2"]),
        )
            .prop_map(move |(host, packages, driver, config)| RankFacts {
                rank,
                host: host.to_string(),
                fingerprint_root: None,
                packages,
                driver,
                cuda: None,
                gpus: Vec::new(),
                keel_version: "0.1.0".to_string(),
                config_hash: config.to_string(),
            })
    }

    fn any_world() -> impl Strategy<Value = Vec<RankFacts>> {
        (1usize..7).prop_flat_map(|size| (0..size).map(any_facts).collect::<Vec<_>>())
    }

    proptest! {
        /// Rule: the groups partition the ranks; the reference is a largest group (and, among
        /// the largest, the one with the lowest rank); a group differs from the reference
        /// exactly when its facts do, and a rank's group lists no changes against a rank of
        /// the same group.
        #[test]
        fn groups_partition_and_reference_is_largest(world in any_world()) {
            let report = GateReport::from_facts(&world);
            let mut seen: Vec<usize> = report.groups.iter().flat_map(|g| g.ranks.clone()).collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..world.len()).collect::<Vec<_>>());
            let reference = &report.groups[0];
            for group in &report.groups[1..] {
                prop_assert!(
                    group.ranks.len() < reference.ranks.len()
                        || (group.ranks.len() == reference.ranks.len()
                            && group.ranks[0] > reference.ranks[0])
                );
            }
            prop_assert_eq!(report.differences.len(), report.groups.len() - 1);
            for difference in &report.differences {
                prop_assert!(!difference.changes.is_empty());
            }
            prop_assert_eq!(report.is_uniform(), world.iter().all(|f| f.environment() == world[0].environment()));
            for group in &report.groups {
                for &rank in &group.ranks {
                    prop_assert!(compare(&world[group.ranks[0]], &world[rank]).is_empty());
                }
            }
        }
    }
}
