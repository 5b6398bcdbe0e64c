//! The checksum of an image ([`checksum_raw`]), read the way the copier
//! reads, and the comparison with an expected one ([`verify_raw`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;

use depot_os::{probe_alignment, DataPath};

use super::chunk::Chunk;
use super::hashing::{hash_threads, HashStep};
use super::options::{check_options, ChecksumOptions};
use super::reader::{make_pool, open_src, read_loop, ReadPlan, ZERO_GRAIN};
use super::round_up;
use crate::copy::blkhash::{BlkHash, BlockHasher};
use crate::copy::extents::{align_extents, extents};
use crate::copy::CopyError;

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
    if !(1..=crate::copy::blkhash::MAX_BLOCK_SIZE).contains(&opts.block_size) {
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
    if expected.algorithm != crate::copy::blkhash::ALGORITHM {
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
