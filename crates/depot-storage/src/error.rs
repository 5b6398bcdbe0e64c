//! The storage layer's error: a VDSM code (depot_api::Code), the operation
//! that failed, and the context that says on what; and, when there is one,
//! the error underneath (a depot-os error, an io::Error) as its `source()`,
//! so logs and tests see what failed below while the wire sees only code and
//! message.

use depot_api::{ApiError, Code};
use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// The error underneath a [`StorageError`]. An `Arc` so that the error
/// stays `Clone` (results are shared between waiters of one task).
pub type Cause = Arc<dyn Error + Send + Sync + 'static>;

/// Any error, boxed: what a helper that words several kinds of error the
/// same way takes, to keep the one it got as the cause.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// An error of a storage operation. `code` is what oVirt sees; `op` and
/// `detail` make the message say what failed on what; the cause, if any, is
/// the error underneath (`std::error::Error::source`).
///
/// Equality compares `code`, `op` and `detail` only: the cause is for logs
/// and diagnosis, two errors that say the same on the wire are equal.
#[derive(Debug, Clone)]
pub struct StorageError {
    pub code: Code,
    /// What was being done, e.g. "create volume".
    pub op: &'static str,
    /// On what and why, e.g. the path and the OS error.
    pub detail: String,
    cause: Option<Cause>,
}

pub type StorageResult<T> = Result<T, StorageError>;

impl StorageError {
    pub fn new(code: Code, op: &'static str, detail: impl Into<String>) -> Self {
        StorageError {
            code,
            op,
            detail: detail.into(),
            cause: None,
        }
    }

    /// An OS error on a path, kept with both: the message says the path and
    /// the error, the error stays the source. A mount in trouble
    /// ([`MountTrouble`](crate::mount_fs::MountTrouble): no answer, a dead
    /// helper, ENOTCONN, EIO, ESTALE) answers VDSM's code for that case
    /// (2001, 2002, 384) instead of `code`: never "does not exist" for a
    /// file that could not be looked at.
    pub fn io(code: Code, op: &'static str, path: &std::path::Path, e: std::io::Error) -> Self {
        let code = crate::mount_fs::MountTrouble::of(&e).map_or(code, |t| t.code());
        StorageError::new(code, op, format!("{}: {e}", path.display())).caused_by(e)
    }

    /// An OS error with no one path to name (the error names what it can),
    /// with the same rule for a mount in trouble as [`io`](Self::io).
    pub fn os(code: Code, op: &'static str, e: std::io::Error) -> Self {
        let code = crate::mount_fs::MountTrouble::of(&e).map_or(code, |t| t.code());
        StorageError::new(code, op, e.to_string()).caused_by(e)
    }

    /// Keeps `e` as the error underneath. The message does not change: the
    /// caller's `detail` already says what it should of `e`.
    #[must_use]
    pub fn caused_by(mut self, e: impl Into<BoxError>) -> Self {
        self.cause = Some(Arc::from(e.into()));
        self
    }

    /// Takes over the cause of `other`, for an error that rewrites another
    /// one's message (its detail already inside the new detail): the chain
    /// then goes straight to what failed underneath, without saying the
    /// same message twice.
    #[must_use]
    pub fn with_cause_of(mut self, other: &StorageError) -> Self {
        self.cause = other.cause.clone();
        self
    }

    /// The same error told of another operation (a helper's error as its
    /// caller's); detail and cause stay.
    #[must_use]
    pub fn in_op(self, op: &'static str) -> Self {
        StorageError { op, ..self }
    }

    /// The same error under another code; detail and cause stay.
    #[must_use]
    pub fn with_code(self, code: Code) -> Self {
        StorageError { code, ..self }
    }

    /// The error underneath, if any.
    pub fn cause(&self) -> Option<&Cause> {
        self.cause.as_ref()
    }

