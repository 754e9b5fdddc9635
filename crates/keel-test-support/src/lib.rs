//! What keel's tests share, so that no test tree borrows another's files: where the test data
//! lives ([`test_data`]), the tools the tests run ([`tool`], [`python`], [`mpirun`]), and what
//! the tests build and serve: conda channels of real packages ([`channel`]), pure-Python wheels
//! ([`wheel`]), an HTTP channel server with credentials, cache validators and injected faults ([`http`]), the
//! seeds' PyTorch environment as channels for it to serve ([`seeds`]) and an S3 server ([`s3`]).
//!
//! A dev-dependency only (`publish = false`). A tool a test needs and cannot find is a test
//! failure that names the tool and the script that installs it (`.ci/test-tools`), never a
//! silent skip.

pub mod channel;
mod data;
pub mod http;
pub mod s3;
pub mod seeds;
mod tools;
pub mod wheel;

pub use data::{test_data, workspace_root, yaml_files};
pub use tools::{example, mpirun, python, slurm, tool, tools_dir};
