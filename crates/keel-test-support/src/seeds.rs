//! The seeds' PyTorch environment (issue #15) as a user's server holds it: `pytorch=2.0.1`,
//! `torchvision`, `torchaudio`, `pytorch-cuda=11.8` from `pytorch`, `nvidia`, `conda-forge`
//! and `defaults`, with transformers and timm from a wheel index, all under one folder that
//! [`crate::http::Server`] serves on loopback.
//!
//! What is real and what is written here:
//! - `pytorch/linux-64`: the real channel snapshot (`test-data/repodata/pytorch-channel`, every
//!   one of its 2,181 records). The records the tests' solves pick ([`PYTORCH_ARCHIVES`]) get a
//!   small archive built here, and only their `sha256`, `md5` and `size` are rewritten to match
//!   it; everything else (depends, constrains, builds, timestamps) is the snapshot's.
//! - `pytorch/noarch`: `pytorch-mutex` and `cpuonly`, which the snapshot's records depend on
//!   but which live in the channel's `noarch` (not in the snapshot): written from the pytorch
//!   builder's recipes (`pytorch-mutex 1.0` builds `cpu` and `cuda`, the `cpu` one with
//!   `track_features: pytorch-mutex` so that a solver prefers CUDA where both fit; `cpuonly 2.0`
//!   depends on `pytorch-mutex 1.0 cpu`).
//! - `conda-forge`: the real records of the conda-forge python 3.9 snapshot
//!   (`test-data/repodata/conda-forge-py39`) that a solve of `python=3.9` and `pip` picks
//!   ([`CONDA_FORGE_PY39`]), and records written here for what the snapshots lack (numpy for
//!   3.9, its BLAS in the MKL variant that pytorch's `blas * mkl` needs, pytorch's pure Python
//!   dependencies, pillow and the libraries ffmpeg needs), each with the name, version and
//!   build conda-forge published and a dependency list reduced to names in this composition
//!   (see `written_conda_forge`).
//! - `nvidia/linux-64`: the CUDA 11.8 runtime packages `pytorch-cuda 11.8` depends on, with the
//!   names, versions and builds of a real `conda install pytorch-cuda=11.8 -c nvidia`
//!   transaction; their dependency lists are written here (`cuda-runtime` -> `cuda-libraries`
//!   -> the libraries), as no snapshot of the nvidia channel's repodata is available.
//! - `pkgs/main` and `pkgs/r` (what `defaults` stands for, through `CONDA_DEFAULT_CHANNELS`):
//!   `mkl`, `blas 1.0 mkl`, `intel-openmp`, `tbb` and `cudatoolkit 11.8.0` with the names,
//!   versions and builds of Anaconda's `main`; `r` is empty.
//! - `wheels/`: transformers 4.30.0 and timm 0.6.12 and what they need, as small pure-Python
//!   wheels with a subset of their real `Requires-Dist`, and an `index.html` listing them for
//!   `--find-links`.
//!
//! Every archive holds `info/index.json` (the record), `info/paths.json` and one small file;
//! python's holds a `bin/python3.9` that runs this machine's Python as the prefix's own (a
//! `pyvenv.cfg` beside it), so that uv installs the pip section into the prefix.

use std::path::{Path, PathBuf};

use rattler_conda_types::compression_level::CompressionLevel;
use rattler_digest::{Md5, Sha256};
use serde_json::{Map, Value, json};

/// The channels of the composition, as folders under its root, highest priority first as the
/// seeds' file lists them (`defaults` is the last two).
pub const CHANNELS: [&str; 5] = ["pytorch", "nvidia", "conda-forge", "pkgs/main", "pkgs/r"];

/// The pytorch-channel records that get an archive: the CUDA 11.8 and the CPU builds of the
/// seeds' packages for python 3.9, and what they pull from that channel.
pub const PYTORCH_ARCHIVES: [&str; 9] = [
    "pytorch-2.0.1-py3.9_cuda11.8_cudnn8.7.0_0.tar.bz2",
    "pytorch-2.0.1-py3.9_cpu_0.tar.bz2",
    "torchvision-0.15.2-py39_cu118.tar.bz2",
    "torchvision-0.15.2-py39_cpu.tar.bz2",
    "torchaudio-2.0.2-py39_cu118.tar.bz2",
    "torchaudio-2.0.2-py39_cpu.tar.bz2",
    "pytorch-cuda-11.8-h7e8668a_5.tar.bz2",
    "torchtriton-2.0.0-py39.tar.bz2",
    "ffmpeg-4.3-hf484d3e_0.tar.bz2",
];

