//! The copy journal: what lets an interrupted copy resume after a crash.
//!
//! A small text file at a path the caller chooses (in the state directory,
//! named after the job). It holds:
//!
//! - a header with the copy's identity: source and destination paths, the
//!   size copied, the source's device, inode and mtime, the destination's
//!   device and inode (or rdev), the caller's generation, and the blkhash
//!   block size (0 when no checksum is computed); then, not part of the
//!   identity, whether the destination read as zeros when the copy began
//!   (`dst-zero 1`), which a resumed copy may rely on;
//! - checkpoint records appended after it, one line each:
//!   `ckpt <watermark> <hex digests|-> <check>`. The watermark is the offset
//!   below which the destination holds the source's data durably; the
//!   digests are the blkhash digests of the blocks completed since the last
//!   record (so with a checksum the watermark is a multiple of the block
//!   size and the journal holds `watermark / block_size` digests); `check` is
//!   16 hex digits of blake2b over the rest of the line, so a torn append is
//!   recognised and ignored.
//!
//! The copier fsyncs the destination *before* it appends a record (and
//! fdatasyncs the journal after), so a record never claims data that is not
//! durable. Records are written at most every `interval` bytes (256 MiB by
//! default), and once more when the copy stops (end, abort, error).
//!
//! A journal whose identity differs from the request in any field is
//! discarded (rewritten), and then the destination is no longer trusted to
//! be zero. Version 1 journals (no `dst-zero` line) are discarded the same
//! way. See docs/copy.md for the guarantees.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::blkhash::{from_hex, to_hex, BlockDigest};
use super::CopyError;

const MAGIC: &str = "depot-copy-journal 2";
const RECORDS: &str = "records";
const DST_ZERO: &str = "dst-zero ";

/// The default distance between checkpoints: 256 MiB.
pub const DEFAULT_INTERVAL: u64 = 256 * 1024 * 1024;

/// Where and how often a copy journals its progress. Pass it in
/// [`super::CopyOptions::journal`]; the same path and generation on a later
/// call resume the copy.
#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
    generation: u64,
    interval: u64,
}

/// What a journal file says, for callers that inspect one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalState {
    /// The header lines (the copy's identity), as written.
    pub header: String,
    /// Everything below this offset is copied and durable.
    pub watermark: u64,
    /// blkhash digests of the full blocks below the watermark.
    pub digests: usize,
    /// The destination read as zeros when the copy began.
    pub dst_zero: bool,
}

/// The identity of a copy; any difference discards the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub size: u64,
    pub src_dev: u64,
    pub src_ino: u64,
    pub src_mtime: (i64, i64),
    pub dst_dev: u64,
    pub dst_ino: u64,
    pub dst_rdev: u64,
    pub generation: u64,
    /// 0 when no checksum is computed.
    pub block_size: u64,
}

/// Where a matching journal says to resume.
#[derive(Debug, Clone, Default)]
pub(crate) struct Resume {
    pub watermark: u64,
    pub digests: Vec<BlockDigest>,
    /// The destination read as zeros when the copy began: every byte of it
    /// is still zero or the source's byte at that offset (docs/copy.md).
    pub dst_zero: bool,
}

/// How [`Journal::begin`] found the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// No journal: a fresh copy.
    None,
    /// A journal for this copy.
    Matching,
    /// A journal for another copy (or unreadable): discarded.
    Discarded,
}

