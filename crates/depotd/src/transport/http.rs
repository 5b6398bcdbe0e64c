//! HTTP/1.1 on a detected connection: `POST /` carries JSON-RPC, `GET /`
//! with `Upgrade: websocket` switches to a WebSocket, and `PUT /` and plain
//! `GET /` are the OVF_STORE streams ([`super::ovf`]).
//!
//! Request bodies are paced ([`crate::pace`]): a client that sends one
//! too slowly gets 408 and the connection is closed.

use bytes::{Bytes, BytesMut};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use depot_api::{ApiError, Code};

use super::{ovf, ws, Shared};
use crate::call::CallCtx;
use crate::conn::{self, Conn};
use crate::pace::{BodyError, PacedBody};
use depot_api::jsonrpc::error_response;

/// VDSM's flow id header.
pub const FLOW_ID_HEADER: &str = "ovirtCorrelationId";

/// Response bodies: whole (JSON) or streamed (OVF downloads).
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub async fn serve<S>(stream: S, conn: Arc<Conn>, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (svc_conn, svc_shared) = (conn.clone(), shared.clone());
    let svc = service_fn(move |req| {
        let (conn, shared) = (svc_conn.clone(), svc_shared.clone());
        async move { Ok::<_, Infallible>(route(req, conn, shared).await) }
    });
    let http = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.handshake_timeout)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(http);
    let mut shutdown = shared.shutdown.clone();
    let mut stopping = false;
    loop {
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %conn.peer, error = %e, "HTTP connection ended");
                }
                break;
            }
            _ = conn::stopping(&mut shutdown), if !stopping => {
                // Finish the request in flight, then close.
                stopping = true;
                http.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn route(req: Request<Incoming>, conn: Arc<Conn>, shared: Arc<Shared>) -> Response<Body> {
    let is_root = req.uri().path() == "/";
    match (req.method(), is_root) {
        (&Method::POST, true) => post_jsonrpc(req, &conn, &shared).await,
        (&Method::GET, true) if wants_websocket(&req) => upgrade(req, conn, shared),
        (&Method::PUT, true) => {
            let (storage, tasks) = (shared.storage.clone(), shared.streams.clone());
            ovf::put(req, &conn, shared.body_pace, storage, tasks).await
        }
        (&Method::GET, true) => {
            let (storage, tasks) = (shared.storage.clone(), shared.streams.clone());
            ovf::get(req, storage, tasks).await
        }
        (_, true) => plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        (_, false) => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn post_jsonrpc(req: Request<Incoming>, conn: &Conn, shared: &Shared) -> Response<Body> {
    let limit = shared.max_request_bytes;
    let flow_id = flow_id(&req);
    let too_large = |what: String| {
        jsonrpc_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &ApiError::new(
                Code::InvalidRequest,
                format!("{what} exceeds the limit of {limit} bytes"),
            ),
        )
    };
    // Refuse at once when the client says how big it is.
    let length = content_length(&req);
    if let Some(len) = length {
        if len > limit as u64 {
            return too_large(format!("request of {len} bytes"));
        }
    }
    let body = match read_body(req.into_body(), length, shared).await {
        Ok(b) => b,
        Err(BodyRead::TooLarge) => return too_large(format!("request of more than {limit} bytes")),
        Err(BodyRead::TooSlow(detail)) => {
            tracing::info!(peer = %conn.peer, detail, "request body too slow; closing");
            let mut resp = jsonrpc_error(
                StatusCode::REQUEST_TIMEOUT,
                &ApiError::new(
                    Code::InvalidRequest,
                    format!("request body too slow: {detail}"),
                ),
            );
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return resp;
        }
        Err(BodyRead::Failed(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "request body read failed");
            return plain(StatusCode::BAD_REQUEST, "cannot read the request body\n");
        }
    };
    let ctx = CallCtx {
        peer: conn.peer.clone(),
        flow_id,
        permits: conn.permits.clone(),
        subscriber: None,
    };
    match shared.jsonrpc.handle(&body, &ctx).await {
        Some(text) => json_response(StatusCode::OK, text),
        None => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(empty())
            .unwrap_or_default(),
    }
}

enum BodyRead {
    TooLarge,
    TooSlow(String),
    Failed(hyper::Error),
}

/// Reads a whole request body of at most `max_request_bytes` into one
/// buffer (sized by Content-Length up front, so the body is held once),
/// at the client's minimum pace.
async fn read_body(
    body: Incoming,
    length: Option<u64>,
    shared: &Shared,
) -> Result<Bytes, BodyRead> {
    let limit = shared.max_request_bytes;
    let mut body = PacedBody::new(body, shared.body_pace);
    let mut buf = BytesMut::with_capacity(length.unwrap_or(0).min(limit as u64) as usize);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                let Ok(data) = f.into_data() else { continue }; // trailers
                if buf.len() + data.len() > limit {
                    return Err(BodyRead::TooLarge);
                }
                buf.extend_from_slice(&data);
            }
            Err(BodyError::TooSlow(e)) => return Err(BodyRead::TooSlow(e.detail)),
            Err(BodyError::Inner(e)) => return Err(BodyRead::Failed(e)),
        }
    }
    Ok(buf.freeze())
}

#[allow(clippy::field_reassign_with_default)]
fn upgrade(req: Request<Incoming>, conn: Arc<Conn>, shared: Arc<Shared>) -> Response<Body> {
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(key) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| version_ok)
    else {
        return plain(StatusCode::BAD_REQUEST, "bad WebSocket handshake\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let flow_id = flow_id(&req);
    // WebSocketConfig is non_exhaustive in newer versions; set fields on
    // the default instead of naming them all.
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(shared.max_request_bytes);
    config.max_frame_size = Some(shared.max_request_bytes);
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let stream = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                ws::serve(stream, conn, shared, flow_id).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(empty())
        .unwrap_or_default()
}

fn wants_websocket<B>(req: &Request<B>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

fn flow_id<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get(FLOW_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(128).collect())
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn json_response(status: StatusCode, text: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(text))
        .unwrap_or_default()
}

fn jsonrpc_error(status: StatusCode, err: &ApiError) -> Response<Body> {
    json_response(
        status,
        error_response(serde_json::Value::Null, err).to_string(),
    )
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(full(text))
        .unwrap_or_default()
}
