//! JSON-RPC over STOMP 1.2, the way oVirt's engine talks to a host:
//! CONNECT with heart-beats, SUBSCRIBE to a response destination (and to
//! `jms.queue.events` for events), SEND each request to
//! `jms.topic.vdsm_requests` with `reply-to`. A background reader routes
//! MESSAGE frames: answers to the waiting calls by JSON-RPC id, events to
//! [`StompClient::next_event`].

use depot_stomp::{Command, Frame, Parser};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::endpoint::{host_part, Endpoint, Options};
use crate::error::ClientError;
use crate::jsonrpc;
use crate::stream;
use crate::ws::{lock, Pending, Router};

/// VDSM's request queue.
pub const REQUEST_QUEUE: &str = "jms.topic.vdsm_requests";
/// VDSM's default response destination.
pub const RESPONSE_DESTINATION: &str = "jms.topic.vdsm_responses";
/// VDSM's event destination.
pub const EVENT_DESTINATION: &str = "jms.queue.events";

const RESPONSES_ID: &str = "depot-client-responses";
const EVENTS_ID: &str = "depot-client-events";

/// What the client's frame parser accepts from the server: answers may be
/// large (a listing of a big domain).
const LIMITS: depot_stomp::Limits = depot_stomp::Limits {
    max_header_bytes: 64 << 10,
    max_headers: 128,
    max_body_bytes: 256 << 20,
};

/// The STOMP side of a connection.
#[derive(Debug, Clone)]
pub struct StompOptions {
    /// `heart-beat: cx,cy` in CONNECT, in ms: how often this client sends
    /// something, how often it wants to hear from the server (0: never).
    pub heartbeat: (u64, u64),
    /// `ovirtCorrelationId` sent with every request.
    pub flow_id: Option<String>,
}

impl Default for StompOptions {
    fn default() -> Self {
        StompOptions {
            heartbeat: (10_000, 10_000),
            flow_id: None,
        }
    }
}

/// A JSON-RPC client over one STOMP connection. Clones share the
/// connection; calls may run concurrently.
#[derive(Clone)]
pub struct StompClient {
    inner: Arc<Inner>,
}

struct Inner {
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    receipts: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, Value)>>,
    prefixes: Mutex<Vec<String>>,
    unmatched: tokio::sync::Mutex<mpsc::UnboundedReceiver<Value>>,
    closed: Arc<Mutex<Option<String>>>,
    reader: JoinHandle<()>,
    endpoint: Endpoint,
    opts: Options,
    flow_id: Option<String>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer says DISCONNECT and closes once `out` is dropped.
        self.reader.abort();
    }
}

impl StompClient {
    /// Connects with the default timeouts (30 s) and heart-beats (10 s).
    pub async fn connect(ep: &Endpoint) -> Result<StompClient, ClientError> {
        StompClient::connect_with(ep, Options::default(), StompOptions::default()).await
    }

    /// Connects: CONNECT, SUBSCRIBE to the responses, wait for CONNECTED.
    pub async fn connect_with(
        ep: &Endpoint,
        opts: Options,
        stomp: StompOptions,
    ) -> Result<StompClient, ClientError> {
        let connecting = handshake(ep, &opts, &stomp);
        let (rd, wr, parser, connected) =
            match tokio::time::timeout(opts.connect_timeout, connecting).await {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(ClientError::Timeout {
                        what: format!("connecting STOMP to {ep}"),
                        after: opts.connect_timeout,
                    })
                }
            };
        let (send_every, hear_every) = agreed_heartbeats(&connected, &stomp);

