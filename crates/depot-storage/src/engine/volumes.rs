//! The volume and image verbs of the `Storage` object: locks, and the run
//! links of prepared images.
//!
//! Lock rules: every volume verb takes the domain lock shared and the image
//! lock (exclusive for changes, shared for reads), so two verbs never
//! rewrite one image's metadata at once, while verbs on other images run in
//! parallel. The verbs run on the calling thread, holding the locks: a file
//! domain's file-system calls go through its mount's helper processes, each
//! with the I/O timeout, so a mount that stops answering fails the call
//! (2001/2002 naming the mount) and no thread of depotd waits in it.
//!
//! Long work (a `postZero` wipe, preallocation, an extend) is a sequence of
//! such calls, one per chunk: it is given as long as it keeps making
//! progress, and fails only when one call stays unanswered for the I/O
//! timeout (docs/storage.md, "Long work").

use std::os::unix::fs::symlink;

use depot_api::storage::{ImgUuid, Legality, SdUuid, SpUuid, VolUuid};
use depot_api::Code;

use super::volume_leases::{LeasePlace, VolumeLease};
use super::Storage;
use crate::backup::PreparePurpose;
use crate::domain::Domain;
use crate::layout;
use crate::lock::Held;
use crate::metadata::volume::VolumeMetadata;
use crate::volume_store::VolumeStore;
use crate::volume_store::{CreateVolume, VolumeInfo};
use crate::{StorageError, StorageResult};

/// What `Image.prepare` returns: the path of the leaf under the pool's run
/// link, and the chain base to leaf.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub path: std::path::PathBuf,
    pub chain: Vec<VolumeInfo>,
}

impl Storage {
    /// Runs `f` with the domain's volumes on this thread
    /// ([`Domain::volumes`]: a file domain's calls go through its mount's
    /// helpers with their deadline, a block domain's carry their own
    /// timeouts). `_held` is the caller's locks, borrowed for the call (as
    /// [`Storage::check_data`] takes them): each call names what guards it,
    /// [`Held::none`] for the listings that take no lock.
    pub(crate) fn with_volumes<T>(
        &self,
        domain: &Domain,
        _held: &Held,
        f: impl FnOnce(&dyn VolumeStore) -> StorageResult<T>,
    ) -> StorageResult<T> {
        domain.volumes(self.volume_tools(), f)
    }

    /// Creates a volume; on a backup domain, memory volumes and hosted-
    /// engine disks are refused (9012, 9014).
    pub fn create_volume(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        req: CreateVolume,
    ) -> StorageResult<VolumeMetadata> {
        let domain = self.locate(sd)?;
        self.require_spm(&domain, "create volume")?;
        // Only memory and hosted-engine volumes depend on the backup flag,
        // so only they pay for reading the domain's metadata (on a block
        // domain, one `vgs` per create). Before the image lock: the domain
        // lock is not re-entrant.
        if crate::backup::kind_is_restricted(req.disk_type) {
            let domain = self.domain_info(sd)?.metadata;
            crate::backup::check_volume_kind(&domain, req.disk_type, "create volume")?;
        }
        let held = self.lock_image(sd, img, true)?;
        // A domain with a lockspace gets the volume's lease formatted
        // (found once per domain: volume_leases.rs).
        let leases = self.volume_leases(&domain, Code::VolumeCreationError)?;
        let md = domain.volumes_with_leases(self.volume_tools(), leases, move |v| {
            v.create(img, vol, &req)
        })?;
        drop(held);
        Ok(md)
    }

    // The four verbs below change nothing: they run on a cached domain
    // without checking it first ([`Storage::reading`]). A volume found is
    // proof that the domain is there; an empty listing is not.

    pub fn volume_info(&self, sd: SdUuid, img: ImgUuid, vol: VolUuid) -> StorageResult<VolumeInfo> {
        let verb = |domain: &Domain| {
            let held = self.lock_image(sd, img, false)?;
            self.with_volumes(domain, &held, move |v| v.info(img, vol))
        };
        self.reading(sd, verb, |_| false)
    }

