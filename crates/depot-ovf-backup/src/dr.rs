//! Step 5 of `DR.failover` and `DR.failback` (docs/dr.md "Failover
//! steps"): every VM and template of the recovered domains, from their
//! OVF_STOREs and from the backup providers, with the copy of each OVF
//! used and why.
//!
//! Here and not in depot-storage, which reads the stores and looks at
//! the disks, because the providers are this crate's (it depends on the
//! storage, not the reverse). The daemon calls [`find_vms`] and writes
//! what it answers into the journal.
//!
//! Per entity of a recovered domain (its id and the domain of the store
//! its copies came from), the providers' copies are weighed by the rule
//! of `OvfBackup.list` ([`crate::report`], depot-ovf-archive's `trust`):
//! the copy it trusts is used, the OVF_STORE's copy compared with it;
//! where it trusts none (or no provider holds one, or none is
//! configured), the domain's OVF_STORE is used as before; an entity only
//! a provider holds, with no trusted copy, is listed from its newest
//! copy, saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use depot_api::storage::SdUuid;
use depot_dr::journal::{CopyRecord, EntityRecord, STORE_COPY};
use depot_ovf_archive::{sha256_hex, HeldCopy, Provider};
use depot_storage::engine::DrStoreRead;
use depot_storage::ovf::OvfEntity;
use depot_storage::Storage;
use uuid::Uuid;

use crate::report::EntityReport;
use crate::{u, OvfBackup};

/// The entity as one domain's OVF_STORE holds it.
struct InStore<'a> {
    read: &'a DrStoreRead,
    ent: &'a OvfEntity,
    sha256: String,
}

/// The copy chosen for one entity, before its disks are looked at.
struct Chosen {
    sd: SdUuid,
    ent: OvfEntity,
    ovf_copy: String,
    copy: CopyRecord,
}

/// Step 5: the recovered `domains`' VMs and templates (the stores'
/// entities in the order read, then those only a provider holds), and
/// notes (a domain without a store that verifies, a provider that could
/// not be read, a copy that could not be used).
pub fn find_vms(
    storage: &Storage,
    backup: &OvfBackup,
    domains: &[String],
) -> (Vec<EntityRecord>, Vec<String>) {
    let (reads, mut notes) = storage.dr_store_reads(domains);
    let recovered: BTreeSet<Uuid> = domains
        .iter()
        .filter_map(|d| d.parse::<SdUuid>().ok())
        .map(|sd| u(sd.0))
        .collect();
    let providers: Vec<Arc<dyn Provider>> = backup
        .providers()
        .into_iter()
        .filter(|p| p.name() != "noop")
        .collect();
    // Every copy the providers hold of a recovered domain's entities, by
    // (source domain, entity).
    let mut held: BTreeMap<(Uuid, Uuid), Vec<HeldCopy>> = BTreeMap::new();
    for p in &providers {
        match p.list() {
            Ok(copies) => {
                for c in copies
                    .into_iter()
                    .filter(|c| recovered.contains(&c.source.sd))
                {
                    held.entry((c.source.sd, c.id)).or_default().push(c);
                }
            }
            Err(e) => notes.push(format!("backup provider {}: not read: {e}", p.name())),
        }
    }
    let mut chosen = Vec::new();
    for read in &reads {
        for (ent, text) in &read.entities {
            let copies = held.remove(&(u(read.sd.0), u(ent.id))).unwrap_or_default();
            let store = InStore {
                read,
                ent,
                sha256: sha256_hex(text.as_bytes()),
            };
            chosen.push(choose(&providers, Some(store), copies, &mut notes));
        }
    }
    for (_, copies) in held {
        chosen.push(choose(&providers, None, copies, &mut notes));
    }
    let out = chosen
        .into_iter()
        .flatten()
        .map(|c| storage.dr_entity(c.sd, &c.ent, c.ovf_copy, Some(c.copy)))
        .collect();
    (out, notes)
}

