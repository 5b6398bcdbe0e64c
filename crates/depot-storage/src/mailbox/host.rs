//! The host side of the mailbox (VDSM's `HSM_Mailbox`): a request goes
//! into a free slot of this host's mailbox in `inbox` (followed by an
//! event in the event block, so the SPM reads it at once), and a thread of
//! its own reads this host's mailbox in `outbox` until the SPM's answer is
//! there; the caller waits for it. Then the slot is handed back as VDSM
//! does: the host writes CLEAN over its request, the SPM answers CLEAN,
//! and the host empties the slot. A slot is reused only after that, so an
//! old answer can never be taken for a new one.
//!
//! A mailbox that starts reads what is in its slots first (as VDSM's
//! `_initMailbox` does): a slot the SPM may not be done with (a request
//! of an earlier run in `inbox`, an answer in `outbox`: `stale_slots`) is
//! not free. It is handed back as an answered slot is (CLEAN, then the
//! SPM's CLEAN), so that neither a stale answer nor the late answer to an
//! earlier run's request can be taken for a new request. A mailbox that
//! stops hands back the same way the slots whose request may still be
//! answered (CLEAN, not empty), so the next run knows them.
//!
//! One host mailbox per pool and host in this process writes: a second
//! one started for the same `inbox` and host (a reconnect) takes it over,
//! and the first one writes nothing any more (not even its final empty
//! mailbox, which would blank the new one's requests); its thread ends and
//! its waiting callers get an error.
//!
//! The same request twice (same domain, volume and size) while the first
//! waits shares its slot. Requests nobody waits for any more (timed out)
//! keep their slot until the SPM answers them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
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
    /// Answered; CLEAN written, waiting for the SPM's CLEAN (or an empty
    /// slot: a new SPM cleared `outbox`).
    Cleaning,
    /// Held by an earlier run when this mailbox started; CLEAN written,
    /// waiting for the SPM's CLEAN only: an empty slot may still get the
    /// late answer to that run's request.
    Stale,
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
    /// Why this mailbox takes no requests any more (stopped, or taken
    /// over by a newer one).
    closed: Option<&'static str>,
}

/// Who may write one host's mailbox in one `inbox` (module docs).
struct Owner {
    /// The generation of the mailbox that owns it.
    current: AtomicU64,
    /// Held across each write, so that a take-over never falls between an
    /// owner's check and its write.
    io: Mutex<()>,
}

/// The owners by `inbox` path and host id. Entries are never removed: one
/// per pool and host id this process ever used.
type Owners = Mutex<HashMap<(PathBuf, HostId), Arc<Owner>>>;

fn owner_of(inbox: &std::path::Path, host: HostId) -> Arc<Owner> {
    static OWNERS: OnceLock<Owners> = OnceLock::new();
    let mut owners = OWNERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    Arc::clone(
        owners
            .entry((inbox.to_path_buf(), host))
            .or_insert_with(|| {
                Arc::new(Owner {
                    current: AtomicU64::new(0),
                    io: Mutex::new(()),
                })
            }),
    )
}

fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

const SUPERSEDED: &str = "another mailbox of this host in this pool took over (a reconnect)";
const STOPPED: &str = "this host's mailbox was stopped";

struct Inner {
    config: HostConfig,
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    owner: Arc<Owner>,
    generation: u64,
}

/// One host's mailbox in one pool. Dropping it stops its thread.
pub struct HostMailer {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

/// A request sent and not answered yet ([`HostMailer::send`]). Dropping it
/// stops waiting; the request keeps its slot until the SPM answers it.
pub struct Pending {
    inner: Arc<Inner>,
    slot: usize,
    ticket: u64,
    req: Extend,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_owner(&self) -> bool {
        self.owner.current.load(Ordering::Relaxed) == self.generation
    }

    /// Writes this host's mailbox, if this mailbox still owns it.
    fn write_owned(&self, mailbox: &Mailbox) -> StorageResult<()> {
        let _io = self.owner.io.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.is_owner() {
            return Err(StorageError::new(
                Code::MiscFileWriteException,
                "write mailbox",
                SUPERSEDED,
            ));
        }
        io::write(
            &self.config.inbox,
            self.config.host.offset(),
            &mailbox.to_bytes(),
        )
    }

