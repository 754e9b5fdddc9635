//! Real conda packages built by the tests (`.conda` and `.tar.bz2`, with `info/index.json` and
//! `info/paths.json` as conda-build writes them) and a local channel indexing them.

use std::path::{Path, PathBuf};

use rattler_conda_types::compression_level::CompressionLevel;
use rattler_conda_types::package::{IndexJson, PackageFile as _};
use rattler_conda_types::{PackageRecord, Subdir};
use rattler_digest::{Md5, Sha256};

/// The placeholder conda-build writes where the build prefix was; long enough for any prefix
/// a test makes (binary replacement needs the new prefix to be no longer).
pub const PLACEHOLDER: &str = "/opt/placehold_placehold_placehold_placehold_placehold_placehold_placehold_placehold_placehold_placehold_placehold_placehold_placehold_placehold_placehold_placehold";

/// One file of a package.
#[derive(Debug, Clone)]
pub enum Content {
    /// A plain text file.
    Text(String),
    /// An executable script.
    Executable(String),
    /// A text file holding the placeholder (conda rewrites it to the prefix).
    TextWithPrefix(String),
    /// A binary file (it has NULs) holding the placeholder in a C string.
    BinaryWithPrefix(Vec<u8>),
    /// A symbolic link.
    Symlink(String),
}

/// A package to build.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    pub depends: Vec<&'static str>,
    pub files: Vec<(&'static str, Content)>,
    /// `.tar.bz2` instead of `.conda`.
    pub tar_bz2: bool,
}

impl Package {
    pub fn file_name(&self) -> String {
        let extension = if self.tar_bz2 { "tar.bz2" } else { "conda" };
        format!("{}-{}-h0_0.{extension}", self.name, self.version)
    }
}

/// Builds `packages` for this machine's platform into a channel at `dir` (with the
/// `repodata.json` of that subdir and an empty `noarch`) and returns `dir`.
pub fn build_channel(dir: &Path, packages: &[Package]) -> PathBuf {
    let subdir = Subdir::current().expect("tests run on a conda platform");
    let subdir_dir = dir.join(subdir.as_str());
    fs_err::create_dir_all(&subdir_dir).unwrap();
    fs_err::create_dir_all(dir.join("noarch")).unwrap();
    let mut conda = serde_json::Map::new();
    let mut tar_bz2 = serde_json::Map::new();
    for package in packages {
        let archive = subdir_dir.join(package.file_name());
        write_package(package, subdir, &archive);
        let stage = tempfile::tempdir().unwrap();
        let index = stage.path().join("index.json");
        fs_err::write(&index, index_json(package, subdir)).unwrap();
        let record = PackageRecord::from_index_json(
            IndexJson::from_path(&index).unwrap(),
            Some(fs_err::metadata(&archive).unwrap().len()),
            Some(rattler_digest::compute_file_digest::<Sha256>(&archive).unwrap()),
            Some(rattler_digest::compute_file_digest::<Md5>(&archive).unwrap()),
        )
        .unwrap();
        let map = if package.tar_bz2 {
            &mut tar_bz2
        } else {
            &mut conda
        };
        map.insert(package.file_name(), serde_json::to_value(record).unwrap());
    }
    let repodata = serde_json::json!({
        "info": { "subdir": subdir.as_str() },
        "packages": tar_bz2,
        "packages.conda": conda,
        "repodata_version": 1,
    });
    fs_err::write(
        subdir_dir.join("repodata.json"),
        serde_json::to_vec_pretty(&repodata).unwrap(),
    )
    .unwrap();
    fs_err::write(
        dir.join("noarch/repodata.json"),
        r#"{"info":{"subdir":"noarch"},"packages":{},"packages.conda":{}}"#,
    )
    .unwrap();
    dir.to_path_buf()
}

