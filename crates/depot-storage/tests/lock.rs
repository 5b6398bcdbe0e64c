//! LockManager with real threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use depot_api::storage::{ImgUuid, SdUuid};
use depot_api::types::Uuid;
use depot_api::Code;
use depot_storage::lock::{LockManager, LockMode, ResourceName};

const LONG: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(150);

fn image() -> ResourceName {
    ResourceName::image(SdUuid(Uuid::new_v4()), ImgUuid(Uuid::new_v4()))
}

/// How many requests wait for `r` while it is held shared: a shared
/// request does not overtake them, and its refusal counts them. (While
/// nobody waits the probe joins the holders and leaves at once: 0.)
fn queued(m: &LockManager, r: &ResourceName) -> usize {
    match m.shared(r, Duration::from_millis(1)) {
        Ok(_) => 0,
        Err(e) => e
            .detail
            .split(" request(s) queued ahead")
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no queue length in {e}")),
    }
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    cond()
}

#[test]
fn shared_holders_run_concurrently() {
    let m = LockManager::new();
    let r = image();
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (m, inside, peak) = (m.clone(), Arc::clone(&inside), Arc::clone(&peak));
            thread::spawn(move || {
                let _g = m.shared(&r, LONG).unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Everyone waits until all four are inside at once: only
                // possible if shared holders really overlap.
                assert!(wait_until(LONG, || inside.load(Ordering::SeqCst) == 4));
                thread::sleep(Duration::from_millis(20));
                inside.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 4);
    assert_eq!(m.active_resources(), 0);
}

#[test]
fn exclusive_excludes_everyone_and_is_granted_after_release() {
    let m = LockManager::new();
    let r = image();
    let g = m.exclusive(&r, LONG).unwrap();
    assert_eq!(g.mode(), LockMode::Exclusive);
    for mode in [LockMode::Shared, LockMode::Exclusive] {
        let err = m.acquire(&r, mode, SHORT).unwrap_err();
        assert_eq!(err.code, Code::ResourceTimeout);
        assert!(err.detail.contains("held exclusive"), "{err}");
    }

    // A shared holder keeps an exclusive request out, until it leaves.
    drop(g);
    let s = m.shared(&r, LONG).unwrap();
    let err = m.exclusive(&r, SHORT).unwrap_err();
    assert!(err.detail.contains("held shared by 1 holder"), "{err}");
    let m2 = m.clone();
    let waiter = thread::spawn(move || {
        let g = m2.exclusive(&r, LONG).unwrap();
        (Instant::now(), g.mode())
    });
    // The exclusive request waits in the queue, then the holder leaves.
    assert!(wait_until(LONG, || queued(&m, &r) == 1));
    let released = Instant::now();
    drop(s);
    let (granted, mode) = waiter.join().unwrap();
    assert!(granted >= released, "granted before the release");
    assert_eq!(mode, LockMode::Exclusive);
    assert_eq!(m.active_resources(), 0);
}

#[test]
fn different_resources_do_not_block_each_other() {
    let m = LockManager::new();
    let sd = SdUuid(Uuid::new_v4());
    let a = ResourceName::image(sd, ImgUuid(Uuid::new_v4()));
    let b = ResourceName::image(sd, ImgUuid(Uuid::new_v4()));
    let _ga = m.exclusive(&a, LONG).unwrap();
    let _gb = m.exclusive(&b, SHORT).unwrap();
    let _gd = m.exclusive(&ResourceName::domain(sd), SHORT).unwrap();
    assert_eq!(m.active_resources(), 3);
}

#[test]
fn waiting_writer_blocks_new_readers() {
    let m = LockManager::new();
    let r = image();
    let reader = m.shared(&r, LONG).unwrap();

    let (tx, rx) = mpsc::channel();
    let m2 = m.clone();
    let writer = thread::spawn(move || {
        let g = m2.exclusive(&r, LONG).unwrap();
        tx.send(()).unwrap();
        thread::sleep(Duration::from_millis(100));
        let released = Instant::now();
        drop(g);
        released
    });
    // The writer is queued behind the reader...
    assert!(wait_until(LONG, || queued(&m, &r) == 1));
    assert!(
        rx.try_recv().is_err(),
        "writer got in while a reader held it"
    );
    // ...and a new reader may not overtake it, although the lock is only
    // held shared.
    let err = m.shared(&r, SHORT).unwrap_err();
    assert_eq!(err.code, Code::ResourceTimeout);
    assert!(err.detail.contains("1 request(s) queued ahead"), "{err}");

    // A reader that waits long enough gets in after the writer.
    let m3 = m.clone();
    let late_reader = thread::spawn(move || {
        let _g = m3.shared(&r, LONG).unwrap();
        Instant::now()
    });
    assert!(wait_until(LONG, || queued(&m, &r) == 2));
    drop(reader);
    rx.recv_timeout(LONG).unwrap();
    let reader_in = late_reader.join().unwrap();
    let writer_out = writer.join().unwrap();
    assert!(
        reader_in >= writer_out,
        "the reader got in before the writer left"
    );
    assert_eq!(m.active_resources(), 0);
}

#[test]
fn writer_is_not_starved_by_a_stream_of_readers() {
    let m = LockManager::new();
    let r = image();
    let stop = Arc::new(AtomicUsize::new(0));
    let rounds = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let (m, stop, rounds) = (m.clone(), Arc::clone(&stop), Arc::clone(&rounds));
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(i * 3));
                let mut n = 0u32;
                while stop.load(Ordering::SeqCst) == 0 {
                    let _g = m.shared(&r, LONG).unwrap();
                    rounds.fetch_add(1, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(10));
                    n += 1;
                }
                n
            })
        })
        .collect();
    // The stream of readers is flowing (the lock is never free for long).
    assert!(wait_until(LONG, || rounds.load(Ordering::SeqCst) >= 8));
    // A starved writer would time out: the stream never stops by itself.
    let g = m.exclusive(&r, LONG).unwrap();
    drop(g);
    stop.store(1, Ordering::SeqCst);
    for t in readers {
        assert!(t.join().unwrap() > 0);
    }
    assert_eq!(m.active_resources(), 0);
}

