//! [`VolumeData`]: where a volume's data is and the rule for opening it
//! (see `depot_os::confine`). Every opener of volume data goes through it:
//! OVF_STORE uploads, reads and restores, copies (both ends, and the
//! paths handed to qemu-img), checksums, wipes, extends, and the chain
//! `Image.prepare` hands out.
//!
//! - A file domain's volume is a regular file at `images/<img>/<vol>`
//!   beneath the domain directory, reached without any symlink, on the
//!   domain's file system.
//! - A block domain's volume is the domain's link
//!   `images/<img>/<vol> -> /dev/<sd>/<vol>`, and the device it leads to
//!   must be that LV.
//!
//! A volume that breaks its rule is refused with ImagePathError (254)
//! naming what is wrong, and nothing of it is opened.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use depot_api::storage::{ImgUuid, VolUuid};
use depot_api::Code;
use depot_os::confine::{refusal, Beneath, DataPath, LvDevice};

use crate::error::{StorageError, StorageResult};
use crate::layout::{DomainPaths, IMAGES};

/// One volume's data, with its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeData {
    File(Beneath),
    Block(LvDevice),
}

impl VolumeData {
    /// The data of `vol` in image `img` of the file domain at `paths`: a
    /// regular file beneath the domain directory.
    pub fn file(paths: &DomainPaths, img: ImgUuid, vol: VolUuid) -> VolumeData {
        VolumeData::File(Beneath::new(
            paths.root.clone(),
            PathBuf::from(IMAGES)
                .join(img.to_string())
                .join(vol.to_string()),
        ))
    }

    /// The data of `vol` in image `img` of the block domain whose link
    /// directory is `paths` and whose VG is `vg`: the link must lead to
    /// that VG's LV.
    pub fn block(paths: &DomainPaths, vg: &str, img: ImgUuid, vol: VolUuid) -> VolumeData {
        VolumeData::Block(LvDevice::new(paths.volume(img, vol), vg, &vol.to_string()))
    }

    /// Checks the rule now, without opening the data for I/O: 254 when it
    /// is broken, the OS's error (with `code`) when the data cannot be
    /// looked at. For the programs that open the data themselves (qemu-img)
    /// and for refusing a verb before it changes anything.
    pub fn check(&self, code: Code, op: &'static str) -> StorageResult<()> {
        let checked = match self {
            VolumeData::File(b) => b.check().map(drop),
            VolumeData::Block(l) => l.check().map(drop),
        };
        checked.map_err(|e| open_error(code, op, self.path(), e))
    }
}

impl DataPath for VolumeData {
    fn path(&self) -> &Path {
        match self {
            VolumeData::File(b) => b.path(),
            VolumeData::Block(l) => l.path(),
        }
    }

    fn open_with(&self, opts: &OpenOptions) -> io::Result<File> {
        match self {
            VolumeData::File(b) => b.open_with(opts),
            VolumeData::Block(l) => l.open_with(opts),
        }
    }
}

/// A failed open of volume data as a storage error: a refusal by the rule
/// is ImagePathError (254) with its reason; any other error keeps `code`.
pub fn open_error(code: Code, op: &'static str, path: &Path, e: io::Error) -> StorageError {
    let refused = refusal(&e).map(|r| {
        format!(
            "{}: volume data must be a regular file inside its domain (or, on a block \
             domain, the domain's own LV)",
            r.reason
        )
    });
    match refused {
        Some(detail) => StorageError::new(Code::ImagePathError, op, detail).caused_by(e),
        None => StorageError::io(code, op, path, e),
    }
}

/// Refuses (254) an image directory of a file domain that is not a plain
/// directory beneath the domain: a symlink there would lead every file
/// operation on the image (delete, wipe) elsewhere. A missing directory
/// passes: the caller reports it as it does.
pub fn check_image_dir(paths: &DomainPaths, img: ImgUuid, op: &'static str) -> StorageResult<()> {
    let dir = Beneath::new(
        paths.root.clone(),
        PathBuf::from(IMAGES).join(img.to_string()),
    );
    match dir.check_dir() {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(open_error(Code::ImagePathError, op, &paths.image(img), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_api::storage::SdUuid;
    use std::os::unix::fs::symlink;

    fn ids() -> (SdUuid, ImgUuid, VolUuid) {
        (
            "3c4e0bde-7c3f-4f9a-9d1a-2b2a3f3e4d5c".parse().unwrap(),
            "5b1c1f4e-8a43-4a4e-9d59-3f0e2a1c7b11".parse().unwrap(),
            "9a8b7c6d-1111-4222-8333-444455556666".parse().unwrap(),
        )
    }

    #[test]
    fn file_volume_behind_a_symlink_is_254() {
        let t = tempfile::tempdir().unwrap();
        let (_, img, vol) = ids();
        let paths = DomainPaths::new(t.path().join("dom"));
        std::fs::create_dir_all(paths.image(img)).unwrap();
        let data = VolumeData::file(&paths, img, vol);
        assert_eq!(data.path(), paths.volume(img, vol));
        std::fs::write(paths.volume(img, vol), b"x").unwrap();
        data.check(Code::VolumeCopyError, "copy").unwrap();
        check_image_dir(&paths, img, "delete").unwrap();

        let outside = t.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::fs::remove_file(paths.volume(img, vol)).unwrap();
        symlink(&outside, paths.volume(img, vol)).unwrap();
        let e = data.check(Code::VolumeCopyError, "copy").unwrap_err();
        assert_eq!(e.code, Code::ImagePathError, "{e}");
        assert!(e.detail.contains("is a symbolic link"), "{e}");
        // A missing file keeps the caller's code.
        std::fs::remove_file(paths.volume(img, vol)).unwrap();
        let e = data.check(Code::VolumeCopyError, "copy").unwrap_err();
        assert_eq!(e.code, Code::VolumeCopyError, "{e}");

        // A symlinked image directory.
        std::fs::remove_dir(paths.image(img)).unwrap();
        symlink(t.path(), paths.image(img)).unwrap();
        let e = check_image_dir(&paths, img, "delete").unwrap_err();
        assert_eq!(e.code, Code::ImagePathError, "{e}");
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
    }

    #[test]
    fn block_volume_is_its_lv_through_the_link() {
        let (sd, img, vol) = ids();
        let paths = DomainPaths::new(PathBuf::from("/repo/mnt/blockSD").join(sd.to_string()));
        match VolumeData::block(&paths, &sd.to_string(), img, vol) {
            VolumeData::Block(l) => assert_eq!(l.path(), paths.volume(img, vol)),
            other => panic!("{other:?}"),
        }
    }
}
