//! Pure-Python wheels as pip builds them, for the tests of keel's pip support.

use std::io::Write as _;
use std::path::Path;

use rattler_digest::{Sha256, compute_bytes_digest};

/// URL-safe base64 without padding, as wheel RECORD files hold hashes.
fn record_hash(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let digest = compute_bytes_digest::<Sha256>(bytes);
    let mut out = String::new();
    for chunk in digest.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A pure-Python wheel as pip builds it: the module, METADATA, WHEEL and a RECORD of hashes.
/// Its METADATA says `Requires-Python: >=3.8` and one `Requires-Dist` per item of `requires`.
pub fn build_wheel(dir: &Path, name: &str, version: &str, requires: &[&str]) {
    let fields: Vec<String> = std::iter::once("Requires-Python: >=3.8".to_owned())
        .chain(requires.iter().map(|r| format!("Requires-Dist: {r}")))
        .collect();
    build_wheel_with_metadata(
        dir,
        name,
        version,
        &fields.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

/// A pure-Python wheel as [`build_wheel`] builds it, whose METADATA has these header fields
/// (`"Requires-Dist: delta>=1; extra == 'fast'"`, `"Provides-Extra: fast"`,
/// `"Requires-Python: >=3.9"`) after `Name` and `Version`, then a description body, as
/// setuptools and hatchling write them (the body is not a field).
pub fn build_wheel_with_metadata(dir: &Path, name: &str, version: &str, fields: &[&str]) {
    let dist_info = format!("{name}-{version}.dist-info");
    let metadata = format!(
        "Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{}\n\
         # {name}\n\nRequires-Dist: not-a-field (the description body)\n",
        fields.iter().map(|f| format!("{f}\n")).collect::<String>()
    );
    let files = [
        (
            format!("{name}/__init__.py"),
            format!("__version__ = \"{version}\"\n"),
        ),
        (format!("{dist_info}/METADATA"), metadata),
        (
            format!("{dist_info}/WHEEL"),
            "Wheel-Version: 1.0\nGenerator: keel-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .to_owned(),
        ),
    ];
    let path = dir.join(format!("{name}-{version}-py3-none-any.whl"));
    let mut zip = zip::ZipWriter::new(fs_err::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    let mut record = String::new();
    for (file, content) in &files {
        zip.start_file(file.as_str(), options).unwrap();
        zip.write_all(content.as_bytes()).unwrap();
        record.push_str(&format!(
            "{file},sha256={},{}\n",
            record_hash(content.as_bytes()),
            content.len()
        ));
    }
    record.push_str(&format!("{dist_info}/RECORD,,\n"));
    zip.start_file(format!("{dist_info}/RECORD"), options)
        .unwrap();
    zip.write_all(record.as_bytes()).unwrap();
    zip.finish().unwrap();
}
