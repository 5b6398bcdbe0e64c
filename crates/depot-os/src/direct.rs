//! Direct I/O (`O_DIRECT`): reads and writes that bypass the page cache,
//! with the buffers and alignment probing it needs.
//!
//! Storage shared between hosts must not be read through one host's page
//! cache (another host may have changed it), and image copies should not
//! evict everything else from memory. `O_DIRECT` requires the buffer
//! address, the file offset and the length to be aligned, or the call fails
//! with `EINVAL`. The alignment depends on the device and filesystem (512
//! or 4096 bytes for disks), so it is probed per file, like cloud-hypervisor
//! (statx `STATX_DIOALIGN`) and VDSM/ovirt-imageio (trial reads) do.
//!
//! # Errors that show up late
//!
//! On GlusterFS over FUSE (with `performance.strict-o-direct off`, the
//! default) an unaligned write "succeeds" and the `EINVAL` is reported only
//! by `close()`; other network filesystems may report write errors only at
//! `fsync()`. So a writer must finish with [`sync_and_close`], which checks
//! both; dropping the `File` ignores the close error.

use std::alloc::{self, Layout};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use crate::fd_path::fd_path;

/// The statx mask bit for the direct I/O alignment fields (Linux 6.1).
const STATX_DIOALIGN: u32 = 0x2000;

/// The block sizes tried by [`probe_block_size`], smallest first.
const PROBE_SIZES: [usize; 2] = [512, 4096];

/// A direct I/O failure. Each variant names the path (found from the fd)
/// and, for reads and writes, the offset and length.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// An [`AlignedBuf`] with these parameters cannot exist.
    #[error("aligned buffer of {len} bytes at alignment {align}: {reason}")]
    Buffer {
        len: usize,
        align: usize,
        reason: &'static str,
    },

    #[error("open {path} with O_DIRECT ({mode}): {source}")]
    Open {
        path: PathBuf,
        mode: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("direct read of {len} bytes at offset {offset} from {path}: {source}")]
    Read {
        path: PathBuf,
        offset: u64,
        len: usize,
        #[source]
        source: io::Error,
    },

    #[error("direct write of {len} bytes at offset {offset} to {path}: {source}")]
    Write {
        path: PathBuf,
        offset: u64,
        len: usize,
        #[source]
        source: io::Error,
    },

    /// Probing the alignment failed for a reason other than alignment.
    #[error("probe direct I/O alignment of {path}: {source}")]
    Probe {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Neither 512 nor 4096 byte direct reads work, or the file is not open
    /// with `O_DIRECT`.
    #[error("probe direct I/O alignment of {path}: {reason}")]
    Unsupported { path: PathBuf, reason: &'static str },

    #[error("fsync {path}: {source}")]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("close {path}: {source}")]
    Close {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl DirectError {
    /// The OS error number, if the OS reported one (e.g. `EINVAL` for an
    /// unaligned request).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            DirectError::Open { source, .. }
            | DirectError::Read { source, .. }
            | DirectError::Write { source, .. }
            | DirectError::Probe { source, .. }
            | DirectError::Sync { source, .. }
            | DirectError::Close { source, .. } => source.raw_os_error(),
            DirectError::Buffer { .. } | DirectError::Unsupported { .. } => None,
        }
    }
}

/// A zeroed heap buffer whose address is aligned to `align` and whose
/// length is a multiple of it, as `O_DIRECT` needs. Derefs to `[u8]`.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes at `align`. `align` must be a power of
    /// two and `len` a non-zero multiple of it.
    pub fn new(len: usize, align: usize) -> Result<Self, DirectError> {
        let bad = |reason| DirectError::Buffer { len, align, reason };
        if !align.is_power_of_two() {
            return Err(bad("alignment is not a power of two"));
        }
        if len == 0 || len & (align - 1) != 0 {
            return Err(bad("length is not a non-zero multiple of the alignment"));
        }
        let layout = Layout::from_size_align(len, align).map_err(|_| bad("too large"))?;
        // SAFETY: the layout has a non-zero size (checked above).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| bad("out of memory"))?;
        Ok(AlignedBuf { ptr, layout })
    }

    /// The alignment of the address (and granularity of the length).
    pub fn align(&self) -> usize {
        self.layout.align()
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is a live, initialised (zeroed) allocation of
        // layout.size() bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with exactly this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.layout.size())
            .field("align", &self.layout.align())
            .finish()
    }
}

