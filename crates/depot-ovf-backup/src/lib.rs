//! OVF backup over the storage (docs/storage.md, "OVF backup
//! providers"): the providers that need the storage (the domains' own
//! OVF_STOREs, a mirror domain), and the recorder that hands each
//! accepted upload to every configured provider.
//!
//! The recorder sees an upload through the storage's `OvfStoreWritten`
//! event, published once the new content is durable on the domain. The
//! event only goes into a channel (publishing never blocks): the upload
//! answers as fast with providers as without. A recorder thread reads the
//! store's entities back, persists one record per provider in the retry
//! queue (`<state_dir>/ovf-backup/queue`) and wakes the provider's worker,
//! which records it, or keeps it queued while the provider fails.
//!
//! A generation that is replaced before the recorder reads it is not
//! recorded on its own: the newer one is (its event follows).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, RwLock};

use depot_api::results::{
    OvfBackupAttached, OvfBackupCopy, OvfBackupEntity, OvfBackupGeneration, OvfBackupListing,
    OvfBackupProvider, OvfBackupRestored, OvfBackupRestoredEntity, OvfBackupSkipped,
};
use depot_api::storage::{ImgUuid, SdUuid, VolUuid};
use depot_api::{ApiError, Code};
use depot_ovf_archive::archive::{Archive, ArchiveProvider, Limits, Mode};
use depot_ovf_archive::queue::{Backoff, RetryQueue, Worker};
use depot_ovf_archive::trust;
use depot_ovf_archive::{
    now_secs, EntityCopy, EntityKind, HeldCopy, NoOp, Provider, ProviderError, Source, UploadRecord,
};
use depot_storage::events::{EventSink, StorageEvent};
use depot_storage::ovf::StoreState;
use depot_storage::{Storage, StoreTexts};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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

/// One durable upload, as the storage reported it.
#[derive(Debug, Clone, Copy)]
struct Written {
    sd: SdUuid,
    img: ImgUuid,
    vol: VolUuid,
    generation: u64,
}

/// Passes every storage event on to `inner`, and the OVF_STORE writes to
/// the recorder too. Never blocks: a channel send.
pub struct Tee {
    inner: Arc<dyn EventSink>,
    tx: mpsc::Sender<Written>,
}

impl EventSink for Tee {
    fn publish(&self, event: StorageEvent) {
        if let StorageEvent::OvfStoreWritten {
            sd,
            img,
            vol,
            generation,
            ..
        } = &event
        {
            let _ = self.tx.send(Written {
                sd: *sd,
                img: *img,
                vol: *vol,
                generation: *generation,
            });
        }
        self.inner.publish(event);
    }
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

/// What [`OvfBackup::start`] needs before the storage exists: the event
/// sink to build the storage with, and the other end of its channel.
pub struct Pending {
    rx: mpsc::Receiver<Written>,
}

/// The sink for the storage, and what [`OvfBackup::start`] takes.
pub fn tee(inner: Arc<dyn EventSink>) -> (Arc<dyn EventSink>, Pending) {
    let (tx, rx) = mpsc::channel();
    (Arc::new(Tee { inner, tx }), Pending { rx })
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
                ProviderKind::Stores => Arc::new(StoresProvider {
                    storage: storage.clone(),
                    exclude: mirror,
                }),
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
                    Some(sd) => Arc::new(MirrorProvider {
                        storage: storage.clone(),
                        sd,
                    }),
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
            start_recording(c, storage, &recording, mirror, pending)
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

    /// `OvfBackup.attach` (docs/storage.md, "OVF backup providers").
    pub fn attach(&self, path: &str, mode: &str) -> Result<OvfBackupAttached, ApiError> {
        let bad = |m: String| ApiError::new(Code::InvalidParameterException, m);
        let mode = match mode {
            "resume" => AttachMode::Resume,
            "fresh" => AttachMode::Fresh,
            other => return Err(bad(format!("mode {other:?}: resume or fresh"))),
        };
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(bad(format!(
                "{}: an absolute path is needed",
                path.display()
            )));
        }
        let (Some(archive), Some(file)) = (&self.archive, &self.attached_file) else {
            return Err(bad(
                "no archive provider is configured ([ovf_backup] providers)".into(),
            ));
        };
        // Read, never written, before anything changes.
        let latest = Archive::open(&path, self.limits, Mode::ReadOnly)
            .and_then(|a| a.latest_generations())
            .map_err(|e| bad(e.to_string()))?;
        if mode == AttachMode::Fresh && archive.path() == path {
            return Err(bad(format!(
                "{} is the archive being written; --fresh keeps another one read only",
                path.display()
            )));
        }
        write_attached(
            file,
            &Attached {
                path: path.clone(),
                mode,
            },
        )
        .map_err(|e| ApiError::new(Code::GeneralException, e.to_string()))?;
        match mode {
            AttachMode::Resume => archive.retarget(path.clone()),
            AttachMode::Fresh => {
                let mut providers = self.providers.write().unwrap_or_else(|p| p.into_inner());
                providers.retain(|p| p.name() != "attached");
                providers.push(Arc::new(
                    ArchiveProvider::new(path.clone(), self.limits, Mode::ReadOnly)
                        .named("attached"),
                ));
            }
        }
        Ok(OvfBackupAttached {
            path: path.display().to_string(),
            mode: mode.as_str().into(),
            recording: Some(archive.path().display().to_string()),
            latest: latest
                .into_iter()
                .map(|(src, generation)| OvfBackupGeneration {
                    sourceDomainID: src.sd.to_string(),
                    sourceVolumeID: src.vol.to_string(),
                    generation,
                })
                .collect(),
        })
    }

