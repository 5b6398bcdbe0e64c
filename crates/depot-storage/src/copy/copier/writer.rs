//! The writer: writes data runs and zeroes zero runs of the destination
//! in order (or skips them on a destination known to be zero), and keeps
//! the journal's checkpoints.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Mutex;

use super::chunk::Chunk;
use crate::copy::blkhash::BlockDigest;
use crate::copy::journal::JournalWriter;
use crate::copy::CopyError;

/// Zero ranges are zeroed on block devices in pieces of 128 MiB
/// (ovirt-imageio's `MAX_ZERO_SIZE`), so an abort is seen between pieces.
pub(super) const MAX_ZERO_OP: u64 = 128 * 1024 * 1024;

/// `_IO(0x12, 127)`: zero a byte range of a block device (offloaded to
/// WRITE ZEROES where the device supports it).
pub(super) const BLKZEROOUT: libc::c_ulong = 0x127f;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ZeroMode {
    /// The destination is known to read zeros: do nothing.
    Skip,
    /// A file: punch a hole (the range reads zeros and is freed).
    Punch,
    /// A file: `zero_range` (`ZERO_RANGE`, keeps the allocation).
    ZeroRange,
    /// A block device: `BLKZEROOUT`.
    BlockDevice,
}

#[derive(Debug, Default)]
pub(super) struct WriterStats {
    pub(super) copied: u64,
    pub(super) zeroed: u64,
    pub(super) skipped: u64,
    pub(super) end: u64,
}

pub(super) fn pwrite_full(
    file: &File,
    buf: &[u8],
    offset: u64,
    path: &Path,
) -> Result<(), CopyError> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done as u64;
        let err = |source| CopyError::Write {
            path: path.to_owned(),
            offset: at,
            len: (buf.len() - done) as u64,
            source,
        };
        match file.write_at(&buf[done..], at) {
            Ok(0) => return Err(err(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}

/// The destination side: the O_DIRECT fd, a buffered fd for an unaligned
/// tail, and how to zero.
pub(super) struct Dest<'a> {
    pub(super) file: &'a File,
    pub(super) path: &'a Path,
    /// Opened when the size is not a multiple of the alignment: the last
    /// partial piece goes through the page cache.
    pub(super) tail: Option<File>,
    pub(super) align: u64,
    pub(super) mode: ZeroMode,
}

impl Dest<'_> {
    pub(super) fn write(&self, buf: &[u8], offset: u64) -> Result<(), CopyError> {
        let direct = (buf.len() as u64 / self.align * self.align) as usize;
        pwrite_full(self.file, &buf[..direct], offset, self.path)?;
        if direct < buf.len() {
            let tail = self.tail.as_ref().expect("tail fd for an unaligned size");
            pwrite_full(tail, &buf[direct..], offset + direct as u64, self.path)?;
        }
        Ok(())
    }

    /// Makes `[offset, offset+len)` read zeros. Returns true if it wrote
    /// anything (false: skipped).
    pub(super) fn zero(&self, offset: u64, len: u64, stop: &AtomicBool) -> Result<bool, CopyError> {
        if self.mode == ZeroMode::Skip || len == 0 {
            return Ok(false);
        }
        // An unaligned tail is written as zeros through the page cache.
        let aligned = len / self.align * self.align;
        if aligned < len {
            static ZEROS: [u8; 4096] = [0; 4096];
            let n = (len - aligned) as usize;
            let tail = self.tail.as_ref().expect("tail fd for an unaligned size");
            let mut pos = 0;
            while pos < n {
                let k = (n - pos).min(ZEROS.len());
                pwrite_full(tail, &ZEROS[..k], offset + aligned + pos as u64, self.path)?;
                pos += k;
            }
        }
        let mut pos = 0;
        while pos < aligned {
            if stop.load(Ordering::Relaxed) {
                return Ok(true);
            }
            let n = (aligned - pos).min(MAX_ZERO_OP);
            let at = offset + pos;
            match self.mode {
                ZeroMode::Skip => unreachable!(),
                ZeroMode::ZeroRange => {
                    depot_os::fsutil::zero_range(self.file, at, n)?;
                }
                ZeroMode::Punch => match depot_os::fsutil::punch_hole(self.file, at, n) {
                    Ok(()) => {}
                    Err(e)
                        if matches!(
                            e.io_error().and_then(io::Error::raw_os_error),
                            Some(libc::EOPNOTSUPP | libc::ENOSYS)
                        ) =>
                    {
                        depot_os::fsutil::zero_range(self.file, at, n)?;
                    }
                    Err(e) => return Err(e.into()),
                },
                ZeroMode::BlockDevice => blkzeroout(self.file, self.path, at, n)?,
            }
            pos += n;
        }
        Ok(true)
    }

    pub(super) fn sync(&self) -> Result<(), CopyError> {
        if let Some(t) = &self.tail {
            t.sync_data()
                .map_err(|e| CopyError::io("fsync", self.path, e))?;
        }
        self.file
            .sync_data()
            .map_err(|e| CopyError::io("fsync", self.path, e))
    }
}

