//! depot's storage events (issue 13) reach a WebSocket subscriber as
//! notifications with the params docs/protocol.md documents: a monitored
//! domain that becomes invalid and valid again, an OVF_STORE written, a
//! connection lost (a LOCALFS directory removed; in the root tier a
//! POSIXFS mount unmounted behind depotd's back).

mod common;
mod ovf_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use common::{Daemon, WAIT};
use depot_client::WsClient;
use ovf_common::*;
use serde_json::{json, Value};
use storage_common::*;

/// The next event whose name starts with `prefix` (others are skipped);
/// its name and params.
async fn next(ws: &WsClient, prefix: &str) -> (String, Value) {
    let deadline = std::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match ws.next_event(left).await {
            Some((name, params)) if name.starts_with(prefix) => return (name, params),
            Some((name, _)) => seen.push(name),
            None => panic!("no {prefix} event within {WAIT:?}; seen {seen:?}"),
        }
    }
}

fn assert_time(params: &Value) {
    assert!(params["notify_time"].as_u64().is_some(), "{params}");
}

/// A monitored LOCALFS domain whose metadata goes away and comes back:
/// `|storage|domain_state|<sd>` with valid false and code 2001, then valid
/// true and code 0.
#[tokio::test]
async fn domain_state_changes_are_events() {
    let storage = tempfile::tempdir().unwrap();
    let d = Daemon::start(CONFIG);
    let ws = d.ws().await;
    ws.subscribe(&["|storage|"]).await.unwrap();
    let dom = Domain::create(&d, LOCALFS, ConnectionSpec::local(storage.path()), 512).await;
    let sp = new_id();
    call_ok(
        &dom.c,
        "StoragePool.create",
        json!({"storagepoolID": sp, "name": "dc", "masterSdUUID": dom.sd, "masterVersion": 1}),
    )
    .await;
    call_ok(
        &dom.c,
        "StoragePool.connect",
        json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp, "masterSdUUID": dom.sd,
            "masterVersion": 1, "domainDict": {dom.sd.clone(): "active"}}),
    )
    .await;
    // Monitored and healthy first.
    common::eventually("a healthy check", WAIT, || async {
        let s = dom
            .c
            .call("Host.getStorageRepoStats", json!({}))
            .await
            .ok()?;
        (s[&dom.sd]["actual"] == true && s[&dom.sd]["valid"] == true).then_some(())
    })
    .await;

    let md = dom.dom.join("dom_md/metadata");
    let away = dom.dom.join("dom_md/metadata.away");
    std::fs::rename(&md, &away).unwrap();
    let (name, p) = next(&ws, "|storage|domain_state|").await;
    assert_eq!(name, format!("|storage|domain_state|{}", dom.sd));
    assert_eq!(
        (
            &p["sd_id"],
            &p["valid"],
            &p["code"],
            &p["previous_valid"],
            &p["previous_code"]
        ),
        (
            &json!(dom.sd),
            &json!(false),
            &json!(2001),
            &json!(true),
            &json!(0)
        ),
        "{p}"
    );
    assert!(p["message"].as_str().unwrap().contains("metadata"), "{p}");
    assert_time(&p);

    std::fs::rename(&away, &md).unwrap();
    let (name, p) = next(&ws, "|storage|domain_state|").await;
    assert_eq!(name, format!("|storage|domain_state|{}", dom.sd));
    assert_eq!(
        (
            &p["valid"],
            &p["code"],
            &p["message"],
            &p["previous_valid"],
            &p["previous_code"]
        ),
        (
            &json!(true),
            &json!(0),
            &json!(""),
            &json!(false),
            &json!(2001)
        ),
        "{p}"
    );
}

/// An upload: `|storage|ovf_store_written|<sd>` with the store's ids, its
/// generation and the archive's size.
#[tokio::test]
async fn an_ovf_store_written_is_an_event() {
    let storage = tempfile::tempdir().unwrap();
    let d = Daemon::start(CONFIG);
    let ws = d.ws().await;
    ws.subscribe(&["|storage|ovf_store_written|"])
        .await
        .unwrap();
    let dom = Domain::create(&d, LOCALFS, ConnectionSpec::local(storage.path()), 512).await;
    let store = dom.create_store().await;
    let tar = engine_tar(&dom.sd, &[Entity::vm("vm", &[])], &[]);
    let via = Via::unix(&d);
    for generation in [1, 2] {
        put_ok(&via, &store, &tar).await;
        let (name, p) = next(&ws, "|storage|").await;
        assert_eq!(name, format!("|storage|ovf_store_written|{}", dom.sd));
        assert_eq!(
            p,
            json!({"sd_id": dom.sd, "img_id": store.img, "vol_id": store.vol,
                "generation": generation, "size": tar.len(), "notify_time": p["notify_time"]}),
        );
        assert_time(&p);
    }
    // A refused upload writes nothing and tells nothing.
    let bad = put(&via, &store.ids(), &vec![b'x'; 4096]).await;
    assert_eq!(bad.status, 400, "{}", bad.show());
    assert!(ws.next_event(Duration::from_millis(500)).await.is_none());
}

