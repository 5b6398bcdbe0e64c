//! Volumes of a block domain (VDSM's `blockVolume` layout):
//!
//! * the data is an LV of the domain's VG named by the volume UUID;
//! * its tags say which image it belongs to (`IU_<img>`), its parent
//!   (`PU_<vol>`, the BLANK UUID for a base) and which metadata slot it owns
//!   (`MD_<n>`);
//! * its metadata record is in slot `n` of the `metadata` LV
//!   ([`super::slots`]), the same text as a file volume's `.meta`.
//!
//! # Creation and crash safety
//!
//! 1. Under the domain's slot lock, pick the lowest slot no LV names and
//!    create the LV with all its tags plus `OVIRT_VOL_INITIALIZING`, in one
//!    `lvcreate`: the slot is taken the moment the LV exists.
//! 2. COW: activate, `qemu-img create` (the backing file is the parent's
//!    UUID, resolved next to the LV in `/dev/<vg>/`), deactivate.
//! 3. Write the metadata record (ILLEGAL until the caller says LEGAL).
//! 4. A child makes its parent INTERNAL.
//! 5. On a domain with a lockspace, sanlock formats the volume's lease at
//!    `(100 + n) × alignment` of the `leases` LV (VDSM's offset; a slot
//!    with no room there is refused before anything is written).
//! 6. Remove `OVIRT_VOL_INITIALIZING`: the volume exists.
//!
//! A crash before step 6 leaves an LV with `OVIRT_VOL_INITIALIZING`: it is
//! invisible to every verb and removed by [`BlockVolumes::recover`]. A
//! failure rolls back with `lvremove`.
//!
//! Deletion removes the LV first (wiped before when asked), then clears
//! the slot; a crash between leaves a record no LV names, which is a free
//! slot by definition. The slot's lease is left as it is (as VDSM does):
//! the next volume in that slot formats it again under its own name.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use depot_api::storage::{AllocType, ImgUuid, Legality, SdUuid, VolType, VolUuid, VolumeFormat};
use depot_api::Code;
use depot_os::lvm::{LvInfo, Lvm, LvmError};
use depot_os::sanlock::Area;
use depot_os::{ImageFormat, Preallocation, QemuImg};

use super::slots;
use super::{lvm_err, vg_name, LEASES_LV, METADATA_LV};
use crate::error::{StorageError, StorageResult};
use crate::layout::DOM_MD;
use crate::lockspace::{
    block_volume_lease_offset, VolumeLeases, LEASES_SLOTS, VOLUME_LEASE_FIRST_SLOT,
};
use crate::metadata::volume::VolumeMetadata;
use crate::volume_store::{CreateVolume, VolumeInfo};
use crate::volume_store::{MetadataChange, VolumeStore};

pub const TAG_IMAGE: &str = "IU_";
pub const TAG_PARENT: &str = "PU_";
pub const TAG_SLOT: &str = "MD_";
pub const TAG_INITIALIZING: &str = "OVIRT_VOL_INITIALIZING";

/// Virtual sizes are kept to whole 4 KiB, as on file domains.
const CAPACITY_ALIGNMENT: u64 = 4096;
/// The first size of a SPARSE COW volume's LV when the capacity is
/// larger (VDSM's `volume_utilization_chunk_mb`).
const SPARSE_COW_INITIAL: u64 = 1 << 30;

/// The volume operations of one block domain.
pub struct BlockVolumes<'a> {
    pub sd: SdUuid,
    pub lvm: &'a Lvm,
    pub qemu: &'a QemuImg,
    pub timeout: Duration,
    pub block_size: u32,
    /// The domain's link directory (`<repository>/mnt/blockSD/<sd>`).
    pub root: &'a Path,
    /// Serializes slot allocation within this host.
    pub slot_lock: &'a Mutex<()>,
    /// How a new volume's lease is formatted; `None`: the domain has no
    /// volume leases.
    pub leases: Option<VolumeLeases<'a>>,
}

fn is_volume_lv(lv: &LvInfo) -> bool {
    VolUuid::from_str(&lv.name).is_ok() && lv.tag_value(TAG_IMAGE).is_some()
}

fn initializing(lv: &LvInfo) -> bool {
    lv.tags.iter().any(|t| t == TAG_INITIALIZING)
}

fn lv_image(lv: &LvInfo) -> Option<ImgUuid> {
    lv.tag_value(TAG_IMAGE)
        .and_then(|s| ImgUuid::from_str(s).ok())
}

fn lv_slot(lv: &LvInfo) -> Option<u32> {
    lv.tag_value(TAG_SLOT).and_then(|s| s.parse().ok())
}

