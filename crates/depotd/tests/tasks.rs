//! VDSM's task verbs over the SPM verbs' task ids.

mod common;
mod storage_common;

use common::{eventually, Daemon, WAIT};
use serde_json::json;
use storage_common::*;

#[tokio::test]
async fn spm_task_ids_have_vdsm_statuses() {
    let storage = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let d = Daemon::start(CONFIG);
    let c = d.client().await;
    let (mut sds, mut doms) = (Vec::new(), Vec::new());
    for dir in [storage.path(), other.path()] {
        let conn = ConnectionSpec::local(dir);
        let st = call_ok(
            &c,
            "StoragePool.connectStorageServer",
            connect_params(LOCALFS, vec![conn.params(&new_id())]),
        )
        .await;
        assert_eq!(st[0]["status"], 0);
        let sd = new_id();
        call_ok(
            &c,
            "StorageDomain.create",
            create_domain_params(&sd, LOCALFS, &conn.connection, "t", 512),
        )
        .await;
        doms.push(mount_point(&d, LOCALFS, &conn.connection).join(&sd));
        sds.push(sd);
    }
    let (img, vol) = (new_id(), new_id());
    let task = call_ok(
        &c,
        "Volume.create",
        volume_params(&sds[0], &img, &vol, 8 * MIB, "RAW", "SPARSE", "d", None),
    )
    .await;
    let task = task.as_str().expect("a task id").to_string();
    // Data for the move to carry: a pattern over the whole volume.
    let data: Vec<u8> = (0..8 * MIB as usize)
        .map(|i| ((i as u64 * 2_654_435_761) >> 13) as u8)
        .collect();
    let src = Vol::in_domain(&sds[0], &doms[0], &img, &vol);
    std::fs::write(&src.path, &data).unwrap();
    let status = call_ok(&c, "Task.getStatus", json!({"taskID": task})).await;
    assert_eq!(status["taskState"], "finished", "{status}");
    assert_eq!(status["taskResult"], "success", "{status}");
    assert_eq!(status["code"], 0);
    let all = call_ok(&c, "Host.getAllTasksStatuses", json!({})).await;
    assert_eq!(all[&task]["taskResult"], "success", "{all}");
    // VDSM's verb names, which the engine reads from Host.getAllTasksInfo.
    let info = call_ok(&c, "Task.getInfo", json!({"taskID": task})).await;
    assert_eq!(info, json!({"id": task, "verb": "createVolume"}));
    let infos = call_ok(&c, "Host.getAllTasksInfo", json!({})).await;
    assert_eq!(infos[&task]["verb"], "createVolume", "{infos}");
    call_ok(&c, "Task.clear", json!({"taskID": task})).await;
    call_err(&c, "Task.getStatus", json!({"taskID": task}), 401).await;
    call_err(&c, "Task.clear", json!({"taskID": new_id()}), 401).await;

    // Image.move's id is a job's: running, then finished/success.
    let moved = call_ok(
        &c,
        "Image.move",
        json!({"imageID": img, "storagepoolID": BLANK, "storagedomainID": sds[0], "dstSdUUID": sds[1],
            "operation": "MOVE", "postZero": false, "force": false}),
    )
    .await;
    let moved = moved.as_str().unwrap().to_string();
    let done = eventually("the move task to finish", WAIT, || async {
        let s = c
            .call("Task.getStatus", json!({"taskID": moved}))
            .await
            .ok()?;
        (s["taskState"] == "finished").then_some(s)
    })
    .await;
    assert_eq!(done["taskResult"], "success", "{done}");
    // What "success" means: the data is on the destination, under the same
    // ids and LEGAL, and the source image is gone.
    let dst = Vol::in_domain(&sds[1], &doms[1], &img, &vol);
    let moved_data = std::fs::read(&dst.path).unwrap();
    assert!(
        moved_data == data,
        "the destination's data is not the source's"
    );
    let md = volume_md(&dst.path.with_extension("meta"));
    assert_eq!(md["LEGALITY"], "LEGAL", "{md:?}");
    assert_eq!(md["DOMAIN"], sds[1], "{md:?}");
    assert!(!src.path.exists(), "MOVE left the source volume");
    assert!(!doms[0].join("images").join(&img).exists());
    assert!(list_images(&c, &sds[1]).await.contains(&img));
    let info = call_ok(&c, "Task.getInfo", json!({"taskID": moved})).await;
    assert_eq!(info["verb"], "moveImage", "{info}");
    // A failing move (same domain twice) ends as cleanFailure with its code.
    let bad = call_ok(
        &c,
        "Image.move",
        json!({"imageID": img, "storagedomainID": sds[1], "dstSdUUID": sds[1], "operation": 2,
            "postZero": false, "force": false}),
    )
    .await;
    let bad = bad.as_str().unwrap().to_string();
    let failed = eventually("the bad move to fail", WAIT, || async {
        let s = c
            .call("Task.getStatus", json!({"taskID": bad}))
            .await
            .ok()?;
        (s["taskState"] == "finished").then_some(s)
    })
    .await;
    assert_eq!(failed["taskResult"], "cleanFailure", "{failed}");
    assert_eq!(failed["code"], 1000, "{failed}");
}

