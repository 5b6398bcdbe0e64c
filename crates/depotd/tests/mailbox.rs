//! `Volume.requestExtend`'s refusals on a LOCALFS pool (no root needed):
//! each with its stable code, nothing asked and nothing changed. The
//! extend itself, through the real `inbox`/`outbox` LVs, is in the VM tier
//! (vm_mailbox.rs); the mailbox's format and protocol are unit tests of
//! depot-storage (`mailbox::`).

mod common;
mod storage_common;

use common::Daemon;
use serde_json::json;
use storage_common::*;

#[tokio::test]
async fn request_extend_refuses_what_it_cannot_extend() {
    let d = Daemon::start(&format!("{CONFIG}[sanlock]\nenabled = false\n"));
    let c = d.client().await;
    let data = tempfile::tempdir().unwrap();
    let conn = ConnectionSpec::local(&data.path().canonicalize().unwrap());
    let conn_id = new_id();
    call_ok(
        &c,
        "StoragePool.connectStorageServer",
        connect_params(LOCALFS, vec![conn.params(&conn_id)]),
    )
    .await;
    let sd = new_id();
    call_ok(
        &c,
        "StorageDomain.create",
        create_domain_params(&sd, LOCALFS, &conn.connection, "mailbox", 512),
    )
    .await;
    let (img, vol) = (new_id(), new_id());
    call_ok(
        &c,
        "Volume.create",
        volume_params(&sd, &img, &vol, 64 * MIB, "COW", "SPARSE", "thin", None),
    )
    .await;
    let sp = new_id();
    let req = |sp: &str, sd: &str, size: &str| {
        json!({"storagepoolID": sp, "storagedomainID": sd, "imageID": img,
               "volumeID": vol, "newSize": size})
    };
    // A pool this host does not know.
    call_err(&c, "Volume.requestExtend", req(&sp, &sd, "1073741824"), 309).await;
    call_ok(
        &c,
        "StoragePool.create",
        json!({"storagepoolID": sp, "name": "mailbox", "masterSdUUID": sd,
               "masterVersion": 1, "domainList": [sd]}),
    )
    .await;
    // Known, not connected.
    call_err(&c, "Volume.requestExtend", req(&sp, &sd, "1073741824"), 313).await;
    call_ok(
        &c,
        "StoragePool.connect",
        json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp, "masterSdUUID": sd,
               "masterVersion": 1, "domainDict": {sd.clone(): "active"}}),
    )
    .await;
    // A domain not in the pool.
    call_err(
        &c,
        "Volume.requestExtend",
        req(&sp, &new_id(), "1073741824"),
        353,
    )
    .await;
    // A file domain's volumes are files: nothing to extend.
    let e = call_err(&c, "Volume.requestExtend", req(&sp, &sd, "1073741824"), 206).await;
    assert!(e.contains("file domain"), "{e}");
    // Bad sizes and ids are refused at the edge.
    call_err(&c, "Volume.requestExtend", req(&sp, &sd, "-1"), -32602).await;
    call_err(&c, "Volume.requestExtend", req(&sp, "../x", "1"), -32602).await;
    call_ok(
        &c,
        "StoragePool.disconnect",
        json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp}),
    )
    .await;
}
