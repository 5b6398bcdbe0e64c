//! Volumes of a file domain (NFS, LOCALFS, POSIXFS, GLUSTERFS, CIFS), laid
//! out as VDSM lays them out (`fileVolume.py`, docs/formats.md):
//!
//! ```text
//! images/<img>/<vol>          data: raw, or qcow2 with a relative backing file
//! images/<img>/<vol>.meta     the 512-byte metadata record (metadata::volume)
//! images/<img>/<vol>.lease    the volume's lease file (0660)
//! images/<img>/<vol>.creating depot only: the volume is not complete yet
//! ```
//!
//! Every function here is a plain blocking call. The caller holds the
//! image and volume locks and runs it on an I/O worker with a timeout;
//! processes are spawned only through [`QemuImg`]; paths are built only from
//! typed ids through [`DomainPaths`].
//!
//! # Crash-safe creation
//!
//! VDSM rolls a half-created volume back from its task journal. depot keeps
//! no journal: the volume carries its own state, so that whatever the moment
//! of a crash, a later [`recover`](crate::file::images::recover) knows what to do.
//! [`FileVolumes::create`] validates everything first, then:
//!
//! 1. creates `images/<img>` if it is new (and fsyncs `images`);
//! 2. creates the empty marker `<vol>.creating` with `O_EXCL`, fsyncs the
//!    image directory: from here on the volume is "half-created";
//! 3. writes `<vol>.meta` with `LEGALITY=ILLEGAL` (atomic replace, 0660);
//! 4. creates the data file with `O_EXCL` (0660): RAW sparse is truncated
//!    to the capacity, RAW preallocated is `fallocate`d over it, COW is
//!    `qemu-img create -f qcow2 -o compat=1.1` (with a parent: backing file
//!    `<parent vol>` relative to the image directory, backing format from the
//!    parent's FORMAT, as VDSM's `clone`); a COW base that is preallocated
//!    gets its data area allocated after the qcow2 metadata, as VDSM does;
//!    then the data is fsynced;
//! 5. creates `<vol>.lease`, empty, 0660;
//! 6. turns the parent's VOLTYPE from LEAF to INTERNAL;
//! 7. rewrites the metadata with `LEGALITY=LEGAL` (unless asked for an
//!    ILLEGAL volume);
//! 8. removes the marker and fsyncs the directory: the volume exists.
//!
//! A failure in steps 2 to 8 is rolled back at once; a
//! crash leaves the marker, and recovery does the same rollback: read the
//! half-created metadata (if any) for its parent, put the parent back to
//! LEAF if no other volume names it as parent, remove data, lease and
//! metadata, and remove the marker last. Every step of the rollback can be
//! repeated, so a crash during recovery is recovered the next time.
//! Volumes with a marker are not listed and read as missing (201).
//!
//! # Deletion
//!
//! [`FileVolumes::delete`] marks the volume ILLEGAL first (as VDSM), wipes
//! the data if asked, removes the data and the lease, puts the parent back
//! to LEAF when it has no other child, and removes the metadata last: a
//! crash leaves an ILLEGAL volume with its chain intact, which oVirt
//! sees and deletes again.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use depot_api::storage::{AllocType, ImgUuid, Legality, SdUuid, VolType, VolUuid, VolumeFormat};
use depot_api::Code;
use depot_os::{fsutil, DataPath, ImageFormat, Liveness, Preallocation, QemuImg};

use crate::error::{BoxError, StorageError, StorageResult};
use crate::layout::{DomainPaths, CREATING_SUFFIX, META_SUFFIX};
use crate::metadata::volume::keys;
use crate::metadata::VolumeMetadata;
use crate::volume_data::{check_image_dir, open_error, VolumeData};
use crate::volume_store::{
    check_parent, new_metadata, round_up, CreateVolume, MetadataChange, VolumeInfo, VolumeStore,
    CAPACITY_ALIGNMENT,
};

/// Mode of volume data, metadata and lease files
/// (`sc.FILE_VOLUME_PERMISSIONS`).
pub const FILE_VOLUME_MODE: u32 = 0o660;

/// Preallocation allocates this much per `fallocate`, so that long work
/// on a slow server shows progress between calls.
const PREALLOCATE_STEP: u64 = 1 << 30;

/// Size of the aligned chunks [`wipe_file`] writes.
pub const WIPE_CHUNK: usize = 8 * 1024 * 1024;

/// In a sparse file, [`wipe_file`] skips ranges of this size that read as
/// zeros.
const WIPE_PROBE_UNIT: usize = 1024 * 1024;

/// Bytes per `st_blocks` unit.
const STAT_BLOCK: u64 = 512;

/// The volume operations of one file domain.
#[derive(Debug, Clone, Copy)]
pub struct FileVolumes<'a> {
    pub paths: &'a DomainPaths,
    /// Written as DOMAIN into new volumes.
    pub sd: SdUuid,
    pub qemu: &'a QemuImg,
    /// Limit of each qemu-img run.
    pub timeout: Duration,
    /// Beaten after each step of long work (wipe, preallocation) when the
    /// caller watches it (depot_os::worker, "Long work").
    pub live: Option<&'a Liveness>,
}

impl<'a> FileVolumes<'a> {
    pub fn new(paths: &'a DomainPaths, sd: SdUuid, qemu: &'a QemuImg, timeout: Duration) -> Self {
        FileVolumes {
            paths,
            sd,
            qemu,
            timeout,
            live: None,
        }
    }