    /// Whether the error underneath is a [`MountFs`](crate::mount_fs::MountFs)
    /// call's [`MountTrouble`](crate::mount_fs::MountTrouble): the mount did
    /// not answer, or answered that the storage is failing, as opposed to an
    /// answer about the path itself. The exact test, for an error made
    /// straight from such a call ([`io`](Self::io), [`os`](Self::os)); where
    /// the code alone cannot tell, as for a domain's metadata, whose every
    /// read or write failure is 2001 or 2002. An error wrapped again (its
    /// cause another error) no longer shows it: see
    /// [`has_mount_trouble_code`](Self::has_mount_trouble_code).
    pub fn has_mount_trouble_cause(&self) -> bool {
        self.cause()
            .and_then(|c| c.downcast_ref::<std::io::Error>())
            .is_some_and(|io| crate::mount_fs::MountTrouble::of(io).is_some())
    }

    /// Whether the error answers with a code of a mount in trouble (2001,
    /// 2002, 384): such an error is the verb's answer, never read as
    /// "absent" or "unreadable, go on". The code survives the rewrapping
    /// of the volume and image code ([`in_op`](Self::in_op), an OVF error's
    /// code), so this is the test there, where a failure about the path
    /// itself has codes of its own; not where 2001 and 2002 also mean "that
    /// file could not be read" (see
    /// [`has_mount_trouble_cause`](Self::has_mount_trouble_cause)).
    pub fn has_mount_trouble_code(&self) -> bool {
        matches!(
            self.code,
            Code::MiscFileReadException
                | Code::MiscFileWriteException
                | Code::FileStorageDomainStaleNFSHandle
        )
    }

    /// The messages of the chain of sources below this error, joined by
    /// ": " (empty without a cause), for logs.
    pub fn cause_chain(&self) -> String {
        source_chain(self)
    }
}

/// The messages of `e`'s sources (not `e` itself), joined by ": ".
pub fn source_chain(e: &dyn Error) -> String {
    let mut out = String::new();
    let mut next = e.source();
    while let Some(s) = next {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

impl PartialEq for StorageError {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code && self.op == other.op && self.detail == other.detail
    }
}

impl Eq for StorageError {}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.code.text(), self.op, self.detail)
    }
}

