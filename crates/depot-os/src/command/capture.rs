//! Bounded pipe capture on a helper thread.
//!
//! Each of the child's output pipes is drained by its own thread so that a
//! child filling one pipe while we wait on the other cannot deadlock. The
//! buffer is shared (not returned from the thread) so the runner can take
//! what was captured even if a pipe stays open after a kill, e.g. held by a
//! process that left our process group; such a thread is simply left to end
//! when that pipe closes.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;

/// Which part of an over-long stream to keep.
#[derive(Clone, Copy)]
pub(crate) enum Keep {
    /// Keep the first `limit` bytes, then stop reading and flag overflow:
    /// used for stdout, where a truncated document is useless.
    Head,
    /// Keep the last `limit` bytes and read on: used for stderr, where the
    /// reason for a failure is at the end.
    Tail,
}

struct Buf {
    data: Vec<u8>,
    limit: usize,
    keep: Keep,
    overflowed: bool,
}

impl Buf {
    /// Adds a chunk; returns whether reading should go on.
    fn push(&mut self, chunk: &[u8]) -> bool {
        match self.keep {
            Keep::Head => {
                let room = self.limit - self.data.len();
                if chunk.len() > room {
                    self.data.extend_from_slice(&chunk[..room]);
                    self.overflowed = true;
                    return false;
                }
                self.data.extend_from_slice(chunk);
                true
            }
            Keep::Tail => {
                self.data.extend_from_slice(chunk);
                if self.data.len() > self.limit {
                    let excess = self.data.len() - self.limit;
                    self.data.drain(..excess);
                    self.overflowed = true;
                }
                true
            }
        }
    }
}

/// A pipe being drained into a bounded buffer.
pub(crate) struct Capture {
    buf: Mutex<Buf>,
    finished: AtomicBool,
}

impl Capture {
    /// Starts a thread draining `src`.
    pub(crate) fn start(
        name: &str,
        mut src: impl Read + Send + 'static,
        keep: Keep,
        limit: usize,
    ) -> io::Result<Arc<Capture>> {
        let capture = Arc::new(Capture {
            buf: Mutex::new(Buf {
                data: Vec::new(),
                limit,
                keep,
                overflowed: false,
            }),
            finished: AtomicBool::new(false),
        });
        let shared = Arc::clone(&capture);
        thread::Builder::new().name(name.into()).spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match src.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        if !shared.lock().push(&chunk[..n]) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // A read error on a pipe means it is unusable; what we
                    // have is all we will get.
                    Err(_) => break,
                }
            }
            // Dropping `src` here closes our end: a child still writing past
            // a Head limit gets EPIPE instead of blocking.
            drop(src);
            shared.finished.store(true, Ordering::Release);
        })?;
        Ok(capture)
    }

    /// Whether the pipe reached EOF (or the Head limit) and the thread ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Whether more than `limit` bytes arrived.
    pub(crate) fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// Runs `f` on what was captured so far (for progress parsers).
    pub(crate) fn peek<T>(&self, f: impl FnOnce(&[u8]) -> T) -> T {
        f(&self.lock().data)
    }

    /// Takes the captured bytes, leaving the buffer empty.
    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.lock().data)
    }

    fn lock(&self) -> MutexGuard<'_, Buf> {
        // The buffer is plain bytes, always consistent; a panic elsewhere
        // must not turn into a second panic here.
        self.buf.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(keep: Keep, limit: usize) -> Buf {
        Buf {
            data: Vec::new(),
            limit,
            keep,
            overflowed: false,
        }
    }

    #[test]
    fn head_keeps_first_bytes_and_stops() {
        let mut b = buf(Keep::Head, 5);
        assert!(b.push(b"abc"));
        assert!(!b.push(b"defg"));
        assert_eq!(b.data, b"abcde");
        assert!(b.overflowed);
    }

    #[test]
    fn head_exactly_at_limit_is_not_overflow() {
        let mut b = buf(Keep::Head, 3);
        assert!(b.push(b"abc"));
        assert!(b.push(b""));
        assert!(!b.overflowed);
    }

    #[test]
    fn tail_keeps_last_bytes() {
        let mut b = buf(Keep::Tail, 4);
        assert!(b.push(b"abc"));
        assert!(b.push(b"defg"));
        assert_eq!(b.data, b"defg");
        assert!(b.overflowed);
    }
}
