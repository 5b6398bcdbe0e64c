//! JSON-RPC over STOMP 1.2 against a real `depotd --dev`, over mutual TLS:
//!
//! - an independent client, Debian's python3-stomp (stomp.py), runs the
//!   engine's storage scenario (`stomp_py/scenario.py`);
//! - depot-client's STOMP transport runs the same scenario;
//! - raw TLS sockets send every kind of malformed frame, frames cut across
//!   TLS records and packed into one, a client that goes silent, one that
//!   never reads, and check the ERROR frames and closes.

mod common;
mod storage_common;

use common::{Daemon, WAIT};
use depot_client::{Endpoint, Options, StompClient, StompOptions};
use depot_stomp::{Command, Frame, Parser};
use serde_json::{json, Value};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use storage_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const REQUESTS: &str = "jms.topic.vdsm_requests";
const RESPONSES: &str = "jms.topic.vdsm_responses";
const EVENTS: &str = "jms.queue.events";

/// A STOMP peer on a raw TLS socket: exactly the bytes the test writes.
struct Raw {
    s: TlsStream<TcpStream>,
    parser: Parser,
    /// Reads that held only end-of-lines between frames: heart-beats.
    beats: usize,
}

impl Raw {
    async fn connect(d: &Daemon) -> Raw {
        let Endpoint::Tls {
            addr,
            server_name,
            ca,
            identity,
        } = d.tls()
        else {
            unreachable!()
        };
        let config = depot_client::tls::client_config(&ca, identity.as_ref()).unwrap();
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let s = TlsConnector::from(config)
            .connect(depot_client::tls::server_name(&server_name).unwrap(), tcp)
            .await
            .unwrap();
        Raw {
            s,
            parser: Parser::new(depot_stomp::Limits {
                max_header_bytes: 1 << 16,
                max_headers: 64,
                max_body_bytes: 64 << 20,
            }),
            beats: 0,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
        self.s.flush().await.unwrap();
    }

    /// CONNECT with `heart-beat` and wait for CONNECTED.
    async fn connect_stomp(&mut self, heartbeat: &str) -> Frame {
        let f = Frame::new(Command::Connect)
            .with("accept-version", "1.2")
            .with("host", "localhost")
            .with("heart-beat", heartbeat);
        self.send(&f.encode()).await;
        let f = self.frame().await.expect("CONNECTED");
        assert_eq!(f.command, Command::Connected, "{f:?}");
        f
    }

    async fn subscribe(&mut self, destination: &str, id: &str) {
        let f = Frame::new(Command::Subscribe)
            .with("destination", destination)
            .with("id", id)
            .with("receipt", format!("sub-{id}"));
        self.send(&f.encode()).await;
        let r = self.frame().await.expect("RECEIPT");
        assert_eq!(r.get("receipt-id"), Some(format!("sub-{id}").as_str()));
    }

    /// The next frame, or `None` when the connection ends (or nothing comes
    /// within the test's bound).
    async fn frame(&mut self) -> Option<Frame> {
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(f) = self
                .parser
                .next_frame()
                .expect("a well-formed frame from depotd")
            {
                return Some(f);
            }
            let idle = !self.parser.in_frame();
            match tokio::time::timeout_at(deadline, self.s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => {
                    if idle && buf[..n].iter().all(|b| matches!(b, b'\n' | b'\r')) {
                        self.beats += 1;
                    }
                    self.parser.push(&buf[..n]);
                }
            }
        }
    }

    /// Reads to the end: the frames that came first, and whether the
    /// connection ended within the test's bound.
    async fn rest(&mut self) -> (Vec<Frame>, bool) {
        let mut frames = Vec::new();
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Ok(Some(f)) = self.parser.next_frame() {
                frames.push(f);
            }
            match tokio::time::timeout_at(deadline, self.s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (frames, true),
                Err(_) => return (frames, false),
                Ok(Ok(n)) => self.parser.push(&buf[..n]),
            }
        }
    }

    /// Expects an ERROR whose message contains `what`, then the close.
    async fn expect_error(&mut self, what: &str) -> Frame {
        let (frames, closed) = self.rest().await;
        let err = frames
            .iter()
            .find(|f| f.command == Command::Error)
            .unwrap_or_else(|| panic!("no ERROR for {what:?}: {frames:?}"))
            .clone();
        let message = err.get("message").unwrap_or_default();
        assert!(
            message.contains(what),
            "ERROR {message:?}, expected {what:?}"
        );
        assert_eq!(err.body, message.as_bytes());
        assert!(closed, "the connection stayed open after ERROR {message:?}");
        err
    }
}

