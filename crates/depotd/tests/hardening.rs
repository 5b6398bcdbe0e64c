//! Network and local access under hostile or broken clients (issue 12,
//! section 2): a flood of idle TCP connections locks out neither the local
//! socket nor authenticated clients.
//!
//! The TCP tests open connections from several loopback addresses
//! (127.0.0.x, all of which Linux routes to lo) to act as many clients.

mod common;
// Its LoopFs (root-tier file systems) is not used here.
#[allow(unused_imports)]
mod ovf_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Daemon, WAIT};
use depot_client::{Client, Options, WsClient};
use ovf_common::read_response;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The test holds a thousand sockets; depotd (its child) inherits the limit.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        soft >= 2200,
        "the open files limit ({soft}) is too low for this test"
    );
}

fn tls_addr(d: &Daemon) -> SocketAddr {
    d.tls_addr().parse().unwrap()
}

async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    s.connect(to)
        .await
        .unwrap_or_else(|e| panic!("connect {to} from {from}: {e}"))
}

async fn accept_queue_drained(addr: SocketAddr) {
    let port = format!(":{:04X}", addr.port());
    common::eventually("depotd to accept every connection", WAIT, || {
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let queued = tcp.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].ends_with(&port) && f[3] == "0A")
                .then(|| u64::from_str_radix(f[4].split(':').nth(1).unwrap(), 16).unwrap())
        });
        async move { (queued == Some(0)).then_some(()) }
    })
    .await;
}

async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn still_open(s: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

async fn tls_ping_from(d: &Daemon, from: &str) -> Result<Value, String> {
    let depot_client::Endpoint::Tls {
        server_name,
        ca,
        identity,
        ..
    } = d.tls()
    else {
        unreachable!()
    };
    let config = depot_client::tls::client_config(&ca, identity.as_ref()).unwrap();
    let name = depot_client::tls::server_name(&server_name).unwrap();
    let tcp = connect_from(from, tls_addr(d)).await;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let body = r#"{"jsonrpc":"2.0","method":"Host.ping2","id":1}"#;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let r = read_response(&mut tls)
        .await
        .map_err(|e| format!("answer: {e}"))?;
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("{e}: {}", r.show()))?;
    Ok(v["result"].clone())
}

