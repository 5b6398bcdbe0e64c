//! JSON-RPC over STOMP 1.2, the engine's transport (docs/protocol.md,
//! "STOMP"). [`depot_stomp`] frames the bytes, [`session`] decides what
//! each frame means, and this module does the I/O:
//!
//! - a reader that parses frames, hands SEND bodies to the JSON-RPC layer
//!   (shared with HTTP and WebSocket: same limits, errors, batches and
//!   notifications), at most `max_concurrent_per_connection` at once (then
//!   it stops reading, which pushes back on the client), and drops a client
//!   that stays silent past the agreed heart-beats;
//! - a writer that sends what the connection queued (answers, events,
//!   receipts) and a heart-beat whenever it has been quiet for the agreed
//!   interval;
//! - an event forwarder, once the client subscribes to the events.
//!
//! The queue between them holds at most `stomp_max_pending_messages`
//! frames and, once it holds `stomp_max_pending_bytes`, takes no more (a
//! single larger answer still goes through an empty queue): a client that
//! stops reading fills it and is dropped with an ERROR, so it cannot grow
//! depotd's memory; the socket is also paced ([`crate::pace`]).

pub mod session;

use depot_stomp::{Frame, Parser, HEARTBEAT};
use std::any::Any;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::{broadcast, mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::call::CallCtx;
use crate::events::{Event, EventBus};
use crate::jsonrpc::JsonRpc;
use session::{error_frame, Action, Session, EVENT_DESTINATION};

/// The STOMP limits (docs/config.md).
#[derive(Debug, Clone, Copy)]
pub struct StompLimits {
    /// Frame size: the head (`stomp_max_header_bytes`,
    /// `stomp_max_headers`) and the body (`max_request_bytes`).
    pub frame: depot_stomp::Limits,
    pub max_subscriptions: usize,
    /// Frames queued for a client before it counts as not reading.
    pub max_pending: usize,
    /// Bytes queued for a client past which it counts as not reading.
    pub max_pending_bytes: usize,
    /// How long a client that sends no heart-beats may stay silent; the
    /// longest any client may.
    pub idle_timeout: Duration,
}

/// What one STOMP connection gets from its listener.
pub struct StompConn {
    pub peer: Arc<str>,
    /// The connection's call slots, shared with the JSON-RPC layer.
    pub permits: Arc<Semaphore>,
    pub max_concurrent: usize,
    pub jsonrpc: Arc<JsonRpc>,
    pub events: EventBus,
    pub shutdown: watch::Receiver<bool>,
    pub limits: StompLimits,
    /// How long the client has for its CONNECT frame.
    pub connect_timeout: Duration,
    /// Keeps the connection's place in its pool while anything of it runs
    /// (calls in flight included).
    pub hold: Arc<dyn Any + Send + Sync>,
}

/// Bytes read at a time: one TLS record.
const READ_CHUNK: usize = 16 * 1024;
/// Frames queued together are written together, up to this much.
const WRITE_BATCH: usize = 64 * 1024;
/// How long a connection that is dropped (slow, silent) gets to take its
/// ERROR frame.
const LAST_WORDS: Duration = Duration::from_secs(1);

fn lock(s: &Mutex<Session>) -> MutexGuard<'_, Session> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The queue to the writer. A full queue means the client is not reading.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Vec<u8>>,
    /// Bytes in the queue; the writer takes off what it dequeues.
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    overflow: Arc<Notify>,
}

impl Outbox {
    /// Queues a frame; false when the connection is ending or the client
    /// stopped reading (the session is then told to drop it).
    fn push(&self, frame: &Frame) -> bool {
        if self.queued.load(Ordering::Relaxed) >= self.max_bytes {
            self.overflow.notify_one();
            return false;
        }
        let bytes = frame.encode();
        let len = bytes.len();
        self.queued.fetch_add(len, Ordering::Relaxed);
        match self.tx.try_send(bytes) {
            Ok(()) => true,
            Err(e) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    self.overflow.notify_one();
                }
                false
            }
        }
    }
}

/// How the writer ends.
#[derive(Debug, Clone)]
struct Stop {
    /// Write what is queued first (a goodbye), or give up on it (a client
    /// that does not read or went silent).
    drain: bool,
    /// The frame to end with (ERROR, or the RECEIPT of a DISCONNECT).
    last: Option<Arc<Vec<u8>>>,
}

