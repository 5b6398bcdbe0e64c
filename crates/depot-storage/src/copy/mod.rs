//! The copy engine's native raw-to-raw copier, ovirt-imageio's blkhash
//! checksum, and the journal that lets a copy resume after a crash.
//!
//! - [`copy_raw`]: copies a raw image (file or block device) onto a raw
//!   destination at least as large, with `O_DIRECT` on both ends, reading
//!   only data extents, writing only non-zero data, zeroing (or skipping,
//!   on a destination known to be zero) the rest, and computing the
//!   checksum from the same buffers. A reader thread and a writer thread
//!   overlap the I/O; the calling thread detects zeros, hashes, reports
//!   progress and polls for abort.
//! - [`checksum_raw`] / [`verify_raw`]: the blkhash of an image, reading
//!   only data extents; and the comparison with an expected one.
//! - [`BlockHasher`] / [`BlkHash`]: the checksum itself, compatible with
//!   ovirt-imageio's `blkhash` (see [`blkhash`]).
//! - [`Journal`]: crash-resume (see [`journal`]).
//!
//! docs/copy.md describes the algorithm, the measurements behind the
//! defaults, the journal format and the crash guarantees.

use std::io;
use std::path::{Path, PathBuf};

pub mod blkhash;
pub mod child;
mod copier;
pub mod extents;
pub mod journal;

pub use blkhash::{BlkHash, BlockHasher, BLOCK_SIZE};
pub use copier::{
    checksum_raw, copy_raw, verify_raw, ChecksumOptions, CopyOptions, CopyResult,
    DEFAULT_BUFFER_SIZE, DEFAULT_QUEUE_DEPTH,
};
pub use extents::{extents, Extent};
pub use journal::{Journal, JournalState};

/// Why a copy (or checksum) failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Opening, probing or syncing a file for direct I/O failed.
    #[error(transparent)]
    Direct(#[from] depot_os::DirectError),

    /// Zeroing, punching or an atomic write failed.
    #[error(transparent)]
    Fs(#[from] depot_os::FsError),

    #[error("read of {len} bytes at offset {offset} from {path}: {source}")]
    Read {
        path: PathBuf,
        offset: u64,
        len: usize,
        #[source]
        source: io::Error,
    },

    #[error("write of {len} bytes at offset {offset} to {path}: {source}")]
    Write {
        path: PathBuf,
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },

    /// Another OS call (stat, seek, extents, ioctl) failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("destination {dst} has {dst_size} bytes, fewer than the source's {src_size}")]
    DestinationTooSmall {
        dst: PathBuf,
        src_size: u64,
        dst_size: u64,
    },

    /// The source's size (or mtime) changed while it was copied or hashed.
    #[error("source {path} changed while it was read: {what}")]
    SourceChanged { path: PathBuf, what: String },

    /// The caller's abort callback said stop.
    #[error("copy aborted")]
    Aborted,

    #[error("checksum mismatch on {path}: expected {expected}, computed {actual}")]
    ChecksumMismatch {
        path: PathBuf,
        expected: Box<BlkHash>,
        actual: Box<BlkHash>,
    },

    #[error("copy journal {path}: {op}: {source}")]
    Journal {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("invalid copy request: {0}")]
    Invalid(String),

    /// What the copier child reported (its message and OS error), or why
    /// it could not report (child.rs).
    #[error("{message}")]
    Child { message: String, errno: Option<i32> },
}

impl CopyError {
    pub(crate) fn journal(path: &Path, op: &'static str, source: io::Error) -> Self {
        CopyError::Journal {
            path: path.to_owned(),
            op,
            source,
        }
    }

    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        CopyError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// The OS error behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            CopyError::Direct(e) => e.raw_os_error(),
            CopyError::Fs(e) => e.io_error().and_then(io::Error::raw_os_error),
            CopyError::Read { source, .. }
            | CopyError::Write { source, .. }
            | CopyError::Io { source, .. }
            | CopyError::Journal { source, .. } => source.raw_os_error(),
            CopyError::Child { errno, .. } => *errno,
            _ => None,
        }
    }

    /// The destination (or the journal's) filesystem is full.
    pub fn is_no_space(&self) -> bool {
        matches!(self.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
    }
}

/// Test helpers shared by the copy modules' tests.
#[cfg(test)]
pub(crate) mod testutil {
    use std::path::Path;
    use std::process::Command;

    /// blkhash of the first `size` bytes of `path` by an independent
    /// implementation: Python's hashlib with the construction written out
    /// (not ovirt-imageio's code). A missing python3 fails the test.
    pub fn python_blkhash(path: &Path, size: u64, block_size: u64) -> String {
        let script = r#"
import hashlib, sys
size, bs = int(sys.argv[2]), int(sys.argv[3])
outer = hashlib.blake2b(digest_size=32)
with open(sys.argv[1], "rb") as f:
    while size > 0:
        block = f.read(min(bs, size))
        assert block, "short file"
        size -= len(block)
        outer.update(hashlib.blake2b(block, digest_size=32).digest())
print(outer.hexdigest())
"#;
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(path)
            .arg(size.to_string())
            .arg(block_size.to_string())
            .output()
            .expect("python3, the independent blkhash (a requirement of every tier)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}
