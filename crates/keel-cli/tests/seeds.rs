//! The seeds' PyTorch environment (issue #15) end to end with the real `keel` binary:
//! `pytorch=2.0.1`, `torchvision`, `torchaudio`, `pytorch-cuda=11.8` from `pytorch`, `nvidia`,
//! `conda-forge` and `defaults`, with transformers and timm in the pip section, locked from
//! the composition `keel_test_support::seeds` builds (the real pytorch channel snapshot and
//! the channels around it) served on 127.0.0.1, installed from that server, verified, and
//! checked by `keel doctor` against recorded probes.
//!
//! The named channels and `defaults` reach the server as they reach a mirror with conda:
//! `CONDA_CHANNEL_ALIAS` (where `pytorch`, `nvidia`, `conda-forge` are looked up) and
//! `CONDA_DEFAULT_CHANNELS` (what `defaults` stands for). Nothing leaves the machine: every
//! channel and the wheel index are on the loopback server, and the tests check that it
//! answered the requests.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{keel_in, text};
use keel_test_support::http::{Credentials, Server};
use keel_test_support::seeds;

/// The served composition and its server.
struct Served {
    _root: tempfile::TempDir,
    server: Server,
}

fn serve(options: &seeds::Options) -> Served {
    let root = tempfile::tempdir().unwrap();
    seeds::build(root.path(), &real_python(), options);
    let server = Server::start(root.path(), Credentials::default());
    Served {
        _root: root,
        server,
    }
}

