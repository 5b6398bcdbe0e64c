//! [`VolumeStore`]: the volume and image operations every domain kind
//! offers. File domains implement it with [`FileVolumes`] (a directory per
//! image, a `.meta` file per volume), block domains with
//! [`BlockVolumes`](crate::block::BlockVolumes) (an LV per volume, tags for
//! the image and parent, the metadata in a slot of the `metadata` LV). The
//! engine's verbs see only this trait, so their locking, checks and error
//! codes are the same for both.

use depot_api::storage::{ImgUuid, Legality, VolUuid};

use crate::error::StorageResult;
use crate::file::volumes::{CreateVolume, FileVolumes, VolumeInfo};
use crate::metadata::volume::VolumeMetadata;

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

impl VolumeStore for FileVolumes<'_> {
    fn create(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        req: &CreateVolume,
    ) -> StorageResult<VolumeMetadata> {
        FileVolumes::create(self, img, vol, req)
    }
    fn info(&self, img: ImgUuid, vol: VolUuid) -> StorageResult<VolumeInfo> {
        FileVolumes::info(self, img, vol)
    }
    fn size(&self, img: ImgUuid, vol: VolUuid) -> StorageResult<(u64, u64)> {
        FileVolumes::size(self, img, vol)
    }
    fn list(&self, img: Option<ImgUuid>) -> StorageResult<Vec<VolUuid>> {
        FileVolumes::list(self, img)
    }
    fn update(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        change: MetadataChange<'_>,
    ) -> StorageResult<VolumeMetadata> {
        FileVolumes::update(self, img, vol, change)
    }
    fn extend(&self, img: ImgUuid, vol: VolUuid, capacity: u64) -> StorageResult<VolumeMetadata> {
        FileVolumes::extend(self, img, vol, capacity)
    }
    fn delete(
        &self,
        img: ImgUuid,
        vol: VolUuid,
        post_zero: bool,
        force: bool,
    ) -> StorageResult<()> {
        FileVolumes::delete(self, img, vol, post_zero, force)
    }
    fn images(&self) -> StorageResult<Vec<ImgUuid>> {
        FileVolumes::images(self)
    }
    fn delete_image(&self, img: ImgUuid, post_zero: bool) -> StorageResult<()> {
        FileVolumes::delete_image(self, img, post_zero)
    }
    fn chain(
        &self,
        img: ImgUuid,
        leaf: VolUuid,
        allow_illegal: bool,
    ) -> StorageResult<Vec<VolumeInfo>> {
        FileVolumes::chain(self, img, leaf, allow_illegal)
    }
}