impl Error for StorageError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// The wire gets code and message only; the chain of causes goes along
/// as the ApiError's cause, for the daemon's request log.
impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> ApiError {
        let api = ApiError::new(e.code, format!("{}: {}", e.op, e.detail));
        match e.cause_chain() {
            chain if chain.is_empty() => api,
            chain => api.with_cause(chain),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::path::Path;

    /// An error with an error below it, as depot-os's wrap the runner's.
    #[derive(Debug, thiserror::Error)]
    #[error("outer on {what}")]
    struct Outer {
        what: &'static str,
        #[source]
        source: io::Error,
    }

    fn enoent() -> io::Error {
        io::Error::from_raw_os_error(libc::ENOENT)
    }

    fn io_below(e: &StorageError) -> &io::Error {
        e.source()
            .and_then(|s| s.downcast_ref::<io::Error>())
            .unwrap_or_else(|| panic!("no io::Error under {e:?}"))
    }

    #[test]
    fn io_keeps_the_os_error_and_says_what_it_said() {
        let e = StorageError::io(
            Code::VolumeMetadataReadError,
            "volume info",
            Path::new("/a/b.meta"),
            enoent(),
        );
        assert_eq!(io_below(&e).kind(), io::ErrorKind::NotFound);
        assert_eq!(io_below(&e).raw_os_error(), Some(libc::ENOENT));
        assert_eq!(
            e.detail,
            "/a/b.meta: No such file or directory (os error 2)"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "{}: volume info: /a/b.meta: No such file or directory (os error 2)",
                Code::VolumeMetadataReadError.text()
            )
        );
    }

    #[test]
    fn the_wire_does_not_see_the_cause() {
        let plain = StorageError::new(Code::VolumeCopyError, "copy", "on x: broke");
        let caused = plain.clone().caused_by(enoent());
        assert_eq!(caused.to_string(), plain.to_string());
        let (a, b) = (ApiError::from(caused), ApiError::from(plain));
        assert_eq!(a.cause(), Some("No such file or directory (os error 2)"));
        assert_eq!(b.cause(), None);
        assert_eq!(a.code, b.code);
        assert_eq!(a.detail, b.detail);
        assert_eq!(a.detail, "copy: on x: broke");
        assert_eq!(a.to_wire(), b.to_wire());
    }

    #[test]
    fn the_cause_stays_through_clone_and_rewording() {
        let e = StorageError::new(Code::VolumeCopyError, "inner op", "x").caused_by(enoent());
        assert_eq!(io_below(&e.clone()).raw_os_error(), Some(libc::ENOENT));
        let moved = e.clone().in_op("outer op").with_code(Code::TaskAborted);
        assert_eq!(
            (moved.code, moved.op, moved.detail.as_str()),
            (Code::TaskAborted, "outer op", "x")
        );
        assert_eq!(io_below(&moved).raw_os_error(), Some(libc::ENOENT));
        // A message that embeds another's takes over its cause, not the
        // other error itself: the chain does not repeat the message.
        let reworded = StorageError::new(e.code, "outer op", format!("parent: {}", e.detail))
            .with_cause_of(&e);
        assert_eq!(io_below(&reworded).raw_os_error(), Some(libc::ENOENT));
        assert!(StorageError::new(e.code, "op", "y")
            .with_cause_of(&StorageError::new(e.code, "op", "no cause"))
            .source()
            .is_none());
    }

    #[test]
    fn the_chain_names_every_error_below_in_order() {
        let e = StorageError::new(Code::MountError, "connect", "mount failed").caused_by(Outer {
            what: "/mnt/x",
            source: enoent(),
        });
        assert_eq!(
            e.cause_chain(),
            "outer on /mnt/x: No such file or directory (os error 2)"
        );
        let outer = e.source().and_then(|s| s.downcast_ref::<Outer>()).unwrap();
        assert_eq!(outer.what, "/mnt/x");
        assert_eq!(
            StorageError::new(Code::MountError, "op", "d").cause_chain(),
            ""
        );
    }

    /// The two tests of a mount in trouble look at different evidence,
    /// and each sees a case the other does not.
    #[test]
    fn mount_trouble_is_told_by_its_cause_or_by_its_code() {
        let trouble = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                crate::mount_fs::MountTrouble {
                    write: false,
                    source: depot_os::fsproc::FsProcError::Hung {
                        mount: "/mnt/x".into(),
                        stuck: 2,
                    },
                },
            )
        };
        let path = Path::new("/mnt/x/sd/dom_md/metadata");
        // Straight from a MountFs call: both.
        let e = StorageError::io(Code::VolumeMetadataReadError, "op", path, trouble());
        assert_eq!(e.code, Code::MiscFileReadException);
        assert!(e.has_mount_trouble_cause() && e.has_mount_trouble_code());
        // Wrapped again, the code stays and the cause is another error.
        let wrapped = StorageError::new(e.code, "outer", e.to_string()).caused_by(e);
        assert!(wrapped.has_mount_trouble_code() && !wrapped.has_mount_trouble_cause());
        // 2001 for a file that answered "no" (a domain's metadata): the code
        // says trouble, the cause does not.
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        let e = StorageError::io(Code::MiscFileReadException, "op", path, denied);
        assert!(e.has_mount_trouble_code() && !e.has_mount_trouble_cause());
        // Neither: an answer about the path.
        let e = StorageError::io(Code::VolumeMetadataReadError, "op", path, enoent());
        assert!(!e.has_mount_trouble_code() && !e.has_mount_trouble_cause());
    }

    #[test]
    fn equality_is_what_the_wire_says() {
        let a = StorageError::new(Code::MountError, "op", "d");
        assert_eq!(a, a.clone().caused_by(enoent()));
        assert_ne!(a, StorageError::new(Code::MountError, "op", "e"));
        assert_ne!(a, StorageError::new(Code::MountError, "other op", "d"));
        assert_ne!(a, StorageError::new(Code::StorageException, "op", "d"));
    }

    #[test]
    fn a_boxed_cause_is_the_error_itself() {
        // Helpers that word several kinds of error alike take a BoxError:
        // the source is still the original error, not the Box.
        let boxed: BoxError = Box::new(enoent());
        let e = StorageError::new(Code::VolumeExtendingError, "extend", "x").caused_by(boxed);
        assert_eq!(io_below(&e).raw_os_error(), Some(libc::ENOENT));
    }
}
