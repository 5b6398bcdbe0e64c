//! JSON-RPC over HTTP POST on one keep-alive connection.

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

use crate::endpoint::{Endpoint, Options};
use crate::error::{chain, is_tls, transport, ClientError};
use crate::jsonrpc::{self, truncate};
use crate::stream;

/// The header carrying the caller's flow id, VDSM's.
pub const FLOW_ID_HEADER: &str = "ovirtCorrelationId";

/// Request bodies: whole (JSON-RPC) or streamed (`PUT /`, see
/// [`Client::put_stream`]).
pub(crate) type ReqBody = BoxBody<Bytes, std::io::Error>;

/// A whole request body.
pub(crate) fn whole(data: impl Into<Bytes>) -> ReqBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// How the connection task ended, when it ended with an error: the message
/// and whether it was a TLS error.
type ConnError = Arc<Mutex<Option<(String, bool)>>>;

/// A JSON-RPC client over HTTP/1.1 POST. Calls are sent one at a time on
/// one keep-alive connection; `&self` methods may be used from several
/// tasks (they queue).
pub struct Client {
    pub(crate) sender: tokio::sync::Mutex<SendRequest<ReqBody>>,
    conn: JoinHandle<()>,
    /// Connection tasks of reconnections (the daemon closes keep-alive
    /// connections that stay idle longer than its header timeout).
    reconnects: Mutex<Vec<JoinHandle<()>>>,
    conn_error: ConnError,
    pub(crate) authority: String,
    endpoint: Endpoint,
    pub(crate) opts: Options,
}

impl Client {
    /// Connects with the default timeouts (30 s).
    pub async fn connect(ep: &Endpoint) -> Result<Client, ClientError> {
        Client::connect_with(ep, Options::default()).await
    }

    pub async fn connect_with(ep: &Endpoint, opts: Options) -> Result<Client, ClientError> {
        let conn_error: ConnError = Arc::default();
        let (sender, conn) = Self::handshake(ep, &opts, conn_error.clone()).await?;
        Ok(Client {
            sender: tokio::sync::Mutex::new(sender),
            conn,
            reconnects: Mutex::new(Vec::new()),
            conn_error,
            authority: ep.authority(),
            endpoint: ep.clone(),
            opts,
        })
    }

    /// Opens a connection and runs its HTTP/1 task, which records its
    /// error in `slot`.
    async fn handshake(
        ep: &Endpoint,
        opts: &Options,
        slot: ConnError,
    ) -> Result<(SendRequest<ReqBody>, JoinHandle<()>), ClientError> {
        let s = stream::open(ep, opts).await?;
        let handshake = http1::handshake::<_, ReqBody>(TokioIo::new(s));
        let (sender, conn) = match tokio::time::timeout(opts.connect_timeout, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(transport(&format!("HTTP handshake with {ep}"), &e)),
            Err(_) => {
                return Err(ClientError::Timeout {
                    what: format!("in the HTTP handshake with {ep}"),
                    after: opts.connect_timeout,
                })
            }
        };
        let conn = tokio::spawn(async move {
            if let Err(e) = conn.await {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((format!("connection failed: {}", chain(&e)), is_tls(&e)));
            }
        });
        Ok((sender, conn))
    }

    /// The sender, ready for a request. A connection the daemon closed
    /// while it was idle (nothing was in flight on it) is replaced by a new
    /// one, so a client can sit idle between calls for as long as it likes.
    pub(crate) async fn ready_sender(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, SendRequest<ReqBody>>, ClientError> {
        let mut sender = self.sender.lock().await;
        // Let the connection's task see an EOF that arrived while this
        // task was busy (a caller on a single-threaded runtime that blocked
        // it): tokio runs the I/O driver before resuming a yielded task.
        tokio::task::yield_now().await;
        if !sender.is_closed() && sender.ready().await.is_ok() {
            return Ok(sender);
        }
        self.reconnect(&mut sender).await?;
        if let Err(e) = sender.ready().await {
            return Err(self.failed("connection closed", &e).await);
        }
        Ok(sender)
    }

    async fn reconnect(&self, sender: &mut SendRequest<ReqBody>) -> Result<(), ClientError> {
        *self.conn_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let (new, conn) =
            Self::handshake(&self.endpoint, &self.opts, self.conn_error.clone()).await?;
        *sender = new;
        self.reconnects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        Ok(())
    }

    /// The endpoint this client is connected to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Changes the call timeout of later calls.
    pub fn set_call_timeout(&mut self, t: Duration) {
        self.opts.call_timeout = t;
    }

    /// Calls `method` with `params` (an object of named parameters, or
    /// `Value::Null` for none) and returns its result.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.call_inner(method, params, None).await
    }