/// The LV size a volume of `capacity` needs.
fn lv_size(format: VolumeFormat, alloc: AllocType, capacity: u64) -> u64 {
    match format {
        VolumeFormat::Raw => capacity,
        // qcow2 metadata: about 0.1% of the capacity plus clusters; VDSM
        // uses 1.1 x the capacity for a fully allocated qcow2.
        VolumeFormat::Cow => {
            let full = capacity + capacity / 10 + (1 << 20);
            match alloc {
                AllocType::Sparse => full.min(SPARSE_COW_INITIAL),
                _ => full,
            }
        }
    }
}

fn image_format(f: VolumeFormat) -> ImageFormat {
    match f {
        VolumeFormat::Raw => ImageFormat::Raw,
        VolumeFormat::Cow => ImageFormat::Qcow2,
    }
}

impl BlockVolumes<'_> {
    fn vg(&self) -> String {
        vg_name(self.sd)
    }

    fn metadata_dev(&self) -> StorageResult<PathBuf> {
        let path = Lvm::lv_path(&self.vg(), METADATA_LV);
        if path.exists() {
            return Ok(path);
        }
        self.lvm
            .activate(&self.vg(), &[METADATA_LV])
            .map_err(|e| lvm_err(Code::CannotActivateLogicalVolume, "activate metadata", e))?;
        Ok(path)
    }

    /// The volume LVs of the domain, without half-created ones.
    fn volume_lvs(&self, op: &'static str) -> StorageResult<Vec<LvInfo>> {
        let lvs = self
            .lvm
            .lvs(&self.vg())
            .map_err(|e| lvm_err(Code::VolumeGroupDoesNotExist, op, e))?;
        Ok(lvs
            .into_iter()
            .filter(|l| is_volume_lv(l) && !initializing(l))
            .collect())
    }

    /// The LV of `vol` in `img`; 201 if there is none.
    fn lv_of(&self, img: ImgUuid, vol: VolUuid, op: &'static str) -> StorageResult<LvInfo> {
        let found = self
            .lvm
            .lv(&self.vg(), &vol.to_string())
            .map_err(|e| lvm_err(Code::VolumeGroupDoesNotExist, op, e))?;
        match found {
            Some(lv) if !initializing(&lv) && lv_image(&lv) == Some(img) => Ok(lv),
            _ => Err(StorageError::new(
                Code::VolumeDoesNotExist,
                op,
                format!("volume {vol} of image {img} on domain {}", self.sd),
            )),
        }
    }

    fn read_md(&self, lv: &LvInfo, op: &'static str) -> StorageResult<VolumeMetadata> {
        let slot = lv_slot(lv).ok_or_else(|| {
            StorageError::new(
                Code::VolumeMetadataReadError,
                op,
                format!("LV {} has no MD_ tag", lv.name),
            )
        })?;
        let bytes = slots::read(&self.metadata_dev()?, slot, self.block_size)?;
        VolumeMetadata::parse(&bytes).map_err(|e| e.in_op(op))
    }

    fn write_md(&self, lv: &LvInfo, md: &VolumeMetadata, op: &'static str) -> StorageResult<()> {
        let slot = lv_slot(lv).ok_or_else(|| {
            StorageError::new(
                Code::VolumeMetadataWriteError,
                op,
                format!("LV {} has no MD_ tag", lv.name),
            )
        })?;
        let bytes = md.to_bytes().map_err(|e| e.in_op(op))?;
        slots::write(&self.metadata_dev()?, slot, self.block_size, &bytes)
    }

    fn children_of(lvs: &[LvInfo], img: ImgUuid, vol: VolUuid) -> Vec<VolUuid> {
        let tag = format!("{TAG_PARENT}{vol}");
        lvs.iter()
            .filter(|l| lv_image(l) == Some(img) && l.tags.contains(&tag))
            .filter_map(|l| VolUuid::from_str(&l.name).ok())
            .collect()
    }

    /// The volume's path on this host, `<root>/images/<img>/<vol>`, a link
    /// to its LV, which is activated if it is not: every caller of
    /// [`VolumeStore::info`] (OVF_STORE reads and writes, copies) gets a
    /// path it can open. [`teardown`](Self::teardown) deactivates.
    pub fn ensure_active(
        &self,
        img: ImgUuid,
        lv: &str,
        op: &'static str,
    ) -> StorageResult<PathBuf> {
        let vg = self.vg();
        if !Lvm::lv_path(&vg, lv).exists() {
            self.lvm
                .activate(&vg, &[lv])
                .map_err(|e| lvm_err(Code::CannotActivateLogicalVolume, op, e))?;
        }
        let dir = self.root.join(crate::layout::IMAGES).join(img.to_string());
        std::fs::create_dir_all(&dir)
            .map_err(|e| StorageError::io(Code::ImagePathError, op, &dir, e))?;
        let link = dir.join(lv);
        let target = Lvm::lv_path(&vg, lv);
        if std::fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link)
                .map_err(|e| StorageError::io(Code::ImagePathError, op, &link, e))?;
        }
        Ok(link)
    }

    /// The image of volume `vol` (its LV's `IU_` tag); 201 when no volume
    /// LV has that name.
    pub fn image_of(&self, vol: VolUuid) -> StorageResult<ImgUuid> {
        const OP: &str = "find volume";
        let found = self
            .lvm
            .lv(&self.vg(), &vol.to_string())
            .map_err(|e| lvm_err(Code::VolumeGroupDoesNotExist, OP, e))?;
        found
            .filter(|lv| is_volume_lv(lv) && !initializing(lv))
            .and_then(|lv| lv_image(&lv))
            .ok_or_else(|| {
                StorageError::new(
                    Code::VolumeDoesNotExist,
                    OP,
                    format!("volume {vol} on domain {}", self.sd),
                )
            })
    }

    /// The image of each volume of the domain, read now (one `lvs`): what
    /// the SPM's mailbox scan looks its requests up in, so that a request
    /// for a volume that does not exist costs no LVM command of its own
    /// (engine/mailbox.rs).
    pub fn volume_images_now(&self) -> StorageResult<HashMap<VolUuid, ImgUuid>> {
        let lvs = self
            .lvm
            .lvs_fresh(&self.vg())
            .map_err(|e| lvm_err(Code::VolumeGroupDoesNotExist, "find volume", e))?;
        Ok(lvs
            .iter()
            .filter(|l| is_volume_lv(l) && !initializing(l))
            .filter_map(|l| Some((VolUuid::from_str(&l.name).ok()?, lv_image(l)?)))
            .collect())
    }

    /// The size of volume `vol`'s LV in bytes, read fresh from the VG
    /// metadata (another host may have extended it).
    pub fn lv_size_now(&self, img: ImgUuid, vol: VolUuid) -> StorageResult<u64> {
        const OP: &str = "read volume size";
        self.lvm.invalidate(&self.vg());
        Ok(self.lv_of(img, vol, OP)?.size)
    }

    /// The largest LV a COW volume may need: its fully allocated size
    /// (capacity, qcow2 metadata and 1 MiB). 206 for a RAW volume, whose
    /// LV is never extended this way.
    pub fn thin_max_size(&self, img: ImgUuid, vol: VolUuid) -> StorageResult<u64> {
        Ok(self.thin_lv("extend thin volume", img, vol)?.1)
    }

    /// The LV of COW volume `vol` and its fully allocated size.
    fn thin_lv(
        &self,
        op: &'static str,
        img: ImgUuid,
        vol: VolUuid,
    ) -> StorageResult<(LvInfo, u64)> {
        let lv = self.lv_of(img, vol, op)?;
        let md = self.read_md(&lv, op)?;
        if md.format != VolumeFormat::Cow {
            return Err(StorageError::new(
                Code::VolumeExtendingError,
                op,
                format!("volume {vol} is {}, not COW", md.format),
            ));
        }
        let max = lv_size(VolumeFormat::Cow, AllocType::Preallocated, md.capacity);
        Ok((lv, max))
    }

    /// The SPM's part of a thin extend (docs/storage.md, "Thin volume
    /// extension"): grows the LV of COW volume `vol` to `size` bytes, but
    /// never beyond its fully allocated size (a request comes from
    /// another host and is trusted no further: it cannot make one LV take
    /// the VG). Returns the LV's size when it had the size already (one
    /// LV report, nothing changed), else the size it was extended to: a
    /// lower bound (LVM rounds up to its extent), not read back, as one
    /// more LVM command is a third of the SPM's part of the round trip
    /// and the host reads its own device after its refresh anyway.
    /// The sizes are read fresh from the VG: a previous SPM may have
    /// extended the LV since this host's cache was filled (a cached size
    /// would make `lvextend` refuse a size the LV already has). The host
    /// that asked refreshes the LV on its side (`lvextend` updates it here
    /// only where it is active here).
    pub fn grow_thin(&self, img: ImgUuid, vol: VolUuid, size: u64) -> StorageResult<u64> {
        const OP: &str = "extend thin volume";
        self.lvm.invalidate(&self.vg());
        let (lv, max) = self.thin_lv(OP, img, vol)?;
        let want = size.min(max);
        if want <= lv.size {
            return Ok(lv.size);
        }
        self.lvm
            .lvextend(&self.vg(), &lv.name, want)
            .map_err(|e| lvm_err(Code::LogicalVolumeExtendError, OP, e))?;
        Ok(want)
    }

    /// Deactivates the image's LVs and removes its links (`Image.teardown`).
    /// Idempotent.
    pub fn teardown(&self, img: ImgUuid) -> StorageResult<()> {
        const OP: &str = "teardown image";
        let lvs = self.volume_lvs(OP)?;
        let names: Vec<&str> = lvs
            .iter()
            .filter(|l| lv_image(l) == Some(img))
            .map(|l| l.name.as_str())
            .collect();
        self.lvm
            .deactivate(&self.vg(), &names)
            .map_err(|e| lvm_err(Code::CannotDeactivateLogicalVolume, OP, e))?;
        let _ =
            std::fs::remove_dir_all(self.root.join(crate::layout::IMAGES).join(img.to_string()));
        Ok(())
    }

    fn info_of(&self, lv: &LvInfo, lvs: &[LvInfo], op: &'static str) -> StorageResult<VolumeInfo> {
        let metadata = self.read_md(lv, op)?;
        let vol = VolUuid::from_str(&lv.name).map_err(|_| {
            StorageError::new(Code::VolumeDoesNotExist, op, format!("LV {}", lv.name))
        })?;
        Ok(VolumeInfo {
            volume: vol,
            path: self.ensure_active(metadata.image, &lv.name, op)?,
            children: Self::children_of(lvs, metadata.image, vol),
            apparent_size: lv.size,
            true_size: lv.size,
            mtime: 0,
            metadata,
        })
    }

    fn free_slot(&self, lvs: &[LvInfo], op: &'static str) -> StorageResult<u32> {
        let used: HashSet<u32> = lvs.iter().filter_map(lv_slot).collect();
        let md_lv = lvs.iter().find(|l| l.name == METADATA_LV).ok_or_else(|| {
            StorageError::new(Code::VolumeCreationError, op, "no metadata LV".to_string())
        })?;
        (slots::FIRST_SLOT..slots::capacity(md_lv.size))
            .find(|s| !used.contains(s))
            .ok_or_else(|| {
                StorageError::new(
                    Code::VolumeCreationError,
                    op,
                    "every metadata slot is taken".to_string(),
                )
            })
    }

    /// Removes LVs left by a crash during creation. Returns their names.
    pub fn recover(&self) -> StorageResult<Vec<String>> {
        const OP: &str = "recover volumes";
        let lvs = self
            .lvm
            .lvs_fresh(&self.vg())
            .map_err(|e| lvm_err(Code::VolumeGroupDoesNotExist, OP, e))?;
        let stale: Vec<String> = lvs
            .iter()
            .filter(|l| initializing(l))
            .map(|l| l.name.clone())
            .collect();
        if !stale.is_empty() {
            let _ = self.lvm.deactivate(
                &self.vg(),
                &stale.iter().map(String::as_str).collect::<Vec<_>>(),
            );
            self.lvm
                .lvremove(
                    &self.vg(),
                    &stale.iter().map(String::as_str).collect::<Vec<_>>(),
                )
                .map_err(|e| lvm_err(Code::CannotRemoveLogicalVolume, OP, e))?;
        }
        Ok(stale)
    }

    fn create_steps(
        &self,
        vol: VolUuid,
        md: &mut VolumeMetadata,
        parent: Option<&LvInfo>,
        lease_offset: Option<u64>,
        op: &'static str,
    ) -> StorageResult<()> {
        let vg = self.vg();
        let name = vol.to_string();
        let lv = self
            .lvm
            .lv(&vg, &name)
            .map_err(|e| lvm_err(Code::VolumeCreationError, op, e))?
            .ok_or_else(|| StorageError::new(Code::VolumeCreationError, op, "LV vanished"))?;
        if md.format == VolumeFormat::Cow {
            let mut to_activate = vec![name.as_str()];
            if let Some(p) = parent {
                to_activate.push(p.name.as_str());
            }
            // Deactivated again after qemu-img, unless already active
            // (a prepared image).
            let inactive: Vec<&str> = to_activate
                .iter()
                .copied()
                .filter(|n| !Lvm::lv_path(&vg, n).exists())
                .collect();
            let paths = self
                .lvm
                .activate(&vg, &to_activate)
                .map_err(|e| lvm_err(Code::CannotActivateLogicalVolume, op, e))?;
            // The backing file is the parent's bare name, resolved next to
            // the LV in /dev/<vg>/ (VDSM's form); its format is in its record.
            let backing = match parent {
                Some(p) => Some((
                    PathBuf::from(&p.name),
                    image_format(self.read_md(p, op)?.format),
                )),
                None => None,
            };
            let result = self.qemu.create(
                &paths[0],
                ImageFormat::Qcow2,
                md.capacity,
                backing.as_ref().map(|(p, f)| (p.as_path(), *f)),
                Preallocation::Off,
                self.timeout,
            );
            let _ = self.lvm.deactivate(&vg, &inactive);
            result.map_err(|e| {
                StorageError::new(Code::VolumeCreationError, op, e.to_string()).caused_by(e)
            })?;
        }
        self.write_md(&lv, md, op)?;
        if let Some(p) = parent {
            let mut pmd = self.read_md(p, op)?;
            if pmd.vol_type == VolType::Leaf {
                pmd.vol_type = VolType::Internal;
                self.write_md(p, &pmd, op)?;
            }
        }
        if let (Some(leases), Some(offset)) = (&self.leases, lease_offset) {
            leases.format(self.sd, vol, Area::new(self.leases_path(), offset))?;
        }
        self.lvm
            .lv_tags(&vg, &name, &[], &[TAG_INITIALIZING.to_owned()])
            .map_err(|e| lvm_err(Code::VolumeCreationError, op, e))
    }

    fn wipe(&self, lv: &str, op: &'static str) -> StorageResult<u64> {
        let vg = self.vg();
        let paths = self
            .lvm
            .activate(&vg, &[lv])
            .map_err(|e| lvm_err(Code::CannotActivateLogicalVolume, op, e))?;
        let result = (|| {
            let f = OpenOptions::new()
                .write(true)
                .open(&paths[0])
                .map_err(|e| StorageError::io(Code::CannotDeleteVolume, op, &paths[0], e))?;
            let len = std::fs::metadata(&paths[0])
                .map(|_| ())
                .and_then(|()| {
                    use std::io::Seek;
                    (&f).seek(std::io::SeekFrom::End(0))
                })
                .map_err(|e| StorageError::io(Code::CannotDeleteVolume, op, &paths[0], e))?;
            depot_os::fsutil::zero_range(&f, 0, len).map_err(|e| {
                StorageError::new(Code::CannotDeleteVolume, op, e.to_string()).caused_by(e)
            })?;
            f.sync_all()
                .map_err(|e| StorageError::io(Code::CannotDeleteVolume, op, &paths[0], e))?;
            Ok(len)
        })();
        let _ = self.lvm.deactivate(&vg, &[lv]);
        result
    }

    /// The `leases` LV through the domain's `dom_md` link (the path the
    /// SDM lease is taken through).
    fn leases_path(&self) -> PathBuf {
        self.root.join(DOM_MD).join(LEASES_LV)
    }

    /// Where a new volume in metadata slot `slot` has its lease, `None`
    /// without volume leases; 205 when the `leases` LV has no room for it
    /// (VDSM's limit of about 1947 volumes).
    fn lease_offset(
        &self,
        vol: VolUuid,
        slot: u32,
        op: &'static str,
    ) -> StorageResult<Option<u64>> {
        let Some(leases) = &self.leases else {
            return Ok(None);
        };
        block_volume_lease_offset(u64::from(slot), leases.geometry.align())
            .map(Some)
            .ok_or_else(|| {
                StorageError::new(
                    Code::VolumeCreationError,
                    op,
                    format!(
                        "volume {vol}: metadata slot {slot} has no room for a lease in the \
                         {LEASES_LV} LV (at most {} volumes with volume leases)",
                        LEASES_SLOTS - VOLUME_LEASE_FIRST_SLOT - 1
                    ),
                )
            })
    }

    /// Where the lease of volume `vol` is: slot 100 + its metadata slot of
    /// `leases`, with `alignment`. 201 for a volume that is not there.
    pub fn lease_area(&self, img: ImgUuid, vol: VolUuid, alignment: u64) -> StorageResult<Area> {
        const OP: &str = "volume lease";
        let lv = self.lv_of(img, vol, OP)?;
        let offset = lv_slot(&lv)
            .and_then(|slot| block_volume_lease_offset(u64::from(slot), alignment))
            .ok_or_else(|| {
                StorageError::new(
                    Code::VolumeMetadataReadError,
                    OP,
                    format!("LV {} has no metadata slot with room for a lease", lv.name),
                )
            })?;
        Ok(Area::new(self.leases_path(), offset))
    }

    fn clear_slot(&self, lv: &LvInfo) {
        if let (Some(slot), Ok(dev)) = (lv_slot(lv), self.metadata_dev()) {
            // "NONE" marks a cleared record, as VDSM writes it.
            if let Err(e) = slots::write(&dev, slot, self.block_size, b"NONE=\nEOF\n") {
                tracing::warn!(lv = %lv.name, slot, error = %e, "cannot clear a freed metadata slot; it is free anyway");
            }
        }
    }
}

