//! The raw-to-raw copier and the checksum reader (see the module docs of
//! [`super`] and docs/copy.md).
//!
//! Three threads, a fixed pool of aligned buffers. The reader hands each
//! buffer to the writer and to the hasher at once; they work on it at the
//! same time (both only read it), and it goes back to the pool when both
//! are done:
//!
//! ```text
//!            +--Chunk--> writer           (pwrite O_DIRECT, zero, checkpoint)
//!  reader ---+
//!  (pread O_DIRECT,      caller's thread  (blkhash, progress, abort)
//!   zero detection)      +--Chunk-->
//!    ^                                                           |
//!    +------ a buffer returns when the writer and the hasher have dropped it
//! ```
//!
//! So hashing is not a stage the data waits for: a copy runs at the speed
//! of its slower side, I/O or hash, not of their sum. The caller's
//! callbacks (`progress`, `abort`) are not `Sync`, so they are only called
//! on the caller's thread. The threads stop on a shared flag; every
//! blocking wait polls it, so an abort or an error on any side ends the
//! others within one buffer's I/O.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use depot_os::{open_direct_data, probe_alignment, AlignedBuf, DataPath};

use super::blkhash::{is_zero, BlkHash, BlockDigest, BlockHasher, Piece, BLOCK_SIZE};
use super::extents::{align_extents, extents, Extent};
use super::journal::{Found, Identity, Journal, JournalWriter};
use super::CopyError;

/// The default I/O size: 8 MiB, as ovirt-imageio's server uses; measured
/// here in docs/copy.md.
pub const DEFAULT_BUFFER_SIZE: usize = 8 * 1024 * 1024;

/// The default number of buffers in flight (one being read, one or two
/// being written and hashed, a spare); measured in docs/copy.md.
pub const DEFAULT_QUEUE_DEPTH: usize = 4;

/// Zero detection looks at 64 KiB pieces of each buffer.
const ZERO_GRAIN: usize = 64 * 1024;

/// Where zeros must be written (not skipped), zero runs inside a data
/// buffer shorter than this are written as data: one write is cheaper than
/// a write, a zeroing call and another write.
const MIN_ZERO_RUN: usize = 1024 * 1024;

/// Hole ranges are handed on in pieces of at most 1 GiB, and zeroed on
/// block devices in pieces of 128 MiB (ovirt-imageio's `MAX_ZERO_SIZE`),
/// so an abort is seen between pieces.
const MAX_ZERO_MSG: u64 = 1024 * 1024 * 1024;
const MAX_ZERO_OP: u64 = 128 * 1024 * 1024;

/// The size of a transparent huge page on x86_64 (and the alignment the
/// buffers get when their size is a multiple of it).
const HUGE_PAGE: usize = 2 * 1024 * 1024;

/// blake2b lanes of `hash_many` with AVX2: a lone buffer holding fewer whole
/// blkhash blocks than this is held until the next one arrives.
const HASH_LANES: u64 = 4;

/// How often a blocked thread looks at the stop flag, and the caller's
/// thread at the abort callback.
const POLL: Duration = Duration::from_millis(20);

/// `_IO(0x12, 127)`: zero a byte range of a block device (offloaded to
/// WRITE ZEROES where the device supports it).
const BLKZEROOUT: libc::c_ulong = 0x127f;

fn no_progress(_: u64, _: u64) {}
fn never_abort() -> bool {
    false
}

/// How to copy; `CopyOptions::default()` is a plain copy with the
/// checksum and verification on.
pub struct CopyOptions<'a> {
    /// Bytes per read and write (rounded up to the I/O alignment).
    pub buffer_size: usize,
    /// Buffers in flight between reader and writer, 2..=64.
    pub queue_depth: usize,
    /// Threads that may hash when the hasher falls behind (it then takes
    /// all the buffers waiting, and splits their blocks); 0: the CPUs, at
    /// most 4.
    pub hash_threads: usize,
    /// The destination reads as zeros (a new sparse file, a zeroed LV):
    /// holes and zero data are skipped, not written.
    pub dst_is_zero: bool,
    /// When zeros must be written to a file, punch holes (deallocate)
    /// instead of `ZERO_RANGE` (which keeps the space allocated).
    pub sparse: bool,
    /// Compute the blkhash of what was copied (returned in the result).
    pub checksum: bool,
    /// Read the destination back and compare its blkhash; implies
    /// `checksum`.
    pub verify: bool,
    /// Called on the caller's thread with (bytes written, total) after
    /// each batch of buffers hashed (a batch is what waited, up to
    /// `queue_depth` buffers), and every 20 ms while it waits. Done
    /// includes a resumed prefix.
    pub progress: &'a dyn Fn(u64, u64),
    /// Polled on the caller's thread at least every 20 ms; true stops the
    /// copy with [`CopyError::Aborted`].
    pub abort: &'a dyn Fn() -> bool,
    /// Journal progress there, and resume from it.
    pub journal: Option<&'a Journal>,
    /// Copy only the first `length` bytes of the source (a block volume's
    /// LV is whole extents, larger than the volume); `None`: all of it.
    /// Longer than the source is an error.
    pub length: Option<u64>,
}

impl Default for CopyOptions<'_> {
    fn default() -> Self {
        CopyOptions {
            buffer_size: DEFAULT_BUFFER_SIZE,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            hash_threads: 0,
            dst_is_zero: false,
            sparse: false,
            checksum: true,
            verify: true,
            progress: &no_progress,
            abort: &never_abort,
            journal: None,
            length: None,
        }
    }
}

/// What a copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResult {
    /// The source's size: bytes copied from offset 0.
    pub size: u64,
    /// The offset this run started at (a journal's watermark; 0 otherwise).
    pub resumed_from: u64,
    /// Data bytes written in this run.
    pub bytes_copied: u64,
    /// Bytes zeroed on the destination (holes and zero data).
    pub bytes_zeroed: u64,
    /// Bytes skipped because the destination is known to be zero there.
    pub bytes_skipped: u64,
    /// The blkhash of the source as copied, when asked.
    pub checksum: Option<BlkHash>,
    /// The destination was read back and matched the checksum.
    pub verified: bool,
}

/// How to compute a checksum ([`checksum_raw`]).
pub struct ChecksumOptions<'a> {
    pub block_size: u64,
    pub buffer_size: usize,
    pub queue_depth: usize,
    /// As in [`CopyOptions::hash_threads`].
    pub hash_threads: usize,
    pub progress: &'a dyn Fn(u64, u64),
    pub abort: &'a dyn Fn() -> bool,
}

impl Default for ChecksumOptions<'_> {
    fn default() -> Self {
        ChecksumOptions {
            block_size: BLOCK_SIZE,
            buffer_size: DEFAULT_BUFFER_SIZE,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            hash_threads: 0,
            progress: &no_progress,
            abort: &never_abort,
        }
    }
}

/// A buffer of source data, shared by the writer and the hasher. The
/// buffer goes back to the pool when the last of them drops it.
struct Loaded {
    offset: u64,
    len: usize,
    /// Data and zero runs of `buf[..len]`: zero runs are skipped or zeroed
    /// by the writer and declared as zeros to the hasher (not rescanned).
    runs: Vec<Run>,
    buf: Option<AlignedBuf>,
    pool: SyncSender<AlignedBuf>,
}

impl Loaded {
    fn bytes(&self, r: &Run) -> &[u8] {
        &self.buf.as_ref().expect("held until drop")[r.start..r.start + r.len]
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            // The pool has room for every buffer; it is gone only when the
            // reader is, and then the buffer is simply freed.
            let _ = self.pool.try_send(b);
        }
    }
}