/// Why the session ended.
enum End {
    /// The client closed the connection, or writing to it failed.
    Gone(String),
    Disconnect(Option<String>),
    /// A protocol error: ERROR, and close.
    Fail(String, Option<String>),
    /// Silent past its heart-beats or idle timeout, or it stopped reading.
    Drop(String),
    Shutdown,
}

pub async fn serve<S>(stream: S, conn: StompConn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = conn.limits;
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(limits.max_pending);
    let (stop_tx, stop_rx) = watch::channel(None::<Stop>);
    let beat_ms = Arc::new(AtomicU64::new(0));
    let queued = Arc::new(AtomicUsize::new(0));
    let mut writer = tokio::spawn(write_loop(wr, rx, stop_rx, beat_ms.clone(), queued.clone()));
    let mut writer_done = false;
    let outbox = Outbox {
        tx,
        queued,
        max_bytes: limits.max_pending_bytes,
        overflow: Arc::new(Notify::new()),
    };
    let mut shutdown = conn.shutdown.clone();
    let mut parser = Parser::new(limits.frame);
    let mut buf = vec![0u8; READ_CHUNK];
    tracing::debug!(peer = %conn.peer, "STOMP connection");
    let mut reader = Reader::new(conn, outbox, beat_ms);

    let end = 'session: loop {
        let (deadline, why) = reader.deadline();
        let read = tokio::select! {
            r = rd.read(&mut buf) => r,
            _ = tokio::time::sleep_until(deadline) => {
                if why.is_empty() || Instant::now() < deadline {
                    continue;
                }
                break End::Drop(why);
            }
            _ = reader.outbox.overflow.notified() => break End::Drop(format!(
                "not reading: {} messages or {} bytes pending (limits.stomp_max_pending_messages, stomp_max_pending_bytes)",
                limits.max_pending, limits.max_pending_bytes
            )),
            _ = &mut writer, if !writer_done => {
                writer_done = true;
                break End::Gone("writing failed".into());
            }
            _ = shutdown.wait_for(|s| *s) => break End::Shutdown,
        };
        let n = match read {
            Ok(0) if parser.in_frame() => {
                break End::Fail(
                    "the connection closed in the middle of a frame".into(),
                    None,
                )
            }
            Ok(0) => break End::Gone("closed by the client".into()),
            Ok(n) => n,
            Err(e) => break End::Gone(format!("reading failed: {e}")),
        };
        reader.last_heard = Instant::now();
        parser.push(&buf[..n]);
        loop {
            let frame = match parser.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'session End::Fail(e.to_string(), None),
            };
            let actions = lock(&reader.session).handle(frame);
            for action in actions {
                if let Some(end) = reader.act(action).await {
                    break 'session end;
                }
            }
        }
    };

    let stop = reader.stop(&end).await;
    let sent_last = stop.last.is_some();
    let _ = stop_tx.send(Some(stop));
    // The writer ends once no one queues anymore; the connection's place
    // in its pool (`hold`) is kept until the last words below.
    let Reader { outbox, conn, .. } = reader;
    drop(outbox);
    if !writer_done {
        let _ = writer.await;
    }
    // Read what the client already sent before the socket closes: closing
    // with unread bytes resets the connection, which can destroy the last
    // frame before the client reads it.
    if sent_last && !matches!(end, End::Gone(_)) {
        let _ = tokio::time::timeout(LAST_WORDS, async {
            while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
    }
    drop(conn);
}

/// What the reader of one connection keeps between frames, and what it
/// does with the session's actions.
struct Reader {
    conn: StompConn,
    session: Arc<Mutex<Session>>,
    outbox: Outbox,
    /// Calls running; at most `max_concurrent`.
    in_flight: Arc<Semaphore>,
    /// When the last call answered: a client waiting for an answer is not
    /// idle, and neither is one that just got it.
    last_answer: Arc<Mutex<Instant>>,
    forwarder: Option<JoinHandle<()>>,
    /// The writer's heart-beat interval, in ms (0: none).
    beat_ms: Arc<AtomicU64>,
    start: Instant,
    last_heard: Instant,
    /// The client's heart-beat interval, once connected.
    expect: Option<Option<Duration>>,
}

impl Reader {
    fn new(conn: StompConn, outbox: Outbox, beat_ms: Arc<AtomicU64>) -> Reader {
        let start = Instant::now();
        Reader {
            session: Arc::new(Mutex::new(Session::new(
                conn.limits.max_subscriptions,
                concat!("depot/", env!("CARGO_PKG_VERSION")),
            ))),
            in_flight: Arc::new(Semaphore::new(conn.max_concurrent)),
            last_answer: Arc::new(Mutex::new(start)),
            forwarder: None,
            conn,
            outbox,
            beat_ms,
            start,
            last_heard: start,
            expect: None,
        }
    }

    /// When the client has been silent too long, and why; an empty reason
    /// means "look again then" (calls are running).
    fn deadline(&self) -> (Instant, String) {
        let limits = &self.conn.limits;
        let busy = self.in_flight.available_permits() < self.conn.max_concurrent;
        match self.expect {
            None => (
                self.start + self.conn.connect_timeout,
                format!(
                    "no CONNECT frame within {:.1} s",
                    self.conn.connect_timeout.as_secs_f64()
                ),
            ),
            Some(Some(every)) => {
                let grace = (2 * every).min(limits.idle_timeout);
                (
                    self.last_heard + grace,
                    format!(
                        "silent for {:.1} s, past its heart-beat of {:.1} s",
                        grace.as_secs_f64(),
                        every.as_secs_f64()
                    ),
                )
            }
            // A client waiting for its calls is not idle.
            Some(None) if busy => (Instant::now() + limits.idle_timeout, String::new()),
            Some(None) => {
                let answered = *self
                    .last_answer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                (
                    self.last_heard.max(answered) + limits.idle_timeout,
                    format!(
                        "idle for {:.1} s without heart-beats (limits.stomp_idle_timeout_s)",
                        limits.idle_timeout.as_secs_f64()
                    ),
                )
            }
        }
    }

    /// Does what the session asked; `Some` ends the session.
    async fn act(&mut self, action: Action) -> Option<End> {
        match action {
            Action::Send(f) => {
                self.outbox.push(&f);
            }
            Action::Connected { frame, heartbeat } => {
                let ms = heartbeat.send_every.map_or(0, |d| d.as_millis() as u64);
                self.beat_ms.store(ms, Ordering::Relaxed);
                self.expect = Some(heartbeat.expect_every);
                tracing::info!(
                    peer = %self.conn.peer,
                    heart_beat = frame.get("heart-beat").unwrap_or_default(),
                    "STOMP client connected"
                );
                self.outbox.push(&frame);
            }
            Action::Call {
                body,
                reply_to,
                flow_id,
            } => {
                // Wait for a slot before reading on: back-pressure.
                let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                    return Some(End::Gone("closing".into()));
                };
                self.last_heard = Instant::now();
                self.spawn_call(body, reply_to, flow_id, permit);
            }
            Action::WantsEvents => {
                if self.forwarder.is_none() {
                    self.forwarder = Some(tokio::spawn(forward_events(
                        self.conn.events.subscribe(),
                        self.session.clone(),
                        self.outbox.clone(),
                        self.conn.peer.clone(),
                    )));
                }
            }
            Action::Disconnect { receipt } => return Some(End::Disconnect(receipt)),
            Action::Fail { message, receipt } => return Some(End::Fail(message, receipt)),
        }
        None
    }

    /// Runs one JSON-RPC message; its answer goes to `reply_to`.
    fn spawn_call(
        &self,
        body: Vec<u8>,
        reply_to: String,
        flow_id: Option<String>,
        permit: OwnedSemaphorePermit,
    ) {
        let ctx = CallCtx {
            peer: self.conn.peer.clone(),
            flow_id,
            permits: self.conn.permits.clone(),
            subscriber: None,
        };
        let (jsonrpc, session, outbox) = (
            self.conn.jsonrpc.clone(),
            self.session.clone(),
            self.outbox.clone(),
        );
        let (hold, last_answer, peer) = (
            self.conn.hold.clone(),
            self.last_answer.clone(),
            self.conn.peer.clone(),
        );
        tokio::spawn(async move {
            if let Some(text) = jsonrpc.handle(&body, &ctx).await {
                let frames = lock(&session).messages_to(&reply_to, text.as_bytes());
                if frames.is_empty() {
                    tracing::info!(peer = %peer, reply_to, "STOMP answer dropped: no subscription to its destination");
                }
                for f in &frames {
                    outbox.push(f);
                }
            }
            *last_answer.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
            drop((permit, hold));
        });
    }

    /// How the writer ends, after the calls in flight answered where the
    /// client is still there to read them.
    async fn stop(&mut self, end: &End) -> Stop {
        if let Some(f) = self.forwarder.take() {
            f.abort();
        }
        let (max, peer) = (self.conn.max_concurrent as u32, &self.conn.peer);
        match end {
            End::Gone(why) => {
                tracing::debug!(peer = %peer, why, "STOMP connection ended");
                Stop {
                    drain: false,
                    last: None,
                }
            }
            End::Disconnect(receipt) => {
                // Every answer before the receipt.
                let _ = self.in_flight.acquire_many(max).await;
                tracing::debug!(peer = %peer, "STOMP client disconnected");
                Stop {
                    drain: true,
                    last: receipt.as_ref().map(|r| {
                        Arc::new(
                            Frame::new(depot_stomp::Command::Receipt)
                                .with("receipt-id", r.as_str())
                                .encode(),
                        )
                    }),
                }
            }
            End::Fail(message, receipt) => {
                tracing::info!(peer = %peer, error = %message, "STOMP protocol error; closing");
                Stop {
                    drain: true,
                    last: Some(Arc::new(error_frame(message, receipt.as_deref()).encode())),
                }
            }
            End::Drop(why) => {
                tracing::info!(peer = %peer, why, "STOMP client dropped");
                Stop {
                    drain: false,
                    last: Some(Arc::new(error_frame(why, None).encode())),
                }
            }
            End::Shutdown => {
                let _ = self.in_flight.acquire_many(max).await;
                Stop {
                    drain: true,
                    last: Some(Arc::new(
                        error_frame("depotd is shutting down", None).encode(),
                    )),
                }
            }
        }
    }
}