    /// Volume.getInfo: the volume, and its lease where the domain has
    /// volume leases (volume_leases.rs). A file volume's lease sector is
    /// read in the same helper round trip as the volume's own files.
    pub fn volume_info_with_lease(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
    ) -> StorageResult<(VolumeInfo, Option<VolumeLease>)> {
        let verb = |domain: &Domain| match domain {
            Domain::File(d) => {
                // Its place is a path: known before the image lock.
                let lease = self.volume_lease_place(domain, img, vol);
                let held = self.lock_image(sd, img, false)?;
                let sector = lease.as_ref().map(LeasePlace::sector);
                let (info, read) = d
                    .volumes(self.volume_tools())
                    .info_and_read(img, vol, sector)?;
                drop(held);
                Ok((info, lease.map(|l| l.reported_from(read))))
            }
            Domain::Block(_) => {
                let held = self.lock_image(sd, img, false)?;
                let info = self.with_volumes(domain, &held, move |v| v.info(img, vol))?;
                drop(held);
                let lease = self.volume_lease_place(domain, img, vol);
                Ok((info, lease.map(LeasePlace::reported_by_daemon)))
            }
        };
        self.reading(sd, verb, |_| false)
    }

    pub fn volume_size(&self, sd: SdUuid, img: ImgUuid, vol: VolUuid) -> StorageResult<(u64, u64)> {
        let verb = |domain: &Domain| {
            let held = self.lock_image(sd, img, false)?;
            self.with_volumes(domain, &held, move |v| v.size(img, vol))
        };
        self.reading(sd, verb, |_| false)
    }

    /// The volumes of an image, or of the whole domain when `img` is None.
    pub fn list_volumes(&self, sd: SdUuid, img: Option<ImgUuid>) -> StorageResult<Vec<VolUuid>> {
        let verb = |domain: &Domain| self.with_volumes(domain, &Held::none(), move |v| v.list(img));
        self.reading(sd, verb, Vec::is_empty)
    }

    pub fn list_images(&self, sd: SdUuid) -> StorageResult<Vec<ImgUuid>> {
        let verb = |domain: &Domain| self.with_volumes(domain, &Held::none(), move |v| v.images());
        self.reading(sd, verb, Vec::is_empty)
    }

    pub fn set_volume_description(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        desc: String,
    ) -> StorageResult<()> {
        let domain = self.locate(sd)?;
        self.require_spm(&domain, "set volume description")?;
        let held = self.lock_image(sd, img, true)?;
        self.with_volumes(&domain, &held, move |v| v.set_description(img, vol, &desc))
            .map(|_| ())
    }

    pub fn set_volume_legality(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        legality: Legality,
    ) -> StorageResult<()> {
        let domain = self.locate(sd)?;
        self.require_spm(&domain, "set volume legality")?;
        let held = self.lock_image(sd, img, true)?;
        self.with_volumes(&domain, &held, move |v| v.set_legality(img, vol, legality))
            .map(|_| ())
    }

    pub fn extend_volume(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        capacity: u64,
    ) -> StorageResult<()> {
        let domain = self.locate(sd)?;
        self.require_spm(&domain, "extend volume")?;
        let held = self.lock_image(sd, img, true)?;
        self.with_volumes(&domain, &held, move |v| v.extend(img, vol, capacity))
            .map(|_| ())
    }

    /// Deletes a volume. A prepared image's volumes are refused (203)
    /// unless `force`.
    pub fn delete_volume(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        post_zero: bool,
        force: bool,
    ) -> StorageResult<()> {
        let domain = self.locate(sd)?;
        self.require_spm(&domain, "delete volume")?;
        self.refuse_if_prepared(sd, img, force, "delete volume")?;
        let held = self.lock_image(sd, img, true)?;
        self.with_volumes(&domain, &held, move |v| {
            v.delete(img, vol, post_zero, force)
        })?;
        tracing::info!(sd = %sd, img = %img, vol = %vol, post_zero, "volume deleted");
        Ok(())
    }

    pub fn delete_image(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        post_zero: bool,
        force: bool,
    ) -> StorageResult<()> {
        let domain = self.locate(sd)?;
        self.require_spm(&domain, "delete image")?;
        self.refuse_if_prepared(sd, img, force, "delete image")?;
        let held = self.lock_image(sd, img, true)?;
        self.with_volumes(&domain, &held, move |v| v.delete_image(img, post_zero))?;
        self.forget_prepared(sd, img);
        tracing::info!(sd = %sd, img = %img, post_zero, "image deleted");
        Ok(())
    }

