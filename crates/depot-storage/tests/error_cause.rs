//! A storage error keeps what failed underneath as its `source()` (an
//! io::Error, a depot-os error with the command's own error below it),
//! while the code and the message oVirt sees stay as they were: real files,
//! the real qemu-img through depot-os's command runner.

mod support;

use std::error::Error;
use std::fs;
use std::io;
use std::time::Duration;

use depot_api::storage::{AllocType, DiskType, ImgUuid, SdUuid, VolUuid, VolumeFormat};
use depot_api::types::Uuid;
use depot_api::{ApiError, Code};
use depot_os::{CmdError, CommandRunner, ImageFormat, QemuImg, QemuImgError};
use depot_storage::file::volumes::FileVolumes;
use depot_storage::layout::DomainPaths;
use depot_storage::mount_fs::MountFs;
use depot_storage::volume_store::{CreateVolume, VolumeStore};
use depot_storage::StorageError;

const T: Duration = Duration::from_secs(60);

const MIB: u64 = 1024 * 1024;

/// A file domain's image tree in a temporary directory.
struct Dom {
    _tmp: tempfile::TempDir,
    paths: DomainPaths,
    sd: SdUuid,
    qemu: QemuImg,
    /// The helpers of the "mount" (the temporary directory).
    fs: MountFs,
}

impl Dom {
    fn new() -> Dom {
        let tmp = tempfile::tempdir().unwrap();
        let sd = SdUuid(Uuid::new_v4());
        let paths = DomainPaths::new(tmp.path().join(sd.to_string()));
        fs::create_dir_all(paths.images()).unwrap();
        Dom {
            fs: support::mount_helpers(tmp.path(), T),
            _tmp: tmp,
            paths,
            sd,
            qemu: QemuImg::new(CommandRunner::new()),
        }
    }

    fn vols(&self) -> FileVolumes<'_> {
        FileVolumes::new(&self.paths, &self.fs, self.sd, &self.qemu, T)
    }

    /// A COW volume whose data file is then overwritten with bytes that
    /// are no qcow2 image: qemu-img refuses it.
    fn broken_cow(&self) -> (ImgUuid, VolUuid) {
        let (img, vol) = (ImgUuid(Uuid::new_v4()), VolUuid(Uuid::new_v4()));
        let req = CreateVolume {
            capacity: 8 * MIB,
            format: VolumeFormat::Cow,
            alloc: AllocType::Sparse,
            disk_type: DiskType::Data,
            description: String::new(),
            parent: VolUuid::BLANK,
            legal: true,
            sequence: 1,
        };
        self.vols().create(img, vol, &req).unwrap();
        fs::write(self.paths.volume(img, vol), vec![0u8; 64 * 1024]).unwrap();
        (img, vol)
    }
}

/// The errors below `e`, nearest first.
fn chain<'a>(e: &'a (dyn Error + 'static)) -> Vec<&'a (dyn Error + 'static)> {
    let mut v = Vec::new();
    let mut next = e.source();
    while let Some(s) = next {
        v.push(s);
        next = s.source();
    }
    v
}

#[test]
fn missing_metadata_keeps_the_io_error() {
    let d = Dom::new();
    let (img, vol) = (ImgUuid(Uuid::new_v4()), VolUuid(Uuid::new_v4()));
    fs::create_dir_all(d.paths.image(img)).unwrap();
    let err = d.vols().info(img, vol).unwrap_err();
    assert_eq!(err.code, Code::VolumeDoesNotExist, "{err}");
    let io = err
        .source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .unwrap_or_else(|| panic!("no io::Error under {err:?}"));
    assert_eq!(io.kind(), io::ErrorKind::NotFound);
    assert_eq!(io.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn missing_metadata_message_is_unchanged() {
    let d = Dom::new();
    let (img, vol) = (ImgUuid(Uuid::new_v4()), VolUuid(Uuid::new_v4()));
    fs::create_dir_all(d.paths.image(img)).unwrap();
    let err = d.vols().info(img, vol).unwrap_err();
    let meta = d.paths.volume_meta(img, vol);
    // As the code before errors kept their cause said it, byte for byte.
    assert_eq!(
        err.to_string(),
        format!(
            "Volume does not exist: volume info: volume {vol} of image {img}: no {}",
            meta.display()
        )
    );
    let api = ApiError::from(err);
    assert_eq!(api.code, Code::VolumeDoesNotExist);
    assert_eq!(
        api.detail,
        format!(
            "volume info: volume {vol} of image {img}: no {}",
            meta.display()
        )
    );
}

#[test]
fn unreadable_metadata_keeps_the_error_underneath() {
    let d = Dom::new();
    let (img, vol) = (ImgUuid(Uuid::new_v4()), VolUuid(Uuid::new_v4()));
    // A directory where the .meta file should be: the mount's helper
    // refuses to open anything but a regular file (before issue 15 the
    // read failed with EISDIR in depotd's own thread).
    fs::create_dir_all(d.paths.volume_meta(img, vol)).unwrap();
    let err = d.vols().info(img, vol).unwrap_err();
    assert_eq!(err.code, Code::VolumeMetadataReadError, "{err}");
    let io = err
        .source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .unwrap_or_else(|| panic!("no io::Error under {err:?}"));
    let refused = depot_os::confine::refusal(io).unwrap_or_else(|| panic!("not a refusal: {io:?}"));
    assert!(refused.reason.contains("not a regular file"), "{refused:?}");
    let io = io.to_string();
    assert_eq!(
        ApiError::from(err).detail,
        format!(
            "volume info: {}: {io}",
            d.paths.volume_meta(img, vol).display(),
        )
    );
}

#[test]
fn failing_qemu_img_keeps_the_command_error() {
    let d = Dom::new();
    let (img, vol) = d.broken_cow();
    let err: StorageError = d.vols().extend(img, vol, 16 * MIB).unwrap_err();
    assert_eq!(err.code, Code::VolumeExtendingError, "{err}");
    let below = chain(&err);
    let qemu = below
        .first()
        .and_then(|s| s.downcast_ref::<QemuImgError>())
        .unwrap_or_else(|| panic!("no QemuImgError under {err:?}"));
    assert!(matches!(qemu, QemuImgError::Command { .. }), "{qemu:?}");
    // And below qemu-img's error, the runner's: the command, its exit.
    // (QemuImgError holds it boxed: the source is the Box.)
    let cmd = below
        .get(1)
        .and_then(|s| {
            s.downcast_ref::<Box<CmdError>>()
                .map(|b| &**b)
                .or_else(|| s.downcast_ref::<CmdError>())
        })
        .unwrap_or_else(|| panic!("no CmdError under {qemu:?}"));
    assert!(matches!(cmd, CmdError::Failed { .. }), "{cmd:?}");
    assert!(cmd.to_string().contains("qemu-img"), "{cmd}");
    assert_eq!(
        below.len(),
        2,
        "nothing below the command's error: {below:?}"
    );
}

#[test]
fn failing_qemu_img_message_is_unchanged() {
    let d = Dom::new();
    let (img, vol) = d.broken_cow();
    let data = d.paths.volume(img, vol);
    // What qemu-img's wrapper says of this file, asked directly.
    let qemu = d.qemu.info(&data, Some(ImageFormat::Qcow2), T).unwrap_err();
    let err = d.vols().extend(img, vol, 16 * MIB).unwrap_err();
    // As before: "<op>: <data path>: <the qemu-img error>".
    let api = ApiError::from(err);
    assert_eq!(api.code, Code::VolumeExtendingError);
    assert_eq!(
        api.detail,
        format!("extend volume: {}: {qemu}", data.display())
    );
}
