//! The reader: the source opened for direct I/O, the pool of aligned
//! buffers, and the loop that reads the planned extents into them, finds
//! zeros and hands each chunk to the writer and the hasher.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;

use depot_os::{open_direct_data, AlignedBuf, DataPath};

use super::chunk::{Chunk, Loaded, Run};
use super::{round_up, POLL};
use crate::copy::blkhash::is_zero;
use crate::copy::extents::Extent;
use crate::copy::CopyError;

/// Zero detection looks at 64 KiB pieces of each buffer.
pub(super) const ZERO_GRAIN: usize = 64 * 1024;

/// Where zeros must be written (not skipped), zero runs inside a data
/// buffer shorter than this are written as data: one write is cheaper than
/// a write, a zeroing call and another write.
pub(super) const MIN_ZERO_RUN: usize = 1024 * 1024;

/// Hole ranges are handed on in pieces of at most 1 GiB (and zeroed in
/// smaller ones, see the writer), so an abort is seen between pieces.
pub(super) const MAX_ZERO_MSG: u64 = 1024 * 1024 * 1024;

/// The size of a transparent huge page on x86_64 (and the alignment the
/// buffers get when their size is a multiple of it).
pub(super) const HUGE_PAGE: usize = 2 * 1024 * 1024;

/// The size of an open file or block device (block devices report 0 in
/// `st_size`; seeking to the end works for both).
pub(super) fn size_of(file: &File, path: &Path) -> Result<u64, CopyError> {
    let mut f = file;
    f.seek(SeekFrom::End(0))
        .map_err(|e| CopyError::io("find the size of", path, e))
}

/// Reads up to `buf.len()` bytes at `offset`, looping on short reads; stops
/// at end of file (0, or a count off the alignment).
pub(super) fn pread_full(
    file: &File,
    buf: &mut [u8],
    offset: u64,
    align: usize,
) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                if done % align != 0 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Splits a buffer into data and zero runs, looking at `grain`-byte
/// pieces (a multiple of the I/O alignment); zero runs shorter than
/// `min_zero` become data.
pub(super) fn split_runs(buf: &[u8], grain: usize, min_zero: usize) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let push = |runs: &mut Vec<Run>, start: usize, len: usize, zero: bool| {
        if let Some(last) = runs.last_mut() {
            if last.zero == zero {
                last.len += len;
                return;
            }
        }
        runs.push(Run { start, len, zero });
    };
    for (i, piece) in buf.chunks(grain).enumerate() {
        push(&mut runs, i * grain, piece.len(), is_zero(piece));
    }
    if runs.len() == 1 {
        return runs;
    }
    let mut merged = Vec::with_capacity(runs.len());
    for r in runs {
        let zero = r.zero && r.len >= min_zero;
        push(&mut merged, r.start, r.len, zero);
    }
    merged
}

/// What the reader reads, and how it finds zeros.
pub(super) struct ReadPlan<'a> {
    pub(super) file: &'a File,
    pub(super) path: &'a Path,
    pub(super) plan: &'a [Extent],
    /// Buffer size: chunks end at its multiples, so that a buffer holds
    /// whole blkhash blocks.
    pub(super) chunk: usize,
    pub(super) align: usize,
    /// Zero detection: `split_runs(grain, min_zero)`.
    pub(super) grain: usize,
    pub(super) min_zero: usize,
}