/// A piece of the source, from the reader, in order.
#[derive(Clone)]
enum Chunk {
    Data(Arc<Loaded>),
    /// A hole, or a buffer of zeros: no data.
    Zero {
        offset: u64,
        len: u64,
    },
}

impl Chunk {
    fn end(&self) -> u64 {
        match self {
            Chunk::Data(l) => l.offset + l.len as u64,
            Chunk::Zero { offset, len } => offset + len,
        }
    }

    /// The chunk as the hasher takes it.
    fn pieces<'a>(&'a self, out: &mut Vec<Piece<'a>>) {
        match self {
            Chunk::Zero { len, .. } => out.push(Piece::Zero(*len)),
            Chunk::Data(l) => out.extend(l.runs.iter().map(|r| {
                if r.zero {
                    Piece::Zero(r.len as u64)
                } else {
                    Piece::Data(l.bytes(r))
                }
            })),
        }
    }
}

/// A run inside a data buffer: `[start, start+len)` relative to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: usize,
    len: usize,
    zero: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZeroMode {
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
struct WriterStats {
    copied: u64,
    zeroed: u64,
    skipped: u64,
    end: u64,
}

/// Threads that hash the blocks of one buffer: as asked, or the CPUs, at
/// most 4.
fn hash_threads(asked: usize) -> usize {
    match asked {
        0 => thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        n => n,
    }
}

fn round_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}

/// The size of an open file or block device (block devices report 0 in
/// `st_size`; seeking to the end works for both).
fn size_of(file: &File, path: &Path) -> Result<u64, CopyError> {
    let mut f = file;
    f.seek(SeekFrom::End(0))
        .map_err(|e| CopyError::io("find the size of", path, e))
}

