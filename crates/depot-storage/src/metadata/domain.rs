//! Typed metadata of a V5 file domain: the keys VDSM writes into
//! `dom_md/metadata` (`sd.py` `SD_MD_FIELDS`, `fileSD.py`
//! `FILE_SD_MD_FIELDS` and `_prepareMetadata`), on top of [`KvMetadata`].
//!
//! Every key depot does not know is kept in `extra` and written back, as
//! VDSM's `PersistentDict` does: the master domain also carries the pool's
//! keys (`POOL_DESCRIPTION`, `POOL_DOMAINS`, `POOL_SPM_ID`, `POOL_SPM_LVER`),
//! and another agent may add its own.

use std::collections::BTreeMap;
use std::str::FromStr;

use depot_api::storage::{DomainClass, DomainRole, DomainType, SdUuid, SpUuid};
use depot_api::Code;

use super::kv::KvMetadata;
use super::pytext::py_strip;
use crate::error::{StorageError, StorageResult};

/// The only domain version depot reads and writes.
pub const DOMAIN_VERSION: i64 = 5;

/// VDSM's `MAX_DOMAIN_DESCRIPTION_SIZE`, counted in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 50;

/// VDSM's `DEFAULT_LEASE_PARAMS` (sd.py), written into every new domain.
pub const DEFAULT_LOCK_RENEWAL_INTERVAL_SEC: u32 = 5;
pub const DEFAULT_LEASE_TIME_SEC: u32 = 60;
pub const DEFAULT_IO_OP_TIMEOUT_SEC: u32 = 10;
pub const DEFAULT_LEASE_RETRIES: u32 = 3;

const MIB: u64 = 1024 * 1024;

/// Block sizes a V5 domain may declare (`sc.BLOCK_SIZE_512`, `_4K`).
pub const BLOCK_SIZES: [u32; 2] = [512, 4096];

/// Sanlock alignments a V5 domain may declare (`sc.ALIGNMENT_1M` .. `_8M`).
pub const ALIGNMENTS: [u64; 4] = [MIB, 2 * MIB, 4 * MIB, 8 * MIB];

/// The metadata keys, as VDSM spells them.
pub mod keys {
    pub const VERSION: &str = "VERSION";
    pub const SDUUID: &str = "SDUUID";
    pub const TYPE: &str = "TYPE";
    pub const CLASS: &str = "CLASS";
    pub const ROLE: &str = "ROLE";
    pub const DESCRIPTION: &str = "DESCRIPTION";
    pub const POOL_UUID: &str = "POOL_UUID";
    /// A pool key (spbackends.py), present once the domain was a master.
    pub const MASTER_VERSION: &str = "MASTER_VERSION";
    pub const LOCKPOLICY: &str = "LOCKPOLICY";
    pub const LOCKRENEWALINTERVALSEC: &str = "LOCKRENEWALINTERVALSEC";
    pub const LEASETIMESEC: &str = "LEASETIMESEC";
    pub const IOOPTIMEOUTSEC: &str = "IOOPTIMEOUTSEC";
    pub const LEASERETRIES: &str = "LEASERETRIES";
    pub const REMOTE_PATH: &str = "REMOTE_PATH";
    pub const BLOCK_SIZE: &str = "BLOCK_SIZE";
    pub const ALIGNMENT: &str = "ALIGNMENT";
    /// depot's extension: the engine's "backup storage domain" flag. VDSM
    /// ignores and preserves keys it does not know.
    pub const DEPOT_BACKUP: &str = "DEPOT_BACKUP";

    /// The keys [`super::DomainMetadata`] types; all others go to `extra`.
    pub const TYPED: [&str; 17] = [
        VERSION,
        SDUUID,
        TYPE,
        CLASS,
        ROLE,
        DESCRIPTION,
        POOL_UUID,
        MASTER_VERSION,
        LOCKPOLICY,
        LOCKRENEWALINTERVALSEC,
        LEASETIMESEC,
        IOOPTIMEOUTSEC,
        LEASERETRIES,
        REMOTE_PATH,
        BLOCK_SIZE,
        ALIGNMENT,
        DEPOT_BACKUP,
    ];
}

