//! The SPM side of the mailbox (VDSM's `SPM_MailMonitor`): while this host
//! is SPM, a thread reads the event block of `inbox` every `event_poll`
//! and every host's mailbox when the event changed or `full_poll` passed,
//! runs each new extend request through the handler it was given, and
//! writes the answer into the same slot of the host's mailbox in `outbox`
//! at once (one mailbox written per answer, so one slow extend does not
//! hold the answers already made). A CLEAN from a host is answered with a
//! CLEAN. A mailbox whose checksum does not match (half written, garbage)
//! is skipped until it does.
//!
//! "New" is a slot whose bytes changed since the last read, as in VDSM:
//! a host's protocol (host.rs) never reuses a slot before the SPM has
//! answered its CLEAN, so a request is seen once per sending. A new SPM
//! starts with nothing seen: requests left by an SPM that died are
//! answered again (extends are idempotent).
//!
//! Each scan gets a handler session of its own ([`Handler`]), so that
//! what the handler reads to answer (the VG's LVs) is read once per scan,
//! not once per request. A scan handles at most [`HOST_BUDGET`] new
//! requests of one host and starts at the next host each time: a host
//! that floods its mailbox (63 requests for volumes that do not exist)
//! delays the others by its budget only; what is left waits for the next
//! scan, which comes at once.
//!
//! An SPM that stops (spmStop) or is no longer SPM leaves the requests it
//! has not handled unanswered in `inbox` ([`Reply::Leave`], and the stop
//! is checked before each request): the next SPM answers them. An answer
//! 0 would tell the host that the extend failed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use depot_api::Code;

use super::format::{
    event_id, Extend, HostId, Mailbox, Message, CLEAN, MAILBOX_SIZE, MESSAGES_PER_MAILBOX,
};
use super::io;
use crate::error::{StorageError, StorageResult};

#[derive(Debug, Clone)]
pub struct SpmConfig {
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    /// Hosts 1..=max_host have mailboxes read.
    pub max_host: HostId,
    /// How often the event block is read.
    pub event_poll: Duration,
    /// How often every mailbox is read without an event.
    pub full_poll: Duration,
}

/// What the handler made of one request.
#[derive(Debug)]
pub enum Reply {
    /// Extended (or already that large): the size reached in MiB.
    Size(u64),
    /// The extend failed: answered with size 0.
    Failed(StorageError),
    /// Not this SPM's to answer any more (the role is gone): the request
    /// stays unanswered, and the scan ends.
    Leave,
}

/// One scan's handler: extends what a request asks.
pub type ScanHandler = Box<dyn FnMut(HostId, Extend) -> Reply>;

/// Makes the handler of each scan (it may cache what it reads for the
/// scan's requests).
pub type Handler = Arc<dyn Fn() -> ScanHandler + Send + Sync>;

/// A handler without a per-scan cache: `f` for each request.
pub fn per_request(f: impl Fn(HostId, Extend) -> Reply + Send + Sync + 'static) -> Handler {
    let f = Arc::new(f);
    Arc::new(move || {
        let f = Arc::clone(&f);
        Box::new(move |host, req| f(host, req))
    })
}

/// The most new requests of one host one scan handles.
pub const HOST_BUDGET: usize = 8;

struct Stop {
    stop: Mutex<bool>,
    cond: Condvar,
}

/// The SPM's mailbox thread of one pool. Dropping it stops the thread.
pub struct SpmMonitor {
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
    running: Arc<AtomicBool>,
}

impl SpmMonitor {
    /// Clears `outbox` for hosts 1..=max_host (answers of an earlier SPM
    /// are void) and starts the thread.
    pub fn start(config: SpmConfig, handler: Handler) -> StorageResult<SpmMonitor> {
        let len = (config.max_host.get() as usize + 1) * MAILBOX_SIZE;
        io::write(&config.outbox, 0, &vec![0; len]).map_err(|e| e.in_op("start SPM mailbox"))?;
        let stop = Arc::new(Stop {
            stop: Mutex::new(false),
            cond: Condvar::new(),
        });
        let running = Arc::new(AtomicBool::new(true));
        let (s, r) = (Arc::clone(&stop), Arc::clone(&running));
        let thread = std::thread::Builder::new()
            .name("mailbox-spm".into())
            .spawn(move || {
                // Cleared on the way out however the thread ends, a panic
                // of the handler included: the engine's service then
                // starts a new thread instead of trusting a dead one.
                let _running = NotRunningOnExit(r);
                Monitor::new(config, handler).run(&s);
            })
            .map_err(|e| StorageError::os(Code::MiscFileWriteException, "start SPM mailbox", e))?;
        Ok(SpmMonitor {
            stop,
            thread: Some(thread),
            running,
        })
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }
}

/// Clears the monitor's `running` flag when dropped (thread exit or
/// unwind).
struct NotRunningOnExit(Arc<AtomicBool>);

