//! depot's integrity record of an OVF_STORE volume, kept in the volume's
//! last 4 KiB block. Tar readers stop at the archive's end blocks and never
//! reach it; VDSM and the engine read only `Size` bytes from offset 0.
//!
//! Layout (little-endian, 4096 bytes; docs/formats.md):
//!
//! | Offset | Size | Field |
//! |---|---|---|
//! | 0 | 8 | magic `DEPOTOVF` |
//! | 8 | 4 | format version, 1 |
//! | 12 | 4 | state: 1 Writing, 2 Valid |
//! | 16 | 8 | generation, +1 per upload |
//! | 24 | 8 | size of the tar in bytes |
//! | 32 | 32 | sha256 of those bytes |
//! | 64 | 8 | updated, unix seconds |
//! | 72 | 32 | sha256 of bytes 0..72 (the record's own seal) |
//! | 104 | 3992 | zero |
//!
//! No magic = the volume was never written by depot (an engine-era store
//! written by VDSM): [`Trailer::decode`] returns `Ok(None)`. Magic with a
//! bad seal, an unknown version or state, or non-zero padding = a torn or
//! corrupt record: `Err`.

use sha2::{Digest, Sha256};
use std::fmt;

/// The size of the trailer block, and the granularity of its place.
pub const TRAILER_SIZE: usize = 4096;
pub const MAGIC: &[u8; 8] = b"DEPOTOVF";
pub const FORMAT_VERSION: u32 = 1;
/// Bytes covered by the seal.
const SEALED: usize = 72;
const SEAL_END: usize = SEALED + 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrailerState {
    /// An upload is being copied in: the data may be partly old, partly new.
    Writing,
    /// The first `size` bytes are the tar whose sha256 is recorded.
    Valid,
}

impl TrailerState {
    fn number(self) -> u32 {
        match self {
            TrailerState::Writing => 1,
            TrailerState::Valid => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TrailerState::Writing => "writing",
            TrailerState::Valid => "valid",
        }
    }
}

/// The record. In the Writing state, `size` and `sha256` describe the
/// upload being written (for diagnosis only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    pub state: TrailerState,
    pub generation: u64,
    pub size: u64,
    pub sha256: [u8; 32],
    /// Unix seconds.
    pub updated: u64,
}

/// Why a block with the magic is not a usable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailerError(pub String);

impl fmt::Display for TrailerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TrailerError {}

impl Trailer {
    /// The 4096-byte block.
    pub fn encode(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.state.number().to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..32].copy_from_slice(&self.size.to_le_bytes());
        b[32..64].copy_from_slice(&self.sha256);
        b[64..72].copy_from_slice(&self.updated.to_le_bytes());
        let seal = Sha256::digest(&b[..SEALED]);
        b[SEALED..SEAL_END].copy_from_slice(&seal);
        b
    }

    /// Reads a trailer block: `Ok(None)` without the magic (never written
    /// by depot), `Err` for a torn or corrupt record.
    pub fn decode(block: &[u8]) -> Result<Option<Trailer>, TrailerError> {
        if block.len() != TRAILER_SIZE {
            return Err(TrailerError(format!(
                "trailer block of {} bytes, expected {TRAILER_SIZE}",
                block.len()
            )));
        }
        if &block[0..8] != MAGIC {
            return Ok(None);
        }
        let seal = Sha256::digest(&block[..SEALED]);
        if block[SEALED..SEAL_END] != seal[..] {
            return Err(TrailerError(
                "the trailer's own checksum does not match (torn trailer write)".into(),
            ));
        }
        if block[SEAL_END..].iter().any(|&b| b != 0) {
            return Err(TrailerError(
                "non-zero bytes after the trailer record".into(),
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes(block[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(block[i..i + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(TrailerError(format!(
                "trailer format version {version}, this depot reads {FORMAT_VERSION}"
            )));
        }
        let state = match u32_at(12) {
            1 => TrailerState::Writing,
            2 => TrailerState::Valid,
            n => return Err(TrailerError(format!("unknown trailer state {n}"))),
        };
        Ok(Some(Trailer {
            state,
            generation: u64_at(16),
            size: u64_at(24),
            sha256: block[32..64].try_into().unwrap(),
            updated: u64_at(64),
        }))
    }

    /// The data checksum as lower-case hex.
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Where the trailer of a volume of `volume_size` bytes starts: the last
/// whole 4096-byte block. `None` if the volume cannot hold a trailer and at
/// least one block of data.
pub fn trailer_offset(volume_size: u64) -> Option<u64> {
    let end = volume_size / TRAILER_SIZE as u64 * TRAILER_SIZE as u64;
    if end < 2 * TRAILER_SIZE as u64 {
        return None;
    }
    Some(end - TRAILER_SIZE as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(state: TrailerState) -> Trailer {
        Trailer {
            state,
            generation: 42,
            size: 12_800,
            sha256: Sha256::digest(b"tar").into(),
            updated: 1_700_000_000,
        }
    }

    #[test]
    fn round_trip() {
        for state in [TrailerState::Writing, TrailerState::Valid] {
            let t = sample(state);
            let b = t.encode();
            assert_eq!(b.len(), 4096);
            assert_eq!(&b[0..8], b"DEPOTOVF");
            assert_eq!(Trailer::decode(&b).unwrap(), Some(t));
        }
    }

    #[test]
    fn no_magic_is_unknown() {
        assert_eq!(Trailer::decode(&[0u8; 4096]).unwrap(), None);
        let junk: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        assert_eq!(Trailer::decode(&junk).unwrap(), None);
    }

    #[test]
    fn torn_record_is_detected() {
        let good = sample(TrailerState::Valid).encode();
        // Any changed byte of the record breaks the seal.
        for i in [8usize, 12, 16, 24, 40, 64, 80, 103] {
            let mut b = good;
            b[i] ^= 0x10;
            let e = Trailer::decode(&b).unwrap_err();
            assert!(e.0.contains("torn"), "byte {i}: {e}");
        }
        // A half-written block: the new record's first sector, the old one's rest.
        let other = Trailer {
            generation: 43,
            ..sample(TrailerState::Writing)
        }
        .encode();
        let mut mixed = good;
        mixed[..64].copy_from_slice(&other[..64]);
        assert!(Trailer::decode(&mixed).is_err());
        // Garbage after the record.
        let mut b = good;
        b[4000] = 1;
        assert!(Trailer::decode(&b)
            .unwrap_err()
            .0
            .contains("after the trailer"));
        assert!(Trailer::decode(&good[..512]).is_err());
    }

    #[test]
    fn offsets() {
        assert_eq!(trailer_offset(128 << 20), Some((128 << 20) - 4096));
        assert_eq!(trailer_offset(8192), Some(4096));
        assert_eq!(trailer_offset(8192 + 100), Some(4096));
        assert_eq!(trailer_offset(8191), None);
        assert_eq!(trailer_offset(0), None);
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
    }
}
