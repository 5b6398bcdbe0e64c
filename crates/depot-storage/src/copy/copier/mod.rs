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
//!
//! The modules: [`options`] (what is asked and reported), [`chunk`] (what
//! the reader hands on), [`reader`], [`writer`], [`hashing`] (the caller's
//! side), [`copy_raw`](mod@copy_raw) (the threads put together) and
//! [`verify`] (checksum and verification of an image).

use std::time::Duration;

mod chunk;
mod copy_raw;
mod hashing;
mod options;
mod reader;
mod verify;
mod writer;

pub use copy_raw::copy_raw;
pub use options::{
    ChecksumOptions, CopyOptions, CopyResult, DEFAULT_BUFFER_SIZE, DEFAULT_QUEUE_DEPTH,
};
pub use verify::{checksum_raw, verify_raw};

/// How often a blocked thread looks at the stop flag, and the caller's
/// thread at the abort callback.
pub(super) const POLL: Duration = Duration::from_millis(20);

pub(super) fn round_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}

#[cfg(test)]
mod tests;