    /// Reports progress of long work to `live`.
    pub fn with_liveness(mut self, live: &'a Liveness) -> Self {
        self.live = Some(live);
        self
    }

    pub(crate) fn beat(&self) {
        if let Some(l) = self.live {
            l.beat();
        }
    }

    /// The data of `vol`, opened only as a regular file beneath the domain
    /// (crate::volume_data).
    fn data(&self, img: ImgUuid, vol: VolUuid) -> VolumeData {
        VolumeData::file(self.paths, img, vol)
    }

    /// Steps 3 to 8 of the creation (module docs).
    // long: over 100 lines on purpose: the steps in the order that makes the
    // creation crash-safe, each next to the fsync it needs; split, that
    // order would be spread over functions that only make sense together.
    fn create_steps(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        md: &mut VolumeMetadata,
        req: &CreateVolume,
        parent: Option<VolumeMetadata>,
    ) -> StorageResult<()> {
        const OP: &str = "create volume";
        let failed = |path: &Path, e: BoxError| {
            StorageError::new(
                Code::VolumeCreationError,
                OP,
                format!("{}: {e}", path.display()),
            )
            .caused_by(e)
        };
        write_meta(self.paths, img, vol, md)?;

        let data = self.paths.volume(img, vol);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(FILE_VOLUME_MODE)
            .open(&data)
            .map_err(|e| match e.kind() {
                ErrorKind::AlreadyExists => StorageError::new(
                    Code::VolumeAlreadyExists,
                    OP,
                    format!("volume {vol}: {} exists", data.display()),
                )
                .caused_by(e),
                _ => failed(&data, e.into()),
            })?;
        match (md.format, &parent) {
            (VolumeFormat::Raw, _) => {
                if md.alloc_type == AllocType::Preallocated {
                    preallocate(&file, 0, md.capacity, &|| self.beat())
                        .map_err(|e| failed(&data, e.into()))?;
                } else {
                    file.set_len(md.capacity)
                        .map_err(|e| failed(&data, e.into()))?;
                }
            }
            (VolumeFormat::Cow, parent) => {
                let backing_name = req.parent.to_string();
                let backing = parent.as_ref().map(|p| {
                    let fmt = match p.format {
                        VolumeFormat::Raw => ImageFormat::Raw,
                        VolumeFormat::Cow => ImageFormat::Qcow2,
                    };
                    (Path::new(backing_name.as_str()), fmt)
                });
                self.qemu
                    .create(
                        &data,
                        ImageFormat::Qcow2,
                        md.capacity,
                        backing,
                        Preallocation::Off,
                        self.timeout,
                    )
                    .map_err(|e| failed(&data, e.into()))?;
                if parent.is_none() && md.alloc_type == AllocType::Preallocated {
                    // As VDSM: allocate from the end of the qcow2 metadata
                    // (rounded to 4 KiB) to the capacity.
                    let check = self
                        .qemu
                        .check(&data, self.timeout)
                        .map_err(|e| failed(&data, e.into()))?;
                    let end = check.image_end_offset.unwrap_or(0);
                    let offset = round_up(end, 4096).unwrap_or(end);
                    if md.capacity > offset {
                        preallocate(&file, offset, md.capacity - offset, &|| self.beat())
                            .map_err(|e| failed(&data, e.into()))?;
                    }
                }
            }
        }
        // qemu-img may have changed the mode; VDSM forces it too.
        file.set_permissions(Permissions::from_mode(FILE_VOLUME_MODE))
            .map_err(|e| failed(&data, e.into()))?;
        file.sync_all().map_err(|e| failed(&data, e.into()))?;
        drop(file);

        let lease = self.paths.volume_lease(img, vol);
        let lf = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_VOLUME_MODE)
            .open(&lease)
            .map_err(|e| failed(&lease, e.into()))?;
        lf.set_permissions(Permissions::from_mode(FILE_VOLUME_MODE))
            .and_then(|()| lf.sync_all())
            .map_err(|e| failed(&lease, e.into()))?;
        drop(lf);

        if parent.is_some_and(|p| p.vol_type == VolType::Leaf) {
            update_meta(
                self.paths,
                img,
                req.parent,
                "create volume: update parent",
                |p| {
                    if p.vol_type == VolType::Leaf {
                        p.vol_type = VolType::Internal;
                    }
                    Ok(())
                },
            )?;
        }
        if req.legal {
            md.legality = Legality::Legal;
            write_meta(self.paths, img, vol, md)?;
        }
        let marker = self.paths.volume_creating(img, vol);
        fs::remove_file(&marker).map_err(|e| failed(&marker, e.into()))?;
        fsync_dir(&self.paths.image(img), Code::VolumeCreationError, OP)
    }
}

