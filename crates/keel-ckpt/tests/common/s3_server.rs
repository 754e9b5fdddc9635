//! An S3-compatible server for tests: `s3s-fs` (crates.io) on a free loopback port, serving a
//! temporary folder. Shared with keel-cli's tests (included there by `#[path]`).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const KEY: &str = "keel-test-access";
pub(crate) const SECRET: &str = "keel-test-secret-key";
pub(crate) const BUCKET: &str = "checkpoints";

pub(crate) struct Server {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub(crate) port: u16,
    _root: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs() -> PathBuf {
    if let Some(path) = std::env::var_os("KEEL_S3S_FS") {
        return PathBuf::from(path);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin")))
        .map(|dir| dir.join("s3s-fs"))
        .find(|path| path.is_file())
        .expect(
            "this test needs the S3 server s3s-fs: `cargo install s3s-fs --version 0.14.1 --features binary --locked` (.ci/run does)",
        )
}

/// Starts the server with one bucket, [`BUCKET`], and waits until it accepts connections.
pub(crate) fn start() -> Server {
    let root = tempfile::tempdir().unwrap();
    // A bucket is a folder under the server's root.
    fs_err::create_dir_all(root.path().join(BUCKET)).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(s3s_fs())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", KEY, "--secret-key", SECRET])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "s3s-fs did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        child,
        port,
        _root: root,
    }
}

impl Server {
    /// The endpoint URL.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
