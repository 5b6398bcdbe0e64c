//! Receiving an upload: the body is checked as it arrives while its sha256
//! is computed and it is written out, in four threads passing a few
//! aligned buffers along (docs/formats.md, "Upload and commit").
//!
//! ```text
//!   caller's thread      checker thread    hasher thread   writer thread
//!   source -> buffer --> OVF XML      --> sha256      --> sink(buffer) --+
//!   tar rules                                                           |
//!        ^------------------------------ free ---------------------------+
//! ```
//!
//! The caller's thread copies the body into [`CHUNK`]-sized buffers aligned
//! for `O_DIRECT` and checks the tar rules on every byte as it arrives (a
//! bad header stops the upload at once), noting where each OVF's content
//! lies in the buffer; the checker thread checks each OVF with
//! [`xml_check`](super::xml_check) as soon as it is complete (in place,
//! unless it spans two buffers); the hasher thread hashes; the writer
//! thread hands the buffer to the sink (a staging file, written buffered or
//! with `O_DIRECT`). The XML check is the most expensive step: on its own
//! thread the receiving thread keeps up with the network meanwhile. Memory
//! is [`BUFFERS`] x [`CHUNK`] plus the OVF being checked when it spans two
//! buffers, whatever the upload size. The sink sees bytes before they are
//! all checked, which is why it only ever writes a staging file: whether
//! the whole upload is good is known when [`receive`] returns, and only
//! then may anything touch the volume.

use std::io;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use depot_os::direct::AlignedBuf;
use sha2::{Digest, Sha256};

use super::entities::MAX_OVF_SIZE;
use super::tar_check::{ArchiveSummary, TarEvent, TarValidator};
use super::{xml_check, OvfError};

/// The size of each buffer: a multiple of every direct I/O alignment.
pub const CHUNK: usize = 1 << 20;
/// Buffers in flight between the three threads.
pub const BUFFERS: usize = 8;
/// Buffers are aligned, and a short last buffer is zero-padded, to this
/// (the largest direct I/O alignment depot supports).
pub const ALIGN: usize = 4096;

/// A body that passed every check, with where the time went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub size: u64,
    pub sha256: [u8; 32],
    pub summary: ArchiveSummary,
    pub timings: Timings,
}

/// Where an upload's time went, for the debug log (docs/performance.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timings {
    /// First byte asked for to the last byte checked.
    pub receive: Duration,
    /// Waiting for the network (inside `source`).
    pub wait_source: Duration,
    /// Tar rules, on the caller's thread.
    pub validate: Duration,
    /// OVF XML checks, on their own thread.
    pub check: Duration,
    /// Waiting for a free buffer or room in the queue (the hasher or the
    /// writer behind).
    pub wait_buffer: Duration,
    /// sha256, on its own thread.
    pub hash: Duration,
    /// The sink's writes, on their own thread.
    pub write: Duration,
}

/// Where the writer puts a buffer: `buf[..len]` holds the upload's bytes
/// from `offset`; when `len` is not a multiple of [`ALIGN`] (the last
/// buffer), `buf[len..]` up to the next multiple is zero. The sink owns
/// the buffer while it writes (it may hand it to a helper's stream) and
/// gives it back.
pub type Sink<'a> = dyn FnMut(AlignedBuf, usize, u64) -> Result<AlignedBuf, OvfError> + Send + 'a;