/// The volumes of a file domain; image listing, deletion and chains are in
/// file/images.rs.
impl VolumeStore for FileVolumes<'_> {
    /// Creates a volume (see the module docs for the sequence). Everything
    /// that can be checked is checked before anything is written:
    /// BLANK volume id or a volume that is its own parent (1000), capacity 0
    /// (229), RAW with a parent (202), a record that would not be valid
    /// (753, 756), an existing volume (212), a parent that is missing or
    /// being created (201), ILLEGAL (201; VDSM's 226 is not in depot's
    /// codes) or larger than the new volume (1000). Failures later are
    /// VolumeCreationError (205), or 208 for the metadata, and leave nothing
    /// behind. Returns the metadata written.
    // long: about 105 lines: every check before the first write, in the order
    // the codes above are documented, then steps 1 and 2 and the rollback.
    fn create(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        req: &CreateVolume,
    ) -> StorageResult<VolumeMetadata> {
        const OP: &str = "create volume";
        let err = |code, detail: String| StorageError::new(code, OP, detail);
        let mut md = new_metadata(self.sd, img, vol, req, OP)?;
        let capacity = md.capacity;
        let has_parent = !req.parent.is_blank();

        let image_dir = self.paths.image(img);
        match fs::symlink_metadata(&image_dir) {
            Ok(m) if !m.is_dir() => {
                return Err(err(
                    Code::ImagePathError,
                    format!("{} is not a directory", image_dir.display()),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io(Code::ImagePathError, OP, &image_dir, e)),
        }
        for p in [
            self.paths.volume(img, vol),
            self.paths.volume_meta(img, vol),
            self.paths.volume_creating(img, vol),
        ] {
            if exists(&p).map_err(|e| StorageError::io(Code::VolumeCreationError, OP, &p, e))? {
                return Err(err(
                    Code::VolumeAlreadyExists,
                    format!("volume {vol}: {} exists", p.display()),
                ));
            }
        }
        let parent = if has_parent {
            let p = load(self.paths, img, req.parent, OP).map_err(|e| {
                StorageError::new(e.code, OP, format!("parent of {vol}: {}", e.detail))
                    .with_cause_of(&e)
            })?;
            let data = self.paths.volume(img, req.parent);
            if !exists(&data)
                .map_err(|e| StorageError::io(Code::VolumeCreationError, OP, &data, e))?
            {
                return Err(err(
                    Code::VolumeDoesNotExist,
                    format!(
                        "parent {} of {vol}: {} is missing",
                        req.parent,
                        data.display()
                    ),
                ));
            }
            check_parent(OP, vol, req.parent, &p, capacity)?;
            Some(p)
        } else {
            None
        };

        // Validation done: from here on, write.
        let images = self.paths.images();
        let created_dir = match fs::create_dir(&image_dir) {
            Ok(()) => {
                fsync_dir(&images, Code::ImagePathError, OP)?;
                true
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
            Err(e) => return Err(StorageError::io(Code::ImagePathError, OP, &image_dir, e)),
        };
        let marker = self.paths.volume_creating(img, vol);
        let marked = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_VOLUME_MODE)
            .open(&marker)
            .map_err(|e| match e.kind() {
                ErrorKind::AlreadyExists => err(
                    Code::VolumeAlreadyExists,
                    format!("volume {vol}: {} exists", marker.display()),
                )
                .caused_by(e),
                _ => StorageError::io(Code::VolumeCreationError, OP, &marker, e),
            })
            .map(drop);
        if let Err(e) = marked {
            // Nothing of this volume was written: nothing to roll back.
            if created_dir {
                remove_dir_if_empty(&image_dir);
            }
            return Err(e);
        }
        let result = fsync_dir(&image_dir, Code::VolumeCreationError, OP)
            .and_then(|()| self.create_steps(img, vol, &mut md, req, parent));
        match result {
            Ok(()) => {
                tracing::info!(%img, %vol, format = %md.format, alloc = %md.alloc_type, capacity, parent = %md.parent, "volume created");
                Ok(md)
            }
            Err(e) => {
                tracing::warn!(%img, %vol, error = %e, "volume creation failed, rolling back");
                if let Err(rb) = discard(self.paths, img, vol) {
                    tracing::error!(%img, %vol, error = %rb, "cannot roll back the half-created volume; recovery will remove it");
                } else if created_dir {
                    remove_dir_if_empty(&image_dir);
                }
                Err(e)
            }
        }
    }

    /// The volume's metadata, sizes and children. A volume without `.meta`,
    /// without data, or still being created is VolumeDoesNotExist (201); a
    /// record that cannot be read is 207, one that cannot be parsed has the
    /// metadata error's code.
    fn info(&self, img: ImgUuid, vol: VolUuid) -> StorageResult<VolumeInfo> {
        const OP: &str = "volume info";
        let metadata = load(self.paths, img, vol, OP)?;
        let children = children(self.paths, img, vol, OP)?;
        volume_info(self.paths, img, vol, metadata, children, OP)
    }

    /// `(apparent, true)` size of the data file: `st_size` and
    /// `st_blocks * 512`.
    fn size(&self, img: ImgUuid, vol: VolUuid) -> StorageResult<(u64, u64)> {
        let m = stat_data(self.paths, img, vol, "volume size")?;
        Ok((m.len(), m.blocks() * STAT_BLOCK))
    }

    /// The volumes of `img`, or of the whole domain with `None`, sorted.
    ///
    /// From the `*.meta` files; volumes being created and `_remove_me_*`
    /// directories are skipped. For one image, as VDSM's
    /// `getImageVolumes`, a volume whose metadata names another image (a
    /// template linked into this one) is left out; a metadata record that
    /// cannot be read is listed (and logged). A missing image has no
    /// volumes. For the whole domain the records are not read, and a
    /// template linked into several images is listed once.
    fn list(&self, img: Option<ImgUuid>) -> StorageResult<Vec<VolUuid>> {
        const OP: &str = "list volumes";
        let Some(img) = img else {
            let mut all = BTreeSet::new();
            for img in self.images()? {
                all.extend(meta_volumes(self.paths, img, OP)?);
            }
            return Ok(all.into_iter().collect());
        };
        let mut out = Vec::new();
        for vol in meta_volumes(self.paths, img, OP)? {
            match read_meta(self.paths, img, vol, OP) {
                Ok(md) if md.image != img => {
                    tracing::debug!(%img, %vol, owner = %md.image, "skipping a volume of another image");
                }
                Ok(_) => out.push(vol),
                Err(e) if e.code == Code::VolumeDoesNotExist => {}
                Err(e) => {
                    tracing::warn!(%img, %vol, error = %e, "listing a volume whose metadata cannot be read");
                    out.push(vol);
                }
            }
        }
        Ok(out)
    }

    /// Rewrites the metadata atomically with what `change` makes of it.
    /// Read errors as [`info`](Self::info); the new record must be valid
    /// (753, 756); a failed write is 208. Returns the new metadata.
    fn update(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        change: MetadataChange<'_>,
    ) -> StorageResult<VolumeMetadata> {
        const OP: &str = "update volume metadata";
        refuse_creating(self.paths, img, vol, OP)?;
        update_meta(self.paths, img, vol, OP, change)
    }

    /// Grows the virtual size to `new_capacity` (rounded up to 4 KiB) and
    /// records it as CAP. A smaller size than the current one (data or
    /// CAP) is VolumeResizeValueError (232); the same size only brings CAP
    /// up to date. RAW grows the file (PREALLOCATED: allocates the new
    /// range), COW runs `qemu-img resize`, and CAP becomes the virtual size
    /// qemu-img reports. SHARED volumes and internal volumes that are not a
    /// base (VDSM's VolumeNonWritable) are refused with 206, as are
    /// failures. The data grows before CAP is written, so a retry after a
    /// crash finishes the job.
    fn extend(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        new_capacity: u64,
    ) -> StorageResult<VolumeMetadata> {
        const OP: &str = "extend volume";
        let md = load(self.paths, img, vol, OP)?;
        let err = |code, detail: String| StorageError::new(code, OP, detail);
        if md.vol_type == VolType::Shared
            || (md.vol_type == VolType::Internal && !md.parent.is_blank())
        {
            return Err(err(
                Code::VolumeExtendingError,
                format!("volume {vol} is {} and cannot be written", md.vol_type),
            ));
        }
        let new = round_up(new_capacity, CAPACITY_ALIGNMENT).ok_or_else(|| {
            err(
                Code::VolumeResizeValueError,
                format!("{new_capacity} is too large"),
            )
        })?;
        let data = self.paths.volume(img, vol);
        let failed = |e: BoxError| {
            err(
                Code::VolumeExtendingError,
                format!("{}: {e}", data.display()),
            )
            .caused_by(e)
        };
        let smaller = |current: u64| {
            err(
                Code::VolumeResizeValueError,
                format!("volume {vol}: {new} is smaller than the current size {current}"),
            )
        };
        if new < md.capacity {
            return Err(smaller(md.capacity));
        }
        let capacity = match md.format {
            VolumeFormat::Raw => {
                let file = self
                    .data(img, vol)
                    .open_with(OpenOptions::new().write(true))
                    .map_err(|e| match e.kind() {
                        ErrorKind::NotFound => err(
                            Code::VolumeDoesNotExist,
                            format!("volume {vol}: {} is missing", data.display()),
                        )
                        .caused_by(e),
                        _ => open_error(Code::VolumeExtendingError, OP, &data, e),
                    })?;
                let current = file.metadata().map_err(|e| failed(e.into()))?.len();
                if new < current {
                    return Err(smaller(current));
                }
                if new > current {
                    if md.alloc_type == AllocType::Preallocated {
                        preallocate(&file, current, new - current, &|| self.beat())
                            .map_err(|e| failed(e.into()))?;
                    } else {
                        file.set_len(new).map_err(|e| failed(e.into()))?;
                    }
                    file.sync_all().map_err(|e| failed(e.into()))?;
                }
                new
            }
            VolumeFormat::Cow => {
                stat_data(self.paths, img, vol, OP)?;
                // qemu-img opens it by path: it must be the volume's file.
                self.data(img, vol).check(Code::VolumeExtendingError, OP)?;
                let info = |q: &QemuImg| {
                    q.info(&data, Some(ImageFormat::Qcow2), self.timeout)
                        .map_err(|e| failed(e.into()))
                };
                let current = info(self.qemu)?.virtual_size;
                if new < current {
                    return Err(smaller(current));
                }
                if new == current {
                    current
                } else {
                    self.qemu
                        .resize(&data, ImageFormat::Qcow2, new, self.timeout)
                        .map_err(|e| failed(e.into()))?;
                    info(self.qemu)?.virtual_size
                }
            }
        };
        let md = update_meta(self.paths, img, vol, OP, |m| {
            m.capacity = capacity;
            Ok(())
        })?;
        tracing::info!(%img, %vol, capacity, "volume extended");
        Ok(md)
    }

    /// Deletes a volume (order in the module docs). Without `force`, a
    /// volume with children is refused (204), and so is a SHARED one (222;
    /// VDSM's 223 is not in depot's codes). `post_zero` overwrites the data
    /// with zeros first ([`wipe_file`]); a data file with other hard links
    /// (a template linked into other images) is not wiped, only unlinked.
    /// A volume with unreadable metadata, or half-created, can still be
    /// deleted. Nothing of the volume at all is 201; failures are 222.
    /// The image directory is removed when it is left empty.
    // long: about 100 lines: the deletion order of the module docs (marked
    // ILLEGAL first, wipe, data and lease, parent back to LEAF, metadata
    // last), one step each, so that a crash anywhere leaves a chain the
    // manager can delete again.
    fn delete(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        post_zero: bool,
        force: bool,
    ) -> StorageResult<()> {
        const OP: &str = "delete volume";
        let err = |code, detail: String| StorageError::new(code, OP, detail);
        // A symlinked image directory would lead every removal below out
        // of the domain.
        check_image_dir(self.paths, img, OP)?;
        let data = self.paths.volume(img, vol);
        let meta_path = self.paths.volume_meta(img, vol);
        let marker = self.paths.volume_creating(img, vol);
        let mut any = false;
        for p in [&data, &meta_path, &marker] {
            any |= exists(p).map_err(|e| StorageError::io(Code::CannotDeleteVolume, OP, p, e))?;
        }
        if !any {
            return Err(err(
                Code::VolumeDoesNotExist,
                format!("volume {vol} of image {img}"),
            ));
        }
        if exists(&marker).unwrap_or(false) {
            // Half-created: the rollback is the deletion.
            discard(self.paths, img, vol)
                .map_err(|e| err(Code::CannotDeleteVolume, e.to_string()).caused_by(e))?;
            remove_dir_if_empty(&self.paths.image(img));
            return Ok(());
        }
        // The data a wipe would write must be the volume's own file:
        // refused before anything changes.
        let wipe = if post_zero {
            match self.data(img, vol).check(Code::CannotDeleteVolume, OP) {
                Ok(()) => true,
                Err(e) if e.code == Code::ImagePathError => return Err(e),
                // Missing (a delete that was interrupted), or unreadable:
                // the removal below reports what it finds.
                Err(_) => false,
            }
        } else {
            false
        };
        let md = match read_meta(self.paths, img, vol, OP) {
            Ok(md) => Some(md),
            Err(e) if e.code == Code::VolumeDoesNotExist => None,
            Err(e) => {
                tracing::warn!(%img, %vol, error = %e, "deleting a volume whose metadata cannot be read");
                None
            }
        };
        if !force {
            if md.as_ref().is_some_and(|m| m.vol_type == VolType::Shared) {
                return Err(err(
                    Code::CannotDeleteVolume,
                    format!("volume {vol} is a shared (template) volume"),
                ));
            }
            let kids = children(self.paths, img, vol, OP)?;
            if !kids.is_empty() {
                let kids: Vec<String> = kids.iter().map(ToString::to_string).collect();
                return Err(err(
                    Code::VolumeImageHasChildren,
                    format!("volume {vol} has children: {}", kids.join(", ")),
                ));
            }
        }
        if md.as_ref().is_some_and(|m| m.legality != Legality::Illegal) {
            update_meta(self.paths, img, vol, OP, |m| {
                m.legality = Legality::Illegal;
                Ok(())
            })
            .map_err(|e| err(Code::CannotDeleteVolume, e.to_string()).caused_by(e))?;
        }
        if wipe {
            match fs::symlink_metadata(&data) {
                Ok(m) if m.is_file() && m.nlink() == 1 => {
                    let n = wipe_file(&self.data(img, vol), &|| self.beat())?;
                    tracing::info!(%img, %vol, bytes = n, "volume data wiped");
                }
                Ok(m) if m.is_file() => {
                    tracing::info!(%img, %vol, links = m.nlink(), "not wiping a data file linked into other images");
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io(Code::CannotDeleteVolume, OP, &data, e)),
            }
        }
        remove_if_exists(&data, OP)?;
        remove_if_exists(&self.paths.volume_lease(img, vol), OP)?;
        if let Some(parent) = md.as_ref().map(|m| m.parent).filter(|p| !p.is_blank()) {
            recheck_leaf(self.paths, img, parent, vol)
                .map_err(|e| err(Code::CannotDeleteVolume, e.to_string()).caused_by(e))?;
        }
        remove_if_exists(&meta_path, OP)?;
        let image_dir = self.paths.image(img);
        fsync_dir(&image_dir, Code::CannotDeleteVolume, OP)?;
        remove_dir_if_empty(&image_dir);
        tracing::info!(%img, %vol, post_zero, force, "volume deleted");
        Ok(())
    }

    fn images(&self) -> StorageResult<Vec<ImgUuid>> {
        self.list_images()
    }

    fn delete_image(&self, img: ImgUuid, post_zero: bool) -> StorageResult<()> {
        self.remove_image(img, post_zero)
    }

    fn chain(
        &self,
        img: ImgUuid,
        leaf: VolUuid,
        allow_illegal: bool,
    ) -> StorageResult<Vec<VolumeInfo>> {
        self.chain_of(img, leaf, allow_illegal)
    }
}

// ---------------------------------------------------------------------------
// Helpers shared with crate::file::images. They take the domain's paths only: no
// qemu-img is needed to read, rewrite or remove volumes.

/// Whether `path` exists (without following a final symlink).
pub(crate) fn exists(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

pub(crate) fn fsync_dir(dir: &Path, code: Code, op: &'static str) -> StorageResult<()> {
    fsutil::fsync_dir(dir).map_err(|e| StorageError::new(code, op, e.to_string()).caused_by(e))
}

/// Removes a file, `Ok` if it is already gone.
pub(crate) fn remove_if_exists(path: &Path, op: &'static str) -> StorageResult<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(Code::CannotDeleteVolume, op, path, e)),
    }
}

/// Removes an image directory if nothing is left in it; anything else is
/// only logged (the directory staying is harmless).
pub(crate) fn remove_dir_if_empty(dir: &Path) {
    match fs::remove_dir(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                if let Err(e) = fsutil::fsync_dir(parent) {
                    tracing::warn!(error = %e, "cannot fsync the images directory");
                }
            }
        }
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::DirectoryNotEmpty) => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the image directory")
        }
    }
}