fn send_frame(body: &str, extra: &[(&str, &str)]) -> Frame {
    extra
        .iter()
        .fold(
            Frame::new(Command::Send)
                .with("destination", REQUESTS)
                .with("reply-to", RESPONSES),
            |f, (n, v)| f.with(*n, *v),
        )
        .with_body(body.as_bytes())
}

fn ping(id: &str) -> String {
    json!({"jsonrpc": "2.0", "method": "Host.ping2", "id": id}).to_string()
}

fn body(f: &Frame) -> Value {
    serde_json::from_slice(&f.body).unwrap_or_else(|e| panic!("{e}: {f:?}"))
}

/// depotd is alive and well: it answers, and never panicked.
async fn still_serving(d: &Daemon) {
    let c = d.tls_client().await;
    assert_eq!(
        c.call("Host.ping2", Value::Null).await.unwrap(),
        json!(true)
    );
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

/// python3-stomp is what CI installs (.ci/run); without it this test
/// cannot test anything, so it fails.
fn python_with_stomp() -> &'static str {
    let py = "/usr/bin/python3";
    let ok = std::process::Command::new(py)
        .args(["-c", "import stomp; assert stomp.__version__ >= (8,)"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{py} cannot import stomp 8 or later: install Debian's python3-stomp (.ci/run does)"
    );
    py
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_py_runs_the_engine_storage_scenario() {
    let py = python_with_stomp();
    let d = Daemon::start(CONFIG);
    let storage = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stomp_py/scenario.py");
    let flow = "stomp-py-flow-1";
    let child = tokio::process::Command::new(py)
        .arg(script)
        .arg(d.tls_addr())
        .arg(d.pki())
        .arg(storage.path().canonicalize().unwrap())
        .arg(flow)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("scenario.py ended within 180 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scenario.py failed: {stderr}\n{}",
        d.log()
    );
    let seen: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));

    assert_eq!(seen["connect_status"][0]["status"], 0, "{seen}");
    assert_eq!(seen["copy_started"], true);
    let statuses: Vec<&str> = seen["job_event_statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(statuses.last(), Some(&"done"), "{seen}");
    assert!(statuses.contains(&"running"), "{seen}");
    assert_eq!(seen["job_event_subscriptions"], json!(["events"]));
    assert_eq!(seen["job_event_has_notify_time"], true);
    assert_eq!(seen["job_status"], "done");
    assert_eq!(seen["copied_equal"], true);
    assert_eq!(seen["batch"], json!([["b1", 0], ["b2", -32601]]));
    assert_eq!(seen["parse_error_code"], -32700);
    assert_eq!(seen["ping_after_quiet"], true);
    assert_eq!(seen["response_subscriptions"], json!(["responses"]));
    assert_eq!(seen["heartbeat_timeouts"], 0);
    assert_eq!(seen["errors"], json!([]));
    // The other connection subscribed to the same destination saw none of
    // the engine's answers.
    assert_eq!(seen["other_answers"], 0);
    assert_eq!(seen["nowhere_error"], "Subscription not available");

    let log = d.log();
    assert!(
        log.contains(&format!("flow_id=\"{flow}\"")) || log.contains(&format!("flow_id={flow}")),
        "the flow id is not in the request log:\n{log}"
    );
    assert!(!log.contains("STOMP client dropped"), "{log}");
    still_serving(&d).await;
}

/// The abuse cases again, from Python's ssl sockets, with depotd's
/// answers read by stomp.py's frame parser instead of depot's: every
/// malformed frame kind, a silent client and one that never reads get
/// ERROR (or, not reading, cannot take it) and are closed. Default limits,
/// but for the body pace, set far out so that only the queue limits can
/// drop the client that does not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_py_sees_errors_and_closes_for_abuse() {
    let py = python_with_stomp();
    let d = Daemon::start("[limits]\nbody_window_s = 600\n");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stomp_py/abuse.py");
    let child = tokio::process::Command::new(py)
        .arg(script)
        .arg(d.tls_addr())
        .arg(d.pki())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("abuse.py ended within 300 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "abuse.py failed: {stderr}\n{}",
        d.log()
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (case, want) in [
        ("no_nul", "does not end with NUL"),
        ("bad_content_length", "invalid content-length"),
        ("oversized_body", "body exceeds the limit of 8388608 bytes"),
        ("unknown_command", "unknown command"),
        ("bad_escape", "invalid escape"),
        ("oversized_header", "limit of 16384 bytes"),
        ("too_many_headers", "more than 32 headers"),
        ("not_utf8", "not UTF-8"),
        ("nowhere", "Subscription not available"),
        ("silent", "past its heart-beat"),
    ] {
        let error = seen[case]["error"].as_str().unwrap_or_default();
        assert!(error.contains(want), "{case}: {}", seen[case]);
        assert_eq!(seen[case]["closed"], true, "{case}: {}", seen[case]);
    }
    assert_eq!(seen["silent"]["heart_beat"], "0,1000");
    assert_eq!(seen["not_reading"]["closed"], true, "{seen}");
    assert!(d.log().contains("not reading"), "{}", d.log());
    still_serving(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depot_client_runs_the_same_scenario_over_stomp() {
    let d = Daemon::start(CONFIG);
    let storage = tempfile::tempdir().unwrap();
    let path = storage.path().canonicalize().unwrap();
    let flow = "stomp-client-flow-1";
    let c = StompClient::connect_with(
        &d.tls(),
        Options::with_timeout(WAIT),
        StompOptions {
            heartbeat: (2000, 2000),
            flow_id: Some(flow.into()),
        },
    )
    .await
    .unwrap();
    c.subscribe(&["|jobs|status|"]).await.unwrap();

    let conn_id = new_id();
    let st = c
        .call(
            "StoragePool.connectStorageServer",
            connect_params(LOCALFS, vec![ConnectionSpec::local(&path).params(&conn_id)]),
        )
        .await
        .unwrap();
    assert_eq!(st, json!([{"id": conn_id, "status": 0}]));
    let sd = new_id();
    let conn = path.display().to_string();
    c.call(
        "StorageDomain.create",
        create_domain_params(&sd, LOCALFS, &conn, "stomp", 512),
    )
    .await
    .unwrap();
    let (src, dst) = ((new_id(), new_id()), (new_id(), new_id()));
    for (img, vol) in [&src, &dst] {
        c.call(
            "Volume.create",
            volume_params(&sd, img, vol, 8 * MIB, "RAW", "SPARSE", "stomp", None),
        )
        .await
        .unwrap();
    }
    let src_path = path.join(&sd).join("images").join(&src.0).join(&src.1);
    let data: Vec<u8> = (0..3 * MIB as usize).map(|i| (i * 7 % 251) as u8).collect();
    {
        use std::io::Write;
        // Into the volume, which keeps its size.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&src_path)
            .unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    let job = new_id();
    let ep = |(img, vol): &(String, String)| json!({"endpoint_type": "div", "sd_id": sd, "img_id": img, "vol_id": vol});
    let started = c
        .call(
            "SDM.copy_data",
            json!({"job_id": job, "source": ep(&src), "destination": ep(&dst)}),
        )
        .await
        .unwrap();
    assert_eq!(started, json!(true));
    let mut statuses = Vec::new();
    let deadline = Instant::now() + WAIT;
    while statuses.last() != Some(&"done".to_string()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (name, params) = c.next_event(left).await.expect("the copy's events");
        if name == format!("|jobs|status|{job}") {
            statuses.push(params["status"].as_str().unwrap().to_string());
            assert_ne!(params["status"], "failed", "{params}");
        }
    }
    let jobs = c
        .call("Host.getJobs", json!({"job_ids": [job]}))
        .await
        .unwrap();
    assert_eq!(jobs[&job]["status"], "done");
    let dst_path = path.join(&sd).join("images").join(&dst.0).join(&dst.1);
    assert_eq!(std::fs::read(dst_path).unwrap()[..data.len()], data[..]);

    // Errors are the engine's, as over HTTP.
    let e = c.call("No.such", Value::Null).await.unwrap_err();
    assert_eq!(e.rpc_code(), Some(-32601));
    c.send_raw("{not json").await.unwrap();
    let v = c.recv_raw(WAIT).await.expect("the parse error");
    assert_eq!(v["error"]["code"], -32700);

    c.disconnect().await.unwrap();
    assert!(d.log().contains(&format!("flow_id=\"{flow}\"")) || d.log().contains(flow));
    still_serving(&d).await;
}

/// Every malformed frame gets an ERROR naming what is wrong, and the
/// connection is closed; depotd goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_frame_gets_an_error_and_a_close() {
    let d = Daemon::start("[limits]\nstomp_max_header_bytes = 1024\nstomp_max_headers = 8\nmax_request_bytes = 4096\n");
    let long = "x".repeat(2000);
    let many: String = (0..9).map(|i| format!("h{i}:v\n")).collect();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"SEND\ndestination:jms.topic.vdsm_requests\ncontent-length:2\n\n{}X".to_vec(),
            "does not end with NUL",
        ),
        (
            b"SEND\ndestination:jms.topic.vdsm_requests\ncontent-length:abc\n\n{}\0".to_vec(),
            "invalid content-length",
        ),
        (
            b"SEND\ndestination:jms.topic.vdsm_requests\ncontent-length:5000\n\n".to_vec(),
            "body exceeds the limit of 4096",
        ),
        (
            [
                &b"SEND\ndestination:jms.topic.vdsm_requests\n\n"[..],
                &[b' '; 5000],
            ]
            .concat(),
            "body exceeds the limit of 4096",
        ),
        (b"FROB\n\n\0".to_vec(), "unknown command"),
        (
            b"SEND\ndestination:jms.topic.vdsm\\qrequests\n\n\0".to_vec(),
            "invalid escape",
        ),
        (
            format!("SEND\nx-long:{long}\n\n\0").into_bytes(),
            "limit of 1024 bytes",
        ),
        (
            format!("SEND\n{many}\n\0").into_bytes(),
            "more than 8 headers",
        ),
        (b"SEND\nno colon here\n\n\0".to_vec(), "malformed header"),
        (b"SEND\nbad:\xff\xfe\n\n\0".to_vec(), "not UTF-8"),
        (
            b"SEND\ndestination:jms.topic.nowhere\n\n{}\0".to_vec(),
            "Subscription not available",
        ),
        (b"SEND\n\n{}\0".to_vec(), "Missing destination"),
        (b"BEGIN\ntransaction:t\n\n\0".to_vec(), "not supported"),
        (b"MESSAGE\n\n\0".to_vec(), "server frame"),
        (
            b"SUBSCRIBE\nid:1\n\n\0".to_vec(),
            "Missing destination or subscription id",
        ),
        (
            b"SUBSCRIBE\nid:1\ndestination:d\nack:client\n\n\0".to_vec(),
            "ack mode",
        ),
        (
            b"CONNECT\naccept-version:1.2\n\n\0".to_vec(),
            "already connected",
        ),
    ];
    for (bytes, what) in &cases {
        let mut r = Raw::connect(&d).await;
        r.connect_stomp("0,0").await;
        r.send(bytes).await;
        r.expect_error(what).await;
    }
    // Before CONNECT: a version depot does not speak, a bad heart-beat,
    // and anything but CONNECT or SUBSCRIBE.
    for (bytes, what) in [
        (&b"CONNECT\naccept-version:1.0,1.1\n\n\0"[..], "Version unsupported"),
        (b"CONNECT\naccept-version:1.2\nheart-beat:soon\n\n\0", "invalid heart-beat"),
        (b"SUBSCRIBE\nid:1\ndestination:d\n\n\0SEND\ndestination:jms.topic.vdsm_requests\n\n{}\0", "CONNECT frame first"),
    ] {
        let mut r = Raw::connect(&d).await;
        r.send(bytes).await;
        r.expect_error(what).await;
    }
    // A frame cut off by the client's close: ERROR, before depotd closes.
    let mut r = Raw::connect(&d).await;
    r.connect_stomp("0,0").await;
    r.send(b"SEND\ndestination:jms.topic.vdsm_requests\n\n{\"no\":\"NUL\"}")
        .await;
    r.s.shutdown().await.unwrap();
    r.expect_error("middle of a frame").await;
    // A receipt header is echoed in the ERROR of its frame.
    let mut r = Raw::connect(&d).await;
    r.connect_stomp("0,0").await;
    r.send(b"ABORT\ntransaction:t\nreceipt:77\n\n\0").await;
    let e = r.expect_error("not supported").await;
    assert_eq!(e.get("receipt-id"), Some("77"));
    still_serving(&d).await;
}

/// Frames cut across TLS records and several frames in one record, CRLF
/// line ends, escaped headers, a body with NUL in it (content-length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_in_pieces_and_together() {
    let d = Daemon::start("");
    let mut r = Raw::connect(&d).await;
    // CONNECT, two SUBSCRIBEs and three SENDs in one write, CRLF EOLs.
    let reply = "my:replies\\x";
    let mut burst = b"CONNECT\r\naccept-version:1.2\r\nheart-beat:0,0\r\n\r\n\0\r\n".to_vec();
    burst.extend(
        Frame::new(Command::Subscribe)
            .with("destination", reply)
            .with("id", "mine")
            .encode(),
    );
    burst.extend(
        Frame::new(Command::Subscribe)
            .with("destination", RESPONSES)
            .with("id", "default")
            .encode(),
    );
    burst.extend(send_frame(&ping("a"), &[]).encode());
    burst.extend(
        Frame::new(Command::Send)
            .with("destination", "jms.topic.vdsm_irs_requests")
            .with("reply-to", reply)
            .with_body(ping("b").into_bytes())
            .encode(),
    );
    // The NUL inside is the body's (content-length says so): not JSON.
    burst.extend(send_frame("{\"a\0b\"}", &[("receipt", "r3")]).encode());
    r.send(&burst).await;
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(r.frame().await.expect("answers"));
    }
    let find = |id: &str| {
        got.iter()
            .find(|f| f.command == Command::Message && body(f)["id"] == id)
            .unwrap_or_else(|| panic!("no answer {id}: {got:?}"))
            .clone()
    };
    assert_eq!(got[0].command, Command::Connected);
    let a = find("a");
    assert_eq!(a.get("subscription"), Some("default"));
    assert_eq!(a.get("destination"), Some(RESPONSES));
    assert_eq!(a.get("content-type"), Some("application/json"));
    assert!(a.get("message-id").is_some());
    let b = find("b");
    assert_eq!(b.get("subscription"), Some("mine"));
    assert_eq!(b.get("destination"), Some(reply));
    assert!(got
        .iter()
        .any(|f| f.command == Command::Receipt && f.get("receipt-id") == Some("r3")));
    let parse_error = got
        .iter()
        .find(|f| f.command == Command::Message && body(f)["id"].is_null())
        .expect("the parse error's answer");
    assert_eq!(body(parse_error)["error"]["code"], -32700);

    // One SEND a byte per TLS record.
    let bytes = send_frame(&ping("slow"), &[]).encode();
    for b in &bytes {
        r.send(std::slice::from_ref(b)).await;
    }
    let f = r.frame().await.expect("the answer");
    assert_eq!(body(&f)["id"], "slow");
    assert_eq!(body(&f)["result"], true);

    // DISCONNECT: the answers of the calls before it, then the receipt.
    let mut burst = send_frame(&ping("last"), &[]).encode();
    burst.extend(
        Frame::new(Command::Disconnect)
            .with("receipt", "bye")
            .encode(),
    );
    r.send(&burst).await;
    let (frames, closed) = r.rest().await;
    assert!(closed);
    let kinds: Vec<_> = frames.iter().map(|f| f.command).collect();
    assert_eq!(kinds, [Command::Message, Command::Receipt], "{frames:?}");
    assert_eq!(body(&frames[0])["id"], "last");
    assert_eq!(frames[1].get("receipt-id"), Some("bye"));
    still_serving(&d).await;
}