const OP_READ: &str = "read domain metadata";
const OP_WRITE: &str = "write domain metadata";

/// The metadata of a V5 file domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainMetadata {
    /// VERSION; always [`DOMAIN_VERSION`] once parsed.
    pub version: i64,
    pub sd_uuid: SdUuid,
    /// TYPE; a file type (NFS, LOCALFS, POSIXFS, GLUSTERFS, CIFS).
    pub domain_type: DomainType,
    pub class: DomainClass,
    pub role: DomainRole,
    /// DESCRIPTION: the domain's name in the engine. Read at any length (VDSM
    /// does not check it when creating file domains); set through
    /// [`DomainMetadata::set_description`] to keep it to 50 characters.
    pub description: String,
    /// POOL_UUID: the pools the domain is attached to, in file order
    /// (VDSM's `getPools` also drops a legacy BLANK_UUID entry).
    pub pools: Vec<SpUuid>,
    /// MASTER_VERSION: absent on a domain that never was a master; VDSM
    /// does not write it when creating a domain.
    pub master_version: Option<i64>,
    /// LOCKPOLICY: VDSM writes "" into new domains and never reads it.
    pub lock_policy: String,
    pub lock_renewal_interval_sec: u32,
    pub lease_time_sec: u32,
    pub io_op_timeout_sec: u32,
    pub lease_retries: u32,
    /// REMOTE_PATH: the normalized `server:/path` the domain was created on.
    pub remote_path: String,
    /// BLOCK_SIZE in bytes: 512 or 4096.
    pub block_size: u32,
    /// ALIGNMENT of sanlock leases in bytes: 1, 2, 4 or 8 MiB (1 MiB only
    /// with 512-byte blocks).
    pub alignment: u64,
    /// DEPOT_BACKUP: the engine's backup-domain flag. Written only when
    /// true, so a new non-backup domain's file is the one VDSM writes.
    pub backup: bool,
    /// Every other key, kept as read and written back.
    pub extra: BTreeMap<String, String>,
}

impl DomainMetadata {
    /// The metadata of a new file domain, with the values VDSM's
    /// `FileStorageDomain._prepareMetadata` writes: ROLE Regular, no pools,
    /// LOCKPOLICY "", lease parameters 5/60/10/3, VERSION 5, and no
    /// MASTER_VERSION (the pool code adds it when the domain becomes master).
    pub fn new_file(
        sd_uuid: SdUuid,
        domain_type: DomainType,
        class: DomainClass,
        description: &str,
        remote_path: &str,
        block_size: u32,
        alignment: u64,
    ) -> StorageResult<DomainMetadata> {
        if !domain_type.is_file() {
            return Err(StorageError::new(
                Code::MetaDataValidationError,
                "create domain metadata",
                format!("{domain_type} is not a file domain type"),
            ));
        }
        check_geometry(block_size, alignment, "create domain metadata")?;
        let mut md = DomainMetadata {
            version: DOMAIN_VERSION,
            sd_uuid,
            domain_type,
            class,
            role: DomainRole::Regular,
            description: String::new(),
            pools: Vec::new(),
            master_version: None,
            lock_policy: String::new(),
            lock_renewal_interval_sec: DEFAULT_LOCK_RENEWAL_INTERVAL_SEC,
            lease_time_sec: DEFAULT_LEASE_TIME_SEC,
            io_op_timeout_sec: DEFAULT_IO_OP_TIMEOUT_SEC,
            lease_retries: DEFAULT_LEASE_RETRIES,
            remote_path: remote_path.to_string(),
            block_size,
            alignment,
            backup: false,
            extra: BTreeMap::new(),
        };
        md.set_description(description)?;
        // Refuse now what to_kv would refuse later (line breaks).
        md.to_kv()?;
        Ok(md)
    }

    /// Sets DESCRIPTION, refusing more than 50 characters (387), as VDSM's
    /// `setStorageDomainDescription` does.
    pub fn set_description(&mut self, description: &str) -> StorageResult<()> {
        let n = description.chars().count();
        if n > MAX_DESCRIPTION_CHARS {
            return Err(StorageError::new(
                Code::StorageDomainDescriptionTooLongError,
                "set domain description",
                format!(
                    "description has {n} characters, at most {MAX_DESCRIPTION_CHARS} are allowed"
                ),
            ));
        }
        self.description = description.to_string();
        Ok(())
    }