/// Reads and parses `<vol>.meta`: missing is 201, unreadable 207, invalid
/// the parse error's code.
pub(crate) fn read_meta(
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    op: &'static str,
) -> StorageResult<VolumeMetadata> {
    let path = paths.volume_meta(img, vol);
    let bytes = fs::read(&path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => StorageError::new(
            Code::VolumeDoesNotExist,
            op,
            format!("volume {vol} of image {img}: no {}", path.display()),
        )
        .caused_by(e),
        _ => StorageError::io(Code::VolumeMetadataReadError, op, &path, e),
    })?;
    VolumeMetadata::parse(&bytes).map_err(|e| {
        StorageError::new(e.code, op, format!("{}: {}", path.display(), e.detail)).with_cause_of(&e)
    })
}

/// 201 if the volume is half-created.
fn refuse_creating(
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    op: &'static str,
) -> StorageResult<()> {
    let marker = paths.volume_creating(img, vol);
    if exists(&marker)
        .map_err(|e| StorageError::io(Code::VolumeMetadataReadError, op, &marker, e))?
    {
        return Err(StorageError::new(
            Code::VolumeDoesNotExist,
            op,
            format!(
                "volume {vol} of image {img} is being created ({} exists)",
                marker.display()
            ),
        ));
    }
    Ok(())
}