/// The Python behind the python package's `bin/python3.9`: the interpreter itself, not a
/// virtual environment (whose `pyvenv.cfg` would not be the prefix's).
fn real_python() -> PathBuf {
    let python = keel_test_support::python(&["sys"]);
    let output = Command::new(&python)
        .args([
            "-c",
            "import os, sys; print(os.path.join(sys.base_prefix, 'bin', 'python3'))",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    PathBuf::from(text(&output.stdout).trim())
}

/// The seeds' environment file, with `channels` and the conda `dependencies`.
fn seeds_file(served: &Served, channels: &[&str], conda: &[&str]) -> String {
    let mut yaml = String::from("name: seeds\nchannels:\n");
    for channel in channels {
        yaml.push_str(&format!("  - {channel}\n"));
    }
    yaml.push_str("dependencies:\n");
    for dependency in conda {
        yaml.push_str(&format!("  - {dependency}\n"));
    }
    yaml.push_str(&format!(
        "  - pip:\n    - --find-links {}/{}\n    - --no-index\n    - transformers==4.30.0\n    - timm==0.6.12\nplatforms: [linux-64]\n",
        served.server.base,
        seeds::WHEEL_INDEX
    ));
    yaml
}

const SEEDS_CHANNELS: [&str; 4] = ["pytorch", "nvidia", "conda-forge", "defaults"];
const SEEDS: [&str; 6] = [
    "python=3.9",
    "pip",
    "pytorch=2.0.1",
    "torchvision",
    "torchaudio",
    "pytorch-cuda=11.8",
];

fn project(served: &Served, channels: &[&str], conda: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(
        dir.path().join("environment.yml"),
        seeds_file(served, channels, conda),
    )
    .unwrap();
    dir
}

/// `keel` in `dir` with the channels on the server, its own caches, uv from the test tools and
/// no `__cuda` from this machine (tests that want one say so on the command line).
fn keel(served: &Served, dir: &Path, args: &[&str]) -> Output {
    let base = &served.server.base;
    keel_in(dir)
        .args(args)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("UV_CACHE_DIR", dir.join("uv-cache"))
        .env("KEEL_UV", keel_test_support::tool("uv"))
        .env("CONDA_CHANNEL_ALIAS", base)
        .env(
            "CONDA_DEFAULT_CHANNELS",
            format!("{base}/pkgs/main,{base}/pkgs/r"),
        )
        .env("CONDA_OVERRIDE_CUDA", "")
        .output()
        .unwrap()
}

fn expect(served: &Served, dir: &Path, args: &[&str], code: i32) -> String {
    let output = keel(served, dir, args);
    assert_eq!(
        output.status.code(),
        Some(code),
        "keel {args:?}\nstdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The lock's linux-64 conda packages: name -> (build, URL).
fn picked(lock: &Path) -> std::collections::BTreeMap<String, (String, String)> {
    let lock = rattler_lock::LockFile::from_path(lock).unwrap();
    let environment = lock.default_environment().unwrap();
    let platform = environment
        .platforms()
        .find(|p| p.subdir() == rattler_conda_types::Subdir::Linux64)
        .unwrap();
    environment
        .conda_repodata_records(platform)
        .unwrap()
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            (
                r.package_record.name.as_normalized().to_owned(),
                (r.package_record.build.to_string(), r.url.to_string()),
            )
        })
        .collect()
}

fn build_and_channel<'a>(
    picked: &'a std::collections::BTreeMap<String, (String, String)>,
    name: &str,
) -> (&'a str, &'a str) {
    let (build, url) = picked
        .get(name)
        .unwrap_or_else(|| panic!("{name} is not in the lock: {picked:#?}"));
    (build.as_str(), url.as_str())
}

/// With `__cuda=12.4` declared, the solve takes the CUDA 11.8 build of pytorch (and of
/// torchvision and torchaudio) from the pytorch channel, the CUDA runtime from nvidia, `blas *
/// mkl` from defaults (conda-forge, ahead of it, has the MKL libraries but no `blas`), numpy
/// from conda-forge, and the pip section from the served wheel index.
#[test]
fn cuda_12_4_locks_the_cuda_11_8_build() {
    let served = serve(&seeds::Options::default());
    let project = project(&served, &SEEDS_CHANNELS, &SEEDS);
    let dir = project.path();
    expect(
        &served,
        dir,
        &["lock", "--virtual-package", "linux-64:__cuda=12.4"],
        0,
    );
    let picked = picked(&dir.join("keel.lock"));
    let base = &served.server.base;
    let at = |channel: &str, subdir: &str| format!("{base}/{channel}/{subdir}/");
    let (build, url) = build_and_channel(&picked, "pytorch");
    assert_eq!(build, "py3.9_cuda11.8_cudnn8.7.0_0");
    assert!(url.starts_with(&at("pytorch", "linux-64")), "{url}");
    assert_eq!(build_and_channel(&picked, "torchvision").0, "py39_cu118");
    assert_eq!(build_and_channel(&picked, "torchaudio").0, "py39_cu118");
    assert_eq!(build_and_channel(&picked, "pytorch-mutex").0, "cuda");
    assert_eq!(build_and_channel(&picked, "pytorch-cuda").0, "h7e8668a_5");
    assert!(!picked.contains_key("cpuonly"));
    for (name, channel) in [
        ("cuda-runtime", "nvidia"),
        ("libcublas", "nvidia"),
        ("mkl", "conda-forge"),
        ("blas", "pkgs/main"),
        ("numpy", "conda-forge"),
        ("python", "conda-forge"),
        ("ffmpeg", "pytorch"),
    ] {
        let (_, url) = build_and_channel(&picked, name);
        assert!(
            url.starts_with(&format!("{base}/{channel}/")),
            "{name}: {url}"
        );
    }
    let lock = fs_err::read_to_string(dir.join("keel.lock")).unwrap();
    for wheel in [
        "transformers-4.30.0-py3-none-any.whl",
        "timm-0.6.12-py3-none-any.whl",
    ] {
        assert!(
            lock.contains(&format!("{base}/wheels/{wheel}")),
            "{wheel} not locked from the server:\n{lock}"
        );
    }
    // `defaults` was the served main and r channels, and the wheel index was read from the
    // server too.
    let targets: Vec<String> = served
        .server
        .requests()
        .into_iter()
        .map(|r| r.target)
        .collect();
    for needed in [
        "/pkgs/main/linux-64/repodata.json",
        "/pkgs/r/noarch/repodata.json",
        "/nvidia/linux-64/repodata.json",
        "/wheels/index.html",
    ] {
        assert!(
            targets.iter().any(|t| t == needed),
            "{needed} not requested: {targets:#?}"
        );
    }
}

/// Without `__cuda` the seeds' file still gets the CUDA 11.8 build, as conda gives it on a
/// machine without a GPU: `pytorch-cuda=11.8` is asked for, and nothing in it or in the
/// nvidia runtime packages depends on `__cuda`. With `cpuonly` in its place the solve takes
/// the CPU builds (`pytorch-mutex 1.0 cpu`); asking for both a CUDA build and `cpuonly` is
/// refused, naming the CUDA builds' `cpuonly <0` that makes them exclusive.
#[test]
fn without_cuda_the_cpu_build_is_what_cpuonly_asks_for() {
    let served = serve(&seeds::Options::default());

    let project_cuda = project(&served, &SEEDS_CHANNELS, &SEEDS);
    expect(&served, project_cuda.path(), &["lock"], 0);
    let picked_cuda = picked(&project_cuda.path().join("keel.lock"));
    assert_eq!(
        build_and_channel(&picked_cuda, "pytorch").0,
        "py3.9_cuda11.8_cudnn8.7.0_0"
    );

    let cpu = [
        "python=3.9",
        "pip",
        "pytorch=2.0.1",
        "torchvision",
        "torchaudio",
        "cpuonly",
    ];
    let project_cpu = project(&served, &SEEDS_CHANNELS, &cpu);
    expect(&served, project_cpu.path(), &["lock"], 0);
    let picked_cpu = picked(&project_cpu.path().join("keel.lock"));
    assert_eq!(build_and_channel(&picked_cpu, "pytorch").0, "py3.9_cpu_0");
    assert_eq!(build_and_channel(&picked_cpu, "torchvision").0, "py39_cpu");
    assert_eq!(build_and_channel(&picked_cpu, "torchaudio").0, "py39_cpu");
    assert_eq!(build_and_channel(&picked_cpu, "pytorch-mutex").0, "cpu");
    assert!(picked_cpu.contains_key("cpuonly"));
    assert!(!picked_cpu.contains_key("pytorch-cuda"));
    assert!(!picked_cpu.contains_key("cuda-runtime"));

    let both = ["python=3.9", "pip", "pytorch=2.0.1=*cuda11.8*", "cpuonly"];
    let project_both = project(&served, &SEEDS_CHANNELS, &both);
    let output = keel(&served, project_both.path(), &["lock"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    // The CUDA builds' `constrains: cpuonly <0` is the reason, shown at the `cpuonly` line.
    assert!(stderr.contains("cpuonly <0"), "{stderr}");
    assert!(stderr.contains("requested here"), "{stderr}");
    assert!(!project_both.path().join("keel.lock").exists());
}

/// With a `pytorch 2.0.1` in conda-forge as well, the file's order decides under strict
/// priority, as with conda: a name found in a higher channel is taken from that channel only.
/// pytorch first: the pytorch channel's CUDA build; conda-forge first: conda-forge's build,
/// although the pytorch channel's would also fit.
#[test]
fn strict_channel_priority_decides_between_pytorch_and_conda_forge() {
    let served = serve(&seeds::Options {
        conda_forge_pytorch: true,
    });
    let base = served.server.base.clone();

    let first = project(&served, &SEEDS_CHANNELS, &SEEDS);
    expect(
        &served,
        first.path(),
        &["lock", "--virtual-package", "linux-64:__cuda=12.4"],
        0,
    );
    let picked_first = picked(&first.path().join("keel.lock"));
    let (build, url) = build_and_channel(&picked_first, "pytorch");
    assert_eq!(build, "py3.9_cuda11.8_cudnn8.7.0_0");
    assert!(url.starts_with(&format!("{base}/pytorch/")), "{url}");

    let reordered = ["conda-forge", "pytorch", "nvidia", "defaults"];
    let second = project(&served, &reordered, &SEEDS);
    expect(
        &served,
        second.path(),
        &["lock", "--virtual-package", "linux-64:__cuda=12.4"],
        0,
    );
    let picked_second = picked(&second.path().join("keel.lock"));
    let (build, url) = build_and_channel(&picked_second, "pytorch");
    assert_eq!(
        format!("pytorch-2.0.1-{build}.conda"),
        seeds::CONDA_FORGE_PYTORCH
    );
    assert!(url.starts_with(&format!("{base}/conda-forge/")), "{url}");
    // torchvision is only in the pytorch channel, so it still comes from there.
    let (_, url) = build_and_channel(&picked_second, "torchvision");
    assert!(url.starts_with(&format!("{base}/pytorch/")), "{url}");
}

/// The whole flow of the README: lock with `__cuda=12.4`, install from the server (conda
/// packages from the package cache the install fills, the pip section by uv from the served
/// wheels), verify clean, and doctor against the recorded H100 (passes) and the too-old
/// driver (names the driver CUDA 11.8 needs).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn install_verify_and_doctor_the_seeds_environment() {
    let served = serve(&seeds::Options::default());
    let project = project(&served, &SEEDS_CHANNELS, &SEEDS);
    let dir = project.path();
    expect(
        &served,
        dir,
        &["lock", "--virtual-package", "linux-64:__cuda=12.4"],
        0,
    );
    let report: serde_json::Value = serde_json::from_str(&expect(
        &served,
        dir,
        &["install", "-p", "env", "--package-cache", "pkgs", "--json"],
        0,
    ))
    .unwrap();
    let pypi: Vec<&str> = report["pypi_installed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for wanted in ["transformers==4.30.0", "timm==0.6.12"] {
        assert!(pypi.contains(&wanted), "{report:#}");
    }
    // Every archive came from the server.
    let archives: Vec<String> = served
        .server
        .requests()
        .into_iter()
        .filter(|r| r.target.ends_with(".conda") || r.target.ends_with(".tar.bz2"))
        .map(|r| r.target)
        .collect();
    for wanted in [
        "/pytorch/linux-64/pytorch-2.0.1-py3.9_cuda11.8_cudnn8.7.0_0.tar.bz2",
        "/nvidia/linux-64/cuda-runtime-11.8.0-0.tar.bz2",
        "/pkgs/main/linux-64/blas-1.0-mkl.tar.bz2",
    ] {
        assert!(archives.iter().any(|a| a == wanted), "{archives:#?}");
    }
    let prefix = dir.join("env");
    assert!(prefix.join("conda-meta").is_dir());
    // The prefix's python runs, as the prefix's own, and imports the pip section.
    let python = Command::new(prefix.join("bin/python"))
        .args([
            "-c",
            "import sys, transformers, timm; print(sys.prefix); print(transformers.__version__, timm.__version__)",
        ])
        .output()
        .unwrap();
    assert!(python.status.success(), "{}", text(&python.stderr));
    let printed = text(&python.stdout);
    assert!(printed.contains("4.30.0 0.6.12"), "{printed}");
    assert_eq!(
        fs_err::canonicalize(printed.lines().next().unwrap()).unwrap(),
        fs_err::canonicalize(&prefix).unwrap()
    );

    let verify = expect(&served, dir, &["verify", "env", "-l", "keel.lock"], 0);
    assert!(!verify.is_empty());

    let fixture = |name: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../keel-cuda/tests/fixtures")
            .join(name)
            .display()
            .to_string()
    };
    let h100 = expect(
        &served,
        dir,
        &[
            "doctor",
            "-l",
            "keel.lock",
            "--probe-json",
            &fixture("h100.json"),
        ],
        0,
    );
    assert!(h100.contains("ok       driver"), "{h100}");
    let old = expect(
        &served,
        dir,
        &[
            "doctor",
            "-p",
            "env",
            "--probe-json",
            &fixture("old-driver.json"),
        ],
        0,
    );
    assert!(old.contains("520.61.05"), "{old}");
    assert!(old.contains("11.8"), "{old}");
}
