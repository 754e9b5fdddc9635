//! A channel served over HTTP on loopback, optionally behind credentials as a private conda
//! channel asks for them: basic authentication (`user:password@`) and a conda token in the
//! path (`/t/<token>/`). It records every request, so a test can tell that the credentials
//! were sent and that the query string was not needed.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What the server asks of a request.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// `user:password`, sent as basic authentication.
    pub basic: Option<String>,
    /// The token expected as `/t/<token>/` before the path.
    pub token: Option<String>,
}

/// One request the server answered.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request target as sent (path and query).
    pub target: String,
    /// The status the server answered with.
    pub status: u16,
}

/// A running server; it stops when the test process ends.
#[derive(Debug)]
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    /// Serves the files under `root` at `/`.
    pub fn start(root: &Path, credentials: Credentials) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let root = root.to_path_buf();
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, credentials, log) = (root.clone(), credentials.clone(), log.clone());
                std::thread::spawn(move || serve(stream, &root, &credentials, &log));
            }
        });
        Server { base, requests }
    }

    /// The requests answered so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, root: &Path, credentials: &Credentials, log: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_owned());
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let path = target.split('?').next().unwrap_or_default();
    let (status, body) = answer(path, authorization.as_deref(), root, credentials);
    log.lock().unwrap().push(Request {
        target: target.clone(),
        status,
    });
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        _ => "Not Found",
    };
    let mut stream = stream;
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 401 {
        head.push_str("WWW-Authenticate: Basic realm=\"conda\"\r\n");
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = stream.write_all(&body);
    }
    let _ = stream.flush();
}

fn answer(
    path: &str,
    authorization: Option<&str>,
    root: &Path,
    credentials: &Credentials,
) -> (u16, Vec<u8>) {
    if let Some(basic) = &credentials.basic {
        let expected = format!("Basic {}", base64(basic.as_bytes()));
        if authorization != Some(expected.as_str()) {
            return (401, Vec::new());
        }
    }
    let mut path = path.trim_start_matches('/');
    if let Some(token) = &credentials.token {
        match path.strip_prefix(&format!("t/{token}/")) {
            Some(rest) => path = rest,
            None => return (403, Vec::new()),
        }
    }
    if path.split('/').any(|part| part == ".." || part.is_empty()) {
        return (404, Vec::new());
    }
    let file: PathBuf = root.join(path);
    match fs_err::read(&file) {
        Ok(bytes) if file.is_file() => (200, bytes),
        _ => (404, Vec::new()),
    }
}

/// Standard base64 with padding (the Authorization header's encoding).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A copy of the real py39 snapshot's `linux-64` and `noarch` (`test-data/repodata/
/// conda-forge-py39`) at `<root>/chan`, as a server holds it: the records carry no base URL,
/// so they point back at the server that serves `root`.
///
/// # Panics
/// When the snapshot cannot be read or the copy written.
pub fn serve_py39_copy(root: &Path) {
    for subdir in ["linux-64", "noarch"] {
        let dir = root.join("chan").join(subdir);
        fs_err::create_dir_all(&dir).unwrap();
        fs_err::copy(
            crate::test_data()
                .join("repodata/conda-forge-py39")
                .join(subdir)
                .join("repodata.json"),
            dir.join("repodata.json"),
        )
        .unwrap();
    }
}