    /// `OvfBackup.list`: every entity across the providers, its copies and
    /// the verdict. A provider that cannot be read is reported, not fatal.
    pub fn list(&self) -> OvfBackupListing {
        let mut providers = Vec::new();
        let mut by_id: BTreeMap<Uuid, Vec<HeldCopy>> = BTreeMap::new();
        for p in &self.providers() {
            let error = match p.list() {
                Ok(copies) => {
                    for c in copies {
                        by_id.entry(c.id).or_default().push(c);
                    }
                    None
                }
                Err(e) => Some(e.to_string()),
            };
            providers.push(OvfBackupProvider {
                name: p.name().to_string(),
                records: p.records(),
                error,
            });
        }
        let mut entities: Vec<OvfBackupEntity> = by_id
            .into_values()
            .map(|copies| entity_answer(&copies, false))
            .collect();
        entities.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        OvfBackupListing {
            providers,
            entities,
        }
    }

    /// Every copy of `id` the providers hold, with texts; the providers
    /// that could not be read are named in the error when none answered.
    fn copies(&self, id: Uuid) -> (Vec<HeldCopy>, Vec<String>) {
        let mut copies = Vec::new();
        let mut errors = Vec::new();
        for p in &self.providers() {
            match p.copies(id) {
                Ok(c) => copies.extend(c),
                Err(e) => errors.push(e.to_string()),
            }
        }
        // Newest first; every generation a provider keeps is a copy (the
        // rule looks for the newest two providers agree on).
        copies.sort_by_key(|c| std::cmp::Reverse((c.generation, c.time)));
        (copies, errors)
    }

