//! A channel served over HTTP on loopback, optionally behind credentials as a private conda
//! channel asks for them: basic authentication (`user:password@`) and a conda token in the
//! path (`/t/<token>/`). It answers as a static file server in front of a real channel does
//! (`ETag`, `Last-Modified`, `304 Not Modified` to a matching conditional request, `HEAD`,
//! `Content-Type` by extension), records every request with the headers a cache and a resumed
//! download send, and fails the requests a test names in the ways networks fail ([`Fault`]).

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rattler_digest::Sha256;

/// What the server asks of a request.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// `user:password`, sent as basic authentication.
    pub basic: Option<String>,
    /// The token expected as `/t/<token>/` before the path.
    pub token: Option<String>,
}

/// What the server does to one request instead of (or while) answering it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status with an empty body (500, 503, 404, 401...).
    Status(u16),
    /// Accept, read the request, never answer (until the [`Server`] is dropped).
    Hang,
    /// Send the head (with the full `Content-Length`) and this many body bytes, then reset the
    /// connection (`SO_LINGER` 0, so the client reads a reset, not an end of file).
    ResetAfter(usize),
    /// Send a head with the full `Content-Length` but only this many body bytes, then close.
    Truncate(usize),
    /// Answer normally but with one byte of the body changed (the middle one, so the length
    /// and the archive's framing at both ends stay as they were and only its digest tells).
    Corrupt,
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// The `Range` header as sent.
    pub range: Option<String>,
    /// The `If-None-Match` header as sent.
    pub if_none_match: Option<String>,
    /// The `If-Modified-Since` header as sent.
    pub if_modified_since: Option<String>,
    /// The status the server answered with (the head's status where a fault cut the body
    /// short; 0 where it never answered, [`Fault::Hang`]).
    pub status: u16,
    /// The fault this request got, if any.
    pub fault: Option<Fault>,
}

impl Request {
    /// The path of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// The faults still to come, per path suffix, in the order [`Server::fail_next`] was called.
type Faults = Mutex<Vec<(String, VecDeque<Fault>)>>;

/// A running server; its listener lives until the test process ends, and a request held by
/// [`Fault::Hang`] is let go when the `Server` is dropped.
#[derive(Debug)]
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    requests: Arc<Mutex<Vec<Request>>>,
    faults: Arc<Faults>,
    /// Held only so that its drop lets hung requests go (they hold a `Weak` of it).
    _alive: Arc<()>,
}

/// What each connection's thread shares with the server.
#[derive(Clone)]
struct Shared {
    root: PathBuf,
    credentials: Credentials,
    log: Arc<Mutex<Vec<Request>>>,
    faults: Arc<Faults>,
    alive: Weak<()>,
}

impl Server {
    /// Serves the files under `root` at `/`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub fn start(root: &Path, credentials: Credentials) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(Mutex::new(Vec::new()));
        let alive = Arc::new(());
        let shared = Shared {
            root: root.to_path_buf(),
            credentials,
            log: Arc::clone(&requests),
            faults: Arc::clone(&faults),
            alive: Arc::downgrade(&alive),
        };
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        Server {
            base,
            requests,
            faults,
            _alive: alive,
        }
    }

    /// The next `faults.len()` requests whose path (without query) ends with `suffix` get these
    /// faults in order; later ones are answered normally. A second call for the same suffix
    /// queues its faults after the first call's.
    pub fn fail_next(&self, suffix: &str, faults: Vec<Fault>) {
        let mut all = self.faults.lock().unwrap();
        match all.iter_mut().find(|(s, _)| s == suffix) {
            Some((_, queue)) => queue.extend(faults),
            None => all.push((suffix.to_owned(), faults.into())),
        }
    }

    /// The requests received so far, in the order they were answered (a hung one when it
    /// arrived).
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// The requests so far whose path (without query) ends with `suffix`.
    pub fn requests_for(&self, suffix: &str) -> Vec<Request> {
        let mut requests = self.requests();
        requests.retain(|request| request.path().ends_with(suffix));
        requests
    }
}

/// The next fault for `path`, taken off its queue.
fn take_fault(faults: &Faults, path: &str) -> Option<Fault> {
    let mut all = faults.lock().unwrap();
    all.iter_mut()
        .find(|(suffix, queue)| path.ends_with(suffix.as_str()) && !queue.is_empty())
        .and_then(|(_, queue)| queue.pop_front())
}

