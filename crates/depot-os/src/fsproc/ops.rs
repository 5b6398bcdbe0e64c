//! The file-system calls a helper makes, each confined to its root.
//!
//! Every path is resolved with [`Beneath::parent`]: the directory holding
//! the last name is reached one component at a time without following a
//! symlink or leaving the root's file system, and the call is then made
//! with the `*at` form on that directory's descriptor, so the last name
//! cannot lead elsewhere either (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, and
//! a check that an opened file is the regular file that was looked at).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::protocol::{
    DirEntry, DirectProbe, FileKind, OpenWrite, StatInfo, VfsInfo, MAX_DATA_BYTES,
    MAX_LIST_ENTRIES, MAX_WIPE_BYTES, WIPE_ALIGN, WIPE_UNIT,
};
use super::shm::SharedMap;
use crate::confine::{refused, Beneath, Walked};
use crate::direct::{self, AlignedBuf, AlignmentSource};

/// The memory alignment of direct I/O buffers: enough for every block
/// size in use (512 and 4096).
const DIRECT_ALIGN: usize = 4096;

/// How deep [`Confined::rmtree`] goes (a domain's tree is 3 levels).
const MAX_TREE_DEPTH: usize = 32;

/// The most a wipe writes (and reads) with one call to the kernel.
const WIPE_WINDOW: u64 = 8 << 20;

/// The most streamed writes one helper keeps open.
const MAX_STREAMS: usize = 16;

/// A helper's root and its open streamed writes.
pub(crate) struct Confined {
    root: PathBuf,
    streams: HashMap<u64, Stream>,
    /// The process whose descriptors a `stream_share` names: the helper's
    /// parent (depotd), or this process for a pool in process.
    share_owner: u32,
    next_handle: u64,
    temp_counter: u64,
    /// A wipe's zeros and what it reads, [`WIPE_WINDOW`] each, made at the
    /// first wipe and kept: fresh pages per call cost a fault and the
    /// kernel's zeroing per 4 KiB, which made a wipe through the helper
    /// half as fast as the loop of before helpers.
    wipe_zeros: Option<AlignedBuf>,
    wipe_read: Option<AlignedBuf>,
    /// The directories walked by the calls of the batch being served
    /// ([`Confined::with_walks_kept`]); `None` between batches.
    walked: RefCell<Option<Walked>>,
}

/// A streamed write: its file, whether it was opened `O_DIRECT`, and the
/// buffer shared with the client, if it gave one.
struct Stream {
    file: File,
    direct: bool,
    shared: Option<SharedMap>,
}

/// An entry beneath the root: the directory holding it (`O_PATH`), its
/// name, and the root's device.
struct At {
    dir: File,
    name: PathBuf,
    dev: u64,
    shown: PathBuf,
}

impl At {
    fn fd(&self) -> std::os::fd::RawFd {
        self.dir.as_raw_fd()
    }
}

