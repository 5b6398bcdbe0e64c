//! `OvfBackup.restore`: the trusted (or the named provider's) copy of
//! each entity, written back into an OVF_STORE through the upload path.

use depot_api::storage::{ImgUuid, SdUuid, VolUuid};
use depot_ovf_archive::{trust, HeldCopy};
use depot_storage::Storage;
use uuid::Uuid;

use crate::store_tar::{build_tar, upload};
use crate::{u, BackupError, OvfBackup};

/// What a restore wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub sd: SdUuid,
    pub img: ImgUuid,
    pub vol: VolUuid,
    /// The store's generation after the write.
    pub generation: u64,
    /// The copy restored of each entity.
    pub restored: Vec<HeldCopy>,
    pub skipped: Vec<Skipped>,
}

/// An entity not restored, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub id: Uuid,
    pub reason: String,
}

impl OvfBackup {
    /// `OvfBackup.restore`: checks everything, then writes one archive
    /// through the upload path. Nothing is written when a parameter is
    /// wrong or nothing can be restored. Without `img` and `vol`, the
    /// domain's first OVF_STORE; without `ids`, every entity listed.
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
    ) -> Result<Restored, BackupError> {
        let bad = BackupError::Invalid;
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
                let mut stores = storage.ovf_stores(sd)?;
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
            None => self.list().entities.iter().map(|e| e.named().id).collect(),
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
                        None => skipped.push(Skipped {
                            id,
                            reason: "the copy's text could not be read".into(),
                        }),
                    }
                }
                Err(reason) => skipped.push(Skipped { id, reason }),
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
        let tar = build_tar(sd, None, &entries)
            .map_err(|e| BackupError::Failed(format!("building the archive: {e}")))?;
        let done = upload(storage, sd, img, vol, &tar)?;
        Ok(Restored {
            sd,
            img,
            vol,
            generation: done.generation,
            restored: chosen.into_iter().map(|(c, _)| c).collect(),
            skipped,
        })
    }
}