/// A normal answer: status, extra head lines, body.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn empty(status: u16) -> Answer {
        let mut headers = Vec::new();
        if status == 401 {
            headers.push(("WWW-Authenticate", "Basic realm=\"conda\"".to_owned()));
        }
        Answer {
            status,
            headers,
            body: Vec::new(),
        }
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut request = Request {
        method,
        target,
        range: None,
        if_none_match: None,
        if_modified_since: None,
        status: 0,
        fault: None,
    };
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = Some(value.trim().to_owned());
        match name.to_ascii_lowercase().as_str() {
            "authorization" => authorization = value,
            "range" => request.range = value,
            "if-none-match" => request.if_none_match = value,
            "if-modified-since" => request.if_modified_since = value,
            _ => {}
        }
    }
    let path = request.path().to_owned();
    request.fault = take_fault(&shared.faults, &path);
    let mut answer = match &request.fault {
        Some(Fault::Status(status)) => Answer::empty(*status),
        Some(Fault::Hang) => {
            shared.log.lock().unwrap().push(request);
            while shared.alive.upgrade().is_some() {
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(stream);
            return;
        }
        _ => answer(&path, authorization.as_deref(), &request, shared),
    };
    request.status = answer.status;
    let fault = request.fault.clone();
    let head_only = request.method == "HEAD";
    shared.log.lock().unwrap().push(request);

    if fault == Some(Fault::Corrupt) && !answer.body.is_empty() {
        let middle = answer.body.len() / 2;
        answer.body[middle] ^= 0xff;
    }
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        reason(answer.status),
        answer.body.len()
    );
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = stream;
    let _ = stream.write_all(head.as_bytes());
    if head_only {
        let _ = stream.flush();
        return;
    }
    match fault {
        Some(Fault::ResetAfter(n)) => {
            let _ = stream.write_all(&answer.body[..n.min(answer.body.len())]);
            let _ = stream.flush();
            // Linger 0: closing sends a reset instead of the orderly end of the stream.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
        Some(Fault::Truncate(n)) => {
            let _ = stream.write_all(&answer.body[..n.min(answer.body.len())]);
            let _ = stream.flush();
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        _ => {
            let _ = stream.write_all(&answer.body);
            let _ = stream.flush();
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn answer(path: &str, authorization: Option<&str>, request: &Request, shared: &Shared) -> Answer {
    let credentials = &shared.credentials;
    if let Some(basic) = &credentials.basic {
        let expected = format!("Basic {}", base64(basic.as_bytes()));
        if authorization != Some(expected.as_str()) {
            return Answer::empty(401);
        }
    }
    let mut path = path.trim_start_matches('/');
    if let Some(token) = &credentials.token {
        match path.strip_prefix(&format!("t/{token}/")) {
            Some(rest) => path = rest,
            None => return Answer::empty(403),
        }
    }
    if path.split('/').any(|part| part == ".." || part.is_empty()) {
        return Answer::empty(404);
    }
    let file: PathBuf = shared.root.join(path);
    let Ok(metadata) = fs_err::metadata(&file) else {
        return Answer::empty(404);
    };
    let Ok(body) = fs_err::read(&file).map_err(drop).and_then(|bytes| {
        if metadata.is_file() {
            Ok(bytes)
        } else {
            Err(())
        }
    }) else {
        return Answer::empty(404);
    };
    let etag = format!(
        "\"{}\"",
        hex::encode(rattler_digest::compute_bytes_digest::<Sha256>(&body))
    );
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| jiff::Timestamp::try_from(time).ok())
        // HTTP dates have whole seconds.
        .and_then(|time| jiff::Timestamp::from_second(time.as_second()).ok());
    let mut headers = vec![
        ("Content-Type", content_type(path).to_owned()),
        ("ETag", etag.clone()),
    ];
    if let Some(modified) = modified
        && let Ok(text) =
            jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&modified)
    {
        headers.push(("Last-Modified", text));
    }
    if not_modified(request, &etag, modified) {
        return Answer {
            status: 304,
            headers,
            body: Vec::new(),
        };
    }
    Answer {
        status: 200,
        headers,
        body,
    }
}

/// Whether a conditional request matches (RFC 9110 13.2.2: `If-None-Match` decides when sent,
/// `If-Modified-Since` only without it).
fn not_modified(request: &Request, etag: &str, modified: Option<jiff::Timestamp>) -> bool {
    if let Some(tags) = &request.if_none_match {
        return tags
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag);
    }
    match (&request.if_modified_since, modified) {
        (Some(since), Some(modified)) => jiff::fmt::rfc2822::DateTimeParser::new()
            .parse_timestamp(since)
            .is_ok_and(|since| modified <= since),
        _ => false,
    }
}

/// The `Content-Type` a static server sends for a channel's files.
fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    if name.ends_with(".json") {
        "application/json"
    } else if name.ends_with(".zst") {
        "application/zstd"
    } else if name.ends_with(".bz2") {
        "application/x-bzip2"
    } else if name.ends_with(".html") {
        "text/html; charset=utf-8"
    } else if name.ends_with(".whl") || name.ends_with(".zip") {
        "application/zip"
    } else if name.ends_with(".gz") {
        "application/gzip"
    } else {
        "application/octet-stream"
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

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    /// What a raw client read: the status, the head's lines, the body, and how reading ended.
    struct Response {
        status: u16,
        head: Vec<String>,
        body: Vec<u8>,
        ended: std::io::Result<()>,
    }

    impl Response {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.iter().find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }
    }

    fn send(server: &Server, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let address = server.base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        stream.write_all(text.as_bytes()).unwrap();
        let mut bytes = Vec::new();
        let mut buffer = [0; 4096];
        let ended = loop {
            match stream.read(&mut buffer) {
                Ok(0) => break Ok(()),
                Ok(n) => bytes.extend_from_slice(&buffer[..n]),
                Err(error) => break Err(error),
            }
        };
        let split = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head");
        let head: Vec<String> = String::from_utf8_lossy(&bytes[..split])
            .lines()
            .map(str::to_owned)
            .collect();
        let status = head[0].split_whitespace().nth(1).unwrap().parse().unwrap();
        Response {
            status,
            head,
            body: bytes[split + 4..].to_vec(),
            ended,
        }
    }

    fn channel() -> (tempfile::TempDir, Vec<u8>) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("chan/noarch");
        fs_err::create_dir_all(&dir).unwrap();
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        fs_err::write(dir.join("a-1-0.conda"), &body).unwrap();
        fs_err::write(dir.join("repodata.json"), b"{\"packages\": {}}").unwrap();
        (root, body)
    }

    #[test]
    fn a_file_is_served_with_validators_and_revalidated_with_304() {
        let (root, body) = channel();
        let server = Server::start(root.path(), Credentials::default());
        let first = send(&server, "GET", "/chan/noarch/a-1-0.conda", &[]);
        assert_eq!(first.status, 200);
        assert_eq!(first.body, body);
        assert_eq!(first.header("Content-Length"), Some("10000"));
        assert_eq!(
            first.header("Content-Type"),
            Some("application/octet-stream")
        );
        let etag = first.header("ETag").unwrap().to_owned();
        let expected = hex::encode(rattler_digest::compute_bytes_digest::<Sha256>(&body));
        assert_eq!(etag, format!("\"{expected}\""));
        let modified = first.header("Last-Modified").unwrap().to_owned();
        assert!(modified.ends_with(" GMT"), "{modified}");

        let json = send(&server, "GET", "/chan/noarch/repodata.json", &[]);
        assert_eq!(json.header("Content-Type"), Some("application/json"));

        let head = send(&server, "HEAD", "/chan/noarch/a-1-0.conda", &[]);
        assert_eq!(head.status, 200);
        assert_eq!(head.header("Content-Length"), Some("10000"));
        assert!(head.body.is_empty());

        let path = "/chan/noarch/a-1-0.conda";
        let by_tag = send(&server, "GET", path, &[("If-None-Match", &etag)]);
        assert_eq!(by_tag.status, 304);
        assert!(by_tag.body.is_empty());
        let by_other_tag = send(&server, "GET", path, &[("If-None-Match", "\"other\"")]);
        assert_eq!(by_other_tag.status, 200);
        let by_date = send(&server, "GET", path, &[("If-Modified-Since", &modified)]);
        assert_eq!(by_date.status, 304);
        let old = "Mon, 01 Jan 2001 00:00:00 GMT";
        let by_old_date = send(&server, "GET", path, &[("If-Modified-Since", old)]);
        assert_eq!(by_old_date.status, 200);
        assert_eq!(by_old_date.body, body);

        let log = server.requests();
        assert_eq!(log.len(), 7);
        assert_eq!(log[2].method, "HEAD");
        assert_eq!(log[3].if_none_match.as_deref(), Some(etag.as_str()));
        assert_eq!(log[3].status, 304);
        assert_eq!(log[5].if_modified_since.as_deref(), Some(modified.as_str()));
        assert!(log.iter().all(|request| request.fault.is_none()));
    }

    #[test]
    fn range_is_recorded_as_sent() {
        let (root, _) = channel();
        let server = Server::start(root.path(), Credentials::default());
        send(
            &server,
            "GET",
            "/chan/noarch/a-1-0.conda",
            &[("Range", "bytes=10-")],
        );
        assert_eq!(server.requests()[0].range.as_deref(), Some("bytes=10-"));
    }

    #[test]
    fn status_faults_come_in_order_for_their_suffix_only_then_normal_answers() {
        let (root, body) = channel();
        let server = Server::start(root.path(), Credentials::default());
        server.fail_next(".conda", vec![Fault::Status(503), Fault::Status(500)]);
        server.fail_next(".conda", vec![Fault::Status(401)]);
        let path = "/chan/noarch/a-1-0.conda?x=1";
        let json = send(&server, "GET", "/chan/noarch/repodata.json", &[]);
        assert_eq!(json.status, 200);
        let statuses: Vec<u16> = (0..4)
            .map(|_| send(&server, "GET", path, &[]).status)
            .collect();
        assert_eq!(statuses, [503, 500, 401, 200]);
        let last = send(&server, "GET", path, &[]);
        assert_eq!(last.body, body);
        let unauthorized = &server.requests_for(".conda")[2];
        assert_eq!(unauthorized.fault, Some(Fault::Status(401)));
        assert_eq!(unauthorized.status, 401);
        assert_eq!(server.requests_for(".conda").len(), 5);
        assert_eq!(server.requests_for("repodata.json").len(), 1);
    }

    #[test]
    fn truncate_sends_the_full_length_and_fewer_bytes() {
        let (root, body) = channel();
        let server = Server::start(root.path(), Credentials::default());
        server.fail_next("a-1-0.conda", vec![Fault::Truncate(1000)]);
        let response = send(&server, "GET", "/chan/noarch/a-1-0.conda", &[]);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("Content-Length"), Some("10000"));
        assert_eq!(response.body, body[..1000]);
        assert!(response.ended.is_ok());
    }

    #[test]
    fn reset_after_cuts_the_body_with_a_reset() {
        let (root, body) = channel();
        let server = Server::start(root.path(), Credentials::default());
        server.fail_next("a-1-0.conda", vec![Fault::ResetAfter(100)]);
        let response = send(&server, "GET", "/chan/noarch/a-1-0.conda", &[]);
        assert_eq!(response.header("Content-Length"), Some("10000"));
        assert!(response.body.len() <= 100);
        assert_eq!(response.body, body[..response.body.len()]);
        let error = response.ended.expect_err("a reset, not an end of file");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn corrupt_changes_the_bytes_not_the_length() {
        let (root, body) = channel();
        let server = Server::start(root.path(), Credentials::default());
        server.fail_next("a-1-0.conda", vec![Fault::Corrupt]);
        let response = send(&server, "GET", "/chan/noarch/a-1-0.conda", &[]);
        assert_eq!(response.status, 200);
        assert_eq!(response.body.len(), body.len());
        assert_ne!(response.body, body);
        let again = send(&server, "GET", "/chan/noarch/a-1-0.conda", &[]);
        assert_eq!(again.body, body);
    }

    #[test]
    fn hang_answers_nothing_until_the_server_is_dropped() {
        let (root, _) = channel();
        let server = Server::start(root.path(), Credentials::default());
        server.fail_next("repodata.json", vec![Fault::Hang]);
        let address = server.base.trim_start_matches("http://").to_owned();
        let mut stream = TcpStream::connect(&address).unwrap();
        stream
            .write_all(b"GET /chan/noarch/repodata.json HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buffer = [0; 16];
        let error = stream.read(&mut buffer).expect_err("no answer");
        assert!(
            matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{error}"
        );
        let log = server.requests();
        assert_eq!(log.len(), 1);
        assert_eq!(
            (log[0].status, log[0].fault.clone()),
            (0, Some(Fault::Hang))
        );
        drop(server);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            stream.read(&mut buffer).unwrap(),
            0,
            "closed, with nothing sent"
        );
    }

    #[test]
    fn credentials_are_still_asked_for() {
        let (root, body) = channel();
        let server = Server::start(
            root.path(),
            Credentials {
                basic: Some("user:secret".to_owned()),
                token: Some("tok".to_owned()),
            },
        );
        let none = send(&server, "GET", "/t/tok/chan/noarch/a-1-0.conda", &[]);
        assert_eq!(none.status, 401);
        assert!(none.header("WWW-Authenticate").is_some());
        let auth = format!("Basic {}", base64(b"user:secret"));
        let no_token = send(
            &server,
            "GET",
            "/chan/noarch/a-1-0.conda",
            &[("Authorization", &auth)],
        );
        assert_eq!(no_token.status, 403);
        let both = send(
            &server,
            "GET",
            "/t/tok/chan/noarch/a-1-0.conda",
            &[("Authorization", &auth)],
        );
        assert_eq!((both.status, both.body), (200, body));
    }
}