/// Sends what is queued, and a heart-beat after `beat_ms` of quiet, until
/// told to stop.
async fn write_loop<W: AsyncWrite>(
    mut wr: WriteHalf<W>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut stop: watch::Receiver<Option<Stop>>,
    beat_ms: Arc<AtomicU64>,
    queued: Arc<AtomicUsize>,
) {
    let mut last_write = Instant::now();
    // A frame was cut off by a hard stop: nothing more can be framed.
    let mut cut = false;
    loop {
        let beat = match beat_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        let batch = tokio::select! {
            biased;
            _ = stop.wait_for(Option::is_some) => break,
            m = rx.recv() => match m {
                Some(mut b) => {
                    while b.len() < WRITE_BATCH {
                        match rx.try_recv() {
                            Ok(more) => b.extend_from_slice(&more),
                            Err(_) => break,
                        }
                    }
                    queued.fetch_sub(b.len(), Ordering::Relaxed);
                    b
                }
                None => break,
            },
            _ = tokio::time::sleep_until(last_write + beat.unwrap_or_default()), if beat.is_some() => {
                HEARTBEAT.to_vec()
            }
        };
        // Only a hard stop (the client is not reading) abandons a write.
        let hard_stop = async {
            let hard = stop
                .wait_for(|s| s.as_ref().is_some_and(|s| !s.drain))
                .await
                .is_ok();
            if !hard {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = async { wr.write_all(&batch).await?; wr.flush().await } => {
                if r.is_err() {
                    return;
                }
            }
            () = hard_stop => {
                cut = true;
                break;
            }
        }
        last_write = Instant::now();
    }
    let stop = stop.borrow().clone();
    if let Some(stop) = stop {
        let finish = async {
            if stop.drain {
                while let Ok(b) = rx.try_recv() {
                    wr.write_all(&b).await?;
                }
            }
            if let Some(last) = &stop.last {
                if !cut {
                    wr.write_all(last).await?;
                }
            }
            wr.flush().await?;
            wr.shutdown().await
        };
        // A goodbye is paced like any write; a dropped client gets a moment.
        if stop.drain {
            let _ = finish.await;
        } else {
            let _ = tokio::time::timeout(LAST_WORDS, finish).await;
        }
    } else {
        let _ = tokio::time::timeout(LAST_WORDS, wr.shutdown()).await;
    }
}

/// Every event of the bus, to this connection's event subscriptions.
async fn forward_events(
    mut rx: broadcast::Receiver<Arc<Event>>,
    session: Arc<Mutex<Session>>,
    outbox: Outbox,
    peer: Arc<str>,
) {
    loop {
        match rx.recv().await {
            Ok(ev) => {
                let frames = lock(&session).messages_to(EVENT_DESTINATION, ev.text.as_bytes());
                for f in &frames {
                    if !outbox.push(f) {
                        return;
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(peer = %peer, missed = n, "a STOMP client missed events");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