impl Confined {
    /// The root must be an absolute path (of a directory).
    pub(crate) fn new(root: &Path) -> io::Result<Confined> {
        if !root.is_absolute() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the helper's root {} is not absolute", root.display()),
            ));
        }
        // Nothing is looked at here: the hello must not touch the storage,
        // so that a helper starts (and is counted) even when it hangs.
        Ok(Confined {
            root: root.to_owned(),
            streams: HashMap::new(),
            share_owner: std::process::id(),
            next_handle: 1,
            temp_counter: 0,
            wipe_zeros: None,
            wipe_read: None,
            walked: RefCell::new(None),
        })
    }

    /// The process whose descriptors `stream_share` opens (the helper's
    /// parent; by default this process).
    pub(crate) fn share_from(&mut self, pid: u32) {
        self.share_owner = pid;
    }

    /// Runs `f` (the items of a batch) with each directory that a call's
    /// walk checked kept until `f` returns: paths that share directories
    /// (getInfo's listing of an image directory, a record in it, the
    /// stat of a file in it) walk them once. Nothing is kept past `f`: a
    /// helper holds no directory of the mount between requests (an
    /// unmount would find it busy).
    pub(crate) fn with_walks_kept<T>(&mut self, f: impl FnOnce(&mut Confined) -> T) -> T {
        struct Forget<'a>(&'a mut Confined);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                *self.0.walked.get_mut() = None;
            }
        }
        *self.walked.get_mut() = Some(Walked::new(&self.root));
        let kept = Forget(self);
        f(kept.0)
    }

    fn at(&self, rel: &str) -> io::Result<At> {
        let b = Beneath::new(&self.root, rel);
        let (dir, name, dev) = match self.walked.borrow_mut().as_mut() {
            Some(walked) => b.parent_walked(walked)?,
            None => b.parent()?,
        };
        Ok(At {
            dir,
            name: name.to_owned(),
            dev,
            shown: self.root.join(rel),
        })
    }

    /// A directory beneath the root (or the root, for `""`), opened
    /// read-only.
    fn open_dir(&self, rel: &str) -> io::Result<File> {
        if rel.is_empty() {
            return open_flags(None, &self.root, OFlag::O_RDONLY | OFlag::O_DIRECTORY);
        }
        let at = self.at(rel)?;
        let dir = open_flags(
            Some(&at.dir),
            &at.name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
        )?;
        check_same_dev(&at, &dir.metadata()?)?;
        // Checked as a walk's step: the batch's next paths beneath it
        // start from it (getInfo's record and data, after the listing).
        if let Some(walked) = self.walked.borrow_mut().as_mut() {
            walked.keep_checked(Path::new(rel), &dir, at.dev)?;
        }
        Ok(dir)
    }

    pub(crate) fn stat(&self, rel: &str, follow_ok: bool) -> io::Result<StatInfo> {
        if rel.is_empty() {
            return Ok(stat_info(&nix::sys::stat::stat(&self.root)?));
        }
        let at = self.at(rel)?;
        let st = nix::sys::stat::fstatat(Some(at.fd()), &at.name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let info = stat_info(&st);
        if !follow_ok && info.kind == FileKind::Symlink {
            return Err(refused(
                &at.shown,
                format!(
                    "{} is a symbolic link; it is not followed",
                    at.shown.display()
                ),
            ));
        }
        Ok(info)
    }

    pub(crate) fn exists(&self, rel: &str) -> io::Result<bool> {
        match self.stat(rel, true) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn statvfs(&self, rel: &str) -> io::Result<VfsInfo> {
        let dir_or_file = if rel.is_empty() {
            open_flags(None, &self.root, OFlag::O_PATH | OFlag::O_DIRECTORY)?
        } else {
            let at = self.at(rel)?;
            open_flags(Some(&at.dir), &at.name, OFlag::O_PATH | OFlag::O_NOFOLLOW)?
        };
        let st = crate::fsutil::statvfs(&proc_fd(&dir_or_file))
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(VfsInfo {
            block_size: st.block_size,
            total_bytes: st.total_bytes,
            free_bytes: st.free_bytes,
            total_inodes: st.total_inodes,
            free_inodes: st.free_inodes,
            read_only: st.read_only,
        })
    }

    pub(crate) fn listdir(&self, rel: &str, max_entries: u32) -> io::Result<(Vec<DirEntry>, bool)> {
        use std::os::unix::ffi::OsStrExt;
        let cap = max_entries.min(MAX_LIST_ENTRIES) as usize;
        // Read through the opened descriptor itself: no second open of
        // the directory through /proc/self/fd (a procfs walk per listing).
        let mut dir = nix::dir::Dir::from(self.open_dir(rel)?)?;
        let fd = dir.as_raw_fd();
        let mut entries = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            if entries.len() == cap {
                return Ok((entries, true));
            }
            let kind = match entry.file_type() {
                Some(t) => kind_of_dir_type(t),
                // The file system does not say: the entry itself, not
                // followed.
                None => nix::sys::stat::fstatat(Some(fd), name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_or(FileKind::Unknown, |st| kind_of_mode(st.st_mode)),
            };
            let text = name.to_str();
            entries.push(DirEntry {
                name: text.map_or_else(|| name.to_string_lossy().into_owned(), str::to_owned),
                utf8: text.is_some(),
                kind,
            });
        }
        Ok((entries, false))
    }

    /// A regular file beneath the root, opened with `flags` (plus
    /// `O_NOFOLLOW`), checked to be the regular file on the root's file
    /// system that is there now.
    fn open_file(&self, rel: &str, flags: OFlag, mode: u32) -> io::Result<File> {
        let at = self.at(rel)?;
        match nix::sys::stat::fstatat(Some(at.fd()), &at.name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => check_regular(&at, &stat_info(&st))?,
            // Created by the open below, if asked.
            Err(nix::errno::Errno::ENOENT) if flags.contains(OFlag::O_CREAT) => {}
            Err(e) => return Err(e.into()),
        }
        let raw = nix::fcntl::openat(
            Some(at.fd()),
            &at.name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )?;
        // SAFETY: openat just returned this descriptor; nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        let md = file.metadata()?;
        if !md.is_file() {
            return Err(refused(
                &at.shown,
                format!("{} is not a regular file", at.shown.display()),
            ));
        }
        check_same_dev(&at, &md)?;
        // A file this call made (O_EXCL: nobody else's) has exactly the
        // mode asked for, whatever the umask cut off (the helper's, or
        // depotd's for a pool in process): no chmod call after it.
        let made = OFlag::O_CREAT | OFlag::O_EXCL;
        if flags.contains(made) && md.permissions().mode() & 0o7777 != mode & 0o7777 {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        Ok(file)
    }

    /// Reads by path, looked up afresh. `ESTALE` is tried once more: on
    /// storage that other hosts share (GlusterFS, NFS) a file another host
    /// replaced by a rename (domain metadata, an SPM's write) leaves this
    /// client's cached name on the old file until it is looked up again;
    /// the second open finds the new one. One retry only, so a mount that
    /// is really stale still answers ESTALE (the monitor's business).
    pub(crate) fn read(
        &self,
        rel: &str,
        offset: u64,
        len: u32,
        direct: bool,
    ) -> io::Result<Vec<u8>> {
        match self.read_once(rel, offset, len, direct) {
            Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {
                self.read_once(rel, offset, len, direct)
            }
            other => other,
        }
    }

    fn read_once(&self, rel: &str, offset: u64, len: u32, direct: bool) -> io::Result<Vec<u8>> {
        let mut flags = OFlag::O_RDONLY;
        if direct {
            flags |= OFlag::O_DIRECT;
        }
        let file = self.open_file(rel, flags, 0)?;
        let len = len as usize;
        if direct {
            let rounded = len.div_ceil(DIRECT_ALIGN).max(1) * DIRECT_ALIGN;
            let mut buf = AlignedBuf::new(rounded, DIRECT_ALIGN).map_err(io::Error::other)?;
            let done = direct::read_at_direct(&file, offset, &mut buf).map_err(direct_io)?;
            return Ok(buf[..done.min(len)].to_vec());
        }
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn open_for_write(&self, rel: &str, open: &OpenWrite) -> io::Result<File> {
        let mut flags = OFlag::O_WRONLY;
        if open.create {
            flags |= OFlag::O_CREAT;
        }
        if open.truncate {
            flags |= OFlag::O_TRUNC;
        }
        if open.create && open.exclusive {
            flags |= OFlag::O_EXCL;
        }
        if open.direct {
            flags |= OFlag::O_DIRECT;
        }
        self.open_file(rel, flags, open.mode)
    }

    pub(crate) fn write(
        &self,
        rel: &str,
        offset: u64,
        open: &OpenWrite,
        data: &[u8],
        fsync: bool,
    ) -> io::Result<u64> {
        let file = self.open_for_write(rel, open)?;
        write_at(&file, offset, data, open.direct)?;
        if let Some(len) = open.set_len {
            file.set_len(len)?;
        }
        close_checked(file, fsync)?;
        if open.sync_dir {
            fsync_o_path_dir(&self.at(rel)?.dir)?;
        }
        Ok(data.len() as u64)
    }

    /// Temporary file, fsync, rename over the target, fsync of the
    /// directory: readers see the old content or the new, never a part.
    pub(crate) fn write_atomic(&mut self, rel: &str, data: &[u8], mode: u32) -> io::Result<()> {
        let at = self.at(rel)?;
        if let Ok(st) =
            nix::sys::stat::fstatat(Some(at.fd()), &at.name, AtFlags::AT_SYMLINK_NOFOLLOW)
        {
            check_regular(&at, &stat_info(&st))?;
        }
        self.temp_counter += 1;
        let mut tmp = OsStr::new(".").to_owned();
        tmp.push(at.name.as_os_str());
        tmp.push(format!(".tmp-{}-{}", std::process::id(), self.temp_counter));
        let raw = nix::fcntl::openat(
            Some(at.fd()),
            tmp.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )?;
        // SAFETY: openat just returned this descriptor; nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        let written = (|| {
            file.write_all_at(data, 0)?;
            // The umask may have cut bits off the mode asked for.
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            close_checked(file, true)?;
            nix::fcntl::renameat(Some(at.fd()), tmp.as_os_str(), Some(at.fd()), &at.name)?;
            Ok(())
        })();
        if let Err(e) = written {
            let _ =
                nix::unistd::unlinkat(Some(at.fd()), tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            return Err(e);
        }
        fsync_o_path_dir(&at.dir)
    }

    pub(crate) fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (self.at(from)?, self.at(to)?);
        nix::fcntl::renameat(Some(a.fd()), &a.name, Some(b.fd()), &b.name)?;
        Ok(())
    }

    pub(crate) fn link(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (self.at(from)?, self.at(to)?);
        nix::unistd::linkat(
            Some(a.fd()),
            &a.name,
            Some(b.fd()),
            &b.name,
            AtFlags::empty(),
        )?;
        Ok(())
    }

    pub(crate) fn unlink(&self, rel: &str, dir: bool, sync_dir: bool) -> io::Result<()> {
        let at = self.at(rel)?;
        let how = if dir {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        nix::unistd::unlinkat(Some(at.fd()), &at.name, how)?;
        if sync_dir {
            fsync_o_path_dir(&at.dir)?;
        }
        Ok(())
    }

    /// A file, or a directory and everything beneath it. Names are
    /// removed with `unlinkat` on the directory that holds them, so a
    /// symlink is removed itself and never followed.
    pub(crate) fn rmtree(&self, rel: &str) -> io::Result<()> {
        let at = self.at(rel)?;
        rmtree_at(&at.dir, &at.name, at.dev, &at.shown, 0)
    }

    pub(crate) fn zero_range(
        &self,
        rel: &str,
        offset: u64,
        len: u64,
        punch: bool,
    ) -> io::Result<()> {
        let file = self.open_file(rel, OFlag::O_WRONLY, 0)?;
        if punch {
            crate::fsutil::punch_hole(&file, offset, len).map_err(fs_io)?;
        } else {
            crate::fsutil::zero_range(&file, offset, len)
                .map(drop)
                .map_err(fs_io)?;
        }
        close_checked(file, false)
    }

    /// Writes zeros over `[offset, offset + len)` with `O_DIRECT` from a
    /// zeroed buffer of the helper's own: the bytes reach the disk (no
    /// page cache, no unwritten extents) and none cross the pipe. With
    /// `only_nonzero`, every [`WIPE_UNIT`] that reads as zeros (a hole, or
    /// zeros already) is skipped, and one that cannot be read in full (past
    /// the end of the file) is written. Returns the bytes written.
    pub(crate) fn wipe(
        &mut self,
        rel: &str,
        offset: u64,
        len: u64,
        only_nonzero: bool,
    ) -> io::Result<u64> {
        let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
        if len > MAX_WIPE_BYTES {
            return Err(invalid(format!(
                "a wipe of {len} bytes is over the limit of {MAX_WIPE_BYTES} per call"
            )));
        }
        if !offset.is_multiple_of(WIPE_ALIGN) || !len.is_multiple_of(WIPE_ALIGN) {
            return Err(invalid(format!(
                "a wipe's offset ({offset}) and length ({len}) must be multiples of {WIPE_ALIGN}"
            )));
        }
        let mode = if only_nonzero {
            OFlag::O_RDWR
        } else {
            OFlag::O_WRONLY
        };
        let file = self.open_file(rel, mode | OFlag::O_DIRECT, 0)?;
        if len == 0 {
            return close_checked(file, false).map(|()| 0);
        }
        let window = WIPE_WINDOW as usize;
        let zeros = kept_buf(&mut self.wipe_zeros, window)?;
        let mut got = if only_nonzero {
            Some(kept_buf(&mut self.wipe_read, window)?)
        } else {
            None
        };
        let mut written = 0u64;
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(WIPE_WINDOW) as usize;
            let runs = match got.as_mut() {
                Some(buf) => {
                    let read = read_direct_into(&file, offset + at, &mut buf[..n])?;
                    nonzero_runs(&buf[..read], n)
                }
                None => vec![(0, n)],
            };
            for (start, m) in runs {
                let at = offset + at + start as u64;
                direct::write_at_direct(&file, at, zeros, m).map_err(direct_io)?;
                written += m as u64;
            }
            at += n as u64;
        }
        close_checked(file, false)?;
        Ok(written)
    }

    pub(crate) fn mkdir(&self, rel: &str, mode: u32, sync_dir: bool) -> io::Result<()> {
        let at = self.at(rel)?;
        nix::sys::stat::mkdirat(Some(at.fd()), &at.name, Mode::from_bits_truncate(mode))?;
        if sync_dir {
            fsync_o_path_dir(&at.dir)?;
        }
        Ok(())
    }

    pub(crate) fn truncate(&self, rel: &str, len: u64) -> io::Result<()> {
        let file = self.open_file(rel, OFlag::O_WRONLY, 0)?;
        file.set_len(len)?;
        close_checked(file, false)
    }

    pub(crate) fn fallocate(&self, rel: &str, offset: u64, len: u64) -> io::Result<()> {
        let file = self.open_file(rel, OFlag::O_WRONLY, 0)?;
        crate::fsutil::fallocate(&file, offset, len).map_err(fs_io)?;
        close_checked(file, false)
    }

    /// chmod of the entry itself; a symlink is refused (Linux cannot
    /// chmod a link, and following it could leave the root).
    pub(crate) fn chmod(&self, rel: &str, mode: u32) -> io::Result<()> {
        let node = self.open_node(rel)?;
        fs::set_permissions(proc_fd(&node), fs::Permissions::from_mode(mode))
    }

    pub(crate) fn chown(&self, rel: &str, uid: u32, gid: u32) -> io::Result<()> {
        let at = self.at(rel)?;
        nix::unistd::fchownat(
            Some(at.fd()),
            &at.name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// The entry itself (file or directory, not a symlink) as `O_PATH`.
    fn open_node(&self, rel: &str) -> io::Result<File> {
        self.stat(rel, false)?;
        let at = self.at(rel)?;
        let node = open_flags(Some(&at.dir), &at.name, OFlag::O_PATH | OFlag::O_NOFOLLOW)?;
        check_same_dev(&at, &node.metadata()?)?;
        Ok(node)
    }

    pub(crate) fn fsync(&self, rel: &str) -> io::Result<()> {
        let file = self.open_file(rel, OFlag::O_RDONLY, 0)?;
        close_checked(file, true)
    }

    pub(crate) fn fsync_dir(&self, rel: &str) -> io::Result<()> {
        let dir = self.open_dir(rel)?;
        dir.sync_all()
    }

    pub(crate) fn direct_probe(&self, rel: &str) -> io::Result<DirectProbe> {
        let file = match self.open_file(rel, OFlag::O_RDONLY | OFlag::O_DIRECT, 0) {
            Ok(f) => f,
            // The file system refuses O_DIRECT at open (tmpfs before 6.6).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return Ok(DirectProbe {
                    supported: false,
                    block_size: 0,
                    source: "open refused O_DIRECT".into(),
                })
            }
            Err(e) => return Err(e),
        };
        match direct::probe_alignment(&file) {
            Ok(a) => Ok(DirectProbe {
                supported: true,
                block_size: u32::try_from(a.offset_align).unwrap_or(u32::MAX),
                source: match a.source {
                    AlignmentSource::Statx => "statx",
                    AlignmentSource::TrialRead => "trial_read",
                    AlignmentSource::Assumed => "assumed",
                }
                .into(),
            }),
            Err(direct::DirectError::Unsupported { .. }) => Ok(DirectProbe {
                supported: false,
                block_size: 0,
                source: "trial reads failed with EINVAL".into(),
            }),
            Err(e) => Err(direct_io(e)),
        }
    }

    pub(crate) fn stream_open(&mut self, rel: &str, open: &OpenWrite) -> io::Result<u64> {
        if open.set_len.is_some() || open.sync_dir {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "set_len and sync_dir are for single writes, not streams",
            ));
        }
        if self.streams.len() >= MAX_STREAMS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("this helper already has {MAX_STREAMS} streamed writes open"),
            ));
        }
        let file = self.open_for_write(rel, open)?;
        let handle = self.next_handle;
        self.next_handle += 1;
        let stream = Stream {
            file,
            direct: open.direct,
            shared: None,
        };
        self.streams.insert(handle, stream);
        Ok(handle)
    }

    pub(crate) fn stream_write(&self, handle: u64, offset: u64, data: &[u8]) -> io::Result<u64> {
        let s = self.stream(handle)?;
        write_at(&s.file, offset, data, s.direct)?;
        Ok(data.len() as u64)
    }

    /// Maps the client's buffer for the handle (see
    /// [`SharedMap::open`]), replacing the one it had.
    pub(crate) fn stream_share(&mut self, handle: u64, fd: i32, len: u64) -> io::Result<()> {
        if len > u64::from(MAX_DATA_BYTES) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a shared buffer of {len} bytes; at most {MAX_DATA_BYTES}"),
            ));
        }
        self.stream(handle)?;
        // The old mapping goes first: two at once are never needed.
        let s = self.streams.get_mut(&handle).expect("checked above");
        s.shared = None;
        s.shared = Some(SharedMap::open(self.share_owner, fd, len)?);
        Ok(())
    }

    /// Writes `len` bytes of the handle's shared buffer from `at` at
    /// `offset`; refused, nothing written, unless they lie in the buffer.
    pub(crate) fn stream_write_shared(
        &self,
        handle: u64,
        offset: u64,
        at: u64,
        len: u32,
    ) -> io::Result<u64> {
        let s = self.stream(handle)?;
        let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
        let map = s
            .shared
            .as_ref()
            .ok_or_else(|| invalid(format!("the streamed write {handle} has no shared buffer")))?;
        let range = usize::try_from(at)
            .ok()
            .and_then(|a| Some(a..a.checked_add(len as usize)?))
            .filter(|r| r.end <= map.len())
            .ok_or_else(|| {
                invalid(format!(
                    "{len} bytes from {at} are outside the shared buffer of {} bytes",
                    map.len()
                ))
            })?;
        write_at(&s.file, offset, &map.bytes()[range], s.direct)?;
        Ok(u64::from(len))
    }

    pub(crate) fn stream_close(&mut self, handle: u64, fsync: bool) -> io::Result<()> {
        self.stream(handle)?;
        let s = self.streams.remove(&handle).expect("checked above");
        close_checked(s.file, fsync)
    }

    fn stream(&self, handle: u64) -> io::Result<&Stream> {
        self.streams.get(&handle).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no streamed write with handle {handle} in this helper"),
            )
        })
    }
}

