//! `OvfBackup.attach` (docs/storage.md, "OVF backup providers"): another
//! archive, written from now on (`resume`) or kept read only beside the
//! configured one (`fresh`); the choice is kept in
//! `<state_dir>/ovf-backup/attached.json` (docs/formats.md, "OVF archive
//! attachment") and applies again after a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use depot_ovf_archive::archive::{Archive, ArchiveProvider, Mode};
use depot_ovf_archive::Source;
use serde::{Deserialize, Serialize};

use crate::{BackupError, OvfBackup};

pub(crate) const ATTACHED_FILE: &str = "attached.json";
const ATTACHED_FORMAT: &str = "depot-ovf-backup-attached";
const ATTACHED_VERSION: u32 = 1;

/// How an archive is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// It becomes the archive written.
    Resume,
    /// It is read beside the archive written, never written.
    Fresh,
}

impl AttachMode {
    /// The mode's name on the wire and in `attached.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Resume => "resume",
            AttachMode::Fresh => "fresh",
        }
    }

    pub fn parse(s: &str) -> Option<AttachMode> {
        match s {
            "resume" => Some(AttachMode::Resume),
            "fresh" => Some(AttachMode::Fresh),
            _ => None,
        }
    }
}

/// What an attach did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub path: PathBuf,
    pub mode: AttachMode,
    /// The archive written from now on.
    pub recording: PathBuf,
    /// The attached archive's newest generation of each source store.
    pub latest: Vec<(Source, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Attached {
    pub(crate) path: PathBuf,
    pub(crate) mode: AttachMode,
}

#[derive(Serialize, Deserialize)]
struct AttachedFile {
    format: String,
    version: u32,
    path: PathBuf,
    mode: AttachMode,
}

impl OvfBackup {
    /// `OvfBackup.attach`: checks the path and reads the archive before
    /// anything changes, then keeps the choice and applies it.
    pub fn attach(&self, path: PathBuf, mode: AttachMode) -> Result<Attachment, BackupError> {
        let bad = BackupError::Invalid;
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
        .map_err(|e| BackupError::Failed(e.to_string()))?;
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
        Ok(Attachment {
            path,
            mode,
            recording: archive.path(),
            latest,
        })
    }
}

/// The attach choice kept, if any; one that cannot be read (or a newer
/// depot's) is logged and ignored, never removed.
pub(crate) fn read_attached(file: &Path) -> Option<Attached> {
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
fn write_attached(file: &Path, a: &Attached) -> std::io::Result<()> {
    use std::io::Write;
    let dir = file.parent().unwrap_or(Path::new("."));
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
