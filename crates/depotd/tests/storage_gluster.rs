//! Storage end to end on GLUSTERFS (root tier): the shared file domain
//! scenario on a private glusterd and single-brick volume started by
//! depot-storage's test harness (reused from there, not copied). Prints
//! `SKIP: needs the root tier` when not run as root.

mod common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use common::Daemon;
use storage_common::*;
use support::gluster::Gluster;

#[tokio::test]
async fn scenario_glusterfs() {
    let tier = std::env::var("DEPOT_TEST_TIER").ok();
    if !support::is_root() || tier.as_deref().is_some_and(|t| t != "root") {
        eprintln!("SKIP: needs the root tier");
        return;
    }
    // Dropped in reverse: the daemon's mounts, the daemon, then gluster.
    let g = Gluster::start().expect("gluster harness");
    let d = Daemon::start(CONFIG);
    let _mounts = UnmountGuard(d.dir.path().to_path_buf());
    let conn = ConnectionSpec {
        connection: g.spec(),
        vfs_type: Some("glusterfs".into()),
        mnt_options: None,
        protocol_version: None,
    };
    run_file_domain_scenario(&d, GLUSTERFS, conn, None).await;
    // Everything went through the mount: the brick holds no domain now.
    let left: Vec<_> = std::fs::read_dir(g.brick())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left on the brick: {left:?}");
}
