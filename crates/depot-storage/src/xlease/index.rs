//! The `xleases` index, VDSM's format version 1 (docs/formats.md,
//! "xleases"): which lease id owns which lease slot of the volume.
//!
//! The index lives at one alignment into the `xleases` volume (slot 0 is
//! left for a lockspace, unused), and is `INDEX_SIZE` bytes: a 512-byte
//! metadata block, then 64-byte records. Record `n` names the lease whose
//! sanlock resource is at `(RESERVED_SLOTS + n) × alignment`: the offset
//! follows from the record's place, so two records can never point at
//! the same lease (the offset written in a record is for people reading a
//! dump, never used).
//!
//! Metadata block (big-endian magic, text fields, NUL separators):
//!
//! ```text
//! 0    magic 0x12152016 (4 bytes, big-endian)
//! 5    version, 4 decimal digits ("0001")
//! 10   lockspace (the domain id), 48 bytes, NUL-padded ASCII
//! 59   mtime, 10 decimal digits (seconds since the epoch)
//! 70   updating flag: 'u' while the whole index is being rewritten, '-'
//! 511  '\n'
//! ```
//!
//! Record:
//!
//! ```text
//! 0    lease id, 48 bytes, NUL-padded ASCII (all NUL: a free record)
//! 49   offset, 11 decimal digits
//! 61   updating flag: 'u' between "slot taken" and "lease written", '-'
//! 62   reserved '-'
//! 63   '\n'
//! ```
//!
//! The separators between fields are NUL when written and not checked
//! when read (VDSM's reader does not check them either). Everything else
//! is parsed strictly, within the slice given: a short buffer, a bad
//! magic, an unknown version or a field that is not what the format says
//! is an error naming what, never a panic.

use std::fmt;

/// `0x12152016`, VDSM's `INDEX_MAGIC`.
pub const MAGIC: u32 = 0x1215_2016;
/// The index format version written and read (VDSM's `INDEX_VERSION`).
pub const VERSION: u32 = 1;
/// The metadata block, also on 4 KiB storage.
pub const METADATA_SIZE: usize = 512;
/// One record.
pub const RECORD_SIZE: usize = 64;
/// The index read and written as a whole: 62 × 4 KiB (VDSM's, aligned
/// for 4 KiB storage).
pub const INDEX_SIZE: usize = 62 * 4096;
/// Records the index holds: 3960.
pub const MAX_RECORDS: usize = (INDEX_SIZE - METADATA_SIZE) / RECORD_SIZE;
/// Slots before the first lease: lockspace, index, the index's own lease
/// (reserved for sanlock, unused).
pub const RESERVED_SLOTS: u64 = 3;
/// The longest lease id (sanlock's resource name length).
pub const NAME_LEN: usize = 48;

const FLAG_NONE: u8 = b'-';
const FLAG_UPDATING: u8 = b'u';
const TERM: u8 = b'\n';

/// Where the index starts in the volume.
pub fn index_offset(alignment: u64) -> u64 {
    alignment
}

/// Where record `recnum`'s lease is in the volume.
pub fn lease_offset(recnum: usize, alignment: u64) -> u64 {
    (RESERVED_SLOTS + recnum as u64) * alignment
}

/// How many leases a volume of `size` bytes holds (at most
/// [`MAX_RECORDS`]): 1021 in VDSM's 1 GiB block LV at 1 MiB alignment.
pub fn capacity(size: u64, alignment: u64) -> usize {
    let slots = (size / alignment.max(1)).saturating_sub(RESERVED_SLOTS);
    usize::try_from(slots)
        .unwrap_or(usize::MAX)
        .min(MAX_RECORDS)
}

/// Why an index cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("index truncated: {got} bytes of {expected}")]
    Truncated { expected: usize, got: usize },
    #[error("invalid index metadata: {0}")]
    Metadata(String),
    #[error("invalid index record {recnum}: {reason}")]
    Record { recnum: usize, reason: String },
}

