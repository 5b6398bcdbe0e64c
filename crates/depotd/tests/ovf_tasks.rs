//! The OVF_STORE streams' tasks (issue 13): the `Task-Id` a PUT or GET
//! answers is a task the engine can poll with `Task.getStatus` and
//! `Host.getAllTasksStatuses`, look up with `Task.getInfo` and
//! `Host.getAllTasksInfo`, and clear with `Task.clear`; it holds the
//! outcome (success, or cleanFailure with the error's code), survives a
//! restart, is reported failed (9001) when a crash interrupted it, and the
//! finished ones are bounded by `tasks.max_finished`.

mod common;
mod ovf_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use common::{eventually, Daemon, WAIT};
use depot_client::Client;
use ovf_common::*;
use serde_json::{json, Value};
use storage_common::*;

async fn status(c: &Client, task: &str) -> Value {
    call_ok(c, "Task.getStatus", json!({"taskID": task})).await
}

/// Polls the task until it is finished; its status.
async fn finished(c: &Client, task: &str) -> Value {
    eventually("the task to finish", WAIT, || async {
        let s = c
            .call("Task.getStatus", json!({"taskID": task}))
            .await
            .ok()?;
        (s["taskState"] == "finished").then_some(s)
    })
    .await
}

fn task_of(r: &Resp) -> String {
    let id = r
        .header("task-id")
        .unwrap_or_else(|| panic!("no Task-Id: {}", r.show()));
    assert!(id.parse::<depot_api::types::Uuid>().is_ok(), "{id}");
    id.to_string()
}

fn task_file(d: &Daemon, task: &str) -> std::path::PathBuf {
    d.state_dir().join("tasks").join(format!("{task}.json"))
}

#[tokio::test]
async fn stream_tasks_are_polled_cleared_and_survive_a_restart() {
    let storage = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(CONFIG);
    let mut dom = Domain::create(&d, LOCALFS, ConnectionSpec::local(storage.path()), 512).await;
    let store = dom.create_store().await;
    let tar = engine_tar(&dom.sd, &[Entity::vm("vm", &[])], &[]);
    let via = Via::unix(&d);

    // An upload: its task is finished with success once the PUT answers.
    let up = task_of(&put_ok(&via, &store, &tar).await);
    let s = status(&dom.c, &up).await;
    assert_eq!(
        (&s["taskID"], &s["taskState"], &s["taskResult"], &s["code"]),
        (&json!(up), &json!("finished"), &json!("success"), &json!(0)),
        "{s}"
    );
    let info = call_ok(&dom.c, "Task.getInfo", json!({"taskID": up})).await;
    assert_eq!(info, json!({"id": up, "verb": "downloadImageFromStream"}));

    // A read: its task ends with success once the bytes are sent.
    let r = get(&via, &store.ids(), 0, tar.len() as u64 - 1).await;
    assert_eq!(r.status, 206, "{}", r.show());
    assert!(r.body == tar);
    let down = task_of(&r);
    assert_eq!(finished(&dom.c, &down).await["taskResult"], "success");
    let info = call_ok(&dom.c, "Task.getInfo", json!({"taskID": down})).await;
    assert_eq!(info["verb"], "uploadImageToStream", "{info}");

    // A bad upload (not a tar): 400 with a Task-Id whose task failed with
    // the same code and message.
    let bad = put(&via, &store.ids(), &vec![b'x'; 4096]).await;
    bad.assert_error(400, 1000, "a PUT of garbage");
    let failed = task_of(&bad);
    let s = status(&dom.c, &failed).await;
    assert_eq!(
        (&s["taskState"], &s["taskResult"], &s["code"]),
        (&json!("finished"), &json!("cleanFailure"), &json!(1000)),
        "{s}"
    );
    assert_eq!(s["message"], bad.message().as_str(), "{s}");
    // One too large for the volume: 413, 9005, in the task too.
    let big = put_oversized(&via, &store.ids(), STORE_SIZE).await;
    big.assert_error(413, 9005, "an oversized PUT");
    let too_big = task_of(&big);
    assert_eq!(status(&dom.c, &too_big).await["code"], 9005);

    // Every one is listed, with its status and its verb.
    let all = call_ok(&dom.c, "Host.getAllTasksStatuses", json!({})).await;
    for (t, result) in [
        (&up, "success"),
        (&down, "success"),
        (&failed, "cleanFailure"),
        (&too_big, "cleanFailure"),
    ] {
        assert_eq!(all[t]["taskResult"], result, "{t}: {all}");
    }
    let infos = call_ok(&dom.c, "Host.getAllTasksInfo", json!({})).await;
    assert_eq!(infos[&up]["verb"], "downloadImageFromStream", "{infos}");
    assert_eq!(infos[&down]["verb"], "uploadImageToStream", "{infos}");

    // A restart keeps them, outcome and all.
    d.stop();
    d.restart();
    dom.reconnect(&d).await;
    for (t, result, code) in [
        (&up, "success", 0),
        (&down, "success", 0),
        (&failed, "cleanFailure", 1000),
        (&too_big, "cleanFailure", 9005),
    ] {
        let s = status(&dom.c, t).await;
        assert_eq!(
            (&s["taskState"], &s["taskResult"], &s["code"]),
            (&json!("finished"), &json!(result), &json!(code)),
            "{t} after a restart: {s}"
        );
    }

    // Task.clear forgets one, its file too; a second clear is 401.
    assert!(task_file(&d, &up).exists());
    call_ok(&dom.c, "Task.clear", json!({"taskID": up})).await;
    assert!(!task_file(&d, &up).exists());
    call_err(&dom.c, "Task.getStatus", json!({"taskID": up}), 401).await;
    call_err(&dom.c, "Task.getInfo", json!({"taskID": up}), 401).await;
    call_err(&dom.c, "Task.clear", json!({"taskID": up}), 401).await;
    let all = call_ok(&dom.c, "Host.getAllTasksStatuses", json!({})).await;
    assert!(all.get(&up).is_none(), "{all}");
    assert_eq!(all[&down]["taskResult"], "success", "{all}");
}

