//! A volume's metadata record in a V5 domain: the content of
//! `images/<img>/<vol>.meta` on file domains (VDSM
//! `lib/vdsm/storage/volumemetadata.py`, keys in `constants.py`).
//!
//! The record is `KEY=value\n` lines sorted by key, then `EOF\n`, UTF-8, at
//! most 512 bytes: the size block storage can write atomically, kept on
//! file domains too because a disk can move between the two. No seal.

use std::str::FromStr;

use depot_api::storage::{
    AllocType, DiskType, ImgUuid, Legality, SdUuid, VolType, VolUuid, VolumeFormat,
};
use depot_api::Code;

use super::pytext::{bytes_splitlines, py_strip};
use crate::error::{StorageError, StorageResult};

/// Largest record (`sc.METADATA_SIZE`).
pub const METADATA_SIZE: usize = 512;

/// Longest DESCRIPTION in characters (`sc.DESCRIPTION_SIZE`; VDSM calls it
/// bytes but counts Python characters).
pub const DESCRIPTION_SIZE: usize = 210;

/// Largest GEN (`sc.MAX_GENERATION`); the next one is 0.
pub const MAX_GENERATION: u32 = 999;

/// The record's keys, as VDSM spells them.
pub mod keys {
    pub const CAP: &str = "CAP";
    pub const CTIME: &str = "CTIME";
    pub const DESCRIPTION: &str = "DESCRIPTION";
    pub const DISKTYPE: &str = "DISKTYPE";
    pub const DOMAIN: &str = "DOMAIN";
    pub const FORMAT: &str = "FORMAT";
    pub const GEN: &str = "GEN";
    pub const IMAGE: &str = "IMAGE";
    pub const LEGALITY: &str = "LEGALITY";
    pub const PUUID: &str = "PUUID";
    pub const SEQ: &str = "SEQ";
    pub const TYPE: &str = "TYPE";
    pub const VOLTYPE: &str = "VOLTYPE";
    /// V4 only: capacity in 512-byte sectors; read when CAP is missing.
    pub const SIZE: &str = "SIZE";
    /// The key of a record VDSM < 4.20.34 "cleared" on delete.
    pub const NONE: &str = "NONE";
}

const OP_READ: &str = "read volume metadata";
const OP_WRITE: &str = "write volume metadata";

/// One volume's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMetadata {
    /// DOMAIN: the storage domain holding the volume.
    pub domain: SdUuid,
    /// IMAGE: the disk the volume belongs to.
    pub image: ImgUuid,
    /// PUUID: the parent volume, or BLANK for a base volume.
    pub parent: VolUuid,
    /// CAP: virtual size in bytes.
    pub capacity: u64,
    /// FORMAT: RAW or COW.
    pub format: VolumeFormat,
    /// TYPE: PREALLOCATED or SPARSE.
    pub alloc_type: AllocType,
    /// VOLTYPE: LEAF, INTERNAL or SHARED.
    pub vol_type: VolType,
    /// DISKTYPE: what the volume holds.
    pub disk_type: DiskType,
    /// DESCRIPTION: free text, JSON from the engine; at most 210 characters.
    pub description: String,
    /// LEGALITY: whether the data can be trusted.
    pub legality: Legality,
    /// CTIME: creation time, seconds since the epoch.
    pub ctime: u64,
    /// GEN: bumped by operations the engine tracks; 0..=999, wraps.
    pub generation: u32,
    /// SEQ: order of the volume in its image (V5, 4.5+).
    pub sequence: u32,
}

/// The generation after `gen`: `(gen + 1) % 1000`, as VDSM's
/// `storage.utils.next_generation`.
pub fn next_generation(gen: u32) -> u32 {
    (gen % (MAX_GENERATION + 1) + 1) % (MAX_GENERATION + 1)
}

