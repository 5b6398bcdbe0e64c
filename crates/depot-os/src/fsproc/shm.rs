//! [`SharedMap`]: the memory a streamed write's data passes through
//! instead of the pipe (protocol version 3, `stream_share` and
//! `stream_write_shared`).
//!
//! # Why
//!
//! Through the pipe, each 1 MiB piece of an OVF upload was copied into a
//! 64 KiB pipe by depotd and out of it by the helper, with a wake-up per
//! 64 KiB: half of the helper's CPU, and the upload was CPU-bound
//! (docs/performance.md, "OVF_STORE PUT through the helpers"). Here
//! depotd copies a piece once into a `memfd` that both processes map, the
//! request only names where it lies, and the helper writes it to the file
//! (with `O_DIRECT`) straight from its own mapping.
//!
//! # Who makes what
//!
//! depotd (the client) makes the memory: a `memfd` sealed against
//! shrinking and growing, mapped read-write. The helper opens it through
//! `/proc/<its parent>/fd/<n>` (both run as root and the helper is
//! depotd's own child; an in-process pool opens its own
//! `/proc/<pid>/fd/<n>`), checks that it is a memory file sealed against
//! shrinking and at least as large as it was told, and maps it
//! read-only. The seal is what makes the mapping safe to read: nobody can
//! cut the file under it (a read past the end of a mapped file is a
//! SIGBUS, not an error). A helper that dies takes only its own mapping
//! with it; depotd's stays valid until the stream is dropped.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::stat::Mode;

/// A shared mapping of a sealed `memfd`: read-write on depotd's side
/// ([`create`](Self::create)), read-only on the helper's
/// ([`open`](Self::open)). Unmapped when dropped.
pub(crate) struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
    /// The memory file, while the peer has not opened it yet (depotd's
    /// side; the helper closes its own at once).
    fd: Option<OwnedFd>,
}

// SAFETY: the mapping is plain memory owned by this value; every access
// goes through `&self`/`&mut self`.
unsafe impl Send for SharedMap {}
unsafe impl Sync for SharedMap {}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

impl SharedMap {
    /// A new memory file of `len` bytes, sealed at that size, mapped
    /// read-write (its pages made at once: the first piece written into
    /// it takes no faults).
    pub(crate) fn create(len: usize) -> io::Result<SharedMap> {
        let size = NonZeroUsize::new(len).ok_or_else(|| invalid("an empty shared map".into()))?;
        let name: &CStr = c"depot-fsproc-stream";
        let fd = memfd_create(
            name,
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )?;
        nix::unistd::ftruncate(&fd, i64::try_from(len).map_err(io::Error::other)?)?;
        fcntl(
            fd.as_raw_fd(),
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        let ptr = map(&fd, size, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE)?;
        Ok(SharedMap {
            ptr,
            len,
            writable: true,
            fd: Some(fd),
        })
    }

    /// The memory file that descriptor `fd` of process `owner` holds,
    /// mapped read-only, `len` bytes of it. Refused (`InvalidInput`) when
    /// it is not a memory file sealed against shrinking, or is smaller
    /// than `len`; never blocks on what the descriptor names (a FIFO is
    /// opened non-blocking, then refused).
    pub(crate) fn open(owner: u32, fd: i32, len: u64) -> io::Result<SharedMap> {
        if fd < 0 {
            return Err(invalid(format!("no descriptor {fd}")));
        }
        let size = usize::try_from(len)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| invalid(format!("a shared map of {len} bytes")))?;
        let path = format!("/proc/{owner}/fd/{fd}");
        let raw = nix::fcntl::open(
            path.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
            Mode::empty(),
        )?;
        // SAFETY: open just returned this descriptor; nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        // F_GET_SEALS fails (EINVAL) on anything but a memory file.
        let seals = fcntl(file.as_raw_fd(), FcntlArg::F_GET_SEALS)
            .map(SealFlag::from_bits_truncate)
            .map_err(|_| invalid(format!("{path} is not a memory file")))?;
        if !seals.contains(SealFlag::F_SEAL_SHRINK) {
            return Err(invalid(format!("{path} is not sealed against shrinking")));
        }
        let md = file.metadata()?;
        if !md.is_file() || md.len() < len {
            return Err(invalid(format!(
                "{path} holds {} bytes, fewer than the {len} to map",
                md.len()
            )));
        }
        let ptr = map(&file, size, ProtFlags::PROT_READ)?;
        Ok(SharedMap {
            ptr,
            len: size.get(),
            writable: false,
            fd: None,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The memory file's descriptor in this process, until
    /// [`close_fd`](Self::close_fd).
    pub(crate) fn raw_fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Closes the memory file's descriptor (the mapping stays): once the
    /// peer mapped it, it needs it no more.
    pub(crate) fn close_fd(&mut self) {
        self.fd = None;
    }

    /// The mapped bytes. The peer may write them meanwhile only where the
    /// protocol allows: depotd fills a range, then names it in a request,
    /// and fills it again only after the helper answered that request.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` bytes for as long as `self` lives, and
        // the file cannot shrink under it (sealed).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapped bytes, to fill (depotd's side only).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        assert!(self.writable, "a read-only shared map is never written");
        // SAFETY: as in `bytes`, and mapped writable.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

fn map(fd: impl AsFd, size: NonZeroUsize, prot: ProtFlags) -> io::Result<NonNull<u8>> {
    // SAFETY: a new shared mapping of a file, at an address the kernel
    // picks; nothing else refers to it yet.
    let ptr = unsafe {
        mmap(
            None,
            size,
            prot,
            MapFlags::MAP_SHARED | MapFlags::MAP_POPULATE,
            fd,
            0,
        )?
    };
    Ok(ptr.cast())
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are the mapping made in `map`, and no
        // slice of it outlives `self`.
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.len) } {
            tracing::warn!(error = %e, "munmap of a stream's shared map");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_map_is_seen_through_proc_by_its_peer() {
        let mut m = SharedMap::create(8192).unwrap();
        m.bytes_mut()[..5].copy_from_slice(b"hello");
        let fd = m.raw_fd().unwrap();
        let peer = SharedMap::open(std::process::id(), fd, 8192).unwrap();
        assert_eq!(&peer.bytes()[..5], b"hello");
        // The peer keeps its own mapping once the descriptor is closed.
        m.close_fd();
        m.bytes_mut()[..5].copy_from_slice(b"again");
        assert_eq!(&peer.bytes()[..5], b"again");
    }

    #[test]
    fn what_is_not_a_sealed_memory_file_of_the_size_is_refused() {
        let m = SharedMap::create(4096).unwrap();
        let me = std::process::id();
        let fd = m.raw_fd().unwrap();
        for (fd, len) in [(fd, 4097), (fd, 0), (-1, 4096)] {
            let e = SharedMap::open(me, fd, len).err().unwrap();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        }
        // A regular file, and a memfd without the seal.
        let f = tempfile::tempfile().unwrap();
        f.set_len(4096).unwrap();
        let e = SharedMap::open(me, f.as_raw_fd(), 4096).err().unwrap();
        assert!(e.to_string().contains("not a memory file"), "{e}");
        let unsealed = memfd_create(c"t", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&unsealed, 4096).unwrap();
        let e = SharedMap::open(me, unsealed.as_raw_fd(), 4096)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }
}
