//! The `Collective` trait: what the trainer asks of its ranks, and `Single`, the world of one.

use crate::DistError;

/// The collectives a multi-rank trainer needs, on one communicator of `size()` ranks.
///
/// Every method is a collective: every rank calls it, in the same order, with the same root
/// and (for the reductions) slices of the same length, as MPI requires. An implementation
/// decides every error from what all ranks know alike (the root and the world size, lengths
/// it has exchanged), so either every rank returns the error or none does: no rank leaves a
/// collective that the others have entered.
///
/// The trait is object safe: the trainer holds a `&dyn Collective` and runs unchanged on
/// [`Single`] and, with the `mpi` feature, on `Mpi`.
pub trait Collective {
    /// This process's rank, below [`Collective::size`].
    fn rank(&self) -> usize;

    /// How many ranks the communicator has (at least 1).
    fn size(&self) -> usize;

    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<(), DistError>;

    /// Afterwards every rank's `bytes` is a copy of the root's (the length is sent first, so
    /// the other ranks' buffers may start with any length).
    fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>) -> Result<(), DistError>;

    /// Element-wise sum over the ranks, in place on every rank.
    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<(), DistError>;

    /// Element-wise sum over the ranks, in place on every rank.
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<(), DistError>;

    /// The largest of the ranks' values, on every rank.
    fn all_reduce_max_u64(&self, value: u64) -> Result<u64, DistError>;

    /// Whether any rank passed `true`, on every rank: a stop flag (a signal, a failed save)
    /// one rank raises that all of them must act on at the same step.
    fn all_reduce_or(&self, flag: bool) -> Result<bool, DistError> {
        Ok(self.all_reduce_max_u64(u64::from(flag))? != 0)
    }

    /// Element-wise mean over the ranks (sum, then divided by the size), in place on every
    /// rank: averaged gradients.
    fn all_reduce_mean_f32(&self, values: &mut [f32]) -> Result<(), DistError> {
        self.all_reduce_sum_f32(values)?;
        // A world of more than 2^24 ranks does not exist; the division is exact for the rest.
        let size = self.size() as f32;
        values.iter_mut().for_each(|value| *value /= size);
        Ok(())
    }

    /// Every rank's bytes (each of its own length), in rank order, on the root; `None` on the
    /// other ranks.
    fn gather_bytes(&self, root: usize, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>, DistError>;

    /// Every rank's bytes (each of its own length), in rank order, on every rank.
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, DistError>;
}

/// The world of one process: every collective is the identity. A job without a launcher
/// runs on it, and every rule of the training loop is tested on it without MPI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Single;

impl Single {
    fn check_root(root: usize) -> Result<(), DistError> {
        if root == 0 {
            Ok(())
        } else {
            Err(DistError::Root { root, size: 1 })
        }
    }
}

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }

    fn broadcast_bytes(&self, root: usize, _bytes: &mut Vec<u8>) -> Result<(), DistError> {
        Single::check_root(root)
    }

    fn all_reduce_sum_f32(&self, _values: &mut [f32]) -> Result<(), DistError> {
        Ok(())
    }

    fn all_reduce_sum_f64(&self, _values: &mut [f64]) -> Result<(), DistError> {
        Ok(())
    }

    fn all_reduce_max_u64(&self, value: u64) -> Result<u64, DistError> {
        Ok(value)
    }

    fn gather_bytes(&self, root: usize, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>, DistError> {
        Single::check_root(root)?;
        Ok(Some(vec![bytes.to_vec()]))
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        Ok(vec![bytes.to_vec()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_collectives_are_the_identity() {
        let single: &dyn Collective = &Single;
        assert_eq!((single.rank(), single.size()), (0, 1));
        single.barrier().unwrap();

        let mut bytes = b"weights".to_vec();
        single.broadcast_bytes(0, &mut bytes).unwrap();
        assert_eq!(bytes, b"weights");

        let mut grads = [1.5f32, -2.0, 0.0];
        single.all_reduce_sum_f32(&mut grads).unwrap();
        assert_eq!(grads, [1.5, -2.0, 0.0]);
        single.all_reduce_mean_f32(&mut grads).unwrap();
        assert_eq!(grads, [1.5, -2.0, 0.0]);
        let mut loss = [0.25f64];
        single.all_reduce_sum_f64(&mut loss).unwrap();
        assert_eq!(loss, [0.25]);

        assert_eq!(single.all_reduce_max_u64(41).unwrap(), 41);
        assert!(single.all_reduce_or(true).unwrap());
        assert!(!single.all_reduce_or(false).unwrap());

        assert_eq!(
            single.gather_bytes(0, b"abc").unwrap(),
            Some(vec![b"abc".to_vec()])
        );
        assert_eq!(
            single.all_gather_bytes(b"").unwrap(),
            vec![Vec::<u8>::new()]
        );
    }

    #[test]
    fn single_refuses_a_root_that_is_not_rank_zero() {
        let mut bytes = Vec::new();
        let error = Single.broadcast_bytes(1, &mut bytes).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the root rank 1 is not below the world size 1"
        );
        assert!(matches!(
            Single.gather_bytes(3, b"x"),
            Err(DistError::Root { root: 3, size: 1 })
        ));
    }
}