        let closed: Arc<Mutex<Option<String>>> = Arc::default();
        let (out, out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(write_loop(wr, out_rx, send_every, closed.clone()));

        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let receipts: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>> = Arc::default();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (un_tx, un_rx) = mpsc::unbounded_channel();
        let router = Router {
            pending: pending.clone(),
            events: ev_tx,
            unmatched: un_tx,
        };
        let reader = tokio::spawn(read_loop(
            rd,
            parser,
            router,
            receipts.clone(),
            hear_every,
            closed.clone(),
            pending.clone(),
        ));
        Ok(StompClient {
            inner: Arc::new(Inner {
                out,
                pending,
                receipts,
                events: tokio::sync::Mutex::new(ev_rx),
                prefixes: Mutex::new(Vec::new()),
                unmatched: tokio::sync::Mutex::new(un_rx),
                closed,
                reader,
                endpoint: ep.clone(),
                opts,
                flow_id: stomp.flow_id,
            }),
        })
    }

    /// Why the connection is closed, or `None` while it is open.
    pub fn closed_reason(&self) -> Option<String> {
        if self.inner.reader.is_finished() || self.inner.out.is_closed() {
            Some(
                lock(&self.inner.closed)
                    .clone()
                    .unwrap_or_else(|| "closed".into()),
            )
        } else {
            None
        }
    }

    fn closed_error(&self) -> ClientError {
        let why = lock(&self.inner.closed)
            .clone()
            .unwrap_or_else(|| "closed".into());
        ClientError::Stomp(format!(
            "STOMP connection to {}: {why}",
            self.inner.endpoint
        ))
    }

    fn send_frame(&self, frame: &Frame) -> Result<(), ClientError> {
        self.inner
            .out
            .send(frame.encode())
            .map_err(|_| self.closed_error())
    }

    fn request_frame(&self, body: String) -> Frame {
        let mut f = Frame::new(Command::Send)
            .with("destination", REQUEST_QUEUE)
            .with("reply-to", RESPONSE_DESTINATION)
            .with("content-type", "application/json");
        if let Some(flow) = &self.inner.flow_id {
            f = f.with("ovirtCorrelationId", flow.clone());
        }
        f.with_body(body)
    }

    /// Calls `method` with `params` (`Value::Null` for none) and returns
    /// its result.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = jsonrpc::new_id();
        let (tx, rx) = oneshot::channel();
        match lock(&self.inner.pending).as_mut() {
            Some(m) => {
                m.insert(id.clone(), tx);
            }
            None => return Err(self.closed_error()),
        }
        let text = jsonrpc::request(method, params, Some(&id)).to_string();
        if let Err(e) = self.send_frame(&self.request_frame(text)) {
            self.forget(&id);
            return Err(e);
        }
        let after = self.inner.opts.call_timeout;
        match tokio::time::timeout(after, rx).await {
            Ok(Ok(v)) => jsonrpc::read_response(v, &id),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => {
                self.forget(&id);
                Err(ClientError::Timeout {
                    what: format!("waiting for the answer to {method}"),
                    after,
                })
            }
        }
    }

    fn forget(&self, id: &str) {
        if let Some(m) = lock(&self.inner.pending).as_mut() {
            m.remove(id);
        }
    }

    /// SENDs `text` as a request body as is (batches, broken JSON).
    /// Answers that match no call come back from
    /// [`StompClient::recv_raw`].
    pub async fn send_raw(&self, text: impl Into<String>) -> Result<(), ClientError> {
        self.send_frame(&self.request_frame(text.into()))
    }

    /// The next answer that matched no call made with
    /// [`StompClient::call`].
    pub async fn recv_raw(&self, timeout: Duration) -> Option<Value> {
        let mut rx = self.inner.unmatched.lock().await;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Subscribes to the events (`jms.queue.events`), keeping those whose
    /// name starts with one of `prefixes` (all when empty). Returns once
    /// the daemon confirmed the subscription (RECEIPT): no event after
    /// this is missed.
    pub async fn subscribe(&self, prefixes: &[&str]) -> Result<(), ClientError> {
        *lock(&self.inner.prefixes) = prefixes.iter().map(|p| p.to_string()).collect();
        let receipt = jsonrpc::new_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.receipts).insert(receipt.clone(), tx);
        self.send_frame(
            &Frame::new(Command::Subscribe)
                .with("destination", EVENT_DESTINATION)
                .with("id", EVENTS_ID)
                .with("ack", "auto")
                .with("receipt", receipt),
        )?;
        let after = self.inner.opts.call_timeout;
        match tokio::time::timeout(after, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(ClientError::Timeout {
                what: "waiting for the receipt of SUBSCRIBE".into(),
                after,
            }),
        }
    }

    /// The next event (its name and params) that passes the prefixes;
    /// `None` when nothing came within `timeout` or the connection closed
    /// and all events were read.
    pub async fn next_event(&self, timeout: Duration) -> Option<(String, Value)> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.inner.events.lock().await;
        loop {
            let (name, params) = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .ok()
                .flatten()?;
            let prefixes = lock(&self.inner.prefixes).clone();
            if prefixes.is_empty() || prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                return Some((name, params));
            }
        }
    }

    /// DISCONNECT with a receipt: returns once the daemon answered every
    /// call in flight and confirmed.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        let receipt = jsonrpc::new_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.receipts).insert(receipt.clone(), tx);
        self.send_frame(&Frame::new(Command::Disconnect).with("receipt", receipt))?;
        let after = self.inner.opts.call_timeout;
        match tokio::time::timeout(after, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(ClientError::Timeout {
                what: "waiting for the receipt of DISCONNECT".into(),
                after,
            }),
        }
    }

    /// The endpoint this client is connected to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }
}

