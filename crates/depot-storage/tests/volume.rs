//! File-domain volumes and images on real files, with the real qemu-img.

mod support;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use depot_api::storage::{
    AllocType, DiskType, ImgUuid, Legality, SdUuid, VolType, VolUuid, VolumeFormat,
};
use depot_api::types::Uuid;
use depot_api::Code;
use depot_os::{CommandRunner, ImageFormat, QemuImg};
use depot_storage::file::images::{recover, Recovered};
use depot_storage::file::volumes::{wipe_file, FileVolumes};
use depot_storage::layout::DomainPaths;
use depot_storage::metadata::VolumeMetadata;
use depot_storage::mount_fs::MountFs;
use depot_storage::volume_store::{CreateVolume, VolumeStore};

const T: Duration = Duration::from_secs(60);

const MIB: u64 = 1024 * 1024;

/// `<tmp>/<sd>/images`, as a file domain is laid out.
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

    fn meta(&self, img: ImgUuid, vol: VolUuid) -> VolumeMetadata {
        VolumeMetadata::parse(&fs::read(self.paths.volume_meta(img, vol)).unwrap()).unwrap()
    }

    /// Names in the image directory, sorted; empty if it does not exist.
    fn files(&self, img: ImgUuid) -> Vec<String> {
        names(&self.paths.image(img))
    }

    fn image_names(&self) -> Vec<String> {
        names(&self.paths.images())
    }
}

