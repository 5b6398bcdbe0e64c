//! The domain monitor's host id with the real sanlock daemon (root tier):
//! acquired in the background once the domain is valid, kept by a
//! shutdown (a restarted depotd finds it held, as VDSM's), released by a
//! stop, and re-acquired by a monitor that lost it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use depot_api::storage::SdUuid;
use depot_api::types::Uuid;
use depot_os::sanlock::{
    direct_init_lockspace, Area, DirectConfig, Geometry, HostIdState, Sanlock,
};
use depot_storage::lockspace::lockspace;
use depot_storage::monitor::{CheckTarget, Monitor, MonitorConfig};
use depot_testkit::sanlock::SanlockDaemon;

const INTERVAL: Duration = Duration::from_millis(500);
/// sanlock's delta-lease wait (~21 s) and a few rounds, on a busy machine.
const ACQUIRE_WAIT: Duration = Duration::from_secs(120);

fn config(sanlock: &Sanlock) -> MonitorConfig {
    MonitorConfig {
        interval: INTERVAL,
        check_timeout: Duration::from_secs(10),
        mounter: None,
        helper: None,
        sanlock: Some(sanlock.clone()),
    }
}

/// A file domain `<root>/<sd>` with metadata and a formatted lockspace.
fn make_domain(root: &Path) -> (SdUuid, PathBuf) {
    let sd = SdUuid(Uuid::new_v4());
    let dir = root.join(sd.to_string());
    fs::create_dir_all(dir.join("dom_md")).unwrap();
    fs::write(dir.join("dom_md/metadata"), b"CLASS=Data\nVERSION=5\n").unwrap();
    let ids = dir.join("dom_md/ids");
    fs::File::create(&ids).unwrap();
    direct_init_lockspace(
        &DirectConfig::default(),
        &sd.to_string(),
        &Area::new(&ids, 0),
        Geometry::new(512, 1 << 20).unwrap(),
    )
    .unwrap();
    (sd, dir)
}

fn wait_acquired(m: &Monitor, sd: SdUuid, want: bool, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let h = m.status(sd).expect("monitored");
        if h.acquired == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "acquired != {want} after {limit:?}: {h:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn state(s: &Sanlock, sd: SdUuid, host_id: u64, dir: &Path) -> HostIdState {
    s.inq_lockspace(&lockspace(sd, host_id, &dir.join("dom_md/ids")))
        .unwrap()
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn host_id_is_kept_by_shutdown_and_released_by_stop() {
    depot_testkit::require_root();
    let _daemon = SanlockDaemon::start().expect("sanlock daemon");
    let s = Sanlock::load(None, Duration::from_secs(30)).with_io_timeout(4);
    let tmp = tempfile::tempdir().unwrap();
    let (sd, dir) = make_domain(tmp.path());

    // Without a host id nothing is acquired.
    let m = Monitor::new(config(&s));
    m.start(sd, CheckTarget::file_domain(&dir, None)).unwrap();
    std::thread::sleep(INTERVAL * 4);
    assert!(!m.status(sd).unwrap().acquired);
    assert_eq!(state(&s, sd, 5, &dir), HostIdState::Free);

    m.set_host_id(sd, Some(5));
    wait_acquired(&m, sd, true, ACQUIRE_WAIT);
    assert_eq!(state(&s, sd, 5, &dir), HostIdState::Held);

    // A shutdown (depotd stopping) keeps it (a release would show as
    // Changing, then Free); the next monitor finds it held from its first
    // rounds.
    m.shutdown();
    for _ in 0..10 {
        std::thread::sleep(INTERVAL);
        assert_eq!(state(&s, sd, 5, &dir), HostIdState::Held);
    }
    let m = Monitor::new(config(&s));
    m.set_host_id(sd, Some(5));
    m.start(sd, CheckTarget::file_domain(&dir, None)).unwrap();
    wait_acquired(&m, sd, true, Duration::from_secs(10));

    // A stop releases it.
    assert!(m.stop(sd));
    let deadline = Instant::now() + Duration::from_secs(60);
    while state(&s, sd, 5, &dir) != HostIdState::Free {
        assert!(Instant::now() < deadline, "not released after 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A file domain's `ids` replaced by a symlink to a lockspace elsewhere
/// (planted on the shared storage) is never handed to sanlock, which
/// follows symlinks and writes delta leases where they lead: the monitor
/// checks `ids` right before it joins the lockspace, through its check's
/// helper and without one. sanlock reports an add under way at once
/// (Changing), so "Free for several rounds" tells that none was asked;
/// once `ids` is a regular file again, the host id is acquired.
#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn a_planted_ids_symlink_is_never_handed_to_sanlock() {
    depot_testkit::require_root();
    let _daemon = SanlockDaemon::start().expect("sanlock daemon");
    let s = Sanlock::load(None, Duration::from_secs(30)).with_io_timeout(4);
    let helper = depot_os::fsproc::HelperCommand::new(env!("CARGO_BIN_EXE_depot-storage-fsproc"));
    for (name, helper) in [("through a helper", Some(helper)), ("in-process", None)] {
        let tmp = tempfile::tempdir().unwrap();
        let (sd, dir) = make_domain(tmp.path());
        let ids = dir.join("dom_md/ids");
        let elsewhere = tmp.path().join("elsewhere");
        fs::rename(&ids, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &ids).unwrap();
        let before = fs::read(&elsewhere).unwrap();

        let m = Monitor::new(MonitorConfig {
            helper,
            ..config(&s)
        });
        m.set_host_id(sd, Some(5));
        m.start(sd, CheckTarget::file_domain(&dir, None)).unwrap();
        for _ in 0..8 {
            std::thread::sleep(INTERVAL);
            assert_eq!(state(&s, sd, 5, &dir), HostIdState::Free, "{name}");
            assert!(!m.status(sd).unwrap().acquired, "{name}");
        }
        assert_eq!(fs::read(&elsewhere).unwrap(), before, "{name}: written");

        // A regular file again: acquired.
        fs::remove_file(&ids).unwrap();
        fs::rename(&elsewhere, &ids).unwrap();
        wait_acquired(&m, sd, true, ACQUIRE_WAIT);
        assert!(m.stop(sd));
        let deadline = Instant::now() + Duration::from_secs(60);
        while state(&s, sd, 5, &dir) != HostIdState::Free {
            assert!(Instant::now() < deadline, "{name}: not released after 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
