//! [`copy_raw`]: the three threads of a copy, from opening both ends to
//! the fsync, the journal's removal and the verification.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Mutex;
use std::thread;

use depot_os::{open_direct_data, probe_alignment, DataPath};

use super::chunk::Chunk;
use super::hashing::{hash_threads, HashStep};
use super::options::{check_options, no_progress, ChecksumOptions, CopyOptions, CopyResult};
use super::reader::{
    make_pool, open_src, open_src_meta, read_loop, size_of, ReadPlan, MIN_ZERO_RUN, ZERO_GRAIN,
};
use super::verify::checksum_raw;
use super::writer::{Dest, Writer, WriterStats, ZeroMode};
use super::{round_up, POLL};
use crate::copy::blkhash::{BlockHasher, BLOCK_SIZE};
use crate::copy::extents::{align_extents, extents};
use crate::copy::journal::{Found, Identity, Journal};
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
