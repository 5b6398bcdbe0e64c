//! The mailbox protocol end to end on plain files standing in for the
//! `inbox` and `outbox` LVs (the real LVs: crates/depotd/tests/vm_mailbox.rs).

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use depot_api::storage::{SdUuid, VolUuid};
use depot_api::Code;

use super::format::{Extend, HostId, Mailbox, Message, MAILBOX_SIZE};
use super::host::{HostConfig, HostMailer};
use super::io;
use super::spm::{per_request, Handler, Reply, SpmConfig, SpmMonitor, HOST_BUDGET};
use super::test_areas::{areas, Areas};
use crate::error::StorageError;

fn host(a: &Areas, id: u64) -> HostMailer {
    HostMailer::start(HostConfig {
        inbox: a.inbox.clone(),
        outbox: a.outbox.clone(),
        host: HostId::new(id).unwrap(),
        poll: Duration::from_millis(20),
    })
    .unwrap()
}

fn spm(a: &Areas, handler: Handler) -> SpmMonitor {
    SpmMonitor::start(
        SpmConfig {
            inbox: a.inbox.clone(),
            outbox: a.outbox.clone(),
            max_host: HostId::new(10).unwrap(),
            event_poll: Duration::from_millis(20),
            // Long: the requests must be found through the event.
            full_poll: Duration::from_secs(3600),
        },
        handler,
    )
    .unwrap()
}

/// A handler that "extends" to the size asked, keeping the largest size
/// per volume (as an LV does), and records every call.
type Calls = Arc<Mutex<Vec<(HostId, Extend)>>>;

fn lv_like() -> (Handler, Calls) {
    let calls: Calls = Arc::default();
    let sizes = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let c = Arc::clone(&calls);
    let handler = per_request(move |h, e: Extend| {
        c.lock().unwrap().push((h, e));
        let mut s = sizes.lock().unwrap();
        let size = s.entry(e.volume).or_insert(0u64);
        *size = (*size).max(e.size_mib);
        Reply::Size(*size)
    });
    (handler, calls)
}

fn req(vol: &str, size: u64) -> Extend {
    Extend::new(
        SdUuid::from_str("1f2c3d4e-5a6b-4c7d-8e9f-a0b1c2d3e4f5").unwrap(),
        VolUuid::from_str(vol).unwrap(),
        size,
    )
    .unwrap()
}

const V1: &str = "00112233-4455-6677-8899-aabbccddeeff";
const V2: &str = "10112233-4455-6677-8899-aabbccddeeff";
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_request_is_answered_through_the_files() {
    let a = areas();
    let (handler, calls) = lv_like();
    let _spm = spm(&a, handler);
    let h = host(&a, 3);
    let t = Instant::now();
    assert_eq!(h.request(req(V1, 1024), WAIT).unwrap(), 1024);
    eprintln!("round trip on files: {:?}", t.elapsed());
    assert_eq!(
        calls.lock().unwrap().as_slice(),
        &[(HostId::new(3).unwrap(), req(V1, 1024))]
    );
    // The next request for the same volume, after the slot was handed
    // back, is a new one; a smaller size is answered with the size
    // reached.
    assert_eq!(h.request(req(V1, 2048), WAIT).unwrap(), 2048);
    assert_eq!(h.request(req(V1, 512), WAIT).unwrap(), 2048);
    assert_eq!(calls.lock().unwrap().len(), 3);
    // Two volumes at once from two threads, and two hosts.
    let h2 = host(&a, 10);
    std::thread::scope(|s| {
        let x = s.spawn(|| h.request(req(V2, 100), WAIT).unwrap());
        let y = s.spawn(|| h2.request(req(V1, 4096), WAIT).unwrap());
        assert_eq!(x.join().unwrap(), 100);
        assert_eq!(y.join().unwrap(), 4096);
    });
}

