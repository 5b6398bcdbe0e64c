//! The OVF backup's start-up wiring: `[ovf_backup]` as the typed
//! settings of depot-ovf-backup, which holds the providers, the recorder
//! and the verbs' logic (docs/storage.md, "OVF backup providers").

use std::path::PathBuf;
use std::time::Duration;

use depot_api::storage::SdUuid;
use depot_ovf_archive::archive::{Limits, Mode};
use depot_ovf_archive::queue::Backoff;
use depot_ovf_backup::{ProviderKind, Settings};

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