/// Opens an existing file or block device with `O_DIRECT` (and
/// `O_CLOEXEC`, which std always adds), read-only or read-write.
///
/// No `O_DSYNC`: writers call [`sync_and_close`] once at the end, which is
/// much faster than a sync per write and catches the same errors.
pub fn open_direct(path: &Path, write: bool) -> Result<File, DirectError> {
    open_direct_data(path, write)
}

/// [`open_direct`] under the rule of a [`DataPath`](crate::DataPath) (a
/// volume's data must not be reached through a symlink, see
/// [`crate::confine`]).
pub fn open_direct_data(
    data: &(impl crate::DataPath + ?Sized),
    write: bool,
) -> Result<File, DirectError> {
    data.open_with(
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_DIRECT),
    )
    .map_err(|source| DirectError::Open {
        path: data.path().to_owned(),
        mode: if write { "read-write" } else { "read-only" },
        source,
    })
}

/// Where an [`Alignment`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlignmentSource {
    /// The kernel reported it (statx `STATX_DIOALIGN`).
    Statx,
    /// Found by trial `O_DIRECT` reads ([`probe_block_size`]).
    TrialRead,
    /// Could not be probed (empty file on a filesystem without statx
    /// support); the safe maximum, 4096, is assumed.
    Assumed,
}

/// The alignment direct I/O on one file needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alignment {
    /// Alignment of buffer addresses.
    pub mem_align: usize,
    /// Alignment of file offsets and lengths.
    pub offset_align: usize,
    pub source: AlignmentSource,
}

/// The direct I/O alignment of an open file (opened with [`open_direct`]).
///
/// Asks the kernel first (statx `STATX_DIOALIGN`, Linux 6.1+, for ext4, xfs
/// and block devices). FUSE (GlusterFS) and NFS do not report it, and
/// report 0 or nothing; then it falls back to [`probe_block_size`], and uses
/// the probed size for both alignments.
pub fn probe_alignment(file: &File) -> Result<Alignment, DirectError> {
    if let Some((mem_align, offset_align)) = statx_dio_align(file) {
        return Ok(Alignment {
            mem_align,
            offset_align,
            source: AlignmentSource::Statx,
        });
    }
    let (size, source) = probe_block_size(file)?;
    Ok(Alignment {
        mem_align: size,
        offset_align: size,
        source,
    })
}

/// [`probe_alignment`] of the file at `path`, opened read-only.
pub fn probe_alignment_path(path: &Path) -> Result<Alignment, DirectError> {
    probe_alignment(&open_direct(path, false)?)
}

/// `(mem_align, offset_align)` from statx, if the kernel and filesystem
/// report non-zero values.
fn statx_dio_align(file: &File) -> Option<(usize, usize)> {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid empty C string, AT_EMPTY_PATH makes statx
    // use the fd, and stx is a valid, writable statx struct.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & STATX_DIOALIGN == 0 {
        return None;
    }
    let mem = usize::try_from(stx.stx_dio_mem_align).ok()?;
    let off = usize::try_from(stx.stx_dio_offset_align).ok()?;
    (mem > 0 && off > 0).then_some((mem, off))
}

/// The smallest block size (512, then 4096) at which an `O_DIRECT` read at
/// offset 0 works; `EINVAL` means "too small". This is how VDSM and
/// ovirt-imageio detect the block size where statx cannot tell.
///
/// An empty regular file reads 0 bytes at any size and proves nothing;
/// then 4096 is assumed ([`AlignmentSource::Assumed`]), which works on both
/// kinds of storage. The file must be open with `O_DIRECT`, or every read
/// would succeed.
pub fn probe_block_size(file: &File) -> Result<(usize, AlignmentSource), DirectError> {
    let flags =
        nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).map_err(|e| {
            DirectError::Probe {
                path: fd_path(file),
                source: e.into(),
            }
        })?;
    if flags & libc::O_DIRECT == 0 {
        return Err(DirectError::Unsupported {
            path: fd_path(file),
            reason: "the file is not open with O_DIRECT",
        });
    }
    let max = PROBE_SIZES[PROBE_SIZES.len() - 1];
    let mut buf = AlignedBuf::new(max, max)?;
    for size in PROBE_SIZES {
        match pread_retry(file, &mut buf[..size], 0) {
            Ok(0) => return Ok((max, AlignmentSource::Assumed)),
            Ok(_) => return Ok((size, AlignmentSource::TrialRead)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            Err(source) => {
                return Err(DirectError::Probe {
                    path: fd_path(file),
                    source,
                })
            }
        }
    }
    Err(DirectError::Unsupported {
        path: fd_path(file),
        reason: "direct reads of 512 and 4096 bytes both fail with EINVAL",
    })
}