/// The server sends heart-beats at the client's pace and keeps a client
/// that beats; one that promised to beat and goes silent is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_both_ways() {
    let d = Daemon::start("");
    // Heart-beats asked every 1 s both ways: VDSM's floor.
    let mut r = Raw::connect(&d).await;
    let connected = r.connect_stomp("1000,1000").await;
    assert_eq!(connected.get("heart-beat"), Some("1000,1000"));
    assert_eq!(connected.get("version"), Some("1.2"));
    // The client beats every 400 ms for a while and hears the server's.
    let until = Instant::now() + Duration::from_millis(4500);
    let mut buf = [0u8; 256];
    let mut beats = 0;
    while Instant::now() < until {
        r.send(b"\n").await;
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(400), r.s.read(&mut buf)).await
        {
            assert!(n > 0, "closed while the client kept beating");
            assert!(buf[..n].iter().all(|b| *b == b'\n'), "{:?}", &buf[..n]);
            beats += 1;
        }
    }
    assert!(beats >= 2, "{beats} heart-beats from the server in 4.5 s");
    r.subscribe(RESPONSES, "r").await;
    r.send(&send_frame(&ping("alive"), &[]).encode()).await;
    let f = r.frame().await.expect("an answer after the beats");
    assert_eq!(body(&f)["id"], "alive");

    // Now silence: dropped after twice the interval, with an ERROR.
    let started = Instant::now();
    r.expect_error("past its heart-beat").await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "dropped too early"
    );
    assert!(d.log().contains("STOMP client dropped"));

    // The engine's way: it sends none and wants one every 24 s; depot
    // answers that it will send every 24 s and expects nothing.
    let mut r = Raw::connect(&d).await;
    let c = r.connect_stomp("0,24000").await;
    assert_eq!(c.get("heart-beat"), Some("24000,0"));
    still_serving(&d).await;
}

