//! depot_os::sanlock against the real sanlock daemon (root tier): the
//! lockspace formatted by `sanlock direct init` in a child, a host id
//! acquired asynchronously through the dlopen'd library, seen by
//! inq_lockspace and get_hosts, released by rem_lockspace.

use std::path::Path;
use std::time::{Duration, Instant};

use depot_os::sanlock::{
    direct_init_lockspace, direct_init_resource, direct_read_leader, AddOutcome, Area,
    DirectConfig, Geometry, HostIdState, HostStatus, Lockspace, Refusal, RemOutcome, Resource,
    Sanlock, SanlockError,
};
use depot_testkit::sanlock::SanlockDaemon;

const MIB: u64 = 1 << 20;

/// Polls `f` every 500 ms until it returns `Some` or `limit` passes.
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn empty_file(p: &Path) {
    std::fs::File::create(p).unwrap();
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn direct_init_writes_sanlocks_format_for_each_geometry() {
    depot_testkit::require_root();
    let dir = tempfile::tempdir().unwrap();
    let cfg = DirectConfig::default();
    for (sector, align) in [(512, MIB), (4096, MIB), (4096, 8 * MIB)] {
        // A colon in the path, as in an NFS mount directory.
        let sub = dir.path().join(format!("srv:_export-{sector}-{align}"));
        std::fs::create_dir(&sub).unwrap();
        let (ids, leases) = (sub.join("ids"), sub.join("leases"));
        empty_file(&ids);
        empty_file(&leases);
        let g = Geometry::new(sector, align).unwrap();
        direct_init_lockspace(&cfg, "sd-1", &Area::new(&ids, 0), g).unwrap();
        direct_init_resource(&cfg, "sd-1", "SDM", &Area::new(&leases, align), g).unwrap();
        assert_eq!(std::fs::metadata(&ids).unwrap().len(), align);
        assert_eq!(std::fs::metadata(&leases).unwrap().len(), 2 * align);

        let ls = direct_read_leader(&cfg, "sd-1", "1", false, &Area::new(&ids, 0)).unwrap();
        assert_eq!(ls["magic"], "0x12212010", "{ls:?}");
        assert_eq!(ls["space_name"], "sd-1");
        assert_eq!(ls["sector_size"], sector.to_string());
        let res =
            direct_read_leader(&cfg, "sd-1", "SDM", true, &Area::new(&leases, align)).unwrap();
        assert_eq!(res["magic"], "0x6152010", "{res:?}");
        assert_eq!(res["resource_name"], "SDM");
        assert_eq!(res["max_hosts"], g.max_hosts().to_string());
        // Nothing at slot 0.
        let none = direct_read_leader(&cfg, "sd-1", "SDM", true, &Area::new(&leases, 0));
        assert!(
            matches!(none, Err(SanlockError::Call { rv: -223, .. })),
            "{none:?}"
        );
    }
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn host_id_is_acquired_seen_and_released_through_the_daemon() {
    depot_testkit::require_root();
    let daemon = SanlockDaemon::start().expect("sanlock daemon");
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("ids");
    empty_file(&ids);
    let g = Geometry::new(512, MIB).unwrap();
    direct_init_lockspace(
        &DirectConfig::default(),
        "depot-os-test",
        &Area::new(&ids, 0),
        g,
    )
    .unwrap();

    let s = Sanlock::load(None, Duration::from_secs(30)).with_io_timeout(4);
    assert_eq!(s.library_error(), None);
    let version = s.daemon_version().expect("daemon answers");
    eprintln!("sanlock daemon {version}");
    let ls = Lockspace::new("depot-os-test", 7, Area::new(&ids, 0));
    assert_eq!(s.inq_lockspace(&ls).unwrap(), HostIdState::Free);

    // io_timeout 4 s instead of the daemon's 10: the delta-lease wait is
    // about 8 s instead of 20, and the daemon records the value (below).
    let t = Instant::now();
    assert_eq!(s.add_lockspace(&ls).unwrap(), AddOutcome::Started);
    // Async: the call returns long before the delta-lease wait.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // The delta-lease wait: sanlock says an add is under way.
    assert_eq!(s.inq_lockspace(&ls).unwrap(), HostIdState::Changing);
    assert!(matches!(
        s.add_lockspace(&ls).unwrap(),
        AddOutcome::InProgress | AddOutcome::AlreadyHeld
    ));
    let held = wait_for(Duration::from_secs(90), || {
        (s.inq_lockspace(&ls).unwrap() == HostIdState::Held).then_some(())
    });
    assert!(held.is_some(), "not held after 90 s; {}", daemon.log());
    eprintln!("host id acquired in {:?}", t.elapsed());
    assert_eq!(s.add_lockspace(&ls).unwrap(), AddOutcome::AlreadyHeld);
    let listed = daemon.lockspaces().unwrap();
    assert!(
        listed.iter().any(|l| l.starts_with("depot-os-test:7:")),
        "{listed:?}"
    );

    // -EAGAIN until the daemon has read the lockspace's hosts once.
    let hosts = wait_for(Duration::from_secs(60), || {
        match s.get_hosts("depot-os-test", 0) {
            Ok(h) => Some(h),
            Err(e) if e.errno() == Some(libc::EAGAIN) => None,
            Err(e) => panic!("get_hosts: {e}"),
        }
    })
    .expect("get_hosts answers within 60 s");
    let me = hosts
        .iter()
        .find(|h| h.host_id == 7)
        .expect("own host listed");
    assert!(
        matches!(me.status, Some(HostStatus::Live | HostStatus::Unknown)),
        "{me:?}"
    );
    assert_eq!(me.io_timeout, 4, "the io_timeout asked for: {me:?}");

    // An asynchronous release: the daemon still lists the lockspace
    // (answering "held", and EEXIST to an add) until its main loop takes
    // the removal up, then kills whoever holds a lease in it, one
    // acquired meanwhile too. Until it is gone the client says so and
    // sends no add.
    assert_eq!(s.rem_lockspace(&ls, true).unwrap(), RemOutcome::Released);
    let state = s.inq_lockspace(&ls).unwrap();
    assert_ne!(state, HostIdState::Held, "held right after its release");
    assert_eq!(s.add_lockspace(&ls).unwrap(), AddOutcome::BeingRemoved);
    let gone = wait_for(Duration::from_secs(60), || {
        (s.inq_lockspace(&ls).unwrap() == HostIdState::Free).then_some(())
    });
    assert!(gone.is_some(), "not released after 60 s; {}", daemon.log());
    assert!(daemon.lockspaces().unwrap().is_empty());

    // Joined again, then released synchronously.
    assert_eq!(s.add_lockspace(&ls).unwrap(), AddOutcome::Started);
    let held = wait_for(Duration::from_secs(90), || {
        (s.inq_lockspace(&ls).unwrap() == HostIdState::Held).then_some(())
    });
    assert!(
        held.is_some(),
        "not held again after 90 s; {}",
        daemon.log()
    );
    assert_eq!(s.rem_lockspace(&ls, false).unwrap(), RemOutcome::Released);
    assert_eq!(s.inq_lockspace(&ls).unwrap(), HostIdState::Free);
    assert_eq!(s.rem_lockspace(&ls, false).unwrap(), RemOutcome::NotHeld);
    assert!(daemon.lockspaces().unwrap().is_empty());
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn a_daemon_that_is_not_running_is_reported_as_unavailable() {
    depot_testkit::require_root();
    // Held so no other test's daemon runs meanwhile, then stopped.
    let mut daemon = SanlockDaemon::start().expect("sanlock daemon");
    daemon.stop();
    let s = Sanlock::load(None, Duration::from_secs(10));
    let e = s.daemon_version().unwrap_err();
    assert!(matches!(e, SanlockError::Unavailable(_)), "{e}");
    let ls = Lockspace::new("x", 1, Area::new("/nonexistent/ids", 0));
    assert!(s.add_lockspace(&ls).is_err());
}

/// A paxos lease (the SPM's `SDM` lease of a domain) through the daemon:
/// acquired with the host id held, its version and holder read back from
/// disk, refused when asked for at a stale version, released; and a
/// registration that closes (the process's end, as when depotd dies)
/// gives up what it held.
#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn a_lease_is_acquired_read_released_and_dropped_with_its_holder() {
    depot_testkit::require_root();
    let daemon = SanlockDaemon::start().expect("sanlock daemon");
    let tmp = tempfile::tempdir().unwrap();
    // A colon in the path, as in an NFS mount directory: the daemon gets
    // it as it is.
    let dir = tmp.path().join("srv:_export");
    std::fs::create_dir(&dir).unwrap();
    let (ids, leases) = (dir.join("ids"), dir.join("leases"));
    empty_file(&ids);
    empty_file(&leases);
    let g = Geometry::new(512, MIB).unwrap();
    let cfg = DirectConfig::default();
    direct_init_lockspace(&cfg, "lease-test", &Area::new(&ids, 0), g).unwrap();
    direct_init_resource(&cfg, "lease-test", "SDM", &Area::new(&leases, MIB), g).unwrap();
    let sdm = Resource::new("lease-test", "SDM", Area::new(&leases, MIB));

    let s = Sanlock::load(None, Duration::from_secs(60));
    let fresh = s.read_lease(&sdm).unwrap();
    assert_eq!(fresh.lver, 0, "{fresh:?}");
    assert!(fresh.owners.is_empty(), "{fresh:?}");
    // No host id in the lockspace yet: refused, not hung.
    let e = s.acquire(&sdm, None).unwrap_err();
    assert!(matches!(e, SanlockError::Call { .. }), "{e}");

    let ls = Lockspace::new("lease-test", 3, Area::new(&ids, 0));
    s.add_lockspace(&ls).unwrap();
    let held = wait_for(Duration::from_secs(90), || {
        (s.inq_lockspace(&ls).unwrap() == HostIdState::Held).then_some(())
    });
    assert!(held.is_some(), "host id not held; {}", daemon.log());

    assert_eq!(s.acquire(&sdm, None).unwrap(), 1);
    let state = s.read_lease(&sdm).unwrap();
    assert_eq!(state.lver, 1);
    assert_eq!(
        state.owners.iter().map(|h| h.host_id).collect::<Vec<_>>(),
        [3]
    );
    // Held already by this process.
    let again = s.acquire(&sdm, None).unwrap_err();
    assert_eq!(again.errno(), Some(libc::EEXIST), "{again}");
    // Busy: the host id cannot go while a lease of its lockspace is held.
    assert_eq!(s.rem_lockspace(&ls, false).unwrap(), RemOutcome::Busy);

    s.release(&sdm).unwrap();
    assert!(s.read_lease(&sdm).unwrap().owners.is_empty());
    // A version other than the lease's is refused (0 is no check at all,
    // in sanlock).
    let stale = s.acquire(&sdm, Some(7)).unwrap_err();
    assert_eq!(stale.refusal(), Some(Refusal::Lver), "{stale}");
    assert_eq!(s.acquire(&sdm, Some(1)).unwrap(), 2);

    // The holder goes away: its registration closes and the daemon frees
    // its leases; a new registration takes the lease at the next version.
    drop(s);
    let freed = wait_for(Duration::from_secs(30), || {
        let s2 = Sanlock::load(None, Duration::from_secs(30));
        s2.read_lease(&sdm).unwrap().owners.is_empty().then_some(())
    });
    assert!(freed.is_some(), "lease not freed; {}", daemon.log());
    let s2 = Sanlock::load(None, Duration::from_secs(60));
    assert_eq!(s2.acquire(&sdm, None).unwrap(), 3);
    s2.release(&sdm).unwrap();
    assert_eq!(s2.rem_lockspace(&ls, false).unwrap(), RemOutcome::Released);
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn the_daemon_writes_a_resource_with_the_geometry_asked_for() {
    depot_testkit::require_root();
    let _daemon = SanlockDaemon::start().expect("sanlock daemon");
    let dir = tempfile::tempdir().unwrap();
    let s = Sanlock::load(None, Duration::from_secs(60));
    let cfg = DirectConfig::default();
    for (sector, align) in [(512, MIB), (4096, MIB), (4096, 2 * MIB), (4096, 8 * MIB)] {
        // A volume's lease file: empty, the lease at 0; a colon in the
        // path as in an NFS mount directory.
        let lease = dir.path().join(format!("srv:_x-{sector}-{align}.lease"));
        empty_file(&lease);
        let g = Geometry::new(sector, align).unwrap();
        let res = Resource::new("sd-w", "vol-1", Area::new(&lease, 0));
        s.write_resource(&res, g).unwrap();
        assert_eq!(std::fs::metadata(&lease).unwrap().len(), align);
        let leader = direct_read_leader(&cfg, "sd-w", "vol-1", true, &Area::new(&lease, 0))
            .unwrap_or_else(|e| panic!("{sector}/{align}: {e}"));
        assert_eq!(leader["magic"], "0x6152010", "{leader:?}");
        assert_eq!(leader["sector_size"], sector.to_string(), "{leader:?}");
        assert_eq!(leader["max_hosts"], g.max_hosts().to_string(), "{leader:?}");
        let state = s.read_lease(&res).unwrap();
        assert_eq!(state.lver, 0, "{state:?}");
        assert!(state.owners.is_empty(), "{state:?}");
    }
    // A file that is not there: the daemon's error, no file made.
    let gone = dir.path().join("gone.lease");
    let res = Resource::new("sd-w", "vol-2", Area::new(&gone, 0));
    let e = s
        .write_resource(&res, Geometry::new(512, MIB).unwrap())
        .unwrap_err();
    assert!(matches!(e, SanlockError::Call { .. }), "{e}");
    assert!(!gone.exists());
}