/// The repodata files a served subdir holds besides `repodata.json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Variants {
    /// `repodata.json.zst`.
    pub zst: bool,
    /// CEP-16 sharded repodata: `repodata_shards.msgpack.zst` and `shards/<sha256>.msgpack.zst`.
    pub shards: bool,
}

/// Writes the `variants` of the `repodata.json` in `subdir_dir` beside it, as a channel
/// server holds them: the `.zst` of the same bytes, and the sharded index with one shard per
/// package name (rattler_conda_types' [`ShardedRepodata`](rattler_conda_types::ShardedRepodata)
/// and [`Shard`](rattler_conda_types::Shard), msgpack then zstd, each shard named by the
/// sha256 of its compressed bytes, as `rattler_index` writes them). Returns the shards'
/// file names by package name.
///
/// # Panics
/// When the repodata cannot be read or a file written.
pub fn write_variants(
    subdir_dir: &Path,
    variants: Variants,
) -> std::collections::BTreeMap<String, String> {
    let json = fs_err::read(subdir_dir.join("repodata.json")).unwrap();
    if variants.zst {
        let compressed = zstd::stream::encode_all(&json[..], 3).unwrap();
        fs_err::write(subdir_dir.join("repodata.json.zst"), compressed).unwrap();
    }
    let mut names = std::collections::BTreeMap::new();
    if !variants.shards {
        return names;
    }
    let repodata: rattler_conda_types::RepoData = serde_json::from_slice(&json).unwrap();
    let mut shards: std::collections::BTreeMap<String, rattler_conda_types::Shard> =
        std::collections::BTreeMap::new();
    for (file, record) in repodata.packages {
        let name = record.name.as_normalized().to_owned();
        shards
            .entry(name)
            .or_default()
            .packages
            .insert(file, record);
    }
    for (file, record) in repodata.conda_packages {
        let name = record.name.as_normalized().to_owned();
        shards
            .entry(name)
            .or_default()
            .conda_packages
            .insert(file, record);
    }
    let shard_dir = subdir_dir.join("shards");
    fs_err::create_dir_all(&shard_dir).unwrap();
    let mut index = rattler_conda_types::ShardedRepodata {
        info: rattler_conda_types::ShardedSubdirInfo {
            subdir: repodata
                .info
                .as_ref()
                .and_then(|info| info.subdir.clone())
                .unwrap_or_else(|| {
                    subdir_dir
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                }),
            base_url: repodata
                .info
                .as_ref()
                .and_then(|info| info.base_url.clone())
                .unwrap_or_default(),
            shards_base_url: "./shards/".to_owned(),
            created_at: None,
            repodata_revisions: Default::default(),
            channel_relations: None,
            virtual_package_detectors: None,
        },
        shards: Default::default(),
    };
    for (name, shard) in shards {
        let encoded = msgpack_zst(&shard);
        let digest = rattler_digest::compute_bytes_digest::<Sha256>(&encoded);
        let file = format!("{}.msgpack.zst", hex::encode(digest));
        fs_err::write(shard_dir.join(&file), encoded).unwrap();
        index.shards.insert(name.clone(), digest);
        names.insert(name, file);
    }
    fs_err::write(
        subdir_dir.join("repodata_shards.msgpack.zst"),
        msgpack_zst(&index),
    )
    .unwrap();
    names
}

fn msgpack_zst(value: &impl serde::Serialize) -> Vec<u8> {
    let msgpack = rmp_serde::to_vec_named(value).unwrap();
    zstd::stream::encode_all(&msgpack[..], 0).unwrap()
}
