//! The host side of the mailbox (VDSM's `HSM_Mailbox`): a request goes
//! into a free slot of this host's mailbox in `inbox` (followed by an
//! event in the event block, so the SPM reads it at once), and a thread of
//! its own reads this host's mailbox in `outbox` until the SPM's answer is
//! there; the caller waits for it. Then the slot is handed back as VDSM
//! does: the host writes CLEAN over its request, the SPM answers CLEAN,
//! and the host empties the slot. A slot is reused only after that, so an
//! old answer can never be taken for a new one.
//!
//! The same request twice (same domain, volume and size) while the first
//! waits shares its slot. Requests nobody waits for any more (timed out)
//! keep their slot until the SPM answers them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use depot_api::types::Uuid;
use depot_api::Code;

use super::format::{
    event_block, Extend, HostId, Mailbox, Message, CLEAN, MAILBOX_SIZE, MESSAGES_PER_MAILBOX,
};
use super::io;
use crate::error::{StorageError, StorageResult};

/// Where a host's mailbox is and how often it looks for answers.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    pub host: HostId,
    /// How often `outbox` is read while a request waits.
    pub poll: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    /// Sent; waiting for the SPM's answer.
    Waiting(Extend),
    /// Answered; CLEAN written, waiting for the SPM's CLEAN.
    Cleaning,
}

struct State {
    slots: [Slot; MESSAGES_PER_MAILBOX],
    /// Callers waiting, by slot: their tickets.
    waiters: HashMap<usize, Vec<u64>>,
    /// Answers (size in MiB, 0: failed) by ticket, until their caller takes
    /// them.
    answers: HashMap<u64, u64>,
    next_ticket: u64,
    /// What is in this host's mailbox in `inbox`.
    outgoing: Mailbox,
    /// The last I/O error of the thread, for the waiters' messages.
    last_error: Option<String>,
}

struct Inner {
    config: HostConfig,
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

/// One host's mailbox in one pool. Dropping it stops its thread.
pub struct HostMailer {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, state: &State) -> StorageResult<()> {
        io::write(
            &self.config.inbox,
            self.config.host.offset(),
            &state.outgoing.to_bytes(),
        )
    }
}