    fn send(&self, state: &State) -> StorageResult<()> {
        self.write_owned(&state.outgoing)
    }

    /// Marks this mailbox closed and wakes every waiter.
    fn close(&self, st: &mut State, why: &'static str) {
        if st.closed.is_none() {
            st.closed = Some(why);
        }
        self.changed.notify_all();
    }
}

/// The slots an earlier run left (module docs), from what `inbox` and
/// `outbox` hold in this host's mailbox when it starts. A slot is free
/// when the SPM is done with it: nothing was sent and nothing answered,
/// or the SPM answered the earlier run's CLEAN with its own (it handles a
/// host's slots in order, so nothing of that slot is still under way).
/// Everything else waits for the SPM's CLEAN: a request (perhaps being
/// extended now), a CLEAN not answered yet, an answer.
fn stale_slots(inbox: &Mailbox, outbox: &Mailbox) -> [bool; MESSAGES_PER_MAILBOX] {
    let mut stale = [false; MESSAGES_PER_MAILBOX];
    for (i, s) in stale.iter_mut().enumerate() {
        let free = matches!(
            (inbox.message(i), outbox.message(i)),
            (Ok(Message::Empty), Ok(Message::Empty | Message::Clean))
                | (Ok(Message::Clean), Ok(Message::Clean))
        );
        *s = !free;
    }
    stale
}

fn read_mailbox(path: &std::path::Path, host: HostId) -> StorageResult<Mailbox> {
    let b = io::read(path, host.offset(), MAILBOX_SIZE)?;
    Mailbox::parse_unchecked(&b)
        .map_err(|e| StorageError::new(Code::MiscFileReadException, "read mailbox", e.to_string()))
}

impl HostMailer {
    /// Takes this host's mailbox over (module docs), reads what an earlier
    /// run left in its slots, writes it with those slots handed back and
    /// the others empty (requests of an earlier run are forgotten, as VDSM
    /// does), and starts the thread.
    pub fn start(config: HostConfig) -> StorageResult<HostMailer> {
        const OP: &str = "start host mailbox";
        let owner = owner_of(&config.inbox, config.host);
        let generation = next_generation();
        let mut state = State {
            slots: [Slot::Free; MESSAGES_PER_MAILBOX],
            waiters: HashMap::new(),
            answers: HashMap::new(),
            next_ticket: 0,
            outgoing: Mailbox::default(),
            last_error: None,
            closed: None,
        };
        {
            // Under the owner's I/O lock: the mailbox this one takes over
            // writes nothing between the reads and this one's first write.
            let _io = owner.io.lock().unwrap_or_else(PoisonError::into_inner);
            let sent = read_mailbox(&config.inbox, config.host).map_err(|e| e.in_op(OP))?;
            let answered = read_mailbox(&config.outbox, config.host).map_err(|e| e.in_op(OP))?;
            for (i, stale) in stale_slots(&sent, &answered).into_iter().enumerate() {
                if stale {
                    state.slots[i] = Slot::Stale;
                    state.outgoing.set(i, &CLEAN);
                }
            }
            owner.current.store(generation, Ordering::Relaxed);
            io::write(
                &config.inbox,
                config.host.offset(),
                &state.outgoing.to_bytes(),
            )
            .map_err(|e| e.in_op(OP))?;
        }
        let stale = state.slots.iter().filter(|s| **s == Slot::Stale).count();
        if stale > 0 {
            tracing::info!(host = %config.host, stale, "host mailbox: slots of an earlier run handed back first");
        }
        let inner = Arc::new(Inner {
            config,
            state: Mutex::new(state),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            owner,
            generation,
        });
        let t = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name(format!("mailbox-host-{}", inner.config.host))
            .spawn(move || run(&t))
            .map_err(|e| StorageError::os(Code::MiscFileWriteException, OP, e))?;
        Ok(HostMailer {
            inner,
            thread: Some(thread),
        })
    }

    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// Sends `req` (or joins the same request already waiting) without
    /// waiting for the answer.
    pub fn send(&self, req: Extend) -> StorageResult<Pending> {
        const OP: &str = "send extend request";
        let bytes = req.to_bytes();
        let mut st = self.inner.lock();
        if let Some(why) = st.closed {
            return Err(StorageError::new(Code::LogicalVolumeExtendError, OP, why));
        }
        if !self.inner.is_owner() {
            return Err(StorageError::new(
                Code::LogicalVolumeExtendError,
                OP,
                SUPERSEDED,
            ));
        }
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
        Ok(Pending {
            inner: Arc::clone(&self.inner),
            slot,
            ticket,
            req,
        })
    }

