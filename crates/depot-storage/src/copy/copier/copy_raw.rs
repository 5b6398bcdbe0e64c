//! [`copy_raw`]: a copy in steps: open both ends ([`Ends`]), resume or
//! begin the journal ([`Begun`]), run the reader, writer and hasher
//! ([`Pipeline`]), then check the source did not change, fsync, verify
//! and remove the journal.

use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Mutex;
use std::thread;

use depot_os::{open_direct_data, probe_alignment, DataPath};

use super::chunk::Chunk;
use super::hashing::{hash_threads, HashStep};
use super::options::{check_options, no_progress, ChecksumOptions, CopyOptions, CopyResult};
use super::reader::{
    make_pool, open_src, open_src_meta, read_loop, size_of, Opened, ReadPlan, MIN_ZERO_RUN,
    ZERO_GRAIN,
};
use super::verify::checksum_raw;
use super::writer::{Dest, Writer, WriterStats, ZeroMode};
use super::{round_up, POLL};
use crate::copy::blkhash::{BlockDigest, BlockHasher, BLOCK_SIZE};
use crate::copy::extents::{align_extents, extents};
use crate::copy::journal::{Found, Identity, Journal, JournalWriter};
use crate::copy::CopyError;

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
    let src = src_data.path();
    check_options(opts.buffer_size, opts.queue_depth)?;
    let ends = Ends::open(src_data, dst_data, &opts)?;
    let (size, align) = (ends.size, ends.align);
    let buffer_size = round_up(opts.buffer_size as u64, align as u64) as usize;
    let checksum = opts.checksum || opts.verify;

    let begun = match opts.journal {
        Some(j) => Begun::from_journal(j, &ends, src_data, dst_data, checksum, opts.dst_is_zero)?,
        None => Begun::fresh(opts.dst_is_zero),
    };
    let start = begun.start;
    let dest = Dest::open(
        &ends,
        dst_data,
        begun.dst_is_zero,
        opts.sparse || opts.dst_is_zero,
    )?;
    let mode = dest.mode;

    let raw = extents(&ends.src.file, start, size)
        .map_err(|e| CopyError::io("find extents of", src, e))?;
    let plan = align_extents(&raw, align as u64, start, size);

    let journaled = begun.writer.is_some();
    let mut hasher = checksum.then(|| {
        let mut h = BlockHasher::resume(BLOCK_SIZE, &begun.digests);
        h.record_digests(journaled);
        h.set_threads(hash_threads(opts.hash_threads));
        h
    });
    let grain = ZERO_GRAIN.max(align);
    let min_zero = if mode == ZeroMode::Skip {
        grain
    } else {
        MIN_ZERO_RUN.max(grain)
    };

    let hashed = Mutex::new(Vec::new());
    let mut writer = Writer {
        dest,
        journal: begun.writer,
        block_size: checksum.then_some(BLOCK_SIZE),
        hashed: &hashed,
        pending: Vec::new(),
        stats: WriterStats {
            end: start,
            ..Default::default()
        },
    };
    let read_plan = ReadPlan {
        file: &ends.src.file,
        path: src,
        plan: &plan,
        chunk: buffer_size,
        align,
        grain,
        min_zero,
    };
    let pipeline = Pipeline {
        opts: &opts,
        read_plan: &read_plan,
        hashed: &hashed,
        start,
        size,
        journaled,
    };
    let ended = pipeline.run(buffer_size, &mut writer, hasher.as_mut())?;

    // Record what is written and hashed, even after an abort or an error.
    if let Some(h) = hasher.as_mut().filter(|_| journaled) {
        h.flush();
        hashed
            .lock()
            .expect("digest list poisoned")
            .extend(h.take_digests());
    }
    let write_res = ended.write.and(writer.checkpoint(true));

    if ended.aborted {
        return Err(CopyError::Aborted);
    }
    // The writer's error is the cause when both failed (the reader then
    // only saw the stop).
    write_res?;
    ended.read?;
    let stats = check_source_and_sync_tail(&ends, src, writer, &opts)?;
    depot_os::sync_and_close(ends.dfile)?;
    verify_and_report(dst_data, hasher, &opts, stats, size, start)
}