    /// Reads the typed keys. A missing required key is MetaDataKeyError
    /// (750), a value that does not parse MetaDataValidationError (753),
    /// both naming the key; a VERSION other than 5 is
    /// UnsupportedDomainVersion (394).
    pub fn from_kv(kv: &KvMetadata) -> StorageResult<DomainMetadata> {
        let version_text = required(kv, keys::VERSION)?;
        let version = parse_int::<i64>(kv, keys::VERSION)?;
        if version != DOMAIN_VERSION {
            return Err(StorageError::new(
                Code::UnsupportedDomainVersion,
                OP_READ,
                format!("domain version {version_text:?} is not supported; depot handles version {DOMAIN_VERSION}"),
            ));
        }
        let domain_type = parse_with(kv, keys::TYPE, |s| DomainType::from_str(&s.to_uppercase()))?;
        if !domain_type.is_file() && !domain_type.is_block() {
            return Err(bad_value(
                keys::TYPE,
                domain_type.name(),
                "is not a file or block domain type",
            ));
        }
        let block_size = parse_int::<u32>(kv, keys::BLOCK_SIZE)?;
        let alignment = parse_int::<u64>(kv, keys::ALIGNMENT)?;
        check_geometry(block_size, alignment, OP_READ)?;
        let extra = kv
            .iter()
            .filter(|(k, _)| !keys::TYPED.contains(k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(DomainMetadata {
            version,
            sd_uuid: parse_with(kv, keys::SDUUID, SdUuid::from_str)?,
            domain_type,
            class: parse_with(kv, keys::CLASS, DomainClass::from_str)?,
            role: parse_with(kv, keys::ROLE, |s| DomainRole::from_str(&capitalize(s)))?,
            description: required(kv, keys::DESCRIPTION)?.to_string(),
            pools: parse_pools(kv)?,
            master_version: match kv.get(keys::MASTER_VERSION) {
                Some(_) => Some(parse_int::<i64>(kv, keys::MASTER_VERSION)?),
                None => None,
            },
            lock_policy: required(kv, keys::LOCKPOLICY)?.to_string(),
            lock_renewal_interval_sec: lease_param(
                kv,
                keys::LOCKRENEWALINTERVALSEC,
                DEFAULT_LOCK_RENEWAL_INTERVAL_SEC,
            )?,
            lease_time_sec: lease_param(kv, keys::LEASETIMESEC, DEFAULT_LEASE_TIME_SEC)?,
            io_op_timeout_sec: lease_param(kv, keys::IOOPTIMEOUTSEC, DEFAULT_IO_OP_TIMEOUT_SEC)?,
            lease_retries: lease_param(kv, keys::LEASERETRIES, DEFAULT_LEASE_RETRIES)?,
            // Block domains have none: their storage is the VG (VGUUID).
            remote_path: if domain_type.is_block() {
                kv.get(keys::REMOTE_PATH).unwrap_or("").to_string()
            } else {
                required(kv, keys::REMOTE_PATH)?.to_string()
            },
            block_size,
            alignment,
            backup: match kv.get(keys::DEPOT_BACKUP) {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(bad_value(keys::DEPOT_BACKUP, other, "is not true or false"))
                }
            },
            extra,
        })
    }

    /// The key/value form, ready for [`KvMetadata::to_text`]. Values are
    /// written as VDSM's encoders write them (`str(int)`, enum names,
    /// `",".join(pools)`). Fails (753) only on a value that holds a line
    /// break or an `extra` key VDSM could not read back.
    pub fn to_kv(&self) -> StorageResult<KvMetadata> {
        let mut kv = KvMetadata::new();
        for (key, value) in &self.extra {
            kv.set(key, value.as_str()).map_err(|e| rewrap(e, key))?;
        }
        let pools: Vec<String> = self.pools.iter().map(ToString::to_string).collect();
        let mut typed: Vec<(&str, String)> = vec![
            (keys::VERSION, self.version.to_string()),
            (keys::SDUUID, self.sd_uuid.to_string()),
            (keys::TYPE, self.domain_type.name().to_string()),
            (keys::CLASS, self.class.name().to_string()),
            (keys::ROLE, self.role.name().to_string()),
            (keys::DESCRIPTION, self.description.clone()),
            (keys::POOL_UUID, pools.join(",")),
            (keys::LOCKPOLICY, self.lock_policy.clone()),
            (
                keys::LOCKRENEWALINTERVALSEC,
                self.lock_renewal_interval_sec.to_string(),
            ),
            (keys::LEASETIMESEC, self.lease_time_sec.to_string()),
            (keys::IOOPTIMEOUTSEC, self.io_op_timeout_sec.to_string()),
            (keys::LEASERETRIES, self.lease_retries.to_string()),
            (keys::BLOCK_SIZE, self.block_size.to_string()),
            (keys::ALIGNMENT, self.alignment.to_string()),
        ];
        // A block domain has none (VDSM writes none), unless its file
        // had one: then it is kept, as every key read is.
        if !self.domain_type.is_block() || !self.remote_path.is_empty() {
            typed.push((keys::REMOTE_PATH, self.remote_path.clone()));
        }
        if let Some(v) = self.master_version {
            typed.push((keys::MASTER_VERSION, v.to_string()));
        }
        if self.backup {
            typed.push((keys::DEPOT_BACKUP, "true".to_string()));
        }
        for (key, value) in typed {
            kv.set(key, value).map_err(|e| rewrap(e, key))?;
        }
        Ok(kv)
    }

    /// The pools without VDSM's legacy BLANK_UUID marker (`getPools`).
    pub fn attached_pools(&self) -> Vec<SpUuid> {
        let blank = SpUuid(depot_api::types::Uuid::nil());
        self.pools.iter().copied().filter(|p| *p != blank).collect()
    }
}

fn rewrap(mut e: StorageError, key: &str) -> StorageError {
    e.op = OP_WRITE;
    if !e.detail.contains(key) {
        e.detail = format!("{key}: {}", e.detail);
    }
    e
}

fn check_geometry(block_size: u32, alignment: u64, op: &'static str) -> StorageResult<()> {
    let problem = if !BLOCK_SIZES.contains(&block_size) {
        Some(format!(
            "{} {block_size} is not 512 or 4096",
            keys::BLOCK_SIZE
        ))
    } else if !ALIGNMENTS.contains(&alignment) {
        Some(format!(
            "{} {alignment} is not 1, 2, 4 or 8 MiB",
            keys::ALIGNMENT
        ))
    } else if block_size == 512 && alignment != MIB {
        Some(format!(
            "{} {alignment} is not possible with {} 512 (sanlock supports only 1 MiB)",
            keys::ALIGNMENT,
            keys::BLOCK_SIZE
        ))
    } else {
        None
    };
    match problem {
        Some(p) => Err(StorageError::new(Code::MetaDataValidationError, op, p)),
        None => Ok(()),
    }
}

fn required<'a>(kv: &'a KvMetadata, key: &str) -> StorageResult<&'a str> {
    kv.get(key).ok_or_else(|| {
        StorageError::new(
            Code::MetaDataKeyError,
            OP_READ,
            format!("required key {key} is missing"),
        )
    })
}