impl Drop for NotRunningOnExit {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

impl Drop for SpmMonitor {
    fn drop(&mut self) {
        *self
            .stop
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.stop.cond.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Monitor {
    config: SpmConfig,
    handler: Handler,
    /// Per host: its mailbox in `inbox` as last read (only hosts that had
    /// anything).
    seen: HashMap<HostId, Mailbox>,
    /// Per host: what this SPM wrote in its mailbox in `outbox`.
    answers: HashMap<HostId, Mailbox>,
    last_event: Option<[u8; 16]>,
    /// The host the next scan starts with (0-based).
    first_host: usize,
}

impl Monitor {
    fn new(config: SpmConfig, handler: Handler) -> Monitor {
        Monitor {
            config,
            handler,
            seen: HashMap::new(),
            answers: HashMap::new(),
            last_event: None,
            first_host: 0,
        }
    }

    fn run(&mut self, stop: &Stop) {
        let mut next_full = Instant::now();
        loop {
            let now = Instant::now();
            let event = self.event_changed();
            if event || now >= next_full {
                next_full = Instant::now() + self.config.full_poll;
                match self.scan(stop) {
                    // Requests left for the next scan: at once.
                    Ok(true) => next_full = Instant::now(),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "SPM mailbox: cannot read the inbox"),
                }
            }
            let stopped = stop.stop.lock().unwrap_or_else(PoisonError::into_inner);
            let (stopped, _) = stop
                .cond
                .wait_timeout_while(stopped, self.config.event_poll, |s| !*s)
                .unwrap_or_else(PoisonError::into_inner);
            if *stopped {
                return;
            }
        }
    }

    /// Reads the event block; whether its id changed since the last read.
    fn event_changed(&mut self) -> bool {
        match io::read(&self.config.inbox, 0, MAILBOX_SIZE) {
            Ok(block) => {
                let id = event_id(&block);
                let changed = self.last_event.is_some() && id != self.last_event;
                self.last_event = id;
                changed
            }
            Err(e) => {
                tracing::debug!(error = %e, "SPM mailbox: cannot read the event block");
                false
            }
        }
    }

    /// Reads every host's mailbox and handles what is new (module docs);
    /// whether requests were left for the next scan (a budget spent).
    fn scan(&mut self, stop: &Stop) -> StorageResult<bool> {
        let hosts = self.config.max_host.get() as usize;
        let all = io::read(
            &self.config.inbox,
            MAILBOX_SIZE as u64,
            hosts * MAILBOX_SIZE,
        )?;
        let mut handler = (self.handler)();
        let first = self.first_host % hosts;
        self.first_host = first + 1;
        let mut more = false;
        for n in (first..hosts).chain(0..first) {
            let raw = &all[n * MAILBOX_SIZE..(n + 1) * MAILBOX_SIZE];
            let host = HostId::new(n as u64 + 1).expect("1..=max_host");
            // Most mailboxes are empty: cheaper to see than to checksum.
            if raw.iter().step_by(64).all(|b| *b == 0) {
                self.seen.remove(&host);
                continue;
            }
            match Mailbox::parse_checked(raw) {
                Ok(mb) => match self.handle_host(host, mb, &mut handler, stop) {
                    Handled::All => {}
                    Handled::BudgetSpent => more = true,
                    Handled::Left => return Ok(false),
                },
                Err(e) => {
                    tracing::warn!(%host, error = %e, "SPM mailbox: host's mailbox skipped");
                }
            }
        }
        Ok(more)
    }

    fn handle_host(
        &mut self,
        host: HostId,
        mb: Mailbox,
        handler: &mut ScanHandler,
        stop: &Stop,
    ) -> Handled {
        // What was read and handled so far: a slot whose answer could not
        // be written, or that was left, stays as it was, to be handled
        // again next time.
        let mut seen = self.seen.remove(&host).unwrap_or_default();
        let mut budget = HOST_BUDGET;
        let mut handled = Handled::All;
        for i in 0..MESSAGES_PER_MAILBOX {
            if mb.slot(i) == seen.slot(i) {
                continue;
            }
            let reply = match mb.message(i) {
                Ok(Message::Empty) => None,
                Ok(Message::Clean) => Some(CLEAN),
                Ok(Message::Extend(req)) => {
                    if budget == 0 {
                        handled = Handled::BudgetSpent;
                        continue;
                    }
                    if stop.stopped() {
                        handled = Handled::Left;
                        break;
                    }
                    budget -= 1;
                    let size = match handler(host, req) {
                        Reply::Size(size) => size,
                        Reply::Failed(e) => {
                            tracing::warn!(%host, ?req, error = %e, "SPM mailbox: extend failed");
                            0
                        }
                        Reply::Leave => {
                            tracing::info!(%host, ?req, "SPM mailbox: no longer SPM, request left for the next one");
                            handled = Handled::Left;
                            break;
                        }
                    };
                    let answer = Extend {
                        size_mib: size.min(super::format::MAX_SIZE_MIB),
                        ..req
                    };
                    Some(answer.to_bytes())
                }
                Err(e) => {
                    tracing::warn!(%host, slot = i, error = %e, "SPM mailbox: message skipped");
                    None
                }
            };
            if let Some(reply) = reply {
                let out = self.answers.entry(host).or_default();
                out.set(i, &reply);
                if let Err(e) = io::write(&self.config.outbox, host.offset(), &out.to_bytes()) {
                    tracing::warn!(%host, error = %e, "SPM mailbox: cannot answer");
                    break;
                }
            }
            seen.set(i, mb.slot(i));
        }
        self.seen.insert(host, seen);
        handled
    }
}

/// How far a scan got with one host's mailbox.
enum Handled {
    All,
    /// Its budget was spent: requests wait for the next scan.
    BudgetSpent,
    /// Stopped, or no longer SPM: nothing more is handled.
    Left,
}

impl Stop {
    fn stopped(&self) -> bool {
        *self.stop.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