/// The metadata of a complete volume: [`read_meta`] after
/// [`refuse_creating`].
pub(crate) fn load(
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    op: &'static str,
) -> StorageResult<VolumeMetadata> {
    refuse_creating(paths, img, vol, op)?;
    read_meta(paths, img, vol, op)
}

/// Writes `<vol>.meta` atomically (0660). An invalid record keeps its
/// code (753, 756); an I/O failure is 208.
pub(crate) fn write_meta(
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    md: &VolumeMetadata,
) -> StorageResult<()> {
    const OP: &str = "write volume metadata";
    let bytes = md.to_bytes()?;
    let path = paths.volume_meta(img, vol);
    depot_os::write_atomic(&path, &bytes, FILE_VOLUME_MODE).map_err(|e| {
        StorageError::new(Code::VolumeMetadataWriteError, OP, e.to_string()).caused_by(e)
    })
}

/// Read, change, write back.
pub(crate) fn update_meta(
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    op: &'static str,
    change: impl FnOnce(&mut VolumeMetadata) -> StorageResult<()>,
) -> StorageResult<VolumeMetadata> {
    let mut md = read_meta(paths, img, vol, op)?;
    change(&mut md)?;
    write_meta(paths, img, vol, &md).map_err(|e| e.in_op(op))?;
    Ok(md)
}

