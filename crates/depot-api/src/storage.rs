//! The storage vocabulary shared by the wire and the storage layer: ids and
//! VDSM's enumerations, each with the names (and numbers) VDSM uses on the
//! wire and in metadata. Parsing is strict: a value VDSM would not write is
//! refused.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

use crate::types::Uuid;

crate::types::uuid_newtype! {
    /// A storage domain (`sdUUID`); also the directory name of a file domain
    /// and the VG name of a block domain.
    SdUuid;
    /// A storage pool, VDSM's data center (`spUUID`).
    SpUuid;
    /// An image: the chain of volumes of one disk (`imgUUID`).
    ImgUuid;
    /// A volume: one layer of a disk (`volUUID`).
    VolUuid;
}

impl VolUuid {
    /// VDSM's BLANK_UUID: "no parent".
    pub const BLANK: VolUuid = VolUuid(Uuid::nil());

    pub fn is_blank(&self) -> bool {
        *self == VolUuid::BLANK
    }
}

/// A VDSM enumeration written as a name (and sometimes sent as a number).
macro_rules! named_enum {
    (
        $(#[$doc:meta])*
        $name:ident { $( $(#[$vdoc:meta])* $variant:ident = $text:literal $(/ $num:literal)? ),* $(,)? }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[$vdoc])* $variant, )* }

        impl $name {
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )* ];

            pub fn name(self) -> &'static str {
                match self { $( $name::$variant => $text, )* }
            }

            /// VDSM's number for the value, where it has one.
            #[allow(unreachable_patterns)]
            pub fn number(self) -> Option<i64> {
                match self { $( $( $name::$variant => Some($num), )? )* _ => None }
            }

            #[allow(unused_variables, unreachable_code)]
            pub fn from_number(n: i64) -> Option<$name> {
                $( $( if n == $num { return Some($name::$variant); } )? )*
                None
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $( $text => Ok($name::$variant), )*
                    _ => Err(format!(
                        "{:?} is not a {}; expected one of {}",
                        s.chars().take(64).collect::<String>(),
                        stringify!($name),
                        [$($text),*].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        /// Accepts the name, or VDSM's number where it has one (the engine
        /// sends `domainType` and `domainClass` as numbers).
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                match serde_json::Value::deserialize(d)? {
                    serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
                    serde_json::Value::Number(n) => n
                        .as_i64()
                        .and_then($name::from_number)
                        .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a {} number", stringify!($name)))),
                    other => Err(serde::de::Error::custom(format!("expected a {} name, got {other}", stringify!($name)))),
                }
            }
        }
    };
}

named_enum! {
    /// `domainType`: VDSM's storage types.
    DomainType {
        Nfs = "NFS" / 1,
        Fcp = "FCP" / 2,
        Iscsi = "ISCSI" / 3,
        LocalFs = "LOCALFS" / 4,
        Cifs = "CIFS" / 5,
        PosixFs = "POSIXFS" / 6,
        GlusterFs = "GLUSTERFS" / 7,
    }
}

impl DomainType {
    /// File domains: a directory tree on a mounted (or local) file system.
    pub fn is_file(self) -> bool {
        matches!(
            self,
            DomainType::Nfs
                | DomainType::LocalFs
                | DomainType::PosixFs
                | DomainType::GlusterFs
                | DomainType::Cifs
        )
    }

    /// Block domains: a volume group on SAN LUNs (iSCSI or FC).
    pub fn is_block(self) -> bool {
        matches!(self, DomainType::Iscsi | DomainType::Fcp)
    }
}

named_enum! {
    /// `domainClass`. `Backup` is VDSM's legacy export domain, not the
    /// backup storage domain flag.
    DomainClass {
        Data = "Data" / 1,
        Iso = "Iso" / 2,
        Backup = "Backup" / 3,
    }
}

named_enum! {
    /// A domain's role in its pool.
    DomainRole {
        Master = "Master",
        Regular = "Regular",
    }
}

named_enum! {
    /// `volFormat`, and FORMAT in volume metadata.
    VolumeFormat {
        Cow = "COW" / 4,
        Raw = "RAW" / 5,
    }
}

named_enum! {
    /// `preallocate`, and TYPE in volume metadata.
    AllocType {
        Preallocated = "PREALLOCATED" / 1,
        Sparse = "SPARSE" / 2,
    }
}

named_enum! {
    /// DISKTYPE: what a volume holds.
    DiskType {
        Data = "DATA",
        /// An OVF_STORE volume.
        Ovfs = "OVFS",
        /// Memory dump of a snapshot.
        Memd = "MEMD",
        /// Memory metadata of a snapshot.
        Memm = "MEMM",
        Isof = "ISOF",
        /// Hosted-engine disks.
        Hevd = "HEVD",
        Hesd = "HESD",
        Hemd = "HEMD",
        Heci = "HECI",
        Scrd = "SCRD",
    }
}

named_enum! {
    /// LEGALITY: whether a volume's data can be trusted.
    Legality {
        Legal = "LEGAL",
        Illegal = "ILLEGAL",
        Fake = "FAKE",
    }
}

named_enum! {
    /// VOLTYPE: the volume's place in its chain.
    VolType {
        Leaf = "LEAF",
        Internal = "INTERNAL",
        Shared = "SHARED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_numbers() {
        for t in DomainType::ALL {
            assert_eq!(t.name().parse::<DomainType>().unwrap(), *t);
            assert_eq!(DomainType::from_number(t.number().unwrap()), Some(*t));
        }
        let t: DomainType = serde_json::from_value(json!(4)).unwrap();
        assert_eq!(t, DomainType::LocalFs);
        let t: DomainType = serde_json::from_value(json!("GLUSTERFS")).unwrap();
        assert_eq!(t, DomainType::GlusterFs);
        assert!(serde_json::from_value::<DomainType>(json!(9)).is_err());
        assert!(serde_json::from_value::<DomainType>(json!("nfs")).is_err());
        let f: VolumeFormat = serde_json::from_value(json!("COW")).unwrap();
        assert_eq!(serde_json::to_value(f).unwrap(), json!("COW"));
        assert!(DomainType::Nfs.is_file() && !DomainType::Iscsi.is_file());
    }

    /// The serde name (the retry queue's records) is the engine's name
    /// (the archive's column, the wire's `type`).
    #[test]
    fn entity_kinds_have_one_name() {
        for k in [EntityKind::Vm, EntityKind::Template] {
            assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
            assert_eq!(EntityKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EntityKind::Template.as_str(), "TEMPLATE");
        assert_eq!(EntityKind::parse("vm"), None);
    }

    #[test]
    fn blank_volume() {
        let b: VolUuid = "00000000-0000-0000-0000-000000000000".parse().unwrap();
        assert!(b.is_blank());
    }
}

/// A size in bytes as VDSM sends it: a decimal string (`"1073741824"`), or
/// a number from newer clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s)
                if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) =>
            {
                s.parse()
                    .map(ByteSize)
                    .map_err(|_| serde::de::Error::custom(format!("size {s:?} is too large")))
            }
            serde_json::Value::Number(n) => n.as_u64().map(ByteSize).ok_or_else(|| {
                serde::de::Error::custom(format!("size {n} is not a whole number of bytes"))
            }),
            other => Err(serde::de::Error::custom(format!(
                "expected a size in bytes (decimal string or number), got {other}"
            ))),
        }
    }
}

