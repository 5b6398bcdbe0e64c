//! The domain monitor against real files, and a real hang (a FIFO: opening
//! one for reading blocks until a writer comes).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use depot_api::storage::SdUuid;
use depot_api::types::Uuid;
use depot_api::Code;
use depot_os::fsproc::HelperCommand;
use depot_storage::monitor::{CheckTarget, DomainHealth, Monitor, MonitorConfig};

const INTERVAL: Duration = Duration::from_millis(100);
const LIMIT: Duration = Duration::from_secs(10);

fn config(check_timeout: Duration) -> MonitorConfig {
    MonitorConfig {
        interval: INTERVAL,
        check_timeout,
        mounter: None,
        helper: None,
        sanlock: None,
    }
}

/// A file domain `<root>/<sd>` with `dom_md/metadata`.
fn make_domain(root: &Path) -> (SdUuid, PathBuf) {
    let sd = SdUuid(Uuid::new_v4());
    let dir = root.join(sd.to_string());
    fs::create_dir_all(dir.join("dom_md")).unwrap();
    fs::write(dir.join("dom_md/metadata"), b"CLASS=Data\nVERSION=5\n").unwrap();
    (sd, dir)
}

fn wait_for(
    m: &Monitor,
    sd: SdUuid,
    what: &str,
    mut cond: impl FnMut(&DomainHealth) -> bool,
) -> DomainHealth {
    let end = Instant::now() + LIMIT;
    loop {
        let h = m.status(sd).expect("domain is monitored");
        if cond(&h) {
            return h;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}: {h:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success());
}

/// Lets a reader blocked in open() on the FIFO go, so the abandoned worker
/// thread ends (not needed for correctness; keeps the test process tidy).
fn release_fifo(path: PathBuf) {
    thread::spawn(move || {
        for _ in 0..20 {
            let _ = fs::OpenOptions::new().write(true).open(&path);
            thread::sleep(Duration::from_millis(50));
        }
    });
}

#[test]
fn healthy_domain_reports_ok_with_delay_and_disk() {
    let root = tempfile::tempdir().unwrap();
    let (sd, dir) = make_domain(root.path());
    let m = Monitor::new(config(Duration::from_secs(5)));
    let before = Instant::now();
    m.start(sd, CheckTarget::file_domain(&dir, None)).unwrap();

    let h = wait_for(&m, sd, "first check", |h| h.actual);
    assert_eq!(h.code, 0, "{h:?}");
    assert!(h.valid && h.error.is_none(), "{h:?}");
    assert!(h.delay > Duration::ZERO, "{h:?}");
    assert!(h.delay < Duration::from_secs(1), "{h:?}");
    assert!(h.disk_total.unwrap() > 0, "{h:?}");
    assert!(h.disk_free.unwrap() <= h.disk_total.unwrap(), "{h:?}");
    assert!(!h.acquired);
    assert_eq!(h.version, None);
    let first = h.last_check.unwrap();
    assert!(first >= before);

    // Checks repeat every interval.
    let h = wait_for(&m, sd, "a later check", |h| h.last_check.unwrap() > first);
    assert!(h.last_check_age(Instant::now()) < Duration::from_secs(2));
    assert!(h.last_check_str(Instant::now()).parse::<f64>().unwrap() < 2.0);

    assert!(m.set_version(sd, 5));
    assert_eq!(m.status(sd).unwrap().version, Some(5));
    assert!(!m.set_version(SdUuid(Uuid::new_v4()), 5));
}

#[test]
fn status_before_the_first_check_is_valid_but_not_actual() {
    let root = tempfile::tempdir().unwrap();
    let (sd, dir) = make_domain(root.path());
    // A long interval and a FIFO: the first check cannot complete.
    let fifo = dir.join("dom_md/metadata");
    fs::remove_file(&fifo).unwrap();
    mkfifo(&fifo);
    let m = Monitor::new(MonitorConfig {
        interval: Duration::from_secs(60),
        check_timeout: Duration::from_secs(60),
        mounter: None,
        helper: None,
        sanlock: None,
    });
    m.start(sd, CheckTarget::file_domain(&dir, None)).unwrap();
    let h = m.status(sd).unwrap();
    assert!(!h.actual && h.valid && h.code == 0, "{h:?}");
    assert_eq!(h.last_check, None);
    // Returns although the first check hangs (for 60 s).
    let start = Instant::now();
    m.shutdown();
    assert!(start.elapsed() < LIMIT, "{:?}", start.elapsed());
    release_fifo(fifo);
}

#[test]
fn missing_metadata_fails_and_recovers() {
    let root = tempfile::tempdir().unwrap();
    let (sd, dir) = make_domain(root.path());
    let md = dir.join("dom_md/metadata");
    let m = Monitor::new(config(Duration::from_secs(5)));
    m.start(sd, CheckTarget::file_domain(&dir, None)).unwrap();
    wait_for(&m, sd, "healthy", |h| h.actual && h.code == 0);

    let content = fs::read(&md).unwrap();
    fs::remove_file(&md).unwrap();
    let h = wait_for(&m, sd, "failure", |h| h.code != 0);
    assert_eq!(h.code, Code::MiscFileReadException.number(), "{h:?}");
    assert!(!h.valid && h.actual, "{h:?}");
    assert!(h.error.as_deref().unwrap().contains("metadata"), "{h:?}");
    assert_eq!(h.delay, Duration::ZERO);
    // The directory is still there: statvfs worked.
    assert!(h.disk_total.is_some(), "{h:?}");
    assert!(h.last_check.is_some());

    fs::write(&md, content).unwrap();
    let h = wait_for(&m, sd, "recovery", |h| h.code == 0);
    assert!(
        h.valid && h.error.is_none() && h.delay > Duration::ZERO,
        "{h:?}"
    );
}

#[test]
fn missing_domain_dir_and_missing_mount() {
    let root = tempfile::tempdir().unwrap();
    let (sd, dir) = make_domain(root.path());
    let m = Monitor::new(config(Duration::from_secs(5)));
    m.start(sd, CheckTarget::file_domain(&dir, None)).unwrap();
    wait_for(&m, sd, "healthy", |h| h.actual && h.code == 0);
    fs::remove_dir_all(&dir).unwrap();
    let h = wait_for(&m, sd, "domain gone", |h| h.code != 0);
    assert_eq!(h.code, Code::StorageDomainDoesNotExist.number(), "{h:?}");
    assert_eq!(h.disk_total, None);

    // The same, for a domain whose mount point is not mounted: 360. (The
    // temp dir is a plain directory, never in the mount table.)
    let (sd2, dir2) = make_domain(root.path());
    fs::remove_dir_all(&dir2).unwrap();
    m.start(
        sd2,
        CheckTarget::file_domain(&dir2, Some(root.path().to_owned())),
    )
    .unwrap();
    let h = wait_for(&m, sd2, "first check", |h| h.actual);
    assert_eq!(h.code, Code::StorageDomainFSNotMounted.number(), "{h:?}");
    assert!(h.error.as_deref().unwrap().contains("not mounted"), "{h:?}");
}

#[test]
fn hanging_check_times_out_without_blocking_anyone() {
    let root = tempfile::tempdir().unwrap();
    let (hung, hung_dir) = make_domain(root.path());
    let (good, good_dir) = make_domain(root.path());
    let m = Monitor::new(config(Duration::from_millis(300)));
    m.start(hung, CheckTarget::file_domain(&hung_dir, None))
        .unwrap();
    m.start(good, CheckTarget::file_domain(&good_dir, None))
        .unwrap();
    let h = wait_for(&m, hung, "healthy", |h| h.actual && h.code == 0);
    let last_ok = h.last_check.unwrap();

    // The server "dies": the metadata becomes a FIFO, whose open blocks.
    let md = hung_dir.join("dom_md/metadata");
    fs::remove_file(&md).unwrap();
    mkfifo(&md);

    let h = wait_for(&m, hung, "read timeout", |h| h.code != 0);
    assert_eq!(h.code, Code::MiscFileReadException.number(), "{h:?}");
    assert!(
        h.error.as_deref().unwrap().starts_with("Read timeout"),
        "{h:?}"
    );
    assert!(!h.valid && h.actual, "{h:?}");
    // No check has completed since the hang began.
    let stuck_at = h.last_check.unwrap();
    assert!(stuck_at <= last_ok + 2 * INTERVAL, "{h:?}");

    // lastCheck keeps growing while the other domain stays fresh.
    let age1 = h.last_check_age(Instant::now());
    thread::sleep(Duration::from_millis(600));
    let h = m.status(hung).unwrap();
    assert_eq!(h.last_check, Some(stuck_at));
    assert!(h.last_check_age(Instant::now()) >= age1 + Duration::from_millis(600));
    assert_eq!(h.code, Code::MiscFileReadException.number());
    // One hung check, not one per interval: later ticks wait for it.
    assert!(
        h.error.as_deref().unwrap().contains("has been blocked for"),
        "{h:?}"
    );
    // The healthy domain is still checked while the other one hangs.
    let hanging = Instant::now();
    let g = wait_for(&m, good, "a check of the healthy domain", |g| {
        g.last_check.is_some_and(|t| t > hanging)
    });
    assert_eq!(g.code, 0, "{g:?}");

    // Callers are never blocked by the hung domain (whose check stays in
    // open() until the end of the test; one that waited for even one check
    // timeout per call would take 60 s here).
    let start = Instant::now();
    for _ in 0..100 {
        m.status(hung).unwrap();
        m.all();
    }
    assert!(start.elapsed() < LIMIT, "{:?}", start.elapsed());

    // stop does not join the stuck worker thread (it is abandoned): see
    // stop_and_shutdown_return_while_a_check_hangs for how long it takes.
    assert!(m.stop(hung));
    assert!(m.status(hung).is_none());
    let stopped = Instant::now();
    let g = wait_for(&m, good, "a check after the stop", |g| {
        g.last_check.is_some_and(|t| t > stopped)
    });
    assert_eq!(g.code, 0);
    release_fifo(md);
}

#[test]
fn stop_and_shutdown_return_while_a_check_hangs() {
    let root = tempfile::tempdir().unwrap();
    // check_timeout far beyond the test: the monitor threads are inside
    // IoWorker::run, waiting on a hung open(), when we stop them.
    let m = Monitor::new(config(Duration::from_secs(3600)));
    let mut fifos = Vec::new();
    let mut sds = Vec::new();
    for _ in 0..3 {
        let (sd, dir) = make_domain(root.path());
        let md = dir.join("dom_md/metadata");
        fs::remove_file(&md).unwrap();
        mkfifo(&md);
        m.start(sd, CheckTarget::file_domain(&dir, None)).unwrap();
        fifos.push(md);
        sds.push(sd);
    }
    // Every check is inside open() of its FIFO (the kernel waits for a
    // writer in wait_for_partner), so stop and shutdown meet hung checks.
    wait_until(LIMIT, "three checks hung in open()", || fifo_openers() >= 3);
    for sd in &sds {
        let h = m.status(*sd).unwrap();
        assert!(!h.actual && h.last_check.is_none(), "{h:?}");
    }

    // Both return although every check hangs for as long as the test
    // lets it (the check timeout is an hour): nothing is joined.
    let start = Instant::now();
    assert!(m.stop(sds[0]));
    assert!(start.elapsed() < LIMIT, "{:?}", start.elapsed());

    let start = Instant::now();
    m.shutdown();
    assert!(start.elapsed() < LIMIT, "{:?}", start.elapsed());
    assert!(m.all().is_empty());
    let err = m
        .start(sds[0], CheckTarget::file_domain(root.path(), None))
        .unwrap_err();
    assert_eq!(err.code, Code::ShuttingDown);
    m.shutdown(); // twice is fine
    for f in fifos {
        release_fifo(f);
    }
}

#[test]
fn start_twice_is_one_monitor_and_stop_removes_it() {
    let root = tempfile::tempdir().unwrap();
    let (sd, dir) = make_domain(root.path());
    let (other, other_dir) = make_domain(root.path());
    let m = Monitor::new(config(Duration::from_secs(5)));
    m.start(sd, CheckTarget::file_domain(&dir, None)).unwrap();
    m.start(sd, CheckTarget::file_domain(&dir, None)).unwrap();
    wait_for(&m, sd, "healthy", |h| h.actual && h.code == 0);
    let threads = monitor_threads(sd);
    assert!(threads > 0, "{:?}", thread_names());

    // A second start with another target keeps the first: checks go on
    // reading the first target, although the second one has no domain at
    // all (checking it would say 358 at once).
    let gone = root.path().join("no-such-domain");
    let second_start = Instant::now();
    m.start(sd, CheckTarget::file_domain(&gone, None)).unwrap();
    let mut after = std::collections::BTreeSet::new();
    wait_for(&m, sd, "two checks after the second start", |h| {
        assert_eq!(h.code, 0, "the second target replaced the first: {h:?}");
        // Checks completed after the second start; the first of them may
        // have started before it, the second did not.
        after.extend(h.last_check.filter(|t| *t > second_start));
        after.len() >= 2
    });
    assert_eq!(
        monitor_threads(sd),
        threads,
        "the second start made a monitor of its own"
    );

    m.start(other, CheckTarget::file_domain(&other_dir, None))
        .unwrap();
    let all = m.all();
    assert_eq!(all.len(), 2);
    let mut expected = vec![sd, other];
    expected.sort();
    assert_eq!(all.iter().map(|(s, _)| *s).collect::<Vec<_>>(), expected);
    assert!(m.is_monitoring(sd));
    assert!(m.stop(sd));
    assert!(!m.stop(sd));
    assert!(!m.is_monitoring(sd));
    assert!(m.status(sd).is_none());
    assert_eq!(m.all().len(), 1);

    // Started again: a fresh status.
    m.start(sd, CheckTarget::file_domain(&dir, None)).unwrap();
    let h = m.status(sd).unwrap();
    assert!(h.last_check.is_none() || h.actual);
    wait_for(&m, sd, "healthy again", |h| h.actual && h.code == 0);
}

#[test]
fn dropping_the_monitor_stops_it() {
    let root = tempfile::tempdir().unwrap();
    let (sd, dir) = make_domain(root.path());
    let m = Monitor::new(config(Duration::from_secs(5)));
    m.start(sd, CheckTarget::file_domain(&dir, None)).unwrap();
    wait_for(&m, sd, "healthy", |h| h.actual && h.code == 0);
    assert!(monitor_threads(sd) > 0, "{:?}", thread_names());
    // Dropped: the domain's monitor thread and its worker exit, so no
    // check runs after the drop. (That the drop does not wait for a hung
    // check is stop_and_shutdown_return_while_a_check_hangs: the drop is a
    // shutdown.)
    drop(m);
    wait_until(LIMIT, "the monitor's threads to exit", || {
        monitor_threads(sd) == 0
    });
}

/// The names of this process's threads (`/proc/self/task/*/comm`).
fn thread_names() -> Vec<String> {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim_end().to_owned())
        .collect()
}

