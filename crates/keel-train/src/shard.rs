//! Optimizer-state sharding (ZeRO-1): which elements of the flattened parameter vector each
//! rank owns, how a checkpoint records that partition, and how the moments of any saved
//! layout (one replicated group, or one group per rank of any world size) are put together
//! again for the elements a rank owns now.
//!
//! The flattened parameter vector is the model's parameters in their order
//! ([`Model::parameters`](crate::Model::parameters)), each row-major. Rank `r` of `w` owns
//! the contiguous elements [`shard_range`]`(total, r, w)`: sizes within one, in rank order,
//! so any world size has its own partition and a checkpoint of one re-splits for another.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use keel_ckpt::{Dtype, MAX_WORLD_SIZE, TensorGroup, rank_group};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How a data-parallel run keeps the optimizer's state (AdamW's `m` and `v`, SGD's momentum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerSharding {
    /// Every rank holds and updates all of it (the default); rank 0 saves it.
    #[default]
    Replicated,
    /// ZeRO-1: every rank holds the state of its own share of the parameters' elements
    /// ([`shard_range`]), updates only that share after the gradient all-reduce, and the
    /// updated parameters are all-gathered; every rank saves its share into one multi-rank
    /// checkpoint (`optimizer-rank<R>`). The weights are bit for bit those of replicated
    /// training at the same world size (AdamW and SGD are elementwise).
    Sharded,
}

/// The elements of a flattened parameter vector of `total` elements that rank `rank` of
/// `world` owns when the optimizer state is sharded: the rule of
/// [`rank_rows`](crate::rank_rows) (contiguous, in rank order, sizes within one, covering
/// every element once).
pub fn shard_range(total: usize, rank: usize, world: usize) -> Range<usize> {
    crate::dist::rank_rows(total, rank, world)
}

/// Every rank's [`shard_range`] in a world of `world`.
pub(crate) fn partition(total: usize, world: usize) -> Vec<Range<usize>> {
    (0..world.max(1))
        .map(|rank| shard_range(total, rank, world))
        .collect()
}

/// What a checkpoint's trainer state records of a sharded optimizer.
pub(crate) fn partition_record(total: usize, ranges: &[Range<usize>]) -> Value {
    json!({
        "world_size": ranges.len(),
        "elements": total,
        "ranges": ranges.iter().map(|r| [r.start, r.end]).collect::<Vec<_>>(),
    })
}

/// For parameters of `sizes` elements (in order), the part of each that the global element
/// range `owned` covers, as a range of the parameter's own flattened elements (empty when
/// it covers none of it).
pub(crate) fn pieces(sizes: &[usize], owned: &Range<usize>) -> Vec<Range<usize>> {
    let mut offset = 0usize;
    sizes
        .iter()
        .map(|&n| {
            let (start, end) = (owned.start.max(offset), owned.end.min(offset + n));
            let piece = if start < end {
                start - offset..end - offset
            } else {
                0..0
            };
            offset += n;
            piece
        })
        .collect()
}

/// Where a checkpoint holds the optimizer's moments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One `optimizer` group, each tensor shaped as its parameter.
    Replicated,
    /// One `optimizer-rank<R>` group per rank, rank `R` holding the elements `ranges[R]` of
    /// the flattened parameter vector (each tensor the 1-D piece of one parameter).
    Sharded(Vec<Range<usize>>),
}

impl Layout {
    /// Every source of moments: the elements it covers and its group.
    fn sources(&self, total: usize) -> Vec<(Range<usize>, String)> {
        match self {
            Layout::Replicated => vec![(0..total, "optimizer".to_string())],
            Layout::Sharded(ranges) => ranges
                .iter()
                .enumerate()
                .map(|(rank, range)| (range.clone(), rank_group("optimizer", rank)))
                .collect(),
        }
    }

    /// The groups a rank that owns `owned` (all elements when `None`) reads.
    pub(crate) fn groups_for(
        &self,
        total: usize,
        owned: Option<&Range<usize>>,
    ) -> BTreeSet<String> {
        self.sources(total)
            .into_iter()
            .filter(|(range, _)| owned.is_none_or(|o| overlap(range, o).is_some()))
            .map(|(_, group)| group)
            .collect()
    }
}