/// One connection dict of `StoragePool.connectStorageServer`, as the engine
/// builds it (`StorageConnectionHelper.java`). Fields are kept as sent;
/// validation happens in the storage layer, per connection, so that one bad
/// entry fails alone with its own status code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionDict {
    pub id: Option<String>,
    pub connection: Option<String>,
    pub vfs_type: Option<String>,
    pub mnt_options: Option<String>,
    pub protocol_version: Option<String>,
    /// Deciseconds, as the engine sends it.
    pub timeout: Option<String>,
    pub retrans: Option<String>,
    pub port: Option<String>,
    pub iqn: Option<String>,
    pub tpgt: Option<String>,
    pub user: Option<String>,
    /// iSCSI CHAP password: never printed (see [`Password`]).
    pub password: Option<Password>,
    pub iface: Option<String>,
}

impl ConnectionDict {
    /// Reads a dict leniently: numbers become their decimal text, nulls are
    /// absent, unknown keys are ignored (the engine sends more than a given
    /// storage type uses).
    pub fn from_map(
        map: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<ConnectionDict, String> {
        let field = |name: &str| -> Result<Option<String>, String> {
            match map.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
                Some(serde_json::Value::Bool(b)) => Ok(Some(b.to_string())),
                Some(other) => Err(format!("field '{name}' must be a string, got {other}")),
            }
        };
        Ok(ConnectionDict {
            id: field("id")?,
            connection: field("connection")?,
            vfs_type: field("vfs_type")?,
            mnt_options: field("mnt_options")?,
            protocol_version: field("protocol_version")?,
            timeout: field("timeout")?,
            retrans: field("retrans")?,
            port: field("port")?,
            iqn: field("iqn")?,
            tpgt: field("tpgt")?,
            user: field("user")?,
            // Not through `field`: its error would quote the value.
            password: match map.get("password") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(Password(s.clone())),
                Some(_) => return Err("field 'password' must be a string".into()),
            },
            iface: field("ifaceName")?.or(field("iface")?),
        })
    }
}

/// A TCP port as VDSM's clients send it: a number or a decimal string,
/// 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match n {
            Some(p @ 1..=65535) => Ok(Port(p as u16)),
            _ => Err(serde::de::Error::custom("expected a port 1-65535")),
        }
    }
}

/// A password from the wire (iSCSI CHAP). `Debug` prints `***`, so a
/// parsed call can be logged without it; the value is read with
/// [`Password::expose`] only to hand it to the storage layer.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Password(String);

impl Password {
    pub fn new(value: impl Into<String>) -> Self {
        Password(value.into())
    }

    /// The password itself. Never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A custom error: serde's own would quote a wrong-typed value.
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Password(s)),
            _ => Err(serde::de::Error::custom("a password must be a string")),
        }
    }
}