/// The copy of one entity to use: `store`, its OVF_STORE's (None: only
/// providers hold it), and `copies`, the providers' (of the same source
/// domain). None (with a note) when nothing usable is left.
fn choose(
    providers: &[Arc<dyn Provider>],
    store: Option<InStore<'_>>,
    mut copies: Vec<HeldCopy>,
    notes: &mut Vec<String>,
) -> Option<Chosen> {
    if copies.is_empty() {
        let store = store?;
        let reason = if providers.is_empty() {
            "the domain's OVF_STORE: no backup provider is configured"
        } else {
            "the domain's OVF_STORE: no backup provider holds a copy of it from this domain"
        };
        return Some(from_store(&store, reason.into()));
    }
    // Newest first, as `OvfBackup.show` orders them.
    copies.sort_by_key(|c| std::cmp::Reverse((c.generation, c.time)));
    let report = EntityReport::new(copies, false);
    let (copy, trusted, reason) = match (report.trusted(), &store) {
        (Some(t), _) => (t, true, report.verdict.reason().to_string()),
        (None, Some(store)) => {
            let why = format!(
                "the domain's OVF_STORE: the providers trust no copy ({})",
                report.verdict.reason()
            );
            return Some(from_store(store, why));
        }
        (None, None) => {
            let Some(newest) = report.copies.iter().find(|c| c.unusable.is_none()) else {
                notes.push(format!(
                    "{} ({}): only in the backup providers, and no copy is usable ({})",
                    report.named().name,
                    report.named().id,
                    report.verdict.reason()
                ));
                return None;
            };
            let why = format!(
                "the providers trust no copy ({}): the newest copy, not trusted",
                report.verdict.reason()
            );
            (newest, false, why)
        }
    };
    match provider_copy(providers, copy, store.as_ref()) {
        Ok(ent) => Some(from_provider(copy, ent, trusted, reason, store.as_ref())),
        Err(why) => {
            let line = format!(
                "{} ({}): the copy of {} (generation {}) could not be used: {why}",
                copy.name,
                copy.id,
                copy.provider,
                gen_text(copy.generation)
            );
            notes.push(line.clone());
            store.map(|s| from_store(&s, format!("the domain's OVF_STORE: {line}")))
        }
    }
}

/// The OVF_STORE's copy used, for `reason`.
fn from_store(store: &InStore<'_>, reason: String) -> Chosen {
    Chosen {
        sd: store.read.sd,
        ent: store.ent.clone(),
        ovf_copy: store.read.copy.clone(),
        copy: CopyRecord {
            provider: STORE_COPY.into(),
            generation: store.read.generation,
            sha256: store.sha256.clone(),
            trusted: false,
            reason,
            in_store: true,
            store_differs: None,
        },
    }
}

/// A provider's `copy` used (`ent`, its text parsed), compared with the
/// OVF_STORE's where the store holds the entity.
fn from_provider(
    copy: &HeldCopy,
    ent: OvfEntity,
    trusted: bool,
    reason: String,
    store: Option<&InStore<'_>>,
) -> Chosen {
    let store_differs = store.filter(|s| s.sha256 != copy.sha256).map(|s| {
        format!(
            "the OVF_STORE {}/{} holds generation {} of it (sha256 {}), not this copy",
            s.read.img,
            s.read.vol,
            gen_text(s.read.generation),
            s.sha256
        )
    });
    Chosen {
        sd: store.map_or_else(|| sd_of(copy), |s| s.read.sd),
        ent,
        ovf_copy: format!(
            "{}: generation {} of OVF_STORE {}/{} of {}",
            copy.provider,
            gen_text(copy.generation),
            copy.source.img,
            copy.source.vol,
            copy.source.sd
        ),
        copy: CopyRecord {
            provider: copy.provider.clone(),
            generation: copy.generation,
            sha256: copy.sha256.clone(),
            trusted,
            reason,
            in_store: store.is_some(),
            store_differs,
        },
    }
}

/// A provider's copy as an entity: its text (the store's when the
/// store's is the same text, else fetched from the provider) parsed.
fn provider_copy(
    providers: &[Arc<dyn Provider>],
    copy: &HeldCopy,
    store: Option<&InStore<'_>>,
) -> Result<OvfEntity, String> {
    if let Some(s) = store.filter(|s| s.sha256 == copy.sha256) {
        return Ok(s.ent.clone());
    }
    let p = providers
        .iter()
        .find(|p| p.name() == copy.provider)
        .ok_or("its provider is gone")?;
    let text = p
        .copies(copy.id)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|c| {
            c.source == copy.source && c.generation == copy.generation && c.sha256 == copy.sha256
        })
        .and_then(|c| c.ovf)
        .ok_or("the provider no longer holds it")?;
    let id = depot_api::types::Uuid::from_u128(copy.id.as_u128());
    depot_storage::ovf::parse_ovf(id, text.as_bytes()).map_err(|e| e.to_string())
}

