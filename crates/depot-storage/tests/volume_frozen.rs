//! Volume and image calls on a GlusterFS domain whose brick freezes
//! (`SIGSTOP`), issue 15: every file-system call of a file domain's
//! volumes goes through its mount's helper processes, so a call that the
//! storage does not answer fails within the I/O timeout (plus a margin)
//! with VDSM's code for it (2001 read / 2002 write) naming the mount,
//! never "does not exist", and no thread of this process waits inside the
//! hung file system. Root tier (real GlusterFS).
//!
//! Two views: the volume store of the domain itself (the code of
//! file/volumes.rs and file/images.rs, the calls made after the domain was
//! located), and the verbs through `Storage` (locate included).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use depot_api::storage::{
    AllocType, DiskType, DomainClass, DomainType, ImgUuid, SdUuid, SpUuid, VolUuid, VolumeFormat,
};
use depot_api::types::Uuid;
use depot_api::Code;
use depot_os::{CommandRunner, QemuImg};
use depot_storage::backup::PreparePurpose;
use depot_storage::connection::ConnectionParams;
use depot_storage::domain::{Domain, FileDomain, VolumeTools};
use depot_storage::layout::DomainPaths;
use depot_storage::{CreateDomain, CreateVolume, Storage, StorageError, VolumeStore};
use depot_testkit::gluster::Gluster;

/// Short, so that the test is quick; the margin below is generous.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// One call's deadline (the first call that hangs fails the verb) plus a
/// margin for a shared, loaded machine.
const ANSWER_WITHIN: Duration = Duration::from_secs(3 + 12);

fn raw(capacity: u64) -> CreateVolume {
    CreateVolume {
        capacity,
        format: VolumeFormat::Raw,
        alloc: AllocType::Sparse,
        disk_type: DiskType::Data,
        description: "frozen".into(),
        parent: VolUuid::BLANK,
        legal: true,
        sequence: 0,
    }
}

fn new_img() -> ImgUuid {
    ImgUuid(Uuid::new_v4())
}

fn new_vol() -> VolUuid {
    VolUuid(Uuid::new_v4())
}

/// The threads of this test process waiting inside a file system.
fn threads_in_the_storage() -> Vec<String> {
    depot_testkit::process::threads_in_the_storage(std::process::id())
}

/// Runs `f` on a thread of its own and waits for its answer at most
/// [`ANSWER_WITHIN`]: a call stuck in the storage fails the test instead
/// of hanging it (its thread is left behind, and finishes at the thaw).
fn answered<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    thread::Builder::new()
        .name(format!("verb {what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    let r = rx.recv_timeout(ANSWER_WITHIN).unwrap_or_else(|_| {
        panic!(
            "{what} did not answer within {ANSWER_WITHIN:?} on a frozen brick; threads in the storage: {:#?}",
            threads_in_the_storage()
        )
    });
    eprintln!("{what}: answered after {:?}", t0.elapsed());
    r
}

/// A mount in trouble: 2001 (or 2002 for a write), naming the mount,
/// never "does not exist".
fn assert_trouble<T: std::fmt::Debug>(what: &str, r: Result<T, StorageError>, mount: &Path) {
    let e = r.expect_err(what);
    eprintln!("{what}: {e}");
    let codes = [Code::MiscFileReadException, Code::MiscFileWriteException];
    support::assert_mount_trouble(what, &e, mount, &codes);
}

/// The volume store of a GlusterFS domain (the calls a verb makes once the
/// domain is located): create, getInfo and the image listing answer 2001
/// naming the mount within the deadline plus a margin while the brick is
/// frozen, and no thread of ours is in the hung mount. Before issue 15
/// these calls ran `std::fs` on the calling thread (an I/O worker's, in
/// depotd), which waited in the kernel until the thaw.
#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn volume_calls_on_a_frozen_gluster_domain_answer_in_time() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let g = Gluster::start().expect("start gluster");
    let t = tempfile::tempdir().unwrap();
    let mount = g.mount(&t.path().join("gl")).expect("mount the volume");
    let root = mount.path().to_owned();
    let sd = SdUuid(Uuid::new_v4());
    let paths = DomainPaths::new(root.join(sd.to_string()));
    fs::create_dir_all(paths.images()).unwrap();
    let fs = support::mount_helpers(&root, IO_TIMEOUT);
    let domain = Domain::File(FileDomain { sd, paths, fs });
    let (img, vol) = (new_img(), new_vol());
    on_volumes(
        &domain,
        Box::new(move |v| v.create(img, vol, &raw(1 << 20)).map(|m| format!("{m:?}"))),
    )
    .unwrap();
    on_volumes(
        &domain,
        Box::new(move |v| v.info(img, vol).map(|i| format!("{i:?}"))),
    )
    .unwrap();

    let frozen = g.freeze_brick().expect("freeze the brick");
    let verbs: Vec<(&str, VolVerb)> = vec![
        (
            "Volume.getInfo",
            Box::new(move |v| v.info(img, vol).map(|i| format!("{i:?}"))),
        ),
        (
            "Volume.create",
            Box::new(|v| {
                v.create(new_img(), new_vol(), &raw(1 << 20))
                    .map(|m| format!("{m:?}"))
            }),
        ),
        (
            "StorageDomain.getImages",
            Box::new(|v| v.images().map(|i| format!("{i:?}"))),
        ),
    ];
    for (what, verb) in verbs {
        let d = domain.clone();
        let r = answered(what, move || on_volumes(&d, verb));
        assert_trouble(what, r, &root);
        let inside = threads_in_the_storage();
        assert!(
            inside.is_empty(),
            "after {what}, threads in the frozen mount: {inside:#?}"
        );
    }
    drop(frozen);
}

