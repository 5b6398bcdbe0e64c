//! Storage end to end on POSIXFS (root tier): the shared file domain
//! scenario on ext4 over a 512-byte loop device, and on xfs over a loop
//! device with 4096-byte sectors, where blockSize 0 must detect 4096.
//! Reported as ignored outside the root tier. Needs util-linux (losetup),
//! e2fsprogs and xfsprogs: a missing one fails the test.

mod common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use common::Daemon;
use storage_common::*;

const T: Duration = Duration::from_secs(120);

use support::loopfs::LoopFs;

async fn posix_scenario(fstype: &str, size: u64, sector_size: Option<u32>, expect: u32) {
    let t = Instant::now();
    // Dropped in reverse: the guards unmount before the daemon's directory
    // is removed.
    let d = Daemon::start(CONFIG);
    let fs = LoopFs::new(fstype, size, sector_size);
    let _mounts = UnmountGuard(d.dir.path().to_path_buf());
    eprintln!("{fstype} on {} ready in {:.2?}", fs.dev, t.elapsed());
    let conn = ConnectionSpec {
        connection: fs.dev.clone(),
        vfs_type: Some(fstype.into()),
        mnt_options: Some("noatime,nosuid,nodev".into()),
        protocol_version: None,
    };
    run_file_domain_scenario(&d, POSIXFS, conn, Some(expect)).await;
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn scenario_posixfs_ext4() {
    depot_testkit::require_root();
    posix_scenario("ext4", 256 * MIB, None, 512).await;
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn scenario_posixfs_xfs_4k_sectors() {
    depot_testkit::require_root();
    posix_scenario("xfs", 512 * MIB, Some(4096), 4096).await;
}

/// Block size detection alone, without POSIXFS: a LOCALFS domain in a
/// directory on xfs over a 4096-byte-sector loop device.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn localfs_on_4k_xfs_detects_4096() {
    depot_testkit::require_root();
    let d = Daemon::start(CONFIG);
    let fs = LoopFs::new("xfs", 512 * MIB, Some(4096));
    let mnt = tempfile::tempdir().unwrap();
    support::run(
        "mount",
        &["-t", "xfs", &fs.dev, mnt.path().to_str().unwrap()],
        T,
    )
    .expect("mount");
    let _mounts = UnmountGuard(mnt.path().to_path_buf());
    let data = mnt.path().join("local");
    std::fs::create_dir(&data).unwrap();
    let c = d.client().await;
    let conn = ConnectionSpec::local(&data.canonicalize().unwrap());
    let id = new_id();
    let st = call_ok(
        &c,
        "StoragePool.connectStorageServer",
        connect_params(LOCALFS, vec![conn.params(&id)]),
    )
    .await;
    assert_eq!(st[0]["status"], 0, "{st}");
    let sd = new_id();
    call_ok(
        &c,
        "StorageDomain.create",
        create_domain_params(&sd, LOCALFS, &conn.connection, "4k", 0),
    )
    .await;
    let info = call_ok(
        &c,
        "StorageDomain.getInfo",
        serde_json::json!({"storagedomainID": sd}),
    )
    .await;
    assert_eq!(info["block_size"], 4096, "{info}");
    assert_eq!(
        info["alignment"],
        8 * MIB,
        "maxHosts 2000 by default: {info}"
    );
    assert_eq!(domain_md(&data.join(&sd))["BLOCK_SIZE"], "4096");
}
