//! One accepted connection, as the listener hands it to its transport:
//! who is on the other end, its call slots and its place in the listener's
//! pool. Shared by listeners and transports; imports neither.

use std::sync::Arc;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// One connection: who is on the other end and its call slots.
pub struct Conn {
    /// The certificate subject and address, or the Unix uid and pid.
    pub peer: Arc<str>,
    /// `max_concurrent_per_connection` calls of this connection at once.
    pub permits: Arc<Semaphore>,
    /// The connection's place in its listener's pool, given back when the
    /// last holder of the connection lets go.
    _place: OwnedSemaphorePermit,
}

impl Conn {
    pub fn new(peer: String, max_concurrent: usize, place: OwnedSemaphorePermit) -> Arc<Conn> {
        Arc::new(Conn {
            peer: peer.into(),
            permits: Arc::new(Semaphore::new(max_concurrent)),
            _place: place,
        })
    }
}

/// Resolves once shutdown has begun (or the daemon is gone).
pub async fn stopping(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