/// The conda-forge python 3.9 snapshot's records kept (subdir, file): what `keel lock` of
/// `python=3.9` and `pip` picks from the whole snapshot, plus `libstdcxx-ng`, `python_abi`,
/// `certifi` and `zlib`, which the rest of the composition depends on.
pub const CONDA_FORGE_PY39: [(&str, &str); 27] = [
    ("linux-64", "_libgcc_mutex-0.1-conda_forge.tar.bz2"),
    ("linux-64", "_openmp_mutex-4.5-2_gnu.tar.bz2"),
    ("linux-64", "bzip2-1.0.8-hd590300_5.conda"),
    ("linux-64", "ca-certificates-2024.2.2-hbcca054_0.conda"),
    ("linux-64", "ld_impl_linux-64-2.40-h55db66e_0.conda"),
    ("linux-64", "libffi-3.4.2-h7f98852_5.tar.bz2"),
    ("linux-64", "libgcc-ng-13.2.0-h77fa898_7.conda"),
    ("linux-64", "libgomp-13.2.0-h77fa898_7.conda"),
    ("linux-64", "libnsl-2.0.1-hd590300_0.conda"),
    ("linux-64", "libsqlite-3.45.3-h2797004_0.conda"),
    ("linux-64", "libuuid-2.38.1-h0b41bf4_0.conda"),
    ("linux-64", "libxcrypt-4.4.36-hd590300_1.conda"),
    ("linux-64", "libzlib-1.2.13-hd590300_5.conda"),
    ("linux-64", "ncurses-6.5-h59595ed_0.conda"),
    ("linux-64", "openssl-3.3.0-hd590300_0.conda"),
    ("linux-64", "python-3.9.19-h0755675_0_cpython.conda"),
    ("linux-64", "readline-8.2-h8228510_1.conda"),
    ("linux-64", "tk-8.6.13-noxft_h4845f30_101.conda"),
    ("linux-64", "xz-5.2.6-h166bdaf_0.tar.bz2"),
    ("linux-64", "libstdcxx-ng-13.2.0-hc0a3c3a_7.conda"),
    ("linux-64", "python_abi-3.9-4_cp39.conda"),
    ("linux-64", "zlib-1.2.13-hd590300_5.conda"),
    ("noarch", "pip-24.0-pyhd8ed1ab_0.conda"),
    ("noarch", "setuptools-69.5.1-pyhd8ed1ab_0.conda"),
    ("noarch", "tzdata-2024a-h0c530f3_0.conda"),
    ("noarch", "wheel-0.43.0-pyhd8ed1ab_1.conda"),
    ("noarch", "certifi-2024.2.2-pyhd8ed1ab_0.conda"),
];

/// The wheels of the pip section (name, version, `Requires-Dist`). transformers 4.30.0 and
/// timm 0.6.12 carry the part of their real `Requires-Dist` that this index can satisfy
/// (transformers also needs huggingface-hub, numpy, regex, requests, tokenizers and
/// safetensors; timm needs torch, torchvision and huggingface-hub); the others have none.
pub const WHEELS: [(&str, &str, &[&str]); 6] = [
    (
        "transformers",
        "4.30.0",
        &["filelock", "packaging>=20.0", "pyyaml>=5.1", "tqdm>=4.27"],
    ),
    ("timm", "0.6.12", &["pyyaml"]),
    ("filelock", "3.12.2", &[]),
    ("packaging", "23.1", &[]),
    ("PyYAML", "6.0", &[]),
    ("tqdm", "4.65.0", &[]),
];

/// Where the wheel index lies under the root (`--find-links <server>/wheels/index.html`).
pub const WHEEL_INDEX: &str = "wheels/index.html";

/// Options of the composition.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Also put a `pytorch 2.0.1` into conda-forge (conda-forge publishes its own builds), so
    /// that channel priority decides which one a solve takes.
    pub conda_forge_pytorch: bool,
}

