//! OVF backup providers (docs/storage.md, "OVF backup providers").
//!
//! The VM and template definitions (OVFs) the engine uploads into each
//! domain's OVF_STORE are worth keeping in more than one place: a torn
//! store, or a site lost with its storage, must not lose them. A
//! [`Provider`] is one such place. After an OVF_STORE upload is durable
//! on its domain, depot-ovf-backup's recorder hands an [`UploadRecord`]
//! (every entity of the upload, with its OVF text and sha256) to each
//! configured provider, from a persisted [`queue::RetryQueue`], off the
//! upload's path.
//!
//! This crate holds what needs no storage: the contract, the
//! [`NoOp`] provider, the host-local SQLite [`archive::Archive`], the
//! retry queue, and the rule for which copy to trust ([`trust`]). The
//! providers that read or write a domain (its own OVF_STOREs, a mirror
//! domain), the recorder and restores are depot-ovf-backup's, over the
//! storage.
//!
//! Everything here is blocking: callers run it on their own threads.

pub mod archive;
pub mod queue;
pub mod trust;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A VM or a template: depot-api's, as the storage names them too.
pub use depot_api::storage::EntityKind;

/// One entity of an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityCopy {
    pub id: Uuid,
    pub name: String,
    pub kind: EntityKind,
    /// Lowercase hex sha256 of `ovf`'s bytes.
    pub sha256: String,
    pub ovf: String,
}

impl EntityCopy {
    /// An entity with the sha256 of its text computed here, so a record
    /// never carries a hash that does not match its text.
    pub fn new(id: Uuid, name: String, kind: EntityKind, ovf: String) -> EntityCopy {
        let sha256 = sha256_hex(ovf.as_bytes());
        EntityCopy {
            id,
            name,
            kind,
            sha256,
            ovf,
        }
    }
}

/// The lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Where an upload was accepted: the domain and its OVF_STORE volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Source {
    pub sd: Uuid,
    pub img: Uuid,
    pub vol: Uuid,
}

/// An accepted, durable OVF_STORE upload: what every provider records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub source: Source,
    /// The store's generation (its trailer's) after this upload.
    pub generation: u64,
    /// When depotd saw the upload durable, seconds since the epoch.
    pub time: u64,
    pub entities: Vec<EntityCopy>,
}

/// One copy of an entity that a provider holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCopy {
    /// The provider's name ([`Provider::name`]).
    pub provider: String,
    pub id: Uuid,
    pub name: String,
    pub kind: EntityKind,
    /// The source store's generation this copy was taken from (None:
    /// a store written by another agent, which has none).
    pub generation: Option<u64>,
    pub sha256: String,
    pub source: Source,
    /// Seconds since the epoch (0 when the provider cannot tell).
    pub time: u64,
    /// The text, when asked for ([`Provider::copies`]).
    pub ovf: Option<String>,
    /// Why this copy cannot be used (a torn store), if it cannot.
    pub unusable: Option<String>,
}

/// Why a provider failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// It may work later (the archive locked or its directory missing, a
    /// mirror domain not reachable): the record stays queued.
    #[error("{provider}: {reason}")]
    Unavailable { provider: String, reason: String },
    /// It will never work for this record (larger than the archive's
    /// bound): retrying is pointless; the record is set aside.
    #[error("{provider}: {reason}")]
    Refused { provider: String, reason: String },
}

impl ProviderError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, ProviderError::Refused { .. })
    }
}

/// A place that keeps copies of OVFs. Blocking; called off the async
/// runtime, from one thread per provider.
pub trait Provider: Send + Sync {
    /// A short stable name ("stores", "archive", "mirror", "noop").
    fn name(&self) -> &str;

    /// Whether records must be handed to it (false for a read-only view).
    fn records(&self) -> bool {
        true
    }

    /// Records an accepted upload. Recording the same record twice is
    /// harmless (a retry after a crash does).
    fn record(&self, rec: &UploadRecord) -> Result<(), ProviderError>;

    /// Every copy of every entity it holds, without the texts (the
    /// archive: every generation it keeps; a store or the mirror: the
    /// one it has).
    fn list(&self) -> Result<Vec<HeldCopy>, ProviderError>;

    /// The copies of entity `id` it holds, newest first, with texts.
    fn copies(&self, id: Uuid) -> Result<Vec<HeldCopy>, ProviderError>;
}

/// The provider where nothing is configured: it keeps nothing.
#[derive(Debug, Default)]
pub struct NoOp;

impl Provider for NoOp {
    fn name(&self) -> &str {
        "noop"
    }

    fn records(&self) -> bool {
        false
    }

    fn record(&self, _rec: &UploadRecord) -> Result<(), ProviderError> {
        Ok(())
    }

    fn list(&self) -> Result<Vec<HeldCopy>, ProviderError> {
        Ok(Vec::new())
    }

    fn copies(&self, _id: Uuid) -> Result<Vec<HeldCopy>, ProviderError> {
        Ok(Vec::new())
    }
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
