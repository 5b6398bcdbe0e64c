//! The domain lookup of the verbs that change nothing (engine/domains.rs,
//! `Storage::reading`), through `Storage` on LOCALFS directories with the
//! real helper processes: a cached domain is not checked before such a
//! verb (one helper call for a getInfo, not two), and one that is gone is
//! found gone all the same (358), or found where it went. A getInfo with
//! the volume's lease, on a domain with volume leases, is one call too.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use depot_api::storage::{
    AllocType, DiskType, DomainClass, DomainType, ImgUuid, SdUuid, VolUuid, VolumeFormat,
};
use depot_api::types::Uuid;
use depot_api::Code;
use depot_os::sanlock::{DirectConfig, Sanlock};
use depot_os::CommandRunner;
use depot_storage::connection::ConnectionParams;
use depot_storage::lockspace::SanlockConfig;
use depot_storage::{
    CreateDomain, CreateVolume, Storage, StorageConfig, StorageError, VolumeLeaseStatus,
};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn raw() -> CreateVolume {
    CreateVolume {
        capacity: 1 << 20,
        format: VolumeFormat::Raw,
        alloc: AllocType::Sparse,
        disk_type: DiskType::Data,
        description: "lookup".into(),
        parent: VolUuid::BLANK,
        legal: true,
        sequence: 0,
    }
}

/// A storage layer with two LOCALFS directories connected, and a domain
/// with one volume in the first.
struct Setup {
    _repo: tempfile::TempDir,
    _data: tempfile::TempDir,
    s: Storage,
    /// The two directories, as connected.
    dirs: [PathBuf; 2],
    sd: SdUuid,
    img: ImgUuid,
    vol: VolUuid,
}

impl Setup {
    fn new() -> Setup {
        Setup::with_sanlock(None)
    }

    /// [`Setup::new`] with `sanlock`: the domain gets a lockspace and the
    /// volume a lease when `sanlock` can format them.
    fn with_sanlock(sanlock: Option<SanlockConfig>) -> Setup {
        let repo = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let dirs = [data.path().join("a"), data.path().join("b")];
        let s = Storage::new(
            StorageConfig {
                sanlock,
                ..support::storage_config(repo.path(), IO_TIMEOUT)
            },
            CommandRunner::new(),
        );
        for dir in &dirs {
            fs::create_dir(dir).unwrap();
            let params = vec![ConnectionParams {
                id: Uuid::new_v4().to_string(),
                connection: dir.to_str().unwrap().to_string(),
                ..Default::default()
            }];
            let st = s.connect_storage_server(DomainType::LocalFs, &params);
            assert_eq!(st[0].status, 0, "{st:?}");
        }
        let sd = SdUuid(Uuid::new_v4());
        s.create_domain(
            CreateDomain {
                sd,
                domain_type: DomainType::LocalFs,
                class: DomainClass::Data,
                description: "lookup".into(),
                remote_path: dirs[0].to_str().unwrap().to_string(),
                block_size: None,
                max_hosts: 250,
                backup: false,
            },
            depot_storage::domain_spec::VERSION,
        )
        .expect("create the domain");
        let (img, vol) = (ImgUuid(Uuid::new_v4()), VolUuid(Uuid::new_v4()));
        s.create_volume(sd, img, vol, raw()).unwrap();
        Setup {
            _repo: repo,
            _data: data,
            s,
            dirs,
            sd,
            img,
            vol,
        }
    }

    /// The domain's directory in `dir`.
    fn domain_in(&self, dir: &Path) -> PathBuf {
        dir.join(self.sd.to_string())
    }

    /// Helper calls made on the mount of `dir` so far.
    fn calls(&self, dir: &Path) -> u64 {
        let mount = depot_storage::layout::mount_dirs(&self.s.config().repository)
            .into_iter()
            .find(|m| fs::canonicalize(m).unwrap() == fs::canonicalize(dir).unwrap())
            .expect("the directory is connected");
        self.s.mount_health(&mount.join(self.sd.to_string())).calls
    }
}

fn code<T: std::fmt::Debug>(what: &str, r: Result<T, StorageError>) -> Code {
    let e = r.expect_err(what);
    eprintln!("{what}: {e}");
    e.code
}

/// A getInfo on a cached domain is the verb's one helper call, a volume
/// size its two: the domain's metadata is not looked at first. An error
/// is checked: a volume that is not there on a domain that is, is 201
/// (one call more, the check).
#[test]
fn a_read_verb_on_a_cached_domain_is_one_helper_call() {
    let t = Setup::new();
    let (s, sd, img, vol) = (&t.s, t.sd, t.img, t.vol);
    let dir = &t.dirs[0];
    s.volume_info(sd, img, vol).unwrap();

    let before = t.calls(dir);
    let info = s.volume_info(sd, img, vol).unwrap();
    assert_eq!(info.metadata.image, img);
    assert_eq!(t.calls(dir) - before, 1, "calls of a getInfo");

    let before = t.calls(dir);
    assert_eq!(s.volume_size(sd, img, vol).unwrap().0, 1 << 20);
    assert_eq!(
        t.calls(dir) - before,
        2,
        "calls of a volume size: its marker check and its stat"
    );

    let before = t.calls(dir);
    let missing = VolUuid(Uuid::new_v4());
    assert_eq!(
        code(
            "getInfo of a missing volume",
            s.volume_info(sd, img, missing)
        ),
        Code::VolumeDoesNotExist
    );
    assert_eq!(
        t.calls(dir) - before,
        2,
        "the verb, then the check of its error"
    );
}