/// A read or write failure while connecting: the server refusing our
/// certificate shows up as a TLS alert on the first read.
fn io_error(ep: &Endpoint, e: &std::io::Error) -> ClientError {
    let msg = format!("connecting to {ep}: {}", crate::error::chain(e));
    if crate::error::is_tls(e) {
        ClientError::Tls(msg)
    } else {
        ClientError::Stomp(msg)
    }
}

fn error_text(f: &Frame) -> String {
    match f.get("message") {
        Some(m) => m.to_string(),
        None => jsonrpc::truncate(&String::from_utf8_lossy(&f.body), 200),
    }
}

/// The halves of a connection that said CONNECTED, the parser holding
/// what followed it, and the CONNECTED frame.
type Connected = (
    tokio::io::ReadHalf<stream::Stream>,
    tokio::io::WriteHalf<stream::Stream>,
    Parser,
    Frame,
);

/// Opens the stream, sends CONNECT and the SUBSCRIBE to the responses,
/// and reads up to CONNECTED.
async fn handshake(
    ep: &Endpoint,
    opts: &Options,
    stomp: &StompOptions,
) -> Result<Connected, ClientError> {
    let s = stream::open(ep, opts).await?;
    let (mut rd, mut wr) = tokio::io::split(s);
    let host = match ep {
        Endpoint::Tls { addr, .. } => host_part(addr).to_string(),
        Endpoint::Unix(_) => "localhost".to_string(),
    };
    let connect = Frame::new(Command::Connect)
        .with("accept-version", "1.2")
        .with("host", host)
        .with(
            "heart-beat",
            format!("{},{}", stomp.heartbeat.0, stomp.heartbeat.1),
        )
        .encode();
    let subscribe = Frame::new(Command::Subscribe)
        .with("destination", RESPONSE_DESTINATION)
        .with("id", RESPONSES_ID)
        .with("ack", "auto")
        .encode();
    let sent = async {
        wr.write_all(&[connect, subscribe].concat()).await?;
        wr.flush().await
    };
    sent.await.map_err(|e| io_error(ep, &e))?;
    // Read up to CONNECTED; what follows it stays in the parser.
    let mut parser = Parser::new(LIMITS);
    let mut buf = vec![0u8; 16 * 1024];
    let connected = loop {
        match parser.next_frame() {
            Ok(Some(f)) if f.command == Command::Connected => break f,
            Ok(Some(f)) if f.command == Command::Error => {
                return Err(ClientError::Stomp(format!(
                    "{ep} refused the connection: {}",
                    error_text(&f)
                )))
            }
            Ok(Some(f)) => {
                return Err(ClientError::Stomp(format!(
                    "{ep} answered CONNECT with {}",
                    f.command
                )))
            }
            Ok(None) => {}
            Err(e) => return Err(ClientError::Stomp(format!("from {ep}: {e}"))),
        }
        let n = rd.read(&mut buf).await.map_err(|e| io_error(ep, &e))?;
        if n == 0 {
            return Err(ClientError::Stomp(format!(
                "{ep} closed the connection before CONNECTED"
            )));
        }
        parser.push(&buf[..n]);
    };
    Ok((rd, wr, parser, connected))
}

