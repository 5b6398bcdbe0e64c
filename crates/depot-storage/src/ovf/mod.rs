//! The OVF_STORE volume: the tar of OVF files the engine keeps on each data
//! domain (docs/formats.md, "OVF_STORE volumes").
//!
//! The pieces, all blocking (the daemon runs them on a blocking thread and
//! feeds them the request body; on a file domain their file-system calls
//! are made in the mount's helper processes, [`StoreFile`]):
//!
//! - [`tar_check`]: a push-based validator of the engine's tar, bounded in
//!   memory whatever the upload size;
//! - [`trailer`]: depot's integrity record in the last 4 KiB of the volume
//!   (size, sha256, generation, Writing/Valid);
//! - [`upload`]: receive a body, checking (tar rules, [`xml_check`] on each
//!   OVF), hashing and writing it on three threads;
//! - [`replace`]: an upload into a new file next to the volume with
//!   `O_DIRECT`, renamed over it once complete and durable (file volumes);
//! - [`store`]: an upload staged next to the volume and copied into it with
//!   `O_DIRECT` (volumes that cannot be renamed), read the state, verify
//!   the checksum, read a byte range;
//! - [`entities`]: the VMs and templates of a store, from their OVF XML,
//!   with a parser that refuses DTDs and entities;
//! - [`xml_check`]: the upload-time check of each OVF's XML (the same
//!   refusals, well-formedness, no parse).

use std::io;
use std::path::PathBuf;

use std::path::Path;
use std::sync::Arc;

use depot_api::{ApiError, Code};
use depot_os::confine::refusal;
use depot_os::{DataPath, DirectError};

use crate::error::StorageError;
use crate::mount_fs::{MountFs, MountTrouble};

pub mod entities;
pub mod replace;
pub mod store;
pub mod tar_check;
pub mod trailer;
pub mod upload;
pub mod xml_check;

#[cfg(test)]
mod tests_common;

pub use entities::{
    check_store, parse_ovf, parse_store, read_entity_ovf, walk_store, EntityKind, OvfEntity,
    StoreContents,
};
pub use store::{
    commit, discard_stale_staging, max_tar_size, read_range, stage_upload, staging_path, state,
    verify, DirectReader, Staged, StoreState,
};
pub use tar_check::{ArchiveSummary, TarEvent, TarValidator};
pub use trailer::{Trailer, TrailerState, TRAILER_SIZE};

/// A failed OVF_STORE operation. [`OvfError::code`] is the VDSM code the
/// engine sees; the message names the entry, the offset or the path, and
/// the rule that was broken.
#[derive(Debug, thiserror::Error)]
pub enum OvfError {
    /// The declared Content-Length cannot be an OVF_STORE archive.
    #[error("OVF_STORE upload: Content-Length {content_length}: {reason}")]
    BadLength { content_length: u64, reason: String },

    /// The bytes are not an archive depot accepts. `entry` is the entry's
    /// name when one was read, `offset` where its header starts.
    #[error("invalid OVF_STORE archive: {}at byte {offset}: {rule}", entry_prefix(.entry))]
    Archive {
        offset: u64,
        entry: Option<String>,
        rule: String,
    },