/// A LOCALFS connection whose directory is removed:
/// `|storage|connection_lost|<connection id>`, once.
#[tokio::test]
async fn a_lost_localfs_connection_is_an_event() {
    let data = tempfile::tempdir().unwrap();
    let local = data.path().join("domain");
    std::fs::create_dir(&local).unwrap();
    let d = Daemon::start(CONFIG);
    let ws = d.ws().await;
    ws.subscribe(&["|storage|connection_lost|"]).await.unwrap();
    let c = d.client().await;
    let id = new_id();
    let conn = ConnectionSpec::local(&local);
    let st = call_ok(
        &c,
        "StoragePool.connectStorageServer",
        connect_params(LOCALFS, vec![conn.params(&id)]),
    )
    .await;
    assert_eq!(statuses(&st), vec![0]);

    std::fs::rename(&local, data.path().join("moved")).unwrap();
    let (name, p) = next(&ws, "|storage|").await;
    assert_eq!(name, format!("|storage|connection_lost|{id}"));
    assert_eq!(
        (
            &p["id"],
            &p["domain_type"],
            &p["domain_type_number"],
            &p["connection"]
        ),
        (
            &json!(id),
            &json!("LOCALFS"),
            &json!(4),
            &json!(conn.connection)
        ),
        "{p}"
    );
    let link = mount_point(&d, LOCALFS, &conn.connection);
    assert_eq!(p["mount_point"], json!(link.to_str().unwrap()), "{p}");
    assert!(
        p["reason"].as_str().unwrap().contains("No such file"),
        "{p}"
    );
    assert_time(&p);
    // Once: still gone at the next checks, no second event.
    assert!(ws.next_event(Duration::from_millis(800)).await.is_none());
}

/// Root tier: a POSIXFS mount (ext4 on a loop device) unmounted behind
/// depotd's back.
#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn a_posixfs_mount_unmounted_behind_depots_back_is_an_event() {
    depot_testkit::require_root();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let d = Daemon::start(CONFIG);
        let fs = support::loopfs::LoopFs::new("ext4", 64 * MIB, None);
        let _mounts = UnmountGuard(d.dir.path().to_path_buf());
        let ws = d.ws().await;
        ws.subscribe(&["|storage|connection_lost|"]).await.unwrap();
        let c = d.client().await;
        let id = new_id();
        let conn = ConnectionSpec {
            connection: fs.dev.clone(),
            vfs_type: Some("ext4".into()),
            mnt_options: None,
            protocol_version: None,
        };
        let st = call_ok(
            &c,
            "StoragePool.connectStorageServer",
            connect_params(POSIXFS, vec![conn.params(&id)]),
        )
        .await;
        assert_eq!(statuses(&st), vec![0]);
        let mp = mount_point(&d, POSIXFS, &conn.connection);
        support::run("umount", &[mp.to_str().unwrap()], Duration::from_secs(60)).expect("umount");
        let (name, p) = next(&ws, "|storage|").await;
        assert_eq!(name, format!("|storage|connection_lost|{id}"));
        assert_eq!(
            (&p["domain_type"], &p["connection"], &p["mount_point"]),
            (
                &json!("POSIXFS"),
                &json!(conn.connection),
                &json!(mp.to_str().unwrap())
            ),
            "{p}"
        );
        assert!(
            p["reason"].as_str().unwrap().contains("nothing is mounted"),
            "{p}"
        );
        // Disconnecting it is still fine (nothing to unmount).
        let st = call_ok(
            &c,
            "StoragePool.disconnectStorageServer",
            connect_params(POSIXFS, vec![conn.params(&id)]),
        )
        .await;
        assert_eq!(statuses(&st), vec![0]);
    });
}