/// Escapes a path so it fits on one line: bytes outside printable ASCII,
/// and `%`, as `%XX`.
fn escape(p: &Path) -> String {
    let mut s = String::new();
    for &b in p.as_os_str().as_bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The header: the identity lines, then `dst-zero`, then `records`.
fn header(id: &Identity, dst_zero: bool) -> String {
    format!(
        "{}{DST_ZERO}{}\n{RECORDS}\n",
        identity(id),
        u8::from(dst_zero)
    )
}

/// The identity lines, which must all match for a copy to resume.
fn identity(id: &Identity) -> String {
    format!(
        "{MAGIC}\nsrc {}\ndst {}\nsize {}\nsource {} {} {}.{:09}\n\
         destination {} {} {}\ngeneration {}\nblock-size {}\n",
        escape(&id.src),
        escape(&id.dst),
        id.size,
        id.src_dev,
        id.src_ino,
        id.src_mtime.0,
        id.src_mtime.1,
        id.dst_dev,
        id.dst_ino,
        id.dst_rdev,
        id.generation,
        id.block_size,
    )
}

/// 64 bits of unkeyed blake2b (`hashlib.blake2b(body, digest_size=8)`).
fn check(body: &str) -> String {
    to_hex(
        blake2b_simd::Params::new()
            .hash_length(8)
            .hash(body.as_bytes())
            .as_bytes(),
    )
}

fn record_line(watermark: u64, digests: &[BlockDigest]) -> String {
    let hex = if digests.is_empty() {
        "-".to_string()
    } else {
        let mut s = String::with_capacity(digests.len() * 64);
        for d in digests {
            s.push_str(&to_hex(d));
        }
        s
    };
    let body = format!("ckpt {watermark} {hex}");
    let ck = check(&body);
    format!("{body} {ck}\n")
}

/// Parses the file: the header text, then the valid records. Returns the
/// identity lines, the resume point and the length of the valid prefix.
fn parse(text: &[u8]) -> Option<(String, Resume, usize)> {
    let text = std::str::from_utf8(text).ok()?;
    let marker = format!("\n{RECORDS}\n");
    let hdr_end = text.find(&marker)? + marker.len();
    let header = &text[..hdr_end];
    if !header.starts_with(&format!("{MAGIC}\n")) {
        return None;
    }
    let zero_line = header.rfind(&format!("\n{DST_ZERO}"))? + 1;
    let dst_zero = match &header[zero_line + DST_ZERO.len()..hdr_end - marker.len() + 1] {
        "1\n" => true,
        "0\n" => false,
        _ => return None,
    };
    let ident = &header[..zero_line];
    let block_size: u64 = header
        .lines()
        .find_map(|l| l.strip_prefix("block-size "))?
        .parse()
        .ok()?;
    let mut resume = Resume {
        dst_zero,
        ..Resume::default()
    };
    let mut valid = hdr_end;
    for line in text[hdr_end..].split_inclusive('\n') {
        let Some(line) = line.strip_suffix('\n') else {
            break; // torn: no newline
        };
        let Some((body, ck)) = line.rsplit_once(' ') else {
            break;
        };
        if check(body) != ck {
            break;
        }
        let mut f = body.split(' ');
        let (Some("ckpt"), Some(wm), Some(hex), None) = (f.next(), f.next(), f.next(), f.next())
        else {
            break;
        };
        let Ok(wm) = wm.parse::<u64>() else { break };
        if hex != "-" {
            let Some(bytes) = from_hex(hex) else { break };
            if bytes.len() % 32 != 0 {
                break;
            }
            resume.digests.extend(
                bytes
                    .chunks_exact(32)
                    .map(|c| BlockDigest::try_from(c).expect("32 bytes")),
            );
        }
        if wm < resume.watermark
            || (block_size > 0 && wm != resume.digests.len() as u64 * block_size)
        {
            return None; // consistent checks passed but content is not: corrupt
        }
        resume.watermark = wm;
        valid += line.len() + 1;
    }
    Some((ident.to_string(), resume, valid))
}

impl Journal {
    /// A journal at `path` for a copy at the caller's `generation` (the
    /// destination volume's generation, or any number that changes when a
    /// new copy must not resume an old one).
    pub fn new(path: impl Into<PathBuf>, generation: u64) -> Self {
        Journal {
            path: path.into(),
            generation,
            interval: DEFAULT_INTERVAL,
        }
    }

    /// Checkpoint at most every `bytes` (at least 1 MiB is sensible; a
    /// smaller value only costs fsyncs).
    pub fn with_interval(mut self, bytes: u64) -> Self {
        self.interval = bytes.max(1);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn interval(&self) -> u64 {
        self.interval
    }

    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// The journal's content, if it exists and parses.
    pub fn state(&self) -> Option<JournalState> {
        let text = fs::read(&self.path).ok()?;
        let (header, resume, _) = parse(&text)?;
        Some(JournalState {
            header,
            watermark: resume.watermark,
            digests: resume.digests.len(),
            dst_zero: resume.dst_zero,
        })
    }

    /// Removes the journal (done copies, and copies the caller gives up);
    /// missing is fine. The directory is fsynced so the removal is durable.
    pub fn remove(&self) -> Result<(), CopyError> {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(CopyError::journal(&self.path, "remove", e)),
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            depot_os::fsutil::fsync_dir(dir)?;
        }
        Ok(())
    }

    /// Opens the journal for a copy with identity `id`: resumes a matching
    /// one, replaces anything else with a fresh header. `dst_zero`: the
    /// destination reads as zeros now; a fresh header records it, except
    /// over a discarded journal (another copy wrote there).
    pub(crate) fn begin(
        &self,
        id: &Identity,
        dst_zero: bool,
    ) -> Result<(JournalWriter, Option<Resume>, Found), CopyError> {
        let want = identity(id);
        let existing = match fs::read(&self.path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(CopyError::journal(&self.path, "read", e)),
        };
        let (resume, found) = match existing.as_deref().map(parse) {
            None => (None, Found::None),
            Some(Some((hdr, resume, valid))) if hdr == want => {
                // Drop a torn tail so appends continue after valid records.
                let f = OpenOptions::new()
                    .write(true)
                    .open(&self.path)
                    .map_err(|e| CopyError::journal(&self.path, "open", e))?;
                f.set_len(valid as u64)
                    .and_then(|()| f.sync_data())
                    .map_err(|e| CopyError::journal(&self.path, "truncate", e))?;
                (Some(resume), Found::Matching)
            }
            Some(_) => (None, Found::Discarded),
        };
        if found != Found::Matching {
            let hdr = header(id, dst_zero && found == Found::None);
            depot_os::write_atomic(&self.path, hdr.as_bytes(), 0o600)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| CopyError::journal(&self.path, "open", e))?;
        let (watermark, blocks) = resume
            .as_ref()
            .map_or((0, 0), |r| (r.watermark, r.digests.len() as u64));
        Ok((
            JournalWriter {
                file,
                path: self.path.clone(),
                interval: self.interval,
                watermark,
                blocks,
            },
            resume,
            found,
        ))
    }
}

/// Appends checkpoints; owned by the copier's writer thread.
#[derive(Debug)]
pub(crate) struct JournalWriter {
    file: File,
    path: PathBuf,
    interval: u64,
    watermark: u64,
    /// Digests recorded so far.
    blocks: u64,
}

impl JournalWriter {
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Whether a checkpoint at `watermark` is due.
    pub fn due(&self, watermark: u64) -> bool {
        watermark >= self.watermark.saturating_add(self.interval)
    }

    /// Records `watermark` with the digests of the blocks completed since
    /// the last record. The caller has already made the destination durable
    /// up to `watermark`.
    pub fn checkpoint(&mut self, watermark: u64, digests: &[BlockDigest]) -> Result<(), CopyError> {
        if watermark <= self.watermark && digests.is_empty() {
            return Ok(());
        }
        let line = record_line(watermark, digests);
        (&self.file)
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| CopyError::journal(&self.path, "append", e))?;
        self.watermark = watermark;
        self.blocks += digests.len() as u64;
        Ok(())
    }
}

