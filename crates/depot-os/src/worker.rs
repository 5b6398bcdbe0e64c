//! [`IoWorker`]: run file I/O that may hang forever on its own threads,
//! with a timeout, and without letting hung calls pile up threads.
//!
//! # Why
//!
//! A `stat()`, `read()` or `fsync()` on a hard-mounted NFS share whose
//! server is gone puts the calling thread in uninterruptible sleep (`D`
//! state) until the server returns, possibly forever. Nothing can cancel
//! it. So such calls run on a worker thread while the caller waits with a
//! timeout; on timeout the thread is abandoned and counted as *stuck*. One
//! worker serves one storage domain (or mount), so a dead server stalls only
//! its own worker.
//!
//! # Limits
//!
//! A worker has at most `max_threads` threads, stuck ones included. When all
//! of them are stuck it refuses work with [`WorkerError::Hung`] at once,
//! instead of starting more threads that would also hang: the storage is
//! unreachable, and the caller should report it so. A stuck thread that
//! finally returns is counted back and serves new calls.
//!
//! # Long work
//!
//! Some work is many calls in a row: wiping a volume is thousands of
//! writes. [`IoWorker::run_watched`] gives the work a [`Liveness`] to
//! [`beat`](Liveness::beat) after each step; the timeout then counts from
//! the last beat, so work that keeps making progress runs as long as it
//! needs, and a step that hangs is still noticed after one timeout.
//!
//! # Blocking
//!
//! [`IoWorker::run`] blocks the caller (a channel receive with a timeout).
//! Async code calls it from `tokio::task::spawn_blocking`; this crate does
//! not depend on an async runtime.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// An idle thread exits after this long without work, so a worker that was
/// busy once does not keep its threads forever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call on an [`IoWorker`] produced no value.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The call did not return in time. If `started`, its thread is now
    /// stuck in it (and still running it); otherwise it was still queued
    /// behind busy threads and will never run.
    #[error("io worker {worker}: call did not return within {timeout:?} ({})",
        if *.started { "thread abandoned as stuck" } else { "never started: all threads busy" })]
    Timeout {
        worker: String,
        timeout: Duration,
        started: bool,
    },

    /// All `max_threads` threads are stuck in calls that never returned.
    #[error("io worker {worker}: all {stuck} threads are stuck in calls that did not return; refusing new work")]
    Hung { worker: String, stuck: usize },

    /// The call panicked; the worker thread survived.
    #[error("io worker {worker}: call panicked: {message}")]
    Panicked { worker: String, message: String },

    /// No worker thread could be started.
    #[error("io worker {worker}: cannot start a thread: {source}")]
    Spawn {
        worker: String,
        #[source]
        source: io::Error,
    },

    /// The call's result was lost without a value or a panic (should not
    /// happen; reported rather than hidden).
    #[error("io worker {worker}: call ended without a result")]
    Lost { worker: String },
}

impl WorkerError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, WorkerError::Timeout { .. })
    }

    pub fn is_hung(&self) -> bool {
        matches!(self, WorkerError::Hung { .. })
    }
}

/// A snapshot of a worker's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStats {
    /// Threads alive: idle, running, and stuck.
    pub threads: usize,
    /// Threads waiting for work.
    pub idle: usize,
    /// Threads in a call whose caller gave up on it.
    pub stuck: usize,
    /// Calls waiting for a thread (including given-up ones not yet skipped).
    pub queued: usize,
}

type Job = Box<dyn FnOnce() + Send>;

/// Proof of progress of long work on an [`IoWorker`] (see
/// [`IoWorker::run_watched`]). Cheap to clone and to beat.
#[derive(Debug, Clone)]
pub struct Liveness {
    start: Instant,
    /// Nanoseconds from `start` to the last beat.
    last: Arc<AtomicU64>,
}

