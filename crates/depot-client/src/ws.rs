//! JSON-RPC over WebSocket: concurrent calls matched by id, and the events
//! the daemon pushes after `Host.subscribeEvents`.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::endpoint::{Endpoint, Options};
use crate::error::{transport, ClientError};
use crate::http::FLOW_ID_HEADER;
use crate::jsonrpc::{self, truncate};
use crate::stream;

/// Calls waiting for their response, by request id. `None` once the
/// connection is closed, so no call can wait forever on it.
pub(crate) type Pending = Arc<Mutex<Option<HashMap<String, oneshot::Sender<Value>>>>>;

/// A JSON-RPC client over one WebSocket connection. Clones share the
/// connection; calls may run concurrently from clones or from `&self`.
#[derive(Clone)]
pub struct WsClient {
    inner: Arc<Inner>,
}

struct Inner {
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, Value)>>,
    unmatched: tokio::sync::Mutex<mpsc::UnboundedReceiver<Value>>,
    closed: Arc<Mutex<Option<String>>>,
    reader: JoinHandle<()>,
    endpoint: Endpoint,
    opts: Options,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer ends by itself (sending a Close frame) once `out` is
        // dropped; the reader would wait for the server.
        self.reader.abort();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WsClient {
    /// Connects with the default timeouts (30 s).
    pub async fn connect(ep: &Endpoint) -> Result<WsClient, ClientError> {
        WsClient::connect_with(ep, Options::default()).await
    }

    pub async fn connect_with(ep: &Endpoint, opts: Options) -> Result<WsClient, ClientError> {
        WsClient::connect_with_flow_id(ep, opts, None).await
    }

    /// Connects, sending `flow_id` (if any) in the `ovirtCorrelationId`
    /// header of the upgrade request.
    pub async fn connect_with_flow_id(
        ep: &Endpoint,
        opts: Options,
        flow_id: Option<&str>,
    ) -> Result<WsClient, ClientError> {
        let mut req = format!("ws://{}/", ep.authority())
            .into_client_request()
            .map_err(|e| ClientError::Protocol(format!("building upgrade request: {e}")))?;
        if let Some(f) = flow_id {
            let v = HeaderValue::from_str(f)
                .map_err(|e| ClientError::Protocol(format!("bad flow id {f:?}: {e}")))?;
            req.headers_mut().insert(FLOW_ID_HEADER, v);
        }
        let upgrade = async {
            let s = stream::open(ep, &opts).await?;
            tokio_tungstenite::client_async(req, s)
                .await
                .map_err(|e| upgrade_error(ep, e))
        };
        let (ws, _resp) = match tokio::time::timeout(opts.connect_timeout, upgrade).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ClientError::Timeout {
                    what: format!("connecting a WebSocket to {ep}"),
                    after: opts.connect_timeout,
                })
            }
        };
        let (mut sink, mut source) = ws.split();

        let closed: Arc<Mutex<Option<String>>> = Arc::default();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let closed_w = closed.clone();
        tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                if let Err(e) = sink.send(msg).await {
                    lock(&closed_w).get_or_insert_with(|| format!("sending: {e}"));
                    return;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), sink.close()).await;
        });

        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (un_tx, un_rx) = mpsc::unbounded_channel();
        let router = Router {
            pending: pending.clone(),
            events: ev_tx,
            unmatched: un_tx,
        };
        let closed_r = closed.clone();
        let pending_r = pending.clone();
        let reader = tokio::spawn(async move {
            let reason = loop {
                match source.next().await {
                    Some(Ok(Message::Text(t))) => router.dispatch(&t),
                    Some(Ok(Message::Binary(b))) => router.dispatch(&String::from_utf8_lossy(&b)),
                    Some(Ok(Message::Close(f))) => {
                        break match f {
                            Some(f) => format!("closed by the server: {} {}", f.code, f.reason),
                            None => "closed by the server".to_string(),
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("receiving: {e}"),
                    None => break "closed by the server".to_string(),
                }
            };
            lock(&closed_r).get_or_insert(reason);
            // Dropping the senders wakes every waiting call.
            lock(&pending_r).take();
        });

        Ok(WsClient {
            inner: Arc::new(Inner {
                out,
                pending,
                events: tokio::sync::Mutex::new(ev_rx),
                unmatched: tokio::sync::Mutex::new(un_rx),
                closed,
                reader,
                endpoint: ep.clone(),
                opts,
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
        ClientError::Http(format!(
            "WebSocket connection to {}: {why}",
            self.inner.endpoint
        ))
    }

    /// Calls `method` with `params` (`Value::Null` for none) and returns its
    /// result.
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
        if self.inner.out.send(Message::Text(text)).is_err() {
            self.forget(&id);
            return Err(self.closed_error());
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

    /// Subscribes to events whose name starts with one of `prefixes` (all
    /// events when empty).
    pub async fn subscribe(&self, prefixes: &[&str]) -> Result<(), ClientError> {
        let params = if prefixes.is_empty() {
            Value::Null
        } else {
            json!({ "prefixes": prefixes })
        };
        self.call("Host.subscribeEvents", params).await.map(|_| ())
    }

    /// Sends a text message as is. Answers that match no call made with
    /// [`WsClient::call`] come back from [`WsClient::recv_raw`].
    pub async fn send_raw(&self, text: impl Into<String>) -> Result<(), ClientError> {
        self.inner
            .out
            .send(Message::Text(text.into()))
            .map_err(|_| self.closed_error())
    }

    /// The next event (notification) the server pushed: its method (the
    /// event name, such as `|jobs|status|<id>`) and params. `None` when
    /// nothing came within `timeout` or the connection is closed and all
    /// events were read.
    pub async fn next_event(&self, timeout: Duration) -> Option<(String, Value)> {
        let mut rx = self.inner.events.lock().await;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message that was neither an answer to a pending call nor a
    /// notification: answers to [`WsClient::send_raw`] (a batch answer as
    /// an array; text that is not JSON as a JSON string).
    pub async fn recv_raw(&self, timeout: Duration) -> Option<Value> {
        let mut rx = self.inner.unmatched.lock().await;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The endpoint this client is connected to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }
}

fn upgrade_error(ep: &Endpoint, e: WsError) -> ClientError {
    match e {
        WsError::Http(resp) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| truncate(&String::from_utf8_lossy(b), 200))
                .unwrap_or_default();
            ClientError::Http(format!(
                "WebSocket upgrade with {ep} refused: HTTP status {} {body}",
                resp.status().as_u16()
            ))
        }
        e => transport(&format!("WebSocket upgrade with {ep}"), &e),
    }
}

/// Routes incoming messages: answers to waiting calls, notifications to the
/// event queue, the rest to the unmatched queue.
pub(crate) struct Router {
    pub(crate) pending: Pending,
    pub(crate) events: mpsc::UnboundedSender<(String, Value)>,
    pub(crate) unmatched: mpsc::UnboundedSender<Value>,
}

impl Router {
    pub(crate) fn dispatch(&self, text: &str) {
        let v = match serde_json::from_str::<Value>(text) {
            Ok(v) => v,
            Err(_) => {
                let _ = self.unmatched.send(Value::String(text.to_string()));
                return;
            }
        };
        match v {
            Value::Array(items) => {
                let rest: Vec<Value> = items.into_iter().filter_map(|i| self.route(i)).collect();
                if !rest.is_empty() {
                    let _ = self.unmatched.send(Value::Array(rest));
                }
            }
            other => {
                if let Some(rest) = self.route(other) {
                    let _ = self.unmatched.send(rest);
                }
            }
        }
    }

    /// Delivers one message; gives it back when nobody waits for it.
    fn route(&self, msg: Value) -> Option<Value> {
        let is_notification = msg.get("method").is_some_and(Value::is_string)
            && msg.get("id").is_none_or(Value::is_null);
        if is_notification {
            let Value::Object(mut m) = msg else {
                unreachable!()
            };
            let Some(Value::String(method)) = m.remove("method") else {
                unreachable!()
            };
            let params = m.remove("params").unwrap_or(Value::Null);
            let _ = self.events.send((method, params));
            return None;
        }
        let waiter = match msg.get("id") {
            Some(Value::String(id)) => lock(&self.pending).as_mut().and_then(|m| m.remove(id)),
            _ => None,
        };
        match waiter {
            Some(tx) => {
                let _ = tx.send(msg);
                None
            }
            None => Some(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_answers_events_and_leftovers() {
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (tx, mut rx) = oneshot::channel();
        lock(&pending).as_mut().unwrap().insert("a".into(), tx);
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let (un_tx, mut un_rx) = mpsc::unbounded_channel();
        let r = Router {
            pending,
            events: ev_tx,
            unmatched: un_tx,
        };
        r.dispatch(
            r#"[{"jsonrpc":"2.0","id":"a","result":1},
                {"jsonrpc":"2.0","id":"z","result":2}]"#,
        );
        r.dispatch(r#"{"jsonrpc":"2.0","method":"|jobs|status|x","params":{"status":"done"}}"#);
        r.dispatch("not json");
        assert_eq!(rx.try_recv().unwrap()["result"], 1);
        assert_eq!(
            ev_rx.try_recv().unwrap(),
            ("|jobs|status|x".to_string(), json!({"status": "done"}))
        );
        assert_eq!(un_rx.try_recv().unwrap()[0]["id"], "z");
        assert_eq!(un_rx.try_recv().unwrap(), json!("not json"));
    }
}
