//! keel's benchmarks, one module per topic. Run with `cargo bench -p keel-benches`.

mod bench;

criterion::criterion_main!(
    bench::spec::benches,
    bench::ckpt::benches,
    bench::train::benches
);
