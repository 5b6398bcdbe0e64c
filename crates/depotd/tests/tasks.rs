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
