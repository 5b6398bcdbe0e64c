//! depot's OVF_STORE trailer, format 1, checked against docs/formats.md
//! ("The trailer") by a decoder written here from that table alone, not
//! with depot's decoder, and against a golden block:
//! `tests/data/ovf-trailer-v1.bin`, written once by this Python (from the
//! same table, not by depot):
//!
//! ```text
//! import hashlib, struct
//! data_sha = hashlib.sha256(b"depot OVF_STORE trailer fixture, format 1\n").digest()
//! rec = b"DEPOTOVF" + struct.pack("<IIQQ", 1, 2, 7, 10240) + data_sha \
//!     + struct.pack("<Q", 1767225600)
//! rec += hashlib.sha256(rec).digest()
//! open("ovf-trailer-v1.bin", "wb").write(rec + bytes(4096 - len(rec)))
//! ```
//!
//! Stores written by one depot are read by the next: if depot's encoder or
//! decoder drifts from the documented format, these tests fail, while a
//! round trip through depot's own pair would not notice.

use std::path::Path;

use depot_storage::ovf::{self, Trailer, TrailerState};
use sha2::{Digest, Sha256};

/// The fields of the golden block.
const GENERATION: u64 = 7;
const SIZE: u64 = 10240;
const UPDATED: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const DATA: &[u8] = b"depot OVF_STORE trailer fixture, format 1\n";

fn golden() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ovf-trailer-v1.bin");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ---------------------------------------------------------------------------
// The independent decoder, from docs/formats.md
// ---------------------------------------------------------------------------