/// Receives `content_length` bytes from `source` (which fills the buffer
/// it is given and returns how many bytes it wrote, 0 at the end of the
/// body; it is asked once more after Content-Length bytes, to detect a
/// longer body) and hands them to `sink` in order. Returns when every byte
/// is checked, hashed and written, or at the first failure: a bad archive
/// (the sink has then seen at most the bytes before the bad one, rounded
/// to buffers), a broken source, a failing sink.
pub fn receive(
    content_length: u64,
    source: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    sink: &mut Sink<'_>,
) -> Result<Received, OvfError> {
    let mut validator = TarValidator::new(content_length)?;
    let (full_tx, full_rx) = mpsc::sync_channel::<Full>(BUFFERS);
    let (checked_tx, checked_rx) = mpsc::sync_channel::<Full>(BUFFERS);
    let (hashed_tx, hashed_rx) = mpsc::sync_channel::<Full>(BUFFERS);
    let (free_tx, free_rx) = mpsc::sync_channel::<AlignedBuf>(BUFFERS);
    let mut timings = Timings::default();
    let outcome = std::thread::scope(|scope| {
        let spawn_err = |what: &str, e: io::Error| thread_error(&format!("start the {what}"), e);
        let checker = std::thread::Builder::new()
            .name("ovf-check".into())
            .spawn_scoped(scope, move || check_loop(full_rx, checked_tx))
            .map_err(|e| spawn_err("checker thread", e))?;
        let hasher = std::thread::Builder::new()
            .name("ovf-sha256".into())
            .spawn_scoped(scope, move || hash_loop(checked_rx, hashed_tx))
            .map_err(|e| spawn_err("hasher thread", e))?;
        let writer = std::thread::Builder::new()
            .name("ovf-write".into())
            .spawn_scoped(scope, move || write_loop(hashed_rx, free_tx, sink))
            .map_err(|e| spawn_err("writer thread", e))?;
        let read = read_and_validate(
            content_length,
            source,
            &mut validator,
            &full_tx,
            &free_rx,
            &mut timings,
        );
        drop(full_tx);
        let checked = checker
            .join()
            .unwrap_or_else(|_| Err(thread_error("check", "the checker thread panicked")));
        let hashed = hasher.join();
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(thread_error("write", "the writer thread panicked")));
        // The checker sees only bytes the reader had passed, so its error
        // is the first in the stream.
        let check = checked?;
        match (read, written) {
            // The writer's own error explains why the reader stopped.
            (Err(ReadError::Stopped), Err(e)) => Err(e),
            (Err(ReadError::Stopped), Ok(_)) => {
                Err(thread_error("write", "the writer thread stopped early"))
            }
            (Err(ReadError::Ovf(e)), _) => Err(e),
            (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(write)) => {
                let (sha256, hash) =
                    hashed.map_err(|_| thread_error("hash", "the hasher thread panicked"))?;
                timings.check = check;
                timings.write = write;
                timings.hash = hash;
                Ok(sha256)
            }
        }
    });
    let sha256 = outcome?;
    let summary = validator.finish()?;
    Ok(Received {
        size: content_length,
        sha256,
        summary,
        timings,
    })
}

/// The checker thread: each OVF's content through [`OvfChecker`], then
/// the buffer on to the hasher. Returns the time spent checking.
fn check_loop(
    full_rx: mpsc::Receiver<Full>,
    checked_tx: mpsc::SyncSender<Full>,
) -> Result<Duration, OvfError> {
    let mut checker = OvfChecker::default();
    let mut spent = Duration::ZERO;
    for full in full_rx {
        let t = Instant::now();
        for ev in &full.events {
            checker.on_event(match ev {
                Event::Start { name, size, offset } => TarEvent::Start {
                    name,
                    size: *size,
                    offset: *offset,
                },
                Event::Data { start, len } => TarEvent::Data(&full.buf[*start..*start + *len]),
                Event::End => TarEvent::End,
            })?;
        }
        spent += t.elapsed();
        // The hasher stopped: the writer's error says why.
        if checked_tx.send(full).is_err() {
            break;
        }
    }
    Ok(spent)
}

/// The hasher thread: sha256 of the upload, each buffer then on to the
/// writer. Returns the digest and the time spent hashing.
fn hash_loop(
    checked_rx: mpsc::Receiver<Full>,
    hashed_tx: mpsc::SyncSender<Full>,
) -> ([u8; 32], Duration) {
    let mut h = Sha256::new();
    let mut spent = Duration::ZERO;
    for full in checked_rx {
        let t = Instant::now();
        h.update(&full.buf[..full.len]);
        spent += t.elapsed();
        if hashed_tx.send(full).is_err() {
            break;
        }
    }
    (<[u8; 32]>::from(h.finalize()), spent)
}

/// The writer thread: each buffer to the sink, then back to the reader.
/// Returns the time spent in the sink.
fn write_loop(
    hashed_rx: mpsc::Receiver<Full>,
    free_tx: mpsc::SyncSender<AlignedBuf>,
    sink: &mut Sink<'_>,
) -> Result<Duration, OvfError> {
    let mut spent = Duration::ZERO;
    for full in hashed_rx {
        let t = Instant::now();
        let buf = sink(full.buf, full.len, full.offset)?;
        spent += t.elapsed();
        // The reader may have stopped; then the buffer goes.
        let _ = free_tx.send(buf);
    }
    Ok(spent)
}