/// The `connectionParams` list: each entry parsed on its own, so a bad entry
/// becomes a failed status for that connection instead of failing the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionList(pub Vec<Result<ConnectionDict, (Option<String>, String)>>);

impl<'de> Deserialize<'de> for ConnectionList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<serde_json::Value>::deserialize(d)?;
        Ok(ConnectionList(
            items
                .into_iter()
                .map(|item| match item {
                    serde_json::Value::Object(m) => ConnectionDict::from_map(&m).map_err(|e| {
                        let id = m.get("id").and_then(|v| v.as_str()).map(String::from);
                        (id, e)
                    }),
                    other => Err((None, format!("a connection must be an object, got {other}"))),
                })
                .collect(),
        ))
    }
}

/// A `div` endpoint of `SDM.copy_data` (a volume of a domain). Other keys
/// the engine sends (`prepared`, `legal`, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CopyEndpoint {
    /// Only "div" (a volume on a storage domain) is supported.
    pub endpoint_type: String,
    pub sd_id: SdUuid,
    pub img_id: ImgUuid,
    pub vol_id: VolUuid,
    /// The destination's expected generation (911 when it differs).
    #[serde(default)]
    pub generation: Option<u32>,
}

/// VDSM's `Lease`: an external or VM lease, by domain and lease id (the
/// sanlock resource's lockspace and name). Other keys are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Lease {
    pub sd_id: SdUuid,
    pub lease_id: Uuid,
}

/// `vol_info` of `SDM.update_volume`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VolumeRef {
    pub sd_id: SdUuid,
    pub img_id: ImgUuid,
    pub vol_id: VolUuid,
    /// The generation the volume must have now.
    pub generation: u32,
}

/// `vol_attr` of `SDM.update_volume`: what to set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct VolumeAttributes {
    #[serde(default)]
    pub legality: Option<Legality>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub generation: Option<u32>,
    /// VDSM's `type` (the engine makes a template's volumes SHARED).
    #[serde(default, rename = "type")]
    pub no_type: NoVolumeType,
}

/// `type` of [`VolumeAttributes`]: changing a volume's type is not
/// supported yet, so any value is refused, and the call fails instead of
/// leaving the type unchanged. Absent or null is fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NoVolumeType;

impl<'de> Deserialize<'de> for NoVolumeType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Ok(NoVolumeType),
            v => Err(serde::de::Error::custom(format!(
                "type={}: changing a volume's type is not supported yet",
                v.to_string().chars().take(64).collect::<String>()
            ))),
        }
    }
}

/// A VM or a template of an OVF_STORE, as the engine's `VmEntityType`
/// names it: the `type` of an OVF entity on the wire ("VM", "TEMPLATE"),
/// in the storage's listing and in the OVF backup's records alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EntityKind {
    Vm,
    Template,
}

impl EntityKind {
    /// The engine's `VmEntityType` name.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Vm => "VM",
            EntityKind::Template => "TEMPLATE",
        }
    }

    pub fn parse(s: &str) -> Option<EntityKind> {
        match s {
            "VM" => Some(EntityKind::Vm),
            "TEMPLATE" => Some(EntityKind::Template),
            _ => None,
        }
    }
}

/// `Image.move`'s operation: VDSM's COPY_OP 1, MOVE_OP 2 (names or numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveOperation {
    Copy,
    Move,
}

impl<'de> Deserialize<'de> for MoveOperation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "COPY" => Ok(MoveOperation::Copy),
            serde_json::Value::String(s) if s == "MOVE" => Ok(MoveOperation::Move),
            serde_json::Value::Number(n) if n.as_i64() == Some(1) => Ok(MoveOperation::Copy),
            serde_json::Value::Number(n) if n.as_i64() == Some(2) => Ok(MoveOperation::Move),
            other => Err(serde::de::Error::custom(format!(
                "expected COPY (1) or MOVE (2), got {other}"
            ))),
        }
    }
}

/// `Host.fenceNode`'s `policy` (VDSM's FencingPolicy): fencing is skipped
/// when the host still renews its lease in one of the domains of
/// `storageDomainHostIdMap` (domain -> its host id). The gluster keys are
/// accepted and not used (depot does not manage gluster servers).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[allow(non_snake_case)]
pub struct FencingPolicy {
    #[serde(default)]
    pub storageDomainHostIdMap: Option<std::collections::BTreeMap<SdUuid, i64>>,
    #[serde(default)]
    pub skipFencingIfGlusterBricksUp: Option<bool>,
    #[serde(default)]
    pub skipFencingIfGlusterQuorumNotMet: Option<bool>,
    #[serde(default)]
    pub glusterServerUuid: Option<String>,
}

/// `Host.fenceNode`'s `port`: VDSM's schema says int, the engine sends a
/// string ("" for none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FencePort {
    Number(u16),
    Text(String),
}

impl FencePort {
    /// The port as the agent reads it; `None` for an empty one.
    pub fn text(&self) -> Option<String> {
        match self {
            FencePort::Number(n) => Some(n.to_string()),
            FencePort::Text(t) if t.is_empty() => None,
            FencePort::Text(t) => Some(t.clone()),
        }
    }
}
