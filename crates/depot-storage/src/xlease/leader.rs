//! sanlock's paxos leader record, read from the bytes of a lease's first
//! sector: what `Lease.rebuild_leases` needs to find the leases of an
//! `xleases` volume (their names) without one `sanlock direct
//! read_leader` child per slot (docs/performance.md, "xleases rebuild").
//!
//! The layout is sanlock's `struct leader_record` (leader.h), written
//! little-endian by `leader_record_out`; docs/formats.md ("sanlock leader
//! record") lists the fields read here. The bytes come from storage other
//! hosts write: every field is bounds-checked, and a record whose checksum
//! (CRC-32C of the first 168 bytes, as sanlock's `leader_checksum`) does
//! not match is an error, as VDSM's `sanlock.read_resource` makes it one
//! (the `sanlock direct read_leader` child depot ran before compared the
//! names first and never reached the checksum for a slot's record).

use std::fmt;

/// `PAXOS_DISK_MAGIC`: a resource (paxos) lease.
pub const PAXOS_DISK_MAGIC: u32 = 0x0615_2010;
/// `PAXOS_DISK_CLEAR`: a lease cleared (`sanlock direct init` with
/// clear, VDSM's `write_resource(clear=True)`).
pub const PAXOS_DISK_CLEAR: u32 = 0x1128_2016;
/// `DELTA_DISK_MAGIC`: a host id (delta) lease.
pub const DELTA_DISK_MAGIC: u32 = 0x1221_2010;
/// The bytes of the record sanlock reads and checks.
pub const LEADER_LEN: usize = 200;
/// The bytes its checksum covers (up to the `checksum` field).
const CHECKSUM_LEN: usize = 168;
/// sanlock's name fields (`NAME_ID_SIZE`).
const NAME_LEN: usize = 48;

/// A leader record, the fields depot reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub magic: u32,
    pub version: u32,
    pub sector_size: u32,
    pub max_hosts: u64,
    pub owner_id: u64,
    pub owner_generation: u64,
    pub lver: u64,
    pub space_name: String,
    pub resource_name: String,
    pub timestamp: u64,
}

/// Why bytes are not a leader record depot can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderError {
    /// Fewer than [`LEADER_LEN`] bytes.
    Short(usize),
    /// The checksum stored and the one computed.
    Checksum { stored: u32, computed: u32 },
    /// A name that is not NUL-padded ASCII text.
    Name(&'static str),
}

impl fmt::Display for LeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaderError::Short(n) => write!(f, "{n} bytes, a leader record has {LEADER_LEN}"),
            LeaderError::Checksum { stored, computed } => write!(
                f,
                "leader checksum {stored:#010x}, computed {computed:#010x}"
            ),
            LeaderError::Name(field) => write!(f, "{field} is not a NUL-padded name"),
        }
    }
}