impl<'a> Dest<'a> {
    /// The destination side of `ends`: how to zero (skip where it reads
    /// zeros, `BLKZEROOUT` on a block device, punch or `ZERO_RANGE` on a
    /// file), and a buffered fd for a size off the alignment.
    fn open(
        ends: &'a Ends,
        dst_data: &'a (impl DataPath + ?Sized),
        dst_is_zero: bool,
        punch: bool,
    ) -> Result<Dest<'a>, CopyError> {
        let dst = dst_data.path();
        let is_block = ends.dmeta.file_type().is_block_device();
        let mode = match (dst_is_zero, is_block, punch) {
            (true, _, _) => ZeroMode::Skip,
            (false, true, _) => ZeroMode::BlockDevice,
            (false, false, true) => ZeroMode::Punch,
            (false, false, false) => ZeroMode::ZeroRange,
        };
        let tail = if !ends.size.is_multiple_of(ends.align as u64) {
            Some(
                dst_data
                    .open_with(OpenOptions::new().write(true))
                    .map_err(|e| CopyError::io("open (buffered, for the tail)", dst, e))?,
            )
        } else {
            None
        };
        Ok(Dest {
            file: &ends.dfile,
            path: dst,
            tail,
            align: ends.align as u64,
            mode,
        })
    }
}

/// Both ends of a copy, open, checked against each other: not the same
/// file, the destination large enough; and the I/O alignment both allow.
struct Ends {
    src: Opened,
    dfile: File,
    dmeta: Metadata,
    /// Bytes to copy: the source's size, or the length asked.
    size: u64,
    align: usize,
}

impl Ends {
    fn open(
        src_data: &(impl DataPath + ?Sized),
        dst_data: &(impl DataPath + ?Sized),
        opts: &CopyOptions<'_>,
    ) -> Result<Ends, CopyError> {
        let (src, dst) = (src_data.path(), dst_data.path());
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
        Ok(Ends {
            src: s,
            dfile,
            dmeta,
            size,
            align,
        })
    }
}

/// Where a copy begins: at 0, or at a matching journal's watermark with
/// the digests of the blocks below it.
struct Begun {
    /// The destination reads zeros where this copy has not written.
    dst_is_zero: bool,
    start: u64,
    digests: Vec<BlockDigest>,
    writer: Option<JournalWriter>,
}

impl Begun {
    fn fresh(dst_is_zero: bool) -> Begun {
        Begun {
            dst_is_zero,
            start: 0,
            digests: Vec::new(),
            writer: None,
        }
    }

