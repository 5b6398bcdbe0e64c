//! [`MountFs`]: every file-system call on a file domain's mount, made in
//! that mount's helper processes (depot_os::fsproc), so that no thread of
//! depotd ever enters a storage file system (issue 15): a dead NFS or
//! GlusterFS server costs a call its deadline and a killed helper, never a
//! depotd thread stuck in the kernel that holds up shutdown.
//!
//! The calls take absolute paths beneath the mount (what [`DomainPaths`]
//! builds) and answer `std::io::Result`, so code written against `std::fs`
//! reads the same. What an error means:
//!
//! - the call was answered: the OS error itself (`kind()` and
//!   `raw_os_error()` as `std::fs` gives them), so `NotFound` means the
//!   file is not there;
//! - the mount is in trouble (no answer within the deadline, every helper
//!   stuck, a helper that died, or ENOTCONN, EIO, ESTALE, ETIMEDOUT,
//!   EHOSTDOWN from the file system): an error whose payload is a
//!   [`MountTrouble`] naming the mount, the operation and whether it was a
//!   write, with kind `TimedOut` for no answer (never `NotFound`).
//!   [`StorageError::io`](crate::StorageError::io) turns it into VDSM's
//!   code for the case (2001 read, 2002 write, 384 stale handle) whatever
//!   code the caller asked for.
//!
//! An abandoned helper may still finish its call later, when the server
//! answers (VDSM's ioprocess has the same property): a write that timed out
//! is in an unknown state, as after a crash, and crash recovery handles it.
//!
//! [`DomainPaths`]: crate::layout::DomainPaths

use std::fmt;
use std::io;
use std::path::{Component, Path};
use std::time::Duration;

use depot_api::Code;
use depot_os::fsproc::protocol::MAX_LIST_ENTRIES;
use depot_os::fsproc::{
    DirEntry, DirectProbe, FsPool, FsProcError, OpenWrite, Reply, Request, StatInfo, VfsInfo,
    WriteStream,
};

/// The helpers of one mount, seen through absolute paths. Cheap to clone.
#[derive(Clone)]
pub struct MountFs {
    pool: FsPool,
}

impl fmt::Debug for MountFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MountFs").field(&self.root()).finish()
    }
}

/// Two handles are equal when they are on the same mount.
impl PartialEq for MountFs {
    fn eq(&self, other: &Self) -> bool {
        self.root() == other.root()
    }
}

impl Eq for MountFs {}

/// Why a call on a mount got no answer, or an answer that says the
/// storage underneath is failing: the payload of the `io::Error`s of
/// [`MountFs`] in that case.
#[derive(Debug, thiserror::Error)]
#[error("{source} (is the storage server answering?)")]
pub struct MountTrouble {
    /// Whether the call would have changed something (2002, not 2001).
    pub write: bool,
    #[source]
    pub source: FsProcError,
}

impl MountTrouble {
    /// VDSM's code for the case.
    pub fn code(&self) -> Code {
        if self.source.errno() == Some(libc::ESTALE) {
            Code::FileStorageDomainStaleNFSHandle
        } else if self.write {
            Code::MiscFileWriteException
        } else {
            Code::MiscFileReadException
        }
    }

    /// The mount in trouble, from an io::Error of a [`MountFs`] call.
    pub fn of(e: &io::Error) -> Option<&MountTrouble> {
        e.get_ref()?.downcast_ref::<MountTrouble>()
    }
}

/// OS errors that say the storage is failing underneath rather than that
/// the call was wrong.
const TROUBLE_ERRNOS: [i32; 5] = [
    libc::ENOTCONN,
    libc::EIO,
    libc::ESTALE,
    libc::ETIMEDOUT,
    libc::EHOSTDOWN,
];

fn io_error(e: FsProcError, write: bool) -> io::Error {
    let kind = match &e {
        FsProcError::Io { source, .. } => {
            let trouble = source
                .raw_os_error()
                .is_some_and(|n| TROUBLE_ERRNOS.contains(&n));
            if !trouble {
                let FsProcError::Io { source, .. } = e else {
                    unreachable!()
                };
                return source;
            }
            source.kind()
        }
        FsProcError::Timeout { .. } | FsProcError::Hung { .. } => io::ErrorKind::TimedOut,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, MountTrouble { write, source: e })
}