    /// `OvfBackup.show`.
    pub fn show(&self, id: Uuid) -> Result<OvfBackupEntity, ApiError> {
        let (copies, errors) = self.copies(id);
        if copies.is_empty() {
            return Err(ApiError::new(
                Code::OvfEntityNotFound,
                format!(
                    "'{id}': no provider holds a copy{}",
                    if errors.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", errors.join("; "))
                    }
                ),
            ));
        }
        Ok(entity_answer(&copies, true))
    }

    /// `OvfBackup.restore`: checks everything, then writes one archive
    /// through the upload path. Nothing is written when a parameter is
    /// wrong or nothing can be restored.
    // long: about 110 lines: the checks of each parameter before anything
    // is written, the choice of each entity's copy, then one write.
    pub fn restore(
        &self,
        storage: &Storage,
        sd: SdUuid,
        img: Option<ImgUuid>,
        vol: Option<VolUuid>,
        ids: Option<Vec<Uuid>>,
        provider: Option<String>,
    ) -> Result<OvfBackupRestored, ApiError> {
        let bad = |m: String| ApiError::new(Code::InvalidParameterException, m);
        if let Some(p) = &provider {
            let providers = self.providers();
            if !providers.iter().any(|q| q.name() == p) {
                return Err(bad(format!(
                    "provider {p:?} is not configured (configured: {})",
                    providers
                        .iter()
                        .map(|q| q.name().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let (img, vol) = match (img, vol) {
            (Some(i), Some(v)) => (i, v),
            (None, None) => {
                let mut stores = storage.ovf_stores(sd).map_err(ApiError::from)?;
                stores.sort_by_key(|s| (s.img.0.as_u128(), s.vol.0.as_u128()));
                let s = stores.first().ok_or_else(|| {
                    bad(format!(
                        "domain {sd} has no OVF_STORE volume (DISKTYPE OVFS)"
                    ))
                })?;
                (s.img, s.vol)
            }
            _ => return Err(bad("imageID and volumeID go together".into())),
        };
        let ids: Vec<Uuid> = match ids {
            Some(ids) => ids,
            None => self
                .list()
                .entities
                .iter()
                .filter_map(|e| e.id.parse().ok())
                .collect(),
        };
        let mut chosen: Vec<(HeldCopy, String)> = Vec::new();
        let mut skipped = Vec::new();
        for id in ids {
            let (copies, _) = self.copies(id);
            let pick = match &provider {
                Some(p) => copies
                    .iter()
                    .position(|c| &c.provider == p && c.unusable.is_none())
                    .ok_or_else(|| format!("provider {p} holds no usable copy")),
                None => match trust::choose(&copies) {
                    trust::Verdict::Trusted { index, .. } => Ok(index),
                    trust::Verdict::Undecided { reason } => Err(reason),
                },
            };
            match pick {
                Ok(i) => {
                    let c = copies[i].clone();
                    match c.ovf.clone() {
                        Some(text) => chosen.push((c, text)),
                        None => skipped.push(OvfBackupSkipped {
                            id: id.to_string(),
                            reason: "the copy's text could not be read".into(),
                        }),
                    }
                }
                Err(reason) => skipped.push(OvfBackupSkipped {
                    id: id.to_string(),
                    reason,
                }),
            }
        }
        if chosen.is_empty() {
            return Err(bad(format!(
                "nothing to restore into domain {sd}{}",
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": {}",
                        skipped
                            .iter()
                            .map(|s| format!("{}: {}", s.id, s.reason))
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                }
            )));
        }
        // The store's other entities stay (a torn store has none to keep).
        let mut entries: Vec<(Uuid, String)> = match storage.ovf_store_texts(sd, img, vol) {
            Ok(t) => t
                .entities
                .into_iter()
                .filter(|(e, _)| !chosen.iter().any(|(c, _)| c.id == u(e.id)))
                .map(|(e, text)| (u(e.id), text))
                .collect(),
            Err(_) => Vec::new(),
        };
        entries.extend(chosen.iter().map(|(c, t)| (c.id, t.clone())));
        let tar = build_tar(sd, None, &entries).map_err(|e| {
            ApiError::new(Code::GeneralException, format!("building the archive: {e}"))
        })?;
        let done = upload(storage, sd, img, vol, &tar).map_err(ApiError::from)?;
        Ok(OvfBackupRestored {
            storagedomainID: sd.to_string(),
            imageID: img.to_string(),
            volumeID: vol.to_string(),
            generation: done.generation,
            restored: chosen
                .iter()
                .map(|(c, _)| OvfBackupRestoredEntity {
                    id: c.id.to_string(),
                    name: c.name.clone(),
                    provider: c.provider.clone(),
                    generation: c.generation,
                    sha256: c.sha256.clone(),
                })
                .collect(),
            skipped,
        })
    }
}

/// One entity's answer: its copies, who agrees, and the verdict.
fn entity_answer(copies: &[HeldCopy], with_text: bool) -> OvfBackupEntity {
    let verdict = trust::choose(copies);
    let trusted = verdict.index().map(|i| &copies[i]);
    let first = trusted.unwrap_or(&copies[0]);
    OvfBackupEntity {
        id: first.id.to_string(),
        name: first.name.clone(),
        r#type: first.kind.as_str().to_string(),
        copies: copies
            .iter()
            .enumerate()
            .map(|(i, c)| OvfBackupCopy {
                provider: c.provider.clone(),
                generation: c.generation,
                sha256: c.sha256.clone(),
                sourceDomainID: c.source.sd.to_string(),
                sourceImageID: c.source.img.to_string(),
                sourceVolumeID: c.source.vol.to_string(),
                time: c.time,
                agreesWith: if c.unusable.is_some() {
                    Vec::new()
                } else {
                    trust::agreeing(copies, i)
                },
                unusable: c.unusable.clone(),
            })
            .collect(),
        trusted: trusted.map(|c| c.provider.clone()),
        trustedGeneration: trusted.and_then(|c| c.generation),
        trustedSha256: trusted.map(|c| c.sha256.clone()),
        reason: verdict.reason().to_string(),
        ovf: if with_text {
            trusted.and_then(|c| c.ovf.clone())
        } else {
            None
        },
    }
}

/// Writes `tar` into OVF_STORE `vol` through the upload path.
fn upload(
    storage: &Storage,
    sd: SdUuid,
    img: ImgUuid,
    vol: VolUuid,
    tar: &[u8],
) -> depot_storage::StorageResult<depot_storage::UploadDone> {
    let mut at = 0usize;
    let mut source = |buf: &mut [u8]| -> std::io::Result<usize> {
        let n = buf.len().min(tar.len() - at);
        buf[..n].copy_from_slice(&tar[at..at + n]);
        at += n;
        Ok(n)
    };
    storage.ovf_upload(sd, img, vol, tar.len() as u64, &mut source)
}

/// `<state_dir>/ovf-backup/attached.json` (docs/formats.md, "OVF archive
/// attachment").
const ATTACHED_FILE: &str = "attached.json";
const ATTACHED_FORMAT: &str = "depot-ovf-backup-attached";
const ATTACHED_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AttachMode {
    Resume,
    Fresh,
}

impl AttachMode {
    fn as_str(self) -> &'static str {
        match self {
            AttachMode::Resume => "resume",
            AttachMode::Fresh => "fresh",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Attached {
    path: PathBuf,
    mode: AttachMode,
}

#[derive(Serialize, Deserialize)]
struct AttachedFile {
    format: String,
    version: u32,
    path: PathBuf,
    mode: AttachMode,
}

/// The attach choice kept, if any; one that cannot be read (or a newer
/// depot's) is logged and ignored, never removed.
fn read_attached(file: &std::path::Path) -> Option<Attached> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(file = %file.display(), error = %e, "cannot read the OVF archive attachment; ignored");
            return None;
        }
    };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(v)
            if v["format"] == ATTACHED_FORMAT
                && v["version"]
                    .as_u64()
                    .is_some_and(|n| n > u64::from(ATTACHED_VERSION)) =>
        {
            tracing::error!(file = %file.display(), "OVF archive attachment from a newer depot; ignored");
            None
        }
        _ => match serde_json::from_slice::<AttachedFile>(&bytes) {
            Ok(f) if f.format == ATTACHED_FORMAT => Some(Attached {
                path: f.path,
                mode: f.mode,
            }),
            Ok(_) | Err(_) => {
                tracing::error!(file = %file.display(), "OVF archive attachment unreadable; ignored");
                None
            }
        },
    }
}

/// Keeps the attach choice: a temporary file, fsync, rename, directory
/// fsync.
fn write_attached(file: &std::path::Path, a: &Attached) -> std::io::Result<()> {
    use std::io::Write;
    let dir = file.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let body = serde_json::to_vec_pretty(&AttachedFile {
        format: ATTACHED_FORMAT.into(),
        version: ATTACHED_VERSION,
        path: a.path.clone(),
        mode: a.mode,
    })
    .map_err(std::io::Error::other)?;
    let tmp = file.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The retry queue, one worker per recording provider, and the recorder
/// thread that feeds them; None when the queue cannot be opened (logged).
fn start_recording(
    c: &Settings,
    storage: Arc<Storage>,
    recording: &[Arc<dyn Provider>],
    mirror: Option<SdUuid>,
    pending: Pending,
) -> Option<Arc<Vec<Worker>>> {
    let dir = c.dir.join("queue");
    let q = match RetryQueue::open(&dir) {
        Ok(q) => Arc::new(q),
        Err(e) => {
            tracing::error!(error = %e, "OVF backup queue unavailable; uploads are not recorded");
            return None;
        }
    };
    let backoff = c.backoff;
    let mut started = Vec::new();
    for p in recording {
        match Worker::spawn(q.clone(), p.clone(), backoff) {
            // Records queued before a restart are tried at once.
            Ok(w) => {
                w.wake();
                started.push((p.name().to_string(), w));
            }
            Err(e) => tracing::error!(provider = p.name(), error = %e,
                "cannot start the OVF backup worker"),
        }
    }
    let (names, w): (Vec<String>, Vec<Worker>) = started.into_iter().unzip();
    let w = Arc::new(w);
    let ww = w.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("ovf-backup-recorder".into())
        .spawn(move || recorder(&storage, &q, &names, &ww, mirror, pending.rx))
    {
        tracing::error!(error = %e, "cannot start the OVF backup recorder");
    }
    Some(w)
}

/// The recorder thread: each durable upload, read back and queued for
/// every recording provider.
fn recorder(
    storage: &Storage,
    queue: &RetryQueue,
    names: &[String],
    workers: &[Worker],
    mirror: Option<SdUuid>,
    rx: mpsc::Receiver<Written>,
) {
    while let Ok(w) = rx.recv() {
        // The mirror's own writes are not uploads to back up.
        if Some(w.sd) == mirror {
            continue;
        }
        let texts = match storage.ovf_store_texts(w.sd, w.img, w.vol) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(sd = %w.sd, vol = %w.vol, generation = w.generation, error = %e,
                    "an OVF_STORE upload could not be read back for the backup providers");
                continue;
            }
        };
        if texts.generation != Some(w.generation) {
            tracing::debug!(sd = %w.sd, vol = %w.vol, generation = w.generation,
                now = ?texts.generation, "OVF_STORE replaced before it was recorded; the newer upload is");
            continue;
        }
        let rec = UploadRecord {
            source: Source {
                sd: u(w.sd.0),
                img: u(w.img.0),
                vol: u(w.vol.0),
            },
            generation: w.generation,
            time: now_secs(),
            entities: entity_copies(&texts),
        };
        for (name, worker) in names.iter().zip(workers) {
            match queue.push(name, &rec) {
                Ok(_) => worker.wake(),
                Err(e) => tracing::error!(provider = %name, error = %e,
                    "cannot queue an OVF backup record; this upload is not recorded there"),
            }
        }
    }
}

/// depot-api's UUID as the archive's.
pub fn u(id: depot_api::types::Uuid) -> Uuid {
    Uuid::from_u128(id.as_u128())
}

fn kind_of(k: depot_storage::ovf::EntityKind) -> EntityKind {
    match k {
        depot_storage::ovf::EntityKind::Vm => EntityKind::Vm,
        depot_storage::ovf::EntityKind::Template => EntityKind::Template,
    }
}

fn entity_copies(texts: &StoreTexts) -> Vec<EntityCopy> {
    texts
        .entities
        .iter()
        .map(|(e, text)| EntityCopy::new(u(e.id), e.name.clone(), kind_of(e.kind), text.clone()))
        .collect()
}

fn unavailable(provider: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Unavailable {
        provider: provider.into(),
        reason: e.to_string(),
    }
}

/// The domains' own OVF_STOREs, read only: what the engine wrote (the
/// upload itself is the record). Every valid store of every domain on
/// connected storage, but the mirror.
pub struct StoresProvider {
    storage: Arc<Storage>,
    exclude: Option<SdUuid>,
}

impl StoresProvider {
    fn held(&self, texts: bool, want: Option<Uuid>) -> Result<Vec<HeldCopy>, ProviderError> {
        let mut out = Vec::new();
        for sd in self.storage.find_domains(None, None, None, None) {
            if Some(sd) == self.exclude {
                continue;
            }
            let stores = self
                .storage
                .ovf_stores(sd)
                .map_err(|e| unavailable("stores", e))?;
            for st in stores {
                if let StoreState::Torn { .. } = st.state {
                    continue;
                }
                let t = match self.storage.ovf_store_texts(sd, st.img, st.vol) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(%sd, vol = %st.vol, error = %e, "OVF_STORE not readable");
                        continue;
                    }
                };
                for c in entity_copies(&t) {
                    if want.is_some_and(|id| id != c.id) {
                        continue;
                    }
                    out.push(HeldCopy {
                        provider: "stores".into(),
                        id: c.id,
                        name: c.name,
                        kind: c.kind,
                        generation: t.generation,
                        sha256: c.sha256,
                        source: Source {
                            sd: u(sd.0),
                            img: u(st.img.0),
                            vol: u(st.vol.0),
                        },
                        time: 0,
                        ovf: texts.then_some(c.ovf),
                        unusable: None,
                    });
                }
            }
        }
        Ok(out)
    }
}