/// What a block reads as, in the words of docs/formats.md.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Read {
    /// "no magic: never written by depot".
    Unknown,
    /// "the magic with a bad seal, an unknown version or state, non-zero
    /// padding" (a Writing record is a well-formed record of an unfinished
    /// upload: [`Read::Record`] with state 1).
    Torn(&'static str),
    Record(Fields),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fields {
    /// 1 Writing, 2 Valid.
    state: u32,
    generation: u64,
    size: u64,
    sha256: [u8; 32],
    updated: u64,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut v = 0u32;
    for i in (0..4).rev() {
        v = (v << 8) | u32::from(b[at + i]);
    }
    v
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut v = 0u64;
    for i in (0..8).rev() {
        v = (v << 8) | u64::from(b[at + i]);
    }
    v
}

/// | Offset | Size | Field |
/// | 0 | 8 | magic `DEPOTOVF` |
/// | 8 | 4 | format version, 1 |
/// | 12 | 4 | state: 1 Writing, 2 Valid |
/// | 16 | 8 | generation |
/// | 24 | 8 | size of the tar in bytes |
/// | 32 | 32 | sha256 of those bytes |
/// | 64 | 8 | updated, unix seconds |
/// | 72 | 32 | sha256 of bytes 0..72 |
/// | 104 | 3992 | zero |
fn read_per_docs(block: &[u8]) -> Read {
    assert_eq!(block.len(), 4096, "the trailer is one 4096-byte block");
    if &block[0..8] != b"DEPOTOVF" {
        return Read::Unknown;
    }
    if Sha256::digest(&block[0..72])[..] != block[72..104] {
        return Read::Torn("seal");
    }
    if block[104..].iter().any(|&b| b != 0) {
        return Read::Torn("padding");
    }
    if le_u32(block, 8) != 1 {
        return Read::Torn("version");
    }
    let state = le_u32(block, 12);
    if state != 1 && state != 2 {
        return Read::Torn("state");
    }
    Read::Record(Fields {
        state,
        generation: le_u64(block, 16),
        size: le_u64(block, 24),
        sha256: block[32..64].try_into().unwrap(),
        updated: le_u64(block, 64),
    })
}

/// The same reading, as depot's decoder reports it.
fn read_by_depot(block: &[u8]) -> Read {
    match Trailer::decode(block) {
        Ok(None) => Read::Unknown,
        Err(_) => Read::Torn("depot"),
        Ok(Some(t)) => Read::Record(Fields {
            state: match t.state {
                TrailerState::Writing => 1,
                TrailerState::Valid => 2,
            },
            generation: t.generation,
            size: t.size,
            sha256: t.sha256,
            updated: t.updated,
        }),
    }
}

fn same_kind(a: &Read, b: &Read) -> bool {
    match (a, b) {
        (Read::Torn(_), Read::Torn(_)) => true,
        _ => a == b,
    }
}

fn golden_fields() -> Fields {
    Fields {
        state: 2,
        generation: GENERATION,
        size: SIZE,
        sha256: Sha256::digest(DATA).into(),
        updated: UPDATED,
    }
}

fn golden_trailer() -> Trailer {
    Trailer {
        state: TrailerState::Valid,
        generation: GENERATION,
        size: SIZE,
        sha256: Sha256::digest(DATA).into(),
        updated: UPDATED,
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn the_golden_block_is_what_the_docs_describe() {
    let g = golden();
    assert_eq!(g.len(), 4096);
    assert_eq!(read_per_docs(&g), Read::Record(golden_fields()));
    // The bytes themselves, for a reader of this test: the record's head.
    assert_eq!(&g[..8], b"DEPOTOVF");
    assert_eq!(&g[8..24], &[1, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&g[24..32], &[0, 0x28, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn depot_encodes_exactly_the_golden_block() {
    let encoded = golden_trailer().encode();
    assert!(
        encoded[..] == golden()[..],
        "depot's encoder drifted from format 1: first difference at byte {:?}",
        encoded.iter().zip(golden()).position(|(a, b)| *a != b)
    );
}

#[test]
fn depot_decodes_the_golden_block() {
    assert_eq!(Trailer::decode(&golden()).unwrap(), Some(golden_trailer()));
}

#[test]
fn both_decoders_read_what_depot_encodes() {
    for state in [TrailerState::Writing, TrailerState::Valid] {
        for (generation, size, updated) in [
            (1, 0, 0),
            (2, 10240, 1_700_000_000),
            (u64::MAX, u64::MAX - 4096, u64::MAX),
            (
                0x0102_0304_0506_0708,
                0x1122_3344_5566_7788,
                0x8877_6655_4433_2211,
            ),
        ] {
            let t = Trailer {
                state,
                generation,
                size,
                sha256: Sha256::digest(size.to_le_bytes()).into(),
                updated,
            };
            let block = t.encode();
            let expected = Read::Record(Fields {
                state: if state == TrailerState::Writing { 1 } else { 2 },
                generation,
                size,
                sha256: t.sha256,
                updated,
            });
            assert_eq!(read_per_docs(&block), expected, "{t:?}");
            assert_eq!(read_by_depot(&block), expected, "{t:?}");
        }
    }
}

/// Every single-byte change of the record, some of the padding, and torn
/// writes of whole sectors: depot's decoder and the documented rules agree
/// on unknown, torn or a record (and on its fields).
#[test]
fn both_decoders_agree_on_damaged_blocks() {
    let g = golden();
    let other = Trailer {
        generation: GENERATION + 1,
        state: TrailerState::Writing,
        ..golden_trailer()
    }
    .encode();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for i in (0..104).chain([104, 511, 512, 2048, 4095]) {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = g.clone();
            b[i] ^= flip;
            cases.push((format!("byte {i} ^ {flip:#x}"), b));
        }
    }
    for sector in 0..8 {
        let mut b = g.clone();
        let r = sector * 512..(sector + 1) * 512;
        b[r.clone()].copy_from_slice(&other[r]);
        cases.push((format!("sector {sector} of another record"), b));
    }
    cases.push(("zeros".into(), vec![0; 4096]));
    cases.push(("the other record".into(), other.to_vec()));
    let mut kinds = std::collections::BTreeMap::new();
    for (what, b) in &cases {
        let (docs, depot) = (read_per_docs(b), read_by_depot(b));
        assert!(
            same_kind(&docs, &depot),
            "{what}: docs say {docs:?}, depot says {depot:?}"
        );
        *kinds
            .entry(match docs {
                Read::Unknown => "unknown",
                Read::Torn(_) => "torn",
                Read::Record(_) => "record",
            })
            .or_insert(0) += 1;
    }
    // The cases reach every outcome.
    assert_eq!(kinds.len(), 3, "{kinds:?}");
}

/// A tar shaped like the engine's (as the README builds one): info.json,
/// one VM's OVF, metadata.json, the end blocks.
fn engine_tar() -> Vec<u8> {
    let vm = "3c1e5b7a-8f0d-4e6b-a1c2-9d8e7f6a5b40";
    let ovf = concat!(
        r#"<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" "#,
        r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
        r#"<Section xsi:type="ovf:DiskSection_Type"></Section>"#,
        r#"<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>trailer</Name>"#,
        r#"</Content></ovf:Envelope>"#
    );
    let mut b = tar::Builder::new(Vec::new());
    for (name, text) in [
        ("info.json", r#"{"Last Updated": "now"}"#.to_string()),
        (&format!("{vm}.ovf"), ovf.to_string()),
        ("metadata.json", "{}".to_string()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, text.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

/// What depot writes into a real volume reads, by the documented rules, as
/// a Valid record of that upload.
#[test]
fn a_committed_store_carries_a_documented_trailer() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("volume");
    let size: u64 = 1 << 20;
    std::fs::File::create(&vol).unwrap().set_len(size).unwrap();
    let tar = engine_tar();
    let volume = ovf::StoreFile::local(vol.clone());
    let staging = volume.staging();
    let mut rest = &tar[..];
    let staged = ovf::stage_upload(&staging, tar.len() as u64, |buf| {
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        Ok(n)
    })
    .unwrap();
    let t = ovf::commit(&volume, size, &staged, 512).unwrap();
    let bytes = std::fs::read(&vol).unwrap();
    let block = &bytes[(size - 4096) as usize..];
    let Read::Record(f) = read_per_docs(block) else {
        panic!("not a record: {:?}", read_per_docs(block))
    };
    assert_eq!(f.state, 2, "Valid");
    assert_eq!(f.generation, 1, "the first upload");
    assert_eq!(f.size, tar.len() as u64);
    assert_eq!(f.sha256[..], Sha256::digest(&tar)[..]);
    assert_eq!(f.updated, t.updated);
    assert!(bytes[..tar.len()] == tar[..]);
    // And a second upload: generation 2.
    let mut rest = &tar[..];
    let staged = ovf::stage_upload(&staging, tar.len() as u64, |buf| {
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        Ok(n)
    })
    .unwrap();
    ovf::commit(&volume, size, &staged, 512).unwrap();
    let bytes = std::fs::read(&vol).unwrap();
    match read_per_docs(&bytes[(size - 4096) as usize..]) {
        Read::Record(f) => assert_eq!((f.state, f.generation), (2, 2)),
        other => panic!("{other:?}"),
    }
}
