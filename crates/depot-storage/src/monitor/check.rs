//! One health check of a domain, and what its outcome means as a VDSM code.
//!
//! The check of a file domain ([`probe_via`]) runs in a helper process of
//! `depot_os::fsproc` with a deadline: depotd's own threads never enter the
//! domain's file system. A block domain's check ([`probe`]: its `dom_md`
//! entries are links to LVs, which a helper does not follow) runs on the
//! domain's `IoWorker` thread and may hang there forever. [`classify`] runs
//! on the monitor thread and never touches the domain's storage (the mount
//! table is read from `/proc`).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use depot_api::Code;
use depot_os::fsproc::{FsPool, FsProcError};
use depot_os::{AlignedBuf, FsStats};

/// The size of the read, as VDSM's `dd bs=4096 count=1 iflag=direct`. 4096
/// is also the alignment, which works on 512 and 4K storage alike.
pub const READ_SIZE: usize = 4096;

/// What to check for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckTarget {
    /// Read 4 KiB from here with `O_DIRECT`: `dom_md/metadata` of a file
    /// domain, the metadata LV of a block domain.
    pub read_path: PathBuf,
    /// `statvfs` this: the domain directory (disk total and free).
    pub stat_path: PathBuf,
    /// The mount the domain lives on (file domains on NFS, GlusterFS, ...):
    /// used to tell "not mounted" (360) from "domain missing" (358), and
    /// unmounted when the server says `ESTALE`. `None` for local and block
    /// domains.
    pub mount_point: Option<PathBuf>,
    /// A file domain, checked through helper processes (when the monitor
    /// has a helper command). False for a block domain, whose `dom_md`
    /// entries are symbolic links to LVs that a helper never follows.
    pub file: bool,
}

impl CheckTarget {
    /// The target of a file domain whose directory is `domain_dir`
    /// (`<mount>/<sdUUID>`): reads `dom_md/metadata`, stats the directory.
    pub fn file_domain(domain_dir: impl Into<PathBuf>, mount_point: Option<PathBuf>) -> Self {
        let stat_path = domain_dir.into();
        CheckTarget {
            read_path: stat_path.join("dom_md").join("metadata"),
            stat_path,
            mount_point,
            file: true,
        }
    }

    /// The target of a block domain whose directory is `domain_dir`: the
    /// same paths, checked on a worker thread (the links lead to LVs).
    pub fn block_domain(domain_dir: impl Into<PathBuf>) -> Self {
        CheckTarget {
            file: false,
            ..CheckTarget::file_domain(domain_dir, None)
        }
    }

    /// Where a helper pool for this domain is rooted, and the check's two
    /// paths relative to it: the mount if there is one, else the directory
    /// that holds the domain (a LOCALFS domain's local directory).
    pub(crate) fn helper_paths(&self) -> Option<(PathBuf, String, String)> {
        let root = match &self.mount_point {
            Some(m) => m.clone(),
            None => self.stat_path.parent()?.to_owned(),
        };
        let rel = |p: &Path| {
            p.strip_prefix(&root)
                .ok()
                .and_then(Path::to_str)
                .map(str::to_owned)
        };
        Some((root.clone(), rel(&self.read_path)?, rel(&self.stat_path)?))
    }
}

/// An OS call that failed: its errno (if any) and a message naming the call
/// and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub errno: Option<i32>,
    /// The call got no answer (a helper deadline or a hung pool), or the
    /// helper failed without an OS error.
    pub no_answer: bool,
    pub message: String,
}

impl Failure {
    fn kind(&self) -> Option<io::ErrorKind> {
        self.errno.map(|n| io::Error::from_raw_os_error(n).kind())
    }

    fn is_stale(&self) -> bool {
        self.errno
            .is_some_and(|n| depot_os::is_stale_handle(&io::Error::from_raw_os_error(n)))
    }

