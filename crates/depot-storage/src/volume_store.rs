//! The volume contract: [`VolumeStore`], the volume and image operations
//! every domain kind offers, what they take and give ([`CreateVolume`],
//! [`VolumeInfo`]), and the rules both kinds apply to a new volume. File
//! domains implement it in file/volumes.rs (a directory per image, a
//! `.meta` file per volume), block domains in block/volumes.rs (an LV per
//! volume, tags for the image and parent, the metadata in a slot of the
//! `metadata` LV). The verbs see only this trait, so their locking, checks
//! and error codes are the same for both. It imports neither kind.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use depot_api::storage::{
    AllocType, DiskType, ImgUuid, Legality, SdUuid, VolType, VolUuid, VolumeFormat,
};
use depot_api::Code;

use crate::error::{StorageError, StorageResult};
use crate::metadata::volume::VolumeMetadata;

/// Capacities are rounded up to this, as VDSM rounds `createVolume` and
/// `extendVolumeSize` sizes to 4 KiB.
pub const CAPACITY_ALIGNMENT: u64 = 4096;

/// What [`VolumeStore::create`] is asked to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateVolume {
    /// Virtual size in bytes; at least 1, rounded up to 4 KiB.
    pub capacity: u64,
    pub format: VolumeFormat,
    pub alloc: AllocType,
    pub disk_type: DiskType,
    /// At most 210 characters, no line breaks.
    pub description: String,
    /// The parent volume in the same image, or [`VolUuid::BLANK`].
    pub parent: VolUuid,
    /// false: the volume stays ILLEGAL until the caller sets it LEGAL (the
    /// manager does so after copying data into it).
    pub legal: bool,
    /// SEQ: the volume's order in its image.
    pub sequence: u32,
}

/// A volume as [`VolumeStore::info`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub volume: VolUuid,
    pub metadata: VolumeMetadata,
    /// The data file.
    pub path: PathBuf,
    /// `st_size` of the data file.
    pub apparent_size: u64,
    /// Space the data file uses: `st_blocks * 512`.
    pub true_size: u64,
    /// Volumes of the image whose PUUID is this volume.
    pub children: Vec<VolUuid>,
    /// Modification time of the data file, seconds since the epoch.
    pub mtime: u64,
}

/// A metadata change, for [`VolumeStore::update`].
pub type MetadataChange<'a> = Box<dyn FnOnce(&mut VolumeMetadata) -> StorageResult<()> + 'a>;

pub trait VolumeStore {
    fn create(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        req: &CreateVolume,
    ) -> StorageResult<VolumeMetadata>;
    fn info(&self, img: ImgUuid, vol: VolUuid) -> StorageResult<VolumeInfo>;
    /// (apparent size, allocated size) in bytes.
    fn size(&self, img: ImgUuid, vol: VolUuid) -> StorageResult<(u64, u64)>;
    fn list(&self, img: Option<ImgUuid>) -> StorageResult<Vec<VolUuid>>;
    fn update(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        change: MetadataChange<'_>,
    ) -> StorageResult<VolumeMetadata>;
    fn extend(&self, img: ImgUuid, vol: VolUuid, capacity: u64) -> StorageResult<VolumeMetadata>;
    fn delete(&self, img: ImgUuid, vol: VolUuid, post_zero: bool, force: bool)
        -> StorageResult<()>;
    fn images(&self) -> StorageResult<Vec<ImgUuid>>;
    fn delete_image(&self, img: ImgUuid, post_zero: bool) -> StorageResult<()>;
    /// The chain of `leaf`, base first.
    fn chain(
        &self,
        img: ImgUuid,
        leaf: VolUuid,
        allow_illegal: bool,
    ) -> StorageResult<Vec<VolumeInfo>>;

    fn set_description(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        description: &str,
    ) -> StorageResult<VolumeMetadata> {
        let d = description.to_string();
        self.update(
            img,
            vol,
            Box::new(move |md| {
                md.description = d;
                Ok(())
            }),
        )
    }

    fn set_legality(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        legality: Legality,
    ) -> StorageResult<VolumeMetadata> {
        self.update(
            img,
            vol,
            Box::new(move |md| {
                md.legality = legality;
                Ok(())
            }),
        )
    }
}

/// The checks every domain kind makes on the parent of a new volume, once
/// it has found the parent's metadata: a parent that is ILLEGAL (a copy or
/// create that did not finish) is as good as missing (201), and a child
/// may not be smaller than its parent (1000).
pub(crate) fn check_parent(
    op: &'static str,
    vol: VolUuid,
    parent: VolUuid,
    pmd: &VolumeMetadata,
    capacity: u64,
) -> StorageResult<()> {
    if pmd.legality == Legality::Illegal {
        return Err(StorageError::new(
            Code::VolumeDoesNotExist,
            op,
            format!("parent {parent} of {vol} is ILLEGAL"),
        ));
    }
    if capacity < pmd.capacity {
        return Err(StorageError::new(
            Code::InvalidParameterException,
            op,
            format!(
                "capacity {capacity} of {vol} is smaller than capacity {} of its parent {parent}",
                pmd.capacity
            ),
        ));
    }
    Ok(())
}

/// The checks every domain kind makes before creating a volume, and its
/// first metadata (ILLEGAL, LEAF, GEN 0): BLANK volume id or a volume that
/// is its own parent (1000), capacity 0 (229) or too large (1000), RAW with
/// a parent (202), a record that would not be valid (753, 756). The
/// capacity is rounded up to 4 KiB.
pub(crate) fn new_metadata(
    sd: SdUuid,
    img: ImgUuid,
    vol: VolUuid,
    req: &CreateVolume,
    op: &'static str,
) -> StorageResult<VolumeMetadata> {
    let err = |code, detail: String| StorageError::new(code, op, detail);
    if vol.is_blank() {
        return Err(err(
            Code::InvalidParameterException,
            "the volume id is the BLANK UUID".into(),
        ));
    }
    if req.parent == vol {
        return Err(err(
            Code::InvalidParameterException,
            format!("volume {vol} cannot be its own parent"),
        ));
    }
    if req.capacity == 0 {
        return Err(err(
            Code::CreateVolumeSizeError,
            format!("volume {vol}: capacity 0"),
        ));
    }
    let capacity = round_up(req.capacity, CAPACITY_ALIGNMENT).ok_or_else(|| {
        err(
            Code::InvalidParameterException,
            format!("volume {vol}: capacity {} is too large", req.capacity),
        )
    })?;
    if !req.parent.is_blank() && req.format == VolumeFormat::Raw {
        return Err(err(
            Code::IncorrectFormat,
            format!(
                "volume {vol}: a volume with a parent must be COW, not {}",
                req.format
            ),
        ));
    }
    let md = VolumeMetadata {
        domain: sd,
        image: img,
        parent: req.parent,
        capacity,
        format: req.format,
        alloc_type: req.alloc,
        vol_type: VolType::Leaf,
        disk_type: req.disk_type,
        description: req.description.clone(),
        legality: Legality::Illegal,
        ctime: now(),
        generation: 0,
        sequence: req.sequence,
    };
    // ILLEGAL is the longer spelling: if this fits, LEGAL fits too.
    md.to_bytes().map_err(|e| e.in_op(op))?;
    Ok(md)
}

/// Seconds since the epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn round_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v / align * align)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        assert_eq!(round_up(1, 4096), Some(4096));
        assert_eq!(round_up(4096, 4096), Some(4096));
        assert_eq!(round_up(4097, 4096), Some(8192));
        assert_eq!(round_up(u64::MAX, 4096), None);
    }
}
