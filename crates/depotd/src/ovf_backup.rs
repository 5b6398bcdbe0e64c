//! The `OvfBackup.*` verbs (docs/storage.md, "OVF backup providers"):
//! each one's parameters as a typed call of depot-ovf-backup, which holds
//! the providers, the recorder and the logic, and its answer as the
//! verb's result type; and `[ovf_backup]` as the crate's settings.

use std::path::PathBuf;
use std::time::Duration;

use depot_api::results::{
    OvfBackupAttached, OvfBackupCopy, OvfBackupEntity, OvfBackupGeneration, OvfBackupListing,
    OvfBackupProvider, OvfBackupRestored, OvfBackupRestoredEntity, OvfBackupSkipped,
};
use depot_api::storage::{ImgUuid, SdUuid, VolUuid};
use depot_api::{ApiError, Code};
use depot_ovf_archive::archive::{Limits, Mode};
use depot_ovf_archive::queue::Backoff;
use depot_ovf_backup::{
    u, AttachMode, BackupError, EntityReport, OvfBackup, ProviderKind, Settings,
};
use depot_storage::Storage;

use crate::config::{ArchiveMode, Config, OvfProviderKind};

/// The archive's file: configured, or in the state directory.
pub fn archive_path(config: &Config) -> PathBuf {
    let p = &config.ovf_backup.archive_path;
    if p.as_os_str().is_empty() {
        config.daemon.state_dir.join("ovf-archive.db")
    } else {
        p.clone()
    }
}

/// `[ovf_backup]` (validated by `Config::validate`) as the backup's
/// settings.
pub fn settings(config: &Config) -> Settings {
    let c = &config.ovf_backup;
    Settings {
        providers: c
            .providers
            .iter()
            .map(|k| match k {
                OvfProviderKind::Stores => ProviderKind::Stores,
                OvfProviderKind::Archive => ProviderKind::Archive,
                OvfProviderKind::Mirror => ProviderKind::Mirror,
            })
            .collect(),
        mirror: c.mirror_domain.parse().ok().map(SdUuid),
        archive_path: archive_path(config),
        archive_mode: match c.archive_mode {
            ArchiveMode::ReadWrite => Mode::ReadWrite,
            ArchiveMode::ReadOnly => Mode::ReadOnly,
        },
        limits: Limits {
            max_bytes: c.archive_max_mb << 20,
            keep_generations: c.archive_keep_generations,
        },
        backoff: Backoff {
            first: Duration::from_secs_f64(c.retry_first_s),
            max: Duration::from_secs_f64(c.retry_max_s),
        },
        dir: config.daemon.state_dir.join("ovf-backup"),
    }
}

/// The stable code of each failure.
fn api_error(e: BackupError) -> ApiError {
    match e {
        BackupError::Invalid(m) => ApiError::new(Code::InvalidParameterException, m),
        BackupError::NotFound(m) => ApiError::new(Code::OvfEntityNotFound, m),
        BackupError::Failed(m) => ApiError::new(Code::GeneralException, m),
        BackupError::Storage(e) => ApiError::from(e),
    }
}

/// `OvfBackup.list`.
pub fn list(b: &OvfBackup) -> OvfBackupListing {
    let l = b.list();
    OvfBackupListing {
        providers: l
            .providers
            .into_iter()
            .map(|p| OvfBackupProvider {
                name: p.name,
                records: p.records,
                error: p.error,
            })
            .collect(),
        entities: l.entities.iter().map(entity).collect(),
    }
}

/// `OvfBackup.show`.
pub fn show(b: &OvfBackup, id: depot_api::types::Uuid) -> Result<OvfBackupEntity, ApiError> {
    b.show(u(id)).map(|r| entity(&r)).map_err(api_error)
}

/// `OvfBackup.attach`: the mode is checked first, then the path.
pub fn attach(b: &OvfBackup, path: &str, mode: &str) -> Result<OvfBackupAttached, ApiError> {
    let mode = AttachMode::parse(mode).ok_or_else(|| {
        ApiError::new(
            Code::InvalidParameterException,
            format!("mode {mode:?}: resume or fresh"),
        )
    })?;
    let a = b.attach(PathBuf::from(path), mode).map_err(api_error)?;
    Ok(OvfBackupAttached {
        path: a.path.display().to_string(),
        mode: a.mode.as_str().into(),
        recording: Some(a.recording.display().to_string()),
        latest: a
            .latest
            .into_iter()
            .map(|(src, generation)| OvfBackupGeneration {
                sourceDomainID: src.sd.to_string(),
                sourceVolumeID: src.vol.to_string(),
                generation,
            })
            .collect(),
    })
}

/// `OvfBackup.restore`.
pub fn restore(
    b: &OvfBackup,
    storage: &Storage,
    sd: SdUuid,
    img: Option<ImgUuid>,
    vol: Option<VolUuid>,
    ids: Option<Vec<depot_api::types::Uuid>>,
    provider: Option<String>,
) -> Result<OvfBackupRestored, ApiError> {
    let ids = ids.map(|v| v.into_iter().map(u).collect());
    let r = b
        .restore(storage, sd, img, vol, ids, provider)
        .map_err(api_error)?;
    Ok(OvfBackupRestored {
        storagedomainID: r.sd.to_string(),
        imageID: r.img.to_string(),
        volumeID: r.vol.to_string(),
        generation: r.generation,
        restored: r
            .restored
            .into_iter()
            .map(|c| OvfBackupRestoredEntity {
                id: c.id.to_string(),
                name: c.name,
                provider: c.provider,
                generation: c.generation,
                sha256: c.sha256,
            })
            .collect(),
        skipped: r
            .skipped
            .into_iter()
            .map(|s| OvfBackupSkipped {
                id: s.id.to_string(),
                reason: s.reason,
            })
            .collect(),
    })
}

/// One entity's answer: its copies, who agrees, and the verdict.
fn entity(r: &EntityReport) -> OvfBackupEntity {
    let named = r.named();
    let trusted = r.trusted();
    OvfBackupEntity {
        id: named.id.to_string(),
        name: named.name.clone(),
        r#type: named.kind.as_str().to_string(),
        copies: r
            .copies
            .iter()
            .zip(&r.agrees_with)
            .map(|(c, agrees)| OvfBackupCopy {
                provider: c.provider.clone(),
                generation: c.generation,
                sha256: c.sha256.clone(),
                sourceDomainID: c.source.sd.to_string(),
                sourceImageID: c.source.img.to_string(),
                sourceVolumeID: c.source.vol.to_string(),
                time: c.time,
                agreesWith: agrees.clone(),
                unusable: c.unusable.clone(),
            })
            .collect(),
        trusted: trusted.map(|c| c.provider.clone()),
        trustedGeneration: trusted.and_then(|c| c.generation),
        trustedSha256: trusted.map(|c| c.sha256.clone()),
        reason: r.verdict.reason().to_string(),
        ovf: r.ovf.clone(),
    }
}