    /// `Image.prepare`: checks the chain (ILLEGAL refused unless
    /// `allow_illegal`), makes the pool's run link
    /// `<repository>/<sp>/<sd>` -> the domain, and returns the leaf's path
    /// through it, as VDSM does.
    pub fn prepare_image(
        &self,
        sp: SpUuid,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        allow_illegal: bool,
        purpose: PreparePurpose,
    ) -> StorageResult<Prepared> {
        const OP: &str = "prepare image";
        let domain = self.locate(sd)?;
        // Before the image lock: the domain lock is not re-entrant.
        let md = self.domain_info(sd)?.metadata;
        crate::backup::check_prepare(&md, purpose, OP)?;
        let held = self.lock_image(sd, img, false)?;
        // The chain, and each volume's data where its domain says it is:
        // a VM is never handed a path that leads elsewhere.
        let chain = self.with_volumes(&domain, &held, |v| {
            let chain = v.chain(img, vol, allow_illegal)?;
            for c in &chain {
                domain.check_volume_data(img, c.volume, Code::ImagePathError, OP)?;
            }
            Ok(chain)
        })?;
        let link = layout::pool_link(self.repository(), sp, sd);
        ensure_link(&link, &domain.paths().root)
            .map_err(|e| StorageError::io(Code::ImagePathError, OP, &link, e))?;
        self.mark_prepared(sd, img, purpose);
        Ok(Prepared {
            path: link
                .join(layout::IMAGES)
                .join(img.to_string())
                .join(vol.to_string()),
            chain,
        })
    }

    /// `Image.teardown`: the image is no longer in use on this host.
    /// `Image.teardown`: forgets the preparation; on a block domain also
    /// deactivates the image's LVs and removes their links.
    pub fn teardown_image(&self, sd: SdUuid, img: ImgUuid) -> StorageResult<()> {
        // A domain that is gone (358) has nothing to tear down; one that
        // could not be looked at (a mount in trouble: 2001) may still have
        // active LVs, so that is the answer, and the image stays prepared.
        // The image lock is taken only where there is work to do: a file
        // domain's teardown does nothing.
        match self.locate(sd) {
            Ok(domain) if domain.is_block() => {
                let _held = self.lock_image(sd, img, true)?;
                domain.teardown(self.volume_tools(), img)?;
            }
            Ok(_) => {}
            Err(e) if e.code == Code::StorageDomainDoesNotExist => {}
            Err(e) => return Err(e),
        }
        self.forget_prepared(sd, img);
        Ok(())
    }

    pub fn file_stats(
        &self,
        sd: SdUuid,
        pattern: &str,
        case_sensitive: bool,
    ) -> StorageResult<Vec<crate::file::iso_files::FileStat>> {
        let domain = self.locate(sd)?;
        // ISO files are in file domains only.
        let Domain::File(d) = &domain else {
            return Ok(Vec::new());
        };
        crate::file::iso_files::list(&d.fs, &d.paths, pattern, case_sensitive)
    }

    fn refuse_if_prepared(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        force: bool,
        op: &'static str,
    ) -> StorageResult<()> {
        if !force && self.is_prepared(sd, img) {
            return Err(StorageError::new(
                Code::VolumeIsBusy,
                op,
                format!("image {img} is prepared; tear it down first"),
            ));
        }
        Ok(())
    }
}

/// Makes `link` point at `target`, replacing a stale link (the domain moved
/// to another mount), creating the pool directory if needed.
fn ensure_link(link: &std::path::Path, target: &std::path::Path) -> std::io::Result<()> {
    if let Ok(current) = std::fs::read_link(link) {
        if current == target {
            return Ok(());
        }
        std::fs::remove_file(link)?;
    }
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir)?;
    }
    symlink(target, link)
}

impl Storage {
    pub(crate) fn mark_prepared(&self, sd: SdUuid, img: ImgUuid, purpose: PreparePurpose) {
        let mut state = self.state();
        let slot = state.prepared.entry((sd, img)).or_insert(purpose);
        // Prepared for a VM wins: that is what the rules need to know.
        if purpose == PreparePurpose::Vm {
            *slot = PreparePurpose::Vm;
        }
    }

    pub(crate) fn forget_prepared(&self, sd: SdUuid, img: ImgUuid) {
        self.state().prepared.remove(&(sd, img));
    }

    pub fn is_prepared(&self, sd: SdUuid, img: ImgUuid) -> bool {
        self.state().prepared.contains_key(&(sd, img))
    }

    /// Whether the image is prepared for a VM on this host (a copy of it is
    /// then a live move).
    pub fn is_prepared_for_vm(&self, sd: SdUuid, img: ImgUuid) -> bool {
        self.state().prepared.get(&(sd, img)) == Some(&PreparePurpose::Vm)
    }

    /// Whether any image of `sd` is prepared on this host.
    pub fn has_prepared(&self, sd: SdUuid) -> bool {
        self.state().prepared.keys().any(|(d, _)| *d == sd)
    }
}
