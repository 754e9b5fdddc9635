//! The seeds' PyTorch composition ([`keel_test_support::seeds`]) built under a folder and
//! served on 127.0.0.1 by the tests' server ([`keel_test_support::http::Server`]: `ETag`,
//! `Last-Modified`, `304`), for `benches/served_vs_py_rattler.py`.
//!
//!     serve_seeds ROOT PYTHON
//!
//! Builds the composition under `ROOT` (which must not exist yet; `PYTHON` is the real
//! interpreter the python package's `bin/python3.9` runs), prints `http://127.0.0.1:<port>` on
//! the first line of stdout, then answers each line read on stdin with one JSON line counting
//! the requests since the previous line (`{"requests": N, "ok": N, "not_modified": N,
//! "paths_ok": [the paths answered 200]}`), and stops when stdin closes.

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use keel_test_support::http::{Credentials, Server};
use keel_test_support::seeds;

/// Says `message` on stderr; exit 2.
fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "{message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, python] = args.as_slice() else {
        return fail("usage: serve_seeds ROOT PYTHON");
    };
    let root = PathBuf::from(root);
    if root.exists() {
        return fail(&format!("serve_seeds: {} exists already", root.display()));
    }
    if let Err(error) = fs_err::create_dir_all(&root) {
        return fail(&format!("serve_seeds: {error}"));
    }
    seeds::build(&root, &PathBuf::from(python), &seeds::Options::default());
    let server = Server::start(&root, Credentials::default());
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{}", server.base)
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::from(1);
    }
    let mut seen = 0;
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        let requests = server.requests();
        let new = requests.get(seen..).unwrap_or_default();
        seen = requests.len();
        let count = |status: u16| new.iter().filter(|r| r.status == status).count();
        let report = serde_json::json!({
            "requests": new.len(),
            "ok": count(200),
            "not_modified": count(304),
            "paths_ok": new
                .iter()
                .filter(|r| r.status == 200)
                .map(|r| r.path().to_owned())
                .collect::<Vec<_>>(),
        });
        if writeln!(out, "{report}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    ExitCode::SUCCESS
}