#[test]
fn slots_are_handed_back_and_the_mailbox_left_empty() {
    let a = areas();
    let (handler, _) = lv_like();
    let _spm = spm(&a, handler);
    let h = host(&a, 1);
    // More requests than the mailbox has slots: each slot is handed back
    // (CLEAN, CLEAN, empty) before it is needed again.
    for n in 0..80 {
        assert_eq!(h.request(req(V1, n + 1), WAIT).unwrap(), n + 1);
    }
    drop(h);
    let inbox = io::read(&a.inbox, MAILBOX_SIZE as u64, MAILBOX_SIZE).unwrap();
    assert!(Mailbox::parse_checked(&inbox).unwrap().is_empty());
}

#[test]
fn a_failed_extend_is_answered_with_size_zero() {
    let a = areas();
    let handler = per_request(|_, _| {
        Reply::Failed(StorageError::new(
            Code::LogicalVolumeExtendError,
            "extend",
            "no space",
        ))
    });
    let _spm = spm(&a, handler);
    assert_eq!(host(&a, 2).request(req(V1, 10), WAIT).unwrap(), 0);
}

#[test]
fn without_an_spm_the_request_times_out() {
    let a = areas();
    let h = host(&a, 2);
    let e = h
        .request(req(V1, 10), Duration::from_millis(300))
        .unwrap_err();
    assert_eq!(e.code, Code::LogicalVolumeExtendError);
    assert!(e.detail.contains("no answer from the SPM"), "{e}");
    // The request stays in the mailbox: an SPM that starts finds it at
    // its first full poll and answers it, and the same request again is
    // answered (from that answer, or as a new request once the slot was
    // handed back).
    let (handler, calls) = lv_like();
    let _spm = spm(&a, handler);
    assert_eq!(h.request(req(V1, 10), WAIT).unwrap(), 10);
    let n = calls.lock().unwrap().len();
    assert!((1..=2).contains(&n), "{n} calls");
}

#[test]
fn a_mailbox_with_a_bad_checksum_is_skipped_and_others_answered() {
    let a = areas();
    // Host 4's mailbox: a request, its checksum wrong.
    let mut mb = Mailbox::default();
    mb.set(0, &req(V2, 99).to_bytes());
    let mut bytes = mb.to_bytes();
    bytes[4092] ^= 0xff;
    io::write(&a.inbox, 4 * MAILBOX_SIZE as u64, &bytes).unwrap();
    // Host 5's: garbage.
    let garbage: Vec<u8> = (0..MAILBOX_SIZE).map(|i| (i * 7 + 1) as u8).collect();
    io::write(&a.inbox, 5 * MAILBOX_SIZE as u64, &garbage).unwrap();
    let (handler, calls) = lv_like();
    let _spm = spm(&a, handler);
    assert_eq!(host(&a, 6).request(req(V1, 7), WAIT).unwrap(), 7);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].0, HostId::new(6).unwrap());
    // Nothing was answered to hosts 4 and 5.
    for h in [4u64, 5] {
        let out = io::read(&a.outbox, h * MAILBOX_SIZE as u64, MAILBOX_SIZE).unwrap();
        assert!(out.iter().all(|b| *b == 0), "host {h}");
    }
}