fn index_json(package: &Package, subdir: Subdir) -> String {
    let (platform, arch) = subdir
        .as_str()
        .split_once('-')
        .map_or(("linux", "x86_64"), |(os, arch)| {
            (os, if arch == "64" { "x86_64" } else { arch })
        });
    serde_json::to_string_pretty(&serde_json::json!({
        "name": package.name,
        "version": package.version,
        "build": "h0_0",
        "build_number": 0,
        "depends": package.depends,
        "license": "MIT",
        "platform": platform,
        "arch": arch,
        "subdir": subdir.as_str(),
        "timestamp": 1_700_000_000_000u64,
    }))
    .unwrap()
}

/// Stages the package's files plus `info/index.json` and `info/paths.json` and archives them
/// with rattler_package_streaming.
fn write_package(package: &Package, subdir: Subdir, archive: &Path) {
    let stage = tempfile::tempdir().unwrap();
    let root = stage.path();
    let mut paths = Vec::new();
    let mut entries = Vec::new();
    for (path, content) in &package.files {
        let target = root.join(path);
        fs_err::create_dir_all(target.parent().unwrap()).unwrap();
        let mut entry = serde_json::json!({ "_path": path });
        match content {
            Content::Symlink(link) => {
                std::os::unix::fs::symlink(link, &target).unwrap();
                entry["path_type"] = "softlink".into();
            }
            other => {
                let bytes = match other {
                    Content::Text(text)
                    | Content::Executable(text)
                    | Content::TextWithPrefix(text) => text.as_bytes().to_vec(),
                    Content::BinaryWithPrefix(bytes) => bytes.clone(),
                    Content::Symlink(_) => unreachable!(),
                };
                fs_err::write(&target, &bytes).unwrap();
                if matches!(other, Content::Executable(_) | Content::TextWithPrefix(_)) {
                    use std::os::unix::fs::PermissionsExt as _;
                    fs_err::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                        .unwrap();
                }
                entry["path_type"] = "hardlink".into();
                entry["sha256"] =
                    hex::encode(rattler_digest::compute_bytes_digest::<Sha256>(&bytes)).into();
                entry["size_in_bytes"] = bytes.len().into();
                match other {
                    Content::TextWithPrefix(_) => {
                        entry["prefix_placeholder"] = PLACEHOLDER.into();
                        entry["file_mode"] = "text".into();
                    }
                    Content::BinaryWithPrefix(_) => {
                        entry["prefix_placeholder"] = PLACEHOLDER.into();
                        entry["file_mode"] = "binary".into();
                    }
                    _ => {}
                }
            }
        }
        paths.push(root.join(path));
        entries.push(entry);
    }
    fs_err::create_dir_all(root.join("info")).unwrap();
    fs_err::write(root.join("info/index.json"), index_json(package, subdir)).unwrap();
    fs_err::write(
        root.join("info/paths.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "paths": entries, "paths_version": 1 }))
            .unwrap(),
    )
    .unwrap();
    paths.push(root.join("info/index.json"));
    paths.push(root.join("info/paths.json"));
    let file = fs_err::File::create(archive).unwrap();
    if package.tar_bz2 {
        rattler_package_streaming::write::write_tar_bz2_package(
            file,
            root,
            &paths,
            CompressionLevel::Lowest,
            None,
            None,
        )
        .unwrap();
    } else {
        let out_name = package.file_name().trim_end_matches(".conda").to_string();
        rattler_package_streaming::write::write_conda_package(
            file,
            root,
            &paths,
            CompressionLevel::Lowest,
            None,
            &out_name,
            None,
            None,
        )
        .unwrap();
    }
}

/// A binary "library" with the placeholder inside a NUL-terminated RPATH-like string.
pub fn binary_with_placeholder(tag: &str) -> Vec<u8> {
    let mut bytes = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
    bytes.extend_from_slice(PLACEHOLDER.as_bytes());
    bytes.extend_from_slice(b"/lib\0");
    bytes.extend_from_slice(format!("libdemo {tag}\0").as_bytes());
    bytes.extend(std::iter::repeat_n(0xABu8, 64));
    bytes
}
