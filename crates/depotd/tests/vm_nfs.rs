//! NFS domains on a real kernel NFS server and client (VM tier,
//! tests/vm/run): the file domain scenario of the LOCALFS/POSIXFS/GLUSTERFS
//! tests, over NFS v3 and v4.2 mounts that depot makes itself.

mod common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use common::Daemon;
use storage_common::*;
use support::vm::env;

async fn scenario(version: &str, export: String) {
    let d = Daemon::start(CONFIG);
    let conn = ConnectionSpec {
        connection: export,
        vfs_type: None,
        mnt_options: None,
        protocol_version: Some(version.to_string()),
    };
    run_file_domain_scenario(&d, NFS, conn, None).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the vm tier (tests/vm/run)"]
async fn scenario_nfs_v3() {
    depot_testkit::require_vm();
    scenario("3", env("DEPOT_VM_NFS_V3")).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the vm tier (tests/vm/run)"]
async fn scenario_nfs_v4_2() {
    depot_testkit::require_vm();
    scenario("4.2", env("DEPOT_VM_NFS_V4")).await;
}