/// The file name of the build planted by [`Options::conda_forge_pytorch`].
pub const CONDA_FORGE_PYTORCH: &str = "pytorch-2.0.1-cpu_generic_py39h6d8c4a0_0.conda";

/// Writes the composition under `root` (one folder per entry of [`CHANNELS`], each with
/// `linux-64` and `noarch`, and `wheels/`); `python` is the interpreter the python package's
/// `bin/python3.9` runs (a real, non-virtual-environment Python: its `sys.base_prefix` is
/// where the standard library lies).
///
/// # Panics
/// When a snapshot cannot be read, a record named here is missing from it, or a file cannot
/// be written.
pub fn build(root: &Path, python: &Path, options: &Options) {
    let data = crate::test_data().join("repodata");

    // pytorch: the whole linux-64 snapshot, archives for the picked records.
    let mut pytorch = read_repodata(&data.join("pytorch-channel/linux-64/repodata.json"));
    let dir = root.join("pytorch/linux-64");
    fs_err::create_dir_all(&dir).unwrap();
    for file in PYTORCH_ARCHIVES {
        let record = pytorch["packages"]
            .get_mut(file)
            .unwrap_or_else(|| panic!("{file} is not in the pytorch snapshot"));
        archive(&dir, file, record, &[]);
    }
    write_repodata(&dir, &pytorch);
    let mut noarch = Vec::new();
    for build in ["cpu", "cuda"] {
        let mut record = record("pytorch-mutex", "1.0", build, 0, &[], "noarch");
        record["noarch"] = "generic".into();
        if build == "cpu" {
            record["track_features"] = "pytorch-mutex".into();
        }
        noarch.push((format!("pytorch-mutex-1.0-{build}.tar.bz2"), record));
    }
    let mut cpuonly = record(
        "cpuonly",
        "2.0",
        "0",
        0,
        &["pytorch-mutex 1.0 cpu"],
        "noarch",
    );
    cpuonly["noarch"] = "generic".into();
    noarch.push(("cpuonly-2.0-0.tar.bz2".to_owned(), cpuonly));
    channel(&root.join("pytorch"), Vec::new(), noarch, None);

    // conda-forge: real py39 and OpenBLAS records, and the written ones.
    let py39 = |subdir: &str| {
        read_repodata(
            &data
                .join("conda-forge-py39")
                .join(subdir)
                .join("repodata.json"),
        )
    };
    let (py39_linux, py39_noarch) = (py39("linux-64"), py39("noarch"));
    let mut linux = Vec::new();
    let mut noarch = Vec::new();
    for (subdir, file) in CONDA_FORGE_PY39 {
        let repodata = if subdir == "noarch" {
            &py39_noarch
        } else {
            &py39_linux
        };
        let record = find_record(repodata, file)
            .unwrap_or_else(|| panic!("{subdir}/{file} is not in the conda-forge py39 snapshot"));
        if subdir == "noarch" {
            noarch.push((file.to_owned(), record));
        } else {
            linux.push((file.to_owned(), record));
        }
    }
    let (written_linux, written_noarch) = written_conda_forge(options);
    linux.extend(written_linux);
    noarch.extend(written_noarch);
    channel(&root.join("conda-forge"), linux, noarch, Some(python));

    channel(&root.join("nvidia"), nvidia(), Vec::new(), None);
    channel(&root.join("pkgs/main"), defaults_main(), Vec::new(), None);
    channel(&root.join("pkgs/r"), Vec::new(), Vec::new(), None);

    wheels(&root.join("wheels"));
}

/// A repodata entry: the archive's file name and its record.
type Entry = (String, Value);

/// A record as conda-build writes it into repodata (no hashes yet).
fn record(
    name: &str,
    version: &str,
    build: &str,
    build_number: u64,
    depends: &[&str],
    subdir: &str,
) -> Value {
    json!({
        "name": name,
        "version": version,
        "build": build,
        "build_number": build_number,
        "depends": depends,
        "subdir": subdir,
        "timestamp": 1_690_000_000_000u64,
    })
}

