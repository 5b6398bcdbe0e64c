//! Small filesystem operations that storage code needs to get exactly right:
//! atomic replace of a file, directory fsync, free space, and allocation
//! control (`fallocate`, hole punching, zeroing).
//!
//! Every error names the operation and the path. Functions that take an
//! open [`File`] find its path through `/proc/self/fd` for the message;
//! that is a lookup in the process's fd table and never touches the (maybe
//! hung) filesystem.

use std::collections::hash_map::RandomState;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions, Permissions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::direct::AlignedBuf;
use crate::fd_path::fd_path;

/// A failed filesystem operation.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The OS call behind `op` failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The arguments cannot work (no file name, offset out of range, ...).
    #[error("{op} {path}: invalid argument: {reason}")]
    InvalidArgument {
        op: &'static str,
        path: PathBuf,
        reason: &'static str,
    },
}

impl FsError {
    /// The underlying OS error, if there is one.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            FsError::Io { source, .. } => Some(source),
            FsError::InvalidArgument { .. } => None,
        }
    }

    /// Whether the OS said `ESTALE`: see [`is_stale_handle`].
    pub fn is_stale_handle(&self) -> bool {
        self.io_error().is_some_and(is_stale_handle)
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Whether `err` is `ESTALE`: the file handle refers to a file the NFS
/// server no longer knows (deleted or the export was recreated). Reopening
/// by path is the only fix; retrying the same fd never succeeds.
pub fn is_stale_handle(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ESTALE)
}

/// Replaces `path` with `bytes` so that a reader (or a crash) sees either
/// the old content or the new, never a mix.
///
/// Writes a temporary `.<name>.tmp-<random>` in the same directory (a
/// rename is atomic only within one filesystem), fsyncs it, renames it over
/// `path`, and fsyncs the directory so the rename itself is durable. `mode`
/// is set exactly (the umask does not apply). On failure before the rename
/// the old file is untouched and the temporary is removed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    replace(path, bytes, mode, &WRITE_ATOMIC)
}

/// Replaces `path` with `bytes` as [`write_atomic`] does (a temporary file
/// renamed over it: a reader sees the old content or the new, never a
/// mix), but without its fsyncs: the new content survives a crash of this
/// process at once (it is in the kernel's page cache) and a crash of the
/// host only once the file system has committed it (ext4: within its
/// 5 s commit interval; an older or empty file may be left otherwise).
/// For records whose loss in a host crash is acceptable and whose fsync
/// would sit on a hot path (an SPM verb's born-finished task).
pub fn replace_unsynced(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    replace(path, bytes, mode, &REPLACE_UNSYNCED)
}

/// One way of [`replace`]: whether it is durable when it returns (the
/// file fsynced before the rename, the directory after), and the names
/// its errors give its steps.
struct Replace {
    durable: bool,
    op: &'static str,
    create: &'static str,
    write: &'static str,
    chmod: &'static str,
    fsync: &'static str,
    rename: &'static str,
}

const WRITE_ATOMIC: Replace = Replace {
    durable: true,
    op: "write_atomic",
    create: "write_atomic: create",
    write: "write_atomic: write",
    chmod: "write_atomic: chmod",
    fsync: "write_atomic: fsync",
    rename: "write_atomic: rename over",
};

const REPLACE_UNSYNCED: Replace = Replace {
    durable: false,
    op: "replace_unsynced",
    create: "replace_unsynced: create",
    write: "replace_unsynced: write",
    chmod: "replace_unsynced: chmod",
    fsync: "replace_unsynced: fsync",
    rename: "replace_unsynced: rename over",
};

