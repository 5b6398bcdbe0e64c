//! Start, READY, STOPPING, SIGTERM, config errors, request logging.

mod common;
mod ovf_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use common::{Daemon, WAIT};
use depot_client::Client;
use ovf_common::{big_tar, OpenUpload, Via};
use serde_json::json;
use std::process::Command;
use storage_common::*;

#[tokio::test]
async fn ready_only_after_bind_and_clean_sigterm() {
    let mut d = Daemon::start("");
    // READY=1 has arrived: both listeners must answer right now, without
    // any retry.
    let c = Client::connect(&d.unix())
        .await
        .expect("socket bound at READY");
    assert_eq!(c.call("Host.ping2", json!({})).await.unwrap(), json!(true));
    let t = Client::connect(&d.tls()).await.expect("TLS bound at READY");
    assert_eq!(t.call("Host.ping2", json!({})).await.unwrap(), json!(true));
    drop((c, t));

    let status = d.stop();
    assert_eq!(status.code(), Some(0), "log:\n{}", d.log());
    assert!(
        d.notifications.iter().any(|n| n.contains("STOPPING=1"))
            || d.wait_notification("STOPPING=1", WAIT)
    );
    assert!(!d.socket().exists(), "socket file left behind");
    // READY came before STOPPING.
    let ready = d.notifications.iter().position(|n| n.contains("READY=1"));
    let stopping = d
        .notifications
        .iter()
        .position(|n| n.contains("STOPPING=1"));
    assert!(ready < stopping, "{:?}", d.notifications);
}

/// SIGTERM while a call is in flight: an OVF_STORE upload whose body is
/// half sent, which the daemon is already writing to its staging file. The
/// daemon stops (STOPPING=1), lets the upload finish and answer, commits
/// it, and exits 0.
#[tokio::test]
async fn sigterm_lets_an_in_flight_call_answer() {
    let mut d = Daemon::start(CONFIG);
    let data = tempfile::tempdir().unwrap();
    let conn = ConnectionSpec::local(&data.path().canonicalize().unwrap());
    let dom = ovf_common::Domain::create(&d, LOCALFS, conn, 512).await;
    let disk = dom.create_volume(&new_id(), GIB, "COW", "DATA", None).await;
    let store = dom.create_store().await;
    let (tar, _) = big_tar(&dom.sd, 8 << 20, &[(&disk.img, &disk.vol)]);
    let mut up = OpenUpload::start(&Via::unix(&d), &store.ids(), tar.len() as u64).await;
    up.send(&tar[..tar.len() / 2]).await;
    // In flight: the daemon has taken part of the body.
    wait_until("the upload's staging data", WAIT, || {
        std::fs::metadata(store.staging()).is_ok_and(|m| m.len() >= 1 << 20)
    });

    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        d.wait_notification("STOPPING=1", WAIT),
        "no STOPPING=1; log:\n{}",
        d.log()
    );
    // Shutdown has begun: the listening socket is gone, the upload goes on.
    wait_until("the socket to close", WAIT, || !d.socket().exists());
    up.send(&tar[tar.len() / 2..]).await;
    let r = up.finish().await;
    assert_eq!(r.status, 200, "{}", r.show());
    assert_eq!(d.wait_exit(WAIT).code(), Some(0), "log:\n{}", d.log());
    // Committed before the daemon exited: the store holds the archive.
    let bytes = store.bytes();
    assert!(bytes[..tar.len()] == tar[..], "the store is not the upload");
}

#[tokio::test]
async fn watchdog_pings_while_the_runtime_answers() {
    // 400 ms: depotd pings every 200 ms.
    let mut d = Daemon::start_with_env("", &[("WATCHDOG_USEC", "400000")]);
    let pings = |d: &Daemon| {
        d.notifications
            .iter()
            .filter(|n| n.contains("WATCHDOG=1"))
            .count()
    };
    assert!(
        d.wait_notification("WATCHDOG=1", WAIT),
        "{:?}",
        d.notifications
    );
    // Pings keep coming: three more, however long a loaded machine takes.
    let first = pings(&d);
    let deadline = std::time::Instant::now() + WAIT;
    while pings(&d) < first + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            d.notifications
        );
        d.wait_notification("never sent", std::time::Duration::from_millis(200));
    }
    // And the runtime answers meanwhile.
    let c = d.client().await;
    assert_eq!(c.call("Host.ping2", json!({})).await.unwrap(), json!(true));
    drop(c);
    assert_eq!(d.stop().code(), Some(0));
}

#[tokio::test]
async fn watchdog_meant_for_another_pid_is_ignored() {
    let mut d = Daemon::start_with_env("", &[("WATCHDOG_USEC", "400000"), ("WATCHDOG_PID", "1")]);
    assert!(!d.wait_notification("WATCHDOG=1", std::time::Duration::from_millis(1200)));
}

#[test]
fn unknown_config_key_is_named_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[limits]\nmax_bach = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_depotd"))
        .args(["--dev", "--dev-dir"])
        .arg(dir.path().join("dev"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_bach"), "{err}");
    assert!(
        !dir.path().join("dev").exists(),
        "a bad config created state"
    );
}

#[test]
fn print_config_shows_merged_values() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[jobs]\nmax_running = 7\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_depotd"))
        .args(["--dev", "--dev-dir"])
        .arg(dir.path().join("dev"))
        .arg("--config")
        .arg(&cfg)
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_running = 7"), "{text}");
    assert!(text.contains("autodelete_delay_s = 3600"), "{text}");
}

#[tokio::test]
async fn each_request_is_logged_once_with_peer_and_flow_id() {
    let mut d = Daemon::start("");
    let c = d.tls_client().await;
    c.call_with_flow_id("Host.getJobs", json!({}), "flow-7f3a")
        .await
        .unwrap();
    let e = c
        .call(
            "Host.abortJob",
            json!({"job_id": "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a"}),
        )
        .await;
    assert_eq!(e.unwrap_err().rpc_code(), Some(66));
    d.stop();
    let log = d.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("flow-7f3a")).collect();
    assert_eq!(lines.len(), 1, "log:\n{log}");
    let line = lines[0];
    for part in ["Host.getJobs", "CN=depotctl", "code=0", "duration_ms="] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
    let abort: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("method=Host.abortJob"))
        .collect();
    assert_eq!(abort.len(), 1, "log:\n{log}");
    assert!(abort[0].contains("code=66"), "{}", abort[0]);
}

#[tokio::test]
async fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let d = Daemon::start("");
    let out = Command::new(env!("CARGO_BIN_EXE_depotd"))
        .args(["--dev", "--dev-dir"])
        .arg(d.dev_dir())
        .arg("--config")
        .arg(d.dir.path().join("test.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    // The first one still serves.
    d.client()
        .await
        .call("Host.ping2", json!({}))
        .await
        .unwrap();
}