// ---------------------------------------------------------------------------
// SPM tasks persisted (issue 16): restart, crash, clear, bound, bad files
// ---------------------------------------------------------------------------

/// A depotd with one LOCALFS domain attached to no pool.
struct One {
    d: Daemon,
    c: depot_client::Client,
    _storage: tempfile::TempDir,
    conn: ConnectionSpec,
    conn_id: String,
    sd: String,
    dom: std::path::PathBuf,
}

impl One {
    async fn new(config: &str) -> One {
        One::with_env(config, &[]).await
    }

    async fn with_env(config: &str, env: &[(&str, &str)]) -> One {
        let storage = tempfile::tempdir().unwrap();
        let d = Daemon::start_with_env(config, env);
        let c = d.client().await;
        let conn = ConnectionSpec::local(storage.path());
        let conn_id = new_id();
        let mut one = One {
            d,
            c,
            _storage: storage,
            conn,
            conn_id,
            sd: new_id(),
            dom: std::path::PathBuf::new(),
        };
        one.connect().await;
        call_ok(
            &one.c,
            "StorageDomain.create",
            create_domain_params(&one.sd, LOCALFS, &one.conn.connection, "t", 512),
        )
        .await;
        one.dom = mount_point(&one.d, LOCALFS, &one.conn.connection).join(&one.sd);
        one
    }

    async fn connect(&mut self) {
        self.c = self.d.client().await;
        let st = call_ok(
            &self.c,
            "StoragePool.connectStorageServer",
            connect_params(LOCALFS, vec![self.conn.params(&self.conn_id)]),
        )
        .await;
        assert_eq!(statuses(&st), vec![0]);
    }

    /// Volume.create of a new 1 MiB RAW volume in a new image: its task id
    /// and the volume's (img, vol).
    async fn create(&self) -> (String, String, String) {
        let (img, vol) = (new_id(), new_id());
        let t = call_ok(
            &self.c,
            "Volume.create",
            volume_params(&self.sd, &img, &vol, MIB, "RAW", "SPARSE", "t", None),
        )
        .await;
        (t.as_str().expect("a task id").to_string(), img, vol)
    }

    fn task_file(&self, id: &str) -> std::path::PathBuf {
        self.d.state_dir().join("tasks").join(format!("{id}.json"))
    }

