//! Data parallelism on a `keel_dist::Collective`: how a global batch is split by rank, how
//! gradients travel (flattened into one buffer, weighted by slice size), the digest the
//! divergence check compares, and the agreement every rank reaches before it acts alone.

use std::ops::Range;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use keel_ckpt::Snapshot;
use keel_dist::{Collective, Single};

use crate::TrainError;

/// The rows of a global batch of `len` rows that rank `rank` of `world` trains on: contiguous
/// slices in rank order, the first `len % world` ranks one row more than the others, so the
/// slices are disjoint, cover the batch, and differ in size by at most one. A rank gets an
/// empty slice when the batch has fewer rows than there are ranks (it then contributes a
/// zero gradient of weight 0). `world` 0 is taken as 1.
pub fn rank_rows(len: usize, rank: usize, world: usize) -> Range<usize> {
    let world = world.max(1);
    let (base, extra) = (len / world, len % world);
    let start = rank.saturating_mul(base).saturating_add(rank.min(extra));
    let end = start.saturating_add(base + usize::from(rank < extra));
    start.min(len)..end.min(len)
}

/// The communicator a trainer runs on (`Single` unless set), with a `Debug` the trait lacks.
#[derive(Clone)]
pub(crate) struct World(pub(crate) Arc<dyn Collective>);

impl Default for World {
    fn default() -> Self {
        World(Arc::new(Single))
    }
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "World(rank {} of {})", self.0.rank(), self.0.size())
    }
}

/// The agreed code of a step that failed on some rank (above every signal number).
pub(crate) const STEP_FAILED: u64 = 1 << 40;

impl World {
    pub(crate) fn rank(&self) -> usize {
        self.0.rank()
    }

    pub(crate) fn size(&self) -> usize {
        self.0.size()
    }

    pub(crate) fn lead(&self) -> bool {
        self.0.rank() == 0
    }

    /// Whether `outcome` holds on every rank: every rank takes part whatever its own outcome,
    /// so none is left waiting in a collective. When one failed, each rank gets its own error,
    /// or (where it did fine) [`TrainError::RankFailed`] naming the ranks that failed and why.
    /// The outer error is the communicator's own failure.
    pub(crate) fn agree<T>(
        &self,
        outcome: Result<T, TrainError>,
        step: u64,
    ) -> Result<Result<T, TrainError>, TrainError> {
        let failed = self.0.all_reduce_max_u64(u64::from(outcome.is_err()))? != 0;
        if !failed {
            return Ok(outcome);
        }
        Ok(Err(self.failure(outcome, step)?))
    }

    /// After an agreed failure: every rank's error text gathered; a rank that failed keeps
    /// its own error, the others get [`TrainError::RankFailed`] naming the ranks and why.
    pub(crate) fn failure<T>(
        &self,
        outcome: Result<T, TrainError>,
        step: u64,
    ) -> Result<TrainError, TrainError> {
        let text = match &outcome {
            Ok(_) => String::new(),
            Err(error) => crate::trainer::error_chain(error),
        };
        let all = if self.size() == 1 {
            vec![text.into_bytes()]
        } else {
            self.0.all_gather_bytes(text.as_bytes())?
        };
        Ok(match outcome {
            Err(own) => own,
            Ok(_) => TrainError::RankFailed {
                step,
                failures: all
                    .iter()
                    .enumerate()
                    .filter(|(_, text)| !text.is_empty())
                    .map(|(rank, text)| format!("rank {rank}: {}", String::from_utf8_lossy(text)))
                    .collect::<Vec<_>>()
                    .join("; "),
            },
        })
    }

    /// Rank 0's `decision` on every rank (the other ranks' values are ignored): a save
    /// policy can read the clock, and only rank 0's clock decides.
    pub(crate) fn lead_decides(&self, decision: impl FnOnce() -> bool) -> Result<bool, TrainError> {
        if self.size() == 1 {
            return Ok(decision());
        }
        let mine = self.lead() && decision();
        Ok(self.0.all_reduce_max_u64(u64::from(mine))? != 0)
    }
}