    /// Sends `req` and waits up to `timeout` for the SPM's answer: the
    /// size reached in MiB (0: the SPM could not extend). Blocking.
    pub fn request(&self, req: Extend, timeout: Duration) -> StorageResult<u64> {
        let deadline = Instant::now() + timeout;
        let pending = self.send(req)?;
        match pending.wait_until(deadline)? {
            Some(size) => Ok(size),
            None => Err(pending.no_answer(timeout)),
        }
    }
}

impl Pending {
    pub fn request(&self) -> Extend {
        self.req
    }

    /// Waits until `deadline` for the SPM's answer (size in MiB, 0: the
    /// SPM could not extend); `None` when it has not come yet (the request
    /// still waits: call again). An error when the mailbox was stopped or
    /// taken over.
    pub fn wait_until(&self, deadline: Instant) -> StorageResult<Option<u64>> {
        let mut st = self.inner.lock();
        loop {
            if let Some(size) = st.answers.remove(&self.ticket) {
                return Ok(Some(size));
            }
            if let Some(why) = st.closed {
                return Err(StorageError::new(
                    Code::LogicalVolumeExtendError,
                    "wait for the SPM's answer",
                    why,
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            st = self
                .inner
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The error of a request not answered after `waited`.
    pub fn no_answer(&self, waited: Duration) -> StorageError {
        let req = self.req;
        let why = self
            .inner
            .lock()
            .last_error
            .as_deref()
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default();
        StorageError::new(
            Code::LogicalVolumeExtendError,
            "send extend request",
            format!(
                "no answer from the SPM within {} s to extend volume {} of domain {} to {} MiB{why}",
                waited.as_secs_f64(),
                req.volume,
                req.domain,
                req.size_mib
            ),
        )
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.answers.remove(&self.ticket);
        if let Some(w) = st.waiters.get_mut(&self.slot) {
            w.retain(|t| *t != self.ticket);
        }
    }
}

impl Drop for HostMailer {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.close(&mut self.inner.lock(), STOPPED);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: idle while no slot is in use; otherwise reads this host's
/// mailbox in `outbox` every `poll` and moves the slots along. Ends when
/// stopped or taken over.
fn run(inner: &Inner) {
    let cfg = &inner.config;
    let mut st = inner.lock();
    while !inner.stop.load(Ordering::Relaxed) {
        if !inner.is_owner() {
            tracing::info!(host = %cfg.host, "host mailbox taken over by a newer one");
            inner.close(&mut st, SUPERSEDED);
            return;
        }
        if st.slots.iter().all(|s| *s == Slot::Free) {
            st = inner
                .changed
                .wait_timeout(st, Duration::from_secs(1))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        drop(st);
        let read = read_mailbox(&cfg.outbox, cfg.host);
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
    // Leave the mailbox with nothing pending: the slots whose request
    // may still be answered handed back (CLEAN: the next run waits for
    // the SPM's CLEAN before it uses them), the others empty (an answer
    // still in `outbox` keeps a slot from the next run too). Only while
    // this one owns it: a newer one's requests are not blanked.
    let mut last = Mailbox::default();
    for (i, s) in st.slots.iter().enumerate() {
        if matches!(s, Slot::Waiting(_) | Slot::Stale) {
            last.set(i, &CLEAN);
        }
    }
    drop(st);
    if let Err(e) = inner.write_owned(&last) {
        tracing::debug!(error = %e, "host mailbox: final mailbox not written");
    }
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
            Slot::Cleaning | Slot::Stale => {
                let done = match incoming.message(i) {
                    Ok(Message::Clean) => true,
                    Ok(Message::Empty) => st.slots[i] == Slot::Cleaning,
                    _ => false,
                };
                if done {
                    st.slots[i] = Slot::Free;
                    st.outgoing.set(i, &[0; 64]);
                    changed = true;
                }
            }
        }
    }
    changed
}
