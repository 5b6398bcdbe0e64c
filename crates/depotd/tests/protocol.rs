//! JSON-RPC protocol errors and limits: each gets its code, and the server
//! keeps serving afterwards.

mod common;

use common::Daemon;
use depot_client::{Client, Options, WsClient};
use serde_json::{json, Value};
use std::time::Duration;
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

#[tokio::test]
async fn websocket_calls_run_concurrently_and_in_order_of_completion() {
    let d = Daemon::start("");
    let ws = d.ws().await;
    let calls = (0..20).map(|_| ws.call("Host.getJobs", json!({})));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.as_ref().unwrap() == &json!({})));
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

/// The daemon closes a keep-alive connection that waits longer than its
/// header timeout for the next request; a client that sat idle that long
/// reconnects instead of failing its next call with a broken pipe. Both
/// the JSON-RPC call and the streaming GET go through the new connection.
#[tokio::test]
async fn an_idle_client_outlives_the_daemons_header_timeout() {
    let d = Daemon::start("[limits]\nhandshake_timeout_s = 0.3\n");
    for c in [d.client().await, d.tls_client().await] {
        assert_eq!(
            c.call("Host.ping2", Value::Null).await.unwrap(),
            json!(true)
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(
            c.call("Host.ping2", Value::Null).await.unwrap(),
            json!(true),
            "a call after the idle connection was closed"
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
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
    }
}