    fn task_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.d.state_dir().join("tasks"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Everything the task verbs answer about `ids`, and the two lists.
    async fn answers(&self, ids: &[&str]) -> serde_json::Value {
        let mut each = serde_json::Map::new();
        for id in ids {
            let s = call_ok(&self.c, "Task.getStatus", json!({"taskID": id})).await;
            let i = call_ok(&self.c, "Task.getInfo", json!({"taskID": id})).await;
            each.insert(id.to_string(), json!({"status": s, "info": i}));
        }
        json!({
            "each": each,
            "all": call_ok(&self.c, "Host.getAllTasksStatuses", json!({})).await,
            "all_info": call_ok(&self.c, "Host.getAllTasksInfo", json!({})).await,
        })
    }
}

/// The born-finished tasks of the SPM verbs answer the same after a
/// restart and after a kill -9 right after the verb answered; Task.clear
/// removes one for good (another restart: 401).
#[tokio::test]
async fn born_finished_tasks_survive_restart_and_crash() {
    let mut o = One::new(CONFIG).await;
    let (created, img, vol) = o.create().await;
    let (created2, img2, vol2) = o.create().await;
    let extended = call_ok(
        &o.c,
        "Volume.extendSize",
        json!({"storagepoolID": BLANK, "storagedomainID": o.sd, "imageID": img,
            "volumeID": vol, "newSize": (2 * MIB).to_string()}),
    )
    .await;
    let extended = extended.as_str().unwrap().to_string();
    let ids = [created.as_str(), created2.as_str(), extended.as_str()];
    let before = o.answers(&ids).await;
    assert_eq!(before["each"][&created]["status"]["taskResult"], "success");
    assert_eq!(before["each"][&created]["info"]["verb"], "createVolume");
    assert_eq!(
        before["each"][&extended]["info"]["verb"],
        "extendVolumeSize"
    );
    for id in ids {
        assert!(o.task_file(id).exists(), "{id} has no task file");
    }

    // A clean restart.
    o.d.stop();
    o.d.restart();
    o.connect().await;
    let after = o.answers(&ids).await;
    assert_eq!(
        after, before,
        "the task verbs answer the same after a restart"
    );

    // A crash right after the verb answered.
    let deleted = call_ok(
        &o.c,
        "Volume.delete",
        json!({"storagepoolID": BLANK, "storagedomainID": o.sd, "imageID": img2,
            "volumeID": vol2, "postZero": false, "force": false}),
    )
    .await;
    let deleted = deleted.as_str().unwrap().to_string();
    o.d.crash();
    o.d.restart();
    o.connect().await;
    let s = call_ok(&o.c, "Task.getStatus", json!({"taskID": deleted})).await;
    assert_eq!(
        s,
        json!({"taskID": deleted, "taskState": "finished", "taskResult": "success",
            "code": 0, "message": "1 jobs completed successfully"})
    );
    let info = call_ok(&o.c, "Task.getInfo", json!({"taskID": deleted})).await;
    assert_eq!(info, json!({"id": deleted, "verb": "deleteVolume"}));
    let after = o.answers(&ids).await;
    assert_eq!(after["each"], before["each"], "after a crash");
    let all = call_ok(&o.c, "Host.getAllTasksStatuses", json!({})).await;
    assert_eq!(all[&deleted]["taskResult"], "success", "{all}");

    // Task.clear removes it for good.
    call_ok(&o.c, "Task.clear", json!({"taskID": created})).await;
    assert!(!o.task_file(&created).exists());
    o.d.stop();
    o.d.restart();
    o.connect().await;
    call_err(&o.c, "Task.getStatus", json!({"taskID": created}), 401).await;
    call_err(&o.c, "Task.getInfo", json!({"taskID": created}), 401).await;
    call_err(&o.c, "Task.clear", json!({"taskID": created}), 401).await;
    let all = call_ok(&o.c, "Host.getAllTasksInfo", json!({})).await;
    assert!(all.get(&created).is_none(), "{all}");
    for kept in [&created2, &extended, &deleted] {
        assert!(all.get(kept).is_some(), "{kept} lost: {all}");
    }
}

/// `tasks.max_finished` bounds the SPM verbs' tasks on disk too: the
/// oldest go, file and all, and a restart does not bring them back.
#[tokio::test]
async fn the_bound_holds_for_spm_tasks_across_a_restart() {
    let mut o = One::new(&format!("{CONFIG}[tasks]\nmax_finished = 2\n")).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(o.create().await.0);
    }
    call_err(&o.c, "Task.getStatus", json!({"taskID": ids[0]}), 401).await;
    assert!(!o.task_file(&ids[0]).exists());
    let mut kept: Vec<String> = ids[1..].iter().map(|i| format!("{i}.json")).collect();
    kept.sort();
    assert_eq!(o.task_files(), kept);
    o.d.stop();
    o.d.restart();
    o.connect().await;
    call_err(&o.c, "Task.getStatus", json!({"taskID": ids[0]}), 401).await;
    for id in &ids[1..] {
        let s = call_ok(&o.c, "Task.getStatus", json!({"taskID": id})).await;
        assert_eq!(s["taskResult"], "success", "{s}");
    }
    let all = call_ok(&o.c, "Host.getAllTasksStatuses", json!({})).await;
    assert_eq!(all.as_object().unwrap().len(), 2, "{all}");
}