fn thread_error(op: &str, e: impl std::fmt::Display) -> OvfError {
    OvfError::Pipeline(format!("{op}: {e}"))
}

/// A buffer holding `len` bytes of the upload from `offset`, and the
/// validator's events about the OVF entries in them, for the checker.
struct Full {
    buf: AlignedBuf,
    len: usize,
    offset: u64,
    events: Vec<Event>,
}

/// A [`TarEvent`] of an OVF entry, with its data as a range of the buffer.
enum Event {
    Start {
        name: String,
        size: u64,
        offset: u64,
    },
    Data {
        start: usize,
        len: usize,
    },
    End,
}

enum ReadError {
    Ovf(OvfError),
    /// A thread down the pipeline stopped (its result says why).
    Stopped,
}

impl From<OvfError> for ReadError {
    fn from(e: OvfError) -> Self {
        ReadError::Ovf(e)
    }
}

/// The caller's part of [`receive`]: fills buffers from `source`, checks
/// the tar rules on every piece as it arrives (a bad header stops the
/// upload at once), notes where each OVF's content lies, and passes full
/// buffers on to the checker.
fn read_and_validate(
    content_length: u64,
    source: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    validator: &mut TarValidator,
    full_tx: &mpsc::SyncSender<Full>,
    free_rx: &mpsc::Receiver<AlignedBuf>,
    timings: &mut Timings,
) -> Result<(), ReadError> {
    let start = Instant::now();
    let mut spare = Vec::with_capacity(BUFFERS);
    for _ in 0..BUFFERS {
        spare.push(AlignedBuf::new(CHUNK, ALIGN).map_err(OvfError::from)?);
    }
    let mut received: u64 = 0;
    let mut at_end = false;
    // Whether the entry being passed is an OVF (its events go along).
    let mut in_ovf = false;
    while !at_end {
        let t = Instant::now();
        let mut buf = match spare.pop() {
            Some(b) => b,
            None => free_rx.recv().map_err(|_| ReadError::Stopped)?,
        };
        timings.wait_buffer += t.elapsed();
        let base = buf.as_ptr() as usize;
        let mut events = Vec::new();
        let mut fill = 0;
        let mut failed = None;
        while fill < CHUNK {
            let want = if received < content_length {
                (content_length - received).min((CHUNK - fill) as u64) as usize
            } else {
                1 // one more read to see the end of the body
            };
            let t = Instant::now();
            let n = match source(&mut buf[fill..fill + want]) {
                Ok(n) => n.min(want),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    failed = Some(OvfError::Source(e));
                    break;
                }
            };
            timings.wait_source += t.elapsed();
            if n == 0 {
                at_end = true;
                break;
            }
            if received + n as u64 > content_length {
                failed = Some(OvfError::TooLong { content_length });
                break;
            }
            let t = Instant::now();
            let fed = validator.feed_with(&buf[fill..fill + n], &mut |ev| {
                note_ovf_event(ev, &mut in_ovf, &mut events, base)
            });
            timings.validate += t.elapsed();
            // Also when the piece failed: the events name bytes in it, which
            // must stay as they are for the checker (not be padded over).
            fill += n;
            received += n as u64;
            if let Err(e) = fed {
                failed = Some(e);
                break;
            }
        }
        if fill > 0 {
            let padded = fill.div_ceil(ALIGN) * ALIGN;
            buf[fill..padded].fill(0);
            let full = Full {
                buf,
                len: fill,
                offset: received - fill as u64,
                events,
            };
            // Also when this read failed: the checker may find an error
            // earlier in the stream in what was received.
            let t = Instant::now();
            let sent = full_tx.send(full);
            timings.wait_buffer += t.elapsed();
            if sent.is_err() && failed.is_none() {
                return Err(ReadError::Stopped);
            }
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
    }
    timings.receive = start.elapsed();
    Ok(())
}

