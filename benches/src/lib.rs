//! What keel's benchmarks share: the checkpoint-strategy comparison of `keel train`'s MNIST
//! run (measured overheads, and a failure simulation that replays them).

pub mod strategies;