/// A task file a newer depot wrote, and one that does not parse, are set
/// aside at start with a log line saying why; the other tasks load and the
/// daemon works.
#[tokio::test]
async fn a_newer_or_corrupt_task_file_is_set_aside_at_start() {
    let mut o = One::new(CONFIG).await;
    let (good, _, _) = o.create().await;
    o.d.stop();
    let text = std::fs::read_to_string(o.task_file(&good)).unwrap();
    assert!(text.contains("\"format\": 2"), "{text}");
    let newer = new_id();
    std::fs::write(
        o.task_file(&newer),
        text.replace("\"format\": 2", "\"format\": 3")
            .replace(&good, &newer),
    )
    .unwrap();
    let torn = new_id();
    std::fs::write(o.task_file(&torn), &text[..text.len() / 2]).unwrap();
    o.d.restart();
    o.connect().await;
    let log = o.d.log();
    assert!(
        log.contains("unreadable task file, moving it aside")
            && log.contains("unsupported format 3 (newer than this depotd's 2)"),
        "{log}"
    );
    assert!(log.contains("1 loaded, 0 interrupted, 2 corrupt"), "{log}");
    for bad in [&newer, &torn] {
        call_err(&o.c, "Task.getStatus", json!({"taskID": bad}), 401).await;
        let aside = o.task_file(bad).with_extension("json.corrupt");
        assert!(aside.exists(), "{} not kept", aside.display());
    }
    let s = call_ok(&o.c, "Task.getStatus", json!({"taskID": good})).await;
    assert_eq!(s["taskResult"], "success", "{s}");
    let (again, _, _) = o.create().await;
    let all = call_ok(&o.c, "Host.getAllTasksStatuses", json!({})).await;
    assert_eq!(
        all.as_object().unwrap().keys().cloned().collect::<Vec<_>>(),
        {
            let mut v = vec![good.clone(), again.clone()];
            v.sort();
            v
        },
        "{all}"
    );
}

/// A `qemu-img` first in depotd's PATH that holds the call whose
/// arguments match a shell pattern (`sleep` in its place, its pid written
/// to a file) and passes every other call to the real program: a verb or
/// job held at a known step, for a kill -9 there.
struct HeldQemuImg {
    dir: tempfile::TempDir,
}

impl HeldQemuImg {
    fn new(pattern: &str) -> HeldQemuImg {
        let dir = tempfile::tempdir().unwrap();
        let started = dir.path().join("started");
        let script = format!(
            "#!/bin/sh\ncase \"$*\" in\n  {pattern})\n    echo $$ > {started}.tmp && mv {started}.tmp {started}\n    exec sleep 60 ;;\nesac\nexec {real} \"$@\"\n",
            started = started.display(),
            real = which_qemu_img().display(),
        );
        let path = dir.path().join("qemu-img");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        HeldQemuImg { dir }
    }

    /// depotd's PATH.
    fn search_path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// Waits until the held call has started; its pid.
    async fn held(&self) -> i32 {
        let started = self.dir.path().join("started");
        eventually("the qemu-img call to be held", WAIT, || async {
            let text = std::fs::read_to_string(&started).ok()?;
            text.trim().parse::<i32>().ok()
        })
        .await
    }
}

