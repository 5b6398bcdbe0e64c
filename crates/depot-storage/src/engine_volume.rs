//! The volume and image verbs of the engine: locks, the mount's I/O
//! worker, and the run links of prepared images.
//!
//! Lock rules: every volume verb takes the domain lock shared and the image
//! lock (exclusive for changes, shared for reads), so two verbs never
//! rewrite one image's metadata at once, while verbs on other images run in
//! parallel.

use std::os::unix::fs::symlink;

use depot_api::storage::{ImgUuid, Legality, SdUuid, SpUuid, VolUuid};
use depot_api::Code;

use crate::backup::PreparePurpose;
use crate::engine::Storage;
use crate::layout::{self, DomainPaths};
use crate::metadata::volume::VolumeMetadata;
use crate::volume::{CreateVolume, FileVolumes, VolumeInfo};
use crate::volume_store::VolumeStore;
use crate::{StorageError, StorageResult};

/// What `Image.prepare` returns: the path of the leaf under the pool's run
/// link, and the chain base to leaf.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub path: std::path::PathBuf,
    pub chain: Vec<VolumeInfo>,
}

impl Storage {
    /// Runs `f` with the domain's volumes: a file domain's on the mount's
    /// worker, a block domain's on the caller's thread (its LVM, qemu-img
    /// and O_DIRECT metadata calls have their own timeouts).
    pub(crate) fn with_volumes<T: Send + 'static>(
        &self,
        paths: &DomainPaths,
        sd: SdUuid,
        op: &'static str,
        f: impl FnOnce(&dyn VolumeStore) -> StorageResult<T> + Send + 'static,
    ) -> StorageResult<T> {
        if paths.block {
            return self.block_volumes_of(paths, sd, |v| f(v));
        }
        let (p, qemu, timeout) = (
            paths.clone(),
            self.qemu.clone(),
            self.config().qemu_img_timeout,
        );
        self.io(&paths.root, op, move || {
            f(&FileVolumes::new(&p, sd, &qemu, timeout))
        })
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
        let paths = self.locate(sd)?;
        // Only memory and hosted-engine volumes depend on the backup flag,
        // so only they pay for reading the domain's metadata (on a block
        // domain, one `vgs` per create). Before the image lock: the domain
        // lock is not re-entrant.
        if crate::backup::kind_is_restricted(req.disk_type) {
            let domain = self.domain_info(sd)?.metadata;
            crate::backup::check_volume_kind(&domain, req.disk_type, "create volume")?;
        }
        let _locks = self.lock_image(sd, img, true)?;
        let md = self.with_volumes(&paths, sd, "create volume", move |v| {
            v.create(img, vol, &req)
        })?;
        Ok(md)
    }

    pub fn volume_info(&self, sd: SdUuid, img: ImgUuid, vol: VolUuid) -> StorageResult<VolumeInfo> {
        let paths = self.locate(sd)?;
        let _locks = self.lock_image(sd, img, false)?;
        self.with_volumes(&paths, sd, "volume info", move |v| v.info(img, vol))
    }

    pub fn volume_size(&self, sd: SdUuid, img: ImgUuid, vol: VolUuid) -> StorageResult<(u64, u64)> {
        let paths = self.locate(sd)?;
        let _locks = self.lock_image(sd, img, false)?;
        self.with_volumes(&paths, sd, "volume size", move |v| v.size(img, vol))
    }

    /// The volumes of an image, or of the whole domain when `img` is None.
    pub fn list_volumes(&self, sd: SdUuid, img: Option<ImgUuid>) -> StorageResult<Vec<VolUuid>> {
        let paths = self.locate(sd)?;
        self.with_volumes(&paths, sd, "list volumes", move |v| v.list(img))
    }

    pub fn list_images(&self, sd: SdUuid) -> StorageResult<Vec<ImgUuid>> {
        let paths = self.locate(sd)?;
        self.with_volumes(&paths, sd, "list images", move |v| v.images())
    }

    pub fn set_volume_description(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        desc: String,
    ) -> StorageResult<()> {
        let paths = self.locate(sd)?;
        let _locks = self.lock_image(sd, img, true)?;
        self.with_volumes(&paths, sd, "set volume description", move |v| {
            v.set_description(img, vol, &desc)
        })
        .map(|_| ())
    }

    pub fn set_volume_legality(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        legality: Legality,
    ) -> StorageResult<()> {
        let paths = self.locate(sd)?;
        let _locks = self.lock_image(sd, img, true)?;
        self.with_volumes(&paths, sd, "set volume legality", move |v| {
            v.set_legality(img, vol, legality)
        })
        .map(|_| ())
    }

    pub fn extend_volume(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        capacity: u64,
    ) -> StorageResult<()> {
        let paths = self.locate(sd)?;
        let _locks = self.lock_image(sd, img, true)?;
        self.with_volumes(&paths, sd, "extend volume", move |v| {
            v.extend(img, vol, capacity)
        })
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
        self.refuse_if_prepared(sd, img, force, "delete volume")?;
        let paths = self.locate(sd)?;
        let _locks = self.lock_image(sd, img, true)?;
        self.with_volumes(&paths, sd, "delete volume", move |v| {
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
        self.refuse_if_prepared(sd, img, force, "delete image")?;
        let paths = self.locate(sd)?;
        let _locks = self.lock_image(sd, img, true)?;
        self.with_volumes(&paths, sd, "delete image", move |v| {
            v.delete_image(img, post_zero)
        })?;
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
        let paths = self.locate(sd)?;
        // Before the image lock: the domain lock is not re-entrant.
        let md = self.domain_info(sd)?.metadata;
        crate::backup::check_prepare(&md, purpose, OP)?;
        let _locks = self.lock_image(sd, img, false)?;
        let chain = self.with_volumes(&paths, sd, OP, move |v| v.chain(img, vol, allow_illegal))?;
        let link = layout::pool_link(self.repository(), sp, sd);
        ensure_link(&link, &paths.root)
            .map_err(|e| StorageError::io(Code::ImagePathError, OP, &link, &e))?;
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
        // A file domain that is gone has nothing to tear down.
        if let Ok(paths) = self.locate(sd) {
            if paths.block {
                let _locks = self.lock_image(sd, img, true)?;
                self.block_volumes_of(&paths, sd, |v| v.teardown(img))?;
            }
        }
        self.forget_prepared(sd, img);
        Ok(())
    }

    pub fn file_stats(
        &self,
        sd: SdUuid,
        pattern: &str,
        case_sensitive: bool,
    ) -> StorageResult<Vec<crate::files::FileStat>> {
        let paths = self.locate(sd)?;
        let (p, pat) = (paths.clone(), pattern.to_string());
        self.io(&paths.root, "list domain files", move || {
            crate::files::list(&p, &pat, case_sensitive)
        })
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
