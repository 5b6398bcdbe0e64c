//! Host jobs through the daemon: idempotent start, abort, restart with a
//! running job (SIGTERM and kill -9), auto-delete, status notifications.

mod common;

use common::{eventually, Daemon, WAIT};
use depot_client::Client;
use serde_json::{json, Value};
use std::time::Duration;

fn new_id() -> String {
    depot_api::types::Uuid::new_v4().to_string()
}

async fn job(c: &Client, id: &str) -> Option<Value> {
    let all = c
        .call("Host.getJobs", json!({"job_ids": [id]}))
        .await
        .unwrap();
    all.get(id).cloned()
}

async fn wait_status(c: &Client, id: &str, status: &str) -> Value {
    eventually(&format!("job {id} {status}"), WAIT, || async {
        job(c, id).await.filter(|j| j["status"] == status)
    })
    .await
}

#[tokio::test]
async fn same_id_twice_is_one_job() {
    let d = Daemon::start("");
    let c = d.client().await;
    let id = new_id();
    let p = json!({"job_id": id, "duration": 0.2});
    assert_eq!(
        c.call("Host.sleepJob", p.clone()).await.unwrap(),
        json!(true)
    );
    assert_eq!(
        c.call("Host.sleepJob", p.clone()).await.unwrap(),
        json!(true)
    );
    let all = c.call("Host.getJobs", json!({})).await.unwrap();
    assert_eq!(all.as_object().unwrap().len(), 1, "{all}");
    let done = wait_status(&c, &id, "done").await;
    assert_eq!(done["progress"], 100);
    assert_eq!(done["job_type"], "storage");
    let slept = done["result"]["slept_ms"].as_u64().unwrap();
    assert!(slept >= 200, "slept {slept} ms");
    // Still the same job after it ended; another spec under that id is not.
    assert_eq!(c.call("Host.sleepJob", p).await.unwrap(), json!(true));
    let e = c
        .call("Host.sleepJob", json!({"job_id": id, "duration": 5}))
        .await
        .unwrap_err();
    assert_eq!(e.rpc_code(), Some(69));
    // Bad durations change nothing.
    let other = new_id();
    for bad in [json!(-1), json!(1e12), json!("10")] {
        let e = c
            .call("Host.sleepJob", json!({"job_id": other, "duration": bad}))
            .await
            .unwrap_err();
        assert_eq!(e.rpc_code(), Some(-32602), "{bad}");
    }
    assert!(job(&c, &other).await.is_none());
}

#[tokio::test]
async fn abort_and_delete() {
    let d = Daemon::start("");
    let c = d.client().await;
    let id = new_id();
    c.call("Host.sleepJob", json!({"job_id": id, "duration": 60}))
        .await
        .unwrap();
    wait_status(&c, &id, "running").await;
    let t = std::time::Instant::now();
    assert_eq!(
        c.call("Host.abortJob", json!({"job_id": id}))
            .await
            .unwrap(),
        json!(true)
    );
    let aborted = wait_status(&c, &id, "aborted").await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "abort took {:?}",
        t.elapsed()
    );
    assert_eq!(aborted["error"]["code"], 411);

    let e = c
        .call("Host.abortJob", json!({"job_id": id}))
        .await
        .unwrap_err();
    assert_eq!(e.rpc_code(), Some(84));
    let e = c
        .call("Host.abortJob", json!({"job_id": new_id()}))
        .await
        .unwrap_err();
    assert_eq!(e.rpc_code(), Some(66));

    assert_eq!(
        c.call("Host.deleteJob", json!({"job_id": id}))
            .await
            .unwrap(),
        json!(true)
    );
    assert!(job(&c, &id).await.is_none());
    let e = c
        .call("Host.deleteJob", json!({"job_id": id}))
        .await
        .unwrap_err();
    assert_eq!(e.rpc_code(), Some(66));
}

