//! OVF backup over the storage (docs/storage.md, "OVF backup providers"):
//! what needs both the storage and depot-ovf-archive's providers.
//!
//! * [`recorder`]: each durable OVF_STORE upload, read back and queued
//!   for every recording provider;
//! * [`providers`]: the providers that read or write a domain (its own
//!   OVF_STOREs, a mirror domain);
//! * [`report`]: every entity's copies and the copy trusted (`list`,
//!   `show`); [`restore`]: a copy written back into a store;
//! * [`attach`]: another archive, written or read beside;
//! * [`dr`]: the VMs of a disaster recovery's step 5, from the stores and
//!   the providers;
//! * `store_tar`: the archives depot writes into a store itself.
//!
//! Typed in, typed out: depotd maps the `OvfBackup.*` verbs' parameters
//! to these calls and their results to the wire. Everything here is
//! blocking: callers run it on their own threads.

pub mod attach;
pub mod dr;
pub mod providers;
pub mod recorder;
pub mod report;
pub mod restore;
mod store_tar;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use depot_api::storage::SdUuid;
use depot_ovf_archive::archive::{ArchiveProvider, Limits, Mode};
use depot_ovf_archive::queue::{Backoff, Worker};
use depot_ovf_archive::{EntityCopy, NoOp, Provider};
use depot_storage::{Storage, StorageError, StoreTexts};
use uuid::Uuid;

pub use attach::{AttachMode, Attachment};
pub use providers::mirror::MirrorProvider;
pub use providers::stores::StoresProvider;
pub use recorder::{tee, Pending, Tee};
pub use report::{EntityReport, Listing, ProviderStatus};
pub use restore::{Restored, Skipped};

use attach::{read_attached, ATTACHED_FILE};

/// A provider `[ovf_backup] providers` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// The domains' own OVF_STOREs, read only.
    Stores,
    /// The host-local SQLite archive.
    Archive,
    /// Another domain's OVF_STORE.
    Mirror,
}

/// `[ovf_backup]` as the daemon read and validated it (depotd's
/// config.rs), typed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub providers: Vec<ProviderKind>,
    /// The mirror domain; the "mirror" provider is skipped without one.
    pub mirror: Option<SdUuid>,
    /// The archive written, unless one attached with `resume` is.
    pub archive_path: PathBuf,
    pub archive_mode: Mode,
    pub limits: Limits,
    /// How a failing provider is retried.
    pub backoff: Backoff,
    /// `<state_dir>/ovf-backup`: the retry queue and the attach choice.
    pub dir: PathBuf,
}

/// Why a call failed; nothing was written unless the storage failed
/// while writing.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A parameter is wrong, or there is nothing to do.
    #[error("{0}")]
    Invalid(String),
    /// No provider holds a copy of the entity.
    #[error("{0}")]
    NotFound(String),
    /// Keeping the attach choice or building an archive failed.
    #[error("{0}")]
    Failed(String),
    /// The storage refused or failed (reading the stores, the upload).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The configured providers, the queue and its workers.
pub struct OvfBackup {
    /// Grows by one when an archive is attached with `fresh`.
    providers: RwLock<Vec<Arc<dyn Provider>>>,
    /// The archive written, if "archive" is configured.
    archive: Option<Arc<ArchiveProvider>>,
    limits: Limits,
    /// Where the attach choice is kept; None: not kept (NoOp).
    attached_file: Option<PathBuf>,
    _workers: Option<Arc<Vec<Worker>>>,
}

impl OvfBackup {
    /// Builds the providers of `[ovf_backup]`, and starts the workers of
    /// those that record (and the recorder) when there are any.
    pub fn start(c: &Settings, storage: Arc<Storage>, pending: Pending) -> OvfBackup {
        let mirror = c.mirror;
        let limits = c.limits;
        let attached_file = c.dir.join(ATTACHED_FILE);
        let attached = read_attached(&attached_file);
        let mut archive = None;
        let mut providers: Vec<Arc<dyn Provider>> = Vec::new();
        for kind in &c.providers {
            let p: Arc<dyn Provider> = match kind {
                ProviderKind::Stores => Arc::new(StoresProvider::new(storage.clone(), mirror)),
                ProviderKind::Archive => {
                    // An archive attached with `resume` is the one written.
                    let path = match &attached {
                        Some(a) if a.mode == AttachMode::Resume => a.path.clone(),
                        _ => c.archive_path.clone(),
                    };
                    let a = Arc::new(ArchiveProvider::new(path, limits, c.archive_mode));
                    archive = Some(a.clone());
                    a
                }
                ProviderKind::Mirror => match mirror {
                    Some(sd) => Arc::new(MirrorProvider::new(storage.clone(), sd)),
                    None => continue, // refused by depotd's Config::validate
                },
            };
            providers.push(p);
        }
        if let Some(a) = attached.as_ref().filter(|a| a.mode == AttachMode::Fresh) {
            providers.push(Arc::new(
                ArchiveProvider::new(a.path.clone(), limits, Mode::ReadOnly).named("attached"),
            ));
        }
        if providers.is_empty() {
            providers.push(Arc::new(NoOp));
        }
        let recording: Vec<Arc<dyn Provider>> =
            providers.iter().filter(|p| p.records()).cloned().collect();
        let workers = if recording.is_empty() {
            None
        } else {
            recorder::start_recording(c, storage, &recording, mirror, pending)
        };
        tracing::info!(
            providers = ?providers.iter().map(|p| p.name().to_string()).collect::<Vec<_>>(),
            "OVF backup providers"
        );
        OvfBackup {
            providers: RwLock::new(providers),
            archive,
            limits,
            attached_file: Some(attached_file),
            _workers: workers,
        }
    }

    /// The providers now.
    pub fn providers(&self) -> Vec<Arc<dyn Provider>> {
        self.providers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Nothing configured: the NoOp provider alone.
    pub fn noop() -> OvfBackup {
        OvfBackup {
            providers: RwLock::new(vec![Arc::new(NoOp)]),
            archive: None,
            limits: Limits::default(),
            attached_file: None,
            _workers: None,
        }
    }
}

/// depot-api's UUID as the archive's.
pub fn u(id: depot_api::types::Uuid) -> Uuid {
    Uuid::from_u128(id.as_u128())
}

/// A store's entities as the providers keep them.
fn entity_copies(texts: &StoreTexts) -> Vec<EntityCopy> {
    texts
        .entities
        .iter()
        .map(|(e, text)| EntityCopy::new(u(e.id), e.name.clone(), e.kind, text.clone()))
        .collect()
}
