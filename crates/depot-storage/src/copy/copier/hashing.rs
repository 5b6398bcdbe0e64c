//! The hasher's side of a pipeline, on the caller's thread: batches of
//! chunks into the blkhash, the abort poll.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread;

use super::chunk::Chunk;
use super::POLL;
use crate::copy::blkhash::{BlockHasher, BLOCK_SIZE};

/// blake2b lanes of `hash_many` with AVX2: a lone buffer holding fewer whole
/// blkhash blocks than this is held until the next one arrives.
pub(super) const HASH_LANES: u64 = 4;

/// Threads that hash the blocks of one buffer: as asked, or the CPUs, at
/// most 4.
pub(super) fn hash_threads(asked: usize) -> usize {
    match asked {
        0 => thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        n => n,
    }
}

/// The caller's side of a pipeline: the hasher.
pub(super) struct HashStep<'a> {
    pub(super) rx: Receiver<Chunk>,
    /// At most this many chunks per hash call (the buffers in flight).
    pub(super) max: usize,
    pub(super) hasher: Option<&'a mut BlockHasher>,
    /// A lone buffer kept back until the next one (see `step`).
    pub(super) held: Vec<Chunk>,
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
    pub(super) fn step(
        &mut self,
        abort: &dyn Fn() -> bool,
        aborted: &mut bool,
        stop: &AtomicBool,
    ) -> bool {
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

    pub(super) fn hash(&mut self, batch: Vec<Chunk>) {
        if let (Some(h), false) = (self.hasher.as_mut(), batch.is_empty()) {
            let mut pieces = Vec::new();
            for c in &batch {
                c.pieces(&mut pieces);
            }
            h.update_pieces(&pieces);
        }
    }
}
