//! Listeners: TCP with mutual TLS, and the owner-only local socket. Each
//! accepted connection is counted against the connection limit, identified
//! (certificate subject or Unix uid), then routed by its first bytes.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
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
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    // Bind inside a directory only we can enter, make the socket 0600 and
    // move it into place: it is never open to others, and the umask, which
    // every thread of the process shares, is left alone.
    let private = dir.join(format!(".depotd-bind.{}", std::process::id()));
    let staged = private.join("s");
    let mkdir = || std::fs::DirBuilder::new().mode(0o700).create(&private);
    if let Err(e) = mkdir() {
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(e);
        }
        // Left by a crash of an earlier process with our pid.
        let _ = std::fs::remove_file(&staged);
        std::fs::remove_dir(&private)?;
        mkdir()?;
    }
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    fn umask_now() -> String {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Umask:"))
            .unwrap()
            .to_string()
    }

    /// The umask is the whole process's: a bind that changes it, even
    /// briefly, changes the mode of whatever another thread creates then.
    /// A watcher thread reads it while sockets are bound over and over.
    #[tokio::test]
    async fn binding_leaves_the_umask_alone() {
        let dir = tempfile::tempdir().unwrap();
        let before = umask_now();
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (stop, before) = (stop.clone(), before.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let now = umask_now();
                    if now != before {
                        return Some(now);
                    }
                }
                None
            })
        };
        let path = dir.path().join("run/depotd.sock");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && !watcher.is_finished() {
            let listener = bind_unix(&path).await.unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "socket mode");
            drop(listener);
            std::fs::remove_file(&path).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let seen = watcher.join().unwrap();
        assert_eq!(seen, None, "the umask changed while binding (was {before})");
        // Nothing is left behind next to the socket.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("run"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn the_bound_socket_answers_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("depotd.sock");
        let listener = bind_unix(&path).await.unwrap();
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        accepted.unwrap();
        connected.unwrap();
        // A live socket is not replaced.
        let e = bind_unix(&path).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }
}