fn names(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn img() -> ImgUuid {
    ImgUuid(Uuid::new_v4())
}

fn vol() -> VolUuid {
    VolUuid(Uuid::new_v4())
}

fn req(format: VolumeFormat, alloc: AllocType, capacity: u64, parent: VolUuid) -> CreateVolume {
    CreateVolume {
        capacity,
        format,
        alloc,
        disk_type: DiskType::Data,
        description: r#"{"DiskAlias":"d1","DiskDescription":""}"#.to_string(),
        parent,
        legal: true,
        sequence: 1,
    }
}

fn raw(capacity: u64) -> CreateVolume {
    req(
        VolumeFormat::Raw,
        AllocType::Sparse,
        capacity,
        VolUuid::BLANK,
    )
}

fn cow(capacity: u64, parent: VolUuid) -> CreateVolume {
    req(VolumeFormat::Cow, AllocType::Sparse, capacity, parent)
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

fn volume_files(vol: VolUuid) -> Vec<String> {
    let mut v = vec![
        vol.to_string(),
        format!("{vol}.lease"),
        format!("{vol}.meta"),
    ];
    v.sort();
    v
}

#[test]
fn create_raw_sparse() {
    let d = Dom::new();
    let (i, v) = (img(), vol());
    let md = d.vols().create(i, v, &raw(64 * MIB)).unwrap();
    assert_eq!(d.files(i), volume_files(v));
    assert_eq!(d.meta(i, v), md);
    assert_eq!(md.domain, d.sd);
    assert_eq!(md.image, i);
    assert!(md.parent.is_blank());
    assert_eq!(md.capacity, 64 * MIB);
    assert_eq!(
        (md.format, md.alloc_type),
        (VolumeFormat::Raw, AllocType::Sparse)
    );
    assert_eq!((md.vol_type, md.legality), (VolType::Leaf, Legality::Legal));
    assert_eq!((md.generation, md.sequence), (0, 1));
    assert!(md.ctime > 1_700_000_000);

    let info = d.vols().info(i, v).unwrap();
    assert_eq!(info.apparent_size, 64 * MIB);
    assert!(info.true_size < MIB, "{info:?}");
    assert_eq!(info.path, d.paths.volume(i, v));
    for p in [
        d.paths.volume(i, v),
        d.paths.volume_meta(i, v),
        d.paths.volume_lease(i, v),
    ] {
        assert_eq!(mode(&p), 0o660, "{}", p.display());
    }
    assert_eq!(fs::metadata(d.paths.volume_lease(i, v)).unwrap().len(), 0);
    // Capacities are rounded up to 4 KiB, as VDSM does.
    let v2 = vol();
    assert_eq!(
        d.vols().create(i, v2, &raw(MIB + 1)).unwrap().capacity,
        MIB + 4096
    );
    assert_eq!(d.vols().size(i, v2).unwrap().0, MIB + 4096);
}

#[test]
fn create_raw_preallocated() {
    let d = Dom::new();
    let (i, v) = (img(), vol());
    let r = req(
        VolumeFormat::Raw,
        AllocType::Preallocated,
        16 * MIB,
        VolUuid::BLANK,
    );
    d.vols().create(i, v, &r).unwrap();
    let (apparent, allocated) = d.vols().size(i, v).unwrap();
    assert_eq!(apparent, 16 * MIB);
    assert!(allocated >= 16 * MIB, "{allocated}");
    assert_eq!(d.meta(i, v).alloc_type, AllocType::Preallocated);
}

#[test]
fn create_cow_base_and_child() {
    let d = Dom::new();
    let (i, base, top) = (img(), vol(), vol());
    d.vols()
        .create(i, base, &cow(32 * MIB, VolUuid::BLANK))
        .unwrap();
    let info = d
        .qemu
        .info(&d.paths.volume(i, base), Some(ImageFormat::Qcow2), T)
        .unwrap();
    assert_eq!(info.virtual_size, 32 * MIB);
    assert_eq!(info.compat.as_deref(), Some("1.1"));
    assert_eq!(info.backing_filename, None);
    assert_eq!(mode(&d.paths.volume(i, base)), 0o660);

    let md = d.vols().create(i, top, &cow(32 * MIB, base)).unwrap();
    assert_eq!(md.parent, base);
    assert_eq!(md.vol_type, VolType::Leaf);
    let info = d
        .qemu
        .info(&d.paths.volume(i, top), Some(ImageFormat::Qcow2), T)
        .unwrap();
    // Relative: the volume file name of the parent, as VDSM writes it.
    assert_eq!(
        info.backing_filename.as_deref(),
        Some(base.to_string().as_str())
    );
    assert_eq!(info.backing_format.as_deref(), Some("qcow2"));
    assert_eq!(info.compat.as_deref(), Some("1.1"));
    assert_eq!(d.meta(i, base).vol_type, VolType::Internal);
    assert_eq!(d.vols().info(i, base).unwrap().children, vec![top]);
    assert!(d.vols().info(i, top).unwrap().children.is_empty());

    // A COW child of a RAW base gets backing format raw.
    let (i2, rb, rt) = (img(), vol(), vol());
    d.vols().create(i2, rb, &raw(8 * MIB)).unwrap();
    d.vols().create(i2, rt, &cow(8 * MIB, rb)).unwrap();
    let info = d
        .qemu
        .info(&d.paths.volume(i2, rt), Some(ImageFormat::Qcow2), T)
        .unwrap();
    assert_eq!(info.backing_format.as_deref(), Some("raw"));
    assert_eq!(d.meta(i2, rb).vol_type, VolType::Internal);
}

#[test]
fn create_cow_preallocated_base() {
    let d = Dom::new();
    let (i, v) = (img(), vol());
    let r = req(
        VolumeFormat::Cow,
        AllocType::Preallocated,
        16 * MIB,
        VolUuid::BLANK,
    );
    d.vols().create(i, v, &r).unwrap();
    let (apparent, allocated) = d.vols().size(i, v).unwrap();
    assert_eq!(apparent, 16 * MIB);
    assert!(allocated >= 15 * MIB, "{allocated}");
    let c = d.qemu.check(&d.paths.volume(i, v), T).unwrap();
    assert!(c.is_clean(), "{c:?}");
}

#[test]
fn refusals_leave_nothing_behind() {
    let d = Dom::new();
    let (i, base) = (img(), vol());
    d.vols().create(i, base, &raw(8 * MIB)).unwrap();
    let before = d.files(i);
    let base_meta = d.meta(i, base);
    let code =
        |i: ImgUuid, v: VolUuid, r: &CreateVolume| d.vols().create(i, v, r).unwrap_err().code;

    // RAW with a parent.
    let r = req(VolumeFormat::Raw, AllocType::Sparse, 8 * MIB, base);
    assert_eq!(code(i, vol(), &r), Code::IncorrectFormat);
    // Size 0.
    assert_eq!(code(i, vol(), &raw(0)), Code::CreateVolumeSizeError);
    // Duplicate.
    assert_eq!(code(i, base, &raw(8 * MIB)), Code::VolumeAlreadyExists);
    // Long description, and one with a line break.
    let mut r = raw(MIB);
    r.description = "d".repeat(211);
    assert_eq!(code(i, vol(), &r), Code::MetaDataValidationError);
    r.description = "a\nb".into();
    assert_eq!(code(i, vol(), &r), Code::MetaDataValidationError);
    // Missing parent.
    assert_eq!(
        code(i, vol(), &cow(8 * MIB, vol())),
        Code::VolumeDoesNotExist
    );
    // Smaller than the parent.
    assert_eq!(
        code(i, vol(), &cow(4 * MIB, base)),
        Code::InvalidParameterException
    );
    // BLANK id, own parent.
    assert_eq!(
        code(i, VolUuid::BLANK, &raw(MIB)),
        Code::InvalidParameterException
    );
    let v = vol();
    assert_eq!(code(i, v, &cow(MIB, v)), Code::InvalidParameterException);
    // ILLEGAL parent.
    d.vols().set_legality(i, base, Legality::Illegal).unwrap();
    assert_eq!(
        code(i, vol(), &cow(8 * MIB, base)),
        Code::VolumeDoesNotExist
    );
    d.vols().set_legality(i, base, Legality::Legal).unwrap();

    assert_eq!(d.files(i), before);
    assert_eq!(d.meta(i, base), base_meta);
    // A refused first volume of a new image does not create the image.
    let i2 = img();
    assert_eq!(code(i2, vol(), &raw(0)), Code::CreateVolumeSizeError);
    assert_eq!(code(i2, vol(), &cow(MIB, vol())), Code::VolumeDoesNotExist);
    assert_eq!(d.image_names(), vec![i.to_string()]);
}

#[test]
fn failure_midway_is_rolled_back() {
    let d = Dom::new();
    let (i, base) = (img(), vol());
    d.vols()
        .create(i, base, &cow(8 * MIB, VolUuid::BLANK))
        .unwrap();
    let before = d.files(i);
    // A qemu-img that always fails: the data file cannot be made.
    let broken = QemuImg::with_program(CommandRunner::new(), "false");
    let vols = FileVolumes::new(&d.paths, &d.fs, d.sd, &broken, T);
    let err = vols.create(i, vol(), &cow(8 * MIB, base)).unwrap_err();
    assert_eq!(err.code, Code::VolumeCreationError, "{err}");
    assert_eq!(d.files(i), before);
    assert_eq!(d.meta(i, base).vol_type, VolType::Leaf);
    // In a new image, the image directory goes too.
    let err = vols
        .create(img(), vol(), &cow(8 * MIB, VolUuid::BLANK))
        .unwrap_err();
    assert_eq!(err.code, Code::VolumeCreationError, "{err}");
    assert_eq!(d.image_names(), vec![i.to_string()]);
}

#[test]
fn info_fields_and_errors() {
    let d = Dom::new();
    let (i, a, b, c) = (img(), vol(), vol(), vol());
    d.vols()
        .create(i, a, &cow(8 * MIB, VolUuid::BLANK))
        .unwrap();
    d.vols().create(i, b, &cow(8 * MIB, a)).unwrap();
    let info = d.vols().info(i, a).unwrap();
    assert_eq!(info.volume, a);
    assert_eq!(info.metadata.vol_type, VolType::Internal);
    assert_eq!(info.children, vec![b]);
    assert!(
        info.apparent_size > 0 && info.apparent_size < MIB,
        "{info:?}"
    );
    assert!(info.true_size > 0);
    assert!(info.mtime > 1_700_000_000);

    // Missing volume, missing .meta, missing data, bad record.
    assert_eq!(
        d.vols().info(i, c).unwrap_err().code,
        Code::VolumeDoesNotExist
    );
    assert_eq!(
        d.vols().info(img(), c).unwrap_err().code,
        Code::VolumeDoesNotExist
    );
    fs::write(d.paths.volume(i, c), b"").unwrap();
    assert_eq!(
        d.vols().info(i, c).unwrap_err().code,
        Code::VolumeDoesNotExist
    );
    fs::write(d.paths.volume_meta(i, c), b"FOO=1\nEOF\n").unwrap();
    assert_eq!(
        d.vols().info(i, c).unwrap_err().code,
        Code::MetaDataKeyError
    );
    let mut md = d.meta(i, b);
    md.capacity = 1;
    let text = String::from_utf8(md.to_bytes().unwrap())
        .unwrap()
        .replace("CAP=1", "CAP=one");
    fs::write(d.paths.volume_meta(i, c), text).unwrap();
    let err = d.vols().info(i, c).unwrap_err();
    assert_eq!(err.code, Code::MetaDataValidationError);
    assert!(err.detail.contains("CAP"), "{err}");
    fs::remove_file(d.paths.volume(i, b)).unwrap();
    assert_eq!(
        d.vols().info(i, b).unwrap_err().code,
        Code::VolumeDoesNotExist
    );
}

/// What getInfo and a RAW create cost in helper calls (round trips): one
/// for getInfo of a volume alone in its image (listing, record and stat in
/// one batch), a second for the other records of its image (the
/// children); 13 for a create in a new image (no chmod of the data file:
/// the helper made it with its mode; the lease made, with its mode, and
/// fsynced in one call).
#[test]
fn info_and_create_calls() {
    let d = Dom::new();
    let calls = || d.fs.pool().health().calls;
    let (i, a) = (img(), vol());
    let before = calls();
    d.vols().create(i, a, &raw(MIB)).unwrap();
    let create = calls() - before;
    // The listing, the image directory, the marker, the data, the lease,
    // the one record (no parent: no ILLEGAL record first) and the marker's
    // removal.
    assert!(create <= 7, "a RAW create made {create} calls");
    assert_eq!(mode(&d.paths.volume(i, a)), 0o660);
    assert_eq!(mode(&d.paths.volume_lease(i, a)), 0o660);

    let before = calls();
    let info = d.vols().info(i, a).unwrap();
    assert_eq!(calls() - before, 1, "getInfo of a volume alone");
    assert_eq!((info.apparent_size, info.children.len()), (MIB, 0));

    let (j, base, top) = (img(), vol(), vol());
    d.vols()
        .create(j, base, &cow(8 * MIB, VolUuid::BLANK))
        .unwrap();
    d.vols().create(j, top, &cow(8 * MIB, base)).unwrap();
    let before = calls();
    assert_eq!(d.vols().info(j, base).unwrap().children, vec![top]);
    assert_eq!(calls() - before, 2, "getInfo with another volume");
    // Errors keep their meaning: a volume being created, a missing one.
    fs::write(d.paths.volume_creating(i, a), b"").unwrap();
    assert_eq!(
        d.vols().info(i, a).unwrap_err().code,
        Code::VolumeDoesNotExist
    );
    assert_eq!(
        d.vols().info(img(), vol()).unwrap_err().code,
        Code::VolumeDoesNotExist
    );
}

#[test]
fn list_and_images() {
    let d = Dom::new();
    let (i1, i2) = (img(), img());
    let (a, b, c) = (vol(), vol(), vol());
    d.vols().create(i1, a, &raw(MIB)).unwrap();
    d.vols().create(i1, b, &cow(MIB, a)).unwrap();
    d.vols().create(i2, c, &raw(MIB)).unwrap();
    // Leftovers that are not images or not volumes.
    fs::create_dir(d.paths.images().join(format!("_remove_me_{}", img()))).unwrap();
    fs::create_dir(d.paths.images().join("not-an-image")).unwrap();
    fs::create_dir(d.paths.images().join(i1.to_string().to_uppercase())).unwrap();
    fs::write(d.paths.images().join(img().to_string()), b"a file").unwrap();
    // A volume being created.
    let half = vol();
    fs::write(d.paths.volume_creating(i1, half), b"").unwrap();
    fs::write(
        d.paths.volume_meta(i1, half),
        d.meta(i1, a).to_bytes().unwrap(),
    )
    .unwrap();

    let mut want = vec![i1, i2];
    want.sort();
    assert_eq!(d.vols().images().unwrap(), want);
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(d.vols().list(Some(i1)).unwrap(), want);
    assert_eq!(d.vols().list(Some(i2)).unwrap(), vec![c]);
    assert!(d.vols().list(Some(img())).unwrap().is_empty());
    let mut want = vec![a, b, c];
    want.sort();
    assert_eq!(d.vols().list(None).unwrap(), want);
    // The half-created volume reads as missing.
    assert_eq!(
        d.vols().info(i1, half).unwrap_err().code,
        Code::VolumeDoesNotExist
    );
}

#[test]
fn description_and_legality_round_trip() {
    let d = Dom::new();
    let (i, v) = (img(), vol());
    d.vols().create(i, v, &raw(MIB)).unwrap();
    let desc = format!("é{}", "x".repeat(209));
    d.vols().set_description(i, v, &desc).unwrap();
    assert_eq!(d.meta(i, v).description, desc);
    let err = d
        .vols()
        .set_description(i, v, &"y".repeat(211))
        .unwrap_err();
    assert_eq!(err.code, Code::MetaDataValidationError);
    assert_eq!(d.meta(i, v).description, desc);

    d.vols().set_legality(i, v, Legality::Illegal).unwrap();
    assert_eq!(
        d.vols().info(i, v).unwrap().metadata.legality,
        Legality::Illegal
    );
    d.vols().set_legality(i, v, Legality::Legal).unwrap();
    assert_eq!(d.meta(i, v).legality, Legality::Legal);

    let md = d
        .vols()
        .update(
            i,
            v,
            Box::new(|m: &mut VolumeMetadata| {
                m.generation = 5;
                Ok(())
            }),
        )
        .unwrap();
    assert_eq!(d.meta(i, v), md);
    assert_eq!(md.generation, 5);
    assert_eq!(mode(&d.paths.volume_meta(i, v)), 0o660);
    // Nothing but the volume's files: no temporaries left.
    assert_eq!(d.files(i), volume_files(v));
    assert_eq!(
        d.vols()
            .set_legality(i, vol(), Legality::Legal)
            .unwrap_err()
            .code,
        Code::VolumeDoesNotExist
    );
}

#[test]
fn extend_raw_and_cow() {
    let d = Dom::new();
    let (i, qi) = (img(), img());
    let (sparse, pre, q) = (vol(), vol(), vol());
    d.vols().create(i, sparse, &raw(8 * MIB)).unwrap();
    let r = req(
        VolumeFormat::Raw,
        AllocType::Preallocated,
        8 * MIB,
        VolUuid::BLANK,
    );
    d.vols().create(i, pre, &r).unwrap();
    d.vols()
        .create(qi, q, &cow(8 * MIB, VolUuid::BLANK))
        .unwrap();

    assert_eq!(
        d.vols().extend(i, sparse, 16 * MIB).unwrap().capacity,
        16 * MIB
    );
    let (apparent, allocated) = d.vols().size(i, sparse).unwrap();
    assert_eq!(apparent, 16 * MIB);
    assert!(allocated < MIB);

    assert_eq!(
        d.vols().extend(i, pre, 20 * MIB).unwrap().capacity,
        20 * MIB
    );
    let (apparent, allocated) = d.vols().size(i, pre).unwrap();
    assert_eq!(apparent, 20 * MIB);
    assert!(allocated >= 20 * MIB);

    assert_eq!(d.vols().extend(qi, q, 24 * MIB).unwrap().capacity, 24 * MIB);
    let info = d
        .qemu
        .info(&d.paths.volume(qi, q), Some(ImageFormat::Qcow2), T)
        .unwrap();
    assert_eq!(info.virtual_size, 24 * MIB);
    assert_eq!(d.meta(qi, q).capacity, 24 * MIB);

    // Same size: fine. Smaller: refused, nothing changed.
    assert_eq!(
        d.vols().extend(i, sparse, 16 * MIB).unwrap().capacity,
        16 * MIB
    );
    for (im, v) in [(i, sparse), (i, pre), (qi, q)] {
        let err = d.vols().extend(im, v, 4 * MIB).unwrap_err();
        assert_eq!(err.code, Code::VolumeResizeValueError, "{err}");
    }
    assert_eq!(d.vols().size(i, sparse).unwrap().0, 16 * MIB);
    assert_eq!(d.meta(qi, q).capacity, 24 * MIB);
    // An internal volume that is not a base cannot be written.
    let (mid, top) = (vol(), vol());
    d.vols().create(qi, mid, &cow(24 * MIB, q)).unwrap();
    d.vols().create(qi, top, &cow(24 * MIB, mid)).unwrap();
    let err = d.vols().extend(qi, mid, 32 * MIB).unwrap_err();
    assert_eq!(err.code, Code::VolumeExtendingError, "{err}");
}

#[test]
fn wipe_overwrites_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vol");
    // Not a multiple of the chunk, nor of the alignment.
    let len = 9 * MIB as usize + 4096 + 17;
    fs::write(&p, vec![0xAA; len]).unwrap();
    let before = fs::metadata(&p).unwrap();
    let written = wipe_file(&support::mount_helpers(dir.path(), T), &p).unwrap();
    assert_eq!(written, len as u64);
    let after = fs::metadata(&p).unwrap();
    assert_eq!(after.len(), len as u64);
    assert_eq!(after.ino(), before.ino());
    // Still allocated: zeros were written, no hole was punched.
    assert!(after.blocks() >= before.blocks(), "{before:?} {after:?}");
    assert!(after.blocks() * 512 >= len as u64);
    assert!(fs::read(&p).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn delete_volumes() {
    let d = Dom::new();
    let (i, base, top) = (img(), vol(), vol());
    d.vols()
        .create(i, base, &cow(8 * MIB, VolUuid::BLANK))
        .unwrap();
    d.vols().create(i, top, &cow(8 * MIB, base)).unwrap();
    // Write something into the top volume's file so the wipe has work.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(d.paths.volume(i, top))
        .unwrap();
    f.write_all_at(&[0xAA; 4096], 1 << 20).unwrap();
    drop(f);

    let err = d.vols().delete(i, base, false, false).unwrap_err();
    assert_eq!(err.code, Code::VolumeImageHasChildren, "{err}");
    assert!(err.detail.contains(&top.to_string()), "{err}");
    assert_eq!(d.meta(i, base).legality, Legality::Legal);

    d.vols().delete(i, top, true, false).unwrap();
    assert_eq!(d.files(i), volume_files(base));
    assert_eq!(d.meta(i, base).vol_type, VolType::Leaf);
    assert_eq!(
        d.vols().delete(i, top, false, false).unwrap_err().code,
        Code::VolumeDoesNotExist
    );

    // The last volume takes the image directory with it.
    d.vols().delete(i, base, false, false).unwrap();
    assert!(d.image_names().is_empty());

    // force deletes a parent; a volume with a broken record can be deleted.
    let (i, base, top) = (img(), vol(), vol());
    d.vols().create(i, base, &raw(MIB)).unwrap();
    d.vols().create(i, top, &cow(MIB, base)).unwrap();
    d.vols().delete(i, base, false, true).unwrap();
    assert_eq!(d.files(i), volume_files(top));
    fs::write(d.paths.volume_meta(i, top), b"garbage").unwrap();
    d.vols().delete(i, top, false, false).unwrap();
    assert!(d.image_names().is_empty());
}

#[test]
fn delete_image_removes_everything() {
    let d = Dom::new();
    let (i, keep) = (img(), img());
    let (a, b, k) = (vol(), vol(), vol());
    d.vols().create(i, a, &raw(4 * MIB)).unwrap();
    d.vols().create(i, b, &cow(4 * MIB, a)).unwrap();
    d.vols().create(keep, k, &raw(MIB)).unwrap();
    fs::write(d.paths.volume(i, a), vec![0xAA; 4 * MIB as usize]).unwrap();
    d.vols().delete_image(i, true).unwrap();
    assert_eq!(d.image_names(), vec![keep.to_string()]);
    assert_eq!(d.vols().list(None).unwrap(), vec![k]);
    let err = d.vols().delete_image(i, false).unwrap_err();
    assert_eq!(err.code, Code::ImageDoesNotExistInSD, "{err}");

    // An interrupted deletion is finished by the next one.
    let j = img();
    d.vols().create(j, vol(), &raw(MIB)).unwrap();
    let removed = d.paths.images().join(format!("_remove_me_{j}"));
    fs::rename(d.paths.image(j), &removed).unwrap();
    d.vols().delete_image(j, false).unwrap();
    assert_eq!(d.image_names(), vec![keep.to_string()]);
}

#[test]
fn chain_base_to_leaf() {
    let d = Dom::new();
    let (i, a, b, c) = (img(), vol(), vol(), vol());
    d.vols().create(i, a, &raw(MIB)).unwrap();
    d.vols().create(i, b, &cow(MIB, a)).unwrap();
    d.vols().create(i, c, &cow(MIB, b)).unwrap();
    let chain = d.vols().chain(i, c, false).unwrap();
    let ids: Vec<VolUuid> = chain.iter().map(|v| v.volume).collect();
    assert_eq!(ids, vec![a, b, c]);
    assert_eq!(chain[0].children, vec![b]);
    assert_eq!(chain[1].children, vec![c]);
    assert_eq!(chain[1].metadata.vol_type, VolType::Internal);
    assert_eq!(d.vols().chain(i, a, false).unwrap().len(), 1);

    d.vols().set_legality(i, b, Legality::Illegal).unwrap();
    let err = d.vols().chain(i, c, false).unwrap_err();
    assert_eq!(err.code, Code::PrepareIllegalVolumeError, "{err}");
    assert_eq!(d.vols().chain(i, c, true).unwrap().len(), 3);

    fs::remove_file(d.paths.volume_meta(i, a)).unwrap();
    let err = d.vols().chain(i, c, true).unwrap_err();
    assert_eq!(err.code, Code::VolumeDoesNotExist, "{err}");
    assert!(err.detail.contains(&a.to_string()), "{err}");
    assert_eq!(
        d.vols().chain(img(), c, true).unwrap_err().code,
        Code::ImageDoesNotExistInSD
    );
}

/// What a crash between steps of `create` leaves: the marker, an ILLEGAL
/// record, maybe data and lease, and the parent already INTERNAL.
fn half_create(d: &Dom, i: ImgUuid, v: VolUuid, parent: VolUuid, with_data: bool) {
    fs::create_dir_all(d.paths.image(i)).unwrap();
    fs::write(d.paths.volume_creating(i, v), b"").unwrap();
    let md = VolumeMetadata {
        domain: d.sd,
        image: i,
        parent,
        capacity: MIB,
        format: VolumeFormat::Cow,
        alloc_type: AllocType::Sparse,
        vol_type: VolType::Leaf,
        disk_type: DiskType::Data,
        description: String::new(),
        legality: Legality::Illegal,
        ctime: 1,
        generation: 0,
        sequence: 0,
    };
    fs::write(d.paths.volume_meta(i, v), md.to_bytes().unwrap()).unwrap();
    if with_data {
        fs::write(d.paths.volume(i, v), b"qcow").unwrap();
        fs::write(d.paths.volume_lease(i, v), b"").unwrap();
    }
    fs::write(
        d.paths
            .image(i)
            .join(format!(".{v}.meta.tmp-0123456789abcdef")),
        b"x",
    )
    .unwrap();
}

#[test]
fn recover_cleans_crash_leftovers() {
    let d = Dom::new();
    let (i, base, top) = (img(), vol(), vol());
    d.vols().create(i, base, &cow(MIB, VolUuid::BLANK)).unwrap();
    d.vols().create(i, top, &cow(MIB, base)).unwrap();
    let before = d.files(i);

    // A second child of `base` that never finished: base stays INTERNAL.
    let half1 = vol();
    half_create(&d, i, half1, base, true);
    // A child of `top` that never finished: top was made INTERNAL, and
    // goes back to LEAF.
    let half2 = vol();
    half_create(&d, i, half2, top, false);
    d.vols()
        .update(
            i,
            top,
            Box::new(|m: &mut VolumeMetadata| {
                m.vol_type = VolType::Internal;
                Ok(())
            }),
        )
        .unwrap();
    // The first volume of a new image: the image goes too.
    let (ni, nv) = (img(), vol());
    half_create(&d, ni, nv, VolUuid::BLANK, true);
    // The marker alone (crash right after step 2).
    let (mi, mv) = (img(), vol());
    fs::create_dir(d.paths.image(mi)).unwrap();
    fs::write(d.paths.volume_creating(mi, mv), b"").unwrap();
    // A volume without a parent, after its data and lease (step 4): its
    // record is written only at the end, so there is none yet.
    let (di, dv) = (img(), vol());
    fs::create_dir(d.paths.image(di)).unwrap();
    fs::write(d.paths.volume_creating(di, dv), b"").unwrap();
    fs::write(d.paths.volume(di, dv), b"raw").unwrap();
    fs::write(d.paths.volume_lease(di, dv), b"").unwrap();
    // An interrupted image deletion.
    let stale = d.paths.images().join("_remove_me_x");
    fs::create_dir(&stale).unwrap();
    fs::write(stale.join(vol().to_string()), b"data").unwrap();
    fs::write(stale.join("whatever.meta"), b"meta").unwrap();
    let stale_zero = d.paths.images().join(format!("_remove_me_ZERO_{}", img()));
    fs::create_dir(&stale_zero).unwrap();
    fs::write(stale_zero.join(vol().to_string()), vec![0xAA; 8192]).unwrap();

    // Creating over a half-created volume is refused and changes nothing.
    let files = d.files(i);
    let err = d.vols().create(i, half1, &raw(MIB)).unwrap_err();
    assert_eq!(err.code, Code::VolumeAlreadyExists, "{err}");
    assert_eq!(d.files(i), files);

    let report = recover(&d.fs, &d.paths).unwrap();
    assert!(report.failed.is_empty(), "{report}");
    assert_eq!(report.cleaned.len(), 7, "{report}");
    assert!(report.cleaned.contains(&Recovered::HalfCreatedVolume {
        image: i,
        volume: half2
    }));
    assert!(report
        .cleaned
        .contains(&Recovered::RemovedImage("_remove_me_x".into())));
    eprintln!("{report}");

    assert_eq!(d.files(i), before);
    assert_eq!(d.meta(i, base).vol_type, VolType::Internal);
    assert_eq!(d.meta(i, top).vol_type, VolType::Leaf);
    assert_eq!(d.meta(i, top).legality, Legality::Legal);
    assert_eq!(d.image_names(), vec![i.to_string()]);
    assert_eq!(d.vols().chain(i, top, false).unwrap().len(), 2);

    // Nothing left to do the second time.
    assert!(recover(&d.fs, &d.paths).unwrap().is_empty());
    // A domain without images/ has nothing to recover.
    let empty = DomainPaths::new(d.fs.root().join("nonexistent-depot-test"));
    assert!(recover(&d.fs, &empty).unwrap().is_empty());
}