fn replace(path: &Path, bytes: &[u8], mode: u32, how: &Replace) -> Result<(), FsError> {
    let name = path.file_name().ok_or(FsError::InvalidArgument {
        op: how.op,
        path: path.to_owned(),
        reason: "the path has no file name",
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (tmp_path, mut file) = create_temp(dir, name, mode, how)?;
    let written = (|| {
        file.write_all(bytes)
            .map_err(io_err(how.write, &tmp_path))?;
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(io_err(how.chmod, &tmp_path))?;
        if how.durable {
            file.sync_all().map_err(io_err(how.fsync, &tmp_path))?;
        }
        drop(file);
        fs::rename(&tmp_path, path).map_err(io_err(how.rename, path))
    })();
    if let Err(e) = written {
        if let Err(rm) = fs::remove_file(&tmp_path) {
            tracing::warn!(path = %tmp_path.display(), error = %rm, "cannot remove temporary file");
        }
        return Err(e);
    }
    if how.durable {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Creates a new temporary file next to the target. O_EXCL plus a random
/// name means two writers never share one.
fn create_temp(
    dir: &Path,
    name: &OsStr,
    mode: u32,
    how: &Replace,
) -> Result<(PathBuf, File), FsError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut last_err = None;
    for _ in 0..8 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{:016x}", h.finish()));
        let tmp_path = dir.join(tmp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp_path)
        {
            Ok(f) => return Ok((tmp_path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(io_err(how.create, &tmp_path)(e)),
        }
    }
    let source = last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
    Err(io_err(how.create, dir)(source))
}

/// fsyncs a directory, which makes creates, renames and unlinks in it
/// durable (fsync of a file does not cover its directory entry).
pub fn fsync_dir(path: &Path) -> Result<(), FsError> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
        .map_err(io_err("fsync_dir: open", path))?;
    dir.sync_all().map_err(io_err("fsync_dir: fsync", path))
}

/// Space and inode counts of a filesystem, from `statvfs(3)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// The unit of the block counts (`f_frsize`).
    pub block_size: u64,
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Space an unprivileged user can still use (`f_bavail * f_frsize`).
    /// This, not `f_bfree`, is what a volume can grow into: depot does not
    /// run its writers with the root reserve in mind.
    pub free_bytes: u64,
    /// Free space including the root reserve (`f_bfree * f_frsize`).
    pub free_bytes_root: u64,
    pub total_inodes: u64,
    /// Inodes an unprivileged user can still use (`f_favail`).
    pub free_inodes: u64,
    /// Mounted read-only (`ST_RDONLY`).
    pub read_only: bool,
}

/// The id of the group named `name` in the host's group database, or None
/// when there is no such group (or the database cannot be read).
pub fn group_id(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// Space and inode counts of the filesystem holding `path`.
///
/// Blocks on a hung NFS mount like any call on its path; run it through an
/// [`IoWorker`](crate::IoWorker) when that matters.
pub fn statvfs(path: &Path) -> Result<FsStats, FsError> {
    use nix::sys::statvfs::FsFlags;
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| io_err("statvfs", path)(io::Error::from(e)))?;
    let frsize = match st.fragment_size() {
        0 => st.block_size(),
        n => n,
    };
    let bytes = |blocks: u64| blocks.saturating_mul(frsize);
    Ok(FsStats {
        block_size: frsize,
        total_bytes: bytes(st.blocks()),
        free_bytes: bytes(st.blocks_available()),
        free_bytes_root: bytes(st.blocks_free()),
        total_inodes: st.files(),
        free_inodes: st.files_available(),
        read_only: st.flags().contains(FsFlags::ST_RDONLY),
    })
}

fn raw_fallocate(
    op: &'static str,
    file: &File,
    mode: libc::c_int,
    offset: u64,
    len: u64,
) -> Result<(), FsError> {
    let invalid = |reason| FsError::InvalidArgument {
        op,
        path: fd_path(file),
        reason,
    };
    let off = libc::off_t::try_from(offset).map_err(|_| invalid("offset too large"))?;
    let ln = libc::off_t::try_from(len).map_err(|_| invalid("length too large"))?;
    loop {
        // SAFETY: fallocate only reads its integer arguments; the fd is
        // owned by `file`, which outlives the call.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, ln) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(FsError::Io {
                op,
                path: fd_path(file),
                source: err,
            });
        }
    }
}

/// Allocates `len` bytes at `offset` (`fallocate` mode 0), growing the file
/// if the range ends past it. Reserving space up front turns a later
/// ENOSPC in the middle of a copy into an error before it starts.
pub fn fallocate(file: &File, offset: u64, len: u64) -> Result<(), FsError> {
    raw_fallocate("fallocate", file, 0, offset, len)
}

/// Deallocates the range (`PUNCH_HOLE | KEEP_SIZE`): it reads as zeros and
/// no longer uses space; the file size does not change.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> Result<(), FsError> {
    raw_fallocate(
        "punch_hole",
        file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

/// How [`zero_range`] zeroed the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroMethod {
    /// `FALLOC_FL_ZERO_RANGE`: zeroed and kept allocated, in one call.
    ZeroRange,
    /// A punched hole, then `fallocate` mode 0 to allocate it again.
    PunchHoleAndAllocate,
    /// A punched hole; the filesystem cannot allocate, so it stays a hole.
    PunchHole,
    /// Zeros written with `pwrite` (nothing faster was supported).
    WriteZeros,
}

