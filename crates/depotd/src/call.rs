//! What the JSON-RPC layer and the router know about the caller of one
//! message. Transports fill it in; nothing here knows any transport.

use std::sync::Arc;
use tokio::sync::Semaphore;

/// What the JSON-RPC layer knows about the caller of one message.
pub struct CallCtx {
    /// The certificate subject, or `uid=N` on the local socket.
    pub peer: Arc<str>,
    /// VDSM's flow id (`ovirtCorrelationId` header), when the client sent one.
    pub flow_id: Option<String>,
    /// Limits how many calls of this connection run at once.
    pub permits: Arc<Semaphore>,
    /// Present on WebSocket connections, which can receive events.
    pub subscriber: Option<Arc<dyn Subscribe>>,
}

/// A connection that can receive events (`Host.subscribeEvents`). The
/// transport that can deliver them implements it; the router only asks.
pub trait Subscribe: Send + Sync {
    /// Starts (or replaces) the subscription. An empty list means all events.
    fn subscribe(&self, prefixes: Vec<String>);
}