impl Liveness {
    fn new() -> Self {
        Liveness {
            start: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Says the work made progress now.
    pub fn beat(&self) {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    /// Time since the last beat (or since the start, before the first).
    fn quiet_for(&self) -> Duration {
        let last = Duration::from_nanos(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Where one call is; decides, under its lock, who owns the outcome when
/// the timeout and the completion race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Queued,
    Running,
    Done,
    /// Caller gave up before it started: skip it.
    Cancelled,
    /// Caller gave up while it ran: the thread is counted stuck.
    Abandoned,
}

struct State {
    queue: VecDeque<Job>,
    threads: usize,
    /// Threads inside a job (stuck ones included); a job decrements it
    /// itself, just before it hands back its value.
    active: usize,
    idle: usize,
    stuck: usize,
    spawned: u64,
    shutdown: bool,
}

struct Shared {
    name: String,
    max_threads: usize,
    state: Mutex<State>,
    work: Condvar,
}

/// A small thread pool for blocking file I/O with per-call timeouts. See the
/// [module docs](self).
pub struct IoWorker {
    shared: Arc<Shared>,
}

impl fmt::Debug for IoWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoWorker")
            .field("name", &self.shared.name)
            .field("max_threads", &self.shared.max_threads)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Locks, ignoring poisoning: the state is kept consistent by short
/// critical sections that do not panic, and calls run outside the lock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl IoWorker {
    /// A worker named `name` (used in thread names, logs and errors) with
    /// at most `max_threads` threads (at least 1). Threads start on demand.
    pub fn new(name: impl Into<String>, max_threads: usize) -> Self {
        IoWorker {
            shared: Arc::new(Shared {
                name: name.into(),
                max_threads: max_threads.max(1),
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    threads: 0,
                    active: 0,
                    idle: 0,
                    stuck: 0,
                    spawned: 0,
                    shutdown: false,
                }),
                work: Condvar::new(),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn stats(&self) -> WorkerStats {
        let st = lock(&self.shared.state);
        WorkerStats {
            threads: st.threads,
            idle: st.idle,
            stuck: st.stuck,
            queued: st.queue.len(),
        }
    }

    /// Runs `f` on a worker thread and waits up to `timeout` (counted from
    /// this call, so time queued behind busy threads counts) for its value.
    ///
    /// Blocks the caller. On timeout `f` keeps running on its abandoned
    /// thread and its value is dropped when it returns; `f` must not hold
    /// anything the caller needs back.
    pub fn run<T, F>(&self, timeout: Duration, f: F) -> Result<T, WorkerError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.run_watched(timeout, move |_| f())
    }

    /// [`run`](Self::run) for long work: `f` gets a [`Liveness`] to beat
    /// after each step, and the caller gives up only when `timeout`
    /// passes without a beat (counted from this call until the first).
    /// A queued call that never started still times out after `timeout`.
    pub fn run_watched<T, F>(&self, timeout: Duration, f: F) -> Result<T, WorkerError>
    where
        T: Send + 'static,
        F: FnOnce(&Liveness) -> T + Send + 'static,
    {
        let live = Liveness::new();
        let job_live = live.clone();
        let (tx, rx) = mpsc::sync_channel::<thread::Result<T>>(1);
        let phase = Arc::new(Mutex::new(Phase::Queued));
        let job_phase = Arc::clone(&phase);
        let shared = Arc::clone(&self.shared);
        let job: Job = Box::new(move || {
            {
                let mut p = lock(&job_phase);
                if *p == Phase::Cancelled {
                    lock(&shared.state).active -= 1;
                    return;
                }
                *p = Phase::Running;
            }
            let result = panic::catch_unwind(AssertUnwindSafe(move || f(&job_live)));
            let mut p = lock(&job_phase);
            {
                // Counted free before the caller can see the value, so a
                // caller's next call reuses this thread instead of starting
                // another one.
                let mut st = lock(&shared.state);
                st.active -= 1;
                if *p == Phase::Abandoned {
                    st.stuck -= 1;
                    tracing::info!(worker = %shared.name, "stuck call returned; thread back in service");
                }
            }
            *p = Phase::Done;
            // Sent under the phase lock: a caller that sees Done finds the
            // value. Capacity 1 and one send: this never blocks.
            let _ = tx.send(result);
        });
        self.submit(job)?;

        let received = loop {
            let wait = timeout.saturating_sub(live.quiet_for());
            match rx.recv_timeout(wait) {
                Ok(r) => break r,
                Err(RecvTimeoutError::Disconnected) => return Err(self.lost()),
                Err(RecvTimeoutError::Timeout) => {}
            }
            let mut p = lock(&phase);
            match *p {
                Phase::Done => break rx.try_recv().map_err(|_| self.lost())?,
                Phase::Queued => {
                    *p = Phase::Cancelled;
                    return Err(self.timeout(timeout, false));
                }
                // It beat within the timeout: wait on.
                Phase::Running if live.quiet_for() < timeout => continue,
                _ => {
                    *p = Phase::Abandoned;
                    let stuck = {
                        let mut st = lock(&self.shared.state);
                        st.stuck += 1;
                        st.stuck
                    };
                    tracing::warn!(worker = %self.shared.name, ?timeout, stuck,
                        max_threads = self.shared.max_threads,
                        "call did not return in time; thread abandoned as stuck");
                    return Err(self.timeout(timeout, true));
                }
            }
        };
        received.map_err(|payload| WorkerError::Panicked {
            worker: self.shared.name.clone(),
            message: panic_message(payload.as_ref()),
        })
    }

    fn submit(&self, job: Job) -> Result<(), WorkerError> {
        let sh = &self.shared;
        let mut st = lock(&sh.state);
        if st.stuck >= sh.max_threads {
            return Err(WorkerError::Hung {
                worker: sh.name.clone(),
                stuck: st.stuck,
            });
        }
        st.queue.push_back(job);
        let free = st.threads - st.active;
        if st.queue.len() > free && st.threads < sh.max_threads {
            let shared = Arc::clone(sh);
            let spawned = thread::Builder::new()
                .name(format!("{}-io-{}", sh.name, st.spawned))
                .spawn(move || worker_loop(shared));
            match spawned {
                Ok(_) => {
                    st.threads += 1;
                    st.spawned += 1;
                }
                // With no thread at all nothing would ever run the job.
                Err(source) if st.threads == 0 => {
                    st.queue.pop_back();
                    return Err(WorkerError::Spawn {
                        worker: sh.name.clone(),
                        source,
                    });
                }
                Err(e) => {
                    tracing::warn!(worker = %sh.name, error = %e, "cannot start another thread; call queued")
                }
            }
        }
        drop(st);
        sh.work.notify_one();
        Ok(())
    }

    fn timeout(&self, timeout: Duration, started: bool) -> WorkerError {
        WorkerError::Timeout {
            worker: self.shared.name.clone(),
            timeout,
            started,
        }
    }

    fn lost(&self) -> WorkerError {
        WorkerError::Lost {
            worker: self.shared.name.clone(),
        }
    }
}

impl Drop for IoWorker {
    /// Idle threads exit now; stuck ones exit when their call returns.
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.work.notify_all();
    }
}

fn worker_loop(shared: Arc<Shared>) {
    let mut st = lock(&shared.state);
    loop {
        if let Some(job) = st.queue.pop_front() {
            st.active += 1;
            drop(st);
            job();
            st = lock(&shared.state);
            continue;
        }
        if st.shutdown {
            break;
        }
        st.idle += 1;
        let (guard, waited) = shared
            .work
            .wait_timeout(st, IDLE_TIMEOUT)
            .unwrap_or_else(PoisonError::into_inner);
        st = guard;
        st.idle -= 1;
        if waited.timed_out() && st.queue.is_empty() {
            break;
        }
    }
    st.threads -= 1;
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if cond() {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        cond()
    }

    #[test]
    fn fast_call_returns_and_threads_are_reused() {
        let w = IoWorker::new("fast", 4);
        for i in 0..20 {
            assert_eq!(w.run(Duration::from_secs(5), move || i * 2).unwrap(), i * 2);
        }
        assert_eq!(w.stats().threads, 1, "{:?}", w.stats());
        assert_eq!(w.stats().stuck, 0);
    }

    #[test]
    fn slow_call_times_out_quickly() {
        let w = IoWorker::new("slow", 2);
        let start = Instant::now();
        let err = w
            .run(Duration::from_millis(50), || {
                thread::sleep(Duration::from_secs(30))
            })
            .unwrap_err();
        // At its timeout, not when the call returns (one-sided bound).
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(
            matches!(err, WorkerError::Timeout { started: true, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("io worker slow"), "{err}");
        assert_eq!(w.stats().stuck, 1);
    }

    #[test]
    fn refuses_work_when_all_threads_are_stuck_and_recovers() {
        let w = IoWorker::new("nfs-dead", 2);
        let t = Duration::from_millis(30);
        for _ in 0..2 {
            let err = w
                .run(t, || thread::sleep(Duration::from_millis(600)))
                .unwrap_err();
            assert!(err.is_timeout(), "{err}");
        }
        assert_eq!(w.stats().stuck, 2);
        let ran = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&ran);
        let start = Instant::now();
        let err = w
            .run(Duration::from_secs(5), move || {
                r.store(true, Ordering::SeqCst)
            })
            .unwrap_err();
        assert!(err.is_hung(), "{err}");
        // Refused at once, not after waiting out its 5 s timeout.
        assert!(start.elapsed() < Duration::from_secs(4), "refused at once");
        assert!(w.stats().threads <= 2, "{:?}", w.stats());

        // The stuck calls finish: their threads count back and serve again.
        assert!(wait_until(Duration::from_secs(5), || w.stats().stuck == 0));
        assert_eq!(w.run(Duration::from_secs(5), || 7).unwrap(), 7);
        assert!(!ran.load(Ordering::SeqCst), "the refused call never ran");
        assert_eq!(w.stats().threads, 2);
    }

    #[test]
    fn queued_call_that_times_out_never_runs() {
        let w = Arc::new(IoWorker::new("busy", 1));
        let w2 = Arc::clone(&w);
        let busy = thread::spawn(move || {
            w2.run(Duration::from_secs(5), || {
                thread::sleep(Duration::from_millis(300))
            })
        });
        assert!(wait_until(Duration::from_secs(2), || w.stats().idle == 0
            && w.stats().threads == 1));
        let ran = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&ran);
        let err = w
            .run(Duration::from_millis(50), move || {
                r.store(true, Ordering::SeqCst)
            })
            .unwrap_err();
        assert!(
            matches!(err, WorkerError::Timeout { started: false, .. }),
            "{err}"
        );
        assert_eq!(w.stats().stuck, 0, "a queued call is not stuck");
        busy.join().unwrap().unwrap();
        assert!(wait_until(Duration::from_secs(2), || w.stats().queued == 0));
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[test]
    fn long_work_that_beats_is_not_abandoned_and_silence_is() {
        let w = IoWorker::new("long", 2);
        let t = Duration::from_millis(200);
        // Ten times the timeout, beating every 20 ms.
        let n = w
            .run_watched(t, |live| {
                for _ in 0..100 {
                    thread::sleep(Duration::from_millis(20));
                    live.beat();
                }
                100
            })
            .unwrap();
        assert_eq!(n, 100);
        assert_eq!(w.stats().stuck, 0);
        // Beats, then falls silent: abandoned one timeout after the last.
        let start = Instant::now();
        let err = w
            .run_watched(t, |live| {
                for _ in 0..10 {
                    thread::sleep(Duration::from_millis(20));
                    live.beat();
                }
                thread::sleep(Duration::from_secs(2));
            })
            .unwrap_err();
        assert!(
            matches!(err, WorkerError::Timeout { started: true, .. }),
            "{err}"
        );
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(380), "{took:?}");
        assert!(took < Duration::from_millis(1800), "{took:?}");
        assert_eq!(w.stats().stuck, 1);
    }

    #[test]
    fn panic_is_reported_and_worker_survives() {
        let w = IoWorker::new("panicky", 1);
        let err = w
            .run(Duration::from_secs(5), || -> u32 { panic!("boom") })
            .unwrap_err();
        match err {
            WorkerError::Panicked { message, .. } => assert_eq!(message, "boom"),
            other => panic!("unexpected: {other}"),
        }
        assert_eq!(w.run(Duration::from_secs(5), || 1).unwrap(), 1);
    }

    #[test]
    fn zero_max_threads_means_one() {
        let w = IoWorker::new("zero", 0);
        assert_eq!(w.run(Duration::from_secs(5), || "ok").unwrap(), "ok");
    }
}