#[test]
fn timeout_names_the_resource_and_takes_about_the_timeout() {
    let m = LockManager::new();
    let r = image();
    let _g = m.shared(&r, LONG).unwrap();
    let start = Instant::now();
    let err = m.exclusive(&r, Duration::from_millis(200)).unwrap_err();
    let took = start.elapsed();
    // At least the timeout; the upper bound only catches a hang.
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < LONG, "{took:?}");
    assert_eq!(err.code, Code::ResourceTimeout);
    assert_eq!(err.code.number(), 851);
    let text = err.to_string();
    assert!(text.contains(&r.to_string()), "{text}");
    assert!(
        text.starts_with("Resource timeout: acquire exclusive lock"),
        "{text}"
    );
    assert!(r.to_string().starts_with("01_img_"), "{r}");
}

#[test]
fn entries_are_removed_when_unused() {
    let m = LockManager::new();
    let sd = SdUuid(Uuid::new_v4());
    for _ in 0..1000 {
        let r = ResourceName::image(sd, ImgUuid(Uuid::new_v4()));
        let _a = m.shared(&r, LONG).unwrap();
        let _b = m.shared(&r, LONG).unwrap();
    }
    assert_eq!(m.active_resources(), 0);

    // Timed-out waiters leave nothing behind either.
    let r = image();
    let g = m.exclusive(&r, LONG).unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let m = m.clone();
            thread::spawn(move || m.shared(&r, Duration::from_millis(50)).is_err())
        })
        .collect();
    for w in waiters {
        assert!(w.join().unwrap());
    }
    assert_eq!(m.active_resources(), 1);
    drop(g);
    assert_eq!(m.active_resources(), 0);
}

#[test]
fn acquire_all_in_lock_order_does_not_deadlock() {
    let m = LockManager::new();
    let sd = SdUuid(Uuid::new_v4());
    let a = ResourceName::image(sd, ImgUuid(Uuid::new_v4()));
    let b = ResourceName::image(sd, ImgUuid(Uuid::new_v4()));
    // Two "copies" in opposite directions: each wants the source shared
    // and the destination exclusive, and names them in opposite order.
    let jobs: Vec<_> = [(a, b), (b, a)]
        .into_iter()
        .map(|(src, dst)| {
            let m = m.clone();
            thread::spawn(move || {
                for _ in 0..200 {
                    let guards = m
                        .acquire_all(
                            [
                                (ResourceName::domain(sd), LockMode::Shared),
                                (src, LockMode::Shared),
                                (dst, LockMode::Exclusive),
                            ],
                            Duration::from_secs(5),
                        )
                        .unwrap();
                    assert_eq!(guards.len(), 3);
                    assert_eq!(*guards[0].resource(), ResourceName::domain(sd));
                }
            })
        })
        .collect();
    for j in jobs {
        j.join().unwrap();
    }
    assert_eq!(m.active_resources(), 0);
}

#[test]
fn acquire_all_releases_what_it_took_on_timeout() {
    let m = LockManager::new();
    let sd = SdUuid(Uuid::new_v4());
    let img = ResourceName::image(sd, ImgUuid(Uuid::new_v4()));
    let _held = m.exclusive(&img, LONG).unwrap();
    let err = m
        .acquire_all(
            [
                (ResourceName::domain(sd), LockMode::Exclusive),
                (img, LockMode::Shared),
            ],
            SHORT,
        )
        .unwrap_err();
    assert_eq!(err.code, Code::ResourceTimeout);
    // The domain lock taken first was released again.
    drop(m.exclusive(&ResourceName::domain(sd), SHORT).unwrap());
    assert_eq!(m.active_resources(), 1);
}