fn pread_retry(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        match file.read_at(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Reads `buf.len()` bytes at `offset`, looping on short reads. Returns the
/// bytes read: fewer than `buf.len()` only at end of file.
///
/// A short read that ends off the buffer's alignment is taken as end of
/// file (reading on from there would fail with `EINVAL`), so use a buffer
/// aligned to at least the file's [`Alignment::offset_align`].
pub fn read_at_direct(
    file: &File,
    offset: u64,
    buf: &mut AlignedBuf,
) -> Result<usize, DirectError> {
    let align = buf.align();
    let len = buf.len();
    let mut done = 0;
    while done < len {
        let at = offset + done as u64;
        match pread_retry(file, &mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                if done % align != 0 {
                    break;
                }
            }
            Err(source) => {
                return Err(DirectError::Read {
                    path: fd_path(file),
                    offset: at,
                    len: len - done,
                    source,
                })
            }
        }
    }
    Ok(done)
}

/// Writes the first `len` bytes of `buf` at `offset`, looping on short
/// writes. `len` and `offset` must be aligned for the file, except that a
/// filesystem may accept an unaligned tail. Errors may still come later,
/// from [`sync_and_close`].
pub fn write_at_direct(
    file: &File,
    offset: u64,
    buf: &AlignedBuf,
    len: usize,
) -> Result<(), DirectError> {
    if len > buf.len() {
        return Err(DirectError::Buffer {
            len: buf.len(),
            align: buf.align(),
            reason: "write length is larger than the buffer",
        });
    }
    let mut done = 0;
    while done < len {
        let at = offset + done as u64;
        let err = |source| DirectError::Write {
            path: fd_path(file),
            offset: at,
            len: len - done,
            source,
        };
        match file.write_at(&buf[done..len], at) {
            Ok(0) => return Err(err(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}

/// fsyncs and closes `file`, reporting errors from both. Writers must end
/// with this (see the [module docs](self)): on GlusterFS an unaligned
/// direct write fails only at close, and NFS reports write-back errors at
/// fsync or close. The fd is closed even when fsync fails.
pub fn sync_and_close(file: File) -> Result<(), DirectError> {
    let path = fd_path(&file);
    if let Err(source) = file.sync_all() {
        drop(file);
        return Err(DirectError::Sync { path, source });
    }
    // Not retried on EINTR: on Linux the fd is released even then.
    nix::unistd::close(file.into_raw_fd()).map_err(|e| DirectError::Close {
        path,
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_and_zeroed() {
        let mut b = AlignedBuf::new(3 * 4096, 4096).unwrap();
        assert_eq!(b.len(), 3 * 4096);
        assert_eq!(b.as_ptr() as usize % 4096, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[5] = 9;
        assert_eq!(b[5], 9);
        fn is_send<T: Send + Sync>(_: &T) {}
        is_send(&b);
    }

    #[test]
    fn aligned_buf_rejects_bad_sizes() {
        for (len, align) in [(4096, 3), (100, 512), (0, 512), (512, 0)] {
            let err = AlignedBuf::new(len, align).unwrap_err();
            assert!(matches!(err, DirectError::Buffer { .. }), "{err}");
        }
    }

    fn file_with(dir: &Path, name: &str, len: usize) -> PathBuf {
        let p = dir.join(name);
        let data: Vec<u8> = (0..len).map(|i| (i / 512) as u8).collect();
        std::fs::write(&p, data).unwrap();
        p
    }

    fn pattern(len: usize, align: usize, seed: u8) -> AlignedBuf {
        let mut b = AlignedBuf::new(len, align).unwrap();
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
        b
    }

    #[test]
    fn ext4_alignment_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(dir.path(), "img", 64 * 1024);
        let f = open_direct(&p, true).unwrap();
        let a = probe_alignment(&f).unwrap();
        assert!(matches!(a.offset_align, 512 | 4096), "{a:?}");
        assert!(a.mem_align.is_power_of_two(), "{a:?}");
        eprintln!("ext4 alignment: {a:?}");
        let (bs, src) = probe_block_size(&f).unwrap();
        assert!(matches!(bs, 512 | 4096), "{bs}");
        assert_eq!(src, AlignmentSource::TrialRead);

        let data = pattern(8192, 4096, 1);
        write_at_direct(&f, 4096, &data, data.len()).unwrap();
        sync_and_close(f).unwrap();

        let f = open_direct(&p, false).unwrap();
        let mut back = AlignedBuf::new(8192, 4096).unwrap();
        assert_eq!(read_at_direct(&f, 4096, &mut back).unwrap(), 8192);
        assert_eq!(&back[..], &data[..]);
        // Near the end of the file the read comes back short.
        assert_eq!(read_at_direct(&f, 60 * 1024, &mut back).unwrap(), 4096);
        assert_eq!(read_at_direct(&f, 64 * 1024, &mut back).unwrap(), 0);
    }

    #[test]
    fn unaligned_offset_fails_with_context() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(dir.path(), "img", 16 * 1024);
        let f = open_direct(&p, false).unwrap();
        let mut b = AlignedBuf::new(4096, 4096).unwrap();
        let err = read_at_direct(&f, 1, &mut b).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("offset 1 ") && msg.contains("img"), "{msg}");
    }

    #[test]
    fn empty_file_assumes_4096() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(dir.path(), "empty", 0);
        let f = open_direct(&p, false).unwrap();
        assert_eq!(
            probe_block_size(&f).unwrap(),
            (4096, AlignmentSource::Assumed)
        );
    }

    #[test]
    fn probe_needs_o_direct_and_open_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(dir.path(), "buffered", 4096);
        let f = File::open(&p).unwrap();
        assert!(matches!(
            probe_block_size(&f),
            Err(DirectError::Unsupported { .. })
        ));
        let err = open_direct(&dir.path().join("missing"), false).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn write_longer_than_buffer_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(dir.path(), "img", 4096);
        let f = open_direct(&p, true).unwrap();
        let b = AlignedBuf::new(4096, 4096).unwrap();
        assert!(matches!(
            write_at_direct(&f, 0, &b, 8192),
            Err(DirectError::Buffer { .. })
        ));
    }

    #[test]
    #[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
    fn loop_device_with_4k_sectors() {
        depot_testkit::require_root();
        let dir = tempfile::tempdir().unwrap();
        let backing = file_with(dir.path(), "backing", 4 * 1024 * 1024);
        let lo = depot_testkit::LoopDevice::attach_with(&backing, Some(4096), false);

        let f = open_direct(lo.path(), true).unwrap();
        let a = probe_alignment(&f).unwrap();
        assert_eq!(a.offset_align, 4096, "{a:?}");
        assert_eq!(a.source, AlignmentSource::Statx, "{a:?}");
        assert_eq!(
            probe_block_size(&f).unwrap(),
            (4096, AlignmentSource::TrialRead)
        );

        let mut small = AlignedBuf::new(512, 512).unwrap();
        let err = read_at_direct(&f, 512, &mut small).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
        assert!(err.to_string().contains("offset 512"), "{err}");

        let data = pattern(8192, 4096, 7);
        write_at_direct(&f, 8192, &data, data.len()).unwrap();
        sync_and_close(f).unwrap();
        let f = open_direct(lo.path(), false).unwrap();
        let mut back = AlignedBuf::new(8192, 4096).unwrap();
        assert_eq!(read_at_direct(&f, 8192, &mut back).unwrap(), 8192);
        assert_eq!(&back[..], &data[..]);
        drop(f);
        drop(lo);
        // The data went through to the backing file.
        let raw = std::fs::read(&backing).unwrap();
        assert_eq!(&raw[8192..16384], &data[..]);
    }
}