/// The metadata block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub version: u32,
    /// The sanlock lockspace of the leases: the domain id.
    pub lockspace: String,
    pub mtime: u64,
    /// A whole-index rewrite (format, rebuild) did not finish.
    pub updating: bool,
}

impl Metadata {
    pub fn new(lockspace: &str, mtime: u64, updating: bool) -> Metadata {
        Metadata {
            version: VERSION,
            lockspace: lockspace.to_owned(),
            mtime,
            updating,
        }
    }

    /// Parses the first [`METADATA_SIZE`] bytes of `data`.
    pub fn parse(data: &[u8]) -> Result<Metadata, IndexError> {
        let bad = |why: String| IndexError::Metadata(why);
        let block = data.get(..METADATA_SIZE).ok_or(IndexError::Truncated {
            expected: METADATA_SIZE,
            got: data.len(),
        })?;
        let magic = u32::from_be_bytes([block[0], block[1], block[2], block[3]]);
        if magic != MAGIC {
            return Err(bad(format!("magic {magic:#010x}, expected {MAGIC:#010x}")));
        }
        let version = digits(&block[5..9]).ok_or_else(|| {
            bad(format!(
                "version {:?} is not a number",
                String::from_utf8_lossy(&block[5..9])
            ))
        })?;
        if version != u64::from(VERSION) {
            return Err(bad(format!(
                "unsupported version {version} (depot reads {VERSION})"
            )));
        }
        let lockspace =
            name(&block[10..10 + NAME_LEN]).map_err(|why| bad(format!("lockspace: {why}")))?;
        let mtime = digits(&block[59..69]).ok_or_else(|| {
            bad(format!(
                "mtime {:?} is not a number",
                String::from_utf8_lossy(&block[59..69])
            ))
        })?;
        Ok(Metadata {
            version: VERSION,
            lockspace,
            mtime,
            updating: block[70] == FLAG_UPDATING,
        })
    }

    /// The block as written: `lockspace` must be ASCII of at most 48 bytes
    /// (a domain id is 36) and `mtime` at most 10 digits.
    pub fn to_bytes(&self) -> [u8; METADATA_SIZE] {
        let mut b = [0u8; METADATA_SIZE];
        b[..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[5..9].copy_from_slice(format!("{:04}", self.version % 10_000).as_bytes());
        put_name(&mut b[10..10 + NAME_LEN], &self.lockspace);
        b[59..69].copy_from_slice(format!("{:010}", self.mtime % 10_000_000_000).as_bytes());
        b[70] = if self.updating {
            FLAG_UPDATING
        } else {
            FLAG_NONE
        };
        b[METADATA_SIZE - 1] = TERM;
        b
    }
}

/// One record: a lease id (empty: free), the offset written for readers,
/// and whether the lease was being created or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lease: String,
    pub offset: u64,
    pub updating: bool,
}

impl Record {
    /// The free record: no name, offset 0.
    pub fn empty() -> Record {
        Record {
            lease: String::new(),
            offset: 0,
            updating: false,
        }
    }

    pub fn is_free(&self) -> bool {
        self.lease.is_empty()
    }

    /// Parses one [`RECORD_SIZE`] record (`recnum` for messages).
    pub fn parse(recnum: usize, data: &[u8]) -> Result<Record, IndexError> {
        let bad = |reason: String| IndexError::Record { recnum, reason };
        let r = data.get(..RECORD_SIZE).ok_or_else(|| {
            bad(format!(
                "{} bytes, a record is {RECORD_SIZE}",
                data.len().min(RECORD_SIZE)
            ))
        })?;
        let lease = name(&r[..NAME_LEN]).map_err(|why| bad(format!("lease id: {why}")))?;
        let offset = digits(&r[49..60]).ok_or_else(|| {
            bad(format!(
                "offset {:?} is not a number",
                String::from_utf8_lossy(&r[49..60])
            ))
        })?;
        if r[RECORD_SIZE - 1] != TERM {
            return Err(bad("no newline at its end".into()));
        }
        Ok(Record {
            lease,
            offset,
            updating: r[61] == FLAG_UPDATING,
        })
    }

