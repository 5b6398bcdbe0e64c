//! Listeners: TCP with mutual TLS, and the owner-only local socket.
//!
//! Each listener has its own pool of connections, so that nobody on the
//! network can lock the admin out of the local socket. A TCP connection
//! first holds a place among the unfinished handshakes
//! ([`admission`]) and takes one of the `max_connections`
//! authenticated places only once its certificate checked out. Every
//! connection's socket is paced ([`crate::pace`]): a client that stops
//! taking what depotd sends is cut off. Then the connection is identified
//! (certificate subject or Unix uid) and routed by its first bytes
//! ([`detect`]) to its transport ([`crate::transport`]).

pub mod admission;
pub mod detect;

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::conn::{self, Conn};
use crate::pace::PacedIo;
use crate::pki;
use crate::transport;
use admission::Handshakes;
use detect::{Prefixed, Protocol};

/// What both listeners share.
pub struct Listeners {
    /// What the connections' transports share (the shutdown signal and
    /// the limits among it).
    pub transport: Arc<transport::Shared>,
    /// One permit per authenticated TLS connection.
    pub connections: Pool,
    /// One permit per local socket connection.
    pub local_connections: Pool,
    /// TCP connections before their handshake finished.
    pub handshakes: Arc<Handshakes>,
    /// Client certificate subjects let in; empty: all the CA signed.
    pub allowed_subjects: Vec<String>,
    /// Refusals of unauthenticated connections, which anyone can cause by
    /// the thousand, are logged at most once a second.
    pub noise: Throttle,
}

/// A fixed number of connection places.
pub struct Pool {
    name: &'static str,
    places: Arc<Semaphore>,
    size: usize,
}

impl Pool {
    pub fn new(name: &'static str, size: usize) -> Pool {
        Pool {
            name,
            places: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    fn take(&self, from: &str) -> Option<OwnedSemaphorePermit> {
        match self.places.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                tracing::warn!(
                    limit = self.size,
                    pool = self.name,
                    from,
                    "connection refused: too many connections"
                );
                None
            }
        }
    }

    /// Waits until every place is free again.
    async fn drained(&self) {
        let _ = self.places.acquire_many(self.size as u32).await;
    }
}

/// Lets a log line through at most once per second, counting the rest.
#[derive(Default)]
pub struct Throttle {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Throttle {
    /// `Some(n)` when a line may be logged now, `n` lines having been
    /// suppressed since the last one.
    fn pass(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

impl Listeners {
    fn conn(&self, peer: String, place: OwnedSemaphorePermit) -> Arc<Conn> {
        Conn::new(peer, self.transport.max_concurrent_per_connection, place)
    }

    /// Waits until every connection has closed, or `grace` passes.
    pub async fn drain(&self, grace: Duration) -> bool {
        tokio::time::timeout(grace, async {
            self.connections.drained().await;
            self.local_connections.drained().await;
        })
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

pub async fn serve_tcp(listener: TcpListener, tls: TlsAcceptor, shared: Arc<Listeners>) {
    let mut shutdown = shared.transport.shutdown.clone();
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
            _ = conn::stopping(&mut shutdown) => break,
        };
        let (pending, pushed) = match shared.handshakes.admit(addr.ip()) {
            Ok(p) => p,
            Err(refused) => {
                if let Some(more) = shared.noise.pass() {
                    tracing::warn!(peer = %addr, limit = refused.limit, suppressed = more,
                        "connection refused: too many unfinished handshakes from its address");
                }
                continue;
            }
        };
        if pushed {
            if let Some(more) = shared.noise.pass() {
                tracing::warn!(peer = %addr, limit = shared.handshakes.len(), suppressed = more,
                    "unfinished handshakes at the limit: the oldest was closed");
            }
        }
        let _ = stream.set_nodelay(true);
        let stream = PacedIo::new(stream, shared.transport.body_pace);
        let (shared, tls) = (shared.clone(), tls.clone());
        tokio::spawn(async move {
            let mut pending = pending;
            let handshake =
                tokio::time::timeout(shared.transport.handshake_timeout, tls.accept(stream));
            let accepted = tokio::select! {
                r = handshake => r,
                _ = pending.pushed_out() => return,
            };
            drop(pending);
            let stream = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    if let Some(more) = shared.noise.pass() {
                        tracing::info!(peer = %addr, error = %e, suppressed = more, "TLS handshake refused");
                    }
                    return;
                }
                Err(_) => {
                    if let Some(more) = shared.noise.pass() {
                        tracing::info!(peer = %addr, suppressed = more, "TLS handshake timed out");
                    }
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
            if !shared.allowed_subjects.is_empty() && !shared.allowed_subjects.contains(&subject) {
                tracing::warn!(peer = %addr, subject, "connection refused: certificate subject not in tls.allowed_subjects");
                return;
            }
            let Some(slot) = shared.connections.take(&addr.to_string()) else {
                return;
            };
            let conn = shared.conn(format!("{subject} ({addr})"), slot);
            route(stream, conn, shared.transport.clone()).await;
        });
    }
}

pub async fn serve_unix(listener: UnixListener, path: PathBuf, shared: Arc<Listeners>) {
    let mut shutdown = shared.transport.shutdown.clone();
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
            _ = conn::stopping(&mut shutdown) => break,
        };
        let Some(slot) = shared.local_connections.take("local socket") else {
            continue;
        };
        let peer = match stream.peer_cred() {
            Ok(c) => format!("uid={} pid={}", c.uid(), c.pid().unwrap_or(0)),
            Err(_) => "local".into(),
        };
        let conn = shared.conn(peer, slot);
        let stream = PacedIo::new(stream, shared.transport.body_pace);
        tokio::spawn(route(stream, conn, shared.transport.clone()));
    }
    let _ = std::fs::remove_file(&path);
}

/// Reads the first bytes and hands the connection to its protocol.
async fn route<S>(mut stream: S, conn: Arc<Conn>, shared: Arc<transport::Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let sniffed = tokio::time::timeout(shared.handshake_timeout, detect::sniff(&mut stream)).await;
    match sniffed {
        Ok(Ok((Protocol::Http, head))) => {
            transport::serve_http(Prefixed::new(head, stream), conn, shared).await
        }
        Ok(Ok((Protocol::Stomp, head))) => {
            transport::serve_stomp(Prefixed::new(head, stream), conn, &shared).await
        }
        Ok(Err(e)) => tracing::info!(peer = %conn.peer, error = %e, "connection dropped"),
        Err(_) => tracing::info!(peer = %conn.peer, "connection dropped: no request in time"),
    }
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