/// Reads up to `buf.len()` bytes at `offset`, looping on short reads; stops
/// at end of file (0, or a count off the alignment).
fn pread_full(file: &File, buf: &mut [u8], offset: u64, align: usize) -> io::Result<usize> {
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

fn pwrite_full(file: &File, buf: &[u8], offset: u64, path: &Path) -> Result<(), CopyError> {
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

/// Splits a buffer into data and zero runs, looking at `grain`-byte
/// pieces (a multiple of the I/O alignment); zero runs shorter than
/// `min_zero` become data.
fn split_runs(buf: &[u8], grain: usize, min_zero: usize) -> Vec<Run> {
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
struct ReadPlan<'a> {
    file: &'a File,
    path: &'a Path,
    plan: &'a [Extent],
    /// Buffer size: chunks end at its multiples, so that a buffer holds
    /// whole blkhash blocks.
    chunk: usize,
    align: usize,
    /// Zero detection: `split_runs(grain, min_zero)`.
    grain: usize,
    min_zero: usize,
}

/// The reader: sends the plan's extents in order to every consumer (the
/// writer and the hasher, or just the hasher), data read into pool
/// buffers. A buffer that is all zeros goes back at once and is sent as a
/// zero chunk. Returns when done, when a consumer is gone, or on `stop`.
fn read_loop(
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

/// The destination side: the O_DIRECT fd, a buffered fd for an unaligned
/// tail, and how to zero.
struct Dest<'a> {
    file: &'a File,
    path: &'a Path,
    /// Opened when the size is not a multiple of the alignment: the last
    /// partial piece goes through the page cache.
    tail: Option<File>,
    align: u64,
    mode: ZeroMode,
}

impl Dest<'_> {
    fn write(&self, buf: &[u8], offset: u64) -> Result<(), CopyError> {
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
    fn zero(&self, offset: u64, len: u64, stop: &AtomicBool) -> Result<bool, CopyError> {
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

    fn sync(&self) -> Result<(), CopyError> {
        if let Some(t) = &self.tail {
            t.sync_data()
                .map_err(|e| CopyError::io("fsync", self.path, e))?;
        }
        self.file
            .sync_data()
            .map_err(|e| CopyError::io("fsync", self.path, e))
    }
}

fn blkzeroout(file: &File, path: &Path, offset: u64, len: u64) -> Result<(), CopyError> {
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
struct Writer<'a> {
    dest: Dest<'a>,
    journal: Option<JournalWriter>,
    /// blkhash block size when digests are journaled.
    block_size: Option<u64>,
    /// Where the hasher leaves the digests of completed blocks.
    hashed: &'a Mutex<Vec<BlockDigest>>,
    /// Digests received and not yet journaled.
    pending: Vec<BlockDigest>,
    stats: WriterStats,
}

impl Writer<'_> {
    /// Records a checkpoint at what is written and hashed, if due (or
    /// `force`d).
    fn checkpoint(&mut self, force: bool) -> Result<(), CopyError> {
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

    fn run(
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

    fn count_zero(&mut self, at: u64, len: u64, stop: &AtomicBool) -> Result<(), CopyError> {
        if self.dest.zero(at, len, stop)? {
            self.stats.zeroed += len;
        } else {
            self.stats.skipped += len;
        }
        Ok(())
    }
}

/// The caller's side of a pipeline: the hasher.
struct HashStep<'a> {
    rx: Receiver<Chunk>,
    /// At most this many chunks per hash call (the buffers in flight).
    max: usize,
    hasher: Option<&'a mut BlockHasher>,
    /// A lone buffer kept back until the next one (see `step`).
    held: Vec<Chunk>,
}

impl HashStep<'_> {
    /// Takes every chunk waiting (at least one, at most `max`) and hashes
    /// them in one call, so that their blocks fill the SIMD lanes (and, if
    /// the hasher fell behind, the hash threads). A lone 8 MiB buffer has
    /// only 2 blocks for 4 lanes, so it is held until the next chunk comes
    /// (or for one poll at most); it is written meanwhile, and holding one
    /// buffer cannot starve the reader, which has the others. Polls
    /// `abort` at least every [`POLL`]. Returns false when the chunks end
    /// (or stop is set), true to be called again; sets `aborted`.
    fn step(&mut self, abort: &dyn Fn() -> bool, aborted: &mut bool, stop: &AtomicBool) -> bool {
        if abort() {
            *aborted = true;
            return false;
        }
        let first = match self.rx.recv_timeout(POLL) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                let held = std::mem::take(&mut self.held);
                self.hash(held);
                return !stop.load(Ordering::Relaxed);
            }
            Err(RecvTimeoutError::Disconnected) => {
                let held = std::mem::take(&mut self.held);
                self.hash(held);
                return false;
            }
        };
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let was_held = !self.held.is_empty();
        let mut batch = std::mem::take(&mut self.held);
        batch.push(first);
        while batch.len() < self.max {
            match self.rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let lone = match batch.as_slice() {
            [Chunk::Data(l)] => (1..HASH_LANES).contains(&(l.len as u64 / BLOCK_SIZE)),
            _ => false,
        };
        if lone && !was_held && self.hasher.is_some() && self.max > 2 {
            self.held = batch;
            return true;
        }
        self.hash(batch);
        true
    }

    fn hash(&mut self, batch: Vec<Chunk>) {
        if let (Some(h), false) = (self.hasher.as_mut(), batch.is_empty()) {
            let mut pieces = Vec::new();
            for c in &batch {
                c.pieces(&mut pieces);
            }
            h.update_pieces(&pieces);
        }
    }
}

struct Opened {
    file: File,
    size: u64,
    meta: std::fs::Metadata,
}

fn open_src(data: &(impl DataPath + ?Sized)) -> Result<Opened, CopyError> {
    let path = data.path();
    let file = open_direct_data(data, false)?;
    let meta = file
        .metadata()
        .map_err(|e| CopyError::io("stat", path, e))?;
    let size = size_of(&file, path)?;
    Ok(Opened { file, size, meta })
}

fn check_options(buffer_size: usize, queue_depth: usize) -> Result<(), CopyError> {
    if buffer_size == 0 || buffer_size > 256 * 1024 * 1024 {
        return Err(CopyError::Invalid(format!(
            "buffer size {buffer_size} not in 1..=256 MiB"
        )));
    }
    if !(2..=64).contains(&queue_depth) {
        return Err(CopyError::Invalid(format!(
            "queue depth {queue_depth} not in 2..=64"
        )));
    }
    Ok(())
}

/// The buffers of one copy. When the size allows, they are aligned to
/// 2 MiB and backed by transparent huge pages (see [`advise_huge`]).
fn make_pool(
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
fn advise_huge(buf: &mut AlignedBuf) {
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

/// Copies the raw image `src` (file or block device) onto `dst` (an
/// existing file or block device at least as large), from offset 0 to the
/// source's size. Bytes of `dst` past the source's size are not touched.
///
/// The destination is fsynced before this returns Ok; with a journal, the
/// journal is removed then. On any error the destination holds a partial
/// copy and must not be used (the caller keeps it ILLEGAL); with a journal
/// a later call with the same journal resumes (see docs/copy.md).
///
/// Both ends are opened under their [`DataPath`] rule (a volume's data
/// never through a symlink); a plain `Path` has none.
pub fn copy_raw(
    src_data: &(impl DataPath + ?Sized),
    dst_data: &(impl DataPath + ?Sized),
    opts: CopyOptions<'_>,
) -> Result<CopyResult, CopyError> {
    let (src, dst) = (src_data.path(), dst_data.path());
    check_options(opts.buffer_size, opts.queue_depth)?;
    let s = open_src(src_data)?;
    let dfile = open_direct_data(dst_data, true)?;
    let dmeta = dfile
        .metadata()
        .map_err(|e| CopyError::io("stat", dst, e))?;
    if s.meta.dev() == dmeta.dev() && s.meta.ino() == dmeta.ino()
        || (s.meta.rdev() != 0 && s.meta.rdev() == dmeta.rdev())
    {
        return Err(CopyError::Invalid(format!(
            "{} and {} are the same file",
            src.display(),
            dst.display()
        )));
    }
    let size = match opts.length {
        None => s.size,
        Some(len) if len <= s.size => len,
        Some(len) => {
            return Err(CopyError::Invalid(format!(
                "{}: {len} bytes asked, the source has {}",
                src.display(),
                s.size
            )))
        }
    };
    let dst_size = size_of(&dfile, dst)?;
    if dst_size < size {
        return Err(CopyError::DestinationTooSmall {
            dst: dst.to_owned(),
            src_size: size,
            dst_size,
        });
    }
    let sa = probe_alignment(&s.file)?;
    let da = probe_alignment(&dfile)?;
    let align = [
        sa.mem_align,
        sa.offset_align,
        da.mem_align,
        da.offset_align,
        512,
    ]
    .into_iter()
    .max()
    .expect("not empty");
    let buffer_size = round_up(opts.buffer_size as u64, align as u64) as usize;
    let checksum = opts.checksum || opts.verify;
    let is_block = dmeta.file_type().is_block_device();

    // The journal: resume a matching one; a discarded one means an earlier,
    // different copy wrote here, so the destination is not zero any more.
    let mut dst_is_zero = opts.dst_is_zero;
    let mut start = 0u64;
    let mut digests = Vec::new();
    let mut journal_writer = None;
    if let Some(j) = opts.journal {
        let id = Identity {
            src: src.to_owned(),
            dst: dst.to_owned(),
            size,
            src_dev: s.meta.dev(),
            src_ino: s.meta.ino(),
            src_mtime: (s.meta.mtime(), s.meta.mtime_nsec()),
            dst_dev: dmeta.dev(),
            dst_ino: dmeta.ino(),
            dst_rdev: dmeta.rdev(),
            generation: j.generation(),
            block_size: if checksum { BLOCK_SIZE } else { 0 },
        };
        let (mut w, resume, found) = j.begin(&id, dst_is_zero)?;
        match found {
            Found::Discarded => {
                tracing::info!(journal = %j.path().display(), "discarded a copy journal of another copy");
                dst_is_zero = false;
            }
            // The destination read zeros when this copy began, and every
            // run of it wrote only source bytes at their own offsets: every
            // byte is still zero or the source's, so zero ranges may be
            // skipped (docs/copy.md, "Journal and crash guarantees").
            Found::Matching if resume.as_ref().is_some_and(|r| r.dst_zero) => {
                dst_is_zero = true;
            }
            _ => {}
        }
        if let Some(r) = resume {
            let wm = r.watermark;
            if wm <= size && (wm % align as u64 == 0 || wm == size) {
                start = wm;
                digests = r.digests;
                tracing::info!(journal = %j.path().display(), offset = start, "resuming copy");
            } else if wm > 0 {
                // Same copy, but the alignment changed: start over with a
                // fresh journal (what was written is still source data, so
                // dst_is_zero still holds).
                drop(w);
                j.remove()?;
                w = j.begin(&id, dst_is_zero)?.0;
            }
        }
        journal_writer = Some(w);
    }
    let mode = match (dst_is_zero, is_block, opts.sparse || opts.dst_is_zero) {
        (true, _, _) => ZeroMode::Skip,
        (false, true, _) => ZeroMode::BlockDevice,
        (false, false, true) => ZeroMode::Punch,
        (false, false, false) => ZeroMode::ZeroRange,
    };
    let tail = if size % align as u64 != 0 {
        Some(
            dst_data
                .open_with(OpenOptions::new().write(true))
                .map_err(|e| CopyError::io("open (buffered, for the tail)", dst, e))?,
        )
    } else {
        None
    };

    let raw =
        extents(&s.file, start, size).map_err(|e| CopyError::io("find extents of", src, e))?;
    let plan = align_extents(&raw, align as u64, start, size);

    let threads = hash_threads(opts.hash_threads);
    let journaled = journal_writer.is_some();
    let mut hasher = checksum.then(|| {
        let mut h = BlockHasher::resume(BLOCK_SIZE, &digests);
        h.record_digests(journaled);
        h.set_threads(threads);
        h
    });
    let grain = ZERO_GRAIN.max(align);
    let min_zero = if mode == ZeroMode::Skip {
        grain
    } else {
        MIN_ZERO_RUN.max(grain)
    };

    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(start);
    let hashed = Mutex::new(Vec::new());
    let mut aborted = false;
    let mut writer = Writer {
        dest: Dest {
            file: &dfile,
            path: dst,
            tail,
            align: align as u64,
            mode,
        },
        journal: journal_writer,
        block_size: checksum.then_some(BLOCK_SIZE),
        hashed: &hashed,
        pending: Vec::new(),
        stats: WriterStats {
            end: start,
            ..Default::default()
        },
    };
    let (pool_tx, pool_rx) = make_pool(opts.queue_depth, buffer_size, align)?;
    let read_plan = ReadPlan {
        file: &s.file,
        path: src,
        plan: &plan,
        chunk: buffer_size,
        align,
        grain,
        min_zero,
    };

    let (read_res, write_res) = thread::scope(|sc| {
        let (write_tx, write_rx) = mpsc::sync_channel::<Chunk>(opts.queue_depth);
        let (hash_tx, hash_rx) = mpsc::sync_channel::<Chunk>(opts.queue_depth);
        // Dropped when the writer ends: wakes the caller waiting for it.
        let (fin_tx, fin_rx) = mpsc::channel::<()>();
        let (stop_r, stop_w, done_w, rp) = (&stop, &stop, &done, &read_plan);
        let reader = sc.spawn(move || {
            let r = read_loop(rp, pool_rx, pool_tx, &[write_tx, hash_tx], stop_r);
            if r.is_err() {
                stop_r.store(true, Ordering::Relaxed);
            }
            r
        });
        let writer_ref = &mut writer;
        let writer_thread = sc.spawn(move || {
            let _fin = fin_tx;
            let r = writer_ref.run(write_rx, stop_w, done_w);
            if r.is_err() {
                stop_w.store(true, Ordering::Relaxed);
            }
            r
        });

        // Hash everything the reader sends, then wait for the writer; the
        // callbacks run here, on the caller's thread.
        let mut hs = HashStep {
            rx: hash_rx,
            max: opts.queue_depth,
            hasher: hasher.as_mut(),
            held: Vec::new(),
        };
        // Blocks built from pieces wait for a batch before they are
        // hashed, but a checkpoint (due every `interval`) needs their
        // digests: when the completed blocks reach the next checkpoint,
        // the waiting ones are hashed at once (one short batch per
        // interval).
        let interval = opts.journal.map_or(u64::MAX, Journal::interval);
        let mut next_due = start.saturating_add(interval);
        while hs.step(opts.abort, &mut aborted, &stop) {
            if let Some(h) = hs.hasher.as_mut().filter(|_| journaled) {
                if h.position() / BLOCK_SIZE * BLOCK_SIZE >= next_due {
                    h.flush();
                    next_due = (h.blocks() * BLOCK_SIZE).saturating_add(interval);
                }
                let d = h.take_digests();
                if !d.is_empty() {
                    hashed.lock().expect("digest list poisoned").extend(d);
                }
            }
            (opts.progress)(done.load(Ordering::Relaxed), size);
        }
        // Buffers go back; the reader, if still sending, sees the end.
        drop(hs);
        while !aborted {
            match fin_rx.recv_timeout(POLL) {
                Err(RecvTimeoutError::Timeout) => {
                    aborted = (opts.abort)();
                    (opts.progress)(done.load(Ordering::Relaxed), size);
                }
                _ => break,
            }
        }
        if aborted {
            stop.store(true, Ordering::Relaxed);
        }
        let w = writer_thread.join().expect("copy writer panicked");
        let r = reader.join().expect("copy reader panicked");
        (r, w)
    });

    // Record what is written and hashed, even after an abort or an error.
    if let Some(h) = hasher.as_mut().filter(|_| journaled) {
        h.flush();
        hashed
            .lock()
            .expect("digest list poisoned")
            .extend(h.take_digests());
    }
    let write_res = write_res.and(writer.checkpoint(true));

    if aborted {
        return Err(CopyError::Aborted);
    }
    // The writer's error is the cause when both failed (the reader then
    // only saw the stop).
    write_res?;
    read_res?;
    let stats = std::mem::take(&mut writer.stats);
    (opts.progress)(stats.end, size);
    if stats.end != size {
        // Only possible when a thread stopped without an error.
        return Err(CopyError::Invalid(format!(
            "copy stopped at offset {} of {size}",
            stats.end
        )));
    }

    // A source that changed while it was copied gives a copy of nothing.
    let now = open_src_meta(&s.file, src)?;
    if now.0 != s.size || (now.1, now.2) != (s.meta.mtime(), s.meta.mtime_nsec()) {
        return Err(CopyError::SourceChanged {
            path: src.to_owned(),
            what: format!(
                "size {} -> {}, mtime {}.{:09} -> {}.{:09}",
                s.size,
                now.0,
                s.meta.mtime(),
                s.meta.mtime_nsec(),
                now.1,
                now.2
            ),
        });
    }
    if let Some(t) = writer.dest.tail.take() {
        t.sync_all().map_err(|e| CopyError::io("fsync", dst, e))?;
    }
    drop(writer);
    depot_os::sync_and_close(dfile)?;

    let checksum = hasher.map(BlockHasher::finish);
    let mut verified = false;
    if opts.verify {
        let expected = checksum.as_ref().expect("verify implies checksum");
        let actual = checksum_raw(
            dst_data,
            size,
            &ChecksumOptions {
                block_size: BLOCK_SIZE,
                buffer_size: opts.buffer_size,
                queue_depth: opts.queue_depth,
                hash_threads: opts.hash_threads,
                progress: &no_progress,
                abort: opts.abort,
            },
        )?;
        if &actual != expected {
            // The journal would resume over bad data: drop it.
            if let Some(j) = opts.journal {
                j.remove()?;
            }
            return Err(CopyError::ChecksumMismatch {
                path: dst.to_owned(),
                expected: Box::new(expected.clone()),
                actual: Box::new(actual),
            });
        }
        verified = true;
    }
    if let Some(j) = opts.journal {
        j.remove()?;
    }
    Ok(CopyResult {
        size,
        resumed_from: start,
        bytes_copied: stats.copied,
        bytes_zeroed: stats.zeroed,
        bytes_skipped: stats.skipped,
        checksum,
        verified,
    })
}

/// (size, mtime, mtime_nsec) of an open source, now.
fn open_src_meta(file: &File, path: &Path) -> Result<(u64, i64, i64), CopyError> {
    let m = file
        .metadata()
        .map_err(|e| CopyError::io("stat", path, e))?;
    Ok((size_of(file, path)?, m.mtime(), m.mtime_nsec()))
}

/// The blkhash of the first `size` bytes of `path` (file or block device),
/// read with `O_DIRECT`, holes not read. Fails with
/// [`CopyError::SourceChanged`] if the file is shorter than `size`.
pub fn checksum_raw(
    data: &(impl DataPath + ?Sized),
    size: u64,
    opts: &ChecksumOptions<'_>,
) -> Result<BlkHash, CopyError> {
    let path = data.path();
    check_options(opts.buffer_size, opts.queue_depth)?;
    if !(1..=super::blkhash::MAX_BLOCK_SIZE).contains(&opts.block_size) {
        return Err(CopyError::Invalid(format!(
            "block size {} not in 1..=16 MiB",
            opts.block_size
        )));
    }
    let s = open_src(data)?;
    if s.size < size {
        return Err(CopyError::SourceChanged {
            path: path.to_owned(),
            what: format!("it has {} bytes, fewer than {size}", s.size),
        });
    }
    let a = probe_alignment(&s.file)?;
    let align = a.mem_align.max(a.offset_align).max(512);
    let buffer_size = round_up(opts.buffer_size as u64, align as u64) as usize;
    let raw = extents(&s.file, 0, size).map_err(|e| CopyError::io("find extents of", path, e))?;
    let plan = align_extents(&raw, align as u64, 0, size);
    let mut hasher = BlockHasher::new(opts.block_size);
    hasher.set_threads(hash_threads(opts.hash_threads));
    let grain = ZERO_GRAIN.max(align);
    let read_plan = ReadPlan {
        file: &s.file,
        path,
        plan: &plan,
        chunk: buffer_size,
        align,
        grain,
        min_zero: grain,
    };
    let stop = AtomicBool::new(false);
    let (pool_tx, pool_rx) = make_pool(opts.queue_depth, buffer_size, align)?;
    let mut aborted = false;
    let read_res = thread::scope(|sc| {
        let (tx, rx) = mpsc::sync_channel::<Chunk>(opts.queue_depth);
        let (rp, stop_r) = (&read_plan, &stop);
        let reader = sc.spawn(move || read_loop(rp, pool_rx, pool_tx, &[tx], stop_r));
        let mut hs = HashStep {
            rx,
            max: opts.queue_depth,
            hasher: Some(&mut hasher),
            held: Vec::new(),
        };
        while hs.step(opts.abort, &mut aborted, &stop) {
            let pos = hs.hasher.as_ref().map_or(0, |h| h.position());
            (opts.progress)(pos, size);
        }
        stop.store(true, Ordering::Relaxed);
        drop(hs);
        reader.join().expect("checksum reader panicked")
    });
    if aborted {
        return Err(CopyError::Aborted);
    }
    read_res?;
    if hasher.position() != size {
        return Err(CopyError::Invalid(format!(
            "checksum stopped at offset {} of {size}",
            hasher.position()
        )));
    }
    Ok(hasher.finish())
}

/// Reads `dst` back (the first `size` bytes) and compares its blkhash with
/// `expected` (whose block size is used).
pub fn verify_raw(
    dst_data: &(impl DataPath + ?Sized),
    size: u64,
    expected: &BlkHash,
) -> Result<(), CopyError> {
    let dst = dst_data.path();
    if expected.algorithm != super::blkhash::ALGORITHM {
        return Err(CopyError::Invalid(format!(
            "checksum algorithm {} (only blake2b)",
            expected.algorithm
        )));
    }
    let actual = checksum_raw(
        dst_data,
        size,
        &ChecksumOptions {
            block_size: expected.block_size,
            ..Default::default()
        },
    )?;
    if &actual != expected {
        return Err(CopyError::ChecksumMismatch {
            path: dst.to_owned(),
            expected: Box::new(expected.clone()),
            actual: Box::new(actual),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::testutil::python_blkhash;
    use std::cell::Cell;
    use std::fs;
    use std::path::PathBuf;
    use std::process::Command;
    use std::time::Instant;

    const MIB: u64 = 1024 * 1024;

    /// Non-repeating bytes, fast even in a debug build.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(len);
        v
    }

    fn rw(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    /// A sparse source: data pieces at the given (offset, len), holes
    /// elsewhere, plus `zero_written` ranges written with zeros.
    fn make_src(path: &Path, size: u64, data: &[(u64, u64)], zero_written: &[(u64, u64)]) {
        let f = rw(path);
        f.set_len(size).unwrap();
        for (i, &(off, len)) in data.iter().enumerate() {
            f.write_all_at(&noise(len as usize, i as u64 + 1), off)
                .unwrap();
        }
        for &(off, len) in zero_written {
            f.write_all_at(&vec![0u8; len as usize], off).unwrap();
        }
        f.sync_all().unwrap();
    }

    fn make_dst(path: &Path, size: u64) {
        rw(path).set_len(size).unwrap();
    }

    /// First `size` bytes equal.
    fn same(a: &Path, b: &Path, size: u64) -> bool {
        let mut fa = File::open(a).unwrap();
        let mut fb = File::open(b).unwrap();
        let mut ba = vec![0u8; MIB as usize];
        let mut bb = vec![0u8; MIB as usize];
        let mut left = size;
        while left > 0 {
            let n = left.min(MIB) as usize;
            io::Read::read_exact(&mut fa, &mut ba[..n]).unwrap();
            io::Read::read_exact(&mut fb, &mut bb[..n]).unwrap();
            if ba[..n] != bb[..n] {
                return false;
            }
            left -= n as u64;
        }
        true
    }

    fn allocated(path: &Path) -> u64 {
        fs::metadata(path).unwrap().blocks() * 512
    }

    fn check_python(path: &Path, size: u64, got: &BlkHash) {
        let py = python_blkhash(path, size, BLOCK_SIZE);
        assert_eq!(got.checksum, py, "python reference");
    }

    fn opts<'a>() -> CopyOptions<'a> {
        CopyOptions::default()
    }

    #[test]
    fn split_runs_finds_zero_runs() {
        let g = ZERO_GRAIN;
        let mut buf = noise(16 * g, 1);
        buf[2 * g..6 * g].fill(0); // 4 grains of zeros
        buf[8 * g..9 * g].fill(0); // 1 grain
        let r = split_runs(&buf, g, g);
        assert_eq!(
            r,
            vec![
                Run {
                    start: 0,
                    len: 2 * g,
                    zero: false
                },
                Run {
                    start: 2 * g,
                    len: 4 * g,
                    zero: true
                },
                Run {
                    start: 6 * g,
                    len: 2 * g,
                    zero: false
                },
                Run {
                    start: 8 * g,
                    len: g,
                    zero: true
                },
                Run {
                    start: 9 * g,
                    len: 7 * g,
                    zero: false
                },
            ]
        );
        // With a 4-grain minimum the single-grain run is written as data.
        let r = split_runs(&buf, g, 4 * g);
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[1],
            Run {
                start: 2 * g,
                len: 4 * g,
                zero: true
            }
        );
        // All zeros: one zero run, even if short; a short unaligned tail.
        assert_eq!(
            split_runs(&vec![0u8; 1000], g, 4 * g),
            vec![Run {
                start: 0,
                len: 1000,
                zero: true
            }]
        );
    }

    #[test]
    fn sparse_source_to_zero_destination_keeps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        // 37 MiB + 8 KiB: a short last blkhash block; data in the middle
        // of blocks, across a block boundary, and 6 MiB of written zeros.
        let size = 37 * MIB + 8192;
        let data = [(MIB, 3 * MIB), (7 * MIB + 4096, 2 * MIB), (37 * MIB, 8192)];
        make_src(&src, size, &data, &[(20 * MIB, 6 * MIB)]);
        make_dst(&dst, size);
        let progress_calls = Cell::new(0u32);
        let last = Cell::new((0u64, 0u64));
        let progress = |d: u64, t: u64| {
            progress_calls.set(progress_calls.get() + 1);
            assert!(d >= last.get().0, "progress goes forward");
            last.set((d, t));
        };
        let res = copy_raw(
            &src,
            &dst,
            CopyOptions {
                dst_is_zero: true,
                progress: &progress,
                ..opts()
            },
        )
        .unwrap();
        assert!(same(&src, &dst, size));
        assert_eq!(fs::metadata(&dst).unwrap().len(), size);
        let data_bytes: u64 = data.iter().map(|d| d.1).sum();
        assert_eq!(res.bytes_copied, data_bytes);
        assert_eq!(res.bytes_zeroed, 0);
        assert_eq!(res.bytes_skipped, size - data_bytes);
        assert!(res.verified);
        assert_eq!(last.get(), (size, size));
        assert!(progress_calls.get() >= 3);
        // Holes stay holes, and the written zeros were not written.
        let alloc = allocated(&dst);
        assert!(alloc <= data_bytes + 64 * 1024, "allocated {alloc}");
        assert!(allocated(&src) >= data_bytes + 6 * MIB);
        let sum = res.checksum.unwrap();
        check_python(&src, size, &sum);
        assert_eq!(sum.block_size, BLOCK_SIZE);
        verify_raw(&dst, size, &sum).unwrap();
    }

    #[test]
    fn preallocated_source_over_garbage_is_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let size = 24 * MIB;
        // Fully written: data, then 10 MiB of zeros, then data.
        let f = rw(&src);
        f.write_all_at(&noise(8 * MIB as usize, 3), 0).unwrap();
        f.write_all_at(&vec![0u8; 10 * MIB as usize], 8 * MIB)
            .unwrap();
        f.write_all_at(&noise(6 * MIB as usize, 4), 18 * MIB)
            .unwrap();
        f.sync_all().unwrap();
        drop(f);
        // A preallocated destination full of garbage, larger than the source.
        fs::write(&dst, vec![0xEEu8; (size + MIB) as usize]).unwrap();
        let before = allocated(&dst);
        let res = copy_raw(&src, &dst, opts()).unwrap();
        assert!(same(&src, &dst, size));
        // The byte past the source's size is untouched.
        let tail = fs::read(&dst).unwrap();
        assert!(tail[size as usize..].iter().all(|&b| b == 0xEE));
        assert_eq!(res.bytes_copied, 14 * MIB);
        assert_eq!(res.bytes_zeroed, 10 * MIB);
        assert_eq!(res.bytes_skipped, 0);
        // ZERO_RANGE keeps the allocation.
        assert!(allocated(&dst) >= before - 64 * 1024);
        check_python(&src, size, res.checksum.as_ref().unwrap());

        // sparse: zeros are punched out instead.
        fs::write(&dst, vec![0xEEu8; size as usize]).unwrap();
        let res = copy_raw(
            &src,
            &dst,
            CopyOptions {
                sparse: true,
                ..opts()
            },
        )
        .unwrap();
        assert!(same(&src, &dst, size));
        assert_eq!(res.bytes_zeroed, 10 * MIB);
        assert!(
            allocated(&dst) <= 14 * MIB + 64 * 1024,
            "{}",
            allocated(&dst)
        );
    }

    #[test]
    fn fallocated_source_reads_as_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let size = 16 * MIB;
        let f = rw(&src);
        depot_os::fsutil::fallocate(&f, 0, size).unwrap();
        f.write_all_at(&noise(MIB as usize, 5), 4 * MIB).unwrap();
        f.sync_all().unwrap();
        drop(f);
        make_dst(&dst, size);
        let res = copy_raw(
            &src,
            &dst,
            CopyOptions {
                dst_is_zero: true,
                ..opts()
            },
        )
        .unwrap();
        assert!(same(&src, &dst, size));
        assert_eq!(res.bytes_copied, MIB);
        assert!(allocated(&dst) <= MIB + 64 * 1024);
        check_python(&src, size, res.checksum.as_ref().unwrap());
    }

    #[test]
    fn unaligned_size_and_empty_source() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let size = 10 * MIB + 1000;
        fs::write(&src, noise(size as usize, 6)).unwrap();
        fs::write(&dst, vec![0xAAu8; size as usize]).unwrap();
        let res = copy_raw(&src, &dst, opts()).unwrap();
        assert!(same(&src, &dst, size));
        assert_eq!(res.bytes_copied, size);
        check_python(&src, size, res.checksum.as_ref().unwrap());

        // A zero unaligned tail over garbage is zeroed.
        let f = rw(&src);
        f.write_all_at(&[0u8; 1000], 10 * MIB).unwrap();
        drop(f);
        fs::write(&dst, vec![0xAAu8; size as usize]).unwrap();
        copy_raw(&src, &dst, opts()).unwrap();
        assert!(same(&src, &dst, size));

        let empty = dir.path().join("empty");
        fs::write(&empty, b"").unwrap();
        let res = copy_raw(&empty, &dst, opts()).unwrap();
        assert_eq!(res.size, 0);
        assert_eq!(
            res.checksum.unwrap().checksum,
            "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8"
        );
    }

    #[test]
    fn no_checksum_no_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        make_src(&src, 8 * MIB, &[(0, MIB)], &[]);
        make_dst(&dst, 8 * MIB);
        let res = copy_raw(
            &src,
            &dst,
            CopyOptions {
                checksum: false,
                verify: false,
                dst_is_zero: true,
                ..opts()
            },
        )
        .unwrap();
        assert!(res.checksum.is_none());
        assert!(!res.verified);
        assert!(same(&src, &dst, 8 * MIB));
    }

    #[test]
    fn verify_detects_one_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let size = 12 * MIB;
        make_src(&src, size, &[(MIB, 9 * MIB)], &[]);
        make_dst(&dst, size);
        let sum = copy_raw(&src, &dst, opts()).unwrap().checksum.unwrap();
        verify_raw(&dst, size, &sum).unwrap();
        for at in [5 * MIB + 77, 11 * MIB] {
            // In data, then in a hole.
            let f = rw(&dst);
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] ^ 1], at).unwrap();
            f.sync_all().unwrap();
            let err = verify_raw(&dst, size, &sum).unwrap_err();
            assert!(matches!(err, CopyError::ChecksumMismatch { .. }), "{err}");
            f.write_all_at(&b, at).unwrap();
            f.sync_all().unwrap();
            verify_raw(&dst, size, &sum).unwrap();
        }
    }

    #[test]
    fn destination_too_small() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        make_src(&src, 8 * MIB, &[(0, MIB)], &[]);
        make_dst(&dst, 8 * MIB - 4096);
        let err = copy_raw(&src, &dst, opts()).unwrap_err();
        assert!(
            matches!(err, CopyError::DestinationTooSmall { src_size, dst_size, .. }
                if src_size == 8 * MIB && dst_size == 8 * MIB - 4096),
            "{err}"
        );
        // Same file.
        let err = copy_raw(&src, &src, opts()).unwrap_err();
        assert!(matches!(err, CopyError::Invalid(_)), "{err}");
    }

    #[test]
    fn source_that_grows_or_shrinks_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let size = 32 * MIB;
        for grow in [true, false] {
            fs::write(&src, noise(size as usize, 7)).unwrap();
            make_dst(&dst, 2 * size);
            let changed = Cell::new(false);
            let progress = |_: u64, _: u64| {
                if !changed.replace(true) {
                    let f = rw(&src);
                    if grow {
                        f.write_all_at(b"more", size).unwrap();
                    } else {
                        f.set_len(4 * MIB).unwrap();
                    }
                }
            };
            let err = copy_raw(
                &src,
                &dst,
                CopyOptions {
                    buffer_size: MIB as usize,
                    progress: &progress,
                    ..opts()
                },
            )
            .unwrap_err();
            assert!(
                matches!(err, CopyError::SourceChanged { .. }),
                "grow={grow}: {err}"
            );
        }
    }

    /// Aborts once the copy has passed `at` bytes; records when.
    struct AbortAt {
        at: u64,
        done: Cell<u64>,
        when: Cell<Option<Instant>>,
    }

    impl AbortAt {
        fn new(at: u64) -> Self {
            AbortAt {
                at,
                done: Cell::new(0),
                when: Cell::new(None),
            }
        }
        fn progress(&self, d: u64, _: u64) {
            self.done.set(d);
        }
        fn abort(&self) -> bool {
            if self.done.get() >= self.at {
                if self.when.get().is_none() {
                    self.when.set(Some(Instant::now()));
                }
                return true;
            }
            false
        }
    }

    #[test]
    fn abort_then_resume_from_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let size = 40 * MIB + 4096;
        make_src(
            &src,
            size,
            &[(0, 18 * MIB), (26 * MIB, 14 * MIB + 4096)],
            &[],
        );
        make_dst(&dst, size);
        let journal = Journal::new(dir.path().join("copy.journal"), 3).with_interval(4 * MIB);

        let a = AbortAt::new(16 * MIB);
        let progress = |d, t| a.progress(d, t);
        let abort = || a.abort();
        let err = copy_raw(
            &src,
            &dst,
            CopyOptions {
                dst_is_zero: true,
                buffer_size: MIB as usize,
                progress: &progress,
                abort: &abort,
                journal: Some(&journal),
                ..opts()
            },
        )
        .unwrap_err();
        let took = a.when.get().unwrap().elapsed();
        assert!(matches!(err, CopyError::Aborted), "{err}");
        assert!(took < Duration::from_secs(1), "abort took {took:?}");
        let st = journal.state().expect("journal left behind");
        assert!(st.watermark >= 12 * MIB && st.watermark < size, "{st:?}");
        assert_eq!(st.watermark % BLOCK_SIZE, 0);
        assert_eq!(st.digests as u64, st.watermark / BLOCK_SIZE);

        // Resume: starts at the watermark, copies the rest, right checksum.
        let res = copy_raw(
            &src,
            &dst,
            CopyOptions {
                dst_is_zero: true,
                journal: Some(&journal),
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(res.resumed_from, st.watermark);
        let data = 32 * MIB + 4096;
        assert!(res.bytes_copied < data, "{res:?}");
        assert_eq!(res.bytes_copied + res.bytes_skipped, size - st.watermark);
        assert!(res.verified);
        assert!(same(&src, &dst, size));
        check_python(&src, size, res.checksum.as_ref().unwrap());
        assert!(!journal.exists(), "journal removed after success");
    }

    #[test]
    fn resume_keeps_skipping_holes_of_a_destination_that_began_zero() {
        // The engine passes dst_is_zero only while the destination has
        // nothing allocated; after a crash it has data, so the resumed run
        // is called with dst_is_zero false. The journal remembers that the
        // copy began on zeros: the holes after the watermark are skipped
        // (not zeroed, not allocated), and the result is still exact.
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let size = 48 * MIB;
        make_src(
            &src,
            size,
            &[(0, 12 * MIB), (20 * MIB, 2 * MIB), (40 * MIB, MIB)],
            &[(30 * MIB, 4 * MIB)],
        );
        make_dst(&dst, size);
        let journal = Journal::new(dir.path().join("j"), 5).with_interval(4 * MIB);
        let a = AbortAt::new(8 * MIB);
        let (p, ab) = (|d, t| a.progress(d, t), || a.abort());
        let err = copy_raw(
            &src,
            &dst,
            CopyOptions {
                dst_is_zero: true,
                buffer_size: MIB as usize,
                progress: &p,
                abort: &ab,
                journal: Some(&journal),
                ..opts()
            },
        )
        .unwrap_err();
        assert!(matches!(err, CopyError::Aborted), "{err}");
        let st = journal.state().unwrap();
        assert!(st.dst_zero && st.watermark < 20 * MIB, "{st:?}");
        let res = copy_raw(
            &src,
            &dst,
            CopyOptions {
                dst_is_zero: false,
                journal: Some(&journal),
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(res.resumed_from, st.watermark);
        assert_eq!(res.bytes_zeroed, 0, "{res:?}");
        assert!(res.bytes_skipped >= 30 * MIB - 12 * MIB, "{res:?}");
        assert!(res.verified);
        assert!(same(&src, &dst, size));
        assert!(
            allocated(&dst) <= 15 * MIB + 64 * 1024,
            "{}",
            allocated(&dst)
        );
        check_python(&src, size, res.checksum.as_ref().unwrap());

        // Without the journal the same call must zero the holes: nothing
        // says the destination is zero any more.
        let res = copy_raw(&src, &dst, opts()).unwrap();
        assert!(res.bytes_zeroed >= 30 * MIB, "{res:?}");
        assert!(same(&src, &dst, size));
    }

    #[test]
    fn resume_without_checksum_and_journal_of_another_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, dst) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("dst"),
        );
        let size = 32 * MIB;
        make_src(&a, size, &[(0, size)], &[]);
        // b: mostly holes where a has data.
        make_src(&b, size, &[(2 * MIB, MIB)], &[]);
        make_dst(&dst, size);
        let journal = Journal::new(dir.path().join("j"), 1).with_interval(2 * MIB);
        let stop = AbortAt::new(12 * MIB);
        let (p, ab) = (|d, t| stop.progress(d, t), || stop.abort());
        let no_sum = |progress: &'static dyn Fn(u64, u64)| CopyOptions {
            checksum: false,
            verify: false,
            dst_is_zero: true,
            buffer_size: MIB as usize,
            progress,
            ..opts()
        };
        let err = copy_raw(
            &a,
            &dst,
            CopyOptions {
                progress: &p,
                abort: &ab,
                journal: Some(&journal),
                ..no_sum(&no_progress)
            },
        )
        .unwrap_err();
        assert!(matches!(err, CopyError::Aborted));
        let wm = journal.state().unwrap().watermark;
        assert!(wm >= 10 * MIB, "{wm}");

        // The same journal for a copy of b: discarded, and the destination
        // (which now holds part of a) is no longer taken as zero.
        let res = copy_raw(
            &b,
            &dst,
            CopyOptions {
                journal: Some(&journal),
                ..no_sum(&no_progress)
            },
        )
        .unwrap();
        assert_eq!(res.resumed_from, 0);
        assert!(res.bytes_zeroed >= size - MIB, "{res:?}");
        assert!(same(&b, &dst, size));
        assert!(!journal.exists());

        // Resume without a checksum: any aligned watermark.
        make_dst(&dst, size);
        let stop = AbortAt::new(5 * MIB);
        let (p, ab) = (|d, t| stop.progress(d, t), || stop.abort());
        copy_raw(
            &a,
            &dst,
            CopyOptions {
                progress: &p,
                abort: &ab,
                journal: Some(&journal),
                ..no_sum(&no_progress)
            },
        )
        .unwrap_err();
        let wm = journal.state().unwrap().watermark;
        let res = copy_raw(
            &a,
            &dst,
            CopyOptions {
                journal: Some(&journal),
                ..no_sum(&no_progress)
            },
        )
        .unwrap();
        assert_eq!(res.resumed_from, wm);
        assert_eq!(res.bytes_copied, size - wm);
        assert!(same(&a, &dst, size));
    }

    /// The child of `kill_9_then_resume`: copies slowly with a journal
    /// until it is killed. Not a test of its own: it is ignored, so no
    /// tier runs it (tests/run never passes `--ignored`), and run without
    /// the parent's directory it fails instead of passing.
    #[test]
    #[ignore = "run by kill_9_then_resume in a child process"]
    fn crash_child() {
        let dir = std::env::var("DEPOT_CRASH_DIR").expect(
            "crash_child is the child process of kill_9_then_resume, which sets \
             DEPOT_CRASH_DIR: run kill_9_then_resume instead",
        );
        let dir = PathBuf::from(dir);
        let journal = Journal::new(dir.join("journal"), 9).with_interval(2 * MIB);
        // The hasher (the caller's thread) takes at most 2 buffers per
        // step, and the reader waits for it: 40 MiB take 1 s at least.
        let slow = |_: u64, _: u64| thread::sleep(Duration::from_millis(50));
        let _ = copy_raw(
            &dir.join("src"),
            &dir.join("dst"),
            CopyOptions {
                dst_is_zero: true,
                buffer_size: MIB as usize,
                queue_depth: 2,
                progress: &slow,
                journal: Some(&journal),
                ..opts()
            },
        );
        panic!("the parent should have killed this copy");
    }

    #[test]
    fn kill_9_then_resume() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let size = 40 * MIB;
        make_src(&src, size, &[(0, 12 * MIB), (16 * MIB, 24 * MIB)], &[]);
        make_dst(&dst, size);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "copy::copier::tests::crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env("DEPOT_CRASH_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let journal = Journal::new(dir.path().join("journal"), 9);
        let t = Instant::now();
        loop {
            if journal.state().is_some_and(|s| s.watermark >= 8 * MIB) {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the child ended before it was killed"
            );
            assert!(t.elapsed() < Duration::from_secs(60), "no progress");
            thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let st = journal.state().unwrap();
        assert!(st.watermark < size, "{st:?}");
        let res = copy_raw(
            &src,
            &dst,
            CopyOptions {
                dst_is_zero: true,
                journal: Some(&journal),
                ..opts()
            },
        )
        .unwrap();
        assert!(res.resumed_from >= st.watermark, "{res:?} {st:?}");
        assert!(res.resumed_from > 0);
        assert!(res.verified);
        assert!(same(&src, &dst, size));
        check_python(&src, size, res.checksum.as_ref().unwrap());
        assert!(!journal.exists());
    }

    #[test]
    #[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
    fn to_a_4k_sector_block_device() {
        depot_testkit::require_root();
        let dir = tempfile::tempdir().unwrap();
        let (src, backing) = (dir.path().join("src"), dir.path().join("backing"));
        let size = 40 * MIB;
        make_src(
            &src,
            size,
            &[(0, 5 * MIB), (17 * MIB + 8192, 3 * MIB)],
            &[(30 * MIB, 2 * MIB)],
        );
        fs::write(&backing, vec![0x5Au8; (size + 8 * MIB) as usize]).unwrap();
        let lo = depot_testkit::LoopDevice::attach_with(&backing, Some(4096), true);
        let a = depot_os::direct::probe_alignment_path(lo.path()).unwrap();
        assert_eq!(a.offset_align, 4096);
        let res = copy_raw(&src, lo.path(), opts()).unwrap();
        assert!(res.bytes_zeroed > 0);
        assert!(same(&src, lo.path(), size));
        check_python(&src, size, res.checksum.as_ref().unwrap());
        verify_raw(lo.path(), size, res.checksum.as_ref().unwrap()).unwrap();
        // Past the source's size the device is untouched.
        let f = File::open(lo.path()).unwrap();
        let mut b = vec![0u8; 4096];
        f.read_exact_at(&mut b, size).unwrap();
        assert!(b.iter().all(|&x| x == 0x5A));
        // And back: the block device as the source.
        let back = dir.path().join("back");
        make_dst(&back, size);
        let res2 = copy_raw(
            lo.path(),
            &back,
            CopyOptions {
                dst_is_zero: true,
                ..opts()
            },
        );
        // The device is larger than the file: DestinationTooSmall.
        assert!(matches!(res2, Err(CopyError::DestinationTooSmall { .. })));
        make_dst(&back, size + 8 * MIB);
        let res2 = copy_raw(
            lo.path(),
            &back,
            CopyOptions {
                dst_is_zero: true,
                ..opts()
            },
        )
        .unwrap();
        assert!(same(lo.path(), &back, size + 8 * MIB));
        assert!(
            res2.bytes_skipped > 0,
            "zero data read from the device is skipped"
        );
    }

    fn env_usize(name: &str) -> Option<usize> {
        std::env::var(name).ok()?.parse().ok()
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    }

    /// Prints MiB/s of copy_raw next to dd on the same files; no
    /// assertions on time. Run with
    /// `cargo test --release -p depot-storage copy::copier::tests::throughput
    /// -- --ignored --nocapture`. DEPOT_COPY_MIB, DEPOT_COPY_BUF_MIB,
    /// DEPOT_COPY_DEPTH, DEPOT_COPY_RUNS override the size, buffer, depth
    /// and number of runs; DEPOT_COPY_DIR the directory.
    #[test]
    #[ignore = "throughput self-check; run with --ignored --nocapture"]
    fn throughput() {
        let mib = env_usize("DEPOT_COPY_MIB").unwrap_or(512) as u64;
        let runs = env_usize("DEPOT_COPY_RUNS").unwrap_or(3);
        let buf = env_usize("DEPOT_COPY_BUF_MIB").map_or(DEFAULT_BUFFER_SIZE, |m| m << 20);
        let depth = env_usize("DEPOT_COPY_DEPTH").unwrap_or(DEFAULT_QUEUE_DEPTH);
        let hash_threads = env_usize("DEPOT_COPY_HASH_THREADS").unwrap_or(0);
        let dir = match std::env::var("DEPOT_COPY_DIR") {
            Ok(d) => tempfile::tempdir_in(d).unwrap(),
            Err(_) => tempfile::tempdir_in("/var/tmp").unwrap(),
        };
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let size = mib * MIB;
        let st = Command::new("dd")
            .args(["if=/dev/urandom", "bs=1M", "status=none"])
            .arg(format!("of={}", src.display()))
            .arg(format!("count={mib}"))
            .status()
            .unwrap();
        assert!(st.success());
        let rate = |secs: f64| size as f64 / MIB as f64 / secs;
        let (mut ours, mut ours_nosum, mut dd, mut verify) = (vec![], vec![], vec![], vec![]);
        let fresh_dst = || {
            make_dst(&dst, 0);
            make_dst(&dst, size);
        };
        for run in 0..runs {
            // dd and depot alternate which goes first; the destination is
            // a new sparse file each time, for both.
            let mut order = ["dd", "sum", "nosum"];
            if run % 2 == 1 {
                order.reverse();
            }
            for what in order {
                fresh_dst();
                let t = Instant::now();
                if what == "dd" {
                    let st = Command::new("dd")
                        .args([
                            "bs=8M",
                            "iflag=direct",
                            "oflag=direct",
                            "conv=notrunc,fsync",
                        ])
                        .arg("status=none")
                        .arg(format!("if={}", src.display()))
                        .arg(format!("of={}", dst.display()))
                        .status()
                        .unwrap();
                    assert!(st.success());
                    dd.push(rate(t.elapsed().as_secs_f64()));
                    continue;
                }
                let checksum = what == "sum";
                let res = copy_raw(
                    &src,
                    &dst,
                    CopyOptions {
                        buffer_size: buf,
                        queue_depth: depth,
                        hash_threads,
                        dst_is_zero: true,
                        checksum,
                        verify: false,
                        ..opts()
                    },
                )
                .unwrap();
                let r = rate(t.elapsed().as_secs_f64());
                if checksum {
                    ours.push(r);
                    let t = Instant::now();
                    let sum = res.checksum.as_ref().unwrap();
                    let back = checksum_raw(
                        &dst,
                        size,
                        &ChecksumOptions {
                            buffer_size: buf,
                            queue_depth: depth,
                            hash_threads,
                            ..Default::default()
                        },
                    )
                    .unwrap();
                    assert_eq!(&back, sum);
                    verify.push(rate(t.elapsed().as_secs_f64()));
                } else {
                    ours_nosum.push(r);
                }
            }
        }
        println!(
            "copy_raw {mib} MiB random, buffer {} MiB, depth {depth}, hash threads {}, {runs} runs \
             (median MiB/s): \
             depot+checksum {:.0}, depot no checksum {:.0}, dd bs=8M direct {:.0}, \
             verify (read back) {:.0}; ratio depot/dd {:.2}",
            buf >> 20,
            super::hash_threads(hash_threads),
            median(ours.clone()),
            median(ours_nosum.clone()),
            median(dd.clone()),
            median(verify.clone()),
            median(ours.clone()) / median(dd.clone()),
        );
        println!("  all: depot {ours:.0?} nosum {ours_nosum:.0?} dd {dd:.0?} verify {verify:.0?}");
    }
}