    pub fn to_bytes(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        put_name(&mut b[..NAME_LEN], &self.lease);
        b[49..60].copy_from_slice(format!("{:011}", self.offset % 100_000_000_000).as_bytes());
        b[61] = if self.updating {
            FLAG_UPDATING
        } else {
            FLAG_NONE
        };
        b[62] = FLAG_NONE;
        b[RECORD_SIZE - 1] = TERM;
        b
    }
}

/// The whole index in memory, exactly [`INDEX_SIZE`] bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Index {
    buf: Vec<u8>,
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index")
            .field("metadata", &Metadata::parse(&self.buf))
            .finish()
    }
}

impl Index {
    /// A new index of `lockspace` with every record free.
    pub fn formatted(lockspace: &str, mtime: u64, updating: bool) -> Index {
        let mut idx = Index {
            buf: vec![0; INDEX_SIZE],
        };
        idx.set_metadata(&Metadata::new(lockspace, mtime, updating));
        let empty = Record::empty().to_bytes();
        for n in 0..MAX_RECORDS {
            idx.buf[record_at(n)..record_at(n) + RECORD_SIZE].copy_from_slice(&empty);
        }
        idx
    }

    /// The index read from storage: `data` must hold [`INDEX_SIZE`] bytes
    /// (more are ignored) and a valid metadata block. Records are parsed
    /// when asked for.
    pub fn from_bytes(mut data: Vec<u8>) -> Result<Index, IndexError> {
        if data.len() < INDEX_SIZE {
            return Err(IndexError::Truncated {
                expected: INDEX_SIZE,
                got: data.len(),
            });
        }
        data.truncate(INDEX_SIZE);
        Metadata::parse(&data)?;
        Ok(Index { buf: data })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn metadata(&self) -> Result<Metadata, IndexError> {
        Metadata::parse(&self.buf)
    }

    pub fn set_metadata(&mut self, md: &Metadata) {
        self.buf[..METADATA_SIZE].copy_from_slice(&md.to_bytes());
    }

    /// Record `recnum` (< [`MAX_RECORDS`]).
    pub fn record(&self, recnum: usize) -> Result<Record, IndexError> {
        if recnum >= MAX_RECORDS {
            return Err(IndexError::Record {
                recnum,
                reason: format!("beyond the last record ({})", MAX_RECORDS - 1),
            });
        }
        let at = record_at(recnum);
        Record::parse(recnum, &self.buf[at..at + RECORD_SIZE])
    }

    /// Replaces record `recnum` (< [`MAX_RECORDS`]) in memory.
    pub fn set_record(&mut self, recnum: usize, rec: &Record) {
        assert!(recnum < MAX_RECORDS, "record {recnum} out of the index");
        let at = record_at(recnum);
        self.buf[at..at + RECORD_SIZE].copy_from_slice(&rec.to_bytes());
    }

    /// The record of `lease`, among the first `limit` (a record that
    /// cannot be parsed is not it).
    pub fn find(&self, lease: &str, limit: usize) -> Option<usize> {
        (0..limit.min(MAX_RECORDS)).find(|&n| {
            self.record(n)
                .is_ok_and(|r| !r.is_free() && r.lease == lease)
        })
    }

    /// The first free record among the first `limit`: exactly the bytes
    /// of a free record (a damaged one is never reused before a rebuild).
    pub fn find_free(&self, limit: usize) -> Option<usize> {
        let empty = Record::empty().to_bytes();
        (0..limit.min(MAX_RECORDS))
            .find(|&n| self.buf[record_at(n)..record_at(n) + RECORD_SIZE] == empty)
    }

    /// The `block_size` block that holds record `recnum`: its offset from
    /// the start of the index and its bytes, to be written whole (one
    /// sector: the update cannot tear another record).
    pub fn block_of(&self, recnum: usize, block_size: usize) -> (u64, &[u8]) {
        self.block_at(record_at(recnum), block_size)
    }

    /// The first block (the metadata's).
    pub fn first_block(&self, block_size: usize) -> (u64, &[u8]) {
        self.block_at(0, block_size)
    }

    fn block_at(&self, at: usize, block_size: usize) -> (u64, &[u8]) {
        let bs = block_size.clamp(METADATA_SIZE, INDEX_SIZE);
        let start = at - at % bs;
        let end = (start + bs).min(INDEX_SIZE);
        (start as u64, &self.buf[start..end])
    }
}

/// Byte offset of record `n` in the index.
fn record_at(n: usize) -> usize {
    METADATA_SIZE + n * RECORD_SIZE
}

/// A decimal number written as exactly these digits.
fn digits(field: &[u8]) -> Option<u64> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// A NUL-padded name: printable ASCII, then NULs only.
fn name(field: &[u8]) -> Result<String, String> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let (text, pad) = field.split_at(end);
    if pad.iter().any(|&b| b != 0) {
        return Err("bytes after its NUL padding".into());
    }
    if !text.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{:?} is not printable ASCII",
            String::from_utf8_lossy(text)
        ));
    }
    Ok(String::from_utf8_lossy(text).into_owned())
}