    /// Like [`Client::call`], sending `flow_id` in the `ovirtCorrelationId`
    /// header so the daemon's logs tie the call to the caller's flow.
    pub async fn call_with_flow_id(
        &self,
        method: &str,
        params: Value,
        flow_id: &str,
    ) -> Result<Value, ClientError> {
        self.call_inner(method, params, Some(flow_id)).await
    }

    async fn call_inner(
        &self,
        method: &str,
        params: Value,
        flow_id: Option<&str>,
    ) -> Result<Value, ClientError> {
        let id = jsonrpc::new_id();
        let body = jsonrpc::request(method, params, Some(&id)).to_string();
        let (status, body) = self.post(body.into_bytes(), flow_id).await?;
        let parsed = serde_json::from_slice::<Value>(&body);
        match (status, parsed) {
            (200, Ok(v)) => jsonrpc::read_response(v, &id),
            (200, Err(e)) => Err(ClientError::Protocol(format!(
                "{method}: response is not JSON ({e}): {}",
                truncate(&String::from_utf8_lossy(&body), 200)
            ))),
            // 413 and friends carry a JSON-RPC error: the server answered.
            (_, Ok(v)) if v.get("error").is_some() => jsonrpc::read_response(v, &id),
            (204, _) => Err(ClientError::Protocol(format!(
                "{method}: the server sent no response (HTTP 204)"
            ))),
            (s, _) => Err(ClientError::Http(format!(
                "{method}: HTTP status {s}: {}",
                truncate(&String::from_utf8_lossy(&body), 200)
            ))),
        }
    }

    /// Sends a notification (no id, no answer expected); the server answers
    /// HTTP 204.
    pub async fn notify(&self, method: &str, params: Value) -> Result<(), ClientError> {
        let body = jsonrpc::request(method, params, None).to_string();
        match self.post(body.into_bytes(), None).await? {
            (204, _) => Ok(()),
            (s, b) => Err(ClientError::Http(format!(
                "{method}: expected HTTP 204 for a notification, got {s}: {}",
                truncate(&String::from_utf8_lossy(&b), 200)
            ))),
        }
    }

    /// POSTs `body` as is (broken JSON, batches, oversized requests) and
    /// returns the HTTP status and the response body.
    pub async fn post_raw(&self, body: Vec<u8>) -> Result<(u16, Vec<u8>), ClientError> {
        self.post(body, None).await
    }

    /// Like [`Client::post_raw`] with the flow id header.
    pub async fn post_raw_with_flow_id(
        &self,
        body: Vec<u8>,
        flow_id: &str,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        self.post(body, Some(flow_id)).await
    }

    async fn post(
        &self,
        body: Vec<u8>,
        flow_id: Option<&str>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri("/")
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        if let Some(f) = flow_id {
            req = req.header(FLOW_ID_HEADER, f);
        }
        let req = req
            .body(whole(body))
            .map_err(|e| ClientError::Protocol(format!("building request: {e}")))?;
        let after = self.opts.call_timeout;
        match tokio::time::timeout(after, self.exchange(req)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                what: format!("waiting for {}", self.endpoint),
                after,
            }),
        }
    }

    async fn exchange(&self, req: Request<ReqBody>) -> Result<(u16, Vec<u8>), ClientError> {
        let mut sender = self.ready_sender().await?;
        let resp = match sender.try_send_request(req).await {
            Ok(r) => r,
            // The daemon closed the idle connection as the request went
            // out, and hyper says none of it was sent: sending it on a new
            // connection cannot run the call twice.
            Err(mut e) if e.message().is_some() => {
                let req = e.take_message().expect("checked");
                self.reconnect(&mut sender).await?;
                if let Err(e) = sender.ready().await {
                    return Err(self.failed("connection closed", &e).await);
                }
                match sender.send_request(req).await {
                    Ok(r) => r,
                    Err(e) => return Err(self.failed("sending request", &e).await),
                }
            }
            Err(e) => return Err(self.failed("sending request", e.error()).await),
        };
        let status: StatusCode = resp.status();
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes().to_vec(),
            Err(e) => return Err(self.failed("reading response", &e).await),
        };
        Ok((status.as_u16(), body))
    }

    /// The error to report for a failed exchange: the connection task's
    /// error when it has one (a TLS alert there explains a vaguer
    /// "connection closed" here).
    pub(crate) async fn failed(&self, context: &str, e: &hyper::Error) -> ClientError {
        if is_tls(e) {
            return transport(context, e);
        }
        for _ in 0..10 {
            let stored = self
                .conn_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            match stored {
                Some((msg, true)) => return ClientError::Tls(format!("{context}: {msg}")),
                Some((msg, false)) => return ClientError::Http(format!("{context}: {msg}")),
                None => {}
            }
            if self.conn.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ClientError::Http(format!("{context}: {}", chain(e)))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.conn.abort();
        for c in self
            .reconnects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            c.abort();
        }
    }
}