/// The gradients of one rank's slice, flattened in parameter order and weighted by the
/// slice's `rows`, then one `f32` per parameter saying whether this rank has its gradient,
/// then `rows * loss`: the buffer one all-reduce sums.
pub(crate) fn flatten_weighted(
    parameters: &[(String, Var)],
    grads: &GradStore,
    rows: usize,
    loss: f32,
) -> candle_core::Result<Vec<f32>> {
    let weight = rows as f32;
    let total: usize = parameters.iter().map(|(_, v)| v.elem_count()).sum();
    let mut buffer = Vec::with_capacity(total + parameters.len() + 1);
    let mut present = Vec::with_capacity(parameters.len());
    for (_, var) in parameters {
        match grads.get(var.as_tensor()) {
            Some(grad) => {
                let values = grad.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                if values.len() != var.elem_count() {
                    candle_core::bail!(
                        "a gradient of {} values for a parameter of {}",
                        values.len(),
                        var.elem_count()
                    );
                }
                buffer.extend(values.into_iter().map(|g| weight * g));
                present.push(1.0);
            }
            None => {
                buffer.extend(std::iter::repeat_n(0.0, var.elem_count()));
                present.push(0.0);
            }
        }
    }
    buffer.extend(present);
    buffer.push(weight * loss);
    Ok(buffer)
}

/// The summed buffer of [`flatten_weighted`] back into `grads` (each divided by the global
/// batch's `rows`; a parameter no rank had a gradient for stays without one), and the global
/// batch's mean loss.
pub(crate) fn rebuild_mean(
    parameters: &[(String, Var)],
    summed: &[f32],
    rows: usize,
    grads: &mut GradStore,
) -> candle_core::Result<f32> {
    let rows = rows as f32;
    let total: usize = parameters.iter().map(|(_, v)| v.elem_count()).sum();
    if summed.len() != total + parameters.len() + 1 {
        candle_core::bail!(
            "a gradient buffer of {} values for {} parameters of {total} values",
            summed.len(),
            parameters.len()
        );
    }
    let (values, rest) = summed.split_at(total);
    let (present, loss) = rest.split_at(parameters.len());
    let mut offset = 0;
    for ((_, var), &had) in parameters.iter().zip(present) {
        let n = var.elem_count();
        let part = &values[offset..offset + n];
        offset += n;
        if had == 0.0 {
            grads.remove(var.as_tensor());
            continue;
        }
        let mean: Vec<f32> = part.iter().map(|g| g / rows).collect();
        let grad = Tensor::from_vec(mean, var.shape(), var.device())?.to_dtype(var.dtype())?;
        grads.insert(var.as_tensor(), grad);
    }
    Ok(loss[0] / rows)
}

/// After a sharded update: every rank's new values of its `ranges[rank]` (`mine` here)
/// all-gathered as `f32` bytes, put together in global element order (the ranges are
/// contiguous and in rank order) and assigned to the parameters, so that every rank holds
/// the same weights again. A rank that sent another number of values than its range holds
/// is named (the outer, fatal error: the ranks no longer follow one protocol).
pub(crate) fn gather_parameters(
    world: &World,
    parameters: &[(String, Var)],
    ranges: &[Range<usize>],
    mine: &[f32],
) -> Result<(), TrainError> {
    let bytes: Vec<u8> = mine.iter().flat_map(|v| v.to_le_bytes()).collect();
    let all = world.0.all_gather_bytes(&bytes)?;
    let wrong: Vec<String> = ranges
        .iter()
        .enumerate()
        .filter(|(rank, range)| all.get(*rank).map(Vec::len) != Some(range.len() * 4))
        .map(|(rank, range)| {
            format!(
                "rank {rank} sent {} bytes for elements {}..{} ({} bytes)",
                all.get(rank).map_or(0, Vec::len),
                range.start,
                range.end,
                range.len() * 4
            )
        })
        .collect();
    if !wrong.is_empty() || all.len() != ranges.len() {
        return Err(TrainError::RanksDisagree {
            what: "the updated parameter shares",
            detail: format!(
                "{} shares from {} ranks; {}",
                all.len(),
                ranges.len(),
                wrong.join("; ")
            ),
        });
    }
    let flat: Vec<f32> = all
        .iter()
        .flat_map(|bytes| bytes.chunks_exact(4))
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut offset = 0;
    for (_, var) in parameters {
        let n = var.elem_count();
        let values = flat
            .get(offset..offset + n)
            .ok_or_else(|| TrainError::RanksDisagree {
                what: "the updated parameter shares",
                detail: format!("{} values for more parameters", flat.len()),
            })?;
        offset += n;
        let value = Tensor::from_slice(values, var.shape(), var.device())?;
        var.set(&value)?;
    }
    Ok(())
}

