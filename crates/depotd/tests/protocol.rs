//! JSON-RPC protocol errors and limits: each gets its code, and the server
//! keeps serving afterwards.

mod common;
mod ovf_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use common::Daemon;
use depot_client::{Client, Options, WsClient};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use storage_common::{new_id, volume_params, ConnectionSpec, CONFIG, LOCALFS, MIB};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn post(c: &Client, body: &str) -> (u16, Value) {
    let (status, bytes) = c.post_raw(body.as_bytes().to_vec()).await.unwrap();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&bytes)))
    };
    (status, v)
}

async fn still_serving(d: &Daemon) {
    let c = d.client().await;
    assert_eq!(c.call("Host.ping2", json!({})).await.unwrap(), json!(true));
}

const JOB: &str = "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a";

#[tokio::test]
async fn bad_requests_get_their_codes() {
    let d = Daemon::start("");
    let c = d.client().await;

    let (status, v) = post(&c, "{not json").await;
    assert_eq!(status, 200);
    assert_eq!(v["error"]["code"], -32700, "{v}");
    assert_eq!(v["id"], Value::Null);

    let (_, v) = post(&c, r#"{"jsonrpc":"2.0","method":"No.such","id":1}"#).await;
    assert_eq!(v["error"]["code"], -32601, "{v}");
    assert_eq!(v["id"], 1);

    let (_, v) = post(
        &c,
        r#"{"jsonrpc":"2.0","method":"Host.abortJob","params":{},"id":"a"}"#,
    )
    .await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("job_id"),
        "{v}"
    );

    let (_, v) = post(
        &c,
        r#"{"jsonrpc":"2.0","method":"Host.abortJob","params":{"job_id":42},"id":2}"#,
    )
    .await;
    assert_eq!(v["error"]["code"], -32602, "{v}");

    let (_, v) = post(&c, r#"{"jsonrpc":"2.0","method":"Host.abortJob","params":{"job_id":"../../etc/passwd"},"id":3}"#).await;
    assert_eq!(v["error"]["code"], -32602, "{v}");

    let (_, v) = post(
        &c,
        r#"{"jsonrpc":"2.0","method":"Host.abortJob","params":["x"],"id":4}"#,
    )
    .await;
    assert_eq!(v["error"]["code"], -32602, "{v}");

    let (_, v) = post(&c, r#"{"jsonrpc":"1.0","method":"Host.ping2","id":5}"#).await;
    assert_eq!(v["error"]["code"], -32600, "{v}");

    let (_, v) = post(&c, r#"{"jsonrpc":"2.0","method":7,"id":6}"#).await;
    assert_eq!(v["error"]["code"], -32600, "{v}");

    let (_, v) = post(&c, "[]").await;
    assert_eq!(v["error"]["code"], -32600, "{v}");

    // A VDSM storage error keeps VDSM's number and message shape.
    let (_, v) = post(
        &c,
        &format!(
            r#"{{"jsonrpc":"2.0","method":"Host.abortJob","params":{{"job_id":"{JOB}"}},"id":7}}"#
        ),
    )
    .await;
    assert_eq!(v["error"]["code"], 66, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Job Id does not exists: "),
        "{v}"
    );

    still_serving(&d).await;
}

/// The envelope's guarantees that jsonrpsee's wire types would not keep
/// (docs/architecture.md, "The JSON-RPC engine is depot's own"): any JSON
/// number is an id and comes back as sent, and an answer's keys go out in
/// depot's order (sorted), the same bytes as before.
#[tokio::test]
async fn any_number_is_an_id_and_answers_keep_their_bytes() {
    let d = Daemon::start("");
    let c = d.client().await;
    for id in ["-1", "1.5", "7", "\"a\"", "null"] {
        let body = format!(r#"{{"jsonrpc":"2.0","method":"Host.ping2","id":{id}}}"#);
        let (status, bytes) = c.post_raw(body.into_bytes()).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            format!(r#"{{"id":{id},"jsonrpc":"2.0","result":true}}"#)
        );
    }
    let body = r#"{"jsonrpc":"2.0","method":"No.such","id":-1}"#;
    let (_, bytes) = c.post_raw(body.as_bytes().to_vec()).await.unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.starts_with(r#"{"error":{"code":-32601,"message":"#),
        "{text}"
    );
    assert!(text.ends_with(r#"},"id":-1,"jsonrpc":"2.0"}"#), "{text}");
}

#[tokio::test]
async fn batches_answer_each_call_and_skip_notifications() {
    let d = Daemon::start("");
    let c = d.client().await;
    let body = json!([
        {"jsonrpc": "2.0", "method": "Host.ping2", "id": 1},
        {"jsonrpc": "2.0", "method": "No.such", "id": 2},
        {"jsonrpc": "2.0", "method": "Host.ping2"},
        "garbage",
    ]);
    let (status, v) = post(&c, &body.to_string()).await;
    assert_eq!(status, 200);
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 3, "{v}");
    assert_eq!(arr[0]["result"], true);
    assert_eq!(arr[1]["error"]["code"], -32601);
    assert_eq!(arr[2]["error"]["code"], -32600);

    // Only notifications: nothing to answer.
    let (status, v) = post(&c, r#"{"jsonrpc":"2.0","method":"Host.ping2"}"#).await;
    assert_eq!(status, 204);
    assert_eq!(v, Value::Null);
}

#[tokio::test]
async fn oversized_request_and_batch_are_refused() {
    let d = Daemon::start("[limits]\nmax_request_bytes = 4096\nmax_batch = 3\n");
    let c = d.client().await;

    let big = format!(
        r#"{{"jsonrpc":"2.0","method":"Host.ping2","params":{{"pad":"{}"}},"id":1}}"#,
        "x".repeat(5000)
    );
    let (status, v) = post(&c, &big).await;
    assert_eq!(status, 413);
    assert_eq!(v["error"]["code"], -32600, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("4096"),
        "{v}"
    );

    let batch: Vec<Value> = (0..4)
        .map(|i| json!({"jsonrpc": "2.0", "method": "Host.ping2", "id": i}))
        .collect();
    let c = d.client().await;
    let (status, v) = post(&c, &Value::Array(batch.clone()).to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(v["error"]["code"], -32600, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("batch of 4"),
        "{v}"
    );

    let (_, v) = post(&c, &Value::Array(batch[..3].to_vec()).to_string()).await;
    assert_eq!(v.as_array().unwrap().len(), 3);

    // WebSocket: an oversized message closes that connection only.
    let ws = d.ws().await;
    ws.send_raw(big).await.unwrap();
    common::eventually("the oversized WebSocket to close", common::WAIT, || {
        let r = ws.closed_reason();
        async move { r }
    })
    .await;
    let ws2 = d.ws().await;
    assert_eq!(
        ws2.call("Host.ping2", json!({})).await.unwrap(),
        json!(true)
    );
    still_serving(&d).await;
}

#[tokio::test]
async fn connection_limit_refuses_extra_connections() {
    // The local socket's own pool (TLS has `max_connections`).
    let d = Daemon::start("[limits]\nmax_local_connections = 2\n");
    let a = d.ws().await;
    let b = d.ws().await;
    let opts = Options::with_timeout(Duration::from_secs(5));
    let third = WsClient::connect_with(&d.unix(), opts).await;
    assert!(third.is_err(), "a third connection got in");
    common::eventually("the refusal in the log", common::WAIT, || {
        let found = d.log().contains("too many connections");
        async move { found.then_some(()) }
    })
    .await;
    drop(a);
    // Its slot frees once the server sees the close.
    let c = common::eventually("a free connection slot", common::WAIT, || async {
        WsClient::connect_with(&d.unix(), opts).await.ok()
    })
    .await;
    assert_eq!(c.call("Host.ping2", json!({})).await.unwrap(), json!(true));
    drop(b);
}

/// Two calls on one WebSocket. The first, a qcow2 `Volume.create`, waits
/// in the daemon: depotd finds `qemu-img` on its PATH, and the test put a
/// wrapper first on that PATH which, for this one call, waits on a FIFO
/// before it runs the real qemu-img. While it waits, the second call (a
/// ping) is sent and must be answered: calls run concurrently, and answers
/// go out in the order they complete, not in the order of the requests.
/// Then the test writes into the FIFO and the first call answers too.
/// (The wait was a FIFO in the domain until issue 15; the daemon no longer
/// opens anything on storage itself, and its helpers refuse a FIFO.)
#[tokio::test]
async fn websocket_calls_run_concurrently_and_in_order_of_completion() {
    let bin = tempfile::tempdir().unwrap();
    let gate = bin.path().join("gate");
    let started = bin.path().join("started");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let real = which("qemu-img");
    let wrapper = bin.path().join("qemu-img");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -p '{g}' ]; then touch '{s}'; cat '{g}' >/dev/null; rm -f '{g}'; fi\nexec '{r}' \"$@\"\n",
            g = gate.display(),
            s = started.display(),
            r = real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let d = Daemon::start_with_env(CONFIG, &[("PATH", path.as_str())]);
    let data = tempfile::tempdir().unwrap();
    let conn = ConnectionSpec::local(&data.path().canonicalize().unwrap());
    let dom = ovf_common::Domain::create(&d, LOCALFS, conn, 512).await;
    let (sd, img, vol) = (dom.sd.clone(), new_id(), new_id());

    let ws = d.ws().await;
    let create = volume_params(&sd, &img, &vol, MIB, "COW", "SPARSE", "slow", None);
    let slow = json!({"jsonrpc": "2.0", "method": "Volume.create", "id": "slow", "params": create});
    ws.send_raw(slow.to_string()).await.unwrap();
    // The create is in flight: its qemu-img waits on the FIFO.
    common::eventually("qemu-img to wait on the FIFO", common::WAIT, || {
        let s = started.clone();
        async move { s.exists().then_some(()) }
    })
    .await;

    let fast = json!({"jsonrpc": "2.0", "method": "Host.ping2", "id": "fast"});
    ws.send_raw(fast.to_string()).await.unwrap();
    let first = ws.recv_raw(common::WAIT).await.expect("an answer");
    assert_eq!(
        first,
        json!({"jsonrpc": "2.0", "result": true, "id": "fast"}),
        "the ping is answered while the create waits"
    );
    assert!(gate.exists(), "the create still waits");

    // Let the create go.
    let g = gate.clone();
    let writer = tokio::task::spawn_blocking(move || std::fs::write(&g, b"go"));
    tokio::time::timeout(common::WAIT, writer)
        .await
        .expect("qemu-img reads the FIFO")
        .unwrap()
        .unwrap();
    let second = ws
        .recv_raw(common::WAIT)
        .await
        .expect("the create's answer");
    assert_eq!(second["id"], "slow", "{second}");
    assert!(second.get("error").is_none(), "{second}");
}

/// `program` as the PATH finds it.
fn which(program: &str) -> std::path::PathBuf {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not on the PATH"))
}

#[tokio::test]
async fn events_need_a_websocket() {
    let d = Daemon::start("");
    let c = d.client().await;
    let e = c.call("Host.subscribeEvents", json!({})).await.unwrap_err();
    assert_eq!(e.rpc_code(), Some(9002));
}

#[tokio::test]
async fn first_bytes_route_stomp_and_refuse_garbage() {
    let d = Daemon::start("");
    // STOMP is recognised and served on the local socket too (the whole
    // protocol: tests/stomp.rs).
    let mut s = tokio::net::UnixStream::connect(d.socket()).await.unwrap();
    s.write_all(b"CONNECT\naccept-version:1.2\n\n\0DISCONNECT\nreceipt:r\n\n\0")
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(common::WAIT, s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("CONNECTED\nversion:1.2\n") && text.contains("RECEIPT\nreceipt-id:r\n"),
        "{text:?}"
    );

    // Bytes of no known protocol: the connection is closed.
    let mut s = tokio::net::UnixStream::connect(d.socket()).await.unwrap();
    s.write_all(b"{\"jsonrpc\":\"2.0\"}\n").await.unwrap();
    let mut reply = Vec::new();
    // Closed with our bytes unread, so a reset is as good as an EOF.
    match tokio::time::timeout(common::WAIT, s.read_to_end(&mut reply))
        .await
        .unwrap()
    {
        Ok(_) => assert!(reply.is_empty(), "{reply:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }

    // Plain PUT and GET are the OVF streams: a PUT without its id headers
    // is refused in VDSM's error shape.
    let mut s = tokio::net::UnixStream::connect(d.socket()).await.unwrap();
    s.write_all(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(common::WAIT, s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("Storage-Pool-Id"), "{text}");
    assert!(text.contains(r#"{"status":{"code":"#), "{text}");
    still_serving(&d).await;
}

#[tokio::test]
async fn same_answers_over_tls_and_local_socket() {
    let d = Daemon::start("");
    let u = d.client().await;
    let t = d.tls_client().await;
    for c in [&u, &t] {
        let e = c.call("No.such", json!({})).await.unwrap_err();
        assert_eq!(e.rpc_code(), Some(-32601));
    }
}

/// The socket inodes among `pid`'s file descriptors: which connections the
/// daemon holds open.
fn daemon_sockets(pid: i32) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("socket:"))
        .collect()
}

/// Waits until the daemon has closed the connection it holds as `socket`.
async fn wait_closed_by_daemon(d: &Daemon, socket: &str) {
    common::eventually(
        "the daemon to close the idle connection",
        common::WAIT,
        || {
            let open = daemon_sockets(d.pid()).contains(socket);
            async move { (!open).then_some(()) }
        },
    )
    .await;
}

/// The one connection the daemon opened since `before`.
fn new_connection(d: &Daemon, before: &BTreeSet<String>) -> String {
    let new: Vec<String> = daemon_sockets(d.pid())
        .difference(before)
        .cloned()
        .collect();
    assert_eq!(new.len(), 1, "new sockets of the daemon: {new:?}");
    new.into_iter().next().unwrap()
}

/// The daemon closes a keep-alive connection that waits longer than its
/// header timeout for the next request; a client that sat idle that long
/// reconnects instead of failing its next call with a broken pipe. Both
/// the JSON-RPC call and the streaming GET go through the new connection.
#[tokio::test]
async fn an_idle_client_outlives_the_daemons_header_timeout() {
    let d = Daemon::start("[limits]\nhandshake_timeout_s = 0.3\n");

    // The close itself, seen by a raw client: an answer, then an EOF once
    // the connection has been idle for the header timeout (not at once:
    // the connection is kept alive until then).
    let mut s = tokio::net::UnixStream::connect(d.socket()).await.unwrap();
    let body = r#"{"jsonrpc":"2.0","method":"Host.ping2","id":1}"#;
    let sent = std::time::Instant::now();
    s.write_all(
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(common::WAIT, s.read_to_end(&mut reply))
        .await
        .expect("the daemon closes the idle connection")
        .unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let answer: Value = serde_json::from_str(text.rsplit("\r\n\r\n").next().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(answer["result"], true, "{text}");
    assert!(
        sent.elapsed() >= Duration::from_millis(300),
        "closed {:?} after the request, before the header timeout",
        sent.elapsed()
    );

    // depot-client over both listeners: each call after the daemon closed
    // the previous connection goes through a new one.
    for tls in [false, true] {
        let before = daemon_sockets(d.pid());
        let c = if tls {
            d.tls_client().await
        } else {
            d.client().await
        };
        assert_eq!(
            c.call("Host.ping2", Value::Null).await.unwrap(),
            json!(true)
        );
        let first = new_connection(&d, &before);
        wait_closed_by_daemon(&d, &first).await;
        assert_eq!(
            c.call("Host.ping2", Value::Null).await.unwrap(),
            json!(true),
            "a call after the idle connection was closed (tls: {tls})"
        );
        let second = new_connection(&d, &before);
        assert_ne!(first, second);
        wait_closed_by_daemon(&d, &second).await;
        let mut sink = Vec::new();
        // No such volume: the point is that the request reaches the daemon
        // and gets its JSON error, not a transport error.
        let err = c
            .get_range(&[("Storage-Domain-Id", "x")], 0, 0, &mut sink)
            .await
            .unwrap_err();
        assert!(
            matches!(err, depot_client::ClientError::Rpc { .. }),
            "{err:?}"
        );
        assert_ne!(new_connection(&d, &before), second);
    }
}