fn overlap(a: &Range<usize>, b: &Range<usize>) -> Option<Range<usize>> {
    let (start, end) = (a.start.max(b.start), a.end.min(b.end));
    (start < end).then_some(start..end)
}

/// The layout a checkpoint's trainer state records (its optimizer's `sharding`), checked
/// against the model (`total` elements) and the manifest's world size: none is the replicated
/// layout;
/// a sharded one must have one range per rank of the manifest's world, in rank order,
/// covering `0..total` exactly once.
pub(crate) fn saved_layout(
    sharding: Option<&Value>,
    manifest_world: Option<usize>,
    total: usize,
) -> Result<Layout, String> {
    let Some(sharding) = sharding.filter(|v| !v.is_null()) else {
        return Ok(Layout::Replicated);
    };
    let field = |key: &str| {
        sharding
            .get(key)
            .and_then(Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| format!("its optimizer sharding has no `{key}` count"))
    };
    let (world, elements) = (field("world_size")?, field("elements")?);
    if world == 0 || world > MAX_WORLD_SIZE {
        return Err(format!(
            "its optimizer is sharded over {world} ranks (1 to {MAX_WORLD_SIZE})"
        ));
    }
    if manifest_world != Some(world) {
        return Err(format!(
            "its optimizer is sharded over {world} ranks, its manifest records {}",
            manifest_world.map_or("no world size".to_string(), |w| format!("{w} ranks"))
        ));
    }
    if elements != total {
        return Err(format!(
            "its optimizer shards cover {elements} parameter elements, the model has {total}"
        ));
    }
    let ranges: Vec<[usize; 2]> = sharding
        .get("ranges")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("its optimizer shard ranges: {e}"))?
        .ok_or("its optimizer sharding has no `ranges`")?;
    if ranges.len() != world {
        return Err(format!(
            "its optimizer sharding lists {} ranges for {world} ranks",
            ranges.len()
        ));
    }
    let mut next = 0;
    for (rank, [start, end]) in ranges.iter().copied().enumerate() {
        if start != next || end < start {
            return Err(format!(
                "rank {rank}'s optimizer shard {start}..{end} does not start where the shards \
                 before it end ({next}): the shards must cover the {total} elements once, in \
                 rank order"
            ));
        }
        next = end;
    }
    if next != total {
        return Err(format!(
            "the optimizer shards end at element {next}, the model has {total}"
        ));
    }
    Ok(Layout::Sharded(
        ranges.into_iter().map(|[start, end]| start..end).collect(),
    ))
}

/// One parameter as the assembly needs it.
#[derive(Debug, Clone)]
pub(crate) struct ParamInfo {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: Dtype,
}

