//! The "mirror" provider: another domain's OVF_STORE, written through the
//! storage's upload path.

use std::collections::BTreeMap;
use std::sync::Arc;

use depot_api::storage::{ImgUuid, SdUuid, VolUuid};
use depot_ovf_archive::{EntityCopy, HeldCopy, Provider, ProviderError, Source, UploadRecord};
use depot_storage::ovf::StoreState;
use depot_storage::{Storage, StoreTexts};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::unavailable;
use crate::entity_copies;
use crate::store_tar::{build_tar, upload};

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
    /// The mirror in domain `sd`'s first OVF_STORE volume.
    pub fn new(storage: Arc<Storage>, sd: SdUuid) -> MirrorProvider {
        MirrorProvider { storage, sd }
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use depot_ovf_archive::{sha256_hex, EntityKind};

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
