//! OVF_STORE uploads and downloads on the `Storage` object (docs/storage.md,
//! "OVF_STORE"): one upload per volume at a time, received and checked
//! into a staging file before the volume is touched, then swapped in by a
//! rename (a file volume) or copied in with O_DIRECT (anything else), with
//! an integrity trailer; reads serve only a store that verifies.
//!
//! On a file domain every file-system call of these verbs is made in the
//! mount's helper processes (crate::mount_fs), each with its deadline, so
//! they run on the calling thread: a server that stops answering fails the
//! verb with 2001/2002 naming the mount, and no depotd thread enters it. A
//! block domain's LV is on no mount: its calls run on the calling thread.

use std::io;
use std::time::Instant;

use depot_api::storage::{DiskType, DomainType, ImgUuid, SdUuid, VolUuid, VolumeFormat};
use depot_api::Code;

use super::copy::VolRef;
use super::Storage;
use crate::domain::Domain;
use crate::events::StorageEvent;
use crate::lock::Held;
use crate::ovf::replace::{self, Plan};
use crate::ovf::store::{self, StoreState};
use crate::ovf::{OvfError, StoreFile};
use crate::volume_store::VolumeInfo;
use crate::{StorageError, StorageResult};

/// A store that may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readable {
    /// The volume's size.
    pub size: u64,
    /// The generation of a depot-written store (None: written by another
    /// agent).
    pub generation: Option<u64>,
}

/// A finished upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadDone {
    pub size: u64,
    pub generation: u64,
}

fn ovf_err(op: &'static str, e: OvfError) -> StorageError {
    let code = match &e {
        OvfError::TooLarge { .. } => Code::OvfUploadTooLarge,
        other => other.code(),
    };
    StorageError::new(code, op, e.to_string()).caused_by(e)
}

/// Removes the volume from the set of uploads in flight when dropped.
pub(crate) struct UploadSlotGuard<'a> {
    storage: &'a Storage,
    key: (SdUuid, VolUuid),
}

impl<'a> UploadSlotGuard<'a> {
    pub(crate) fn new(storage: &'a Storage, key: (SdUuid, VolUuid)) -> Self {
        UploadSlotGuard { storage, key }
    }
}

impl Drop for UploadSlotGuard<'_> {
    fn drop(&mut self) {
        self.storage.end_upload(self.key);
    }
}

impl Storage {
    /// The OVF_STORE volume `vol`: it must exist, be RAW and have DISKTYPE
    /// OVFS, so a stray PUT can never overwrite a VM's disk.
    fn ovf_volume(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        op: &'static str,
    ) -> StorageResult<VolumeInfo> {
        let info = self.volume_info(sd, img, vol)?;
        if info.metadata.disk_type != DiskType::Ovfs || info.metadata.format != VolumeFormat::Raw {
            return Err(StorageError::new(
                Code::InvalidParameterException,
                op,
                format!(
                    "volume {vol} is a {} {} volume, not a RAW OVF_STORE (DISKTYPE=OVFS)",
                    info.metadata.format, info.metadata.disk_type
                ),
            ));
        }
        Ok(info)
    }