fn stat_data(
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    op: &'static str,
) -> StorageResult<fs::Metadata> {
    refuse_creating(paths, img, vol, op)?;
    let data = paths.volume(img, vol);
    fs::metadata(&data).map_err(|e| match e.kind() {
        ErrorKind::NotFound => StorageError::new(
            Code::VolumeDoesNotExist,
            op,
            format!("volume {vol} of image {img}: no {}", data.display()),
        )
        .caused_by(e),
        _ => StorageError::io(Code::VolumeMetadataReadError, op, &data, e),
    })
}

pub(crate) fn volume_info(
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    metadata: VolumeMetadata,
    children: Vec<VolUuid>,
    op: &'static str,
) -> StorageResult<VolumeInfo> {
    let m = stat_data(paths, img, vol, op)?;
    Ok(VolumeInfo {
        volume: vol,
        metadata,
        path: paths.volume(img, vol),
        apparent_size: m.len(),
        true_size: m.blocks() * STAT_BLOCK,
        children,
        mtime: u64::try_from(m.mtime()).unwrap_or(0),
    })
}

/// `name` as a volume id if it is one in canonical form (so that the id
/// maps back to the same file name).
pub(crate) fn canonical_vol(name: &str) -> Option<VolUuid> {
    name.parse::<VolUuid>()
        .ok()
        .filter(|v| v.to_string() == name)
}

/// Volumes with a `.meta` in the image directory and no `.creating`
/// marker, sorted. A missing directory has none.
pub(crate) fn meta_volumes(
    paths: &DomainPaths,
    img: ImgUuid,
    op: &'static str,
) -> StorageResult<Vec<VolUuid>> {
    let dir = paths.image(img);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io(Code::ImagePathError, op, &dir, e)),
    };
    let mut metas = BTreeSet::new();
    let mut creating = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(Code::ImagePathError, op, &dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(v) = name.strip_suffix(META_SUFFIX).and_then(canonical_vol) {
            metas.insert(v);
        } else if let Some(v) = name.strip_suffix(CREATING_SUFFIX).and_then(canonical_vol) {
            creating.insert(v);
        }
    }
    Ok(metas.difference(&creating).copied().collect())
}

/// The PUUID in a metadata record, read the way VDSM's `getChildren` greps
/// for it: without parsing the rest, so a child whose record is otherwise
/// damaged still counts as a child.
fn parent_in_record(bytes: &[u8]) -> Option<VolUuid> {
    let text = String::from_utf8_lossy(bytes);
    for line in text.split(['\n', '\r']) {
        if line.starts_with("EOF") {
            break;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == keys::PUUID {
                return v.trim().parse().ok();
            }
        }
    }
    None
}

