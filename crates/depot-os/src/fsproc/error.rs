//! Why a call through a helper produced no answer.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::protocol::{FrameError, WireError};
use crate::confine::Refused;

/// A failed call on an [`FsProc`](super::FsProc) or [`FsPool`](super::FsPool).
#[derive(Debug, thiserror::Error)]
pub enum FsProcError {
    /// The helper made the call and the OS (or the confinement rule)
    /// refused it. `source` keeps the errno (`raw_os_error`, `kind`); a
    /// refusal carries a [`Refused`] that [`crate::confine::refusal`]
    /// finds.
    #[error("{op} {path} on {mount}: {source}")]
    Io {
        mount: PathBuf,
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },

    /// The helper did not answer within the deadline; it was killed and
    /// will be replaced (if the kernel holds it, it stays counted stuck).
    #[error("{op} {path} on {mount}: no answer within {after:?}; helper abandoned")]
    Timeout {
        mount: PathBuf,
        op: &'static str,
        path: String,
        after: Duration,
    },

    /// Every helper of the mount is stuck in a call that never returned:
    /// refused at once instead of starting another that would hang too.
    #[error("{mount}: all {stuck} helpers are stuck in calls that did not return; storage not answering")]
    Hung { mount: PathBuf, stuck: usize },

    /// The helper exited (or closed its pipes) during the call.
    #[error("{op} on {mount}: helper died ({status})")]
    HelperDied {
        mount: PathBuf,
        op: &'static str,
        status: String,
    },

    /// The helper broke the protocol (a bad frame, a wrong id, another
    /// version), or the request could not be encoded.
    #[error("{op} on {mount}: helper protocol: {reason}")]
    Protocol {
        mount: PathBuf,
        op: &'static str,
        reason: String,
    },

    /// No helper could be started.
    #[error("cannot start a helper for {mount}: {source}")]
    Spawn {
        mount: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FsProcError {
    /// The error with `path` as the file it is about, where the request
    /// named none (a stream's steps name a handle, not a path).
    pub(crate) fn naming(mut self, file: &str) -> FsProcError {
        if let FsProcError::Io { path, .. } | FsProcError::Timeout { path, .. } = &mut self {
            if path.is_empty() {
                *path = file.to_owned();
            }
        }
        self
    }

    /// The OS error number of an [`Io`](Self::Io) error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            FsProcError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The kind of an [`Io`](Self::Io) error (`NotFound`, ...).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            FsProcError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// The refusal of the confinement rule, if that is why.
    pub fn refusal(&self) -> Option<&Refused> {
        match self {
            FsProcError::Io { source, .. } => crate::confine::refusal(source),
            _ => None,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, FsProcError::Timeout { .. })
    }

    pub fn is_hung(&self) -> bool {
        matches!(self, FsProcError::Hung { .. })
    }

    /// Whether the helper that got this error can serve another call: the
    /// call was answered (well or not) and the pipe is at a frame boundary.
    pub(crate) fn helper_reusable(&self) -> bool {
        matches!(self, FsProcError::Io { .. })
    }
}

/// The [`io::Error`] a [`WireError`] stands for.
pub(crate) fn io_error_of(w: &WireError, path: &str) -> io::Error {
    if w.refused {
        return io::Error::other(Refused {
            path: PathBuf::from(path),
            reason: w.message.clone(),
        });
    }
    match w.errno {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None if w.invalid => io::Error::new(io::ErrorKind::InvalidInput, w.message.clone()),
        None => io::Error::other(w.message.clone()),
    }
}

/// A frame error as a protocol failure.
pub(crate) fn frame_reason(e: &FrameError) -> String {
    e.to_string()
}