/// The build number a conda-forge build string ends with (`h166bdaf_1003`: 1003).
fn build_number(build: &str) -> u64 {
    build
        .rsplit('_')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A `noarch: python` record.
fn noarch_python(name: &str, version: &str, build: &str, depends: &[&str]) -> Entry {
    let mut value = record(name, version, build, build_number(build), depends, "noarch");
    value["noarch"] = "python".into();
    (format!("{name}-{version}-{build}.conda"), value)
}

/// A linux-64 record.
fn linux(name: &str, version: &str, build: &str, depends: &[&str]) -> Entry {
    (
        format!("{name}-{version}-{build}.conda"),
        record(
            name,
            version,
            build,
            build_number(build),
            depends,
            "linux-64",
        ),
    )
}

/// conda-forge's packages that neither snapshot has: name, version and build as conda-forge
/// published them (2023); the dependency lists keep the names of this composition (a run
/// dependency on a library the composition lacks, such as urllib3's `brotli-python`, is left
/// out). numpy's is the real 1.26.4 record of the numpy snapshot
/// (`test-data/repodata/conda-forge-numpy`) with python 3.12 replaced by 3.9. Its BLAS is the
/// MKL variant (`libblas 3.9.0 16_linux64_mkl` and friends, constraining `blas * mkl`): the
/// snapshot's OpenBLAS `liblapack` constrains `blas * openblas`, which pytorch's `blas * mkl`
/// excludes, so conda, too, takes the MKL builds for this environment.
fn written_conda_forge(options: &Options) -> (Vec<Entry>, Vec<Entry>) {
    let py39 = &["python >=3.9,<3.10.0a0", "python_abi 3.9.* *_cp39"];
    let with_py39 = |depends: &[&'static str]| -> Vec<&'static str> {
        depends.iter().chain(py39.iter()).copied().collect()
    };
    let mut linux_records = vec![
        linux(
            "numpy",
            "1.26.4",
            "py39h474f0d3_0",
            &with_py39(&[
                "libblas >=3.9.0,<4.0a0",
                "libcblas >=3.9.0,<4.0a0",
                "libgcc-ng >=12",
                "liblapack >=3.9.0,<4.0a0",
                "libstdcxx-ng >=12",
            ]),
        ),
        mkl_blas("libblas", &["mkl >=2022.1.0,<2023.0a0"]),
        mkl_blas("libcblas", &["libblas 3.9.0 16_linux64_mkl"]),
        mkl_blas("liblapack", &["libblas 3.9.0 16_linux64_mkl"]),
        linux(
            "mkl",
            "2022.2.1",
            "h84fe81f_16997",
            &["_openmp_mutex >=4.5", "tbb 2021.*"],
        ),
        linux(
            "tbb",
            "2021.9.0",
            "hf52228f_0",
            &["libgcc-ng >=12", "libstdcxx-ng >=12"],
        ),
        linux(
            "markupsafe",
            "2.1.3",
            "py39hd1e30aa_0",
            &with_py39(&["libgcc-ng >=12"]),
        ),
        linux(
            "pillow",
            "9.4.0",
            "py39h2320bf1_1",
            &with_py39(&[
                "freetype >=2.12.1,<3.0a0",
                "jpeg >=9e,<10a",
                "libgcc-ng >=12",
                "libzlib >=1.2.13,<1.3.0a0",
            ]),
        ),
        linux("jpeg", "9e", "h0b41bf4_3", &["libgcc-ng >=12"]),
        linux(
            "libpng",
            "1.6.39",
            "h753d276_0",
            &["libgcc-ng >=12", "libzlib >=1.2.13,<1.3.0a0"],
        ),
        linux(
            "freetype",
            "2.12.1",
            "h267a509_2",
            &[
                "libgcc-ng >=12",
                "libpng >=1.6.39,<1.7.0a0",
                "libzlib >=1.2.13,<1.3.0a0",
            ],
        ),
        linux(
            "gmp",
            "6.2.1",
            "h58526e2_0",
            &["libgcc-ng >=7.5.0", "libstdcxx-ng >=7.5.0"],
        ),
        linux(
            "gnutls",
            "3.6.13",
            "h85f3911_1",
            &[
                "gmp >=6.2.1,<7.0a0",
                "libgcc-ng >=7.5.0",
                "libstdcxx-ng >=7.5.0",
                "nettle >=3.6,<3.7.0a0",
            ],
        ),
        linux("nettle", "3.6", "he412f7d_0", &["libgcc-ng >=7.5.0"]),
        linux("lame", "3.100", "h166bdaf_1003", &["libgcc-ng >=12"]),
        linux("libiconv", "1.17", "h166bdaf_0", &["libgcc-ng >=10.3.0"]),
        linux(
            "openh264",
            "2.1.1",
            "h780b84a_0",
            &["libgcc-ng >=9.3.0", "libstdcxx-ng >=9.3.0"],
        ),
    ];
    if options.conda_forge_pytorch {
        let (_, value) = linux(
            "pytorch",
            "2.0.1",
            "cpu_generic_py39h6d8c4a0_0",
            &with_py39(&[
                "filelock",
                "jinja2",
                "libgcc-ng >=12",
                "libstdcxx-ng >=12",
                "networkx",
                "numpy >=1.21.6,<2.0a0",
                "sympy",
                "typing_extensions",
            ]),
        );
        linux_records.push((CONDA_FORGE_PYTORCH.to_owned(), value));
    }
    let noarch_records = vec![
        noarch_python("filelock", "3.12.2", "pyhd8ed1ab_0", &["python >=3.7"]),
        noarch_python(
            "jinja2",
            "3.1.2",
            "pyhd8ed1ab_1",
            &["markupsafe >=2.0", "python >=3.7"],
        ),
        noarch_python("networkx", "3.1", "pyhd8ed1ab_0", &["python >=3.8"]),
        noarch_python(
            "sympy",
            "1.12",
            "pypyh9d50eac_103",
            &["mpmath >=0.19", "python >=3.8"],
        ),
        noarch_python("mpmath", "1.3.0", "pyhd8ed1ab_0", &["python >=3.6"]),
        noarch_python(
            "typing_extensions",
            "4.7.1",
            "pyha770c72_0",
            &["python >=3.7"],
        ),
        noarch_python(
            "requests",
            "2.31.0",
            "pyhd8ed1ab_0",
            &[
                "certifi >=2017.4.17",
                "charset-normalizer >=2,<4",
                "idna >=2.5,<4",
                "python >=3.7",
                "urllib3 >=1.21.1,<3",
            ],
        ),
        noarch_python(
            "charset-normalizer",
            "3.2.0",
            "pyhd8ed1ab_0",
            &["python >=3.7"],
        ),
        noarch_python("idna", "3.4", "pyhd8ed1ab_0", &["python >=3.6"]),
        noarch_python("urllib3", "2.0.4", "pyhd8ed1ab_0", &["python >=3.7"]),
    ];
    (linux_records, noarch_records)
}

/// conda-forge's MKL build of one of the BLAS interface packages: it depends on `depends`
/// and constrains the others and `blas` to the MKL variant.
fn mkl_blas(name: &str, depends: &[&str]) -> Entry {
    let (file, mut value) = linux(name, "3.9.0", "16_linux64_mkl", depends);
    value["constrains"] = json!([
        "blas * mkl",
        "libcblas 3.9.0 16_linux64_mkl",
        "liblapack 3.9.0 16_linux64_mkl",
        "liblapacke 3.9.0 16_linux64_mkl",
    ]);
    (file, value)
}

/// The nvidia channel's CUDA 11.8 runtime: names, versions and builds as a real
/// `pytorch-cuda=11.8` install took them from `nvidia/linux-64`.
fn nvidia() -> Vec<Entry> {
    let leaves = [
        ("cuda-cudart", "11.8.89"),
        ("cuda-cupti", "11.8.87"),
        ("cuda-nvrtc", "11.8.89"),
        ("cuda-nvtx", "11.8.86"),
        ("libcublas", "11.11.3.6"),
        ("libcufft", "10.9.0.58"),
        ("libcufile", "1.9.1.3"),
        ("libcurand", "10.3.5.147"),
        ("libcusolver", "11.4.1.48"),
        ("libcusparse", "11.7.5.86"),
        ("libnpp", "11.8.0.86"),
        ("libnvjpeg", "11.9.0.86"),
    ];
    let mut records: Vec<Entry> = leaves
        .iter()
        .map(|(name, version)| {
            (
                format!("{name}-{version}-0.tar.bz2"),
                record(name, version, "0", 0, &[], "linux-64"),
            )
        })
        .collect();
    records.push((
        "cuda-libraries-11.8.0-0.tar.bz2".to_owned(),
        record(
            "cuda-libraries",
            "11.8.0",
            "0",
            0,
            &[
                "cuda-cudart >=11.8.89",
                "cuda-nvrtc >=11.8.89",
                "libcublas >=11.11.3.6",
                "libcufft >=10.9.0.58",
                "libcufile >=1.4.0.31",
                "libcurand >=10.3.0.86",
                "libcusolver >=11.4.1.48",
                "libcusparse >=11.7.5.86",
                "libnpp >=11.8.0.86",
                "libnvjpeg >=11.9.0.86",
            ],
            "linux-64",
        ),
    ));
    records.push((
        "cuda-runtime-11.8.0-0.tar.bz2".to_owned(),
        record(
            "cuda-runtime",
            "11.8.0",
            "0",
            0,
            &["cuda-libraries >=11.8.0"],
            "linux-64",
        ),
    ));
    records
}

/// Anaconda `main`'s MKL stack and cudatoolkit 11.8.
fn defaults_main() -> Vec<Entry> {
    let tar = |name: &str, version: &str, build: &str, number: u64, depends: &[&str]| {
        (
            format!("{name}-{version}-{build}.tar.bz2"),
            record(name, version, build, number, depends, "linux-64"),
        )
    };
    vec![
        tar("blas", "1.0", "mkl", 0, &[]),
        tar(
            "mkl",
            "2023.1.0",
            "h213fc3f_46344",
            46344,
            &["_openmp_mutex", "intel-openmp 2023.*", "tbb 2021.*"],
        ),
        tar("intel-openmp", "2023.1.0", "hdb19cb5_46306", 46306, &[]),
        tar(
            "tbb",
            "2021.8.0",
            "hdb19cb5_0",
            0,
            &["libgcc-ng >=11.2.0", "libstdcxx-ng >=11.2.0"],
        ),
        tar(
            "cudatoolkit",
            "11.8.0",
            "h6a678d5_0",
            0,
            &["libgcc-ng >=11.2.0", "libstdcxx-ng >=11.2.0"],
        ),
    ]
}

/// Writes a channel: an archive for every record (python's with the interpreter), then
/// `linux-64/repodata.json` and `noarch/repodata.json`.
fn channel(dir: &Path, linux: Vec<Entry>, noarch: Vec<Entry>, python: Option<&Path>) {
    for (subdir, records) in [("linux-64", linux), ("noarch", noarch)] {
        let subdir_dir = dir.join(subdir);
        fs_err::create_dir_all(&subdir_dir).unwrap();
        let existing = subdir_dir.join("repodata.json");
        let mut repodata = if existing.is_file() {
            read_repodata(&existing)
        } else {
            json!({ "info": { "subdir": subdir }, "packages": {}, "packages.conda": {}, "repodata_version": 1 })
        };
        for (file, mut value) in records {
            let files = match (value["name"].as_str(), python) {
                (Some("python"), Some(python)) => python_files(python),
                _ => Vec::new(),
            };
            archive(&subdir_dir, &file, &mut value, &files);
            let key = if file.ends_with(".conda") {
                "packages.conda"
            } else {
                "packages"
            };
            repodata[key][file] = value;
        }
        write_repodata(&subdir_dir, &repodata);
    }
}

fn read_repodata(path: &Path) -> Value {
    serde_json::from_slice(&fs_err::read(path).unwrap()).unwrap()
}

fn write_repodata(dir: &Path, repodata: &Value) {
    fs_err::write(
        dir.join("repodata.json"),
        serde_json::to_vec(repodata).unwrap(),
    )
    .unwrap();
}

/// A snapshot record by file name, without the keys a served repodata does not carry
/// (`channel`, `fn`, `url` point at the channel the snapshot was taken from), and without
/// a list that is `null` (the numpy snapshot's `libgfortran-ng` has `"constrains": null`,
/// which mamba reads as none and rattler refuses).
fn find_record(repodata: &Value, file: &str) -> Option<Value> {
    let mut record = ["packages", "packages.conda"]
        .iter()
        .find_map(|key| repodata[*key].get(file))?
        .clone();
    if let Some(map) = record.as_object_mut() {
        for key in ["channel", "fn", "url"] {
            map.remove(key);
        }
        for key in ["constrains", "depends", "track_features"] {
            if map.get(key).is_some_and(Value::is_null) {
                map.remove(key);
            }
        }
    }
    Some(record)
}

/// A file of an archive: its path in the package and its content.
enum File {
    Text(&'static str, String),
    Executable(&'static str, String),
    Symlink(&'static str, &'static str),
}

/// python's interpreter: `bin/python3.9` runs `python` under the prefix's own name (`exec -a`),
/// and `pyvenv.cfg` makes the prefix its `sys.prefix` (as in a virtual environment), so that uv
/// installs into the prefix; `bin/python` links to it as conda's python does.
fn python_files(python: &Path) -> Vec<File> {
    let real = fs_err::canonicalize(python).unwrap();
    let home = real.parent().unwrap().display().to_string();
    vec![
        File::Executable(
            "bin/python3.9",
            format!(
                "#!/usr/bin/env bash\n# the test machine's Python, as this prefix's interpreter\nexec -a \"$0\" {} \"$@\"\n",
                real.display()
            ),
        ),
        File::Symlink("bin/python", "python3.9"),
        File::Symlink("bin/python3", "python3.9"),
        File::Text(
            "pyvenv.cfg",
            format!("home = {home}\ninclude-system-site-packages = false\n"),
        ),
    ]
}

/// Builds `dir/file` (`.conda` or `.tar.bz2` by its name) for `record` with `files`, or one
/// small file naming the package when there are none, and writes the archive's size, sha256
/// and md5 into `record`.
fn archive(dir: &Path, file: &str, record: &mut Value, files: &[File]) {
    let stage = tempfile::tempdir().unwrap();
    let root = stage.path();
    let name = record["name"].as_str().unwrap().to_owned();
    let label = format!(
        "{name} {} {}\n",
        record["version"].as_str().unwrap_or_default(),
        record["build"].as_str().unwrap_or_default()
    );
    let is_python_noarch = record["noarch"] == "python";
    let default_path = if is_python_noarch {
        format!("site-packages/{}_seed/__init__.py", name.replace('-', "_"))
    } else {
        format!("share/keel-seeds/{name}.txt")
    };
    let mut entries = Vec::new();
    let mut paths = Vec::new();
    let mut write = |path: &str, bytes: &[u8], executable: bool| {
        let target = root.join(path);
        fs_err::create_dir_all(target.parent().unwrap()).unwrap();
        fs_err::write(&target, bytes).unwrap();
        if executable {
            use std::os::unix::fs::PermissionsExt as _;
            fs_err::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        entries.push(json!({
            "_path": path,
            "path_type": "hardlink",
            "sha256": hex::encode(rattler_digest::compute_bytes_digest::<Sha256>(bytes)),
            "size_in_bytes": bytes.len(),
        }));
        paths.push(target);
    };
    if files.is_empty() {
        write(&default_path, label.as_bytes(), false);
    }
    for file in files {
        match file {
            File::Text(path, text) => write(path, text.as_bytes(), false),
            File::Executable(path, text) => write(path, text.as_bytes(), true),
            File::Symlink(..) => {}
        }
    }
    for file in files {
        if let File::Symlink(path, link) = file {
            let target = root.join(path);
            fs_err::create_dir_all(target.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(link, &target).unwrap();
            entries.push(json!({ "_path": path, "path_type": "softlink" }));
            paths.push(target);
        }
    }
    let mut index: Map<String, Value> = record.as_object().unwrap().clone();
    for key in ["md5", "sha256", "size", "legacy_bz2_md5", "legacy_bz2_size"] {
        index.remove(key);
    }
    fs_err::create_dir_all(root.join("info")).unwrap();
    fs_err::write(
        root.join("info/index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
    fs_err::write(
        root.join("info/paths.json"),
        serde_json::to_vec_pretty(&json!({ "paths": entries, "paths_version": 1 })).unwrap(),
    )
    .unwrap();
    paths.push(root.join("info/index.json"));
    paths.push(root.join("info/paths.json"));
    let path: PathBuf = dir.join(file);
    let out = fs_err::File::create(&path).unwrap();
    if let Some(stem) = file.strip_suffix(".conda") {
        rattler_package_streaming::write::write_conda_package(
            out,
            root,
            &paths,
            CompressionLevel::Lowest,
            None,
            stem,
            None,
            None,
        )
        .unwrap();
    } else {
        rattler_package_streaming::write::write_tar_bz2_package(
            out,
            root,
            &paths,
            CompressionLevel::Lowest,
            None,
            None,
        )
        .unwrap();
    }
    record["size"] = fs_err::metadata(&path).unwrap().len().into();
    record["sha256"] =
        hex::encode(rattler_digest::compute_file_digest::<Sha256>(&path).unwrap()).into();
    record["md5"] = hex::encode(rattler_digest::compute_file_digest::<Md5>(&path).unwrap()).into();
}

/// The wheels of [`WHEELS`] and the `index.html` that lists them.
fn wheels(dir: &Path) {
    fs_err::create_dir_all(dir).unwrap();
    let mut html = String::from("<!DOCTYPE html>\n<html><body>\n");
    for (name, version, requires) in WHEELS {
        crate::wheel::build_wheel(dir, name, version, requires);
        let file = format!("{name}-{version}-py3-none-any.whl");
        html.push_str(&format!("<a href=\"{file}\">{file}</a><br/>\n"));
    }
    html.push_str("</body></html>\n");
    fs_err::write(dir.join("index.html"), html).unwrap();
}

#[cfg(test)]
mod tests {
    use rattler_digest::Sha256;
    use serde_json::Value;

    /// Every record that has an archive in the composition matches it (size and sha256), and
    /// every pytorch-channel record without one is the snapshot's, byte for byte as JSON.
    #[test]
    fn served_records_match_their_archives_and_the_rest_is_the_snapshot() {
        let root = tempfile::tempdir().unwrap();
        // Any file stands in for the interpreter: the python package only names it.
        super::build(
            root.path(),
            &std::env::current_exe().unwrap(),
            &super::Options {
                conda_forge_pytorch: true,
            },
        );
        let mut archives = 0;
        for channel in super::CHANNELS {
            for subdir in ["linux-64", "noarch"] {
                let dir = root.path().join(channel).join(subdir);
                let repodata = super::read_repodata(&dir.join("repodata.json"));
                for key in ["packages", "packages.conda"] {
                    for (file, record) in repodata[key].as_object().unwrap() {
                        let archive = dir.join(file);
                        if !archive.is_file() {
                            assert_eq!(channel, "pytorch", "{channel}/{subdir}/{file}");
                            continue;
                        }
                        archives += 1;
                        assert_eq!(
                            record["size"].as_u64(),
                            Some(fs_err::metadata(&archive).unwrap().len()),
                            "{file}"
                        );
                        assert_eq!(
                            record["sha256"].as_str().unwrap(),
                            hex::encode(
                                rattler_digest::compute_file_digest::<Sha256>(&archive).unwrap()
                            ),
                            "{file}"
                        );
                    }
                }
            }
        }
        assert!(archives > 60, "{archives}");
        let snapshot = super::read_repodata(
            &crate::test_data().join("repodata/pytorch-channel/linux-64/repodata.json"),
        );
        let served = super::read_repodata(&root.path().join("pytorch/linux-64/repodata.json"));
        let records = |repodata: &Value| repodata["packages"].as_object().unwrap().clone();
        let (snapshot, served) = (records(&snapshot), records(&served));
        assert_eq!(snapshot.len(), served.len());
        for (file, record) in &snapshot {
            let mut expected = record.clone();
            if super::PYTORCH_ARCHIVES.contains(&file.as_str()) {
                for key in ["md5", "sha256", "size"] {
                    expected[key] = served[file][key].clone();
                }
            }
            assert_eq!(&expected, &served[file], "{file}");
        }
    }
}