fn rmtree_at(dir: &File, name: &Path, dev: u64, shown: &Path, depth: usize) -> io::Result<()> {
    let st = nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if kind_of_mode(st.st_mode) != FileKind::Dir {
        nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)?;
        return Ok(());
    }
    if st.st_dev != dev {
        return Err(refused(
            shown,
            format!("{} is on another file system; not removed", shown.display()),
        ));
    }
    if depth >= MAX_TREE_DEPTH {
        return Err(refused(
            shown,
            format!(
                "{} is more than {MAX_TREE_DEPTH} levels deep",
                shown.display()
            ),
        ));
    }
    let sub = open_flags(
        Some(dir),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
    )?;
    // Names first: removing while reading a directory may skip entries.
    let names: Vec<PathBuf> = fs::read_dir(proc_fd(&sub))?
        .map(|e| e.map(|e| PathBuf::from(e.file_name())))
        .collect::<io::Result<_>>()?;
    for child in names {
        rmtree_at(&sub, &child, dev, &shown.join(&child), depth + 1)?;
    }
    nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir)?;
    Ok(())
}

/// The buffer kept in `slot` (made zeroed on first use, `len` bytes).
fn kept_buf(slot: &mut Option<AlignedBuf>, len: usize) -> io::Result<&mut AlignedBuf> {
    if slot.is_none() {
        *slot = Some(AlignedBuf::new(len, DIRECT_ALIGN).map_err(io::Error::other)?);
    }
    Ok(slot.as_mut().expect("made above"))
}

