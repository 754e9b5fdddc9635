//! `Mpi`: the [`Collective`] over `MPI_COMM_WORLD` (rsmpi), for builds with the `mpi` feature.

use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use crate::{Collective, DistError};

/// The most elements one MPI call moves: counts and displacements are C `int`s.
const MAX_COUNT: usize = i32::MAX as usize;

/// The world communicator of an MPI job. Created once per process by [`Mpi::init`]; dropping
/// it finalizes MPI, which the standard allows once, so a process has at most one.
///
/// Only the thread that created it calls MPI (`MPI_THREAD_FUNNELED`); other threads (the
/// checkpoint writer) never do.
pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    threading: Threading,
    // Declared last, so dropped last: MPI_Finalize runs after the communicator is gone.
    _universe: Universe,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mpi")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("threading", &self.threading)
            .finish_non_exhaustive()
    }
}

impl Mpi {
    /// Initializes MPI (`MPI_Init_thread`, funneled) and takes `MPI_COMM_WORLD`. Started by a
    /// launcher, the world is the job; started alone, MPI makes a world of one.
    pub fn init() -> Result<Mpi, DistError> {
        if mpi::is_finalized() {
            return Err(DistError::Finalized);
        }
        let (universe, provided) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or(DistError::AlreadyInitialized)?;
        if provided < Threading::Funneled {
            return Err(DistError::Threading {
                provided: format!("{provided:?}"),
                required: format!("{:?}", Threading::Funneled),
            });
        }
        let world = universe.world();
        let rank = usize::try_from(world.rank()).map_err(|_| DistError::MpiValue {
            what: "rank",
            value: i64::from(world.rank()),
        })?;
        let size = usize::try_from(world.size())
            .ok()
            .filter(|&size| size > rank)
            .ok_or(DistError::MpiValue {
                what: "size",
                value: i64::from(world.size()),
            })?;
        Ok(Mpi {
            world,
            rank,
            size,
            threading: provided,
            _universe: universe,
        })
    }

    fn root(&self, root: usize) -> Result<mpi::topology::Process<'_>, DistError> {
        match i32::try_from(root) {
            Ok(rank) if root < self.size => Ok(self.world.process_at_rank(rank)),
            _ => Err(DistError::Root {
                root,
                size: self.size,
            }),
        }
    }

    /// Every rank's length, on every rank: the decisions that follow (too large, the layout of
    /// the receive buffer) are then the same on all of them.
    fn lengths(&self, bytes: &[u8]) -> Vec<u64> {
        let mine = bytes.len() as u64;
        let mut all = vec![0u64; self.size];
        self.world.all_gather_into(&mine, &mut all[..]);
        all
    }
}

/// Counts and displacements for a variable-length gather of `lengths`, with the total.
fn partition(
    lengths: &[u64],
    what: &'static str,
) -> Result<(Vec<i32>, Vec<i32>, usize), DistError> {
    let too_large = |len| DistError::TooLarge {
        what,
        len,
        limit: MAX_COUNT as u64,
    };
    let total = lengths
        .iter()
        .try_fold(0u64, |sum, &len| sum.checked_add(len))
        .ok_or(too_large(u64::MAX))?;
    if total > MAX_COUNT as u64 {
        return Err(too_large(total));
    }
    let mut counts = Vec::with_capacity(lengths.len());
    let mut displacements = Vec::with_capacity(lengths.len());
    let mut offset = 0i32;
    for &len in lengths {
        // Both fit: every length and every sum of them is at most the total.
        let len = i32::try_from(len).map_err(|_| too_large(total))?;
        counts.push(len);
        displacements.push(offset);
        offset = offset.checked_add(len).ok_or(too_large(total))?;
    }
    Ok((counts, displacements, total as usize))
}

