//! JSON-RPC over a WebSocket: each text (or binary) message is a request or
//! a batch; responses and events go back as text messages. Calls of one
//! connection run concurrently up to the per-connection limit; when the limit
//! is reached the server stops reading, which pushes back on the client.
//!
//! The server pings every `limits.ws_ping_interval_s`; a connection that
//! sends nothing (not even the pong a live client's library sends by
//! itself) for `limits.ws_idle_timeout_s` is closed, and so is one whose
//! client stops taking what the server sends (the socket is paced).

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::Shared;
use crate::call::{CallCtx, Subscribe};
use crate::conn::{self, Conn};
use crate::events::EventBus;

/// Outgoing messages queued per connection before writers wait.
const OUT_QUEUE: usize = 256;

pub async fn serve<S>(
    stream: WebSocketStream<S>,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
    flow_id: Option<String>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut incoming) = stream.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(OUT_QUEUE);
    let (writer, mut writer_done) = spawn_writer(sink, out_rx, conn.peer.clone());

    let max = shared.max_concurrent_per_connection;
    let in_flight = Arc::new(Semaphore::new(max));
    let subscriber = Arc::new(Subscriber::new(out_tx.clone(), shared.events.clone()));
    let ctx = Arc::new(CallCtx {
        peer: conn.peer.clone(),
        flow_id,
        permits: conn.permits.clone(),
        subscriber: Some(subscriber.clone()),
    });
    let mut shutdown = shared.shutdown.clone();
    let (every, idle) = (shared.ws_ping_interval, shared.ws_idle_timeout);
    let mut ping = tokio::time::interval_at(Instant::now() + every, every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let close = loop {
        // Wait for a free slot before reading the next message. A client
        // waiting for its calls is not idle.
        let permit = match in_flight.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let Ok(p) = in_flight.clone().acquire_owned().await else {
                    break None;
                };
                last_heard = Instant::now();
                p
            }
        };
        let msg = tokio::select! {
            m = incoming.next() => m,
            _ = ping.tick() => {
                // Skipped when the queue is full: the client is busy
                // reading, or the pacing will close it.
                let _ = out_tx.try_send(Message::Ping(Vec::new()));
                continue;
            }
            _ = tokio::time::sleep_until(last_heard + idle) => {
                tracing::info!(peer = %conn.peer, idle_s = idle.as_secs_f64(), "WebSocket idle; closing");
                break Some(close_frame(CloseCode::Away, "idle timeout"));
            }
            _ = &mut writer_done => break None,
            _ = conn::stopping(&mut shutdown) => break Some(close_frame(CloseCode::Away, "depotd is shutting down")),
        };
        last_heard = Instant::now();
        let body = match msg {
            Some(Ok(Message::Text(t))) => t.into_bytes(),
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(_))) | None => break None,
            // Pings are answered by the library; pongs only show that the
            // client is alive.
            Some(Ok(_)) => continue,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                tracing::info!(peer = %conn.peer, size, max_size, "WebSocket message too large");
                break Some(close_frame(
                    CloseCode::Size,
                    "message exceeds the request size limit",
                ));
            }
            Some(Err(e)) => {
                tracing::debug!(peer = %conn.peer, error = %e, "WebSocket read failed");
                break None;
            }
        };
        let (ctx, out, shared) = (ctx.clone(), out_tx.clone(), shared.clone());
        tokio::spawn(async move {
            if let Some(text) = shared.jsonrpc.handle(&body, &ctx).await {
                let _ = out.send(Message::Text(text)).await;
            }
            drop(permit);
        });
    };
    // Let calls in flight answer before the close frame goes out.
    let _ = in_flight.acquire_many(max as u32).await;
    subscriber.stop();
    // The writer stops after a close frame, whoever still holds a sender.
    let _ = out_tx.send(Message::Close(close)).await;
    let _ = writer.await;
}

/// Sends what is queued until a close frame. The receiver resolves when
/// the writer ends; before the close frame that means the client stopped
/// reading (or went away), and reading on is pointless.
fn spawn_writer<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut out_rx: mpsc::Receiver<Message>,
    peer: Arc<str>,
) -> (JoinHandle<()>, oneshot::Receiver<()>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (writer_alive, writer_done) = oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            let closing = matches!(msg, Message::Close(_));
            if let Err(e) = sink.send(msg).await {
                tracing::info!(peer = %peer, error = %e, "WebSocket write failed; closing");
                break;
            }
            if closing {
                break;
            }
        }
        let _ = sink.close().await;
        drop(writer_alive);
    });
    (writer, writer_done)
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame<'static> {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// The event subscription of one WebSocket connection.
pub struct Subscriber {
    out: mpsc::Sender<Message>,
    bus: EventBus,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Subscriber {
    fn new(out: mpsc::Sender<Message>, bus: EventBus) -> Self {
        Subscriber {
            out,
            bus,
            task: Mutex::new(None),
        }
    }

    fn stop(&self) {
        if let Ok(mut slot) = self.task.lock() {
            if let Some(t) = slot.take() {
                t.abort();
            }
        }
    }
}

impl Subscribe for Subscriber {
    /// Starts (or replaces) the subscription. An empty list means all events.
    fn subscribe(&self, prefixes: Vec<String>) {
        let mut rx = self.bus.subscribe();
        let out = self.out.clone();
        let task = tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        let wanted = prefixes.is_empty()
                            || prefixes.iter().any(|p| ev.name.starts_with(p.as_str()));
                        if wanted && out.send(Message::Text(ev.text.clone())).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a slow WebSocket client missed events");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        if let Ok(mut slot) = self.task.lock() {
            if let Some(old) = slot.replace(task) {
                old.abort();
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop();
    }
}