/// An upload that is running when the daemon is killed: running (403 to
/// Task.clear) before, and after the restart finished with cleanFailure
/// and 9001, not lost and not running forever.
#[tokio::test]
async fn a_task_running_at_a_crash_is_reported_failed() {
    let storage = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(CONFIG);
    let mut dom = Domain::create(&d, LOCALFS, ConnectionSpec::local(storage.path()), 512).await;
    let store = dom.create_store().await;
    let tar = engine_tar(&dom.sd, &[Entity::vm("vm", &[])], &[]);
    let mut up = OpenUpload::start(&Via::unix(&d), &store.ids(), tar.len() as u64).await;
    up.send(&tar[..512]).await;

    // The PUT has not answered: the task is found by its verb.
    let task = eventually("the upload's task", WAIT, || async {
        let infos = dom.c.call("Host.getAllTasksInfo", json!({})).await.ok()?;
        infos
            .as_object()?
            .iter()
            .find_map(|(id, i)| (i["verb"] == "downloadImageFromStream").then(|| id.clone()))
    })
    .await;
    let s = status(&dom.c, &task).await;
    assert_eq!(
        (&s["taskState"], &s["taskResult"]),
        (&json!("running"), &json!("")),
        "{s}"
    );
    call_err(&dom.c, "Task.clear", json!({"taskID": task}), 403).await;

    d.crash();
    drop(up);
    d.restart();
    dom.reconnect(&d).await;
    let s = status(&dom.c, &task).await;
    assert_eq!(
        (&s["taskState"], &s["taskResult"], &s["code"]),
        (&json!("finished"), &json!("cleanFailure"), &json!(9001)),
        "{s}"
    );
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("running when depotd stopped"),
        "{s}"
    );
    call_ok(&dom.c, "Task.clear", json!({"taskID": task})).await;
}

/// `tasks.max_finished`: beyond it the oldest finished tasks go, and their
/// files with them.
#[tokio::test]
async fn finished_tasks_over_the_bound_go() {
    let storage = tempfile::tempdir().unwrap();
    let d = Daemon::start(&format!("{CONFIG}[tasks]\nmax_finished = 2\n"));
    let dom = Domain::create(&d, LOCALFS, ConnectionSpec::local(storage.path()), 512).await;
    let store = dom.create_store().await;
    let tar = engine_tar(&dom.sd, &[Entity::vm("vm", &[])], &[]);
    let via = Via::unix(&d);
    let mut tasks = vec![task_of(&put_ok(&via, &store, &tar).await)];
    for _ in 0..3 {
        let r = get(&via, &store.ids(), 0, 511).await;
        assert_eq!(r.status, 206, "{}", r.show());
        let t = task_of(&r);
        finished(&dom.c, &t).await;
        tasks.push(t);
    }
    for old in &tasks[..2] {
        call_err(&dom.c, "Task.getStatus", json!({"taskID": old}), 401).await;
    }
    for kept in &tasks[2..] {
        assert_eq!(status(&dom.c, kept).await["taskResult"], "success");
    }
    // The files go right after the records (by the thread that finished
    // the last task).
    let dir = d.state_dir().join("tasks");
    eventually("the old tasks' files to go", WAIT, || async {
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        (files.len() == 2
            && tasks[2..]
                .iter()
                .all(|t| files.contains(&format!("{t}.json"))))
        .then_some(())
    })
    .await;
}
