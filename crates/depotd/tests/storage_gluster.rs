//! Storage end to end on GLUSTERFS (root tier): the shared file domain
//! scenario on a private glusterd and single-brick volume started by
//! depot-storage's test harness (reused from there, not copied). Reported
//! as ignored outside the root tier; a missing GlusterFS fails it there.

mod common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use common::Daemon;
use depot_testkit::gluster::Gluster;
use storage_common::*;

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn scenario_glusterfs() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
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