/// The reader: sends the plan's extents in order to every consumer (the
/// writer and the hasher, or just the hasher), data read into pool
/// buffers. A buffer that is all zeros goes back at once and is sent as a
/// zero chunk. Returns when done, when a consumer is gone, or on `stop`.
pub(super) fn read_loop(
    r: &ReadPlan<'_>,
    pool: Receiver<AlignedBuf>,
    pool_tx: SyncSender<AlignedBuf>,
    outs: &[SyncSender<Chunk>],
    stop: &AtomicBool,
) -> Result<(), CopyError> {
    let send = |c: Chunk| outs.iter().all(|o| o.send(c.clone()).is_ok());
    for ext in r.plan {
        let end = ext.end();
        let mut off = ext.start;
        while off < end {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if ext.zero {
                let len = (end - off).min(MAX_ZERO_MSG);
                if !send(Chunk::Zero { offset: off, len }) {
                    return Ok(());
                }
                off += len;
                continue;
            }
            let mut buf = loop {
                match pool.recv_timeout(POLL) {
                    Ok(b) => break b,
                    Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => {}
                    Err(_) => return Ok(()),
                }
            };
            let next = (off / r.chunk as u64 + 1) * r.chunk as u64;
            let len = (end.min(next) - off) as usize;
            let rlen = round_up(len as u64, r.align as u64) as usize;
            let got = pread_full(r.file, &mut buf[..rlen], off, r.align).map_err(|source| {
                CopyError::Read {
                    path: r.path.to_owned(),
                    offset: off,
                    len: rlen,
                    source,
                }
            })?;
            if got < len {
                return Err(CopyError::SourceChanged {
                    path: r.path.to_owned(),
                    what: format!(
                        "read {got} bytes at offset {off} where {len} were expected: it shrank"
                    ),
                });
            }
            let runs = split_runs(&buf[..len], r.grain, r.min_zero);
            let chunk = if runs.len() == 1 && runs[0].zero {
                let _ = pool_tx.try_send(buf);
                Chunk::Zero {
                    offset: off,
                    len: len as u64,
                }
            } else {
                Chunk::Data(Arc::new(Loaded {
                    offset: off,
                    len,
                    runs,
                    buf: Some(buf),
                    pool: pool_tx.clone(),
                }))
            };
            if !send(chunk) {
                return Ok(());
            }
            off += len as u64;
        }
    }
    Ok(())
}

pub(super) struct Opened {
    pub(super) file: File,
    pub(super) size: u64,
    pub(super) meta: std::fs::Metadata,
}

pub(super) fn open_src(data: &(impl DataPath + ?Sized)) -> Result<Opened, CopyError> {
    let path = data.path();
    let file = open_direct_data(data, false)?;
    let meta = file
        .metadata()
        .map_err(|e| CopyError::io("stat", path, e))?;
    let size = size_of(&file, path)?;
    Ok(Opened { file, size, meta })
}

/// (size, mtime, mtime_nsec) of an open source, now.
pub(super) fn open_src_meta(file: &File, path: &Path) -> Result<(u64, i64, i64), CopyError> {
    let m = file
        .metadata()
        .map_err(|e| CopyError::io("stat", path, e))?;
    Ok((size_of(file, path)?, m.mtime(), m.mtime_nsec()))
}

/// The buffers of one copy. When the size allows, they are aligned to
/// 2 MiB and backed by transparent huge pages (see [`advise_huge`]).
pub(super) fn make_pool(
    n: usize,
    size: usize,
    align: usize,
) -> Result<(SyncSender<AlignedBuf>, Receiver<AlignedBuf>), CopyError> {
    let huge = size.is_multiple_of(HUGE_PAGE) && align <= HUGE_PAGE;
    let (tx, rx) = mpsc::sync_channel(n);
    for _ in 0..n {
        let mut buf = AlignedBuf::new(size, if huge { HUGE_PAGE } else { align })?;
        if huge {
            advise_huge(&mut buf);
        }
        tx.send(buf).expect("pool has room");
    }
    Ok((tx, rx))
}

/// Asks the kernel to back `buf` with 2 MiB huge pages, now
/// (`MADV_COLLAPSE`, Linux 6.1) and for good (`MADV_HUGEPAGE`, so that
/// khugepaged keeps them when THP is in `madvise` mode).
///
/// Why: an `O_DIRECT` request carries one segment per physically
/// contiguous piece of the buffer, and a virtio disk takes at most
/// `max_segments` of them (254 here). In 4 KiB pages an 8 MiB buffer is
/// 2,048 segments, so each read or write is split into requests of about
/// 0.5 to 1 MiB; in huge pages it is 4 segments and the requests are as
/// large as `max_sectors_kb` allows (4 MiB here). On this machine that
/// doubles the rate of reads and of copies (docs/copy.md). Failure (no
/// THP, fragmented memory) only costs that speed, so errors are ignored.
pub(super) fn advise_huge(buf: &mut AlignedBuf) {
    let len = buf.len();
    let ptr = buf.as_mut_ptr().cast::<libc::c_void>();
    // SAFETY: [ptr, ptr+len) is exactly the buffer's own live allocation,
    // borrowed mutably; both advices only change how its pages are backed
    // (the content is kept), never what the range holds or who owns it.
    unsafe {
        libc::madvise(ptr, len, libc::MADV_HUGEPAGE);
        libc::madvise(ptr, len, libc::MADV_COLLAPSE);
    }
}
