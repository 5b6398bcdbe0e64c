//! OVF_STORE uploads on NFS domains, on a real kernel NFS server and
//! client (VM tier, tests/vm/run; ignored elsewhere): the replace strategy
//! (the body written with O_DIRECT into a new file next to the volume,
//! renamed over it once complete and durable; docs/formats.md, "Upload and
//! commit") over NFS v3 and v4.2: round trips across buffers, a bad upload
//! that changes nothing, and a volume with a second link, which is updated
//! in place instead.

mod common;
#[allow(unused_imports)]
mod ovf_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::os::unix::fs::MetadataExt;

use common::Daemon;
use ovf_common::*;
use storage_common::*;
use support::vm::env;

fn ino(v: &Vol) -> u64 {
    std::fs::metadata(&v.path).unwrap().ino()
}

async fn scenario(version: &str, export: String) {
    let d = Daemon::start(CONFIG);
    let conn = ConnectionSpec {
        connection: export,
        vfs_type: None,
        mnt_options: None,
        protocol_version: Some(version.to_string()),
    };
    let dom = Domain::create(&d, NFS, conn, 512).await;
    let disk = dom.create_volume(&new_id(), GIB, "COW", "DATA", None).await;
    let disks = [(disk.img.as_str(), disk.vol.as_str())];
    let store = dom.create_store().await;
    let via = Via::unix(&d);

    // A small archive, then one of several buffers: each replaces the
    // volume file.
    let small = engine_tar(&dom.sd, &[Entity::vm("on-nfs", &disks)], &[]);
    let before = ino(&store);
    put_ok(&via, &store, &small).await;
    assert_ne!(
        ino(&store),
        before,
        "NFS v{version}: the volume was replaced"
    );
    Seen::take(&dom, &via, &store, &small, 1).await;
    let (big, _) = big_tar(&dom.sd, 6 << 20, &disks);
    assert_ne!(big.len() % 4096, 0);
    put_ok(&via, &store, &big).await;
    let seen = Seen::take(&dom, &via, &store, &big, 2).await;
    let ents = dom.entities().await;
    assert_eq!(ents["store"]["volumeID"], store.vol.as_str(), "{ents}");

    // A bad upload (a broken header checksum past the first MiB): refused,
    // nothing changed, no staging file left.
    let mut bad = big.clone();
    let at = (1 << 20) + 4096;
    let header = bad[at..]
        .chunks(512)
        .position(|b| &b[257..262] == b"ustar")
        .map(|i| at + i * 512)
        .expect("a header after the first MiB");
    bad[header + 100] ^= 0x01;
    put(&via, &store.ids(), &bad)
        .await
        .assert_error(400, 1000, "a bad upload over NFS");
    wait_idle(&via, &store).await;
    seen.assert_same(&dom, &via, &store, "a bad upload over NFS")
        .await;

    // A second link: updated in place (the copy strategy), the link kept.
    let link = store
        .path
        .with_file_name(format!("{}.second-link", store.vol));
    std::fs::hard_link(&store.path, &link).unwrap();
    let linked = ino(&store);
    put_ok(&via, &store, &small).await;
    assert_eq!(ino(&store), linked, "NFS v{version}: written in place");
    assert!(std::fs::read(&link).unwrap() == store.bytes());
    Seen::take(&dom, &via, &store, &small, 3).await;
    std::fs::remove_file(&link).unwrap();

    // The engine's end of a domain: format, then disconnect (nothing left
    // mounted, nothing for the next test to trip over).
    call_ok(
        &dom.c,
        "StorageDomain.format",
        serde_json::json!({"storagedomainID": dom.sd, "autoDetach": false}),
    )
    .await;
    disconnect_ok(&dom.c, &d, NFS, &dom.conn, &dom.conn_id).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the vm tier (tests/vm/run)"]
async fn ovf_store_on_nfs_v3() {
    depot_testkit::require_vm();
    scenario("3", env("DEPOT_VM_NFS_V3")).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the vm tier (tests/vm/run)"]
async fn ovf_store_on_nfs_v4_2() {
    depot_testkit::require_vm();
    scenario("4.2", env("DEPOT_VM_NFS_V4")).await;
}