/// Parent of every complete volume in the image, from its record.
pub(crate) fn parents(
    paths: &DomainPaths,
    img: ImgUuid,
    op: &'static str,
) -> StorageResult<HashMap<VolUuid, VolUuid>> {
    let mut out = HashMap::new();
    for v in meta_volumes(paths, img, op)? {
        let path = paths.volume_meta(img, v);
        match fs::read(&path) {
            Ok(bytes) => {
                if let Some(p) = parent_in_record(&bytes) {
                    out.insert(v, p);
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StorageError::io(
                    Code::VolumeMetadataReadError,
                    op,
                    &path,
                    e,
                ))
            }
        }
    }
    Ok(out)
}

/// The complete volumes of the image whose parent is `vol`, sorted.
pub(crate) fn children(
    paths: &DomainPaths,
    img: ImgUuid,
    vol: VolUuid,
    op: &'static str,
) -> StorageResult<Vec<VolUuid>> {
    let mut kids: Vec<VolUuid> = parents(paths, img, op)?
        .into_iter()
        .filter(|&(child, parent)| parent == vol && child != vol)
        .map(|(child, _)| child)
        .collect();
    kids.sort();
    Ok(kids)
}

/// VDSM's `recheckIfLeaf` for a parent losing its child `gone`: an
/// INTERNAL volume that no other volume names as parent becomes LEAF.
/// A missing parent is left alone.
pub(crate) fn recheck_leaf(
    paths: &DomainPaths,
    img: ImgUuid,
    parent: VolUuid,
    gone: VolUuid,
) -> StorageResult<()> {
    const OP: &str = "update parent volume";
    let md = match read_meta(paths, img, parent, OP) {
        Ok(md) => md,
        Err(e) if e.code == Code::VolumeDoesNotExist => return Ok(()),
        Err(e) => return Err(e),
    };
    if md.vol_type != VolType::Internal {
        return Ok(());
    }
    let others: Vec<VolUuid> = children(paths, img, parent, OP)?
        .into_iter()
        .filter(|&c| c != gone)
        .collect();
    if others.is_empty() {
        update_meta(paths, img, parent, OP, |m| {
            m.vol_type = VolType::Leaf;
            Ok(())
        })?;
        tracing::info!(%img, vol = %parent, "volume is a leaf again");
    }
    Ok(())
}

/// Removes a half-created volume: fixes its parent, removes data, lease,
/// metadata and the temporaries of an interrupted metadata write, and the
/// `.creating` marker last. Repeatable: a crash in the middle leaves the
/// marker, and the next call finishes.
pub(crate) fn discard(paths: &DomainPaths, img: ImgUuid, vol: VolUuid) -> StorageResult<()> {
    const OP: &str = "remove half-created volume";
    match read_meta(paths, img, vol, OP) {
        Ok(md) if !md.parent.is_blank() => recheck_leaf(paths, img, md.parent, vol)?,
        Ok(_) => {}
        Err(e) if e.code == Code::VolumeDoesNotExist => {}
        Err(e) => {
            // Without the record the parent is unknown; the parent change
            // comes after the record is written, so a parent can only have
            // been changed if the record was readable.
            tracing::warn!(%img, %vol, error = %e, "half-created volume has unreadable metadata");
        }
    }
    remove_if_exists(&paths.volume(img, vol), OP)?;
    remove_if_exists(&paths.volume_lease(img, vol), OP)?;
    remove_if_exists(&paths.volume_meta(img, vol), OP)?;
    let dir = paths.image(img);
    // write_atomic's temporaries: ".<vol>.meta.tmp-<random>".
    let tmp_prefix = format!(".{vol}{META_SUFFIX}.tmp-");
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&tmp_prefix))
            {
                remove_if_exists(&entry.path(), OP)?;
            }
        }
    }
    fsync_dir(&dir, Code::CannotDeleteVolume, OP)?;
    remove_if_exists(&paths.volume_creating(img, vol), OP)?;
    fsync_dir(&dir, Code::CannotDeleteVolume, OP)
}

/// Allocates `len` bytes at `offset` (growing the file), in steps of
/// [`PREALLOCATE_STEP`] with `beat` after each. Where the filesystem
/// cannot `fallocate` (NFS before 4.2) zeros are written, as VDSM's
/// `fallocate` helper does.
fn preallocate(file: &File, offset: u64, len: u64, beat: &dyn Fn()) -> io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(PREALLOCATE_STEP);
        match fsutil::fallocate(file, offset + done, n) {
            Ok(()) => {
                done += n;
                beat();
            }
            Err(e)
                if matches!(
                    e.io_error().and_then(io::Error::raw_os_error),
                    Some(95 /* EOPNOTSUPP */ | 38 /* ENOSYS */)
                ) =>
            {
                return write_zeros(file, offset + done, len - done, beat)
            }
            Err(e) => return Err(io::Error::other(e)),
        }
    }
    Ok(())
}

fn write_zeros(file: &File, offset: u64, len: u64, beat: &dyn Fn()) -> io::Result<()> {
    let zeros = vec![0u8; 1024 * 1024];
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from(len - done).map_or(zeros.len(), |r| r.min(zeros.len()));
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
        beat();
    }
    Ok(())
}