pub(super) fn blkzeroout(file: &File, path: &Path, offset: u64, len: u64) -> Result<(), CopyError> {
    let range: [u64; 2] = [offset, len];
    loop {
        // SAFETY: BLKZEROOUT reads a u64[2] {start, len} through the pointer,
        // which points at a live array; the fd is owned by `file`.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(CopyError::Write {
                path: path.to_owned(),
                offset,
                len,
                source: e,
            });
        }
    }
}

/// The writer: writes and zeroes in order, journals.
pub(super) struct Writer<'a> {
    pub(super) dest: Dest<'a>,
    pub(super) journal: Option<JournalWriter>,
    /// blkhash block size when digests are journaled.
    pub(super) block_size: Option<u64>,
    /// Where the hasher leaves the digests of completed blocks.
    pub(super) hashed: &'a Mutex<Vec<BlockDigest>>,
    /// Digests received and not yet journaled.
    pub(super) pending: Vec<BlockDigest>,
    pub(super) stats: WriterStats,
}

impl Writer<'_> {
    /// Records a checkpoint at what is written and hashed, if due (or
    /// `force`d).
    pub(super) fn checkpoint(&mut self, force: bool) -> Result<(), CopyError> {
        let Some(j) = self.journal.as_mut() else {
            return Ok(());
        };
        // The watermark is at most what is written.
        if !force && !j.due(self.stats.end) {
            return Ok(());
        }
        let (wm, ndig) = match self.block_size {
            Some(bs) => {
                self.pending
                    .append(&mut self.hashed.lock().expect("digest list poisoned"));
                let avail = j.blocks() + self.pending.len() as u64;
                let blocks = (self.stats.end / bs).min(avail);
                (blocks * bs, (blocks - j.blocks()) as usize)
            }
            None => (self.stats.end, 0),
        };
        if wm <= j.watermark() || !(force || j.due(wm)) {
            return Ok(());
        }
        // The destination first: the journal never claims data that is not
        // durable.
        self.dest.sync()?;
        j.checkpoint(wm, &self.pending[..ndig])?;
        self.pending.drain(..ndig);
        Ok(())
    }

    pub(super) fn run(
        &mut self,
        rx: Receiver<Chunk>,
        stop: &AtomicBool,
        done: &AtomicU64,
    ) -> Result<(), CopyError> {
        while let Ok(chunk) = rx.recv() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match &chunk {
                Chunk::Data(l) => {
                    for r in &l.runs {
                        let at = l.offset + r.start as u64;
                        if r.zero {
                            self.count_zero(at, r.len as u64, stop)?;
                        } else {
                            self.dest.write(l.bytes(r), at)?;
                            self.stats.copied += r.len as u64;
                        }
                    }
                }
                Chunk::Zero { offset, len } => self.count_zero(*offset, *len, stop)?,
            }
            let end = chunk.end();
            // The buffer may go back to the reader now.
            drop(chunk);
            if stop.load(Ordering::Relaxed) {
                // A zeroing loop may have stopped early: do not count it.
                break;
            }
            self.stats.end = end;
            done.store(end, Ordering::Relaxed);
            self.checkpoint(false)?;
        }
        Ok(())
    }

    pub(super) fn count_zero(
        &mut self,
        at: u64,
        len: u64,
        stop: &AtomicBool,
    ) -> Result<(), CopyError> {
        if self.dest.zero(at, len, stop)? {
            self.stats.zeroed += len;
        } else {
            self.stats.skipped += len;
        }
        Ok(())
    }
}