fn kill_held(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// An Image.move cut by a crash (its `qemu-img convert` held, then kill
/// -9): its task reports running before; after the restart it is
/// finished/cleanFailure with 9001 (move_image does not resume,
/// docs/copy.md), verb moveImage, through Task.getStatus and the lists;
/// the source is untouched and the destination volume stays ILLEGAL.
#[tokio::test]
async fn an_image_move_task_reports_across_a_crash() {
    let held = HeldQemuImg::new("convert*");
    let mut o = One::with_env(CONFIG, &[("PATH", &held.search_path())]).await;
    let dst_sd = new_id();
    call_ok(
        &o.c,
        "StorageDomain.create",
        create_domain_params(&dst_sd, LOCALFS, &o.conn.connection, "dst", 512),
    )
    .await;
    let dst_dom = mount_point(&o.d, LOCALFS, &o.conn.connection).join(&dst_sd);
    let (img, vol) = (new_id(), new_id());
    call_ok(
        &o.c,
        "Volume.create",
        volume_params(&o.sd, &img, &vol, 64 * MIB, "COW", "SPARSE", "m", None),
    )
    .await;
    let src = Vol::in_domain(&o.sd, &o.dom, &img, &vol);
    let data = std::fs::read(&src.path).unwrap();
    let moved = call_ok(
        &o.c,
        "Image.move",
        json!({"imageID": img, "storagepoolID": BLANK, "storagedomainID": o.sd,
            "dstSdUUID": dst_sd, "operation": "MOVE", "postZero": false, "force": false}),
    )
    .await;
    let moved = moved.as_str().unwrap().to_string();
    let pid = held.held().await;
    let s = call_ok(&o.c, "Task.getStatus", json!({"taskID": moved})).await;
    assert_eq!(
        (&s["taskState"], &s["taskResult"]),
        (&json!("running"), &json!("")),
        "{s}"
    );
    o.d.crash();
    kill_held(pid);
    o.d.restart();
    o.connect().await;
    let c = &o.c;
    let done = eventually("the move task to finish", WAIT, || async {
        let s = c
            .call("Task.getStatus", json!({"taskID": moved}))
            .await
            .ok()?;
        (s["taskState"] == "finished").then_some(s)
    })
    .await;
    assert_eq!(
        (&done["taskResult"], &done["code"]),
        (&json!("cleanFailure"), &json!(9001)),
        "{done}"
    );
    let info = call_ok(c, "Task.getInfo", json!({"taskID": moved})).await;
    assert_eq!(info, json!({"id": moved, "verb": "moveImage"}));
    let all = call_ok(c, "Host.getAllTasksStatuses", json!({})).await;
    assert_eq!(all[&moved], done, "{all}");
    // Nothing claims success: the source is as it was, the destination
    // volume ILLEGAL.
    assert!(
        std::fs::read(&src.path).unwrap() == data,
        "the source changed"
    );
    let md = volume_md(&src.path.with_extension("meta"));
    assert_eq!(md["LEGALITY"], "LEGAL", "{md:?}");
    let dst = Vol::in_domain(&dst_sd, &dst_dom, &img, &vol);
    let md = volume_md(&dst.path.with_extension("meta"));
    assert_eq!(md["LEGALITY"], "ILLEGAL", "{md:?}");
    call_ok(c, "Task.clear", json!({"taskID": moved})).await;
    call_err(c, "Task.getStatus", json!({"taskID": moved}), 401).await;
}

/// A Volume.create cut by a crash before it answered (qemu-img create
/// held until the kill) is rolled back by the crash recovery (its
/// `.creating` marker) and leaves no task claiming success.
#[tokio::test]
async fn a_create_cut_by_a_crash_is_rolled_back_with_no_task() {
    let block = new_id();
    let held = HeldQemuImg::new(&format!("create*{block}*"));
    let mut o = One::with_env(CONFIG, &[("PATH", &held.search_path())]).await;
    let (before, _, _) = o.create().await;
    let img = new_id();
    let params = volume_params(&o.sd, &img, &block, 64 * MIB, "COW", "SPARSE", "cut", None);
    let c2 = o.d.client().await;
    let call = tokio::spawn(async move { c2.call("Volume.create", params).await });
    let pid = held.held().await;
    let image_dir = o.dom.join("images").join(&img);
    assert!(image_dir.join(format!("{block}.creating")).exists());
    o.d.crash();
    kill_held(pid);
    let answer = call.await.unwrap();
    assert!(answer.is_err(), "the create answered: {answer:?}");
    assert_eq!(o.task_files(), vec![format!("{before}.json")]);

    o.d.restart();
    o.connect().await;
    eventually("the half volume to be removed", WAIT, || async {
        (!image_dir.join(format!("{block}.creating")).exists()
            && !image_dir.join(format!("{block}.meta")).exists())
        .then_some(())
    })
    .await;
    call_err(&o.c, "Volume.getInfo", vol_ref(&o.sd, &img, &block), 201).await;
    let all = call_ok(&o.c, "Host.getAllTasksInfo", json!({})).await;
    assert_eq!(
        all,
        json!({before.clone(): {"id": before, "verb": "createVolume"}}),
        "only the task of the create that answered"
    );
    assert!(o
        .d
        .log()
        .contains(&format!("half-created volume {img}/{block}")));
}

fn which_qemu_img() -> std::path::PathBuf {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| std::path::Path::new(d).join("qemu-img"))
        .find(|p| p.is_file())
        .expect("qemu-img in PATH")
}

