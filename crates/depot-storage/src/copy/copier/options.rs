//! What a copy or a checksum is asked to do ([`CopyOptions`],
//! [`ChecksumOptions`]), their limits, and what a copy reports
//! ([`CopyResult`]).

use crate::copy::blkhash::{BlkHash, BLOCK_SIZE};
use crate::copy::journal::Journal;
use crate::copy::CopyError;

/// The default I/O size: 8 MiB, as ovirt-imageio's server uses; measured
/// here in docs/copy.md.
pub const DEFAULT_BUFFER_SIZE: usize = 8 * 1024 * 1024;

/// The default number of buffers in flight (one being read, one or two
/// being written and hashed, a spare); measured in docs/copy.md.
pub const DEFAULT_QUEUE_DEPTH: usize = 4;

pub(super) fn no_progress(_: u64, _: u64) {}
pub(super) fn never_abort() -> bool {
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

pub(super) fn check_options(buffer_size: usize, queue_depth: usize) -> Result<(), CopyError> {
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