impl VolumeStore for BlockVolumes<'_> {
    fn create(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        req: &CreateVolume,
    ) -> StorageResult<VolumeMetadata> {
        const OP: &str = "create volume";
        let err = |code, detail: String| StorageError::new(code, OP, detail);
        if req.format == VolumeFormat::Raw && req.alloc == AllocType::Sparse {
            return Err(err(
                Code::IncorrectFormat,
                format!("volume {vol}: RAW volumes on block domains are PREALLOCATED (an LV cannot be sparse)"),
            ));
        }
        let mut md = crate::volume_store::new_metadata(self.sd, img, vol, req, OP)?;
        let capacity = md.capacity;
        let has_parent = !req.parent.is_blank();

        let vg = self.vg();
        let guard = self
            .slot_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The cached list holds this host's own changes exactly (the LVM
        // wrapper updates it in place); only the SPM creates volumes, so
        // another host's changes are not missed either (docs/storage.md).
        let lvs = self
            .lvm
            .lvs(&vg)
            .map_err(|e| lvm_err(Code::VolumeGroupDoesNotExist, OP, e))?;
        if lvs.iter().any(|l| l.name == vol.to_string()) {
            return Err(err(
                Code::VolumeAlreadyExists,
                format!("volume {vol}: an LV of that name exists"),
            ));
        }
        let parent = if has_parent {
            let p = lvs
                .iter()
                .find(|l| {
                    l.name == req.parent.to_string() && lv_image(l) == Some(img) && !initializing(l)
                })
                .cloned()
                .ok_or_else(|| {
                    err(
                        Code::VolumeDoesNotExist,
                        format!("parent {} of {vol} in image {img}", req.parent),
                    )
                })?;
            let pmd = self.read_md(&p, OP)?;
            crate::volume_store::check_parent(OP, vol, req.parent, &pmd, capacity)?;
            Some(p)
        } else {
            None
        };
        let slot = self.free_slot(&lvs, OP)?;
        let lease_offset = self.lease_offset(vol, slot, OP)?;
        let tags = vec![
            TAG_INITIALIZING.to_owned(),
            format!("{TAG_IMAGE}{img}"),
            format!("{TAG_PARENT}{}", req.parent),
            format!("{TAG_SLOT}{slot}"),
        ];
        self.lvm
            .lvcreate(
                &vg,
                &vol.to_string(),
                lv_size(md.format, md.alloc_type, capacity),
                &tags,
            )
            .map_err(|e| match &e {
                LvmError::Command(c)
                    if c.stderr().contains("insufficient free space")
                        || c.stderr().contains("Insufficient free space") =>
                {
                    lvm_err(Code::VolumeGroupSizeError, OP, e)
                }
                _ => lvm_err(Code::CannotCreateLogicalVolume, OP, e),
            })?;
        drop(guard);
        match self.create_steps(vol, &mut md, parent.as_ref(), lease_offset, OP) {
            Ok(()) => {
                tracing::info!(sd = %self.sd, %img, %vol, slot, format = %md.format, capacity, "block volume created");
                Ok(md)
            }
            Err(e) => {
                tracing::warn!(%img, %vol, error = %e, "block volume creation failed, removing the LV");
                let name = vol.to_string();
                let _ = self.lvm.deactivate(&vg, &[name.as_str()]);
                if let Err(rb) = self.lvm.lvremove(&vg, &[name.as_str()]) {
                    tracing::error!(%vol, error = %rb, "cannot remove the half-created LV; recovery will");
                }
                Err(e)
            }
        }
    }

    fn info(&self, img: ImgUuid, vol: VolUuid) -> StorageResult<VolumeInfo> {
        const OP: &str = "volume info";
        let lv = self.lv_of(img, vol, OP)?;
        let lvs = self.volume_lvs(OP)?;
        self.info_of(&lv, &lvs, OP)
    }

    fn size(&self, img: ImgUuid, vol: VolUuid) -> StorageResult<(u64, u64)> {
        let lv = self.lv_of(img, vol, "volume size")?;
        Ok((lv.size, lv.size))
    }

    fn list(&self, img: Option<ImgUuid>) -> StorageResult<Vec<VolUuid>> {
        let lvs = self.volume_lvs("list volumes")?;
        let set: BTreeSet<VolUuid> = lvs
            .iter()
            .filter(|l| img.is_none() || lv_image(l) == img)
            .filter_map(|l| VolUuid::from_str(&l.name).ok())
            .collect();
        Ok(set.into_iter().collect())
    }

    fn update(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        change: MetadataChange<'_>,
    ) -> StorageResult<VolumeMetadata> {
        const OP: &str = "update volume metadata";
        let lv = self.lv_of(img, vol, OP)?;
        let mut md = self.read_md(&lv, OP)?;
        change(&mut md)?;
        self.write_md(&lv, &md, OP)?;
        Ok(md)
    }

    fn extend(&self, img: ImgUuid, vol: VolUuid, capacity: u64) -> StorageResult<VolumeMetadata> {
        const OP: &str = "extend volume";
        let lv = self.lv_of(img, vol, OP)?;
        let mut md = self.read_md(&lv, OP)?;
        let err = |code, detail: String| StorageError::new(code, OP, detail);
        if md.vol_type == VolType::Shared
            || (md.vol_type == VolType::Internal && !md.parent.is_blank())
        {
            return Err(err(
                Code::VolumeExtendingError,
                format!("volume {vol} is {}", md.vol_type),
            ));
        }
        let capacity = capacity
            .checked_next_multiple_of(CAPACITY_ALIGNMENT)
            .ok_or_else(|| err(Code::VolumeResizeValueError, "too large".into()))?;
        if capacity < md.capacity {
            return Err(err(
                Code::VolumeResizeValueError,
                format!(
                    "volume {vol}: {capacity} is smaller than its capacity {}",
                    md.capacity
                ),
            ));
        }
        let vg = self.vg();
        let want = lv_size(md.format, AllocType::Preallocated, capacity);
        let want = if md.format == VolumeFormat::Cow && md.alloc_type == AllocType::Sparse {
            want.min(lv.size.max(SPARSE_COW_INITIAL))
        } else {
            want
        };
        if want > lv.size {
            self.lvm
                .lvextend(&vg, &lv.name, want)
                .map_err(|e| lvm_err(Code::LogicalVolumeExtendError, OP, e))?;
        }
        if md.format == VolumeFormat::Cow {
            // qemu-img opens the backing chain: its LVs must be active too.
            let lvs = self.volume_lvs(OP)?;
            let mut chain = vec![lv.name.clone()];
            let mut cur = lv.clone();
            while let Some(p) = cur
                .tag_value(TAG_PARENT)
                .filter(|p| *p != VolUuid::BLANK.to_string())
            {
                match lvs.iter().find(|l| l.name == p && lv_image(l) == Some(img)) {
                    Some(parent) if !chain.contains(&parent.name) => {
                        chain.push(parent.name.clone());
                        cur = parent.clone();
                    }
                    _ => break,
                }
            }
            let inactive: Vec<&str> = chain
                .iter()
                .map(String::as_str)
                .filter(|n| !Lvm::lv_path(&vg, n).exists())
                .collect();
            self.lvm
                .activate(&vg, &chain.iter().map(String::as_str).collect::<Vec<_>>())
                .map_err(|e| lvm_err(Code::CannotActivateLogicalVolume, OP, e))?;
            let r = self.qemu.resize(
                &Lvm::lv_path(&vg, &lv.name),
                ImageFormat::Qcow2,
                capacity,
                self.timeout,
            );
            // Leave the chain as it was found (active only if prepared).
            let _ = self.lvm.deactivate(&vg, &inactive);
            r.map_err(|e| err(Code::VolumeExtendingError, e.to_string()).caused_by(e))?;
        }
        md.capacity = capacity;
        self.write_md(&lv, &md, OP)?;
        Ok(md)
    }

    fn delete(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        post_zero: bool,
        force: bool,
    ) -> StorageResult<()> {
        const OP: &str = "delete volume";
        let err = |code, detail: String| StorageError::new(code, OP, detail);
        let lv = self.lv_of(img, vol, OP)?;
        let lvs = self.volume_lvs(OP)?;
        let md = self.read_md(&lv, OP).ok();
        if !force {
            if md.as_ref().is_some_and(|m| m.vol_type == VolType::Shared) {
                return Err(err(
                    Code::CannotDeleteVolume,
                    format!("volume {vol} is shared"),
                ));
            }
            let kids = Self::children_of(&lvs, img, vol);
            if !kids.is_empty() {
                let kids: Vec<String> = kids.iter().map(ToString::to_string).collect();
                return Err(err(
                    Code::VolumeImageHasChildren,
                    format!("volume {vol} has children: {}", kids.join(", ")),
                ));
            }
        }
        if let Some(m) = md.as_ref().filter(|m| m.legality != Legality::Illegal) {
            let mut m = m.clone();
            m.legality = Legality::Illegal;
            self.write_md(&lv, &m, OP)?;
        }
        if post_zero {
            let n = self.wipe(&lv.name, OP)?;
            tracing::info!(%img, %vol, bytes = n, "volume LV wiped");
        }
        let vg = self.vg();
        self.lvm
            .deactivate(&vg, &[lv.name.as_str()])
            .map_err(|e| lvm_err(Code::CannotDeactivateLogicalVolume, OP, e))?;
        self.lvm
            .lvremove(&vg, &[lv.name.as_str()])
            .map_err(|e| lvm_err(Code::CannotRemoveLogicalVolume, OP, e))?;
        self.clear_slot(&lv);
        let _ = std::fs::remove_file(
            self.root
                .join("images")
                .join(img.to_string())
                .join(vol.to_string()),
        );
        // The parent is a leaf again when this was its last child.
        if let Some(parent) = md.as_ref().map(|m| m.parent).filter(|p| !p.is_blank()) {
            let others = Self::children_of(&lvs, img, parent)
                .into_iter()
                .filter(|c| *c != vol)
                .count();
            if others == 0 {
                if let Ok(plv) = self.lv_of(img, parent, OP) {
                    let mut pmd = self.read_md(&plv, OP)?;
                    if pmd.vol_type == VolType::Internal {
                        pmd.vol_type = VolType::Leaf;
                        self.write_md(&plv, &pmd, OP)?;
                    }
                }
            }
        }
        tracing::info!(%img, %vol, post_zero, "block volume deleted");
        Ok(())
    }

    fn images(&self) -> StorageResult<Vec<ImgUuid>> {
        let lvs = self.volume_lvs("list images")?;
        let set: BTreeSet<ImgUuid> = lvs.iter().filter_map(lv_image).collect();
        Ok(set.into_iter().collect())
    }

    fn delete_image(&self, img: ImgUuid, post_zero: bool) -> StorageResult<()> {
        const OP: &str = "delete image";
        let lvs: Vec<LvInfo> = self
            .volume_lvs(OP)?
            .into_iter()
            .filter(|l| lv_image(l) == Some(img))
            .collect();
        if lvs.is_empty() {
            return Err(StorageError::new(
                Code::ImageDoesNotExistInSD,
                OP,
                format!("image {img} of domain {}", self.sd),
            ));
        }
        if post_zero {
            for lv in &lvs {
                self.wipe(&lv.name, OP)?;
            }
        }
        let names: Vec<&str> = lvs.iter().map(|l| l.name.as_str()).collect();
        let vg = self.vg();
        self.lvm
            .deactivate(&vg, &names)
            .map_err(|e| lvm_err(Code::CannotDeactivateLogicalVolume, OP, e))?;
        self.lvm
            .lvremove(&vg, &names)
            .map_err(|e| lvm_err(Code::CannotRemoveLogicalVolume, OP, e))?;
        for lv in &lvs {
            self.clear_slot(lv);
        }
        let _ = std::fs::remove_dir_all(self.root.join("images").join(img.to_string()));
        Ok(())
    }

    /// From the cached LV list; an image or volume missing from it is
    /// looked for again in a list read now: another host's SPM may have
    /// made it since this host cached the list (the engine prepares a
    /// volume on a host right after the SPM created it), as a lookup of
    /// one LV does (`Lvm::lv`).
    fn chain(
        &self,
        img: ImgUuid,
        leaf: VolUuid,
        allow_illegal: bool,
    ) -> StorageResult<Vec<VolumeInfo>> {
        const OP: &str = "volume chain";
        let cached = self.volume_lvs(OP)?;
        match self.chain_in(&cached, img, leaf, allow_illegal) {
            Err(e)
                if matches!(
                    e.code,
                    Code::ImageDoesNotExistInSD | Code::VolumeDoesNotExist
                ) =>
            {
                self.lvm.invalidate(&self.vg());
                let fresh = self.volume_lvs(OP)?;
                self.chain_in(&fresh, img, leaf, allow_illegal)
            }
            other => other,
        }
    }
}