/// Splits the gathered buffer into the ranks' parts.
fn split(buffer: &[u8], lengths: &[u64]) -> Vec<Vec<u8>> {
    let mut parts = Vec::with_capacity(lengths.len());
    let mut rest = buffer;
    for &len in lengths {
        // `partition` checked that the lengths add up to the buffer's length.
        let (part, tail) =
            rest.split_at(usize::try_from(len).unwrap_or(rest.len()).min(rest.len()));
        parts.push(part.to_vec());
        rest = tail;
    }
    parts
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn barrier(&self) -> Result<(), DistError> {
        self.world.barrier();
        Ok(())
    }

    fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>) -> Result<(), DistError> {
        let process = self.root(root)?;
        let mut len = bytes.len() as u64;
        process.broadcast_into(&mut len);
        if self.rank != root {
            let len = usize::try_from(len).map_err(|_| DistError::TooLarge {
                what: "the broadcast bytes",
                len,
                limit: usize::MAX as u64,
            })?;
            bytes.clear();
            bytes.resize(len, 0);
        }
        // Every rank now has the same length, so the same chunks (none when it is 0: an empty
        // buffer is never handed to MPI, see `gather_bytes`).
        for chunk in bytes.chunks_mut(MAX_COUNT) {
            process.broadcast_into(chunk);
        }
        Ok(())
    }

    fn all_reduce_sum_f32(&self, values: &mut [f32]) -> Result<(), DistError> {
        for chunk in values.chunks_mut(MAX_COUNT) {
            let send = chunk.to_vec();
            self.world
                .all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
        Ok(())
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<(), DistError> {
        for chunk in values.chunks_mut(MAX_COUNT) {
            let send = chunk.to_vec();
            self.world
                .all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
        Ok(())
    }

    fn all_reduce_max_u64(&self, value: u64) -> Result<u64, DistError> {
        let mut max = 0u64;
        self.world
            .all_reduce_into(&value, &mut max, SystemOperation::max());
        Ok(max)
    }

    fn gather_bytes(&self, root: usize, bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>, DistError> {
        let process = self.root(root)?;
        // All ranks learn all lengths (not only the root), so all of them decide alike
        // whether the gather fits before any of them enters it.
        let lengths = self.lengths(bytes);
        let (counts, displacements, total) = partition(&lengths, "the gathered bytes")?;
        if total == 0 {
            // Nothing to move, and MPI refuses the call: empty send and receive buffers share
            // Rust's dangling address, which Open MPI takes for aliased buffers (MPI_ERR_ARG).
            return Ok((self.rank == root).then(|| vec![Vec::new(); self.size]));
        }
        let anchor = [0u8; 1];
        let bytes = anchored(bytes, &anchor);
        if self.rank == root {
            let mut buffer = vec![0u8; total];
            let mut receive = PartitionMut::new(&mut buffer[..], &counts[..], &displacements[..]);
            process.gather_varcount_into_root(bytes, &mut receive);
            Ok(Some(split(&buffer, &lengths)))
        } else {
            process.gather_varcount_into(bytes);
            Ok(None)
        }
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        let lengths = self.lengths(bytes);
        let (counts, displacements, total) = partition(&lengths, "the all-gathered bytes")?;
        if total == 0 {
            // As in `gather_bytes`: every rank knows the total, so all of them skip the call.
            return Ok(vec![Vec::new(); self.size]);
        }
        let anchor = [0u8; 1];
        let bytes = anchored(bytes, &anchor);
        let mut buffer = vec![0u8; total];
        let mut receive = PartitionMut::new(&mut buffer[..], &counts[..], &displacements[..]);
        self.world.all_gather_varcount_into(bytes, &mut receive);
        Ok(split(&buffer, &lengths))
    }
}

/// `bytes`, or when it is empty an empty slice of `anchor`: an empty `&[u8]` points at Rust's
/// dangling address 0x1, which is Open MPI's `MPI_IN_PLACE`, so a rank sending nothing made
/// the collective fail with MPI_ERR_ARG. A zero-length slice of real memory sends the same
/// nothing.
fn anchored<'a>(bytes: &'a [u8], anchor: &'a [u8; 1]) -> &'a [u8] {
    if bytes.is_empty() {
        &anchor[..0]
    } else {
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_lays_out_variable_lengths() {
        let (counts, displacements, total) = partition(&[0, 5, 2], "x").unwrap();
        assert_eq!(counts, [0, 5, 2]);
        assert_eq!(displacements, [0, 0, 5]);
        assert_eq!(total, 7);
        assert_eq!(
            split(b"hello!?", &[0, 5, 2]),
            [b"".to_vec(), b"hello".to_vec(), b"!?".to_vec()]
        );
    }

    #[test]
    fn partition_refuses_more_than_an_mpi_count() {
        let half = MAX_COUNT as u64 / 2 + 1;
        assert!(matches!(
            partition(&[half, half], "the gathered bytes"),
            Err(DistError::TooLarge { len, .. }) if len == 2 * half
        ));
        assert!(matches!(
            partition(&[u64::MAX, 1], "the gathered bytes"),
            Err(DistError::TooLarge { .. })
        ));
        assert!(partition(&[MAX_COUNT as u64], "x").is_ok());
    }
}