fn bad_value(key: &str, value: &str, why: impl std::fmt::Display) -> StorageError {
    let shown: String = value.chars().take(64).collect();
    StorageError::new(
        Code::MetaDataValidationError,
        OP_READ,
        format!("{key}={shown:?} {why}"),
    )
}

fn parse_with<T, E: std::fmt::Display>(
    kv: &KvMetadata,
    key: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> StorageResult<T> {
    let value = required(kv, key)?;
    parse(value).map_err(|e| bad_value(key, value, format!("is invalid: {e}")))
}

/// Python's `int()` on a metadata value: surrounding whitespace allowed.
fn parse_int<T: FromStr>(kv: &KvMetadata, key: &str) -> StorageResult<T>
where
    T::Err: std::fmt::Display,
{
    parse_with(kv, key, |s| py_strip(s).parse::<T>())
}

/// A lease parameter. VDSM's encoder writes "" for an unset value and its
/// decoder reads that as the default; anything else must be a number.
fn lease_param(kv: &KvMetadata, key: &str, default: u32) -> StorageResult<u32> {
    if py_strip(required(kv, key)?).is_empty() {
        return Ok(default);
    }
    parse_int(kv, key)
}

fn parse_pools(kv: &KvMetadata) -> StorageResult<Vec<SpUuid>> {
    let value = required(kv, keys::POOL_UUID)?;
    if value.is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|p| {
            p.parse::<SpUuid>().map_err(|e| {
                bad_value(keys::POOL_UUID, value, format!("is invalid: {e}")).caused_by(e)
            })
        })
        .collect()
}

