//! Listeners: TCP with mutual TLS, and the owner-only local socket. Each
//! accepted connection is counted against the connection limit, identified
//! (certificate subject or Unix uid), then routed by its first bytes.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::detect::{self, Prefixed, Protocol};
use crate::events::EventBus;
use crate::pki;
use crate::rpc::RpcEngine;

/// What every connection shares.
pub struct Shared {
    pub engine: RpcEngine,
    pub events: EventBus,
    pub shutdown: watch::Receiver<bool>,
    pub max_request_bytes: usize,
    pub max_concurrent_per_connection: usize,
    pub handshake_timeout: Duration,
    /// One permit per open connection.
    pub connections: Arc<Semaphore>,
    pub max_connections: usize,
}

/// One connection: who is on the other end and its call slots.
pub struct Conn {
    pub shared: Arc<Shared>,
    pub peer: Arc<str>,
    pub permits: Arc<Semaphore>,
    _slot: OwnedSemaphorePermit,
}

impl Shared {
    fn admit(&self, what: &str) -> Option<OwnedSemaphorePermit> {
        match self.connections.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                tracing::warn!(
                    limit = self.max_connections,
                    from = what,
                    "connection refused: too many connections"
                );
                None
            }
        }
    }

    fn conn(self: &Arc<Self>, peer: String, slot: OwnedSemaphorePermit) -> Arc<Conn> {
        Arc::new(Conn {
            shared: self.clone(),
            peer: peer.into(),
            permits: Arc::new(Semaphore::new(self.max_concurrent_per_connection)),
            _slot: slot,
        })
    }

    /// Waits until every connection has closed, or `grace` passes.
    pub async fn drain(&self, grace: Duration) -> bool {
        let all = self.max_connections as u32;
        tokio::time::timeout(grace, self.connections.acquire_many(all))
            .await
            .is_ok()
    }
}

pub async fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Binds the local socket, owner-only. A stale socket file from a crash is
/// replaced; a live one (another depotd answers) is an error.
pub async fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another depotd", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Bind under a tight umask so the socket is never briefly open to others.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve_tcp(listener: TcpListener, tls: TlsAcceptor, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopping(&mut shutdown) => break,
        };
        let Some(slot) = shared.admit(&addr.to_string()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (shared, tls) = (shared.clone(), tls.clone());
        tokio::spawn(async move {
            let accepted = tokio::time::timeout(shared.handshake_timeout, tls.accept(stream)).await;
            let stream = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(peer = %addr, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(peer = %addr, "TLS handshake timed out");
                    return;
                }
            };
            let subject = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(pki::subject_of)
                .unwrap_or_else(|| "<no certificate>".into());
            let conn = shared.conn(format!("{subject} ({addr})"), slot);
            route(stream, conn).await;
        });
    }
}

pub async fn serve_unix(listener: UnixListener, path: PathBuf, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the local socket");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopping(&mut shutdown) => break,
        };
        let Some(slot) = shared.admit("local socket") else {
            continue;
        };
        let peer = match stream.peer_cred() {
            Ok(c) => format!("uid={} pid={}", c.uid(), c.pid().unwrap_or(0)),
            Err(_) => "local".into(),
        };
        let conn = shared.conn(peer, slot);
        tokio::spawn(route(stream, conn));
    }
    let _ = std::fs::remove_file(&path);
}

/// Reads the first bytes and hands the connection to its protocol.
async fn route<S>(mut stream: S, conn: Arc<Conn>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let sniffed =
        tokio::time::timeout(conn.shared.handshake_timeout, detect::sniff(&mut stream)).await;
    match sniffed {
        Ok(Ok((Protocol::Http, head))) => {
            crate::http::serve(Prefixed::new(head, stream), conn).await
        }
        Ok(Ok((Protocol::Stomp, _))) => {
            // STOMP comes with a later issue; say so in STOMP's own words.
            let frame = b"ERROR\nmessage:STOMP is not supported yet\ncontent-length:0\n\n\0";
            let _ = stream.write_all(frame).await;
            let _ = stream.shutdown().await;
            // Read what the client already sent before closing: closing
            // with unread bytes resets the connection and can destroy the
            // ERROR frame before the client reads it.
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
            tracing::info!(peer = %conn.peer, "STOMP connection refused: not supported yet");
        }
        Ok(Err(e)) => tracing::info!(peer = %conn.peer, error = %e, "connection dropped"),
        Err(_) => tracing::info!(peer = %conn.peer, "connection dropped: no request in time"),
    }
}

/// Resolves once shutdown has begun (or the daemon is gone).
pub async fn stopping(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