const READ: bool = false;
const WRITE: bool = true;

impl MountFs {
    pub fn new(pool: FsPool) -> MountFs {
        MountFs { pool }
    }

    /// Calls on this thread, without helpers (unit tests; a storage layer
    /// configured without a helper command).
    pub fn in_process(root: &Path, timeout: Duration) -> MountFs {
        MountFs::new(FsPool::in_process(root.to_owned(), timeout))
    }

    /// The mount: every path given must be beneath it.
    pub fn root(&self) -> &Path {
        self.pool.root()
    }

    pub fn pool(&self) -> &FsPool {
        &self.pool
    }

    /// The same helpers with another deadline per call (a scan's short one).
    pub fn with_timeout(&self, timeout: Duration) -> MountFs {
        MountFs::new(self.pool.with_timeout(timeout))
    }

    /// `path` relative to the mount, as the helpers take it.
    fn rel(&self, path: &Path) -> io::Result<String> {
        let rest = path.strip_prefix(self.root()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not beneath the mount {}",
                    path.display(),
                    self.root().display()
                ),
            )
        })?;
        let mut parts = Vec::new();
        for c in rest.components() {
            match c {
                Component::Normal(n) => parts.push(n.to_str().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{} is not UTF-8", path.display()),
                    )
                })?),
                Component::CurDir => {}
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{} is not a plain path", path.display()),
                    ))
                }
            }
        }
        Ok(parts.join("/"))
    }

    fn run<T>(
        &self,
        path: &Path,
        write: bool,
        f: impl FnOnce(&FsPool, &str) -> Result<T, FsProcError>,
    ) -> io::Result<T> {
        let rel = self.rel(path)?;
        f(&self.pool, &rel).map_err(|e| io_error(e, write))
    }

    fn run2<T>(
        &self,
        from: &Path,
        to: &Path,
        f: impl FnOnce(&FsPool, &str, &str) -> Result<T, FsProcError>,
    ) -> io::Result<T> {
        let (a, b) = (self.rel(from)?, self.rel(to)?);
        f(&self.pool, &a, &b).map_err(|e| io_error(e, WRITE))
    }

    // Reads.

    /// Metadata; a symlink is refused, never followed.
    pub fn stat(&self, path: &Path) -> io::Result<StatInfo> {
        self.run(path, READ, |p, r| p.stat(r))
    }

    /// Metadata of the entry itself, a symlink included.
    pub fn lstat(&self, path: &Path) -> io::Result<StatInfo> {
        self.run(path, READ, |p, r| p.lstat(r))
    }

    /// Metadata, or `None` if nothing is there.
    pub fn try_stat(&self, path: &Path) -> io::Result<Option<StatInfo>> {
        match self.lstat(path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn exists(&self, path: &Path) -> io::Result<bool> {
        self.run(path, READ, |p, r| p.exists(r))
    }

    /// Whether a regular file is there (not following a symlink).
    pub fn is_file(&self, path: &Path) -> io::Result<bool> {
        Ok(self
            .try_stat(path)?
            .is_some_and(|s| s.kind == depot_os::fsproc::FileKind::File))
    }

    /// Whether a directory is there (not following a symlink).
    pub fn is_dir(&self, path: &Path) -> io::Result<bool> {
        Ok(self
            .try_stat(path)?
            .is_some_and(|s| s.kind == depot_os::fsproc::FileKind::Dir))
    }

    pub fn statvfs(&self, path: &Path) -> io::Result<VfsInfo> {
        self.run(path, READ, |p, r| p.statvfs(r))
    }

    /// A directory's entries. More than the protocol's cap
    /// (`MAX_LIST_ENTRIES`) is an error, never a silent cut.
    pub fn listdir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let (entries, truncated) = self.run(path, READ, |p, r| p.listdir(r))?;
        whole_listing(path, entries, truncated)
    }

    /// The UTF-8 names in a directory (depot's names all are; another
    /// name is nothing depot made).
    pub fn names(&self, path: &Path) -> io::Result<Vec<String>> {
        Ok(utf8_names(self.listdir(path)?))
    }

    /// Several reads in one round trip to a helper (at most
    /// `depot_os::fsproc::protocol::MAX_BATCH_ITEMS`, with one deadline):
    /// each answer is what the call of the same name answers alone, with
    /// the same errors. The outer error is the round trip's: a mount in
    /// trouble, as any call's.
    pub fn look(&self, items: &[Look<'_>]) -> io::Result<Vec<io::Result<Seen>>> {
        let requests = items
            .iter()
            .map(|item| self.request_of(item))
            .collect::<io::Result<Vec<_>>>()?;
        let answers = self.pool.batch(&requests).map_err(|e| io_error(e, READ))?;
        Ok(items
            .iter()
            .zip(answers)
            .map(|(item, answer)| {
                let (reply, data) = answer.map_err(|e| io_error(e, READ))?;
                seen_of(item, reply, data)
            })
            .collect())
    }

    fn request_of(&self, item: &Look<'_>) -> io::Result<Request> {
        Ok(match *item {
            Look::Names(p) => Request::Listdir {
                path: self.rel(p)?,
                max_entries: MAX_LIST_ENTRIES,
            },
            Look::ReadToEnd(p, max) => Request::Read {
                path: self.rel(p)?,
                offset: 0,
                len: max.saturating_add(1),
                direct: false,
            },
            Look::Lstat(p) => Request::Lstat { path: self.rel(p)? },
            Look::ReadDirect(p, offset, len) => Request::Read {
                path: self.rel(p)?,
                offset,
                len,
                direct: true,
            },
        })
    }

    /// Up to `len` bytes at `offset` (fewer at the end of the file).
    pub fn read_at(&self, path: &Path, offset: u64, len: u32, direct: bool) -> io::Result<Vec<u8>> {
        self.run(path, READ, |p, r| p.read(r, offset, len, direct))
    }

    /// The whole file, refused if it is over `max` bytes (read as
    /// `max + 1` bytes at most).
    pub fn read_to_end(&self, path: &Path, max: u32) -> io::Result<Vec<u8>> {
        let data = self.read_at(path, 0, max.saturating_add(1), false)?;
        at_most(path, data, max)
    }

    /// Whether `O_DIRECT` works there, and the logical block size.
    pub fn direct_probe(&self, path: &Path) -> io::Result<DirectProbe> {
        self.run(path, READ, |p, r| p.direct_probe(r))
    }

    // Writes.

    /// Temporary file, fsync, rename over `path`, fsync of the directory.
    pub fn write_atomic(&self, path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
        self.run(path, WRITE, |p, r| p.write_atomic(r, data, mode))
    }

    /// A new file with `data`, fsynced; `AlreadyExists` if one is there.
    pub fn create_new(&self, path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
        let open = OpenWrite {
            create: true,
            exclusive: true,
            mode,
            ..OpenWrite::default()
        };
        self.write_at(path, 0, data, open, true).map(drop)
    }

    /// `data` at `offset`, opened as `open` says, fsynced if asked.
    pub fn write_at(
        &self,
        path: &Path,
        offset: u64,
        data: &[u8],
        open: OpenWrite,
        fsync: bool,
    ) -> io::Result<u64> {
        self.run(path, WRITE, |p, r| p.write(r, offset, data, open, fsync))
    }

    /// A streamed write on a helper of its own, each step with
    /// `step_timeout` (long writes that keep making progress).
    pub fn open_write(
        &self,
        path: &Path,
        open: OpenWrite,
        step_timeout: Duration,
    ) -> io::Result<MountWrite> {
        let stream = self.run(path, WRITE, |p, r| p.open_write(r, open, step_timeout))?;
        Ok(MountWrite { stream })
    }

    /// [`open_write`](Self::open_write) if one of the mount's helpers is
    /// free now, else `None` at once (a second stream that only speeds an
    /// upload up must not take the helper another call needs).
    pub fn try_open_write(
        &self,
        path: &Path,
        open: OpenWrite,
        step_timeout: Duration,
    ) -> io::Result<Option<MountWrite>> {
        let stream = self.run(path, WRITE, |p, r| p.try_open_write(r, open, step_timeout))?;
        Ok(stream.map(|stream| MountWrite { stream }))
    }

    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.run2(from, to, |p, a, b| p.rename(a, b))
    }

    pub fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.run2(from, to, |p, a, b| p.link(a, b))
    }

    pub fn unlink(&self, path: &Path) -> io::Result<()> {
        self.run(path, WRITE, |p, r| p.unlink(r))
    }

    /// Removes a file and fsyncs its directory, in one helper call.
    pub fn unlink_synced(&self, path: &Path) -> io::Result<()> {
        self.run(path, WRITE, |p, r| p.unlink_synced(r))
    }

    pub fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.run(path, WRITE, |p, r| p.mkdir(r, mode))
    }

    /// Makes a directory and fsyncs the one it is in, in one helper call.
    pub fn mkdir_synced(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.run(path, WRITE, |p, r| p.mkdir_synced(r, mode))
    }

    pub fn rmdir(&self, path: &Path) -> io::Result<()> {
        self.run(path, WRITE, |p, r| p.rmdir(r))
    }

    /// A file, or a directory and everything beneath it (links removed,
    /// not followed; never the mount itself).
    pub fn rmtree(&self, path: &Path) -> io::Result<()> {
        self.run(path, WRITE, |p, r| p.rmtree(r))
    }

    pub fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.run(path, WRITE, |p, r| p.chmod(r, mode))
    }

    pub fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.run(path, WRITE, |p, r| p.chown(r, uid, gid))
    }

    pub fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.run(path, WRITE, |p, r| p.truncate(r, len))
    }

    pub fn fallocate(&self, path: &Path, offset: u64, len: u64) -> io::Result<()> {
        self.run(path, WRITE, |p, r| p.fallocate(r, offset, len))
    }

    /// Zeroes (or, with `punch`, deallocates) a range.
    pub fn zero_range(&self, path: &Path, offset: u64, len: u64, punch: bool) -> io::Result<()> {
        self.run(path, WRITE, |p, r| p.zero_range(r, offset, len, punch))
    }

    /// Zeros written over `len` bytes at `offset` by the helper itself
    /// (`O_DIRECT`, nothing on the pipe); with `only_nonzero`, 1 MiB units
    /// that read as zeros are skipped. Aligned, at most
    /// `depot_os::fsproc::protocol::MAX_WIPE_BYTES` per call. The bytes
    /// written.
    pub fn wipe(&self, path: &Path, offset: u64, len: u64, only_nonzero: bool) -> io::Result<u64> {
        self.run(path, WRITE, |p, r| p.wipe(r, offset, len, only_nonzero))
    }

    pub fn fsync(&self, path: &Path) -> io::Result<()> {
        self.run(path, WRITE, |p, r| p.fsync(r))
    }

    pub fn fsync_dir(&self, path: &Path) -> io::Result<()> {
        self.run(path, WRITE, |p, r| p.fsync_dir(r))
    }
}

