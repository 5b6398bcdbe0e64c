//! The domain verbs of `Storage` with a GlusterFS brick frozen (`SIGSTOP`)
//! beside a LOCALFS domain (issue 15): the scans over every mount
//! (getStorageDomains, create's duplicate check, locate's search) are
//! bounded and still show the frozen domain; the frozen domain's own verbs
//! answer 2001 naming the mount within the I/O timeout, never 358; and no
//! thread of this process ever waits inside the frozen mount (the calls
//! are made in the mounts' helper processes). Root tier.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use depot_api::storage::{DomainClass, DomainType, SdUuid};
use depot_api::types::Uuid;
use depot_api::Code;
use depot_os::CommandRunner;
use depot_storage::connection::ConnectionParams;
use depot_storage::{CreateDomain, Storage, StorageError};
use depot_testkit::gluster::Gluster;

const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Room for a loaded machine (helpers to start, a shared CPU).
const MARGIN: Duration = Duration::from_secs(10);

/// The threads of this test process waiting inside a file system.
fn threads_in_the_storage() -> Vec<String> {
    depot_testkit::process::threads_in_the_storage(std::process::id())
}

fn assert_no_thread_in_the_storage(after: &str) {
    let d = threads_in_the_storage();
    assert!(
        d.is_empty(),
        "after {after}: threads of ours in the mount: {d:?}"
    );
}

fn request(sd: SdUuid, domain_type: DomainType, remote_path: &str) -> CreateDomain {
    CreateDomain {
        sd,
        domain_type,
        class: DomainClass::Data,
        description: format!("frozen test {domain_type}"),
        remote_path: remote_path.into(),
        block_size: None,
        max_hosts: 250,
        backup: false,
    }
}

/// Connects `dir` as a LOCALFS connection and creates a domain there.
fn local_domain(s: &Storage, dir: &Path) -> SdUuid {
    fs::create_dir_all(dir).unwrap();
    let st = s.connect_storage_server(
        DomainType::LocalFs,
        &[ConnectionParams {
            id: Uuid::new_v4().to_string(),
            connection: dir.to_str().unwrap().into(),
            ..Default::default()
        }],
    );
    assert_eq!(st[0].status, 0, "{st:?}");
    let sd = SdUuid(Uuid::new_v4());
    s.create_domain(request(sd, DomainType::LocalFs, dir.to_str().unwrap()), 5)
        .unwrap();
    sd
}

/// Runs `f`, checks it took less than `limit`, and says how long it took.
fn timed<T>(what: &str, limit: Duration, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let r = f();
    let took = t0.elapsed();
    eprintln!("{what}: {took:?}");
    assert!(took < limit, "{what} took {took:?} (limit {limit:?})");
    assert_no_thread_in_the_storage(what);
    r
}

/// A read error of the frozen mount: 2001 naming it, never 358.
fn assert_mount_trouble(what: &str, e: &StorageError, mount: &Path) {
    support::assert_mount_trouble(what, e, mount, &[Code::MiscFileReadException]);
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn domain_verbs_and_scans_with_a_frozen_gluster_brick() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let g = Gluster::start().expect("start gluster");
    let repo = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let s = Storage::new(
        support::storage_config(repo.path(), IO_TIMEOUT),
        CommandRunner::new(),
    );
    // Where a GLUSTERFS connection to the volume is mounted (the
    // connection itself is connection_gluster's test).
    let mount_point: PathBuf = s
        .config()
        .repository
        .join("mnt/glusterSD")
        .join(format!("{}:_vol", g.host()));
    let mount = g.mount(&mount_point).expect("mount the volume");

    let gsd = SdUuid(Uuid::new_v4());
    s.create_domain(request(gsd, DomainType::GlusterFs, &g.spec()), 5)
        .expect("create the gluster domain");
    let lsd = local_domain(&s, &local.path().join("one"));
    let all = s.find_domains(None, None, None, None);
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.contains(&gsd) && all.contains(&lsd), "{all:?}");
    s.validate_domain(gsd).unwrap();

    let frozen = g.freeze_brick().expect("freeze the brick");

    // getStorageDomains: bounded, and the frozen domain still listed
    // (filters that need its metadata cannot drop it either).
    let scan_limit = Duration::from_secs(10);
    for round in 0..2 {
        let found = timed(&format!("getStorageDomains #{round}"), scan_limit, || {
            s.find_domains(None, None, None, None)
        });
        assert!(found.contains(&gsd) && found.contains(&lsd), "{found:?}");
    }
    let found = timed("getStorageDomains LOCALFS", scan_limit, || {
        s.find_domains(None, None, Some(DomainType::LocalFs), None)
    });
    assert!(found.contains(&lsd) && found.contains(&gsd), "{found:?}");

    // A new LOCALFS domain: the duplicate check reads every mount.
    let new_local = timed("create a LOCALFS domain", Duration::from_secs(15), || {
        local_domain(&s, &local.path().join("two"))
    });
    // A known domain on the frozen mount counts as existing (365), fast.
    let e = timed(
        "create the frozen domain's id again",
        Duration::from_secs(15),
        || {
            s.create_domain(
                request(gsd, DomainType::LocalFs, local.path().to_str().unwrap()),
                5,
            )
            .unwrap_err()
        },
    );
    assert_eq!(e.code, Code::StorageDomainAlreadyExists, "{e}");

    // The frozen domain's verbs: 2001 naming the mount, within the I/O
    // timeout (or at once, when its helpers are all stuck).
    let verb_limit = IO_TIMEOUT + MARGIN;
    let e = timed("getInfo", verb_limit, || s.domain_info(gsd).unwrap_err());
    assert_mount_trouble("getInfo", &e, &mount_point);
    let e = timed("validate", verb_limit, || {
        s.validate_domain(gsd).unwrap_err()
    });
    assert_mount_trouble("validate", &e, &mount_point);
    let e = timed("getStats", verb_limit, || s.domain_stats(gsd).unwrap_err());
    assert_mount_trouble("getStats", &e, &mount_point);
    // A domain this host has never seen may be on the frozen mount: 2001
    // naming it, not 358.
    let e = timed("getInfo of an unknown domain", verb_limit, || {
        s.domain_info(SdUuid(Uuid::new_v4())).unwrap_err()
    });
    assert_mount_trouble("getInfo of an unknown domain", &e, &mount_point);

    // The LOCALFS domains were never held up.
    for sd in [lsd, new_local] {
        timed("LOCALFS validate", Duration::from_secs(5), || {
            s.validate_domain(sd).unwrap()
        });
    }

    frozen.thaw();
    // Back on its own: the helpers that were stuck are replaced.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        match s.validate_domain(gsd) {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < end, "not valid after the thaw: {e}");
                thread::sleep(Duration::from_millis(500));
            }
        }
    }
    let all = s.find_domains(None, None, None, None);
    assert!(
        all.contains(&gsd) && all.contains(&lsd) && all.contains(&new_local),
        "{all:?}"
    );
    s.shutdown();
    drop(mount);
}