#[tokio::test]
async fn failing_job_reports_its_error() {
    let d = Daemon::start("");
    let c = d.client().await;
    let id = new_id();
    c.call(
        "Host.sleepJob",
        json!({"job_id": id, "duration": 0.05, "fail_code": 911}),
    )
    .await
    .unwrap();
    let failed = wait_status(&c, &id, "failed").await;
    assert_eq!(failed["error"]["code"], 911);
    assert!(failed["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("The provided generation does not match"));
}

/// The checkpointed time of a resumable sleep job, from its file.
fn checkpoint_ms(d: &Daemon, id: &str) -> Option<u64> {
    let path = d.state_dir().join("jobs").join(format!("{id}.json"));
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    v["checkpoint"]["elapsed_ms"].as_u64()
}

#[tokio::test]
async fn running_job_after_sigterm_and_after_kill_9() {
    let mut d = Daemon::start("");
    for crash in [false, true] {
        let c = d.client().await;
        let plain = new_id();
        let resumable = new_id();
        c.call("Host.sleepJob", json!({"job_id": plain, "duration": 30}))
            .await
            .unwrap();
        c.call(
            "Host.sleepJob",
            json!({"job_id": resumable, "duration": 5, "resumable": true}),
        )
        .await
        .unwrap();
        wait_status(&c, &plain, "running").await;
        // The resumable one has checkpointed some progress on disk (what
        // survives a kill -9).
        common::eventually("a checkpoint", WAIT, || {
            let ms = checkpoint_ms(&d, &resumable);
            async move { ms.filter(|&ms| ms >= 1000) }
        })
        .await;
        drop(c);
        if crash {
            d.crash();
        } else {
            assert_eq!(d.stop().code(), Some(0), "log:\n{}", d.log());
        }
        let saved = checkpoint_ms(&d, &resumable).expect("a checkpoint");
        d.restart();
        let c = d.client().await;
        let failed = job(&c, &plain).await.expect("interrupted job is listed");
        assert_eq!(failed["status"], "failed", "crash={crash}: {failed}");
        assert_eq!(failed["error"]["code"], 9001);
        // It goes on from its checkpoint instead of starting over: the
        // next checkpoint counts on from the saved one (started over, it
        // would say about 1000 ms).
        let next = common::eventually("a checkpoint after the restart", WAIT, || {
            let ms = checkpoint_ms(&d, &resumable);
            async move { ms.filter(|&ms| ms != saved) }
        })
        .await;
        assert!(
            next > saved,
            "crash={crash}: checkpoint {next} ms after resuming from {saved} ms"
        );
        let done = wait_status(&c, &resumable, "done").await;
        let slept = done["result"]["slept_ms"].as_u64().unwrap();
        assert!(slept >= 5000, "crash={crash}: slept {slept}");
    }
}

#[tokio::test]
async fn finished_jobs_are_deleted_after_the_delay() {
    let mut d = Daemon::start("[jobs]\nautodelete_delay_s = 1.0\n");
    let c = d.client().await;
    let id = new_id();
    c.call("Host.sleepJob", json!({"job_id": id, "duration": 0}))
        .await
        .unwrap();
    wait_status(&c, &id, "done").await;
    eventually("auto-delete", Duration::from_secs(5), || async {
        job(&c, &id).await.is_none().then_some(())
    })
    .await;
    let file = d.state_dir().join("jobs").join(format!("{id}.json"));
    assert!(!file.exists());

    // The countdown survives a restart.
    let id2 = new_id();
    c.call("Host.sleepJob", json!({"job_id": id2, "duration": 0}))
        .await
        .unwrap();
    wait_status(&c, &id2, "done").await;
    drop(c);
    d.stop();
    d.restart();
    let c = d.client().await;
    eventually(
        "auto-delete after restart",
        Duration::from_secs(5),
        || async { job(&c, &id2).await.is_none().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn status_changes_are_notified_to_subscribers() {
    let d = Daemon::start("");
    let ws = d.ws().await;
    let quiet = d.ws().await;
    ws.subscribe(&["|jobs|status|"]).await.unwrap();
    let id = new_id();
    let c = d.client().await;
    c.call("Host.sleepJob", json!({"job_id": id, "duration": 0.3}))
        .await
        .unwrap();
    let event = format!("|jobs|status|{id}");
    let mut seen = Vec::new();
    while !seen.contains(&"done".to_string()) {
        let (method, params) = ws
            .next_event(WAIT)
            .await
            .unwrap_or_else(|| panic!("no event; seen {seen:?}"));
        assert_eq!(method, event);
        assert_eq!(params["id"], id.as_str());
        assert!(params["notify_time"].as_u64().is_some(), "{params}");
        let status = params["status"].as_str().unwrap().to_string();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
    }
    assert_eq!(
        seen.first().map(String::as_str),
        Some("pending"),
        "{seen:?}"
    );
    assert!(seen.contains(&"running".to_string()), "{seen:?}");
    // A connection that did not subscribe gets nothing.
    assert!(quiet.next_event(Duration::from_millis(300)).await.is_none());
}
