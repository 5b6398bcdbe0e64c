//! Wire types shared by the daemon, the client and the docs generator.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::error::WireError;

/// A UUID in the canonical 36-character hyphenated form, the only form VDSM
/// and the engine use. Anything else (braces, URNs, the 32-digit form, a path)
/// is refused at the edge, so an id can be used as a file name safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(uuid::Uuid);

impl Uuid {
    pub fn new_v4() -> Self {
        Uuid(uuid::Uuid::new_v4())
    }

    /// The all-zero UUID VDSM uses for "no parent".
    pub const fn nil() -> Self {
        Uuid(uuid::Uuid::nil())
    }

    /// The UUID as one 128-bit number (its canonical form read as hex),
    /// for binary layouts such as VDSM's mailbox messages.
    pub const fn as_u128(&self) -> u128 {
        self.0.as_u128()
    }

    pub const fn from_u128(v: u128) -> Self {
        Uuid(uuid::Uuid::from_u128(v))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a UUID in canonical form: {0:?}")]
pub struct BadUuid(pub String);

impl FromStr for Uuid {
    type Err = BadUuid;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadUuid(s.chars().take(64).collect());
        if s.len() != 36 {
            return Err(bad());
        }
        for (i, b) in s.bytes().enumerate() {
            let ok = match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            };
            if !ok {
                return Err(bad());
            }
        }
        uuid::Uuid::try_parse(s).map(Uuid).map_err(|_| bad())
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Lower case, hyphenated: the form VDSM writes into metadata.
        write!(f, "{}", self.0.hyphenated())
    }
}

impl Serialize for Uuid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

macro_rules! uuid_newtype {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $crate::types::Uuid);

        impl FromStr for $name {
            type Err = $crate::types::BadUuid;
            fn from_str(s: &str) -> Result<Self, $crate::types::BadUuid> {
                s.parse().map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

// For the storage ids in storage.rs.
pub(crate) use uuid_newtype;

uuid_newtype! {
    /// A host job's id, chosen by the caller.
    JobId;
}

/// VDSM's `HostJobStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Running,
    Done,
    Failed,
    Aborted,
}

impl JobStatus {
    /// Done, failed and aborted jobs never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Failed | JobStatus::Aborted
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Aborted => "aborted",
        };
        f.write_str(s)
    }
}

/// VDSM's `HostJobType`. depot runs storage jobs only; `v2v` is accepted as a
/// filter so the engine's calls keep working (it matches nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    Storage,
    V2v,
}

/// VDSM's `HostJobInfo`, plus `result` (depot's addition: what a finished job
/// produced, such as a checksum).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: JobId,
    pub status: JobStatus,
    /// 0..=100 while the job can tell.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub progress: Option<u8>,
    pub description: String,
    pub job_type: JobType,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<WireError>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub result: Option<serde_json::Value>,
}

/// The storage part of `Host.getCapabilities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Always "depot": lets a client tell depot from VDSM.
    pub version_name: String,
    /// depot's version, x.y.z.
    pub software_version: String,
    pub software_revision: String,
    /// Storage domain format versions this host can create and read.
    pub domain_versions: Vec<u32>,
    /// Storage domain types (VDSM names) this build supports.
    pub storage_domain_types: Vec<String>,
    /// Block sizes supported per domain type, VDSM's `supported_block_size`.
    pub supported_block_size: std::collections::BTreeMap<String, Vec<u32>>,
    /// Names of optional features, VDSM's `additionalFeatures`.
    #[serde(rename = "additionalFeatures")]
    pub additional_features: Vec<String>,
    /// depot's: whether this host can use sanlock (host ids, leases).
    #[serde(default)]
    pub sanlock: SanlockCapability,
}

/// The `sanlock` part of depot's capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SanlockCapability {
    /// The client library is loaded and the daemon answered.
    pub available: bool,
    /// Why not, when not: `sanlock unavailable: <why>` (no library, the
    /// daemon does not answer, disabled in the configuration).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// The daemon's version, when it answered.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_accepts_only_canonical_form() {
        let good = "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a";
        assert_eq!(good.parse::<Uuid>().unwrap().to_string(), good);
        let upper = good.to_uppercase();
        assert_eq!(upper.parse::<Uuid>().unwrap().to_string(), good);
        for bad in [
            "",
            "5c1b1f0e7a8d4c1e9b0a3f2e1d0c9b8a",
            "{5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a}",
            "urn:uuid:5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a",
            "../../../../../../../../etc/passwd/xx",
            "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8g",
            "5c1b1f0e-7a8d-4c1e-9b0a/3f2e1d0c9b8a",
        ] {
            assert!(bad.parse::<Uuid>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn job_info_wire_shape() {
        let info = JobInfo {
            id: "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a".parse().unwrap(),
            status: JobStatus::Running,
            progress: Some(42),
            description: "sleep".into(),
            job_type: JobType::Storage,
            error: None,
            result: None,
        };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a",
                "status": "running", "progress": 42, "description": "sleep",
                "job_type": "storage"})
        );
    }
}
