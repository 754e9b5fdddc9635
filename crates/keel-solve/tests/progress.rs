//! `LockOptions::progress`: a lock against a channel served over HTTP behind a token and a
//! password tells the reporter of every repodata download, start to end, and never shows it
//! a credential.

use std::sync::{Arc, Mutex};

use keel_solve::{LockOptions, LockProgress, lock};
use keel_test_support::http::{Credentials, Server};

const USER: &str = "alice";
const PASSWORD: &str = "hunter2";
const TOKEN: &str = "s3cr3t-token";

/// Every call the reporter got, in order.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Call>>);

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Started(usize, String),
    Progress(usize, u64, Option<u64>),
    Done(usize),
}

impl LockProgress for Recorder {
    fn download_started(&self, url: &str) -> usize {
        let mut calls = self.0.lock().unwrap();
        let index = calls
            .iter()
            .filter(|c| matches!(c, Call::Started(..)))
            .count();
        calls.push(Call::Started(index, url.to_owned()));
        index
    }

    fn download_progress(&self, index: usize, bytes: u64, total: Option<u64>) {
        self.0
            .lock()
            .unwrap()
            .push(Call::Progress(index, bytes, total));
    }

    fn download_done(&self, index: usize) {
        self.0.lock().unwrap().push(Call::Done(index));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_download_is_reported_start_to_end_without_credentials() {
    let served = tempfile::tempdir().unwrap();
    keel_test_support::http::serve_py39_copy(served.path());
    let server = Server::start(
        served.path(),
        Credentials {
            basic: Some(format!("{USER}:{PASSWORD}")),
            token: Some(TOKEN.to_owned()),
        },
    );
    let host = server.base.trim_start_matches("http://");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environment.yml");
    fs_err::write(
        &path,
        format!(
            "channels:\n  - http://{USER}:{PASSWORD}@{host}/t/{TOKEN}/chan\n  - nodefaults\ndependencies:\n  - python=3.9\nplatforms: [linux-64]\n"
        ),
    )
    .unwrap();
    let spec = keel_spec::read_path(&path).unwrap().spec;
    let recorder = Arc::new(Recorder::default());
    let options = LockOptions {
        cache_dir: dir.path().join("cache"),
        progress: Some(recorder.clone()),
        ..LockOptions::default()
    };
    let locked = lock(&spec, &path, &options, None).await.unwrap();
    assert!(locked.text.contains("python"), "{}", locked.text);

    let calls = recorder.0.lock().unwrap().clone();
    let started: Vec<(usize, String)> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Started(index, url) => Some((*index, url.clone())),
            _ => None,
        })
        .collect();
    // linux-64 and noarch, each fetched once.
    for subdir in ["linux-64", "noarch"] {
        assert!(
            started
                .iter()
                .any(|(_, url)| url.contains(&format!("/chan/{subdir}/repodata"))),
            "no download of {subdir}'s repodata reported: {calls:?}"
        );
    }
    for (index, url) in &started {
        for secret in [USER, PASSWORD, TOKEN] {
            assert!(
                !url.contains(secret),
                "{secret} reached the reporter: {url}"
            );
        }
        let done = calls.iter().position(|c| *c == Call::Done(*index));
        let start = calls
            .iter()
            .position(|c| matches!(c, Call::Started(i, _) if i == index));
        assert!(
            done.is_some() && done > start,
            "download {index} ({url}) never reported done after it started: {calls:?}"
        );
    }
    // Progress is only ever reported for a download that has started.
    for call in &calls {
        if let Call::Progress(index, bytes, total) = call {
            assert!(started.iter().any(|(i, _)| i == index), "{calls:?}");
            if let Some(total) = total {
                assert!(bytes <= total, "{calls:?}");
            }
        }
    }
}