/// On a domain with volume leases, `Volume.getInfo` reads the volume's
/// lease sector in the same helper call as the volume's own files: one
/// call, as without leases (docs/performance.md, "Volume.getInfo's
/// lease"). The lockspace and the lease are formatted by `sanlock direct`
/// (no daemon: a free lease is reported without asking one).
#[test]
fn get_info_with_its_lease_is_one_helper_call() {
    depot_testkit::require_program("sanlock");
    let t = Setup::with_sanlock(Some(SanlockConfig {
        client: Sanlock::unavailable("no daemon in this test"),
        direct: Some(DirectConfig::default()),
    }));
    let (s, sd, img, vol) = (&t.s, t.sd, t.img, t.vol);
    let dir = &t.dirs[0];
    let lease_path = fs::canonicalize(t.domain_in(dir))
        .unwrap()
        .join("images")
        .join(img.to_string())
        .join(format!("{vol}.lease"));
    // The first getInfo finds out, once, that the domain has leases.
    s.volume_info_with_lease(sd, img, vol).unwrap();

    let before = t.calls(dir);
    let (info, lease) = s.volume_info_with_lease(sd, img, vol).unwrap();
    assert_eq!(t.calls(dir) - before, 1, "calls of a getInfo with a lease");
    assert_eq!(info.metadata.image, img);
    let lease = lease.expect("the domain has volume leases");
    assert_eq!(
        fs::canonicalize(&lease.path).unwrap(),
        lease_path,
        "{lease:?}"
    );
    assert_eq!(lease.offset, 0);
    let free = VolumeLeaseStatus {
        owners: Vec::new(),
        version: None,
    };
    assert_eq!(lease.status, Some(free), "a free lease");

    // A volume made before volume leases (an empty `.lease`): the lease
    // is reported without its status, in the same one call.
    fs::write(&lease_path, b"").unwrap();
    let before = t.calls(dir);
    let (_, lease) = s.volume_info_with_lease(sd, img, vol).unwrap();
    assert_eq!(t.calls(dir) - before, 1, "calls of a getInfo with a lease");
    assert_eq!(lease.expect("its place").status, None);
    // A missing volume is still 201, whatever its lease read answered.
    let missing = VolUuid(Uuid::new_v4());
    assert_eq!(
        code(
            "getInfo of a missing volume",
            s.volume_info_with_lease(sd, img, missing)
        ),
        Code::VolumeDoesNotExist
    );
}

/// A cached domain removed under the storage layer: each verb that
/// changes nothing answers 358, as the lookup always did, and the domain
/// is no longer cached. One moved to another connected directory is
/// found there.
#[test]
fn a_removed_cached_domain_is_358_and_a_moved_one_is_found() {
    let t = Setup::new();
    let (s, sd, img, vol) = (&t.s, t.sd, t.img, t.vol);
    let here = t.domain_in(&t.dirs[0]);
    let away = t.dirs[0].join("away");
    type Verb = fn(&Storage, SdUuid, ImgUuid, VolUuid) -> Result<String, StorageError>;
    let verbs: [(&str, Verb); 4] = [
        ("Volume.getInfo", |s, sd, img, vol| {
            s.volume_info(sd, img, vol).map(|i| format!("{i:?}"))
        }),
        ("Volume.getSize", |s, sd, img, vol| {
            s.volume_size(sd, img, vol).map(|i| format!("{i:?}"))
        }),
        ("StorageDomain.getVolumes", |s, sd, img, _| {
            s.list_volumes(sd, Some(img)).map(|v| format!("{v:?}"))
        }),
        ("StorageDomain.getImages", |s, sd, _, _| {
            s.list_images(sd).map(|v| format!("{v:?}"))
        }),
    ];
    for (what, verb) in verbs {
        // Cached by a verb that found it.
        verb(s, sd, img, vol).unwrap_or_else(|e| panic!("{what} before: {e}"));
        fs::rename(&here, &away).unwrap();
        assert_eq!(
            code(what, verb(s, sd, img, vol)),
            Code::StorageDomainDoesNotExist,
            "{what} on a removed domain"
        );
        fs::rename(&away, &here).unwrap();
    }

    // Moved to the other directory (the same file system): the answer of
    // the domain found there.
    verb_ok(s, sd, img, vol);
    let there = t.domain_in(&t.dirs[1]);
    fs::rename(&here, &there).unwrap();
    let before = t.calls(&t.dirs[1]);
    verb_ok(s, sd, img, vol);
    assert!(t.calls(&t.dirs[1]) > before, "getInfo ran on the new place");
}

fn verb_ok(s: &Storage, sd: SdUuid, img: ImgUuid, vol: VolUuid) {
    let info = s.volume_info(sd, img, vol).expect("getInfo");
    assert_eq!((info.metadata.image, info.apparent_size), (img, 1 << 20));
}