impl VolumeMetadata {
    /// Reads a record as VDSM's `volumemetadata.parse` does: trailing NULs
    /// dropped, lines split at `\n`/`\r`/`\r\n`, reading stops at a line
    /// starting with `EOF`, lines without `=` skipped, keys and values
    /// stripped, unknown keys ignored. A record with a `NONE` key was
    /// cleared (757). GEN and SEQ default to 0; CAP falls back to V4's
    /// SIZE × 512. A missing key is 750 and a bad value 753, naming the key.
    /// A DESCRIPTION over 210 characters is cut to 210, as VDSM does when
    /// it loads one (old engines wrote longer ones), and white space the
    /// cut leaves at its end is dropped (as a read of what is written
    /// would).
    pub fn parse(data: &[u8]) -> StorageResult<VolumeMetadata> {
        let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let mut fields = std::collections::BTreeMap::new();
        for (n, raw) in bytes_splitlines(&data[..end]).into_iter().enumerate() {
            let line = std::str::from_utf8(raw).map_err(|e| {
                StorageError::new(
                    Code::MetaDataValidationError,
                    OP_READ,
                    format!("line {} is not UTF-8: {e}", n + 1),
                )
                .caused_by(e)
            })?;
            if line.starts_with("EOF") {
                break;
            }
            if let Some((key, value)) = line.split_once('=') {
                fields.insert(py_strip(key), py_strip(value));
            }
        }
        if fields.contains_key(keys::NONE) {
            return Err(StorageError::new(
                Code::MetadataCleared,
                OP_READ,
                "the record holds NONE: it was cleared when the volume was deleted",
            ));
        }
        let get = |key: &'static str| -> StorageResult<&str> {
            fields.get(key).copied().ok_or_else(|| {
                StorageError::new(
                    Code::MetaDataKeyError,
                    OP_READ,
                    format!("required key {key} is missing"),
                )
            })
        };
        let capacity = match (fields.get(keys::CAP), fields.get(keys::SIZE)) {
            (None, Some(sectors)) => typed::<u64>(keys::SIZE, sectors)?
                .checked_mul(512)
                .ok_or_else(|| bad(keys::SIZE, sectors, "is too large"))?,
            _ => typed(keys::CAP, get(keys::CAP)?)?,
        };
        let generation = match fields.get(keys::GEN) {
            None => 0,
            Some(v) => match typed::<u32>(keys::GEN, v)? {
                g if g <= MAX_GENERATION => g,
                _ => return Err(bad(keys::GEN, v, "is not in 0..=999")),
            },
        };
        let sequence = match fields.get(keys::SEQ) {
            None => 0,
            Some(v) => typed(keys::SEQ, v)?,
        };
        let disk_type = match get(keys::DISKTYPE)? {
            // Engines < 4.2 wrote "2", virt-v2v wrote "1": both data disks.
            "1" | "2" => DiskType::Data,
            other => typed(keys::DISKTYPE, other)?,
        };
        let description = get(keys::DESCRIPTION)?;
        if description.chars().count() > DESCRIPTION_SIZE {
            tracing::warn!("volume description is longer than {DESCRIPTION_SIZE} characters; cutting it as VDSM does");
        }
        Ok(VolumeMetadata {
            domain: typed(keys::DOMAIN, get(keys::DOMAIN)?)?,
            image: typed(keys::IMAGE, get(keys::IMAGE)?)?,
            parent: typed(keys::PUUID, get(keys::PUUID)?)?,
            capacity,
            format: typed(keys::FORMAT, get(keys::FORMAT)?)?,
            alloc_type: typed(keys::TYPE, get(keys::TYPE)?)?,
            vol_type: typed(keys::VOLTYPE, get(keys::VOLTYPE)?)?,
            disk_type,
            // Cut, then stripped again: a cut that ends in white space
            // would otherwise read back shorter once written (values are
            // stripped), and parse, write, parse would change it.
            description: py_strip(
                &description
                    .chars()
                    .take(DESCRIPTION_SIZE)
                    .collect::<String>(),
            )
            .to_string(),
            legality: typed(keys::LEGALITY, get(keys::LEGALITY)?)?,
            ctime: typed(keys::CTIME, get(keys::CTIME)?)?,
            generation,
            sequence,
        })
    }

    /// The record as VDSM's `storage_format(5)` writes it: the 13 keys in
    /// sorted order (CAP, CTIME, DESCRIPTION, DISKTYPE, DOMAIN, FORMAT, GEN,
    /// IMAGE, LEGALITY, PUUID, SEQ, TYPE, VOLTYPE), every one written even
    /// when empty, then `EOF\n`; no MTIME or SIZE (V4 only). Refuses (753)
    /// a DESCRIPTION over 210 characters or holding `\n`/`\r` and a GEN
    /// over 999; a record over 512 bytes is MetadataOverflowError (756).
    pub fn to_bytes(&self) -> StorageResult<Vec<u8>> {
        let invalid =
            |detail: String| StorageError::new(Code::MetaDataValidationError, OP_WRITE, detail);
        let n = self.description.chars().count();
        if n > DESCRIPTION_SIZE {
            return Err(invalid(format!(
                "{} has {n} characters, at most {DESCRIPTION_SIZE} are allowed",
                keys::DESCRIPTION
            )));
        }
        if self.description.contains(['\n', '\r']) {
            return Err(invalid(format!("{} holds a line break", keys::DESCRIPTION)));
        }
        if self.generation > MAX_GENERATION {
            return Err(invalid(format!(
                "{} {} is not in 0..={MAX_GENERATION}",
                keys::GEN,
                self.generation
            )));
        }
        let lines: [(&str, String); 13] = [
            (keys::CAP, self.capacity.to_string()),
            (keys::CTIME, self.ctime.to_string()),
            (keys::DESCRIPTION, self.description.clone()),
            (keys::DISKTYPE, self.disk_type.name().to_string()),
            (keys::DOMAIN, self.domain.to_string()),
            (keys::FORMAT, self.format.name().to_string()),
            (keys::GEN, self.generation.to_string()),
            (keys::IMAGE, self.image.to_string()),
            (keys::LEGALITY, self.legality.name().to_string()),
            (keys::PUUID, self.parent.to_string()),
            (keys::SEQ, self.sequence.to_string()),
            (keys::TYPE, self.alloc_type.name().to_string()),
            (keys::VOLTYPE, self.vol_type.name().to_string()),
        ];
        let mut text = String::new();
        for (key, value) in lines {
            text.push_str(key);
            text.push('=');
            text.push_str(&value);
            text.push('\n');
        }
        text.push_str("EOF\n");
        if text.len() > METADATA_SIZE {
            return Err(StorageError::new(
                Code::MetadataOverflowError,
                OP_WRITE,
                format!(
                    "the record takes {} bytes, at most {METADATA_SIZE} fit",
                    text.len()
                ),
            ));
        }
        Ok(text.into_bytes())
    }
}

