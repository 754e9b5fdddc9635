//! An S3-compatible server for tests: `s3s-fs` (crates.io) on a free loopback port, serving a
//! temporary folder.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEY: &str = "keel-test-access";
pub const SECRET: &str = "keel-test-secret-key";
pub const BUCKET: &str = "checkpoints";

#[derive(Debug)]
pub struct Server {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    _root: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server with one bucket, [`BUCKET`], and waits until it accepts connections.
///
/// # Panics
/// When `s3s-fs` is not installed or does not start within 20 s.
pub fn start() -> Server {
    let root = tempfile::tempdir().unwrap();
    // A bucket is a folder under the server's root.
    fs_err::create_dir_all(root.path().join(BUCKET)).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(crate::tool("s3s-fs"))
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
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