/// The heart-beats agreed in CONNECTED: (how often we send, how often we
/// must hear the server), each `None` when off.
fn agreed_heartbeats(
    connected: &Frame,
    stomp: &StompOptions,
) -> (Option<Duration>, Option<Duration>) {
    // The agreed heart-beats: the server's `sx,sy` against ours.
    let (sx, sy) = connected
        .get("heart-beat")
        .and_then(|h| h.split_once(','))
        .map(|(a, b)| {
            (
                a.trim().parse::<u64>().unwrap_or(0),
                b.trim().parse::<u64>().unwrap_or(0),
            )
        })
        .unwrap_or((0, 0));
    let agreed = |ours: u64, theirs: u64| {
        (ours > 0 && theirs > 0).then(|| Duration::from_millis(ours.max(theirs)))
    };
    let send_every = agreed(stomp.heartbeat.0, sy);
    let hear_every = agreed(stomp.heartbeat.1, sx);
    (send_every, hear_every)
}

async fn write_loop<W: tokio::io::AsyncWrite>(
    mut wr: tokio::io::WriteHalf<W>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    beat: Option<Duration>,
    closed: Arc<Mutex<Option<String>>>,
) {
    let mut last = Instant::now();
    loop {
        let next = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep_until(last + beat.unwrap_or_default()), if beat.is_some() => {
                Some(depot_stomp::HEARTBEAT.to_vec())
            }
        };
        let Some(mut bytes) = next else { break };
        while let Ok(more) = rx.try_recv() {
            bytes.extend_from_slice(&more);
        }
        let written = async {
            wr.write_all(&bytes).await?;
            wr.flush().await
        };
        if let Err(e) = written.await {
            lock(&closed).get_or_insert_with(|| format!("sending: {e}"));
            return;
        }
        last = Instant::now();
    }
    // Every handle is gone: say goodbye.
    let bye = Frame::new(Command::Disconnect).encode();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        wr.write_all(&bye).await?;
        wr.shutdown().await
    })
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn read_loop<R: tokio::io::AsyncRead>(
    mut rd: tokio::io::ReadHalf<R>,
    mut parser: Parser,
    router: Router,
    receipts: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>,
    hear_every: Option<Duration>,
    closed: Arc<Mutex<Option<String>>>,
    pending: Pending,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let reason = 'conn: loop {
        loop {
            match parser.next_frame() {
                Ok(Some(f)) => match f.command {
                    Command::Message => router.dispatch(&String::from_utf8_lossy(&f.body)),
                    Command::Receipt => {
                        if let Some(tx) =
                            f.get("receipt-id").and_then(|r| lock(&receipts).remove(r))
                        {
                            let _ = tx.send(());
                        }
                    }
                    Command::Error => {
                        break 'conn format!("the server sent ERROR: {}", error_text(&f))
                    }
                    other => break 'conn format!("unexpected {other} frame from the server"),
                },
                Ok(None) => break,
                Err(e) => break 'conn format!("malformed frame from the server: {e}"),
            }
        }
        // The server beats at `hear_every`; allow three.
        let read = match hear_every {
            Some(every) => match tokio::time::timeout(3 * every, rd.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => break format!("the server was silent for {:?}", 3 * every),
            },
            None => rd.read(&mut buf).await,
        };
        match read {
            Ok(0) => break "closed by the server".to_string(),
            Ok(n) => parser.push(&buf[..n]),
            Err(e) => break format!("receiving: {e}"),
        }
    };
    lock(&closed).get_or_insert(reason);
    // Dropping the senders wakes every waiting call.
    lock(&pending).take();
    lock(&receipts).clear();
}