impl HostMailer {
    /// Clears this host's mailbox in `inbox` (requests of an earlier run
    /// are forgotten, as VDSM does) and starts the thread.
    pub fn start(config: HostConfig) -> StorageResult<HostMailer> {
        let inner = Arc::new(Inner {
            config,
            state: Mutex::new(State {
                slots: [Slot::Free; MESSAGES_PER_MAILBOX],
                waiters: HashMap::new(),
                answers: HashMap::new(),
                next_ticket: 0,
                outgoing: Mailbox::default(),
                last_error: None,
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        inner.send(&inner.lock())?;
        let t = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name(format!("mailbox-host-{}", inner.config.host))
            .spawn(move || run(&t))
            .map_err(|e| StorageError::os(Code::MiscFileWriteException, "start host mailbox", e))?;
        Ok(HostMailer {
            inner,
            thread: Some(thread),
        })
    }

    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// Sends `req` and waits up to `timeout` for the SPM's answer: the
    /// size reached in MiB (0: the SPM could not extend). Blocking.
    pub fn request(&self, req: Extend, timeout: Duration) -> StorageResult<u64> {
        const OP: &str = "send extend request";
        let deadline = Instant::now() + timeout;
        let bytes = req.to_bytes();
        let mut st = self.inner.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        let same = (0..MESSAGES_PER_MAILBOX)
            .find(|&i| st.slots[i] == Slot::Waiting(req) && *st.outgoing.slot(i) == bytes);
        let slot = match same {
            Some(i) => i,
            None => {
                let Some(i) = st.slots.iter().position(|s| *s == Slot::Free) else {
                    return Err(StorageError::new(
                        Code::LogicalVolumeExtendError,
                        OP,
                        format!(
                            "all {MESSAGES_PER_MAILBOX} slots of host {}'s mailbox are in use",
                            self.inner.config.host
                        ),
                    ));
                };
                st.slots[i] = Slot::Waiting(req);
                st.outgoing.set(i, &bytes);
                if let Err(e) = self.inner.send(&st) {
                    st.slots[i] = Slot::Free;
                    st.outgoing.set(i, &[0; 64]);
                    return Err(e.in_op(OP));
                }
                // The event is a hint: the SPM reads every mailbox anyway
                // at its next full poll.
                let event = event_block(Uuid::new_v4().as_u128().to_be_bytes());
                if let Err(e) = io::write(&self.inner.config.inbox, 0, &event) {
                    tracing::warn!(error = %e, "cannot write the mailbox event");
                }
                tracing::debug!(slot = i, ?req, "extend request sent");
                i
            }
        };
        st.waiters.entry(slot).or_default().push(ticket);
        self.inner.changed.notify_all();
        loop {
            if let Some(size) = st.answers.remove(&ticket) {
                return Ok(size);
            }
            let now = Instant::now();
            if now >= deadline {
                if let Some(w) = st.waiters.get_mut(&slot) {
                    w.retain(|t| *t != ticket);
                }
                let why = st
                    .last_error
                    .as_deref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default();
                return Err(StorageError::new(
                    Code::LogicalVolumeExtendError,
                    OP,
                    format!(
                        "no answer from the SPM within {} s to extend volume {} of domain {} to {} MiB{why}",
                        timeout.as_secs_f64(),
                        req.volume,
                        req.domain,
                        req.size_mib
                    ),
                ));
            }
            st = self
                .inner
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for HostMailer {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: idle while no slot is in use; otherwise reads this host's
/// mailbox in `outbox` every `poll` and moves the slots along.
fn run(inner: &Inner) {
    let cfg = &inner.config;
    let mut st = inner.lock();
    while !inner.stop.load(Ordering::Relaxed) {
        if st.slots.iter().all(|s| *s == Slot::Free) {
            st = inner
                .changed
                .wait_timeout(st, Duration::from_secs(1))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        drop(st);
        let read = io::read(&cfg.outbox, cfg.host.offset(), MAILBOX_SIZE).and_then(|b| {
            Mailbox::parse_unchecked(&b).map_err(|e| {
                StorageError::new(Code::MiscFileReadException, "read mailbox", e.to_string())
            })
        });
        st = inner.lock();
        match read {
            Ok(incoming) => {
                st.last_error = None;
                if step(&mut st, &incoming) {
                    if let Err(e) = inner.send(&st) {
                        tracing::warn!(error = %e, "cannot write this host's mailbox");
                        st.last_error = Some(e.to_string());
                    }
                    inner.changed.notify_all();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read this host's answers");
                st.last_error = Some(e.to_string());
            }
        }
        st = inner
            .changed
            .wait_timeout(st, cfg.poll)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    drop(st);
    // Leave the mailbox empty: nothing of this host's is pending.
    let _ = io::write(
        &cfg.inbox,
        cfg.host.offset(),
        &Mailbox::default().to_bytes(),
    );
}

/// Applies the SPM's answers in `incoming` to the slots; whether this
/// host's mailbox changed (and must be written).
fn step(st: &mut State, incoming: &Mailbox) -> bool {
    let mut changed = false;
    for i in 0..MESSAGES_PER_MAILBOX {
        match st.slots[i] {
            Slot::Free => {}
            Slot::Waiting(req) => {
                let reply = incoming.slot(i);
                if !req.is_answered_by(reply) {
                    continue;
                }
                let size = match Message::parse(reply) {
                    Ok(Message::Extend(e)) => e.size_mib,
                    _ => 0,
                };
                for t in st.waiters.remove(&i).unwrap_or_default() {
                    st.answers.insert(t, size);
                }
                st.slots[i] = Slot::Cleaning;
                st.outgoing.set(i, &CLEAN);
                changed = true;
            }
            Slot::Cleaning => {
                if matches!(incoming.message(i), Ok(Message::Clean | Message::Empty)) {
                    st.slots[i] = Slot::Free;
                    st.outgoing.set(i, &[0; 64]);
                    changed = true;
                }
            }
        }
    }
    changed
}