/// Notes an event of the validator for the checker when it is about an
/// OVF entry (`in_ovf` follows the entry being passed), with its data as
/// a range of the buffer starting at address `base`; an OVF larger than
/// depot reads is refused at its header.
fn note_ovf_event(
    ev: TarEvent<'_>,
    in_ovf: &mut bool,
    events: &mut Vec<Event>,
    base: usize,
) -> Result<(), OvfError> {
    match ev {
        TarEvent::Start { name, size, offset } => {
            *in_ovf = name.ends_with(".ovf");
            if *in_ovf && size > MAX_OVF_SIZE {
                return Err(OvfError::archive(
                    offset,
                    Some(name),
                    format!("{size} bytes, more than the {MAX_OVF_SIZE} bytes depot reads"),
                ));
            }
            if *in_ovf {
                events.push(Event::Start {
                    name: name.to_string(),
                    size,
                    offset,
                });
            }
        }
        TarEvent::Data(d) if *in_ovf => events.push(Event::Data {
            start: d.as_ptr() as usize - base,
            len: d.len(),
        }),
        TarEvent::Data(_) => {}
        TarEvent::End if *in_ovf => {
            events.push(Event::End);
            *in_ovf = false;
        }
        TarEvent::End => {}
    }
    Ok(())
}

/// Checks each OVF of an upload with [`xml_check`] as soon as it is
/// complete: in place when its content came in one piece (almost always),
/// else from a copy gathered across buffers (at most [`MAX_OVF_SIZE`]: a
/// larger one is refused at its header, by the reader). `info.json` and
/// `metadata.json` pass unread.
#[derive(Default)]
pub(crate) struct OvfChecker {
    /// The OVF entry being received: its name and size.
    current: Option<(String, u64)>,
    /// Its content so far, when it arrives in pieces.
    pieces: Vec<u8>,
    /// Checked in place already.
    done: bool,
}