    fn is_missing(&self) -> bool {
        matches!(
            self.kind(),
            Some(io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
        )
    }

    fn is_denied(&self) -> bool {
        self.kind() == Some(io::ErrorKind::PermissionDenied)
    }

    /// The storage did not answer, or failed underneath: a helper
    /// deadline, all helpers stuck, `ENOTCONN` (a FUSE client gone) or
    /// `EIO`. Never "does not exist".
    fn is_unreachable(&self) -> bool {
        self.no_answer || matches!(self.errno, Some(libc::ENOTCONN | libc::EIO))
    }

    /// A failed helper call: its errno, or "no answer" for a deadline or
    /// a hung pool; the message names the mount and the operation.
    fn of_helper(e: &FsProcError) -> Failure {
        Failure {
            errno: e.errno(),
            no_answer: !matches!(e, FsProcError::Io { .. }),
            message: e.to_string(),
        }
    }
}

/// The raw outcome of one completed check.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    /// The read latency (open and read), or why the read failed.
    pub read: Result<Duration, Failure>,
    pub stat: Result<FsStats, Failure>,
}

/// Runs one check: an `O_DIRECT` read of the first 4 KiB of `read_path`,
/// then `statvfs(stat_path)`. Blocks as long as the storage does.
pub(crate) fn probe(target: &CheckTarget) -> Probe {
    let start = Instant::now();
    let read = read_head(&target.read_path).map(|()| start.elapsed());
    let stat = depot_os::fsutil::statvfs(&target.stat_path).map_err(|e| Failure {
        errno: e.io_error().and_then(io::Error::raw_os_error),
        no_answer: false,
        message: e.to_string(),
    });
    Probe { read, stat }
}

/// The same check through `pool`'s helper (rooted at `helper_paths`'s
/// root), each call with the pool's deadline. Once the read got no answer,
/// the statvfs is not tried: the helper is stuck, and the pool would only
/// refuse it.
pub(crate) fn probe_via(pool: &FsPool, read_rel: &str, stat_rel: &str) -> Probe {
    let start = Instant::now();
    let read = pool
        .read(read_rel, 0, READ_SIZE as u32, true)
        .map(|_| start.elapsed())
        .map_err(|e| Failure::of_helper(&e));
    let stat = match &read {
        Err(f) if f.no_answer => Err(f.clone()),
        _ => pool
            .statvfs(stat_rel)
            .map(FsStats::from)
            .map_err(|e| Failure::of_helper(&e)),
    };
    Probe { read, stat }
}

fn read_head(path: &Path) -> Result<(), Failure> {
    let fail = |e: depot_os::DirectError| Failure {
        errno: e.raw_os_error(),
        no_answer: false,
        message: e.to_string(),
    };
    let mut buf = AlignedBuf::new(READ_SIZE, READ_SIZE).map_err(fail)?;
    let file = depot_os::open_direct(path, false).map_err(fail)?;
    // A short read (a metadata file smaller than 4 KiB) is fine, as for dd.
    depot_os::read_at_direct(&file, 0, &mut buf).map_err(fail)?;
    Ok(())
}

/// Why a domain is not healthy: the code repoStats reports and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub code: Code,
    pub message: String,
}

impl Problem {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Problem {
            code,
            message: message.into(),
        }
    }
}