/// Threads of `sd`'s monitor: the monitor thread `monitor/<sd[:7]>` and
/// its worker's `monitor/<sd>-io-N`, which the kernel cuts to the same 15
/// bytes.
fn monitor_threads(sd: SdUuid) -> usize {
    let name: String = format!("monitor/{sd}").chars().take(15).collect();
    thread_names().iter().filter(|n| **n == name).count()
}

/// Threads of this process blocked opening a FIFO that has no writer.
fn fifo_openers() -> usize {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w.trim() == "wait_for_partner")
        })
        .count()
}

fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn helper_config(check_timeout: Duration) -> MonitorConfig {
    MonitorConfig {
        helper: Some(HelperCommand::new(env!(
            "CARGO_BIN_EXE_depot-storage-fsproc"
        ))),
        ..config(check_timeout)
    }
}

/// The pids of this process's children running the helper binary.
fn helper_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let helper = Path::new(env!("CARGO_BIN_EXE_depot-storage-fsproc"));
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The ppid is the 4th field, after the ")" closing the name.
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1));
            ppid == Some(me.as_str())
                && fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == helper)
        })
        .collect()
}

/// With a helper command, a file domain's check runs in a helper process:
/// the numbers are the same, and a metadata file that would hang an open
/// (a FIFO) is refused by the helper, never opened by this process.
#[test]
fn file_domain_check_runs_in_a_helper_process() {
    let root = tempfile::tempdir().unwrap();
    let (sd, dir) = make_domain(root.path());
    let m = Monitor::new(helper_config(Duration::from_secs(5)));
    m.start(sd, CheckTarget::file_domain(&dir, None)).unwrap();
    let h = wait_for(&m, sd, "first check", |h| h.actual);
    assert_eq!(h.code, 0, "{h:?}");
    assert!(h.delay > Duration::ZERO, "{h:?}");
    assert!(h.disk_total.unwrap() > 0, "{h:?}");
    assert!(h.disk_free.unwrap() <= h.disk_total.unwrap(), "{h:?}");
    assert_eq!(helper_children().len(), 1, "one helper for the domain");

    let md = dir.join("dom_md/metadata");
    fs::remove_file(&md).unwrap();
    mkfifo(&md);
    let h = wait_for(&m, sd, "the FIFO refused", |h| h.code != 0);
    assert_eq!(h.code, Code::MiscFileReadException.number(), "{h:?}");
    assert!(h.error.as_deref().unwrap().contains("metadata"), "{h:?}");
    // Refused, not hung: checks go on completing.
    let at = h.last_check.unwrap();
    let h = wait_for(&m, sd, "a later check", |h| h.last_check.unwrap() > at);
    assert_eq!(h.code, Code::MiscFileReadException.number(), "{h:?}");
    assert_eq!(
        fifo_openers(),
        0,
        "a thread of this process opened the FIFO"
    );

    // The metadata back: valid again, on the same helper.
    fs::remove_file(&md).unwrap();
    fs::write(&md, b"VERSION=5\n").unwrap();
    wait_for(&m, sd, "valid again", |h| h.code == 0);
    assert_eq!(helper_children().len(), 1);
    m.shutdown();
}