/// Overwrites a file's content with zeros, in place, and fsyncs it: a real
/// wipe, since punching holes would leave the old blocks on the disk.
///
/// The aligned bulk is written with `O_DIRECT` in [`WIPE_CHUNK`] chunks
/// (no page cache to fill, nothing left unwritten in it), a tail that is
/// not a multiple of the direct I/O alignment with a normal write. In a
/// sparse file, chunks that already read as zeros (holes) are skipped, so
/// the wipe neither allocates the holes nor runs the domain out of space.
/// The file keeps its size and allocation. Returns the bytes written.
/// `beat` is called after each chunk. The file is opened under the rule of
/// `data` (a volume's own file, never through a symlink: 254). Other
/// errors are CannotDeleteVolume (222).
pub fn wipe_file(data: &(impl DataPath + ?Sized), beat: &dyn Fn()) -> StorageResult<u64> {
    const OP: &str = "wipe volume data";
    let path = data.path();
    let fail =
        |e: BoxError| StorageError::new(Code::CannotDeleteVolume, OP, e.to_string()).caused_by(e);
    let mut direct = OpenOptions::new();
    direct.read(true).write(true).custom_flags(libc::O_DIRECT);
    let file = data
        .open_with(&direct)
        .map_err(|e| open_error(Code::CannotDeleteVolume, OP, path, e))?;
    let stat = file
        .metadata()
        .map_err(|e| StorageError::io(Code::CannotDeleteVolume, OP, path, e))?;
    let len = stat.len();
    let sparse = stat.blocks() * STAT_BLOCK < len;
    let a = depot_os::probe_alignment(&file).map_err(|e| fail(e.into()))?;
    let align = a.mem_align.max(a.offset_align).max(512);
    if !align.is_power_of_two() || align > WIPE_PROBE_UNIT {
        return Err(StorageError::new(
            Code::CannotDeleteVolume,
            OP,
            format!("{}: unusable direct I/O alignment {a:?}", path.display()),
        ));
    }
    let offset_align = a.offset_align.max(1) as u64;
    let zeros = depot_os::AlignedBuf::new(WIPE_CHUNK, align).map_err(|e| fail(e.into()))?;
    let mut probe = if sparse {
        Some(depot_os::AlignedBuf::new(WIPE_CHUNK, align).map_err(|e| fail(e.into()))?)
    } else {
        None
    };
    let bulk = len - len % offset_align;
    let mut written = 0u64;
    let mut off = 0u64;
    while off < bulk {
        let n = usize::try_from(bulk - off).map_or(WIPE_CHUNK, |r| r.min(WIPE_CHUNK));
        match probe.as_mut() {
            None => {
                depot_os::write_at_direct(&file, off, &zeros, n).map_err(|e| fail(e.into()))?;
                written += n as u64;
                beat();
            }
            Some(buf) => {
                let got = depot_os::read_at_direct(&file, off, buf).map_err(|e| fail(e.into()))?;
                let mut s = 0;
                while s < n {
                    let m = (n - s).min(WIPE_PROBE_UNIT);
                    if got < s + m || buf[s..s + m].iter().any(|&b| b != 0) {
                        depot_os::write_at_direct(&file, off + s as u64, &zeros, m)
                            .map_err(|e| fail(e.into()))?;
                        written += m as u64;
                    }
                    s += m;
                }
                beat();
            }
        }
        off += n as u64;
    }
    if bulk < len {
        let tail = data
            .open_with(OpenOptions::new().write(true))
            .map_err(|e| open_error(Code::CannotDeleteVolume, OP, path, e))?;
        let n = (len - bulk) as usize;
        tail.write_all_at(&zeros[..n], bulk)
            .and_then(|()| tail.sync_all())
            .map_err(|e| StorageError::io(Code::CannotDeleteVolume, OP, path, e))?;
        written += n as u64;
    }
    depot_os::sync_and_close(file).map_err(|e| fail(e.into()))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOL: &str = "5b1c1f4e-8a43-4a4e-9d59-3f0e2a1c7b11";

    #[test]
    fn canonical_names_only() {
        assert!(canonical_vol(VOL).is_some());
        assert!(canonical_vol(&VOL.to_uppercase()).is_none());
        assert!(canonical_vol("x").is_none());
        assert!(canonical_vol(&format!("{VOL}.meta")).is_none());
    }

    #[test]
    fn parent_is_read_like_vdsm_greps_it() {
        let rec = format!("CAP=1\nGARBAGE\nPUUID = {VOL} \nEOF\n");
        assert_eq!(parent_in_record(rec.as_bytes()), Some(VOL.parse().unwrap()));
        let after_eof = format!("CAP=1\nEOF\nPUUID={VOL}\n");
        assert_eq!(parent_in_record(after_eof.as_bytes()), None);
        let crlf = format!("X=1\r\nPUUID={VOL}\r\nEOF\r\n\0\0");
        assert_eq!(
            parent_in_record(crlf.as_bytes()),
            Some(VOL.parse().unwrap())
        );
    }

    #[test]
    fn wipe_handles_unaligned_tails_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        // 3 MiB of data, a 13 MiB hole, and an unaligned tail of 100 bytes.
        let p = dir.path().join("v");
        let f = File::create(&p).unwrap();
        f.write_all_at(&vec![0x55; 3 << 20], 0).unwrap();
        f.write_all_at(&[0x66; 100], 16 << 20).unwrap();
        drop(f);
        let before = fs::metadata(&p).unwrap();
        let n = wipe_file(&p, &|| {}).unwrap();
        let after = fs::metadata(&p).unwrap();
        assert_eq!(after.len(), before.len());
        assert!(fs::read(&p).unwrap().iter().all(|&b| b == 0));
        // The hole was not filled in.
        assert!(
            after.blocks() <= before.blocks() + 8,
            "{before:?} {after:?}"
        );
        assert!(n >= (3 << 20) + 100, "{n}");
    }
}