impl std::error::Error for LeaderError {}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A NUL-padded name of up to 48 bytes (sanlock's names have no NUL
/// inside and are printable ASCII; VDSM's are UUIDs and `SDM`).
fn name_at(b: &[u8], at: usize, field: &'static str) -> Result<String, LeaderError> {
    let raw = &b[at..at + NAME_LEN];
    let len = raw.iter().position(|&c| c == 0).unwrap_or(NAME_LEN);
    let (text, pad) = raw.split_at(len);
    if pad.iter().any(|&c| c != 0) || !text.iter().all(|c| c.is_ascii_graphic()) {
        return Err(LeaderError::Name(field));
    }
    Ok(String::from_utf8(text.to_vec()).expect("ASCII"))
}

/// CRC-32C (Castagnoli, reflected) without the usual final inversion,
/// from `seed`: sanlock's `crc32c(crc, data, len)`.
fn crc32c(seed: u32, data: &[u8]) -> u32 {
    const POLY: u32 = 0x82F6_3B78;
    let mut crc = seed;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// sanlock's `leader_checksum`: CRC-32C of the first 168 bytes from
/// `~1`.
pub fn checksum(b: &[u8]) -> u32 {
    crc32c(!1, &b[..CHECKSUM_LEN])
}

impl Leader {
    /// The magic alone: `None` when `b` is too short. Tells a lease from
    /// zeros, a cleared one or a host id lease before anything else is
    /// read (those are not checked further: sanlock does not either).
    pub fn magic_of(b: &[u8]) -> Option<u32> {
        (b.len() >= 4).then(|| u32_at(b, 0))
    }

    /// Parses the record at the start of `b` (a sector or more), its
    /// checksum checked.
    pub fn parse(b: &[u8]) -> Result<Leader, LeaderError> {
        if b.len() < LEADER_LEN {
            return Err(LeaderError::Short(b.len()));
        }
        let stored = u32_at(b, 168);
        let computed = checksum(b);
        if stored != computed {
            return Err(LeaderError::Checksum { stored, computed });
        }
        Ok(Leader {
            magic: u32_at(b, 0),
            version: u32_at(b, 4),
            sector_size: u32_at(b, 12),
            max_hosts: u64_at(b, 24),
            owner_id: u64_at(b, 32),
            owner_generation: u64_at(b, 40),
            lver: u64_at(b, 48),
            space_name: name_at(b, 56, "space_name")?,
            resource_name: name_at(b, 104, "resource_name")?,
            timestamp: u64_at(b, 152),
        })
    }

    /// The name of the paxos lease of lockspace `lockspace` in `sector`,
    /// `None` when there is none (no magic: never written, cleared, a host
    /// id lease; or a lease of another lockspace), as
    /// `depot_os::sanlock::direct_read_resource` answers. A lease record
    /// that does not check out is an error.
    pub fn resource_name(sector: &[u8], lockspace: &str) -> Result<Option<String>, LeaderError> {
        match Leader::magic_of(sector) {
            Some(PAXOS_DISK_MAGIC) => {}
            Some(_) => return Ok(None),
            None => return Err(LeaderError::Short(sector.len())),
        }
        let leader = Leader::parse(sector)?;
        Ok(
            (leader.space_name == lockspace && !leader.resource_name.is_empty())
                .then_some(leader.resource_name),
        )
    }

    /// The record as sanlock writes it (for tests and the fuzz target's
    /// round trip): [`LEADER_LEN`] bytes with its checksum; `None` when a
    /// name does not fit.
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        let mut b = vec![0u8; LEADER_LEN];
        if self.space_name.len() > NAME_LEN || self.resource_name.len() > NAME_LEN {
            return None;
        }
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.sector_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.max_hosts.to_le_bytes());
        b[32..40].copy_from_slice(&self.owner_id.to_le_bytes());
        b[40..48].copy_from_slice(&self.owner_generation.to_le_bytes());
        b[48..56].copy_from_slice(&self.lver.to_le_bytes());
        b[56..56 + self.space_name.len()].copy_from_slice(self.space_name.as_bytes());
        b[104..104 + self.resource_name.len()].copy_from_slice(self.resource_name.as_bytes());
        b[152..160].copy_from_slice(&self.timestamp.to_le_bytes());
        let sum = checksum(&b);
        b[168..172].copy_from_slice(&sum.to_le_bytes());
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader() -> Leader {
        Leader {
            magic: PAXOS_DISK_MAGIC,
            version: 0x0006_0001,
            sector_size: 512,
            max_hosts: 2000,
            owner_id: 0,
            owner_generation: 0,
            lver: 0,
            space_name: "sd".into(),
            resource_name: "lease-a".into(),
            timestamp: 0,
        }
    }

    #[test]
    fn crc32c_is_castagnolis() {
        // The standard check value, with the usual inversions around it.
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn a_record_round_trips_and_names_its_lease() {
        let l = leader();
        let mut sector = l.to_bytes().unwrap();
        sector.resize(512, 0);
        assert_eq!(Leader::parse(&sector).unwrap(), l);
        assert_eq!(
            Leader::resource_name(&sector, "sd").unwrap().as_deref(),
            Some("lease-a")
        );
        // Another lockspace's lease is none of this one's.
        assert_eq!(Leader::resource_name(&sector, "other").unwrap(), None);
    }

    #[test]
    fn zeros_cleared_and_host_id_records_are_no_lease() {
        assert_eq!(Leader::resource_name(&[0; 512], "sd").unwrap(), None);
        for magic in [PAXOS_DISK_CLEAR, DELTA_DISK_MAGIC] {
            let mut l = leader();
            l.magic = magic;
            let b = l.to_bytes().unwrap();
            assert_eq!(Leader::resource_name(&b, "sd").unwrap(), None);
        }
    }

    #[test]
    fn damaged_records_are_errors() {
        let good = leader().to_bytes().unwrap();
        // One flipped bit anywhere the checksum covers.
        for at in [5, 60, 110, 160] {
            let mut b = good.clone();
            b[at] ^= 0x10;
            assert!(
                matches!(
                    Leader::resource_name(&b, "sd"),
                    Err(LeaderError::Checksum { .. })
                ),
                "byte {at}"
            );
        }
        assert_eq!(
            Leader::resource_name(&good[..100], "sd"),
            Err(LeaderError::Short(100))
        );
        assert_eq!(Leader::resource_name(&[], "sd"), Err(LeaderError::Short(0)));
        // A name with bytes after its NUL, with a good checksum.
        let mut b = good.clone();
        b[104 + 20] = b'x';
        let sum = checksum(&b);
        b[168..172].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(Leader::parse(&b), Err(LeaderError::Name("resource_name")));
        // Names that do not fit are not written.
        let mut l = leader();
        l.resource_name = "x".repeat(49);
        assert!(l.to_bytes().is_none());
    }
}
