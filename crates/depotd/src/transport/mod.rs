//! The transports: what runs on a connection once its listener has
//! accepted it and seen which protocol it speaks.
//!
//! - [`http`]: HTTP/1.1; `POST /` carries JSON-RPC, an upgrade switches
//!   to [`ws`] (JSON-RPC over WebSocket), `PUT /` and `GET /` are the
//!   OVF_STORE streams ([`ovf`]);
//! - [`stomp`]: JSON-RPC over STOMP 1.2.
//!
//! JSON-RPC messages go to [`crate::jsonrpc`]; the OVF streams go to the
//! storage directly. Nothing here imports a listener.

pub mod http;
pub mod ovf;
pub mod stomp;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use depot_storage::Storage;

use crate::conn::Conn;
use crate::events::EventBus;
use crate::jsonrpc::JsonRpc;
use crate::pace::PaceLimits;
use crate::task_store::TaskStore;
use stomp::{StompConn, StompLimits};

/// What every connection's transport shares.
pub struct Shared {
    pub jsonrpc: Arc<JsonRpc>,
    /// The storage, for the OVF_STORE streams, which bypass JSON-RPC.
    pub storage: Arc<Storage>,
    /// The OVF_STORE streams' tasks.
    pub streams: Arc<TaskStore>,
    pub events: EventBus,
    pub shutdown: watch::Receiver<bool>,
    pub max_request_bytes: usize,
    pub max_concurrent_per_connection: usize,
    pub handshake_timeout: Duration,
    /// The slowest a client may send or take a body.
    pub body_pace: PaceLimits,
    pub ws_ping_interval: Duration,
    pub ws_idle_timeout: Duration,
    pub stomp: StompLimits,
}

/// Serves an HTTP/1.1 connection (and the WebSocket it may become).
pub async fn serve_http<S>(stream: S, conn: Arc<Conn>, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    http::serve(stream, conn, shared).await
}

/// Serves a STOMP connection.
pub async fn serve_stomp<S>(stream: S, conn: Arc<Conn>, shared: &Shared)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stomp_conn = StompConn {
        peer: conn.peer.clone(),
        permits: conn.permits.clone(),
        max_concurrent: shared.max_concurrent_per_connection,
        jsonrpc: shared.jsonrpc.clone(),
        events: shared.events.clone(),
        shutdown: shared.shutdown.clone(),
        limits: shared.stomp,
        connect_timeout: shared.handshake_timeout,
        hold: conn,
    };
    stomp::serve(stream, stomp_conn).await
}