impl BlockVolumes<'_> {
    /// The chain of `leaf` in the LV list `lvs`, base first.
    fn chain_in(
        &self,
        lvs: &[LvInfo],
        img: ImgUuid,
        leaf: VolUuid,
        allow_illegal: bool,
    ) -> StorageResult<Vec<VolumeInfo>> {
        const OP: &str = "volume chain";
        if !lvs.iter().any(|l| lv_image(l) == Some(img)) {
            return Err(StorageError::new(
                Code::ImageDoesNotExistInSD,
                OP,
                format!("image {img} of domain {}", self.sd),
            ));
        }
        let mut chain = Vec::new();
        let mut seen = HashSet::new();
        let mut cur = leaf;
        loop {
            if !seen.insert(cur) {
                return Err(StorageError::new(
                    Code::MetaDataValidationError,
                    OP,
                    format!("loop in the parents of {leaf}"),
                ));
            }
            let lv = lvs
                .iter()
                .find(|l| l.name == cur.to_string() && lv_image(l) == Some(img))
                .ok_or_else(|| {
                    StorageError::new(
                        Code::VolumeDoesNotExist,
                        OP,
                        format!("volume {cur} of image {img}"),
                    )
                })?;
            let info = self.info_of(lv, lvs, OP)?;
            if info.metadata.legality == Legality::Illegal && !allow_illegal {
                return Err(StorageError::new(
                    Code::PrepareIllegalVolumeError,
                    OP,
                    format!("volume {cur} is ILLEGAL"),
                ));
            }
            let parent = info.metadata.parent;
            chain.push(info);
            if parent.is_blank() {
                break;
            }
            cur = parent;
        }
        chain.reverse();
        Ok(chain)
    }
}