/// The domain a provider's copy was taken from (one of the recovered
/// domains: the copies were filtered by it).
fn sd_of(c: &HeldCopy) -> SdUuid {
    SdUuid(depot_api::types::Uuid::from_u128(c.source.sd.as_u128()))
}

fn gen_text(g: Option<u64>) -> String {
    g.map_or_else(|| "unknown".into(), |g| g.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_api::storage::{EntityKind, ImgUuid, VolUuid};
    use depot_ovf_archive::{ProviderError, Source, UploadRecord};

    const SD: &str = "75f8a1bb-4504-4314-91ca-d9365a30692b";
    const IMG: &str = "29e57586-9eed-4782-bdda-6ae1b9dbd0d4";
    const VOL: &str = "f9d62767-1864-4a7b-95aa-32960f75e004";
    const VM: &str = "3c1e5b7a-8f0d-4e6b-a1c2-9d8e7f6a5b40";

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().unwrap()
    }

    /// A VM's OVF naming one disk, `<img>/<vol>`.
    fn ovf(disk: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><Section xsi:type="ovf:DiskSection_Type"><Disk ovf:diskId="d" ovf:fileRef="{disk}"/></Section><Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>web</Name></Content></ovf:Envelope>"#
        )
    }

    fn disk(n: u8) -> String {
        format!("{IMG}/0000000{n}-1864-4a7b-95aa-32960f75e004")
    }

    /// The store's read: generation `g`, the VM with `text`.
    fn read(g: u64, text: &str) -> DrStoreRead {
        let ent = depot_storage::ovf::parse_ovf(id(VM), text.as_bytes()).unwrap();
        DrStoreRead {
            sd: id(SD),
            img: id::<ImgUuid>(IMG),
            vol: id::<VolUuid>(VOL),
            copy: format!("OVF_STORE {IMG}/{VOL} of {SD} (valid, generation {g})"),
            generation: Some(g),
            entities: vec![(ent, text.to_string())],
        }
    }

    fn in_store<'a>(r: &'a DrStoreRead) -> InStore<'a> {
        InStore {
            read: r,
            ent: &r.entities[0].0,
            sha256: sha256_hex(r.entities[0].1.as_bytes()),
        }
    }

    fn held(provider: &str, g: u64, text: &str) -> HeldCopy {
        HeldCopy {
            provider: provider.into(),
            id: id(VM),
            name: "web".into(),
            kind: EntityKind::Vm,
            generation: Some(g),
            sha256: sha256_hex(text.as_bytes()),
            source: Source {
                sd: id(SD),
                img: id(IMG),
                vol: id(VOL),
            },
            time: g,
            ovf: Some(text.into()),
            unusable: None,
        }
    }

    /// A provider holding `copies` (texts served unless `lost`).
    struct Fake {
        name: &'static str,
        copies: Vec<HeldCopy>,
        lost: bool,
    }

    impl Provider for Fake {
        fn name(&self) -> &str {
            self.name
        }
        fn record(&self, _: &UploadRecord) -> Result<(), ProviderError> {
            Ok(())
        }
        fn list(&self) -> Result<Vec<HeldCopy>, ProviderError> {
            Ok(self.copies.clone())
        }
        fn copies(&self, _: Uuid) -> Result<Vec<HeldCopy>, ProviderError> {
            Ok(if self.lost {
                Vec::new()
            } else {
                self.copies.clone()
            })
        }
    }

    fn archive(copies: Vec<HeldCopy>, lost: bool) -> Vec<Arc<dyn Provider>> {
        vec![Arc::new(Fake {
            name: "archive",
            copies,
            lost,
        })]
    }

    /// The copies a provider lists: without texts.
    fn listed(copies: &[HeldCopy]) -> Vec<HeldCopy> {
        copies
            .iter()
            .cloned()
            .map(|mut c| {
                c.ovf = None;
                c
            })
            .collect()
    }

    #[test]
    fn without_a_provider_copy_the_store_is_used_and_says_why() {
        let r = read(1, &ovf(&disk(1)));
        let mut notes = Vec::new();
        let c = choose(&[], Some(in_store(&r)), Vec::new(), &mut notes).unwrap();
        assert_eq!(c.copy.provider, STORE_COPY);
        assert_eq!(c.copy.generation, Some(1));
        assert!(!c.copy.trusted && c.copy.in_store && c.copy.store_differs.is_none());
        assert!(c.copy.reason.ends_with("no backup provider is configured"));
        assert_eq!(c.ovf_copy, r.copy);
        let c = choose(
            &archive(Vec::new(), false),
            Some(in_store(&r)),
            Vec::new(),
            &mut notes,
        )
        .unwrap();
        assert!(c
            .copy
            .reason
            .ends_with("no backup provider holds a copy of it from this domain"));
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn a_trusted_newer_copy_is_fetched_and_the_store_named_where_it_differs() {
        let (old, new) = (ovf(&disk(1)), ovf(&disk(2)));
        let r = read(1, &old);
        let copies = vec![held("archive", 2, &new)];
        let mut notes = Vec::new();
        let c = choose(
            &archive(copies.clone(), false),
            Some(in_store(&r)),
            listed(&copies),
            &mut notes,
        )
        .unwrap();
        assert_eq!(c.copy.provider, "archive");
        assert_eq!(c.copy.generation, Some(2));
        assert!(c.copy.trusted && c.copy.in_store);
        assert_eq!(c.copy.sha256, sha256_hex(new.as_bytes()));
        assert_eq!(
            c.copy.reason,
            "the only usable copy (generation 2, held by archive)"
        );
        let differs = c.copy.store_differs.unwrap();
        assert!(
            differs.contains("generation 1") && differs.contains(&sha256_hex(old.as_bytes())),
            "{differs}"
        );
        // The disks are the fetched copy's, not the store's.
        assert_eq!(c.ent.images[0].1.to_string(), disk(2)[37..]);
        assert!(
            c.ovf_copy.starts_with("archive: generation 2 of OVF_STORE"),
            "{}",
            c.ovf_copy
        );
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn no_trusted_copy_the_store_or_else_the_newest_untrusted() {
        let r = read(1, &ovf(&disk(1)));
        // One provider keeping two generations: no two providers agree.
        let copies = vec![
            held("archive", 2, &ovf(&disk(2))),
            held("archive", 3, &ovf(&disk(3))),
        ];
        let p = archive(copies.clone(), false);
        let mut notes = Vec::new();
        let c = choose(&p, Some(in_store(&r)), listed(&copies), &mut notes).unwrap();
        assert_eq!(c.copy.provider, STORE_COPY);
        assert!(
            c.copy.reason.contains("the providers trust no copy"),
            "{}",
            c.copy.reason
        );
        // Only in the provider: the newest copy, not trusted, listed.
        let c = choose(&p, None, listed(&copies), &mut notes).unwrap();
        assert_eq!(
            (c.copy.provider.as_str(), c.copy.generation),
            ("archive", Some(3))
        );
        assert!(!c.copy.trusted && !c.copy.in_store);
        assert!(
            c.copy.reason.ends_with("the newest copy, not trusted"),
            "{}",
            c.copy.reason
        );
        assert_eq!(c.sd.to_string(), SD);
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn a_copy_the_provider_no_longer_serves_falls_back_to_the_store_with_a_note() {
        let r = read(1, &ovf(&disk(1)));
        let copies = vec![held("archive", 2, &ovf(&disk(2)))];
        let mut notes = Vec::new();
        let c = choose(
            &archive(copies.clone(), true),
            Some(in_store(&r)),
            listed(&copies),
            &mut notes,
        )
        .unwrap();
        assert_eq!(c.copy.provider, STORE_COPY);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("no longer holds it"), "{notes:?}");
        // Nothing else to list it from: left out, the note says why.
        assert!(choose(
            &archive(copies.clone(), true),
            None,
            listed(&copies),
            &mut notes
        )
        .is_none());
        assert_eq!(notes.len(), 2, "{notes:?}");
    }
}