/// The code of a completed check (`Ok` when healthy).
///
/// In order:
/// - `ESTALE` from either call: 384 FileStorageDomainStaleNFSHandle (VDSM's
///   `selftest` and `getStats`). The caller unmounts.
/// - No answer (a helper deadline, every helper stuck), `ENOTCONN` or `EIO`
///   from either call: 2001 MiscFileReadException naming the mount and the
///   call: the storage is there but not answering, which must never read
///   as "does not exist" (issue 15).
/// - A missing path: 360 StorageDomainFSNotMounted when the domain has a
///   mount point that is not in the mount table; else 358
///   StorageDomainDoesNotExist when the domain directory is gone; else (the
///   directory is there, the metadata file is not) 2001, as VDSM's dd check
///   reports any failed read.
/// - `EACCES`/`EPERM`: 385 StorageDomainInsufficientPermissions.
/// - Any other read failure: 2001 MiscFileReadException (VDSM's code for
///   every failed path check).
/// - Any other statvfs failure: 200 StorageException (what VDSM reports for
///   the raw OSError out of `selftest`).
///
/// `is_mounted` answers from the mount table, `None` when it cannot tell;
/// it is asked only for a missing path.
pub(crate) fn classify(
    probe: &Probe,
    target: &CheckTarget,
    is_mounted: impl FnOnce(&Path) -> Option<bool>,
) -> Result<(), Problem> {
    let read = probe.read.as_ref().err();
    let stat = probe.stat.as_ref().err();
    let failures = || read.into_iter().chain(stat);

    if let Some(f) = failures().find(|f| f.is_stale()) {
        return Err(Problem::new(
            Code::FileStorageDomainStaleNFSHandle,
            &f.message,
        ));
    }
    if let Some(f) = failures().find(|f| f.is_unreachable()) {
        let what = if f.no_answer {
            "Read timeout"
        } else {
            "Read failed"
        };
        return Err(Problem::new(
            Code::MiscFileReadException,
            format!("{what}: {}", f.message),
        ));
    }
    if let Some(f) = failures().find(|f| f.is_missing()) {
        if let Some(mp) = &target.mount_point {
            if is_mounted(mp) == Some(false) {
                return Err(Problem::new(
                    Code::StorageDomainFSNotMounted,
                    format!("{} is not mounted ({})", mp.display(), f.message),
                ));
            }
        }
        if let Some(s) = stat.filter(|s| s.is_missing()) {
            return Err(Problem::new(Code::StorageDomainDoesNotExist, &s.message));
        }
        return Err(Problem::new(Code::MiscFileReadException, &f.message));
    }
    if let Some(f) = failures().find(|f| f.is_denied()) {
        return Err(Problem::new(
            Code::StorageDomainInsufficientPermissions,
            &f.message,
        ));
    }
    if let Some(f) = read {
        return Err(Problem::new(Code::MiscFileReadException, &f.message));
    }
    if let Some(f) = stat {
        return Err(Problem::new(Code::StorageException, &f.message));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Linux errno values (this crate does not depend on libc).
    const EPERM: i32 = 1;
    const ENOENT: i32 = 2;
    const EIO: i32 = 5;
    const EACCES: i32 = 13;
    const ENOTDIR: i32 = 20;
    const EOVERFLOW: i32 = 75;
    const ENOTCONN: i32 = 107;
    const ESTALE: i32 = 116;

    fn fail(errno: i32) -> Failure {
        Failure {
            errno: Some(errno),
            no_answer: false,
            message: format!("errno {errno}"),
        }
    }

    fn no_answer() -> Failure {
        Failure {
            errno: None,
            no_answer: true,
            message: "read dom_md/metadata on /m: no answer within 10s".into(),
        }
    }

    fn stats() -> FsStats {
        FsStats {
            block_size: 4096,
            total_bytes: 1 << 30,
            free_bytes: 1 << 29,
            free_bytes_root: 1 << 29,
            total_inodes: 10,
            free_inodes: 5,
            read_only: false,
        }
    }

    fn target(mount: bool) -> CheckTarget {
        CheckTarget::file_domain("/m/sd", mount.then(|| PathBuf::from("/m")))
    }

    fn code(
        read: Result<Duration, Failure>,
        stat: Result<FsStats, Failure>,
        mount: bool,
        mounted: Option<bool>,
    ) -> Option<Code> {
        classify(&Probe { read, stat }, &target(mount), |_| mounted)
            .err()
            .map(|p| p.code)
    }

    #[test]
    fn healthy() {
        assert_eq!(
            code(Ok(Duration::from_millis(1)), Ok(stats()), true, Some(true)),
            None
        );
    }

    #[test]
    fn stale_wins_over_everything() {
        let ok = Ok(Duration::ZERO);
        assert_eq!(
            code(ok.clone(), Err(fail(ESTALE)), true, Some(true)),
            Some(Code::FileStorageDomainStaleNFSHandle)
        );
        assert_eq!(
            code(Err(fail(ENOENT)), Err(fail(ESTALE)), true, Some(false)),
            Some(Code::FileStorageDomainStaleNFSHandle)
        );
        assert_eq!(
            code(Err(fail(ESTALE)), Ok(stats()), false, None),
            Some(Code::FileStorageDomainStaleNFSHandle)
        );
    }

    #[test]
    fn missing_paths() {
        // Mount gone.
        assert_eq!(
            code(Err(fail(ENOENT)), Err(fail(ENOENT)), true, Some(false)),
            Some(Code::StorageDomainFSNotMounted)
        );
        // Mounted (or cannot tell, or no mount point), domain dir gone.
        for (mount, mounted) in [(true, Some(true)), (true, None), (false, None)] {
            assert_eq!(
                code(Err(fail(ENOENT)), Err(fail(ENOENT)), mount, mounted),
                Some(Code::StorageDomainDoesNotExist)
            );
        }
        // Domain dir there, metadata gone: dd would fail.
        assert_eq!(
            code(Err(fail(ENOENT)), Ok(stats()), true, Some(true)),
            Some(Code::MiscFileReadException)
        );
        assert_eq!(
            code(Err(fail(ENOTDIR)), Ok(stats()), false, None),
            Some(Code::MiscFileReadException)
        );
    }

    #[test]
    fn permissions_and_other_errors() {
        for errno in [EACCES, EPERM] {
            assert_eq!(
                code(Err(fail(errno)), Ok(stats()), false, None),
                Some(Code::StorageDomainInsufficientPermissions)
            );
        }
        assert_eq!(
            code(Err(fail(EIO)), Ok(stats()), false, None),
            Some(Code::MiscFileReadException)
        );
        assert_eq!(
            code(Ok(Duration::ZERO), Err(fail(EOVERFLOW)), false, None),
            Some(Code::StorageException)
        );
        let no_errno = Failure {
            errno: None,
            no_answer: false,
            message: "x".into(),
        };
        assert_eq!(
            code(Err(no_errno), Ok(stats()), false, None),
            Some(Code::MiscFileReadException)
        );
    }

    /// Storage that does not answer or fails underneath is a read failure
    /// naming the call, whichever call it was, even with the mount gone
    /// from the table meanwhile: never 358 or 360 (issue 15).
    #[test]
    fn unreachable_storage_is_a_read_failure() {
        for (read, stat) in [
            (Err(no_answer()), Err(no_answer())),
            (Ok(Duration::ZERO), Err(no_answer())),
            (Err(fail(ENOTCONN)), Err(fail(ENOTCONN))),
            (Ok(Duration::ZERO), Err(fail(ENOTCONN))),
            (Ok(Duration::ZERO), Err(fail(EIO))),
            (Err(fail(EIO)), Err(fail(ENOENT))),
        ] {
            let p = Probe { read, stat };
            let problem = classify(&p, &target(true), |_| Some(false)).unwrap_err();
            assert_eq!(problem.code, Code::MiscFileReadException, "{p:?}");
        }
        let p = Probe {
            read: Err(no_answer()),
            stat: Err(no_answer()),
        };
        let m = classify(&p, &target(true), |_| None).unwrap_err().message;
        assert!(m.starts_with("Read timeout: "), "{m}");
        assert!(m.contains("/m") && m.contains("read"), "{m}");
    }

    #[test]
    fn probe_reads_a_small_file_and_reports_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dom_md")).unwrap();
        std::fs::write(dir.path().join("dom_md/metadata"), b"VERSION=5\n").unwrap();
        let t = CheckTarget::file_domain(dir.path(), None);
        let p = probe(&t);
        assert!(p.read.is_ok(), "{:?}", p.read);
        assert!(p.stat.as_ref().unwrap().total_bytes > 0);

        std::fs::remove_file(&t.read_path).unwrap();
        let p = probe(&t);
        let f = p.read.as_ref().unwrap_err();
        assert_eq!(f.errno, Some(ENOENT));
        assert!(f.message.contains("metadata"), "{}", f.message);
        assert_eq!(
            classify(&p, &t, |_| None).unwrap_err().code,
            Code::MiscFileReadException
        );
    }
}