/// VDSM's rule for the lists (sp.py lists a pool's tasks only on its SPM,
/// hsm.py answers 654 elsewhere): a pool's tasks are listed while this
/// host is its SPM, the lists are 654 while a pool is connected here and
/// this host is not its SPM, and spmStart is not listed (VDSM's is an
/// "hsm" task). By id a task answers on a host that knows it, after
/// spmStop and after a restart too. Tasks of a domain in no pool are
/// depot's single-host use: listed unless another pool's SPM is elsewhere.
#[tokio::test]
async fn a_pools_tasks_are_listed_by_its_spm_only() {
    let mut o = One::new(CONFIG).await;
    let master = new_id();
    call_ok(
        &o.c,
        "StorageDomain.create",
        create_domain_params(&master, LOCALFS, &o.conn.connection, "master", 512),
    )
    .await;
    let sp = new_id();
    call_ok(
        &o.c,
        "StoragePool.create",
        json!({"storagepoolID": sp, "name": "tasks", "masterSdUUID": master,
            "masterVersion": 1, "domainList": [master]}),
    )
    .await;
    let connect = json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp,
        "masterSdUUID": master, "masterVersion": 1, "domainDict": {master.clone(): "active"}});
    let (free, _, _) = o.create().await;
    let all = call_ok(&o.c, "Host.getAllTasksInfo", json!({})).await;
    assert_eq!(all.as_object().unwrap().len(), 1, "{all}");
    call_ok(&o.c, "StoragePool.connect", connect.clone()).await;
    call_err(&o.c, "Host.getAllTasksStatuses", json!({}), 654).await;
    call_err(&o.c, "Host.getAllTasksInfo", json!({}), 654).await;

    start_spm(&o.c, &sp).await;
    let pooled = pooled_volume(&o.c, &master, &sp).await;
    let text = std::fs::read_to_string(o.task_file(&pooled)).unwrap();
    assert!(text.contains(&format!("\"pool\": \"{sp}\"")), "{text}");
    let listed = |all: &serde_json::Value| {
        let mut ids: Vec<String> = all.as_object().unwrap().keys().cloned().collect();
        ids.sort();
        ids
    };
    let both = {
        let mut v = vec![free.clone(), pooled.clone()];
        v.sort();
        v
    };
    let all = call_ok(&o.c, "Host.getAllTasksInfo", json!({})).await;
    assert_eq!(listed(&all), both, "spmStart is no SPM task: {all}");
    let statuses = call_ok(&o.c, "Host.getAllTasksStatuses", json!({})).await;
    assert_eq!(listed(&statuses), both, "{statuses}");

    // spmStop: the lists are refused, the task still answers by id.
    call_ok(&o.c, "StoragePool.spmStop", json!({"storagepoolID": sp})).await;
    call_err(&o.c, "Host.getAllTasksStatuses", json!({}), 654).await;
    let s = call_ok(&o.c, "Task.getStatus", json!({"taskID": pooled})).await;
    assert_eq!(s["taskResult"], "success", "{s}");

    // A restart forgets the pool (the engine connects it again): the
    // pool's task is not listed until this host is its SPM again.
    o.d.stop();
    o.d.restart();
    o.connect().await;
    let all = call_ok(&o.c, "Host.getAllTasksInfo", json!({})).await;
    assert_eq!(listed(&all), vec![free.clone()], "{all}");
    let s = call_ok(&o.c, "Task.getStatus", json!({"taskID": pooled})).await;
    assert_eq!(s["taskResult"], "success", "{s}");
    call_ok(&o.c, "StoragePool.connect", connect).await;
    call_err(&o.c, "Host.getAllTasksInfo", json!({}), 654).await;
    start_spm(&o.c, &sp).await;
    let all = call_ok(&o.c, "Host.getAllTasksInfo", json!({})).await;
    assert_eq!(listed(&all), both, "{all}");
    assert_eq!(all[&pooled]["verb"], "createVolume", "{all}");
}