/// Makes the range read as zeros, keeping it allocated where the filesystem
/// allows, and extending the file if the range ends past it.
///
/// Tries the fastest way first and falls back when the filesystem says
/// `EOPNOTSUPP`, the order ovirt-imageio uses: `ZERO_RANGE`; else punch a
/// hole and allocate it again; else write zeros. Writing zeros to an
/// `O_DIRECT` file needs an aligned `offset` and `len`.
pub fn zero_range(file: &File, offset: u64, len: u64) -> Result<ZeroMethod, FsError> {
    fn unsupported(e: &FsError) -> bool {
        matches!(
            e.io_error().and_then(io::Error::raw_os_error),
            Some(libc::EOPNOTSUPP | libc::ENOSYS)
        )
    }
    match raw_fallocate("zero_range", file, libc::FALLOC_FL_ZERO_RANGE, offset, len) {
        Err(e) if unsupported(&e) => {}
        other => return other.map(|()| ZeroMethod::ZeroRange),
    }
    match punch_hole(file, offset, len) {
        Ok(()) => {
            return match fallocate(file, offset, len) {
                Ok(()) => Ok(ZeroMethod::PunchHoleAndAllocate),
                Err(e) if unsupported(&e) => Ok(ZeroMethod::PunchHole),
                Err(e) => Err(e),
            }
        }
        Err(e) if unsupported(&e) => {}
        Err(e) => return Err(e),
    }
    write_zeros(file, offset, len)?;
    Ok(ZeroMethod::WriteZeros)
}