/// Without heart-beats, an idle client is dropped after
/// stomp_idle_timeout_s; a connection that never sends CONNECT after the
/// handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_unconnected_clients_are_dropped() {
    let d = Daemon::start("[limits]\nstomp_idle_timeout_s = 2\nhandshake_timeout_s = 2\n");
    let mut r = Raw::connect(&d).await;
    r.connect_stomp("0,0").await;
    r.expect_error("stomp_idle_timeout_s").await;

    let mut r = Raw::connect(&d).await;
    r.send(b"SUBSCRIBE\nid:1\ndestination:d\n\n\0").await;
    r.expect_error("no CONNECT frame").await;
    still_serving(&d).await;
}

/// Subscriptions per connection are limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_limited() {
    let d = Daemon::start("[limits]\nstomp_max_subscriptions = 2\n");
    let mut r = Raw::connect(&d).await;
    r.connect_stomp("0,0").await;
    r.subscribe(RESPONSES, "1").await;
    r.subscribe(EVENTS, "2").await;
    r.send(
        &Frame::new(Command::Subscribe)
            .with("destination", "x")
            .with("id", "3")
            .encode(),
    )
    .await;
    r.expect_error("stomp_max_subscriptions").await;
    still_serving(&d).await;
}

/// A client that sends calls and never reads their answers fills its
/// queue and is dropped, by the count of frames or by their bytes, whichever
/// comes first; depotd's memory does not follow it. The body pace is set far
/// out so that only the queue limits can end it in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped() {
    // By count: 8 answers.
    let d = Daemon::start("[limits]\nstomp_max_pending_messages = 8\nbody_window_s = 600\n");
    let sent = fill_until_dropped(&d, 2000).await;
    eprintln!("dropped by count after {sent} calls");
    still_serving(&d).await;
    // By bytes: 1 MiB of answers, long before 1024 of them.
    let d = Daemon::start("[limits]\nstomp_max_pending_bytes = 1048576\nbody_window_s = 600\n");
    let sent = fill_until_dropped(&d, 300).await;
    eprintln!("dropped by bytes after {sent} calls");
    still_serving(&d).await;
}