// Used by tests to corrupt a journal's tail.
#[cfg(test)]
fn append_raw(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.write_all_at(bytes, len).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            src: "/a b/src%1\n".into(),
            dst: "/dst".into(),
            size: 100 << 20,
            src_dev: 1,
            src_ino: 2,
            src_mtime: (1700000000, 5),
            dst_dev: 3,
            dst_ino: 4,
            dst_rdev: 0,
            generation: 7,
            block_size: 4 << 20,
        }
    }

    #[test]
    fn header_escapes_paths() {
        let h = header(&id(), true);
        assert!(h.contains("src /a%20b/src%251%0A\n"), "{h}");
        assert!(h.starts_with("depot-copy-journal 2\n"), "{h}");
        assert!(h.ends_with("\ndst-zero 1\nrecords\n"), "{h}");
        assert_eq!(h.lines().count(), 10);
    }

    #[test]
    fn fresh_then_resume_then_discard() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("j"), 7).with_interval(8 << 20);
        let (mut w, r, found) = j.begin(&id(), true).unwrap();
        assert!(r.is_none());
        assert_eq!(found, Found::None);
        assert!(!w.due(4 << 20));
        assert!(w.due(8 << 20));
        w.checkpoint(8 << 20, &[[1; 32], [2; 32]]).unwrap();
        w.checkpoint(12 << 20, &[[3; 32]]).unwrap();
        drop(w);
        let st = j.state().unwrap();
        assert_eq!((st.watermark, st.digests), (12 << 20, 3));

        // Same identity: resume with the digests.
        let (w, r, found) = j.begin(&id(), true).unwrap();
        assert_eq!(found, Found::Matching);
        let r = r.unwrap();
        assert_eq!(r.watermark, 12 << 20);
        assert_eq!(r.digests, vec![[1; 32], [2; 32], [3; 32]]);
        assert_eq!(w.blocks(), 3);
        drop(w);

        // A torn append is ignored and cut off.
        append_raw(j.path(), b"ckpt 16777216 abcd");
        let (mut w, r, _) = j.begin(&id(), true).unwrap();
        assert_eq!(r.unwrap().watermark, 12 << 20);
        w.checkpoint(16 << 20, &[[4; 32]]).unwrap();
        drop(w);
        assert_eq!(j.state().unwrap().watermark, 16 << 20);

        // A bad check value ends the valid records.
        let line = record_line(20 << 20, &[[5; 32]]).replace("ckpt 20971520", "ckpt 20971521");
        append_raw(j.path(), line.as_bytes());
        assert_eq!(j.state().unwrap().watermark, 16 << 20);

        // Another generation: discarded.
        let mut other = id();
        other.generation = 8;
        let (_w, r, found) = j.begin(&other, true).unwrap();
        assert!(r.is_none());
        assert_eq!(found, Found::Discarded);
        assert_eq!(j.state().unwrap().watermark, 0);

        j.remove().unwrap();
        assert!(!j.exists());
        j.remove().unwrap();
    }

    #[test]
    fn check_is_blake2b_64() {
        // hashlib.blake2b(b"ckpt 4194304 -", digest_size=8).hexdigest()
        assert_eq!(check("ckpt 4194304 -"), "5d1105c401b7ea0b");
    }

    #[test]
    fn dst_zero_is_kept_from_the_first_run() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("j"), 7);
        let (mut w, _, _) = j.begin(&id(), true).unwrap();
        w.checkpoint(4 << 20, &[[1; 32]]).unwrap();
        drop(w);
        assert!(j.state().unwrap().dst_zero);
        // The resumed run no longer sees a zero destination (it has data
        // now), but the journal says it began as zeros.
        let (_w, r, found) = j.begin(&id(), false).unwrap();
        assert_eq!(found, Found::Matching);
        assert!(r.unwrap().dst_zero);
        assert!(j.state().unwrap().dst_zero);

        // Over a discarded journal a zero destination is not recorded.
        let mut other = id();
        other.generation = 9;
        let (_w, r, found) = j.begin(&other, true).unwrap();
        assert_eq!((r.is_none(), found), (true, Found::Discarded));
        assert!(!j.state().unwrap().dst_zero);
        let (_w, r, _) = j.begin(&other, true).unwrap();
        assert!(!r.unwrap().dst_zero);

        // A version 1 journal (no dst-zero line) is discarded.
        let v1 = identity(&id()).replace("depot-copy-journal 2", "depot-copy-journal 1")
            + "records\n"
            + &record_line(4 << 20, &[[1; 32]]);
        fs::write(j.path(), v1).unwrap();
        assert!(j.state().is_none());
        let (_w, r, found) = j.begin(&id(), true).unwrap();
        assert_eq!((r.is_none(), found), (true, Found::Discarded));
    }

    #[test]
    fn garbage_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("j"), 7);
        fs::write(j.path(), b"\xff\xfe not a journal").unwrap();
        assert!(j.state().is_none());
        let (_w, r, found) = j.begin(&id(), true).unwrap();
        assert!(r.is_none());
        assert_eq!(found, Found::Discarded);
    }

    #[test]
    fn no_checksum_records_any_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("j"), 1);
        let mut i = id();
        i.block_size = 0;
        let (mut w, _, _) = j.begin(&i, false).unwrap();
        w.checkpoint(12345 * 4096, &[]).unwrap();
        drop(w);
        let (_, r, _) = j.begin(&i, false).unwrap();
        let r = r.unwrap();
        assert_eq!(r.watermark, 12345 * 4096);
        assert!(r.digests.is_empty());
    }
}