fn write_zeros(file: &File, offset: u64, len: u64) -> Result<(), FsError> {
    const CHUNK: usize = 1024 * 1024;
    let buf = AlignedBuf::new(CHUNK, 4096).map_err(|_| FsError::InvalidArgument {
        op: "zero_range: write zeros",
        path: fd_path(file),
        reason: "cannot allocate the zero buffer",
    })?;
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from(len - done).map_or(CHUNK, |r| r.min(CHUNK));
        file.write_all_at(&buf[..n], offset + done)
            .map_err(|e| FsError::Io {
                op: "zero_range: write zeros",
                path: fd_path(file),
                source: e,
            })?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_creates_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta");
        write_atomic(&p, b"first", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);

        let before = fs::metadata(&p).unwrap().ino();
        write_atomic(&p, b"second, longer", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second, longer");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o644);
        // A new inode: the old file was replaced, not rewritten in place.
        assert_ne!(fs::metadata(&p).unwrap().ino(), before);
        assert_eq!(names_in(dir.path()), vec!["meta"]);
    }

    #[test]
    fn replace_unsynced_creates_and_replaces_by_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("task.json");
        replace_unsynced(&p, b"first", 0o600).unwrap();
        let before = fs::metadata(&p).unwrap().ino();
        replace_unsynced(&p, b"second", 0o640).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        assert_ne!(
            fs::metadata(&p).unwrap().ino(),
            before,
            "replaced, not rewritten"
        );
        assert_eq!(names_in(dir.path()), vec!["task.json"]);
        let e = replace_unsynced(&dir.path().join("no/such/dir/x"), b"x", 0o600).unwrap_err();
        assert!(e.to_string().contains("replace_unsynced"), "{e}");
        assert_eq!(names_in(dir.path()), vec!["task.json"]);
    }

    #[test]
    fn write_atomic_failure_leaves_old_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: rename over it fails.
        let p = dir.path().join("target");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("old"), b"old").unwrap();
        let err = write_atomic(&p, b"new", 0o644).unwrap_err();
        assert!(
            err.to_string().starts_with("write_atomic: rename over"),
            "{err}"
        );
        assert!(err.to_string().contains("target"), "{err}");
        assert_eq!(fs::read(p.join("old")).unwrap(), b"old");
        assert_eq!(names_in(dir.path()), vec!["target"]);
    }

    #[test]
    fn write_atomic_needs_a_file_name() {
        let err = write_atomic(Path::new("/"), b"x", 0o644).unwrap_err();
        assert!(matches!(err, FsError::InvalidArgument { .. }), "{err}");
    }

    #[test]
    fn fsync_dir_works_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        fsync_dir(dir.path()).unwrap();
        let missing = dir.path().join("missing");
        let err = fsync_dir(&missing).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert_eq!(err.io_error().unwrap().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn statvfs_reports_sane_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let st = statvfs(dir.path()).unwrap();
        assert!(st.total_bytes > 0);
        assert!(st.free_bytes <= st.free_bytes_root);
        assert!(st.free_bytes_root <= st.total_bytes);
        assert!(st.block_size.is_power_of_two());
        assert!(!st.read_only);
        assert!(statvfs(&dir.path().join("missing")).is_err());
    }

    fn rw_file(dir: &Path, name: &str) -> (PathBuf, File) {
        let p = dir.join(name);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        (p, f)
    }

    fn read_all(p: &Path) -> Vec<u8> {
        let mut v = Vec::new();
        File::open(p).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn fallocate_allocates_and_grows() {
        let dir = tempfile::tempdir().unwrap();
        let (p, f) = rw_file(dir.path(), "f");
        fallocate(&f, 0, MIB).unwrap();
        let md = fs::metadata(&p).unwrap();
        assert_eq!(md.len(), MIB);
        assert!(md.blocks() * 512 >= MIB, "blocks {}", md.blocks());
    }

    #[test]
    fn punch_hole_frees_and_zeroes() {
        let dir = tempfile::tempdir().unwrap();
        let (p, f) = rw_file(dir.path(), "f");
        f.write_all_at(&vec![0xAB; 2 * MIB as usize], 0).unwrap();
        f.sync_all().unwrap();
        let before = fs::metadata(&p).unwrap().blocks();
        punch_hole(&f, 0, MIB).unwrap();
        let md = fs::metadata(&p).unwrap();
        assert_eq!(md.len(), 2 * MIB, "size kept");
        assert!(md.blocks() < before, "{} < {before}", md.blocks());
        let data = read_all(&p);
        assert!(data[..MIB as usize].iter().all(|&b| b == 0));
        assert!(data[MIB as usize..].iter().all(|&b| b == 0xAB));
    }

    fn check_zeroed(dir: &Path) -> ZeroMethod {
        let (p, f) = rw_file(dir, "z");
        f.write_all_at(&vec![0xCD; 3 * MIB as usize], 0).unwrap();
        let method = zero_range(&f, MIB, MIB).unwrap();
        let data = read_all(&p);
        assert_eq!(data.len() as u64, 3 * MIB);
        let (a, rest) = data.split_at(MIB as usize);
        let (b, c) = rest.split_at(MIB as usize);
        assert!(a.iter().all(|&x| x == 0xCD));
        assert!(b.iter().all(|&x| x == 0));
        assert!(c.iter().all(|&x| x == 0xCD));
        // Past the end: the file grows.
        zero_range(&f, 3 * MIB, MIB).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().len(), 4 * MIB);
        method
    }

    #[test]
    fn zero_range_on_ext4_uses_zero_range() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_zeroed(dir.path()), ZeroMethod::ZeroRange);
    }

    #[test]
    fn zero_range_falls_back_on_tmpfs() {
        // tmpfs has no ZERO_RANGE but can punch holes and allocate.
        let shm = depot_testkit::require_tmpfs_dev_shm();
        let dir = tempfile::tempdir_in(shm).unwrap();
        assert_eq!(check_zeroed(dir.path()), ZeroMethod::PunchHoleAndAllocate);
    }

    #[test]
    fn write_zeros_fallback_zeroes() {
        let dir = tempfile::tempdir().unwrap();
        let (p, f) = rw_file(dir.path(), "w");
        f.write_all_at(&[7u8; 5000], 0).unwrap();
        write_zeros(&f, 10, 4000).unwrap();
        let data = read_all(&p);
        assert!(data[..10].iter().all(|&b| b == 7));
        assert!(data[10..4010].iter().all(|&b| b == 0));
        assert!(data[4010..].iter().all(|&b| b == 7));
    }

    #[test]
    fn fallocate_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ro");
        fs::write(&p, b"x").unwrap();
        let f = File::open(&p).unwrap(); // read-only: EBADF
        let err = fallocate(&f, 0, 4096).unwrap_err();
        assert!(err.to_string().starts_with("fallocate "), "{err}");
        assert!(err.to_string().contains("ro"), "{err}");
    }

    #[test]
    fn stale_handle_is_recognised() {
        assert!(is_stale_handle(&io::Error::from_raw_os_error(libc::ESTALE)));
        assert!(!is_stale_handle(&io::Error::from_raw_os_error(
            libc::ENOENT
        )));
        let e = FsError::Io {
            op: "read",
            path: "/x".into(),
            source: io::Error::from_raw_os_error(libc::ESTALE),
        };
        assert!(e.is_stale_handle());
    }
}
