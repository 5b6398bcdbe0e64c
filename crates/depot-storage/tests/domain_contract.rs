//! The domain contract (`depot_storage::domain::Domain`): the same cases
//! run against a file domain (a directory, any tier) and a block domain
//! (a VG on a loop device, root tier). The block domain is made as
//! `StorageDomain.create` makes one, less what needs device-mapper: this
//! kernel has none (docs/testing.md), so lvm2 runs with
//! `global { activation = 0 }` and no LV is created or activated.
//!
//! Cases that need an active LV (volume create, extend, delete and the
//! volume metadata slots of a block domain, teardown of its LVs) run in
//! the VM tier: tests/vm's vm_block and vm_copy.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use depot_api::storage::{DomainClass, DomainType, ImgUuid, SdUuid, VolUuid};
use depot_api::types::Uuid;
use depot_api::Code;
use depot_os::lvm::Lvm;
use depot_os::{CommandRunner, DataPath, QemuImg};
use depot_storage::block::{self, tags};
use depot_storage::domain::{BlockDomain, Domain, FileDomain, VolumeTools};
use depot_storage::domain_spec::alignment_for;
use depot_storage::layout::DomainPaths;
use depot_storage::metadata::domain::DomainMetadata;
use depot_storage::{CreateDomain, StorageError};

fn new_sd() -> SdUuid {
    SdUuid(Uuid::new_v4())
}

/// The cases every kind of domain passes. `d` is a new, empty Data
/// domain named `description`; the last case formats it.
fn contract_cases(d: &Domain, description: &str, repository: &std::path::Path) {
    let sd = d.sd();

    // Metadata reads back what the domain was made with.
    let md = d.read_metadata().unwrap();
    assert_eq!(md.sd_uuid, sd);
    assert_eq!(md.class, DomainClass::Data);
    assert_eq!(md.description, description);
    assert!(d.still_there().unwrap());

    // An update is read back; a refused change writes nothing.
    let changed = d
        .update_metadata(|md| md.set_description("renamed"))
        .unwrap();
    assert_eq!(changed.description, "renamed");
    assert_eq!(d.read_metadata().unwrap(), changed);
    let refused = d
        .update_metadata(|md| {
            md.set_description("never written")?;
            Err(StorageError::new(Code::GeneralException, "test", "refused"))
        })
        .unwrap_err();
    assert_eq!(refused.code, Code::GeneralException);
    assert_eq!(d.read_metadata().unwrap().description, "renamed");

    // Validation names this domain.
    assert_eq!(d.validate().unwrap().sd_uuid, sd);

    // Space figures.
    let stats = d.stats().unwrap();
    assert!(stats.total_bytes > 0, "{stats:?}");
    assert!(stats.free_bytes <= stats.total_bytes, "{stats:?}");

    // A volume's data is where the domain's paths say, through its
    // directory (file) or its link directory (block).
    let (img, vol) = (ImgUuid(Uuid::new_v4()), VolUuid(Uuid::new_v4()));
    assert_eq!(
        d.volume_data(img, vol).path(),
        d.paths().volume(img, vol).as_path()
    );

    // A new domain has no volumes and no images.
    let qemu = QemuImg::new(CommandRunner::new());
    let tools = VolumeTools {
        qemu: &qemu,
        timeout: Duration::from_secs(60),
    };
    let (vols, images) = d.volumes(tools, |v| (v.list(None), v.images()));
    assert_eq!(vols.unwrap(), Vec::<VolUuid>::new());
    assert_eq!(images.unwrap(), Vec::<ImgUuid>::new());
    assert_eq!(d.recover(tools).unwrap(), Vec::<String>::new());

    // Formatted, it is gone: 358 from then on.
    d.format(repository).unwrap();
    assert!(!d.still_there().unwrap());
    let e = d.read_metadata().unwrap_err();
    assert_eq!(e.code, Code::StorageDomainDoesNotExist, "{e}");
}

#[test]
fn file_domain_keeps_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("mnt").join("server:_export");
    std::fs::create_dir_all(&mount).unwrap();
    let sd = new_sd();
    let req = CreateDomain {
        sd,
        domain_type: DomainType::LocalFs,
        class: DomainClass::Data,
        description: "contract file".into(),
        remote_path: mount.display().to_string(),
        block_size: None,
        max_hosts: 250,
        backup: false,
    };
    let fs = depot_storage::mount_fs::MountFs::in_process(&mount, Duration::from_secs(30));
    let paths = depot_storage::file::domain::create(&fs, &mount, &req).unwrap();
    let d = Domain::File(FileDomain { sd, paths, fs });
    // A file domain's calls run on its mount's I/O worker.
    assert_eq!(d.mount_root(), Some(mount.join(sd.to_string()).as_path()));
    assert!(!d.is_block());
    contract_cases(&d, "contract file", tmp.path());
    assert!(!mount.join(sd.to_string()).exists());
}

/// A loop device over a sparse file; detached on drop.
struct Loop {
    _lo: depot_testkit::LoopDevice,
    dev: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new(size: u64) -> Loop {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let lo = depot_testkit::LoopDevice::attach(&img);
        let dev = lo.path().to_owned();
        Loop {
            _lo: lo,
            dev,
            _dir: dir,
        }
    }
}

