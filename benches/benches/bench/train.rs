//! One epoch of `keel train`'s MNIST run (784-256-10, batch 64, 125 steps) under checkpoint
//! strategies side by side: none, every 25 steps synchronously, every 25 steps in the
//! background. The full comparison with goodput under failures is the `ckpt-strategies` report
//! (`cargo run --release -p keel-benches --bin ckpt-strategies`).

use std::time::Duration;

use criterion::{Criterion, criterion_group};
use keel_benches::strategies::{Rule, Strategy, measure};
use keel_train::TrainConfig;

fn epoch(c: &mut Criterion) {
    let mut group = c.benchmark_group("mnist_epoch");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    let config = TrainConfig::default();
    for (name, rule, background) in [
        ("none", Rule::Never, false),
        ("every_25_steps_sync", Rule::EverySteps(25), false),
        ("every_25_steps_async", Rule::EverySteps(25), true),
    ] {
        let strategy = Strategy {
            name: name.into(),
            rule,
            background,
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let dir = tempfile::tempdir().unwrap();
                    let measured = measure(&config, &strategy, 1, dir.path()).unwrap();
                    // The epoch itself (the run's set-up and final save are left out).
                    total += Duration::from_secs_f64(measured.epoch_secs[0]);
                }
                total
            });
        });
    }
    group.finish();
}

criterion_group!(benches, epoch);