fn bad(key: &str, value: &str, why: impl std::fmt::Display) -> StorageError {
    let shown: String = value.chars().take(64).collect();
    StorageError::new(
        Code::MetaDataValidationError,
        OP_READ,
        format!("{key}={shown:?} {why}"),
    )
}

fn typed<T: FromStr>(key: &str, value: &str) -> StorageResult<T>
where
    T::Err: std::fmt::Display,
{
    value
        .parse::<T>()
        .map_err(|e| bad(key, value, format!("is invalid: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD: &str = "75f8a1bb-4504-4314-91ca-d9365a30692b";
    const IMG: &str = "c6f9f2b3-0d3c-4a8e-9a57-6f3c1b2a9e10";
    const PARENT: &str = "00000000-0000-0000-0000-000000000000";

    /// A `.meta` file as VDSM writes it for a new thin qcow2 data disk on
    /// a V5 domain.
    fn vdsm_record() -> String {
        format!(
            "CAP=10737418240\nCTIME=1700000000\nDESCRIPTION={{\"DiskAlias\":\"vm1_Disk1\",\"DiskDescription\":\"\"}}\n\
             DISKTYPE=DATA\nDOMAIN={SD}\nFORMAT=COW\nGEN=0\nIMAGE={IMG}\nLEGALITY=LEGAL\n\
             PUUID={PARENT}\nSEQ=1\nTYPE=SPARSE\nVOLTYPE=LEAF\nEOF\n"
        )
    }

    fn sample() -> VolumeMetadata {
        VolumeMetadata::parse(vdsm_record().as_bytes()).unwrap()
    }

    #[test]
    fn vdsm_record_round_trips_byte_for_byte() {
        let md = sample();
        assert_eq!(md.capacity, 10 << 30);
        assert_eq!(md.format, VolumeFormat::Cow);
        assert_eq!(md.alloc_type, AllocType::Sparse);
        assert_eq!(md.vol_type, VolType::Leaf);
        assert!(md.parent.is_blank());
        assert_eq!(md.sequence, 1);
        assert_eq!(md.to_bytes().unwrap(), vdsm_record().into_bytes());
    }

    #[test]
    fn padding_crlf_garbage_after_eof_and_v4_leftovers() {
        let mut data = vdsm_record()
            .replace("CAP=10737418240\n", "MTIME=0\nSIZE=20971520\n")
            .replace("GEN=0\n", "")
            .replace("SEQ=1\n", "")
            .replace('\n', "\r\n")
            .into_bytes();
        data.extend_from_slice(b"CAP=junk after EOF\n");
        data.resize(512, 0);
        let md = VolumeMetadata::parse(&data).unwrap();
        assert_eq!(md.capacity, 20971520 * 512);
        assert_eq!((md.generation, md.sequence), (0, 0));
        let out = String::from_utf8(md.to_bytes().unwrap()).unwrap();
        assert!(!out.contains("MTIME") && !out.contains("SIZE"));
        assert!(out.starts_with("CAP=10737418240\nCTIME="));
    }

    #[test]
    fn cleared_record() {
        let cleared = format!("NONE={}\nEOF\n", "#".repeat(502));
        assert_eq!(
            VolumeMetadata::parse(cleared.as_bytes()).unwrap_err().code,
            Code::MetadataCleared
        );
        let mixed = vdsm_record().replace("EOF\n", "NONE=\nEOF\n");
        assert_eq!(
            VolumeMetadata::parse(mixed.as_bytes()).unwrap_err().code,
            Code::MetadataCleared
        );
    }

    #[test]
    fn missing_keys_are_named() {
        for key in [
            "CAP",
            "CTIME",
            "DESCRIPTION",
            "DISKTYPE",
            "DOMAIN",
            "FORMAT",
            "IMAGE",
            "LEGALITY",
            "PUUID",
            "TYPE",
            "VOLTYPE",
        ] {
            let text: String = vdsm_record()
                .lines()
                .filter(|l| !l.starts_with(&format!("{key}=")))
                .map(|l| format!("{l}\n"))
                .collect();
            let err = VolumeMetadata::parse(text.as_bytes()).unwrap_err();
            assert_eq!(err.code, Code::MetaDataKeyError, "{key}");
            assert!(err.detail.contains(key), "{key}: {}", err.detail);
        }
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("CAP=10737418240", "CAP=10G"),
            ("CTIME=1700000000", "CTIME=-1"),
            ("DISKTYPE=DATA", "DISKTYPE=DISK"),
            (&format!("DOMAIN={SD}") as &str, "DOMAIN=nope"),
            ("FORMAT=COW", "FORMAT=QCOW2"),
            ("GEN=0", "GEN=1000"),
            ("GEN=0", "GEN=x"),
            (&format!("IMAGE={IMG}"), "IMAGE="),
            ("LEGALITY=LEGAL", "LEGALITY=OK"),
            (&format!("PUUID={PARENT}"), "PUUID=0"),
            ("SEQ=1", "SEQ=4294967296"),
            ("TYPE=SPARSE", "TYPE=UNKNOWN"),
            ("VOLTYPE=LEAF", "VOLTYPE=ROOT"),
        ];
        for (good, bad) in cases {
            let text = vdsm_record().replace(good, bad);
            let err = VolumeMetadata::parse(text.as_bytes()).unwrap_err();
            assert_eq!(err.code, Code::MetaDataValidationError, "{bad}");
            let key = bad.split('=').next().unwrap();
            assert!(err.detail.contains(key), "{bad}: {}", err.detail);
        }
        let record = vdsm_record();
        let (body, eof) = record.split_at(record.len() - 4);
        let not_utf8 = [body.as_bytes(), b"X=\xff\n", eof.as_bytes()].concat();
        assert_eq!(
            VolumeMetadata::parse(&not_utf8).unwrap_err().code,
            Code::MetaDataValidationError
        );
    }

    #[test]
    fn legacy_disk_types_read_as_data() {
        for legacy in ["DISKTYPE=1", "DISKTYPE=2"] {
            let text = vdsm_record().replace("DISKTYPE=DATA", legacy);
            assert_eq!(
                VolumeMetadata::parse(text.as_bytes()).unwrap().disk_type,
                DiskType::Data
            );
        }
    }

    #[test]
    fn description_limits() {
        let mut md = sample();
        md.description = format!("é{}", "d".repeat(DESCRIPTION_SIZE - 1));
        let bytes = md.to_bytes().unwrap();
        assert!(bytes.len() <= METADATA_SIZE);
        assert_eq!(VolumeMetadata::parse(&bytes).unwrap(), md);

        md.description.push('x');
        let err = md.to_bytes().unwrap_err();
        assert_eq!(err.code, Code::MetaDataValidationError);
        assert!(err.detail.contains("DESCRIPTION"));

        md.description = "a\rb".to_string();
        assert_eq!(
            md.to_bytes().unwrap_err().code,
            Code::MetaDataValidationError
        );

        // Read: longer descriptions are cut to 210 characters, as VDSM does.
        let long = vdsm_record().replace(
            "{\"DiskAlias\":\"vm1_Disk1\",\"DiskDescription\":\"\"}",
            &"d".repeat(230),
        );
        assert_eq!(
            VolumeMetadata::parse(long.as_bytes())
                .unwrap()
                .description
                .len(),
            DESCRIPTION_SIZE
        );
    }

    /// A long description cut where it has white space reads the same
    /// once written back. Found by the volume_metadata fuzz target (parse,
    /// write, parse must give the same volume).
    #[test]
    fn a_cut_description_reads_back_the_same() {
        let desc = format!(
            "{}\t\t {}",
            "d".repeat(DESCRIPTION_SIZE - 2),
            "e".repeat(20)
        );
        let text = vdsm_record().replace(
            "{\"DiskAlias\":\"vm1_Disk1\",\"DiskDescription\":\"\"}",
            &desc,
        );
        let md = VolumeMetadata::parse(text.as_bytes()).unwrap();
        assert_eq!(md.description, "d".repeat(DESCRIPTION_SIZE - 2));
        let back = VolumeMetadata::parse(&md.to_bytes().unwrap()).unwrap();
        assert_eq!(back, md);
    }

    #[test]
    fn overflow() {
        let mut md = sample();
        // 210 four-byte characters fit the description limit but not the
        // 512-byte record.
        md.description = "😀".repeat(DESCRIPTION_SIZE);
        let err = md.to_bytes().unwrap_err();
        assert_eq!(err.code, Code::MetadataOverflowError);

        // VDSM's worst case (constants.py) with a 210-byte description fits.
        md.description = "d".repeat(DESCRIPTION_SIZE);
        md.capacity = u64::MAX;
        md.ctime = 1440935038;
        md.generation = 999;
        md.sequence = u32::MAX;
        md.alloc_type = AllocType::Preallocated;
        md.vol_type = VolType::Internal;
        md.legality = Legality::Illegal;
        assert!(md.to_bytes().unwrap().len() <= METADATA_SIZE);
    }

    #[test]
    fn gen_wraps() {
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(998), 999);
        assert_eq!(next_generation(MAX_GENERATION), 0);
        let mut md = sample();
        md.generation = 1000;
        assert_eq!(
            md.to_bytes().unwrap_err().code,
            Code::MetaDataValidationError
        );
    }
}