fn put_name(field: &mut [u8], name: &str) {
    let bytes = name.as_bytes();
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD: &str = "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a";
    const LEASE: &str = "0b8c7f1e-3a2d-4e5f-8a9b-1c2d3e4f5a6b";

    #[test]
    fn layout_is_vdsms() {
        assert_eq!(INDEX_SIZE, 253_952);
        assert_eq!(MAX_RECORDS, 3960);
        let mib = 1 << 20;
        assert_eq!(index_offset(mib), mib);
        assert_eq!(lease_offset(0, mib), 3 * mib);
        assert_eq!(lease_offset(5, 8 * mib), 64 * mib);
        // VDSM's block LV: 1024 slots.
        assert_eq!(capacity(1024 * mib, mib), 1021);
        assert_eq!(capacity(0, mib), 0);
        assert_eq!(capacity(u64::MAX, mib), MAX_RECORDS);
    }

    #[test]
    fn metadata_bytes_are_vdsms() {
        let md = Metadata::new(SD, 1_234_567_890, false);
        let b = md.to_bytes();
        assert_eq!(&b[..4], &[0x12, 0x15, 0x20, 0x16]);
        assert_eq!(b[4], 0);
        assert_eq!(&b[5..9], b"0001");
        assert_eq!(&b[10..46], SD.as_bytes());
        assert!(b[46..59].iter().all(|&x| x == 0));
        assert_eq!(&b[59..69], b"1234567890");
        assert_eq!(b[70], b'-');
        assert!(b[71..511].iter().all(|&x| x == 0));
        assert_eq!(b[511], b'\n');
        assert_eq!(Metadata::parse(&b).unwrap(), md);
        let up = Metadata::new(SD, 7, true);
        assert_eq!(up.to_bytes()[70], b'u');
        assert!(Metadata::parse(&up.to_bytes()).unwrap().updating);
    }

    #[test]
    fn record_bytes_are_vdsms() {
        let r = Record {
            lease: LEASE.into(),
            offset: 3 << 20,
            updating: true,
        };
        let b = r.to_bytes();
        assert_eq!(&b[..36], LEASE.as_bytes());
        assert!(b[36..49].iter().all(|&x| x == 0));
        assert_eq!(&b[49..60], b"00003145728");
        assert_eq!(&b[60..64], b"\0u-\n");
        assert_eq!(Record::parse(0, &b).unwrap(), r);
        let e = Record::empty().to_bytes();
        assert!(e[..49].iter().all(|&x| x == 0));
        assert_eq!(&e[49..64], b"00000000000\0--\n");
        assert!(Record::parse(0, &e).unwrap().is_free());
    }

    #[test]
    fn metadata_is_checked() {
        let good = Metadata::new(SD, 1, false).to_bytes();
        // Short.
        assert!(matches!(
            Metadata::parse(&good[..511]),
            Err(IndexError::Truncated { got: 511, .. })
        ));
        assert!(Metadata::parse(&[]).is_err());
        // Magic: zeros (a volume never formatted), little-endian.
        let mut b = good;
        b[..4].copy_from_slice(&MAGIC.to_le_bytes());
        let e = Metadata::parse(&b).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
        assert!(Metadata::parse(&[0u8; 512]).is_err());
        // Versions.
        for v in [b"0002", b"0000", b"000x", b" 001"] {
            let mut b = good;
            b[5..9].copy_from_slice(v);
            assert!(Metadata::parse(&b).is_err(), "{v:?}");
        }
        // Lockspace: not ASCII, a byte after the padding.
        let mut b = good;
        b[12] = 0xff;
        assert!(Metadata::parse(&b).is_err());
        let mut b = good;
        b[50] = b'x';
        assert!(Metadata::parse(&b).is_err());
        // mtime.
        let mut b = good;
        b[60] = b'-';
        assert!(Metadata::parse(&b).is_err());
    }

    #[test]
    fn records_are_checked() {
        let good = Record {
            lease: LEASE.into(),
            offset: 9,
            updating: false,
        }
        .to_bytes();
        assert!(Record::parse(3, &good[..63]).is_err());
        let mut b = good;
        b[63] = b'x';
        assert!(Record::parse(3, &b).is_err());
        let mut b = good;
        b[50] = b'a';
        let e = Record::parse(3, &b).unwrap_err();
        assert!(matches!(e, IndexError::Record { recnum: 3, .. }), "{e}");
        let mut b = good;
        b[0] = b'\n';
        assert!(Record::parse(3, &b).is_err());
    }

    #[test]
    fn an_index_finds_and_frees_records() {
        let mut idx = Index::formatted(SD, 5, false);
        assert_eq!(idx.as_bytes().len(), INDEX_SIZE);
        assert_eq!(idx.metadata().unwrap(), Metadata::new(SD, 5, false));
        assert_eq!(idx.find(LEASE, MAX_RECORDS), None);
        assert_eq!(idx.find_free(MAX_RECORDS), Some(0));
        idx.set_record(
            0,
            &Record {
                lease: LEASE.into(),
                offset: lease_offset(0, 1 << 20),
                updating: false,
            },
        );
        assert_eq!(idx.find(LEASE, MAX_RECORDS), Some(0));
        assert_eq!(idx.find(LEASE, 0), None);
        assert_eq!(idx.find_free(MAX_RECORDS), Some(1));
        assert_eq!(idx.find_free(1), None, "a full index");
        // Round trip through bytes.
        let back = Index::from_bytes(idx.as_bytes().to_vec()).unwrap();
        assert_eq!(back, idx);
        assert!(matches!(
            Index::from_bytes(idx.as_bytes()[..INDEX_SIZE - 1].to_vec()),
            Err(IndexError::Truncated { .. })
        ));
        assert!(Index::from_bytes(vec![0; INDEX_SIZE]).is_err());
        // A damaged record is neither found nor reused.
        let mut raw = idx.as_bytes().to_vec();
        raw[METADATA_SIZE + RECORD_SIZE + 63] = b'x';
        let damaged = Index::from_bytes(raw).unwrap();
        assert!(damaged.record(1).is_err());
        assert_eq!(damaged.find_free(MAX_RECORDS), Some(2));
        assert!(idx.record(MAX_RECORDS).is_err());
    }

    #[test]
    fn blocks_hold_their_record() {
        let idx = Index::formatted(SD, 5, false);
        // Record 0 is in the first 512-byte block after the metadata.
        assert_eq!(idx.block_of(0, 512).0, 512);
        assert_eq!(idx.block_of(7, 512).0, 512);
        assert_eq!(idx.block_of(8, 512).0, 1024);
        // With 4 KiB blocks the metadata shares the first block.
        assert_eq!(idx.block_of(0, 4096).0, 0);
        assert_eq!(idx.block_of(56, 4096).0, 4096);
        let (at, bytes) = idx.block_of(MAX_RECORDS - 1, 4096);
        assert_eq!(at as usize + bytes.len(), INDEX_SIZE);
        assert_eq!(idx.first_block(512).1.len(), 512);
    }
}