    /// Streams an upload from `source` (0 = end of body) into the store.
    /// Answers only when the new content is durable.
    // long: about 105 lines: the phases of one upload (checks, staging, the
    // stream, the trailer, the commit) under one upload slot and one set
    // of locks; the phases themselves live in ovf/.
    pub fn ovf_upload(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        content_length: u64,
        source: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> StorageResult<UploadDone> {
        const OP: &str = "upload OVF store";
        // VDSM's downloadImageFromStream is an SPM task: so is the upload.
        self.require_spm_of(sd, OP)?;
        let info = self.ovf_volume(sd, img, vol, OP)?;
        let _slot = self.begin_upload(sd, vol, OP)?;
        let capacity = info.metadata.capacity.max(info.apparent_size);
        if content_length > store::max_tar_size(capacity) {
            return Err(StorageError::new(
                Code::OvfUploadTooLarge,
                OP,
                format!(
                    "{content_length} bytes; volume {vol} holds at most {}",
                    store::max_tar_size(capacity)
                ),
            ));
        }
        // A Content-Length that cannot be a tar is refused before anything
        // is created.
        crate::ovf::TarValidator::new(content_length).map_err(|e| ovf_err(OP, e))?;
        let v = VolRef { sd, img, vol };
        // The volume's data must be its own file (or LV) before anything is
        // created next to it or written into it (254 otherwise).
        self.check_data(v, Code::MiscFileReadException, &Held::none(), OP)?;
        let volume = self.store_file(v)?;
        let staging = volume.staging();
        // Holding the upload slot, any staging file is a crash leftover.
        store::discard_stale_staging(&staging).map_err(|e| ovf_err(OP, e))?;
        let domain_md = self.domain_info(sd)?.metadata;
        let block_size = domain_md.block_size as usize;
        // A preallocated volume file stays preallocated.
        let preallocated = info.true_size >= capacity;
        let plan = replace::prepare(&volume, capacity, block_size, preallocated)
            .map_err(|e| ovf_err(OP, e))?;
        // Receiving reads from the network on this (blocking) thread; on a
        // file domain its writes are a helper's. The volume is touched only
        // after the last byte has passed every check, holding the image
        // lock.
        let t0 = Instant::now();
        let trailer = match plan {
            Plan::Replace(r) => {
                // Dropped before the commit (a failure), it removes its
                // staging file.
                let mut r = *r;
                r.hold_old_file(domain_md.domain_type == DomainType::LocalFs);
                r.receive(content_length, source)
                    .map_err(|e| ovf_err(OP, e))?;
                let received = t0.elapsed();
                let _held = self.lock_image(sd, img, true)?;
                let c = r.commit().map_err(|e| ovf_err(OP, e))?;
                let t = &c.received.timings;
                tracing::debug!(%sd, %vol, strategy = "replace", size = content_length,
                    receive = ?t.receive, wait_source = ?t.wait_source, validate = ?t.validate,
                    check = ?t.check,
                    wait_buffer = ?t.wait_buffer, hash = ?t.hash, write = ?t.write,
                    seal = ?c.seal, rename = ?c.rename,
                    after_last_byte = ?t0.elapsed().saturating_sub(received),
                    total = ?t0.elapsed(), "OVF_STORE upload");
                c.trailer
            }
            Plan::Copy { reason } => {
                tracing::debug!(%sd, %vol, %reason, "OVF_STORE upload staged and copied");
                let staged = store::stage_upload(&staging, content_length, source)
                    .map_err(|e| ovf_err(OP, e))?;
                let received = t0.elapsed();
                let timings = staged.timings.clone();
                let _held = self.lock_image(sd, img, true)?;
                let trailer = store::commit(&volume, capacity, &staged, block_size)
                    .map_err(|e| ovf_err(OP, e))?;
                let t = &timings;
                tracing::debug!(%sd, %vol, strategy = "copy", size = content_length,
                    receive = ?t.receive, wait_source = ?t.wait_source, validate = ?t.validate,
                    check = ?t.check,
                    wait_buffer = ?t.wait_buffer, hash = ?t.hash, write = ?t.write,
                    commit = ?t0.elapsed().saturating_sub(received),
                    total = ?t0.elapsed(), "OVF_STORE upload");
                trailer
            }
        };
        self.publish(StorageEvent::OvfStoreWritten {
            sd,
            img,
            vol,
            generation: trailer.generation,
            size: trailer.size,
        });
        Ok(UploadDone {
            size: trailer.size,
            generation: trailer.generation,
        })
    }

    /// The data of `v` and where its calls run: on a file domain the
    /// mount's helpers, on a block domain (an LV, on no mount) this thread.
    fn store_file(&self, v: VolRef) -> StorageResult<StoreFile> {
        let domain = self.locate(v.sd)?;
        let data = domain.volume_data(v.img, v.vol);
        Ok(match &domain {
            Domain::File(d) => StoreFile::mount(&d.fs, depot_os::DataPath::path(&data)),
            Domain::Block(_) => StoreFile::local(data),
        })
    }

    /// Checks that bytes `start..=end` of the store may be served: the
    /// range is inside the volume, and the store is not torn (a store
    /// written by another agent, with no trailer, is served as it is).
    pub fn ovf_check_readable(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        start: u64,
        end: u64,
    ) -> StorageResult<Readable> {
        const OP: &str = "read OVF store";
        let info = self.ovf_volume(sd, img, vol, OP)?;
        let size = info.metadata.capacity.max(info.apparent_size);
        if end >= size {
            return Err(StorageError::new(
                Code::InvalidParameterException,
                OP,
                format!("range {start}-{end} is past the end of the volume ({size} bytes)"),
            ));
        }
        let v = VolRef { sd, img, vol };
        self.check_data(v, Code::MiscFileReadException, &Held::none(), OP)?;
        let volume = self.store_file(v)?;
        let state = store::verify(&volume, size).map_err(|e| ovf_err(OP, e))?;
        match state {
            StoreState::Valid { trailer } => Ok(Readable {
                size,
                generation: Some(trailer.generation),
            }),
            StoreState::Unknown => Ok(Readable {
                size,
                generation: None,
            }),
            StoreState::Torn { reason, .. } => Err(StorageError::new(
                Code::OvfStoreTorn,
                OP,
                format!("volume {vol}: {reason}"),
            )),
        }
    }

    /// Hands `len` bytes at `offset` to `sink`, read with O_DIRECT (on a
    /// file domain, by the mount's helpers). The store must still be the `generation`
    /// [`ovf_check_readable`] saw: each piece is read, and the trailer
    /// checked, under the image lock an upload's commit takes exclusively,
    /// so a commit between the check and the read never mixes two uploads.
    /// The lock is not held while `sink` waits for a slow client.
    #[allow(clippy::too_many_arguments)]
    pub fn ovf_read(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        offset: u64,
        len: u64,
        generation: Option<u64>,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> StorageResult<()> {
        const OP: &str = "read OVF store";
        let info = self.ovf_volume(sd, img, vol, OP)?;
        let size = info.metadata.capacity.max(info.apparent_size);
        let volume = self.store_file(VolRef { sd, img, vol })?;
        // Local data (an LV) is opened once; on a mount each piece is read
        // by path. Either way each piece is read, after the trailer's
        // generation is checked, under the image lock an upload's commit
        // takes exclusively: an upload that replaced the file in between
        // is a generation that is not the one checked.
        let mut r = store::DirectReader::open(&volume, offset, len).map_err(|e| ovf_err(OP, e))?;
        loop {
            let held = self.lock_image(sd, img, false)?;
            let now = match r.state(size).map_err(|e| ovf_err(OP, e))? {
                StoreState::Valid { trailer } => Some(trailer.generation),
                _ => None,
            };
            if now != generation {
                return Err(StorageError::new(
                    Code::OvfStoreTorn,
                    OP,
                    format!("volume {vol} changed while it was being read; read it again"),
                ));
            }
            let range = r.next_range().map_err(|e| ovf_err(OP, e))?;
            drop(held);
            let Some(range) = range else {
                return Ok(());
            };
            sink(&r.buffer()[range]).map_err(|e| ovf_err(OP, crate::ovf::OvfError::Sink(e)))?;
        }
    }
}

/// One OVF_STORE volume of a domain and what depot can tell of it.
#[derive(Debug, Clone)]
pub struct OvfStoreInfo {
    pub img: ImgUuid,
    pub vol: VolUuid,
    /// Valid (checksum matches), Torn, or Unknown (no depot trailer).
    pub state: StoreState,
    /// oVirt's DESCRIPTION (JSON with "Updated", "Size", ...).
    pub description: String,
    /// Bytes of tar to read: the trailer's size, or for a store written by
    /// another agent the "Size" in its description.
    pub size: Option<u64>,
}

/// The entities of a domain's best OVF_STORE.
#[derive(Debug, Clone)]
pub struct OvfListing {
    pub store: OvfStoreInfo,
    pub contents: crate::ovf::StoreContents,
    /// The images each entity references that exist on the domain.
    pub present: std::collections::HashSet<(ImgUuid, VolUuid)>,
}

/// The `"Size":N` of oVirt's OVF_STORE description, without a JSON
/// parser (the storage layer never sees JSON; this is one number).
fn description_size(desc: &str) -> Option<u64> {
    let rest = &desc[desc.find("\"Size\"")? + 6..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

impl Storage {
    /// Every OVF_STORE volume (DISKTYPE OVFS) of the domain, verified.
    pub fn ovf_stores(&self, sd: SdUuid) -> StorageResult<Vec<OvfStoreInfo>> {
        const OP: &str = "list OVF stores";
        let mut out = Vec::new();
        for img in self.list_images(sd)? {
            for vol in self.list_volumes(sd, Some(img))? {
                let info = match self.volume_info(sd, img, vol) {
                    Ok(info) => info,
                    // A mount that does not answer is that, for the whole
                    // listing (never "no store there").
                    Err(e) if e.has_mount_trouble_code() => return Err(e),
                    Err(_) => continue,
                };
                if info.metadata.disk_type != DiskType::Ovfs {
                    continue;
                }
                let capacity = info.metadata.capacity.max(info.apparent_size);
                let volume = self.store_file(VolRef { sd, img, vol })?;
                let checked = if info.metadata.format != VolumeFormat::Raw {
                    Err(StorageError::new(
                        Code::IncorrectFormat,
                        OP,
                        "an OVF_STORE must be RAW",
                    ))
                } else {
                    match store::verify(&volume, capacity) {
                        Err(e) if e.mount_trouble().is_some() => return Err(ovf_err(OP, e)),
                        r => r.map_err(|e| ovf_err(OP, e)),
                    }
                };
                // One unreadable store must not hide the others: it is
                // listed as torn, with the reason, and never chosen.
                let state = checked.unwrap_or_else(|e| StoreState::Torn {
                    trailer: None,
                    reason: e.to_string(),
                });
                let size = match &state {
                    StoreState::Valid { trailer } => Some(trailer.size),
                    StoreState::Unknown => description_size(&info.metadata.description),
                    StoreState::Torn { .. } => None,
                };
                out.push(OvfStoreInfo {
                    img,
                    vol,
                    state,
                    description: info.metadata.description.clone(),
                    size,
                });
            }
        }
        Ok(out)
    }

    /// The store to restore from: the newest valid one; failing that, one
    /// written by another agent (no checksum to check) with a known size.
    /// A torn store is never chosen. 9006 when there is none.
    pub fn best_ovf_store(&self, sd: SdUuid) -> StorageResult<OvfStoreInfo> {
        let stores = self.ovf_stores(sd)?;
        let valid = stores
            .iter()
            .filter_map(|s| match &s.state {
                StoreState::Valid { trailer } => Some(((trailer.updated, trailer.generation), s)),
                _ => None,
            })
            .max_by_key(|(k, _)| *k)
            .map(|(_, s)| s.clone());
        valid
            .or_else(|| {
                stores
                    .into_iter()
                    .find(|s| matches!(s.state, StoreState::Unknown) && s.size.is_some())
            })
            .ok_or_else(|| {
                StorageError::new(
                    Code::NoValidOvfStore,
                    "find the OVF store",
                    format!("domain {sd} has no OVF_STORE that verifies"),
                )
            })
    }

    /// The data of a store.
    fn store_data(&self, sd: SdUuid, store: &OvfStoreInfo) -> StorageResult<StoreFile> {
        self.store_file(VolRef {
            sd,
            img: store.img,
            vol: store.vol,
        })
    }

    /// The VMs and templates of the best store, and which of their images
    /// exist on the domain.
    pub fn ovf_entities(&self, sd: SdUuid) -> StorageResult<OvfListing> {
        const OP: &str = "list OVF entities";
        let store = self.best_ovf_store(sd)?;
        let volume = self.store_data(sd, &store)?;
        let size = store.size.unwrap_or(0);
        // Read under the image lock: on a mount the reader reads by path,
        // and an upload's commit (which takes the lock exclusively) must
        // not swap the file under the parse.
        let held = self.lock_image(sd, store.img, false)?;
        let reader = store::DirectReader::open(&volume, 0, size).map_err(|e| ovf_err(OP, e))?;
        let contents = crate::ovf::parse_store(reader, size).map_err(|e| ovf_err(OP, e))?;
        drop(held);
        let mut present = std::collections::HashSet::new();
        let images: std::collections::HashSet<ImgUuid> =
            self.list_images(sd)?.into_iter().collect();
        for ent in &contents.entities {
            for (img, vol) in &ent.images {
                if images.contains(img) && self.list_volumes(sd, Some(*img))?.contains(vol) {
                    present.insert((*img, *vol));
                }
            }
        }
        Ok(OvfListing {
            store,
            contents,
            present,
        })
    }

    /// One entity's OVF text from the best store (9007 if it has none).
    pub fn ovf_entity(&self, sd: SdUuid, id: depot_api::types::Uuid) -> StorageResult<String> {
        const OP: &str = "read OVF entity";
        let store = self.best_ovf_store(sd)?;
        let volume = self.store_data(sd, &store)?;
        let size = store.size.unwrap_or(0);
        // Under the image lock, as in ovf_entities.
        let held = self.lock_image(sd, store.img, false)?;
        let reader = store::DirectReader::open(&volume, 0, size).map_err(|e| ovf_err(OP, e))?;
        let text = crate::ovf::read_entity_ovf(reader, size, id).map_err(|e| ovf_err(OP, e))?;
        drop(held);
        text.ok_or_else(|| StorageError::new(Code::OvfEntityNotFound, OP, format!("'{id}'")))
    }
}

/// Every entity of one OVF_STORE with its OVF text, for the backup
/// providers (docs/storage.md, "OVF backup providers").
#[derive(Debug, Clone)]
pub struct StoreTexts {
    /// The store's generation (None: written by another agent).
    pub generation: Option<u64>,
    /// Each entity (the last entry of its id) and its text, in archive
    /// order. OVFs that cannot be parsed are left out.
    pub entities: Vec<(crate::ovf::OvfEntity, String)>,
    /// `info.json`, if the archive has one.
    pub info_json: Option<String>,
}

impl Storage {
    /// The entities of OVF_STORE `vol` with their texts, read under the
    /// image lock an upload's commit takes (so never a mix of two
    /// uploads). A torn store is 9008 (OvfStoreTorn); one written by
    /// another agent is read as far as its description's size says.
    pub fn ovf_store_texts(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
    ) -> StorageResult<StoreTexts> {
        const OP: &str = "read OVF store entities";
        let info = self.ovf_volume(sd, img, vol, OP)?;
        let capacity = info.metadata.capacity.max(info.apparent_size);
        let v = VolRef { sd, img, vol };
        self.check_data(v, Code::MiscFileReadException, &Held::none(), OP)?;
        let volume = self.store_file(v)?;
        let held = self.lock_image(sd, img, false)?;
        let (generation, size) =
            match store::verify(&volume, capacity).map_err(|e| ovf_err(OP, e))? {
                StoreState::Valid { trailer } => (Some(trailer.generation), trailer.size),
                StoreState::Unknown => (
                    None,
                    description_size(&info.metadata.description).unwrap_or(0),
                ),
                StoreState::Torn { reason, .. } => {
                    return Err(StorageError::new(
                        Code::OvfStoreTorn,
                        OP,
                        format!("volume {vol}: {reason}"),
                    ))
                }
            };
        let mut out = StoreTexts {
            generation,
            entities: Vec::new(),
            info_json: None,
        };
        if size == 0 {
            return Ok(out);
        }
        let mut index = std::collections::HashMap::new();
        let reader = store::DirectReader::open(&volume, 0, size).map_err(|e| ovf_err(OP, e))?;
        crate::ovf::walk_store(reader, size, &mut |name, data| {
            let id = name
                .strip_suffix(".ovf")
                .and_then(|i| i.parse::<depot_api::types::Uuid>().ok());
            match id {
                Some(id) => {
                    let (Ok(ent), Ok(text)) = (
                        crate::ovf::parse_ovf(id, data),
                        String::from_utf8(data.to_vec()),
                    ) else {
                        return Ok(());
                    };
                    match index.entry(id) {
                        std::collections::hash_map::Entry::Occupied(at) => {
                            out.entities[*at.get()] = (ent, text)
                        }
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            slot.insert(out.entities.len());
                            out.entities.push((ent, text));
                        }
                    }
                }
                None if name == "info.json" => {
                    out.info_json = String::from_utf8(data.to_vec()).ok();
                }
                None => {}
            }
            Ok(())
        })
        .map_err(|e| ovf_err(OP, e))?;
        drop(held);
        Ok(out)
    }
}

impl Storage {
    /// Claims the one upload slot of an OVF_STORE volume; a second upload
    /// is refused (203) instead of interleaving writes.
    pub(crate) fn begin_upload(
        &self,
        sd: SdUuid,
        vol: VolUuid,
        op: &'static str,
    ) -> StorageResult<UploadSlotGuard<'_>> {
        if !self.state().uploads.insert((sd, vol)) {
            return Err(StorageError::new(
                Code::VolumeIsBusy,
                op,
                format!("OVF store {vol} is being updated by another upload"),
            ));
        }
        Ok(UploadSlotGuard::new(self, (sd, vol)))
    }

    pub(crate) fn end_upload(&self, key: (SdUuid, VolUuid)) {
        self.state().uploads.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn size_from_ovirts_description() {
        let d = r#"{"Updated":true,"Size":10240,"Last Updated":"Mon Nov 23","Storage Domains":[{"uuid":"x"}],"Disk Description":"OVF_STORE"}"#;
        assert_eq!(super::description_size(d), Some(10240));
        assert_eq!(super::description_size(r#"{"Size" : 7}"#), Some(7));
        assert_eq!(super::description_size("OVF_STORE"), None);
    }
}