impl OvfChecker {
    pub(crate) fn on_event(&mut self, ev: TarEvent<'_>) -> Result<(), OvfError> {
        match ev {
            TarEvent::Start { name, size, offset } => {
                let ovf = name.ends_with(".ovf");
                if ovf && size > MAX_OVF_SIZE {
                    return Err(OvfError::archive(
                        offset,
                        Some(name),
                        format!("{size} bytes, more than the {MAX_OVF_SIZE} bytes depot reads"),
                    ));
                }
                self.current = ovf.then(|| (name.to_string(), size));
                self.pieces.clear();
                self.done = false;
            }
            TarEvent::Data(d) => {
                if let Some((name, size)) = &self.current {
                    if self.pieces.is_empty() && d.len() as u64 == *size {
                        check(name, d)?;
                        self.done = true;
                    } else {
                        self.pieces.extend_from_slice(d);
                    }
                }
            }
            TarEvent::End => {
                if let Some((name, _)) = self.current.take() {
                    if !self.done {
                        check(&name, &self.pieces)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn check(name: &str, xml: &[u8]) -> Result<(), OvfError> {
    xml_check::check(xml).map_err(|reason| OvfError::Ovf {
        entry: super::shorten(name),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovf::tests_common::*;
    use std::sync::{Arc, Mutex};

    /// Small, uneven pieces, like a network.
    fn source_of(data: &[u8], piece: usize) -> impl FnMut(&mut [u8]) -> io::Result<usize> + '_ {
        let mut pos = 0;
        move |buf: &mut [u8]| {
            let n = buf.len().min(data.len() - pos).min(piece);
            buf[..n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
            Ok(n)
        }
    }

    /// What a test sink saw: each buffer's offset and bytes.
    type Seen = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

    fn collect(
        out: &Seen,
    ) -> impl FnMut(AlignedBuf, usize, u64) -> Result<AlignedBuf, OvfError> + Send + '_ {
        move |buf, len, offset| {
            let padded = len.div_ceil(ALIGN) * ALIGN;
            assert!(buf[len..padded].iter().all(|&b| b == 0), "zero padding");
            out.lock().unwrap().push((offset, buf[..len].to_vec()));
            Ok(buf)
        }
    }

    #[test]
    fn every_byte_reaches_the_sink_in_order() {
        // Several buffers' worth, with an OVF split across buffers.
        let (tar, _) = big_engine_tar(3 * CHUNK + 12345);
        for piece in [7001, 65536, CHUNK + 1] {
            let out = Arc::new(Mutex::new(Vec::new()));
            let r = receive(
                tar.len() as u64,
                &mut source_of(&tar, piece),
                &mut collect(&out),
            )
            .unwrap();
            assert_eq!(r.sha256, <[u8; 32]>::from(Sha256::digest(&tar)));
            assert_eq!(r.size, tar.len() as u64);
            let got = out.lock().unwrap();
            let mut joined = Vec::new();
            for (offset, bytes) in got.iter() {
                assert_eq!(*offset, joined.len() as u64);
                joined.extend_from_slice(bytes);
            }
            assert!(joined == tar);
            assert!(got[..got.len() - 1].iter().all(|(_, b)| b.len() == CHUNK));
        }
    }

    #[test]
    fn a_bad_ovf_across_buffers_is_refused() {
        let (mut tar, _) = big_engine_tar(2 * CHUNK);
        // Find an OVF that straddles the first buffer boundary and break
        // its XML after the boundary.
        let pos = CHUNK + 100;
        let gt = tar[pos..].iter().position(|&b| b == b'>').unwrap() + pos;
        tar[gt] = b'&';
        let out = Arc::new(Mutex::new(Vec::new()));
        let e = receive(
            tar.len() as u64,
            &mut source_of(&tar, 7001),
            &mut collect(&out),
        )
        .unwrap_err();
        assert!(matches!(e, OvfError::Ovf { .. }), "{e}");
        // The sink never saw a byte past the buffer holding the bad one.
        let seen: usize = out.lock().unwrap().iter().map(|(_, b)| b.len()).sum();
        assert!(seen <= CHUNK * 2, "{seen}");
    }

    /// The checker runs behind the reader: a bad OVF is still the error
    /// when the reader then finds a later fault in the archive.
    #[test]
    fn the_first_fault_in_the_stream_is_the_error() {
        let mut tar = Vec::new();
        {
            let mut b = tar::Builder::new(&mut tar);
            append(&mut b, "info.json", info_json().as_bytes());
            append(
                &mut b,
                "0b6c0f59-5a4d-4c1a-9a55-7f5b0a3c2d11.ovf",
                XXE_OVF.as_bytes(),
            );
            append(&mut b, "metadata.json", b"{}");
            b.finish().unwrap();
        }
        tar.extend_from_slice(&[b'A'; 512]);
        let (good, _) = engine_tar(2);
        let mut garbage = good.clone();
        garbage.extend_from_slice(&[b'A'; 512]);
        let mut sink = |b: AlignedBuf, _: usize, _: u64| Ok(b);
        // In small pieces, and in one piece (the fault in the same read as
        // the OVFs before it).
        for piece in [999, CHUNK] {
            let e = receive(tar.len() as u64, &mut source_of(&tar, piece), &mut sink).unwrap_err();
            assert!(e.to_string().contains("DOCTYPE"), "{piece}: {e}");
            // Without the bad OVF, the garbage is the error.
            let e = receive(
                garbage.len() as u64,
                &mut source_of(&garbage, piece),
                &mut sink,
            )
            .unwrap_err();
            assert!(
                e.to_string().contains("after the end-of-archive"),
                "{piece}: {e}"
            );
        }
    }

    #[test]
    fn a_failing_sink_stops_the_upload() {
        let (tar, _) = big_engine_tar(3 * CHUNK);
        let mut calls = 0;
        let mut sink = |b: AlignedBuf, _: usize, _: u64| -> Result<AlignedBuf, OvfError> {
            calls += 1;
            if calls == 2 {
                return Err(OvfError::Write {
                    op: "test write",
                    path: "/x".into(),
                    source: io::Error::other("disk full"),
                });
            }
            Ok(b)
        };
        let e = receive(tar.len() as u64, &mut source_of(&tar, 65536), &mut sink).unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
    }

    #[test]
    fn a_source_error_and_a_short_body_are_reported() {
        let (tar, _) = engine_tar(3);
        let mut sent = 0;
        let mut failing = |buf: &mut [u8]| {
            if sent > 2000 {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
            }
            let n = buf.len().min(1000);
            buf[..n].copy_from_slice(&tar[sent..sent + n]);
            sent += n;
            Ok(n)
        };
        let mut sink = |b: AlignedBuf, _: usize, _: u64| Ok(b);
        let e = receive(tar.len() as u64, &mut failing, &mut sink).unwrap_err();
        assert!(matches!(e, OvfError::Source(_)), "{e}");
        let short = &tar[..tar.len() - 1024];
        let e = receive(tar.len() as u64, &mut source_of(short, 999), &mut sink).unwrap_err();
        assert!(matches!(e, OvfError::Truncated { .. }), "{e}");
        let mut longer = tar.clone();
        longer.extend_from_slice(&[0u8; 512]);
        let e = receive(tar.len() as u64, &mut source_of(&longer, 999), &mut sink).unwrap_err();
        assert!(matches!(e, OvfError::TooLong { .. }), "{e}");
    }
}