    /// Resumes a matching journal; a discarded one means an earlier,
    /// different copy wrote here, so the destination is not zero any more.
    fn from_journal(
        j: &Journal,
        ends: &Ends,
        src_data: &(impl DataPath + ?Sized),
        dst_data: &(impl DataPath + ?Sized),
        checksum: bool,
        dst_is_zero: bool,
    ) -> Result<Begun, CopyError> {
        let (s, dmeta, size, align) = (&ends.src, &ends.dmeta, ends.size, ends.align);
        let mut begun = Begun::fresh(dst_is_zero);
        let id = Identity {
            src: src_data.path().to_owned(),
            dst: dst_data.path().to_owned(),
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
        let (mut w, resume, found) = j.begin(&id, begun.dst_is_zero)?;
        match found {
            Found::Discarded => {
                tracing::info!(journal = %j.path().display(), "discarded a copy journal of another copy");
                begun.dst_is_zero = false;
            }
            // The destination read zeros when this copy began, and every
            // run of it wrote only source bytes at their own offsets: every
            // byte is still zero or the source's, so zero ranges may be
            // skipped (docs/copy.md, "Journal and crash guarantees").
            Found::Matching if resume.as_ref().is_some_and(|r| r.dst_zero) => {
                begun.dst_is_zero = true;
            }
            _ => {}
        }
        if let Some(r) = resume {
            let wm = r.watermark;
            if wm <= size && (wm % align as u64 == 0 || wm == size) {
                begun.start = wm;
                begun.digests = r.digests;
                tracing::info!(journal = %j.path().display(), offset = begun.start, "resuming copy");
            } else if wm > 0 {
                // Same copy, but the alignment changed: start over with a
                // fresh journal (what was written is still source data, so
                // dst_is_zero still holds).
                drop(w);
                j.remove()?;
                w = j.begin(&id, begun.dst_is_zero)?.0;
            }
        }
        begun.writer = Some(w);
        Ok(begun)
    }
}

/// What the threads of a copy need to share.
struct Pipeline<'a, 'o> {
    opts: &'a CopyOptions<'o>,
    read_plan: &'a ReadPlan<'a>,
    /// Digests of completed blocks, from the hasher to the writer's
    /// checkpoints.
    hashed: &'a Mutex<Vec<BlockDigest>>,
    start: u64,
    size: u64,
    journaled: bool,
}

/// How the threads ended.
struct Ended {
    read: Result<(), CopyError>,
    write: Result<(), CopyError>,
    aborted: bool,
}

impl Pipeline<'_, '_> {
    /// Runs the reader and the writer on threads of their own and hashes
    /// on this one (where the caller's callbacks may run), until the
    /// reader is done and the writer has written everything, or one of
    /// them failed, or the caller aborted.
    fn run(
        &self,
        buffer_size: usize,
        writer: &mut Writer<'_>,
        hasher: Option<&mut BlockHasher>,
    ) -> Result<Ended, CopyError> {
        let opts = self.opts;
        let stop = AtomicBool::new(false);
        let done = AtomicU64::new(self.start);
        let mut aborted = false;
        let (pool_tx, pool_rx) = make_pool(opts.queue_depth, buffer_size, self.read_plan.align)?;

        let (read, write) = thread::scope(|sc| {
            let (write_tx, write_rx) = mpsc::sync_channel::<Chunk>(opts.queue_depth);
            let (hash_tx, hash_rx) = mpsc::sync_channel::<Chunk>(opts.queue_depth);
            // Dropped when the writer ends: wakes the caller waiting for it.
            let (fin_tx, fin_rx) = mpsc::channel::<()>();
            let (stop_r, stop_w, done_w, rp) = (&stop, &stop, &done, self.read_plan);
            let reader = sc.spawn(move || {
                let r = read_loop(rp, pool_rx, pool_tx, &[write_tx, hash_tx], stop_r);
                if r.is_err() {
                    stop_r.store(true, Ordering::Relaxed);
                }
                r
            });
            let writer_thread = sc.spawn(move || {
                let _fin = fin_tx;
                let r = writer.run(write_rx, stop_w, done_w);
                if r.is_err() {
                    stop_w.store(true, Ordering::Relaxed);
                }
                r
            });

            // Hash everything the reader sends, then wait for the writer;
            // the callbacks run here, on the caller's thread.
            let mut hs = HashStep {
                rx: hash_rx,
                max: opts.queue_depth,
                hasher,
                held: Vec::new(),
            };
            self.hash_all(&mut hs, &mut aborted, &stop, &done);
            // Buffers go back; the reader, if still sending, sees the end.
            drop(hs);
            while !aborted {
                match fin_rx.recv_timeout(POLL) {
                    Err(RecvTimeoutError::Timeout) => {
                        aborted = (opts.abort)();
                        (opts.progress)(done.load(Ordering::Relaxed), self.size);
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
        Ok(Ended {
            read,
            write,
            aborted,
        })
    }

    /// The hasher's loop: hashes what the reader sends, hands the digests
    /// of completed blocks to the writer's checkpoints, reports progress.
    fn hash_all(
        &self,
        hs: &mut HashStep<'_>,
        aborted: &mut bool,
        stop: &AtomicBool,
        done: &AtomicU64,
    ) {
        let opts = self.opts;
        // Blocks built from pieces wait for a batch before they are
        // hashed, but a checkpoint (due every `interval`) needs their
        // digests: when the completed blocks reach the next checkpoint,
        // the waiting ones are hashed at once (one short batch per
        // interval).
        let interval = opts.journal.map_or(u64::MAX, Journal::interval);
        let mut next_due = self.start.saturating_add(interval);
        while hs.step(opts.abort, aborted, stop) {
            if let Some(h) = hs.hasher.as_mut().filter(|_| self.journaled) {
                if h.position() / BLOCK_SIZE * BLOCK_SIZE >= next_due {
                    h.flush();
                    next_due = (h.blocks() * BLOCK_SIZE).saturating_add(interval);
                }
                let d = h.take_digests();
                if !d.is_empty() {
                    self.hashed.lock().expect("digest list poisoned").extend(d);
                }
            }
            (opts.progress)(done.load(Ordering::Relaxed), self.size);
        }
    }
}

/// The end of a copy whose threads ran to the end: the source must not
/// have changed meanwhile; the tail written through the page cache is
/// fsynced. Returns what the writer did.
fn check_source_and_sync_tail(
    ends: &Ends,
    src: &Path,
    mut writer: Writer<'_>,
    opts: &CopyOptions<'_>,
) -> Result<WriterStats, CopyError> {
    let (s, size) = (&ends.src, ends.size);
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
        t.sync_all()
            .map_err(|e| CopyError::io("fsync", writer.dest.path, e))?;
    }
    Ok(stats)
}

/// After the fsync: the checksum, the destination read back and compared
/// when asked, and the journal removed.
fn verify_and_report(
    dst_data: &(impl DataPath + ?Sized),
    hasher: Option<BlockHasher>,
    opts: &CopyOptions<'_>,
    stats: WriterStats,
    size: u64,
    start: u64,
) -> Result<CopyResult, CopyError> {
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
                path: dst_data.path().to_owned(),
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