    /// The stream ended before Content-Length bytes.
    #[error(
        "OVF_STORE upload truncated: received {received} of {content_length} bytes \
         ({} bytes missing)", .content_length - .received
    )]
    Truncated { received: u64, content_length: u64 },

    /// The stream went on past Content-Length.
    #[error("OVF_STORE upload is longer than its Content-Length of {content_length} bytes")]
    TooLong { content_length: u64 },

    /// The archive does not fit in the volume's data area.
    #[error(
        "OVF_STORE archive of {size} bytes does not fit in volume {path}: at most {max} bytes \
         (the volume's last 4096 bytes hold depot's trailer)"
    )]
    TooLarge { path: PathBuf, size: u64, max: u64 },

    /// An OVF entry's XML is malformed or unsafe (DTD, entity reference).
    #[error("OVF {entry}: {reason}")]
    Ovf { entry: String, reason: String },

    /// Another upload to the volume is under way (its staging file exists).
    #[error("OVF_STORE volume is being updated: {} exists", .path.display())]
    Busy { path: PathBuf },

    /// The volume cannot hold an OVF_STORE (too small, alignment too large).
    #[error("OVF_STORE volume {path}: {reason}")]
    Volume { path: PathBuf, reason: String },

    /// The staged file no longer matches what was validated and hashed.
    #[error("staged OVF_STORE upload {path} changed before it was committed: {reason}")]
    StagingChanged { path: PathBuf, reason: String },

    /// A thread of the upload pipeline could not start or died.
    #[error("OVF_STORE upload: {0}")]
    Pipeline(String),

    /// Reading the upload stream failed (the client went away).
    #[error("reading the OVF_STORE upload stream: {0}")]
    Source(#[source] io::Error),

    /// Reading a stored archive failed.
    #[error("reading the OVF_STORE archive at byte {at}: {source}")]
    Stream {
        at: u64,
        #[source]
        source: io::Error,
    },

    /// The consumer of a read refused the bytes (the client went away).
    #[error("sending OVF_STORE data: {0}")]
    Sink(#[source] io::Error),

    #[error("{op} {}: {source}", .path.display())]
    Read {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{op} {}: {source}", .path.display())]
    Write {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(transparent)]
    Direct(#[from] DirectError),

    /// A file-system call (fsync of the directory, fallocate) failed.
    #[error(transparent)]
    Fs(#[from] depot_os::FsError),
}

/// An OVF_STORE volume, or its staging file, and where the calls on it
/// run.
#[derive(Clone)]
pub enum StoreFile {
    /// A file on a file domain's mount: every call is made in the mount's
    /// helper processes with its deadline ([`MountFs`]), so a server that
    /// does not answer fails the call, never a depotd thread.
    Mount { fs: MountFs, path: PathBuf },
    /// Data on no mount (a block domain's LV under `/dev`, its staging
    /// file in the repository's link directory; tests' plain files):
    /// opened under its [`DataPath`] rule on the caller's thread.
    Local(Arc<dyn DataPath + Send + Sync>),
}

impl std::fmt::Debug for StoreFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreFile::Mount { fs, path } => write!(f, "Mount({fs:?}, {})", path.display()),
            StoreFile::Local(d) => write!(f, "Local({})", d.path().display()),
        }
    }
}

impl StoreFile {
    /// `path` beneath `fs`'s mount.
    pub fn mount(fs: &MountFs, path: impl Into<PathBuf>) -> StoreFile {
        StoreFile::Mount {
            fs: fs.clone(),
            path: path.into(),
        }
    }

    /// Data opened on the caller's thread under its rule.
    pub fn local(data: impl DataPath + Send + Sync + 'static) -> StoreFile {
        StoreFile::Local(Arc::new(data))
    }

    pub fn path(&self) -> &Path {
        match self {
            StoreFile::Mount { path, .. } => path,
            StoreFile::Local(d) => d.path(),
        }
    }

    /// The staging file of this volume ([`store::staging_path`]), in the
    /// same place: on the same mount, or a plain local path.
    pub fn staging(&self) -> StoreFile {
        let path = store::staging_path(self.path());
        match self {
            StoreFile::Mount { fs, .. } => StoreFile::mount(fs, path),
            StoreFile::Local(_) => StoreFile::local(path),
        }
    }
}

fn entry_prefix(entry: &Option<String>) -> String {
    match entry {
        Some(name) => format!("entry {name:?} "),
        None => String::new(),
    }
}

impl OvfError {
    /// The code the engine sees. A bad upload is `InvalidParameterException`
    /// (1000), a concurrent upload `VolumeIsBusy` (203), storage reads and
    /// writes 2001 / 2002, a broken client stream `GeneralException` (100).
    /// A mount in trouble underneath (no answer from its helpers,
    /// ENOTCONN, EIO, ESTALE: [`MountTrouble`]) is VDSM's code for that
    /// case (2001 / 2002 / 384), as `StorageError::io` gives it, whatever
    /// the step.
    pub fn code(&self) -> Code {
        if let Some(t) = self.mount_trouble() {
            return t.code();
        }
        match self {
            OvfError::BadLength { .. }
            | OvfError::Archive { .. }
            | OvfError::Truncated { .. }
            | OvfError::TooLong { .. }
            | OvfError::TooLarge { .. }
            | OvfError::Ovf { .. } => Code::InvalidParameterException,
            OvfError::Busy { .. } => Code::VolumeIsBusy,
            OvfError::Volume { .. } => Code::StorageException,
            OvfError::Source(_) | OvfError::Sink(_) | OvfError::Pipeline(_) => {
                Code::GeneralException
            }
            // Volume data behind a symlink (depot_os::confine).
            OvfError::Read { source, .. } if refusal(source).is_some() => Code::ImagePathError,
            OvfError::StagingChanged { .. } | OvfError::Read { .. } | OvfError::Stream { .. } => {
                Code::MiscFileReadException
            }
            OvfError::Write { .. } | OvfError::Fs(_) => Code::MiscFileWriteException,
            OvfError::Direct(e) => match e {
                // Volume data behind a symlink (depot_os::confine).
                DirectError::Open { source, .. } if refusal(source).is_some() => {
                    Code::ImagePathError
                }
                DirectError::Read { .. }
                | DirectError::Probe { .. }
                | DirectError::Unsupported { .. }
                | DirectError::Open {
                    mode: "read-only", ..
                } => Code::MiscFileReadException,
                _ => Code::MiscFileWriteException,
            },
        }
    }

    /// The mount in trouble underneath this error, if that is why it
    /// failed: looked for along the whole chain of causes, through the
    /// `io::Error`s that carry another error (a stored archive's reader
    /// wraps the read's [`OvfError`] in one).
    pub fn mount_trouble(&self) -> Option<&MountTrouble> {
        let mut at: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = at {
            if let Some(t) = e.downcast_ref::<MountTrouble>() {
                return Some(t);
            }
            if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
                // io::Error's own source() skips its payload.
                at = Some(inner);
                continue;
            }
            at = e.source();
        }
        None
    }

    pub(crate) fn archive(offset: u64, entry: Option<&str>, rule: impl Into<String>) -> Self {
        OvfError::Archive {
            offset,
            entry: entry.map(shorten),
            rule: rule.into(),
        }
    }
}