/// Sends calls with 256 KiB answers and never reads, until depotd drops
/// the client (at most `max_sends` calls); how many it took.
async fn fill_until_dropped(d: &Daemon, max_sends: usize) -> usize {
    let mut r = Raw::connect(d).await;
    r.connect_stomp("0,0").await;
    r.subscribe(RESPONSES, "r").await;
    // Each answer repeats its 256 KiB id: the socket buffers fill after a
    // few dozen.
    let id = "i".repeat(256 << 10);
    let frame = send_frame(&ping(&id), &[]).encode();
    let rss_before = rss_kib(d.pid());
    let mut sent = 0;
    // Whole frames only (a write cut off by a timeout would be a protocol
    // error instead): the bound is on the whole loop.
    let filled = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if d.log().contains("STOMP client dropped") && d.log().contains("not reading") {
                return;
            }
            match r.s.write_all(&frame).await {
                Ok(()) => sent += 1,
                // depotd closed the connection: wait for its log line.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            assert!(
                sent <= max_sends,
                "{sent} calls sent and the client is still not dropped"
            );
        }
    })
    .await;
    assert!(
        filled.is_ok(),
        "not dropped within 60 s after {sent} calls:\n{}",
        d.log()
    );
    // Whatever it queued was let go: RSS is nowhere near `sent` answers.
    let rss_after = rss_kib(d.pid());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    sent
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// Events reach every STOMP subscriber of jms.queue.events, as they reach
/// WebSocket subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_every_stomp_subscriber() {
    let d = Daemon::start("");
    let mut subscribers = Vec::new();
    for i in 0..2 {
        let mut r = Raw::connect(&d).await;
        r.connect_stomp("0,0").await;
        r.subscribe(EVENTS, &format!("ev{i}")).await;
        subscribers.push(r);
    }
    let ws = Arc::new(d.ws().await);
    ws.subscribe(&[]).await.unwrap();
    let c = d.client().await;
    let job = new_id();
    c.call("Host.sleepJob", json!({"job_id": job, "duration": 1.0}))
        .await
        .unwrap();
    let name = format!("|jobs|status|{job}");
    for (i, r) in subscribers.iter_mut().enumerate() {
        loop {
            let f = r.frame().await.expect("a job event");
            assert_eq!(f.command, Command::Message);
            assert_eq!(f.get("destination"), Some(EVENTS));
            assert_eq!(f.get("subscription"), Some(format!("ev{i}").as_str()));
            let ev = body(&f);
            assert!(ev.get("id").is_none(), "an event is a notification: {ev}");
            if ev["method"] == name && ev["params"]["status"] == "done" {
                break;
            }
        }
    }
    // The WebSocket subscriber got them too.
    let deadline = Instant::now() + WAIT;
    loop {
        let (m, p) = ws
            .next_event(deadline.saturating_duration_since(Instant::now()))
            .await
            .expect("the WebSocket's events");
        if m == name && p["status"] == "done" {
            break;
        }
    }
}

/// SIGTERM: a STOMP client gets its answers, then ERROR "depotd is
/// shutting down", and the daemon exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_so_and_closes() {
    let mut d = Daemon::start("");
    let mut r = Raw::connect(&d).await;
    r.connect_stomp("1000,1000").await;
    r.subscribe(RESPONSES, "r").await;
    d.signal(nix::sys::signal::Signal::SIGTERM);
    r.expect_error("shutting down").await;
    assert!(d.wait_exit(WAIT).success(), "{}", d.log());
}
