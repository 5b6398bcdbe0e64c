//! What the reader hands on: a [`Chunk`] of the source, in order, either
//! zeros or a [`Loaded`] buffer split into data and zero [`Run`]s.

use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use depot_os::AlignedBuf;

use crate::copy::blkhash::Piece;

/// A buffer of source data, shared by the writer and the hasher. The
/// buffer goes back to the pool when the last of them drops it.
pub(super) struct Loaded {
    pub(super) offset: u64,
    pub(super) len: usize,
    /// Data and zero runs of `buf[..len]`: zero runs are skipped or zeroed
    /// by the writer and declared as zeros to the hasher (not rescanned).
    pub(super) runs: Vec<Run>,
    pub(super) buf: Option<AlignedBuf>,
    pub(super) pool: SyncSender<AlignedBuf>,
}

impl Loaded {
    pub(super) fn bytes(&self, r: &Run) -> &[u8] {
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
pub(super) enum Chunk {
    Data(Arc<Loaded>),
    /// A hole, or a buffer of zeros: no data.
    Zero {
        offset: u64,
        len: u64,
    },
}

impl Chunk {
    pub(super) fn end(&self) -> u64 {
        match self {
            Chunk::Data(l) => l.offset + l.len as u64,
            Chunk::Zero { offset, len } => offset + len,
        }
    }

    /// The chunk as the hasher takes it.
    pub(super) fn pieces<'a>(&'a self, out: &mut Vec<Piece<'a>>) {
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
pub(super) struct Run {
    pub(super) start: usize,
    pub(super) len: usize,
    pub(super) zero: bool,
}