/// A block domain's target is never checked through a helper (its dom_md
/// entries are links to LVs, which helpers do not follow): a domain whose
/// metadata is a link is checked on the worker and is healthy.
#[test]
fn block_domain_check_stays_on_the_worker() {
    let root = tempfile::tempdir().unwrap();
    let (sd, dir) = make_domain(root.path());
    let md = dir.join("dom_md/metadata");
    let real = root.path().join("metadata-lv");
    fs::rename(&md, &real).unwrap();
    std::os::unix::fs::symlink(&real, &md).unwrap();
    let m = Monitor::new(helper_config(Duration::from_secs(5)));
    m.start(sd, CheckTarget::block_domain(&dir)).unwrap();
    let h = wait_for(&m, sd, "first check", |h| h.actual);
    assert_eq!(h.code, 0, "{h:?}");
    assert!(helper_children().is_empty());
}

/// A domain that could not be located is monitored anyway: 358 while no
/// mount has it, then found in a mount directory and valid, without
/// another call (issue 15: a pool domain missing when the pool connects).
#[test]
fn searched_domain_is_reported_then_found() {
    let repo = tempfile::tempdir().unwrap();
    let mnt = repo.path().join("mnt");
    let server = mnt.join("server:_export");
    fs::create_dir_all(&server).unwrap();
    let local = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(local.path(), mnt.join("_local")).unwrap();
    let sd = SdUuid(Uuid::new_v4());
    let m = Monitor::new(helper_config(Duration::from_secs(5)));
    m.start_search(sd, repo.path()).unwrap();
    let h = wait_for(&m, sd, "not found", |h| h.actual);
    assert_eq!(h.code, Code::StorageDomainDoesNotExist.number(), "{h:?}");
    assert!(
        h.error.as_deref().unwrap().contains("none of the mounts"),
        "{h:?}"
    );
    assert!(!h.valid);

    // It appears behind the LOCALFS link: found and checked there, as a
    // domain without a mount point (a link is never in the mount table).
    let dir = local.path().join(sd.to_string());
    fs::create_dir_all(dir.join("dom_md")).unwrap();
    fs::write(dir.join("dom_md/metadata"), b"VERSION=5\n").unwrap();
    let h = wait_for(&m, sd, "found and valid", |h| h.code == 0);
    assert!(h.valid && h.disk_total.is_some(), "{h:?}");

    // Gone again: its metadata is checked where it was found.
    fs::remove_dir_all(&dir).unwrap();
    let h = wait_for(&m, sd, "gone", |h| h.code != 0);
    assert_eq!(h.code, Code::StorageDomainDoesNotExist.number(), "{h:?}");
    m.shutdown();
}

/// Looking for a domain needs helpers: refused without a helper command.
#[test]
fn search_without_helpers_is_refused() {
    let repo = tempfile::tempdir().unwrap();
    let m = Monitor::new(config(Duration::from_secs(5)));
    let e = m
        .start_search(SdUuid(Uuid::new_v4()), repo.path())
        .unwrap_err();
    assert_eq!(e.code, Code::StorageException, "{e}");
}