/// A block domain's VG as `LVMVolumeGroup.create` and then
/// `StorageDomain.create` leave it, without the special LVs (they need
/// activation): the metadata in the VG's tags, marked complete.
fn block_domain(lvm: &Lvm, dev: &PathBuf, sd: SdUuid, description: &str) -> DomainMetadata {
    let vg_uuid =
        block::create_vg(lvm, &block::vg_name(sd), std::slice::from_ref(dev), false).unwrap();
    let mut md = DomainMetadata::new_file(
        sd,
        DomainType::LocalFs,
        DomainClass::Data,
        description,
        "",
        512,
        alignment_for(512, 250),
    )
    .unwrap();
    md.domain_type = DomainType::Iscsi;
    md.extra.insert(block::KEY_VGUUID.into(), vg_uuid);
    let mut add = tags::to_tags(&md.to_kv().unwrap());
    add.push(tags::DOMAIN_TAG.to_owned());
    lvm.vg_tags(&block::vg_name(sd), &add, &[tags::UNREADY_TAG.to_owned()])
        .unwrap();
    md
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn block_domain_keeps_the_contract() {
    depot_testkit::require_root();
    depot_testkit::require_program("lvm");
    let disk = Loop::new(2 << 30);
    let repository = tempfile::tempdir().unwrap();
    let lvm = Lvm::new(CommandRunner::new(), Duration::from_secs(60))
        .with_extra_config("global { activation = 0 } backup { backup = 0 archive = 0 }");
    let sd = new_sd();
    let md = block_domain(&lvm, &disk.dev, sd, "contract block");
    let root = block::ensure_links(repository.path(), sd).unwrap();
    let d = Domain::Block(BlockDomain {
        sd,
        paths: DomainPaths::new(root.clone()),
        lvm: lvm.clone(),
        block_size: md.block_size,
        slot_lock: Arc::new(Mutex::new(())),
    });
    // A block domain's calls run on the caller's thread: no mount.
    assert_eq!(d.mount_root(), None);
    assert!(d.is_block());
    let cleanup = VgCleanup(lvm.clone(), block::vg_name(sd), disk.dev.clone());
    contract_cases(&d, "contract block", repository.path());
    assert!(!root.exists(), "format removes the link directory");
    drop(cleanup);
}

/// Removes the VG and the PV label if a case failed before the format.
struct VgCleanup(Lvm, String, PathBuf);

impl Drop for VgCleanup {
    fn drop(&mut self) {
        if self.0.vg(&self.1).is_ok() {
            let _ = self.0.vgremove(&self.1);
        }
        let _ = self.0.pvremove(std::slice::from_ref(&self.2));
    }
}

/// Two hosts on one block domain, each with its own LVM wrapper (its own
/// cache of the VG's LVs): an image the other host (the SPM) created after
/// this host cached the list is found by this host's chain lookup (what
/// `Image.prepare` runs on a non-SPM host right after the SPM's
/// `Volume.create`), not refused with 268 until the cache ages out.
#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn a_chain_lookup_finds_an_image_another_host_created_after_its_cache() {
    depot_testkit::require_root();
    depot_testkit::require_program("lvm");
    let disk = Loop::new(1 << 30);
    let repository = tempfile::tempdir().unwrap();
    let config = "global { activation = 0 } backup { backup = 0 archive = 0 }";
    let here = Lvm::new(CommandRunner::new(), Duration::from_secs(60)).with_extra_config(config);
    let spm = Lvm::new(CommandRunner::new(), Duration::from_secs(60)).with_extra_config(config);
    let sd = new_sd();
    let md = block_domain(&spm, &disk.dev, sd, "two hosts");
    let vg = block::vg_name(sd);
    let cleanup = VgCleanup(spm.clone(), vg.clone(), disk.dev.clone());
    here.add_devices([disk.dev.clone()]);
    let d = Domain::Block(BlockDomain {
        sd,
        paths: DomainPaths::new(block::ensure_links(repository.path(), sd).unwrap()),
        lvm: here.clone(),
        block_size: md.block_size,
        slot_lock: Arc::new(Mutex::new(())),
    });
    let qemu = QemuImg::new(CommandRunner::new());
    let tools = VolumeTools {
        qemu: &qemu,
        timeout: Duration::from_secs(60),
    };
    let (img, vol) = (ImgUuid(Uuid::new_v4()), VolUuid(Uuid::new_v4()));
    // This host looks first: no such image, and its LV list is cached.
    let e = d.volumes(tools, |v| v.chain(img, vol, false)).unwrap_err();
    assert_eq!(e.code, Code::ImageDoesNotExistInSD, "{e}");
    // The SPM creates the volume's LV (as Volume.create tags it).
    spm.lvcreate(
        &vg,
        &vol.to_string(),
        128 << 20,
        &[
            format!("IU_{img}"),
            format!("PU_{}", Uuid::nil()),
            "MD_5".to_owned(),
        ],
    )
    .unwrap();
    // This host finds it at once. The lookup goes on to the volume's
    // metadata slot, which cannot be read without device-mapper here (the
    // VM tier's vm_two_hosts prepares such a volume end to end): any
    // error but "no such image" or "no such volume".
    let e = d.volumes(tools, |v| v.chain(img, vol, false)).unwrap_err();
    assert!(
        !matches!(
            e.code,
            Code::ImageDoesNotExistInSD | Code::VolumeDoesNotExist
        ),
        "the image another host created is not found: {e}"
    );
    // And this host's cached list has it now.
    let cached = here.lvs(&vg).unwrap();
    assert!(
        cached.iter().any(|l| l.name == vol.to_string()),
        "{cached:?}"
    );
    let _ = spm.lvremove(&vg, &[vol.to_string().as_str()]);
    drop(cleanup);
}
