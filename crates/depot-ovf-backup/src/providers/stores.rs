//! The "stores" provider: the domains' own OVF_STOREs, read only.

use std::sync::Arc;

use depot_api::storage::SdUuid;
use depot_ovf_archive::{HeldCopy, Provider, ProviderError, Source, UploadRecord};
use depot_storage::ovf::StoreState;
use depot_storage::Storage;
use uuid::Uuid;

use super::unavailable;
use crate::{entity_copies, u};

/// The domains' own OVF_STOREs, read only: what the engine wrote (the
/// upload itself is the record). Every valid store of every domain on
/// connected storage, but the mirror.
pub struct StoresProvider {
    storage: Arc<Storage>,
    exclude: Option<SdUuid>,
}

impl StoresProvider {
    /// Every domain's stores but `exclude`'s (the mirror's).
    pub fn new(storage: Arc<Storage>, exclude: Option<SdUuid>) -> StoresProvider {
        StoresProvider { storage, exclude }
    }

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