/// Reads into `buf` (aligned, a multiple of the block size) at `offset`
/// with a file opened `O_DIRECT`, looping on short reads; fewer bytes only
/// at the end of the file.
fn read_direct_into(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                // Reading on from an unaligned point fails: the end.
                if !done.is_multiple_of(WIPE_ALIGN as usize) {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The `(start, len)` runs of the [`WIPE_UNIT`]s of a window of `n` bytes
/// that need zeros: those that did not read as zeros, or were not read in
/// full (`got` is short), adjacent ones merged into one write.
fn nonzero_runs(got: &[u8], n: usize) -> Vec<(usize, usize)> {
    let unit = WIPE_UNIT as usize;
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut s = 0;
    while s < n {
        let m = (n - s).min(unit);
        if got.len() < s + m || got[s..s + m].iter().any(|&b| b != 0) {
            match out.last_mut() {
                Some((start, len)) if *start + *len == s => *len += m,
                _ => out.push((s, m)),
            }
        }
        s += m;
    }
    out
}

fn open_flags(dir: Option<&File>, name: &Path, flags: OFlag) -> io::Result<File> {
    let raw = nix::fcntl::openat(
        dir.map(AsRawFd::as_raw_fd),
        name,
        flags | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// The procfs path of a descriptor: the very object it refers to.
fn proc_fd(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

fn check_regular(at: &At, info: &StatInfo) -> io::Result<()> {
    match info.kind {
        FileKind::File => Ok(()),
        FileKind::Symlink => Err(refused(
            &at.shown,
            format!(
                "{} is a symbolic link; nothing is opened through one",
                at.shown.display()
            ),
        )),
        other => Err(refused(
            &at.shown,
            format!("{} is {other:?}, not a regular file", at.shown.display()),
        )),
    }
}

fn check_same_dev(at: &At, md: &fs::Metadata) -> io::Result<()> {
    if md.dev() != at.dev {
        return Err(refused(
            &at.shown,
            format!("{} is on another file system", at.shown.display()),
        ));
    }
    Ok(())
}

fn write_at(file: &File, offset: u64, data: &[u8], direct: bool) -> io::Result<()> {
    if !direct || data.is_empty() {
        return file.write_all_at(data, offset);
    }
    // Data already where O_DIRECT wants it (the helper's DataBuf, a whole
    // number of blocks): written from there, not copied first.
    if (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
        && data.len().is_multiple_of(DIRECT_ALIGN)
    {
        return file.write_all_at(data, offset);
    }
    let rounded = data.len().div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let mut buf = AlignedBuf::new(rounded, DIRECT_ALIGN).map_err(io::Error::other)?;
    buf[..data.len()].copy_from_slice(data);
    direct::write_at_direct(file, offset, &buf, data.len()).map_err(direct_io)
}

/// Closes `file` (after an fsync if asked), reporting the errors of both.
fn close_checked(file: File, fsync: bool) -> io::Result<()> {
    if fsync {
        return direct::sync_and_close(file).map_err(direct_io);
    }
    use std::os::fd::IntoRawFd;
    nix::unistd::close(file.into_raw_fd())?;
    Ok(())
}

/// fsync of a directory held as `O_PATH` (which cannot be fsynced itself).
fn fsync_o_path_dir(dir: &File) -> io::Result<()> {
    let readable = open_flags(None, &proc_fd(dir), OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
    readable.sync_all()
}

/// The OS error inside a [`direct::DirectError`], kept as the errno.
fn direct_io(e: direct::DirectError) -> io::Error {
    match e.raw_os_error() {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::other(e.to_string()),
    }
}

fn fs_io(e: crate::fsutil::FsError) -> io::Error {
    match e.io_error().and_then(io::Error::raw_os_error) {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::other(e.to_string()),
    }
}

fn stat_info(st: &FileStat) -> StatInfo {
    StatInfo {
        kind: kind_of_mode(st.st_mode),
        size: u64::try_from(st.st_size).unwrap_or(0),
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        nlink: st.st_nlink,
        ino: st.st_ino,
        dev: st.st_dev,
        mtime_s: st.st_mtime,
        mtime_ns: st.st_mtime_nsec,
        blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        ctime_s: st.st_ctime,
    }
}

fn kind_of_mode(mode: u32) -> FileKind {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => FileKind::File,
        SFlag::S_IFDIR => FileKind::Dir,
        SFlag::S_IFLNK => FileKind::Symlink,
        SFlag::S_IFBLK => FileKind::BlockDevice,
        SFlag::S_IFCHR => FileKind::CharDevice,
        SFlag::S_IFIFO => FileKind::Fifo,
        SFlag::S_IFSOCK => FileKind::Socket,
        _ => FileKind::Unknown,
    }
}

fn kind_of_dir_type(t: nix::dir::Type) -> FileKind {
    use nix::dir::Type;
    match t {
        Type::File => FileKind::File,
        Type::Directory => FileKind::Dir,
        Type::Symlink => FileKind::Symlink,
        Type::BlockDevice => FileKind::BlockDevice,
        Type::CharacterDevice => FileKind::CharDevice,
        Type::Fifo => FileKind::Fifo,
        Type::Socket => FileKind::Socket,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// How a symlink is met: refused by a check, or by the kernel
    /// (`O_NOFOLLOW`: ELOOP, or ENOTDIR with `O_DIRECTORY`).
    fn not_followed(e: &io::Error) -> bool {
        crate::confine::refusal(e).is_some()
            || matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR))
    }

    /// The directories a batch keeps are the ones its walks checked: a
    /// directory swapped for a symlink between two items leads nowhere
    /// new (the kept descriptor is the checked directory, wherever it was
    /// moved), a symlink not walked before is refused as in any walk, and
    /// nothing is kept after the batch.
    #[test]
    fn a_batch_cannot_be_led_out_by_a_symlink_swapped_between_items() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let img = root.join("dom/images/img");
        fs::create_dir_all(&img).unwrap();
        fs::create_dir_all(root.join("dom/other")).unwrap();
        fs::write(img.join("vol.meta"), b"inside").unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("vol.meta"), b"secret").unwrap();
        fs::write(outside.join("x"), b"secret").unwrap();
        let mut c = Confined::new(&root).unwrap();
        let meta = "dom/images/img/vol.meta";
        c.with_walks_kept(|c| {
            assert_eq!(c.read(meta, 0, 64, false).unwrap(), b"inside");
            fs::rename(&img, root.join("dom/images/moved")).unwrap();
            symlink(&outside, &img).unwrap();
            fs::remove_dir(root.join("dom/other")).unwrap();
            symlink(&outside, root.join("dom/other")).unwrap();
            // Through the kept directory: the one that was checked.
            assert_eq!(c.read(meta, 0, 64, false).unwrap(), b"inside");
            assert!(c.stat(meta, false).is_ok());
            // The symlink itself, reached from a kept parent: refused.
            let e = c.listdir("dom/images/img", 16).unwrap_err();
            assert!(not_followed(&e), "{e}");
            // A symlink no walk went through yet: refused.
            let e = c.read("dom/other/x", 0, 64, false).unwrap_err();
            assert!(not_followed(&e), "{e}");
        });
        // Nothing kept: a new walk meets the symlink.
        let e = c.read(meta, 0, 64, false).unwrap_err();
        assert!(not_followed(&e), "{e}");
        assert_eq!(fs::read(outside.join("vol.meta")).unwrap(), b"secret");
    }

    /// A listing read through the directory's descriptor: every entry but
    /// `.` and `..` with its kind, a name that is not UTF-8 marked, and
    /// a cap that cuts only when an entry is left out.
    #[test]
    fn a_listing_has_every_entry_and_says_when_it_is_cut() {
        use std::os::unix::ffi::OsStrExt;
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("f"), b"x").unwrap();
        symlink("f", d.join("l")).unwrap();
        nix::unistd::mkfifo(&d.join("p"), Mode::from_bits_truncate(0o600)).unwrap();
        fs::write(d.join(OsStr::from_bytes(b"n\xff")), b"").unwrap();
        let c = Confined::new(t.path()).unwrap();
        let (mut all, cut) = c.listdir("d", 100).unwrap();
        assert!(!cut);
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let seen: Vec<(&str, bool, FileKind)> = all
            .iter()
            .map(|e| (e.name.as_str(), e.utf8, e.kind))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("f", true, FileKind::File),
                ("l", true, FileKind::Symlink),
                ("n\u{fffd}", false, FileKind::File),
                ("p", true, FileKind::Fifo),
                ("sub", true, FileKind::Dir),
            ]
        );
        assert_eq!(c.listdir("d", 5).unwrap().0.len(), 5);
        assert!(!c.listdir("d", 5).unwrap().1, "all 5 fit");
        let (some, cut) = c.listdir("d", 3).unwrap();
        assert_eq!((some.len(), cut), (3, true));
        let (none, cut) = c.listdir("d/sub", 0).unwrap();
        assert_eq!((none.len(), cut), (0, false), "an empty directory is whole");
    }

    /// A kept walk checks the device as every walk does.
    #[test]
    fn a_batch_does_not_leave_the_root_s_file_system() {
        let mut c = Confined::new(Path::new("/")).unwrap();
        c.with_walks_kept(|c| {
            for _ in 0..2 {
                let e = c.stat("proc/self/status", false).unwrap_err();
                assert!(crate::confine::refusal(&e).is_some(), "{e}");
            }
        });
    }

    #[test]
    fn nonzero_runs_are_merged() {
        let unit = WIPE_UNIT as usize;
        let mut got = vec![0u8; 4 * unit];
        got[5] = 1;
        got[unit + 7] = 1;
        got[3 * unit] = 1;
        assert_eq!(
            nonzero_runs(&got, 4 * unit),
            vec![(0, 2 * unit), (3 * unit, unit)]
        );
        // Not read (short): written.
        assert_eq!(nonzero_runs(&got[..unit], 2 * unit), vec![(0, 2 * unit)]);
        assert_eq!(nonzero_runs(&vec![0u8; unit], unit), vec![]);
        // A last unit shorter than the others.
        let mut got = vec![0u8; unit + 4096];
        got[unit + 1] = 1;
        assert_eq!(nonzero_runs(&got, unit + 4096), vec![(unit, 4096)]);
    }
}