/// A call on a domain's volume store.
type VolVerb = Box<dyn FnOnce(&dyn VolumeStore) -> Result<String, StorageError> + Send>;

fn on_volumes(domain: &Domain, f: VolVerb) -> Result<String, StorageError> {
    let qemu = QemuImg::new(CommandRunner::new());
    let tools = VolumeTools {
        qemu: &qemu,
        timeout: Duration::from_secs(60),
    };
    domain.volumes(tools, f)
}

/// The same through `Storage` (the verbs as depotd calls them, locate
/// included), on a GlusterFS domain connected and created through it.
/// Locate's own calls go through the helpers since i15-dom (engine/
/// domains.rs); a branch without that still has locate's I/O worker
/// thread waiting in the mount, and this test says so.
#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn volume_verbs_on_a_frozen_gluster_domain_answer_in_time() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let g = Gluster::start().expect("start gluster");
    let repo = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(Storage::new(
        support::storage_config(repo.path(), IO_TIMEOUT),
        CommandRunner::new(),
    ));
    let params = vec![ConnectionParams {
        id: Uuid::new_v4().to_string(),
        connection: g.spec(),
        vfs_type: Some("glusterfs".into()),
        ..Default::default()
    }];
    let st = s.connect_storage_server(DomainType::GlusterFs, &params);
    assert_eq!(st[0].status, 0, "{st:?}");
    let mounts: Vec<PathBuf> = depot_storage::layout::mount_dirs(&s.config().repository);
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let mount = mounts[0].clone();
    let sd = SdUuid(Uuid::new_v4());
    s.create_domain(
        CreateDomain {
            sd,
            domain_type: DomainType::GlusterFs,
            class: DomainClass::Data,
            description: "frozen".into(),
            remote_path: g.spec(),
            block_size: None,
            max_hosts: 250,
            backup: false,
        },
        depot_storage::domain_spec::VERSION,
    )
    .expect("create the domain");
    let (img, vol) = (new_img(), new_vol());
    s.create_volume(sd, img, vol, raw(1 << 20)).unwrap();
    s.volume_info(sd, img, vol).unwrap();
    assert_eq!(s.list_images(sd).unwrap(), vec![img]);
    let sp = SpUuid(Uuid::new_v4());
    s.prepare_image(sp, sd, img, vol, false, PreparePurpose::Vm)
        .unwrap();

    let frozen = g.freeze_brick().expect("freeze the brick");
    type Verb = Box<dyn FnOnce(&Storage) -> Result<String, StorageError> + Send>;
    let verbs: Vec<(&str, Verb)> = vec![
        (
            "Volume.getInfo",
            Box::new(move |s| s.volume_info(sd, img, vol).map(|i| format!("{i:?}"))),
        ),
        (
            "Volume.create",
            Box::new(move |s| {
                s.create_volume(sd, new_img(), new_vol(), raw(1 << 20))
                    .map(|m| format!("{m:?}"))
            }),
        ),
        (
            "StorageDomain.getImages",
            Box::new(move |s| s.list_images(sd).map(|i| format!("{i:?}"))),
        ),
    ];
    for (what, verb) in verbs {
        let s = s.clone();
        let r = answered(what, move || verb(&s));
        assert_trouble(what, r, &mount);
        let inside = threads_in_the_storage();
        assert!(
            inside.is_empty(),
            "after {what}, threads in the frozen mount: {inside:#?}"
        );
    }
    // Image.teardown of a domain that could not be looked at is that
    // answer, not "gone, nothing to do": the image stays prepared (a block
    // domain's LVs would still be active). Last: the kernel's caches of
    // the mount have expired by now (they answer for about a second after
    // the freeze, and locate's first look could be answered from them).
    let r = {
        let s = s.clone();
        answered("Image.teardown", move || s.teardown_image(sd, img))
    };
    assert_trouble("Image.teardown", r, &mount);
    assert!(
        s.is_prepared(sd, img),
        "still prepared after a failed teardown"
    );
    drop(frozen);
    s.disconnect_storage_server(DomainType::GlusterFs, &params);
    s.shutdown();
}