/// One read of [`MountFs::look`], named after the call it stands for.
#[derive(Debug, Clone, Copy)]
pub enum Look<'a> {
    /// [`MountFs::names`].
    Names(&'a Path),
    /// [`MountFs::read_to_end`] with its `max`.
    ReadToEnd(&'a Path, u32),
    /// [`MountFs::lstat`].
    Lstat(&'a Path),
    /// [`MountFs::read_at`] with `O_DIRECT`: up to `len` bytes at
    /// `offset` (a sanlock leader record, read past the page cache as
    /// sanlock reads it).
    ReadDirect(&'a Path, u64, u32),
}

/// The answer to one [`Look`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Names(Vec<String>),
    Data(Vec<u8>),
    Stat(StatInfo),
}

fn seen_of(item: &Look<'_>, reply: Reply, data: Vec<u8>) -> io::Result<Seen> {
    match (*item, reply) {
        (Look::Names(p), Reply::Listing { entries, truncated }) => Ok(Seen::Names(utf8_names(
            whole_listing(p, entries, truncated)?,
        ))),
        (Look::ReadToEnd(p, max), Reply::Data) => at_most(p, data, max).map(Seen::Data),
        (Look::ReadDirect(..), Reply::Data) => Ok(Seen::Data(data)),
        (Look::Lstat(_), Reply::Stat { stat }) => Ok(Seen::Stat(stat)),
        (item, reply) => Err(io::Error::other(format!(
            "the helper answered {reply:?} to {item:?}"
        ))),
    }
}

/// A listing that carried every entry, or an error (never a silent cut).
fn whole_listing(
    path: &Path,
    entries: Vec<DirEntry>,
    truncated: bool,
) -> io::Result<Vec<DirEntry>> {
    if truncated {
        return Err(io::Error::other(format!(
            "{} has more entries than one listing carries",
            path.display()
        )));
    }
    Ok(entries)
}

fn utf8_names(entries: Vec<DirEntry>) -> Vec<String> {
    entries
        .into_iter()
        .filter(|e| e.utf8)
        .map(|e| e.name)
        .collect()
}

/// `data` read as `max + 1` bytes at most, refused if it is over `max`.
fn at_most(path: &Path, data: Vec<u8>, max: u32) -> io::Result<Vec<u8>> {
    if data.len() > max as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is over {max} bytes", path.display()),
        ));
    }
    Ok(data)
}