/// The optimizer tensors (`<moment>.<parameter>`) for a rank that owns the global elements
/// `owned` (`None`: all of them, each tensor shaped as its parameter; otherwise each
/// parameter's 1-D piece of `owned`), put together from the saved `groups` of `layout`.
/// Every loaded tensor is checked: it names a parameter of the model, its source's range
/// holds some of that parameter, its shape is what that piece takes, its dtype the
/// parameter's; a moment that some sources saved for a parameter and others did not is an
/// error. A moment no source saved for a parameter (SGD before its first step) stays absent.
pub(crate) fn assemble(
    params: &[ParamInfo],
    layout: &Layout,
    groups: &BTreeMap<String, TensorGroup>,
    owned: Option<&Range<usize>>,
) -> Result<TensorGroup, String> {
    let mut offsets = Vec::with_capacity(params.len());
    let mut total = 0usize;
    for p in params {
        let n = p.shape.iter().product::<usize>();
        offsets.push(total..total + n);
        total += n;
    }
    let index: BTreeMap<&str, usize> = params
        .iter()
        .enumerate()
        .map(|(k, p)| (p.name.as_str(), k))
        .collect();
    let sources = layout.sources(total);
    // Every loaded tensor checked; the moments found.
    let mut moments = BTreeSet::new();
    for (range, group) in &sources {
        let Some(tensors) = groups.get(group) else {
            continue;
        };
        for (name, tensor) in tensors {
            let (moment, parameter) = name
                .split_once('.')
                .filter(|(m, _)| !m.is_empty())
                .ok_or_else(|| {
                    format!("optimizer state `{group}/{name}` is not <moment>.<parameter>")
                })?;
            let &k = index.get(parameter).ok_or_else(|| {
                format!("optimizer state `{group}/{name}` names no parameter of the model")
            })?;
            let p = &params[k];
            let piece = overlap(range, &offsets[k]).ok_or_else(|| {
                format!(
                    "`{group}` holds `{name}`, but its elements {}..{} hold none of parameter \
                     `{parameter}` ({}..{})",
                    range.start, range.end, offsets[k].start, offsets[k].end
                )
            })?;
            let shape = match layout {
                Layout::Replicated => p.shape.clone(),
                Layout::Sharded(_) => vec![piece.len()],
            };
            if tensor.shape != shape
                || tensor.dtype != p.dtype
                || tensor.data.len() != piece.len() * p.dtype.size()
            {
                return Err(format!(
                    "optimizer state `{group}/{name}` is {:?} {:?} ({} bytes), its share of \
                     parameter `{parameter}` takes {:?} {shape:?}",
                    tensor.dtype,
                    tensor.shape,
                    tensor.data.len(),
                    p.dtype
                ));
            }
            moments.insert(moment.to_string());
        }
    }
    let mut out = TensorGroup::new();
    for moment in &moments {
        for (k, p) in params.iter().enumerate() {
            let whole = &offsets[k];
            let Some(needed) = (match owned {
                None => overlap(whole, whole),
                Some(o) => overlap(whole, o),
            }) else {
                continue;
            };
            let name = format!("{moment}.{}", p.name);
            let size = p.dtype.size();
            let mut data = Vec::with_capacity(needed.len() * size);
            let (mut saved, mut unsaved) = (Vec::new(), Vec::new());
            for (rank, (range, group)) in sources.iter().enumerate() {
                let Some(need) = overlap(range, &needed) else {
                    continue;
                };
                match groups.get(group).and_then(|g| g.get(&name)) {
                    None => unsaved.push(rank),
                    Some(tensor) => {
                        saved.push(rank);
                        // Checked above: the tensor holds exactly `range ∩ whole`.
                        let held = range.start.max(whole.start);
                        let from = (need.start - held) * size;
                        let to = (need.end - held) * size;
                        data.extend_from_slice(&tensor.data[from..to]);
                    }
                }
            }
            if saved.is_empty() {
                continue;
            }
            if !unsaved.is_empty() {
                let list = |ranks: &[usize]| {
                    ranks
                        .iter()
                        .map(|r| sources[*r].1.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(format!(
                    "optimizer state `{name}` is in {} but not in {}",
                    list(&saved),
                    list(&unsaved)
                ));
            }
            let shape = match owned {
                None => p.shape.clone(),
                Some(_) => vec![needed.len()],
            };
            let tensor =
                keel_ckpt::Tensor::new(&name, p.dtype, shape, data).map_err(|e| e.to_string())?;
            out.insert(name, tensor);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The partition rule: for every element count and world size, the ranks' ranges are
    /// contiguous, disjoint, in rank order, cover every element once, and differ in size by
    /// at most one; each parameter's pieces over the ranks cover it once, in order.
    #[test]
    fn shard_ranges_cover_every_element_once_disjoint_and_within_one() {
        let sizes = [7usize, 1, 0, 12, 3];
        let total: usize = sizes.iter().sum();
        for world in 1..=30 {
            let ranges = partition(total, world);
            assert_eq!(ranges.len(), world);
            let mut next = 0;
            for range in &ranges {
                assert_eq!(range.start, next, "world {world}: {ranges:?}");
                next = range.end;
            }
            assert_eq!(next, total);
            let lens: Vec<usize> = ranges.iter().map(ExactSizeIterator::len).collect();
            let (min, max) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
            assert!(max - min <= 1, "world {world}: {lens:?}");
            // Per parameter: the pieces of all ranks, in rank order, tile it.
            let per_rank: Vec<Vec<Range<usize>>> =
                ranges.iter().map(|owned| pieces(&sizes, owned)).collect();
            for (k, &n) in sizes.iter().enumerate() {
                let mut next = 0;
                for rank_pieces in &per_rank {
                    let piece = &rank_pieces[k];
                    if piece.is_empty() {
                        continue;
                    }
                    assert_eq!(piece.start, next, "world {world}, parameter {k}");
                    next = piece.end;
                }
                assert_eq!(next, n, "world {world}, parameter {k}");
            }
        }
        assert_eq!(shard_range(25, 0, 3), 0..9);
        assert_eq!(shard_range(25, 2, 3), 17..25);
        assert_eq!(pieces(&[4, 4], &(2..6)), [2..4, 0..2]);
        assert_eq!(pieces(&[4, 4], &(0..4)), [0..4, 0..0]);
    }

    fn params() -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "a.weight".into(),
                shape: vec![2, 3],
                dtype: Dtype::F32,
            },
            ParamInfo {
                name: "b".into(),
                shape: vec![4],
                dtype: Dtype::F32,
            },
        ]
    }

    fn tensor(values: &[f32], shape: Vec<usize>) -> keel_ckpt::Tensor {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        keel_ckpt::Tensor::new("t", Dtype::F32, shape, data).unwrap()
    }

    fn values(t: &keel_ckpt::Tensor) -> Vec<f32> {
        t.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// The groups a world of `world` saves of the moments `m = 0..10` (`a.weight` 0..6, `b`
    /// 6..10), by the partition rule.
    fn sharded(world: usize) -> (Layout, BTreeMap<String, TensorGroup>) {
        let all: Vec<f32> = (0..10).map(|v| v as f32).collect();
        let ranges = partition(10, world);
        let mut groups = BTreeMap::new();
        for (rank, owned) in ranges.iter().enumerate() {
            let mut group = TensorGroup::new();
            for (k, (piece, offset)) in pieces(&[6, 4], owned).into_iter().zip([0, 6]).enumerate() {
                if !piece.is_empty() {
                    let name = format!("m.{}", params()[k].name);
                    let part = &all[offset + piece.start..offset + piece.end];
                    group.insert(name, tensor(part, vec![piece.len()]));
                }
            }
            groups.insert(rank_group("optimizer", rank), group);
        }
        (Layout::Sharded(ranges), groups)
    }

    /// A sharded checkpoint of any world size re-splits for any other, and into the
    /// replicated layout, with the values in global element order.
    #[test]
    fn saved_shards_reassemble_for_any_world_size() {
        let all: Vec<f32> = (0..10).map(|v| v as f32).collect();
        for saved in 1..=4 {
            let (layout, groups) = sharded(saved);
            let whole = assemble(&params(), &layout, &groups, None).unwrap();
            assert_eq!(whole["m.a.weight"].shape, [2, 3]);
            assert_eq!(values(&whole["m.a.weight"]), all[..6]);
            assert_eq!(values(&whole["m.b"]), all[6..]);
            for world in 1..=5 {
                for rank in 0..world {
                    let owned = shard_range(10, rank, world);
                    let got = assemble(&params(), &layout, &groups, Some(&owned)).unwrap();
                    let mut flat = Vec::new();
                    for (k, piece) in pieces(&[6, 4], &owned).into_iter().enumerate() {
                        let name = format!("m.{}", params()[k].name);
                        if piece.is_empty() {
                            assert!(!got.contains_key(&name));
                        } else {
                            assert_eq!(got[&name].shape, [piece.len()]);
                            flat.extend(values(&got[&name]));
                        }
                    }
                    assert_eq!(
                        flat,
                        all[owned.clone()],
                        "{saved} -> rank {rank} of {world}"
                    );
                }
            }
        }
        // Replicated into shards.
        let mut replicated = TensorGroup::new();
        replicated.insert("m.a.weight".into(), tensor(&all[..6], vec![2, 3]));
        replicated.insert("m.b".into(), tensor(&all[6..], vec![4]));
        let groups = BTreeMap::from([("optimizer".to_string(), replicated)]);
        let got = assemble(&params(), &Layout::Replicated, &groups, Some(&(5..8))).unwrap();
        assert_eq!(values(&got["m.a.weight"]), [5.0]);
        assert_eq!(values(&got["m.b"]), [6.0, 7.0]);
    }

    /// A partition that does not cover the model once, a shard of the wrong size, a tensor
    /// of no parameter, or a moment one rank saved and another did not: each an error that
    /// says what.
    #[test]
    fn bad_saved_partitions_and_shards_are_refused() {
        let record = |world: usize, elements: usize, ranges: Value| json!({"sharding": {"world_size": world, "elements": elements, "ranges": ranges}});
        let ok = record(2, 10, json!([[0, 5], [5, 10]]));
        assert_eq!(
            saved_layout(ok.get("sharding"), Some(2), 10).unwrap(),
            Layout::Sharded(vec![0..5, 5..10])
        );
        assert_eq!(saved_layout(None, None, 10).unwrap(), Layout::Replicated);
        for (value, world, total, says) in [
            (ok.clone(), Some(3), 10, "its manifest records 3 ranks"),
            (
                ok.clone(),
                Some(2),
                11,
                "cover 10 parameter elements, the model has 11",
            ),
            (
                record(2, 10, json!([[0, 5], [6, 10]])),
                Some(2),
                10,
                "rank 1's optimizer shard 6..10",
            ),
            (
                record(2, 10, json!([[0, 6], [5, 10]])),
                Some(2),
                10,
                "rank 1's optimizer shard 5..10",
            ),
            (
                record(2, 10, json!([[0, 5], [5, 9]])),
                Some(2),
                10,
                "end at element 9",
            ),
            (
                record(2, 10, json!([[0, 10]])),
                Some(2),
                10,
                "1 ranges for 2 ranks",
            ),
            (
                record(0, 10, json!([])),
                Some(0),
                10,
                "sharded over 0 ranks",
            ),
            (record(2, 10, json!("x")), Some(2), 10, "shard ranges"),
        ] {
            let error = saved_layout(value.get("sharding"), world, total).unwrap_err();
            assert!(error.contains(says), "{error} (wanted {says})");
        }

        let (layout, groups) = sharded(2);
        let mut wrong = groups.clone();
        wrong
            .get_mut("optimizer-rank1")
            .unwrap()
            .insert("m.b".into(), tensor(&[1.0], vec![1]));
        let error = assemble(&params(), &layout, &wrong, None).unwrap_err();
        assert!(
            error.contains("`optimizer-rank1/m.b` is F32 [1]"),
            "{error}"
        );
        let mut stranger = groups.clone();
        stranger
            .get_mut("optimizer-rank0")
            .unwrap()
            .insert("m.c".into(), tensor(&[1.0], vec![1]));
        let error = assemble(&params(), &layout, &stranger, None).unwrap_err();
        assert!(error.contains("names no parameter"), "{error}");
        let mut missing = groups.clone();
        missing
            .get_mut("optimizer-rank1")
            .unwrap()
            .remove("m.a.weight");
        let error = assemble(&params(), &layout, &missing, None).unwrap_err();
        assert!(
            error.contains("`m.a.weight` is in optimizer-rank0 but not in optimizer-rank1"),
            "{error}"
        );
        // Rank 1 saved no moments at all: its piece of `a.weight` is missing.
        let mut none = groups;
        none.get_mut("optimizer-rank1").unwrap().clear();
        let error = assemble(&params(), &layout, &none, None).unwrap_err();
        assert!(error.contains("not in optimizer-rank1"), "{error}");
    }
}
