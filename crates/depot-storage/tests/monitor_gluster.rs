//! The domain monitor against a real GlusterFS mount whose brick freezes
//! (`SIGSTOP`): the check runs in a helper process, so no thread of this
//! process ever sleeps inside the hung mount, the frozen domain is reported
//! within the interval, a healthy domain goes on being checked, and the
//! frozen one is valid again on its own after the thaw. Root tier.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use depot_api::storage::SdUuid;
use depot_api::types::Uuid;
use depot_api::Code;
use depot_os::fsproc::HelperCommand;
use depot_storage::monitor::{CheckTarget, DomainHealth, Monitor, MonitorConfig};
use depot_testkit::gluster::Gluster;

const INTERVAL: Duration = Duration::from_secs(1);
/// Generous: the machine is shared and GlusterFS is slow to come back.
const LIMIT: Duration = Duration::from_secs(60);

fn make_domain(root: &Path) -> (SdUuid, PathBuf) {
    let sd = SdUuid(Uuid::new_v4());
    let dir = root.join(sd.to_string());
    fs::create_dir_all(dir.join("dom_md")).unwrap();
    fs::write(dir.join("dom_md/metadata"), b"VERSION=5\n").unwrap();
    (sd, dir)
}

fn wait_for(
    m: &Monitor,
    sd: SdUuid,
    limit: Duration,
    what: &str,
    mut cond: impl FnMut(&DomainHealth) -> bool,
) -> DomainHealth {
    let end = Instant::now() + limit;
    loop {
        let h = m.status(sd).expect("monitored");
        if cond(&h) {
            return h;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}: {h:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The threads of this test process waiting inside a file system.
fn threads_in_the_storage() -> Vec<String> {
    depot_testkit::process::threads_in_the_storage(std::process::id())
}

/// Children of this process running the helper binary.
fn helper_children() -> usize {
    let me = std::process::id().to_string();
    let helper = Path::new(env!("CARGO_BIN_EXE_depot-storage-fsproc"));
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1));
            ppid == Some(me.as_str())
                && fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == helper)
        })
        .count()
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn frozen_gluster_domain_is_reported_and_recovers_alone() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let g = Gluster::start().expect("start gluster");
    let t = tempfile::tempdir().unwrap();
    let mount = g.mount(&t.path().join("gl")).expect("mount the volume");
    let local = tempfile::tempdir().unwrap();
    let (gsd, gdir) = make_domain(mount.path());
    let (lsd, ldir) = make_domain(local.path());

    let m = Monitor::new(MonitorConfig {
        interval: INTERVAL,
        check_timeout: INTERVAL,
        mounter: None,
        helper: Some(HelperCommand::new(env!(
            "CARGO_BIN_EXE_depot-storage-fsproc"
        ))),
        sanlock: None,
    });
    m.start(
        gsd,
        CheckTarget::file_domain(&gdir, Some(mount.path().to_owned())),
    )
    .unwrap();
    m.start(lsd, CheckTarget::file_domain(&ldir, None)).unwrap();
    wait_for(&m, gsd, LIMIT, "gluster domain valid", |h| {
        h.actual && h.code == 0
    });
    wait_for(&m, lsd, LIMIT, "local domain valid", |h| {
        h.actual && h.code == 0
    });

    let frozen = g.freeze_brick().expect("freeze the brick");
    let froze = Instant::now();
    // Reported within the interval and the check's deadline, plus margin.
    let h = wait_for(
        &m,
        gsd,
        3 * INTERVAL + Duration::from_secs(10),
        "2001",
        |h| h.code != 0,
    );
    eprintln!("frozen domain reported after {:?}: {h:?}", froze.elapsed());
    assert_eq!(h.code, Code::MiscFileReadException.number(), "{h:?}");
    let err = h.error.clone().unwrap();
    assert!(err.starts_with("Read timeout"), "{err}");
    assert!(
        err.contains(&mount.path().display().to_string()),
        "names the mount: {err}"
    );
    assert!(!h.valid);

    // Several intervals of the outage: the local domain stays fresh, the
    // frozen one stays 2001 without a growing crowd of helpers, and no
    // thread of ours is in the hung file system.
    let watch_until = Instant::now() + 6 * INTERVAL;
    let mut most_helpers = 0;
    while Instant::now() < watch_until {
        let l = m.status(lsd).unwrap();
        assert_eq!(l.code, 0, "{l:?}");
        assert!(
            l.last_check_age(Instant::now()) < 3 * INTERVAL + Duration::from_secs(2),
            "{l:?}"
        );
        assert_eq!(
            m.status(gsd).unwrap().code,
            Code::MiscFileReadException.number()
        );
        let d = threads_in_the_storage();
        assert!(d.is_empty(), "threads of ours in the hung mount: {d:?}");
        most_helpers = most_helpers.max(helper_children());
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!("at most {most_helpers} helpers alive during the outage");
    // One per domain alive, plus one killed and not yet reaped.
    assert!(most_helpers <= 3, "{most_helpers} helpers");

    let last_bad = m.status(gsd).unwrap().last_check;
    frozen.thaw();
    let thawed = Instant::now();
    let h = wait_for(&m, gsd, LIMIT, "valid after the thaw", |h| h.code == 0);
    eprintln!("valid again {:?} after the thaw", thawed.elapsed());
    assert!(h.valid && h.error.is_none(), "{h:?}");
    assert!(h.last_check > last_bad, "{h:?}");
    m.shutdown();
}

/// A domain that could not be located when its pool connected (its
/// storage frozen) is looked for in every mount: while the mount does not
/// answer it is 2001 naming the mount, never 358, and once the storage
/// returns it is found and valid on its own.
#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn domain_searched_on_a_frozen_mount_is_found_after_the_thaw() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let g = Gluster::start().expect("start gluster");
    let repo = tempfile::tempdir().unwrap();
    let mount_point = repo.path().join("mnt/glusterSD/server:_vol");
    let mount = g.mount(&mount_point).expect("mount the volume");
    let (sd, _dir) = make_domain(mount.path());
    let m = Monitor::new(MonitorConfig {
        interval: INTERVAL,
        check_timeout: INTERVAL,
        mounter: None,
        helper: Some(HelperCommand::new(env!(
            "CARGO_BIN_EXE_depot-storage-fsproc"
        ))),
        sanlock: None,
    });
    let frozen = g.freeze_brick().expect("freeze the brick");
    m.start_search(sd, repo.path()).unwrap();
    let h = wait_for(&m, sd, LIMIT, "in trouble", |h| h.actual && h.code != 0);
    eprintln!("while frozen: {h:?}");
    let err = h.error.clone().unwrap();
    assert_eq!(h.code, Code::MiscFileReadException.number(), "{h:?}");
    assert!(err.contains(&mount_point.display().to_string()), "{err}");
    // Stays so, never "does not exist", while the brick is frozen.
    let until = Instant::now() + 4 * INTERVAL;
    while Instant::now() < until {
        let h = m.status(sd).unwrap();
        assert_eq!(h.code, Code::MiscFileReadException.number(), "{h:?}");
        let d = threads_in_the_storage();
        assert!(d.is_empty(), "threads of ours in the hung mount: {d:?}");
        thread::sleep(Duration::from_millis(200));
    }
    frozen.thaw();
    let h = wait_for(&m, sd, LIMIT, "found and valid", |h| h.code == 0);
    assert!(h.valid && h.disk_total.is_some(), "{h:?}");
    m.shutdown();
}