/// A streamed write ([`MountFs::open_write`]) with [`MountFs`]'s errors.
pub struct MountWrite {
    stream: WriteStream,
}

impl MountWrite {
    /// Writes `data` at `offset` (aligned if the stream is direct).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<u64> {
        self.stream
            .write(offset, data)
            .map_err(|e| io_error(e, WRITE))
    }

    /// fsync (if asked) and close, with the errors of both.
    pub fn close(self, fsync: bool) -> io::Result<()> {
        self.stream.close(fsync).map_err(|e| io_error(e, WRITE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_errors_are_the_os_errors() {
        let t = tempfile::tempdir().unwrap();
        let fs = MountFs::in_process(t.path(), Duration::from_secs(5));
        let e = fs.stat(&t.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert!(MountTrouble::of(&e).is_none());
        assert_eq!(fs.try_stat(&t.path().join("missing")).unwrap(), None);
    }

    #[test]
    fn paths_outside_the_mount_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let fs = MountFs::in_process(t.path(), Duration::from_secs(5));
        for bad in [Path::new("/etc/passwd"), &t.path().join("a/../../x")] {
            let e = fs.stat(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}: {e}");
        }
    }

    #[test]
    fn trouble_is_a_timeout_with_the_mount_and_vdsm_s_code() {
        let mount = std::path::PathBuf::from("/rhev/data-center/mnt/server:_export");
        let timeout = FsProcError::Timeout {
            mount: mount.clone(),
            op: "stat",
            path: "sd/dom_md/metadata".into(),
            after: Duration::from_secs(3),
        };
        let e = io_error(timeout, READ);
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let t = MountTrouble::of(&e).expect("trouble");
        assert_eq!(t.code(), Code::MiscFileReadException);
        assert!(e.to_string().contains(&mount.display().to_string()), "{e}");

        let eio = FsProcError::Io {
            mount: mount.clone(),
            op: "write",
            path: "x".into(),
            source: io::Error::from_raw_os_error(libc::EIO),
        };
        assert_eq!(
            MountTrouble::of(&io_error(eio, WRITE)).unwrap().code(),
            Code::MiscFileWriteException
        );
        let stale = FsProcError::Io {
            mount,
            op: "stat",
            path: "x".into(),
            source: io::Error::from_raw_os_error(libc::ESTALE),
        };
        assert_eq!(
            MountTrouble::of(&io_error(stale, READ)).unwrap().code(),
            Code::FileStorageDomainStaleNFSHandle
        );
    }
}