/// A name from the wire, cut to a length that keeps messages readable.
pub(crate) fn shorten(name: &str) -> String {
    const MAX: usize = 120;
    if name.chars().count() <= MAX {
        name.to_string()
    } else {
        let mut s: String = name.chars().take(MAX).collect();
        s.push('…');
        s
    }
}

impl From<OvfError> for ApiError {
    fn from(e: OvfError) -> ApiError {
        ApiError::new(e.code(), e.to_string())
    }
}

impl From<OvfError> for StorageError {
    fn from(e: OvfError) -> StorageError {
        StorageError::new(e.code(), "OVF_STORE", e.to_string()).caused_by(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_os::fsproc::FsProcError;
    use std::time::Duration;

    fn trouble(write: bool) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            MountTrouble {
                write,
                source: FsProcError::Timeout {
                    mount: "/rhev/data-center/mnt/server:_export".into(),
                    op: "read",
                    path: "sd/images/i/v".into(),
                    after: Duration::from_secs(3),
                },
            },
        )
    }

    /// A mount that does not answer is 2001/2002 whatever step met it,
    /// also when the error comes wrapped (the tar parser's reader wraps
    /// the read's OvfError in an io::Error), and the message names it.
    #[test]
    fn a_mount_in_trouble_is_its_code_at_any_depth() {
        let read = OvfError::Read {
            op: "read OVF_STORE volume",
            path: "/v".into(),
            source: trouble(false),
        };
        assert_eq!(read.code(), Code::MiscFileReadException);
        let wrapped = OvfError::Stream {
            at: 4096,
            source: io::Error::other(read),
        };
        assert!(wrapped.mount_trouble().is_some());
        assert_eq!(wrapped.code(), Code::MiscFileReadException);
        assert!(wrapped.to_string().contains("server:_export"), "{wrapped}");
        // A write that got no answer, met while reading the upload's own
        // file: 2002 all the same.
        let write = OvfError::Read {
            op: "stat staging file",
            path: "/v.ovf-upload".into(),
            source: trouble(true),
        };
        assert_eq!(write.code(), Code::MiscFileWriteException);
        // Not a mount in trouble: the step's own code.
        let plain = OvfError::Stream {
            at: 0,
            source: io::Error::other("bad bytes"),
        };
        assert!(plain.mount_trouble().is_none());
        assert_eq!(plain.code(), Code::MiscFileReadException);
        let busy = OvfError::Busy { path: "/v".into() };
        assert_eq!(busy.code(), Code::VolumeIsBusy);
    }
}