/// Python's `str.capitalize()`: VDSM compares roles that way.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD: &str = "7b4ac2a6-2e1c-4b3a-9d6e-0d1b8f2c5a11";
    const SP: &str = "5849b030-626e-47cb-ad90-3ce782d831b3";

    /// dom_md/metadata of an NFS V5 data domain as VDSM 4.50 writes it at
    /// creation (no seal needed to read it: VDSM trusts unsealed text).
    fn vdsm_new_nfs_domain() -> String {
        format!(
            "ALIGNMENT=1048576\nBLOCK_SIZE=512\nCLASS=Data\nDESCRIPTION=nfs-data\n\
             IOOPTIMEOUTSEC=10\nLEASERETRIES=3\nLEASETIMESEC=60\nLOCKPOLICY=\n\
             LOCKRENEWALINTERVALSEC=5\nPOOL_UUID=\nREMOTE_PATH=server:/export/data\n\
             ROLE=Regular\nSDUUID={SD}\nTYPE=NFS\nVERSION=5\n"
        )
    }

    fn sealed(text: &str) -> KvMetadata {
        let kv = KvMetadata::parse(text).unwrap();
        KvMetadata::parse(&kv.to_text()).unwrap()
    }

    #[test]
    fn new_file_matches_what_vdsm_writes() {
        let md = DomainMetadata::new_file(
            SD.parse().unwrap(),
            DomainType::Nfs,
            DomainClass::Data,
            "nfs-data",
            "server:/export/data",
            512,
            MIB,
        )
        .unwrap();
        let kv = md.to_kv().unwrap();
        let expected = KvMetadata::parse(&vdsm_new_nfs_domain()).unwrap();
        assert_eq!(kv, expected);
        assert_eq!(kv.to_text(), expected.to_text());
        assert_eq!(DomainMetadata::from_kv(&kv).unwrap(), md);
    }

    /// The files VDSM's tests expect VDSM to write for a new LOCALFS domain
    /// (tests/storage/filesd_metadata_test.py at fd4b0df2), seals included.
    #[test]
    fn new_file_is_byte_identical_to_vdsm_fixtures() {
        let cases = [
            (512, MIB, "9336f77705ff9e3d5faf65c4d0dc818a29de458d"),
            (4096, MIB, "7910a564cc0a340f93aea5680e0e9c2d6ff4903a"),
            (4096, 2 * MIB, "769baef6c65aeef08cf6d177c2c44046b2aac877"),
        ];
        for (block_size, alignment, seal) in cases {
            let expected = format!(
                "ALIGNMENT={alignment}\nBLOCK_SIZE={block_size}\nCLASS=Data\n\
                 DESCRIPTION=storage domain\nIOOPTIMEOUTSEC=10\nLEASERETRIES=3\n\
                 LEASETIMESEC=60\nLOCKPOLICY=\nLOCKRENEWALINTERVALSEC=5\nPOOL_UUID=\n\
                 REMOTE_PATH=server:/path\nROLE=Regular\n\
                 SDUUID=275766cb-c7d8-43d6-a663-4e52160de620\nTYPE=LOCALFS\nVERSION=5\n\
                 _SHA_CKSUM={seal}\n"
            );
            let md = DomainMetadata::new_file(
                "275766cb-c7d8-43d6-a663-4e52160de620".parse().unwrap(),
                DomainType::LocalFs,
                DomainClass::Data,
                "storage domain",
                "server:/path",
                block_size,
                alignment,
            )
            .unwrap();
            assert_eq!(md.to_kv().unwrap().to_text(), expected);
            let back = KvMetadata::parse(&expected).unwrap();
            assert!(back.sealed());
            assert_eq!(DomainMetadata::from_kv(&back).unwrap(), md);
        }
    }

    #[test]
    fn master_domain_round_trip_keeps_pool_and_unknown_keys() {
        let text = vdsm_new_nfs_domain()
            .replace("POOL_UUID=", &format!("POOL_UUID={SP}"))
            .replace("ROLE=Regular", "ROLE=Master")
            + "MASTER_VERSION=3\nPOOL_DESCRIPTION=dc1\nPOOL_SPM_ID=-1\nOTHER_AGENT=x=y\nDEPOT_BACKUP=true\n";
        let kv = sealed(&text);
        let md = DomainMetadata::from_kv(&kv).unwrap();
        assert_eq!(md.role, DomainRole::Master);
        assert_eq!(md.pools, vec![SP.parse().unwrap()]);
        assert_eq!(md.master_version, Some(3));
        assert!(md.backup);
        assert_eq!(md.extra.get("OTHER_AGENT").map(String::as_str), Some("x=y"));
        assert_eq!(md.extra.len(), 3);
        assert_eq!(md.to_kv().unwrap(), kv);
    }

    #[test]
    fn backup_flag_written_only_when_set() {
        let mut md = DomainMetadata::from_kv(&sealed(&vdsm_new_nfs_domain())).unwrap();
        assert!(!md.backup);
        assert!(!md.to_kv().unwrap().contains_key(keys::DEPOT_BACKUP));
        md.backup = true;
        let kv = md.to_kv().unwrap();
        assert_eq!(kv.get(keys::DEPOT_BACKUP), Some("true"));
        assert!(DomainMetadata::from_kv(&kv).unwrap().backup);
        let bad = vdsm_new_nfs_domain() + "DEPOT_BACKUP=yes\n";
        let err = DomainMetadata::from_kv(&sealed(&bad)).unwrap_err();
        assert_eq!(err.code, Code::MetaDataValidationError);
        assert!(err.detail.contains("DEPOT_BACKUP"));
    }

    #[test]
    fn missing_keys_are_named() {
        for key in [
            keys::VERSION,
            keys::SDUUID,
            keys::TYPE,
            keys::CLASS,
            keys::ROLE,
            keys::DESCRIPTION,
            keys::POOL_UUID,
            keys::LOCKPOLICY,
            keys::LEASERETRIES,
            keys::REMOTE_PATH,
            keys::BLOCK_SIZE,
            keys::ALIGNMENT,
        ] {
            let mut kv = sealed(&vdsm_new_nfs_domain());
            kv.remove(key);
            let err = DomainMetadata::from_kv(&kv).unwrap_err();
            assert_eq!(err.code, Code::MetaDataKeyError, "{key}");
            assert!(err.detail.contains(key), "{key}: {}", err.detail);
        }
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("SDUUID", "not-a-uuid"),
            ("TYPE", "TAPE"),
            ("CLASS", "data"),
            ("ROLE", "Leader"),
            ("POOL_UUID", "abc"),
            ("LEASETIMESEC", "sixty"),
            ("BLOCK_SIZE", "1024"),
            ("ALIGNMENT", "2097152"),
            ("MASTER_VERSION", "x"),
            ("VERSION", "five"),
        ];
        for (key, value) in cases {
            let mut kv = sealed(&vdsm_new_nfs_domain());
            kv.set(key, value).unwrap();
            let err = DomainMetadata::from_kv(&kv).unwrap_err();
            assert_eq!(err.code, Code::MetaDataValidationError, "{key}={value}");
            assert!(err.detail.contains(key), "{key}: {}", err.detail);
        }
    }

    /// Block domains (FCP, ISCSI) keep their storage in VGUUID and have no
    /// REMOTE_PATH; it is neither required nor written.
    #[test]
    fn block_types_need_no_remote_path() {
        let mut kv = sealed(&vdsm_new_nfs_domain());
        kv.set(keys::TYPE, "ISCSI").unwrap();
        kv.remove(keys::REMOTE_PATH);
        kv.set("VGUUID", "abc-def").unwrap();
        let md = DomainMetadata::from_kv(&kv).unwrap();
        assert_eq!(md.domain_type, DomainType::Iscsi);
        assert_eq!(md.extra.get("VGUUID").map(String::as_str), Some("abc-def"));
        let back = md.to_kv().unwrap();
        assert!(!back.contains_key(keys::REMOTE_PATH));
        // A file type still needs it.
        kv.set(keys::TYPE, "NFS").unwrap();
        assert_eq!(
            DomainMetadata::from_kv(&kv).unwrap_err().code,
            Code::MetaDataKeyError
        );
    }

    /// A block domain whose metadata has a REMOTE_PATH anyway (another
    /// agent wrote it) keeps it when depot rewrites the metadata, as any
    /// other key. Found by the domain_metadata fuzz target (parse, write,
    /// parse must give the same domain).
    #[test]
    fn a_block_domain_keeps_the_remote_path_it_has() {
        let mut kv = sealed(&vdsm_new_nfs_domain());
        kv.set(keys::TYPE, "ISCSI").unwrap();
        let md = DomainMetadata::from_kv(&kv).unwrap();
        assert_eq!(md.remote_path, "server:/export/data");
        let written = md.to_kv().unwrap();
        assert_eq!(written.get(keys::REMOTE_PATH), Some("server:/export/data"));
        assert_eq!(DomainMetadata::from_kv(&written).unwrap(), md);
    }

    #[test]
    fn vdsm_tolerances() {
        let mut kv = sealed(&vdsm_new_nfs_domain());
        kv.set(keys::LEASETIMESEC, "").unwrap();
        kv.set(keys::TYPE, "nfs").unwrap();
        kv.set(keys::ROLE, "master").unwrap();
        kv.set(keys::DESCRIPTION, "x".repeat(60)).unwrap();
        let md = DomainMetadata::from_kv(&kv).unwrap();
        assert_eq!(md.lease_time_sec, DEFAULT_LEASE_TIME_SEC);
        assert_eq!(md.domain_type, DomainType::Nfs);
        assert_eq!(md.role, DomainRole::Master);
        assert_eq!(md.description.len(), 60);
    }

    #[test]
    fn unsupported_versions() {
        for v in ["4", "3", "0", "6", "-1"] {
            let mut kv = sealed(&vdsm_new_nfs_domain());
            kv.set(keys::VERSION, v).unwrap();
            let err = DomainMetadata::from_kv(&kv).unwrap_err();
            assert_eq!(err.code, Code::UnsupportedDomainVersion, "{v}");
        }
    }

    #[test]
    fn description_limits() {
        let new = |d: &str| {
            DomainMetadata::new_file(
                SD.parse().unwrap(),
                DomainType::PosixFs,
                DomainClass::Iso,
                d,
                "/srv/iso",
                4096,
                8 * MIB,
            )
        };
        assert!(new(&"é".repeat(50)).is_ok());
        let err = new(&"x".repeat(51)).unwrap_err();
        assert_eq!(err.code, Code::StorageDomainDescriptionTooLongError);
        assert_eq!(new("a\nb").unwrap_err().code, Code::MetaDataValidationError);
        let err = DomainMetadata::new_file(
            SD.parse().unwrap(),
            DomainType::Iscsi,
            DomainClass::Data,
            "d",
            "",
            512,
            MIB,
        )
        .unwrap_err();
        assert_eq!(err.code, Code::MetaDataValidationError);
    }

    #[test]
    fn blank_pool_is_kept_but_not_attached() {
        let blank = "00000000-0000-0000-0000-000000000000";
        let mut kv = sealed(&vdsm_new_nfs_domain());
        kv.set(keys::POOL_UUID, format!("{blank},{SP}")).unwrap();
        let md = DomainMetadata::from_kv(&kv).unwrap();
        assert_eq!(md.pools.len(), 2);
        assert_eq!(md.attached_pools(), vec![SP.parse().unwrap()]);
        assert_eq!(md.to_kv().unwrap(), kv);
    }
}