impl Provider for StoresProvider {
    fn name(&self) -> &str {
        "stores"
    }

    fn records(&self) -> bool {
        false
    }

    fn record(&self, _rec: &UploadRecord) -> Result<(), ProviderError> {
        Ok(())
    }

    fn list(&self) -> Result<Vec<HeldCopy>, ProviderError> {
        self.held(false, None)
    }

    fn copies(&self, id: Uuid) -> Result<Vec<HeldCopy>, ProviderError> {
        self.held(true, Some(id))
    }
}

/// Where each entity of a mirror store came from: kept in the store's
/// `info.json` under `"depot mirror"` (docs/formats.md, "OVF mirror").
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Provenance {
    source: Source,
    generation: u64,
    time: u64,
    sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct MirrorInfo {
    version: u32,
    entities: BTreeMap<Uuid, Provenance>,
}

const MIRROR_INFO_VERSION: u32 = 1;

/// Another domain's OVF_STORE as a mirror: the latest upload of every
/// source store, merged into one archive written through the storage's
/// upload path (its checks, its trailer, a new generation each time).
/// The mirror domain must be one the engine does not write OVF_STOREs to.
pub struct MirrorProvider {
    storage: Arc<Storage>,
    sd: SdUuid,
}

struct MirrorState {
    img: ImgUuid,
    vol: VolUuid,
    entities: Vec<(EntityCopy, Option<Provenance>)>,
}

impl MirrorProvider {
    fn err(&self, e: impl std::fmt::Display) -> ProviderError {
        unavailable("mirror", format!("domain {}: {e}", self.sd))
    }

    /// The mirror's store (its first OVF_STORE volume) and what it holds.
    fn state(&self) -> Result<MirrorState, ProviderError> {
        let mut stores = self.storage.ovf_stores(self.sd).map_err(|e| self.err(e))?;
        stores.sort_by_key(|s| (s.img.0.as_u128(), s.vol.0.as_u128()));
        let st = stores
            .first()
            .ok_or_else(|| self.err("no OVF_STORE volume (DISKTYPE OVFS) to mirror into"))?;
        let (img, vol) = (st.img, st.vol);
        let texts = match st.state {
            // A torn mirror starts over (what it held is lost to it).
            StoreState::Torn { .. } => StoreTexts {
                generation: None,
                entities: Vec::new(),
                info_json: None,
            },
            _ => self
                .storage
                .ovf_store_texts(self.sd, img, vol)
                .map_err(|e| self.err(e))?,
        };
        let info: MirrorInfo = texts
            .info_json
            .as_deref()
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .and_then(|v| v.get("depot mirror").cloned())
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let entities = entity_copies(&texts)
            .into_iter()
            .map(|c| {
                let p = info.entities.get(&c.id).cloned();
                (c, p)
            })
            .collect();
        Ok(MirrorState { img, vol, entities })
    }

    fn held(&self, texts: bool, want: Option<Uuid>) -> Result<Vec<HeldCopy>, ProviderError> {
        let st = self.state()?;
        Ok(st
            .entities
            .into_iter()
            .filter(|(c, _)| want.is_none_or(|id| id == c.id))
            .filter_map(|(c, p)| {
                let p = p?;
                let unusable = (p.sha256 != c.sha256)
                    .then(|| "its text does not match the sha256 recorded with it".to_string());
                Some(HeldCopy {
                    provider: "mirror".into(),
                    id: c.id,
                    name: c.name,
                    kind: c.kind,
                    generation: Some(p.generation),
                    sha256: c.sha256,
                    source: p.source,
                    time: p.time,
                    ovf: texts.then_some(c.ovf),
                    unusable,
                })
            })
            .collect())
    }
}

impl Provider for MirrorProvider {
    fn name(&self) -> &str {
        "mirror"
    }

    fn record(&self, rec: &UploadRecord) -> Result<(), ProviderError> {
        let st = self.state()?;
        let newest = st
            .entities
            .iter()
            .filter_map(|(_, p)| p.as_ref())
            .filter(|p| p.source == rec.source)
            .map(|p| p.generation)
            .max();
        if newest.is_some_and(|g| g >= rec.generation) {
            // Held already, or a newer upload of that store is.
            return Ok(());
        }
        // The source store's entities are replaced by this upload's: a VM
        // removed there is removed here.
        let mut merged: Vec<(EntityCopy, Provenance)> = st
            .entities
            .into_iter()
            .filter_map(|(c, p)| p.map(|p| (c, p)))
            .filter(|(c, p)| p.source != rec.source && !rec.entities.iter().any(|e| e.id == c.id))
            .collect();
        for e in &rec.entities {
            merged.push((
                e.clone(),
                Provenance {
                    source: rec.source,
                    generation: rec.generation,
                    time: rec.time,
                    sha256: e.sha256.clone(),
                },
            ));
        }
        let tar = mirror_tar(self.sd, &merged).map_err(|e| self.err(e))?;
        upload(&self.storage, self.sd, st.img, st.vol, &tar).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<HeldCopy>, ProviderError> {
        self.held(false, None)
    }

    fn copies(&self, id: Uuid) -> Result<Vec<HeldCopy>, ProviderError> {
        self.held(true, Some(id))
    }
}

/// The mirror's archive: `info.json` with depot's provenance under
/// "depot mirror", then one `<id>.ovf` per entity.
fn mirror_tar(sd: SdUuid, entities: &[(EntityCopy, Provenance)]) -> std::io::Result<Vec<u8>> {
    let info = MirrorInfo {
        version: MIRROR_INFO_VERSION,
        entities: entities.iter().map(|(c, p)| (c.id, p.clone())).collect(),
    };
    let entries: Vec<(Uuid, String)> = entities
        .iter()
        .map(|(c, _)| (c.id, c.ovf.clone()))
        .collect();
    let info = serde_json::to_value(info).map_err(std::io::Error::other)?;
    build_tar(sd, Some(("depot mirror", info)), &entries)
}

/// An OVF_STORE archive as the engine writes one: `info.json` (its "Last
/// Updated" and "Storage Domains", and `extra`), then one `<id>.ovf` per
/// entity (the last of an id wins, as the engine's reader does).
fn build_tar(
    sd: SdUuid,
    extra: Option<(&str, serde_json::Value)>,
    entities: &[(Uuid, String)],
) -> std::io::Result<Vec<u8>> {
    let mut json = serde_json::json!({
        "Last Updated": now_secs().to_string(),
        "Storage Domains": [{"uuid": sd.0.to_string()}],
    });
    if let (Some((k, v)), Some(m)) = (extra, json.as_object_mut()) {
        m.insert(k.to_string(), v);
    }
    let mut last: HashMap<Uuid, usize> = HashMap::new();
    for (i, (id, _)) in entities.iter().enumerate() {
        last.insert(*id, i);
    }
    let mut out = Vec::new();
    {
        let mut b = tar::Builder::new(&mut out);
        append(&mut b, "info.json", json.to_string().as_bytes())?;
        for (i, (id, text)) in entities.iter().enumerate() {
            if last.get(id) == Some(&i) {
                append(&mut b, &format!("{id}.ovf"), text.as_bytes())?;
            }
        }
        b.finish()?;
    }
    Ok(out)
}

fn append(b: &mut tar::Builder<&mut Vec<u8>>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(now_secs());
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_ovf_archive::sha256_hex;

    /// The mirror's archive passes the upload path's own check.
    #[test]
    fn mirror_tar_is_an_archive_the_upload_accepts() {
        let id = Uuid::from_u128(7);
        let ovf = r#"<?xml version="1.0" encoding="UTF-8"?><ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/"><Content ovf:id="out"><Name>vm</Name></Content></ovf:Envelope>"#;
        let c = EntityCopy::new(id, "vm".into(), EntityKind::Vm, ovf.into());
        let p = Provenance {
            source: Source {
                sd: Uuid::from_u128(1),
                img: Uuid::from_u128(2),
                vol: Uuid::from_u128(3),
            },
            generation: 4,
            time: 5,
            sha256: sha256_hex(ovf.as_bytes()),
        };
        let tar = mirror_tar(SdUuid(depot_api::types::Uuid::from_u128(9)), &[(c, p)]).unwrap();
        let summary = depot_storage::ovf::check_store(&tar[..], tar.len() as u64).unwrap();
        assert_eq!(summary.entries.len(), 2);
    }
}