/// The master domain's copy of a pool's SPM tasks (issue 16), on one host
/// without sanlock (the two-host case with the real daemon is
/// two_hosts.rs): the SPM writes each task to `master/tasks/<id>.json`;
/// a host that does not know a task there (here: this host with its own
/// record removed, as a host that never saw it) loads it at spmStart, not
/// before; a running record is recovered failed with 9001, a corrupt one
/// is moved aside and a newer depot's left alone; Task.clear on the SPM
/// removes the master's copy.
#[tokio::test]
async fn spm_start_loads_the_master_domains_tasks() {
    let mut o = One::new(CONFIG).await;
    let master = new_id();
    call_ok(
        &o.c,
        "StorageDomain.create",
        create_domain_params(&master, LOCALFS, &o.conn.connection, "master", 512),
    )
    .await;
    let master_dir = mount_point(&o.d, LOCALFS, &o.conn.connection).join(&master);
    let sp = new_id();
    call_ok(
        &o.c,
        "StoragePool.create",
        json!({"storagepoolID": sp, "name": "tasks", "masterSdUUID": master,
            "masterVersion": 1, "domainList": [master]}),
    )
    .await;
    let connect = json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp,
        "masterSdUUID": master, "masterVersion": 1, "domainDict": {master.clone(): "active"}});
    call_ok(&o.c, "StoragePool.connect", connect.clone()).await;
    start_spm(&o.c, &sp).await;
    let t = pooled_volume(&o.c, &master, &sp).await;
    let tasks_dir = master_dir.join("master").join("tasks");
    let on_master = |id: &str| tasks_dir.join(format!("{id}.json"));
    let text = std::fs::read_to_string(on_master(&t)).expect("the task on the master");
    assert_eq!(
        text,
        std::fs::read_to_string(o.task_file(&t)).unwrap(),
        "the master's copy is the host's record"
    );
    call_ok(&o.c, "StoragePool.spmStop", json!({"storagepoolID": sp})).await;

    // Another host's view: this host's record of T gone; and files on
    // the master another SPM left.
    o.d.stop();
    std::fs::remove_file(o.task_file(&t)).unwrap();
    let (running, corrupt, newer) = (new_id(), new_id(), new_id());
    std::fs::write(
        on_master(&running),
        text.replace(&t, &running)
            .replace("\"state\": \"finished\"", "\"state\": \"running\""),
    )
    .unwrap();
    std::fs::write(on_master(&corrupt), "{\"format\": 2,").unwrap();
    let newer_text = text
        .replace(&t, &newer)
        .replace("\"format\": 2", "\"format\": 3");
    std::fs::write(on_master(&newer), &newer_text).unwrap();
    o.d.restart();
    o.connect().await;
    call_ok(&o.c, "StoragePool.connect", connect).await;
    call_err(&o.c, "Task.getStatus", json!({"taskID": t}), 401).await;

    start_spm(&o.c, &sp).await;
    let all = call_ok(&o.c, "Host.getAllTasksStatuses", json!({})).await;
    assert_eq!(
        all[&t],
        json!({"taskID": t, "taskState": "finished", "taskResult": "success",
            "code": 0, "message": "1 jobs completed successfully"}),
        "{all}"
    );
    assert_eq!(
        (
            &all[&running]["taskResult"],
            &all[&running]["code"],
            &all[&running]["taskState"]
        ),
        (&json!("cleanFailure"), &json!(9001), &json!("finished")),
        "{all}"
    );
    assert!(
        all.get(&newer).is_none() && all.get(&corrupt).is_none(),
        "{all}"
    );
    // Taken into this host's store (a restart keeps it).
    assert!(o.task_file(&t).is_file());
    let recovered = std::fs::read_to_string(on_master(&running)).unwrap();
    assert!(recovered.contains("\"code\": 9001"), "{recovered}");
    assert!(!on_master(&corrupt).exists());
    assert!(tasks_dir.join(format!("{corrupt}.json.corrupt")).is_file());
    assert_eq!(
        std::fs::read_to_string(on_master(&newer)).unwrap(),
        newer_text
    );

    call_ok(&o.c, "Task.clear", json!({"taskID": t})).await;
    assert!(!on_master(&t).exists());
    assert!(!o.task_file(&t).exists());
    call_err(&o.c, "Task.getStatus", json!({"taskID": t}), 401).await;
}

/// A 1 MiB raw volume created on `master` through pool `sp` (an SPM
/// verb with a pool: its task goes to the master too); its task id.
async fn pooled_volume(c: &depot_client::Client, master: &str, sp: &str) -> String {
    let mut p = volume_params(
        master,
        &new_id(),
        &new_id(),
        MIB,
        "RAW",
        "SPARSE",
        "p",
        None,
    );
    p["storagepoolID"] = json!(sp);
    let t = call_ok(c, "Volume.create", p).await;
    t.as_str().unwrap().to_string()
}
