//! Errors of opening the job store and of persisting jobs.
//!
//! Verbs get [`depot_api::error::ApiError`]s; these are the daemon-side
//! failures behind them, each naming the file and the step that failed so a
//! log line is enough to find the problem.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("cannot create job directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },

    #[error("cannot list job directory {path}: {source}")]
    ReadDir { path: PathBuf, source: io::Error },

    /// `step` is one of "create temp file", "write", "fsync", "rename",
    /// "fsync directory".
    #[error("cannot write job file {path} ({step}): {source}")]
    Write {
        path: PathBuf,
        step: &'static str,
        source: io::Error,
    },

    #[error("cannot remove job file {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },

    #[error("cannot encode job file {path}: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },

    /// The blocking task doing file I/O panicked or was cancelled.
    #[error("{op} of {path} did not complete: {detail}")]
    Blocking {
        op: &'static str,
        path: PathBuf,
        detail: String,
    },

    /// Two kinds passed to [`crate::JobManager::open`] share a name, so
    /// persisted jobs could not be told apart.
    #[error("job kind {name:?} is registered twice")]
    DuplicateKind { name: &'static str },
}