async fn socket_ping_within(d: &Daemon, within: Duration) -> Result<Value, String> {
    let opts = Options::with_timeout(within);
    tokio::time::timeout(within, async {
        let c = Client::connect_with(&d.unix(), opts)
            .await
            .map_err(|e| e.to_string())?;
        c.call("Host.ping2", json!({}))
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {within:?}")))
}

// ---------------------------------------------------------------------------
// Connection pools and the handshake
// ---------------------------------------------------------------------------

/// The issue's scenario with the default limits: 1000 idle TCP connections
/// (from 125 addresses, 8 each), then a ping over the local socket, over an
/// authenticated TLS connection opened before the flood, and over a new
/// TLS connection: each answers within 1 s.
#[tokio::test]
async fn a_flood_of_idle_connections_locks_nobody_out() {
    raise_open_files_limit();
    let d = Daemon::start("");
    let before = d.tls_client().await;
    assert_eq!(
        before.call("Host.ping2", json!({})).await.unwrap(),
        json!(true)
    );

    let to = tls_addr(&d);
    let mut idle = Vec::new();
    for host in 10..135 {
        for _ in 0..8 {
            idle.push(connect_from(&format!("127.0.0.{host}"), to).await);
        }
    }
    assert_eq!(idle.len(), 1000);
    accept_queue_drained(to).await;

    let second = Duration::from_secs(1);
    let t = Instant::now();
    let r = socket_ping_within(&d, second).await;
    assert_eq!(r, Ok(json!(true)), "local socket during the flood");
    eprintln!("local socket: {:?}", t.elapsed());

    let t = Instant::now();
    let r = tokio::time::timeout(second, before.call("Host.ping2", json!({}))).await;
    assert!(
        matches!(&r, Ok(Ok(v)) if v == &json!(true)),
        "TLS client of before the flood: {r:?}"
    );
    eprintln!("TLS, connected before: {:?}", t.elapsed());

    let t = Instant::now();
    let r = tokio::time::timeout(second, tls_ping_from(&d, "127.0.0.1"))
        .await
        .unwrap_or_else(|_| Err("no answer within 1 s".into()));
    assert_eq!(r, Ok(json!(true)), "new TLS client during the flood");
    eprintln!("TLS, new connection: {:?}", t.elapsed());
    drop(idle);
}

/// Beyond `max_handshakes_per_address`, connections from one address are
/// closed at once while that address's others wait for their handshake;
/// when the handshake timeout fires their places are free again. A full
/// pool of unfinished handshakes makes room for a newcomer by closing the
/// oldest.
#[tokio::test]
async fn unfinished_handshakes_are_capped_per_address_and_in_all() {
    let d = Daemon::start(
        "[limits]\nmax_handshakes = 4\nmax_handshakes_per_address = 2\nhandshake_timeout_s = 4\n",
    );
    let to = tls_addr(&d);

    // Per address.
    let mut a = connect_from("127.0.0.5", to).await;
    let mut b = connect_from("127.0.0.5", to).await;
    accept_queue_drained(to).await;
    let mut c = connect_from("127.0.0.5", to).await;
    assert!(
        closed_within(&mut c, WAIT).await,
        "a third unfinished handshake from 127.0.0.5 was not closed"
    );
    assert!(
        still_open(&a) && still_open(&b),
        "the first two were closed with the third: not at once, but by the timeout"
    );
    // Other addresses are not affected.
    assert_eq!(tls_ping_from(&d, "127.0.0.6").await, Ok(json!(true)));
    // The timeout closes the idle ones and frees their places.
    assert!(closed_within(&mut a, WAIT).await, "handshake timeout");
    assert!(closed_within(&mut b, WAIT).await, "handshake timeout");
    assert_eq!(tls_ping_from(&d, "127.0.0.5").await, Ok(json!(true)));

    // In all: four idle ones from four addresses fill the pool; a new
    // client gets in, and the oldest idle one is closed for it.
    let mut idle = Vec::new();
    for host in 20..24 {
        idle.push(connect_from(&format!("127.0.0.{host}"), to).await);
        accept_queue_drained(to).await;
    }
    assert!(idle.iter().all(still_open));
    assert_eq!(tls_ping_from(&d, "127.0.0.1").await, Ok(json!(true)));
    assert!(
        closed_within(&mut idle[0], WAIT).await,
        "the oldest unfinished handshake was not closed"
    );
    assert!(
        idle[1..].iter().all(still_open),
        "more than the oldest closed"
    );
}

/// The local socket has a pool of its own: `max_connections` (TLS) full
/// does not touch it, and its own limit refuses extra local connections.
#[tokio::test]
async fn the_local_socket_has_its_own_pool() {
    let d = Daemon::start(
        "[limits]\nmax_connections = 1\nmax_local_connections = 2\nhandshake_timeout_s = 60\n",
    );
    let t = d.tls_client().await;
    assert_eq!(t.call("Host.ping2", json!({})).await.unwrap(), json!(true));
    // TLS is full; the socket still takes two.
    let a = d.ws().await;
    let b = d.ws().await;
    for c in [&a, &b] {
        assert_eq!(c.call("Host.ping2", json!({})).await.unwrap(), json!(true));
    }
    let opts = Options::with_timeout(Duration::from_secs(5));
    let third = WsClient::connect_with(&d.unix(), opts).await;
    assert!(third.is_err(), "a third local connection got in");
    // A second TLS connection is refused after its handshake.
    let second = Client::connect_with(&d.tls(), opts).await;
    let refused = match second {
        Err(_) => true,
        Ok(c) => c.call("Host.ping2", json!({})).await.is_err(),
    };
    assert!(refused, "a second TLS connection got in");
    common::eventually("the refusals in the log", WAIT, || {
        let log = d.log();
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("too many connections"))
            .collect();
        let found = refused.iter().any(|l| l.contains("local socket"))
            && refused.iter().any(|l| l.contains("tls"));
        async move { found.then_some(()) }
    })
    .await;
}

/// `tls.allowed_subjects`: a certificate from the CA whose subject is not
/// listed is disconnected; a listed one gets in.
#[tokio::test]
async fn only_allowed_certificate_subjects_get_in() {
    let d = Daemon::start("[tls]\nallowed_subjects = [\"CN=engine.example.com\"]\n");
    let opts = Options::with_timeout(Duration::from_secs(5));
    let refused = match Client::connect_with(&d.tls(), opts).await {
        Err(_) => true,
        Ok(c) => c.call("Host.ping2", json!({})).await.is_err(),
    };
    assert!(refused, "CN=depotctl got in");
    common::eventually("the refusal in the log", WAIT, || {
        let found = d.log().contains("not in tls.allowed_subjects");
        async move { found.then_some(()) }
    })
    .await;
    // The local socket is not subject to it.
    assert_eq!(
        d.client()
            .await
            .call("Host.ping2", json!({}))
            .await
            .unwrap(),
        json!(true)
    );

    let d = Daemon::start("[tls]\nallowed_subjects = [\"CN=other\", \"CN=depotctl\"]\n");
    assert_eq!(
        d.tls_client()
            .await
            .call("Host.ping2", json!({}))
            .await
            .unwrap(),
        json!(true)
    );
}
