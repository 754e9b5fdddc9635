//! A channel whose repodata keel cannot read: the error names the file, the record and the
//! place in the file, not only a line inside one record.

use keel_solve::{LockOptions, SolveError, lock};

/// The rule: a broken record in a local channel's repodata.json is reported as
/// `FILE:LINE:COLUMN: the record NAME does not read as repodata: REASON`.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_repodata_record_names_the_file_and_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let channel = dir.path().join("channel");
    for subdir in ["linux-64", "noarch"] {
        fs_err::create_dir_all(channel.join(subdir)).unwrap();
    }
    let repodata = r#"{
  "info": {"subdir": "linux-64"},
  "packages": {
    "good-1.0-0.tar.bz2": {"name": "good", "version": "1.0", "build": "0",
      "build_number": 0, "depends": [], "subdir": "linux-64"},
    "broken-2.0-0.tar.bz2": {"name": "broken", "version": "2.0", "build": "0",
      "build_number": 0, "depends": {"not": "a list"}, "subdir": "linux-64"}
  },
  "packages.conda": {}
}
"#;
    fs_err::write(channel.join("linux-64/repodata.json"), repodata).unwrap();
    fs_err::write(
        channel.join("noarch/repodata.json"),
        r#"{"info": {"subdir": "noarch"}, "packages": {}, "packages.conda": {}}"#,
    )
    .unwrap();
    let env = dir.path().join("environment.yml");
    fs_err::write(
        &env,
        format!(
            "channels: [{}]\ndependencies: [broken]\nplatforms: [linux-64]\n",
            channel.display()
        ),
    )
    .unwrap();
    let spec = keel_spec::read_path(&env).unwrap().spec;
    let options = LockOptions {
        cache_dir: dir.path().join("cache"),
        uv: keel_solve::Uv::Disabled,
        ..LockOptions::default()
    };
    let error = lock(&spec, &env, &options, None).await.unwrap_err();
    let SolveError::BadRepodata {
        file, record, line, ..
    } = &error
    else {
        panic!("expected a repodata error naming the file, got {error:?}");
    };
    assert_eq!(file, &channel.join("linux-64/repodata.json"));
    assert_eq!(record.as_deref(), Some("broken-2.0-0.tar.bz2"));
    assert_eq!(*line, 7);
    let text = error.to_string();
    assert!(
        text.contains("linux-64/repodata.json:7:") && text.contains("broken-2.0-0.tar.bz2"),
        "{text}"
    );
}
