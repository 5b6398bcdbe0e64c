//! Copies between a block domain (iSCSI, multipath, LVM) and an NFS v4.2
//! domain, both ways, in the VM tier (tests/vm/run); and a copy that keeps
//! going while one of the LUN's two paths goes down.

mod common;
mod copy_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use common::Daemon;
use copy_common::*;
use depot_client::Client;
use serde_json::json;
use storage_common::*;
use support::vm::{env, ok, run, Luns};

const ISCSI: i64 = 3;

/// A block domain on one LUN, made the engine's way.
async fn block_domain(c: &Client, d: &Daemon, wwid: &str) -> Dom {
    let sd = new_id();
    let vg = call_ok(
        c,
        "LVMVolumeGroup.create",
        json!({"name": sd, "devlist": [wwid]}),
    )
    .await;
    call_ok(
        c,
        "StorageDomain.create",
        create_domain_params(&sd, ISCSI, vg.as_str().unwrap(), "copy block", 512),
    )
    .await;
    Dom {
        domain_type: ISCSI,
        conn: ConnectionSpec {
            connection: String::new(),
            vfs_type: None,
            mnt_options: None,
            protocol_version: None,
        },
        conn_id: String::new(),
        sd: sd.clone(),
        dom: repository(d).join("mnt").join("blockSD").join(&sd),
    }
}

/// A RAW PREALLOCATED volume on the block domain, its LV active (getInfo
/// activates it and links it under the domain's directory).
async fn block_volume(c: &Client, dom: &Dom, size: u64) -> Vol {
    let (img, vol) = (new_id(), new_id());
    call_ok(
        c,
        "Volume.create",
        volume_params(
            &dom.sd,
            &img,
            &vol,
            size,
            "RAW",
            "PREALLOCATED",
            "copy",
            None,
        ),
    )
    .await;
    volume_info(c, &dom.sd, &img, &vol).await;
    let v = dom.vol(&img, &vol);
    assert!(v.path.exists(), "{}", v.path.display());
    v
}

async fn set_legal(c: &Client, v: &Vol) {
    call_ok(
        c,
        "Volume.setLegality",
        json!({"storagepoolID": BLANK, "storagedomainID": v.sd, "imageID": v.img,
               "volumeID": v.vol, "legality": "LEGAL"}),
    )
    .await;
}

/// A client with calls as slow as LVM under TCG on a loaded machine (seconds
/// per command). Made again after long local work: the daemon closes idle
/// connections.
async fn client(d: &Daemon) -> Client {
    let mut c = d.client().await;
    c.set_call_timeout(Duration::from_secs(600));
    c
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the vm tier (tests/vm/run)"]
async fn copies_between_block_and_nfs_both_ways_and_through_a_path_failure() {
    depot_testkit::require_vm();
    let luns = Luns::login();
    let d = Daemon::start(CONFIG);
    let c = client(&d).await;
    let block = block_domain(&c, &d, &luns.wwids[2]).await;
    let nfs = create_domain(
        &c,
        &d,
        NFS,
        ConnectionSpec {
            connection: env("DEPOT_VM_NFS_V4"),
            vfs_type: None,
            mnt_options: None,
            protocol_version: Some("4.2".into()),
        },
    )
    .await;

    // Block -> NFS.
    const SIZE: u64 = 32 * MIB;
    let src = block_volume(&c, &block, SIZE).await;
    write_random(&src.path, 0, SIZE, 7);
    let c = client(&d).await;
    set_legal(&c, &src).await;
    let mid = nfs.new_volume(&c, SIZE, "RAW", "SPARSE").await;
    let res = copy_ok(&c, &src, &mid, Some(0)).await;
    assert_same_bytes(&src.path, &mid.path, SIZE);
    let sum = result_checksum(&res);
    assert_eq!(sum, python_blkhash(&mid.path, SIZE), "checksum of the copy");

    // NFS -> block.
    let back = block_volume(&c, &block, SIZE).await;
    let res = copy_ok(&c, &mid, &back, Some(0)).await;
    assert_same_bytes(&src.path, &back.path, SIZE);
    assert_eq!(result_checksum(&res), sum);

    // One path of the LUN goes down mid-copy: multipath keeps the other,
    // and the copy finishes with the right data.
    const BIG: u64 = 192 * MIB;
    let big = block_volume(&c, &block, BIG).await;
    write_random(&big.path, 0, BIG, 11);
    let c = client(&d).await;
    set_legal(&c, &big).await;
    let dst = nfs.new_volume(&c, BIG, "RAW", "SPARSE").await;
    let id = start_copy(&c, &big, &dst, Some(0)).await;
    wait_progress(&c, &id, 5, Duration::from_secs(120)).await;
    let portal = format!(
        "{}:{}",
        env("DEPOT_VM_ISCSI_PORTALS").split(',').nth(1).unwrap(),
        env("DEPOT_VM_ISCSI_PORT")
    );
    ok(&[
        "iscsiadm", "-m", "node", "-T", &luns.iqn, "-p", &portal, "--logout",
    ]);
    let paths = ok(&["multipathd", "show", "maps", "raw", "format", "%w %N"]);
    assert!(
        paths.contains(&format!("{} 1", luns.wwids[2])),
        "one path left: {paths}"
    );
    let res = wait_done(&c, &id).await;
    assert_same_bytes(&big.path, &dst.path, BIG);
    assert_eq!(result_checksum(&res), python_blkhash(&dst.path, BIG));
    // The path comes back.
    let _ = run(&[
        "iscsiadm", "-m", "node", "-T", &luns.iqn, "-p", &portal, "--login",
    ]);

    for sd in [&block.sd, &nfs.sd] {
        call_ok(
            &c,
            "StorageDomain.format",
            json!({"storagedomainID": sd, "autoDetach": false}),
        )
        .await;
    }
    disconnect_ok(&c, &d, NFS, &nfs.conn, &nfs.conn_id).await;
}