/// BLAKE3 of a snapshot's replicated state, hex: every tensor of every group (name, dtype,
/// shape, bytes, in name order), the position and the trainer state (RNG, optimizer steps,
/// best). Ranks that hold the same state give the same digest.
pub(crate) fn state_digest(snapshot: &Snapshot) -> String {
    let mut hasher = blake3::Hasher::new();
    let mut field = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(&snapshot.step.to_le_bytes());
    field(&snapshot.epoch.to_le_bytes());
    // A rank's own share (a sharded optimizer's `optimizer-rank<R>`) is not replicated.
    for (group, tensors) in snapshot
        .groups
        .iter()
        .filter(|(group, _)| keel_ckpt::group_rank(group).is_none())
    {
        field(group.as_bytes());
        for (name, tensor) in tensors {
            field(name.as_bytes());
            field(format!("{:?} {:?}", tensor.dtype, tensor.shape).as_bytes());
            field(&tensor.data);
        }
    }
    field(snapshot.user.to_string().as_bytes());
    hasher.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The split rule: for every batch length and world size, the slices are contiguous,
    /// disjoint, in rank order, cover the batch, and differ in size by at most one (the
    /// larger ones first).
    #[test]
    fn batch_split_is_disjoint_covering_and_balanced() {
        for world in 1..=9 {
            for len in 0..=40 {
                let slices: Vec<Range<usize>> =
                    (0..world).map(|rank| rank_rows(len, rank, world)).collect();
                let mut next = 0;
                for slice in &slices {
                    assert_eq!(slice.start, next, "len {len}, world {world}: {slices:?}");
                    next = slice.end;
                }
                assert_eq!(next, len, "len {len}, world {world}: {slices:?}");
                let sizes: Vec<usize> = slices.iter().map(ExactSizeIterator::len).collect();
                let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(max - min <= 1, "len {len}, world {world}: {sizes:?}");
                assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
            }
        }
        assert_eq!(rank_rows(50, 0, 3), 0..17);
        assert_eq!(rank_rows(50, 1, 3), 17..34);
        assert_eq!(rank_rows(50, 2, 3), 34..50);
        assert_eq!(rank_rows(1, 1, 2), 1..1);
        assert_eq!(rank_rows(7, 0, 1), 0..7);
        assert_eq!(rank_rows(7, 5, 0), 7..7);
    }

    /// Two slices' weighted gradients, summed and divided by the global batch, equal the
    /// mean over the batch (in exact arithmetic; here with values exact in f32), and a
    /// parameter without a gradient on any rank stays without one.
    #[test]
    fn weighted_gradients_sum_to_the_global_mean() {
        let device = candle_core::Device::Cpu;
        let w = Var::new(&[1.0f32, 2.0], &device).unwrap();
        let unused = Var::new(&[5.0f32], &device).unwrap();
        let parameters = vec![
            ("w".to_string(), w.clone()),
            ("u".to_string(), unused.clone()),
        ];
        let mut a = GradStore::default();
        a.insert(
            w.as_tensor(),
            Tensor::new(&[0.5f32, -1.0], &device).unwrap(),
        );
        let mut b = GradStore::default();
        b.insert(w.as_tensor(), Tensor::new(&[2.0f32, 4.0], &device).unwrap());
        // Slices of 3 and 1 rows, losses 1.0 and 3.0.
        let fa = flatten_weighted(&parameters, &a, 3, 1.0).unwrap();
        let fb = flatten_weighted(&parameters, &b, 1, 3.0).unwrap();
        let summed: Vec<f32> = fa.iter().zip(&fb).map(|(x, y)| x + y).collect();
        let mut grads = GradStore::default();
        let loss = rebuild_mean(&parameters, &summed, 4, &mut grads).unwrap();
        assert_eq!(loss, 1.5);
        let g = grads.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, [(1.5 + 2.0) / 4.0, (-3.0 + 4.0) / 4.0]);
        assert!(grads.get(unused.as_tensor()).is_none());
        assert!(rebuild_mean(&parameters, &summed[1..], 4, &mut grads).is_err());
    }
}
