//! Parsing environment files: the whole real corpus in `test-data/` (envs, envs-bad and the
//! peers' fixtures), reported as files per second.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group};
use rattler_conda_types::EnvironmentYaml;

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let data = keel_test_support::test_data();
    let mut files = Vec::new();
    let mut stack = vec![
        data.join("envs"),
        data.join("envs-bad"),
        data.join("peer-fixtures"),
    ];
    while let Some(dir) = stack.pop() {
        for entry in fs_err::read_dir(&dir).expect("test-data in the repository") {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() && !name.starts_with('_') {
                stack.push(path);
            } else if name.ends_with(".yml") || name.ends_with(".yaml") {
                let bytes = fs_err::read(&path).unwrap();
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}

fn parse_corpus(c: &mut Criterion) {
    let files = corpus();
    let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    let mut group = c.benchmark_group("spec");
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(files.len() as u64));
    group.bench_function(
        format!("check_corpus/{}_files_{}_KiB", files.len(), bytes / 1024),
        |b| {
            b.iter(|| {
                let mut problems = 0;
                for (path, bytes) in &files {
                    let checked = keel_spec::check_bytes(bytes, path).unwrap();
                    problems += checked.report.problems.len();
                }
                problems
            });
        },
    );
    // Side by side: rattler's own reader (serde_yaml, no locations, stops at the first error)
    // over the same bytes.
    group.bench_function(
        format!("rattler_environment_yaml/{}_files", files.len()),
        |b| {
            b.iter(|| {
                let mut read = 0;
                for (_, bytes) in &files {
                    let text = std::str::from_utf8(bytes).unwrap_or_default();
                    read += usize::from(EnvironmentYaml::from_yaml_str(text).is_ok());
                }
                read
            });
        },
    );
    group.finish();
}

criterion_group!(benches, parse_corpus);