/// A handler that panics ends the SPM's thread; the monitor then says it
/// is not running, so the engine's service starts a new one rather than
/// trusting a dead thread for as long as this host is SPM.
#[test]
fn a_panicking_handler_leaves_the_monitor_not_running() {
    let a = areas();
    let handler = per_request(|_, _| panic!("a handler bug"));
    let monitor = spm(&a, handler);
    assert!(monitor.is_running());
    let h = host(&a, 2);
    // The request is never answered (the thread died on it).
    assert!(h.request(req(V1, 1), Duration::from_millis(500)).is_err());
    let deadline = Instant::now() + WAIT;
    while monitor.is_running() {
        assert!(Instant::now() < deadline, "still running after the panic");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn inbox_of(a: &Areas, id: u64) -> Mailbox {
    let raw = io::read(&a.inbox, id * MAILBOX_SIZE as u64, MAILBOX_SIZE).unwrap();
    Mailbox::parse_checked(&raw).unwrap()
}

/// A reconnect (disconnect and connect, or a second connect) starts a
/// second mailbox for the same pool and host while the first one may
/// still be held: the first one, dropped after, must not blank the new
/// one's mailbox, and takes no requests any more.
#[test]
fn an_old_mailbox_dropped_after_a_new_one_started_writes_nothing() {
    let a = areas();
    let old = host(&a, 3);
    let new = host(&a, 3);
    // No SPM yet: the request stays in the mailbox.
    assert!(new
        .request(req(V1, 10), Duration::from_millis(100))
        .is_err());
    let e = old.request(req(V2, 10), WAIT).unwrap_err();
    assert_eq!(e.code, Code::LogicalVolumeExtendError, "{e}");
    assert!(e.detail.contains("took over"), "{e}");
    drop(old);
    assert_eq!(inbox_of(&a, 3).message(0), Ok(Message::Extend(req(V1, 10))));
    let (handler, _) = lv_like();
    let _spm = spm(&a, handler);
    assert_eq!(new.request(req(V1, 10), WAIT).unwrap(), 10);
}

/// An answer left in `outbox` by an earlier run of this host (the SPM
/// kept running) is not taken for a new request in the same slot.
#[test]
fn a_stale_answer_does_not_answer_a_new_request() {
    let a = areas();
    let (handler, calls) = lv_like();
    let _spm = spm(&a, handler);
    let mut out = Mailbox::default();
    out.set(0, &req(V1, 1024).to_bytes());
    io::write(&a.outbox, 3 * MAILBOX_SIZE as u64, &out.to_bytes()).unwrap();
    let h = host(&a, 3);
    assert_eq!(h.request(req(V1, 2048), WAIT).unwrap(), 2048);
    assert_eq!(
        calls.lock().unwrap().as_slice(),
        &[(HostId::new(3).unwrap(), req(V1, 2048))]
    );
    // The stale slot is handed back: every slot serves again.
    for n in 0..70 {
        assert_eq!(h.request(req(V2, n + 1), WAIT).unwrap(), n + 1);
    }
}

/// The SPM is still extending an earlier run's request when this host's
/// mailbox restarts: its late answer is not taken for the new run's
/// request in the same slot.
#[test]
fn a_late_answer_to_an_earlier_run_does_not_answer_a_new_request() {
    let a = areas();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Mutex::new(released);
    let calls: Calls = Arc::default();
    let c = Arc::clone(&calls);
    let handler = per_request(move |h, e: Extend| {
        let first = {
            let mut c = c.lock().unwrap();
            c.push((h, e));
            c.len() == 1
        };
        if first {
            let _ = released.lock().unwrap().recv();
        }
        Reply::Size(e.size_mib)
    });
    let _spm = spm(&a, handler);
    let old = host(&a, 3);
    assert!(old
        .request(req(V1, 1024), Duration::from_millis(300))
        .is_err());
    assert_eq!(calls.lock().unwrap().len(), 1, "the SPM is extending");
    drop(old);
    let new = host(&a, 3);
    let asked = std::thread::scope(|s| {
        let t = s.spawn(|| new.request(req(V1, 2048), WAIT));
        std::thread::sleep(Duration::from_millis(200));
        release.send(()).unwrap();
        t.join().unwrap()
    });
    assert_eq!(asked.unwrap(), 2048);
}

/// Writes requests into host `id`'s mailbox in `inbox` directly (as a
/// host would), one per slot, and an event.
fn put_requests(a: &Areas, id: u64, reqs: &[Extend]) {
    let mut mb = Mailbox::default();
    for (i, r) in reqs.iter().enumerate() {
        mb.set(i, &r.to_bytes());
    }
    io::write(&a.inbox, id * MAILBOX_SIZE as u64, &mb.to_bytes()).unwrap();
}

fn outbox_of(a: &Areas, id: u64) -> Mailbox {
    let raw = io::read(&a.outbox, id * MAILBOX_SIZE as u64, MAILBOX_SIZE).unwrap();
    Mailbox::parse_unchecked(&raw).unwrap()
}

/// An SPM that stops while it extends leaves the requests it has not
/// handled unanswered (the next SPM answers them), instead of answering
/// them or answering 0.
#[test]
fn a_stopping_spm_leaves_the_other_requests_unanswered() {
    let a = areas();
    put_requests(&a, 2, &[req(V1, 10), req(V2, 20)]);
    let (entered, entered_rx) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (entered, released) = (Mutex::new(entered), Mutex::new(released));
    let calls: Calls = Arc::default();
    let c = Arc::clone(&calls);
    let handler = per_request(move |h, e: Extend| {
        c.lock().unwrap().push((h, e));
        entered.lock().unwrap().send(()).unwrap();
        let _ = released.lock().unwrap().recv();
        Reply::Size(e.size_mib)
    });
    let monitor = spm(&a, handler);
    entered_rx.recv_timeout(WAIT).unwrap();
    std::thread::scope(move |s| {
        let stopping = s.spawn(move || drop(monitor));
        std::thread::sleep(Duration::from_millis(200));
        release.send(()).unwrap();
        // Any later call does not wait.
        drop(release);
        stopping.join().unwrap();
    });
    assert_eq!(calls.lock().unwrap().len(), 1);
    let out = outbox_of(&a, 2);
    // The extend under way is answered with what it reached; the other
    // request is left.
    assert_eq!(out.message(0), Ok(Message::Extend(req(V1, 10))));
    assert_eq!(out.message(1), Ok(Message::Empty));
    // The next SPM answers it.
    let (handler, calls) = lv_like();
    let _next = spm(&a, handler);
    let deadline = Instant::now() + WAIT;
    while outbox_of(&a, 2).message(1) != Ok(Message::Extend(req(V2, 20))) {
        assert!(Instant::now() < deadline, "not answered by the next SPM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(calls
        .lock()
        .unwrap()
        .contains(&(HostId::new(2).unwrap(), req(V2, 20))));
}

/// A handler that is no longer SPM leaves the request unanswered.
#[test]
fn a_request_left_by_the_handler_is_not_answered() {
    let a = areas();
    put_requests(&a, 2, &[req(V1, 10)]);
    let calls: Calls = Arc::default();
    let c = Arc::clone(&calls);
    let _spm = spm(
        &a,
        per_request(move |h, e| {
            c.lock().unwrap().push((h, e));
            Reply::Leave
        }),
    );
    let deadline = Instant::now() + WAIT;
    while calls.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "not handled");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(outbox_of(&a, 2).message(0), Ok(Message::Empty));
}

/// One scan, one handler session (what it reads is read once per scan),
/// and a host that floods its mailbox gets its budget per scan only: the
/// other hosts' requests are answered before the flood is through.
#[test]
fn a_flood_of_requests_does_not_starve_other_hosts() {
    let a = areas();
    let flood: Vec<Extend> = (0..63)
        .map(|n| req(&format!("20112233-4455-6677-8899-aabbccdd{n:04x}"), 1))
        .collect();
    put_requests(&a, 1, &flood);
    let sessions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let calls: Calls = Arc::default();
    let (s2, c2) = (Arc::clone(&sessions), Arc::clone(&calls));
    let handler: Handler = Arc::new(move || {
        s2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let c = Arc::clone(&c2);
        Box::new(move |h, e: Extend| {
            c.lock().unwrap().push((h, e));
            std::thread::sleep(Duration::from_millis(20));
            if e.volume == VolUuid::from_str(V1).unwrap() {
                Reply::Size(e.size_mib)
            } else {
                Reply::Failed(StorageError::new(
                    Code::VolumeDoesNotExist,
                    "extend",
                    "no such volume",
                ))
            }
        })
    });
    put_requests(&a, 2, &[req(V1, 5)]);
    let _spm = spm(&a, handler);
    let deadline = Instant::now() + WAIT;
    while outbox_of(&a, 2).message(0) != Ok(Message::Extend(req(V1, 5))) {
        assert!(Instant::now() < deadline, "host 2 not answered");
        std::thread::sleep(Duration::from_millis(5));
    }
    let n = calls.lock().unwrap().len();
    assert!(
        n <= 2 * HOST_BUDGET + 1,
        "{n} requests handled before host 2's"
    );
    // The rest of the flood is handled by the next scans, at once.
    while calls.lock().unwrap().len() < 64 {
        assert!(Instant::now() < deadline, "the flood was not handled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = sessions.load(std::sync::atomic::Ordering::Relaxed);
    assert!(s >= 63 / HOST_BUDGET, "{s} sessions");
    assert!(s < 63, "{s} sessions: not one per scan");
}
