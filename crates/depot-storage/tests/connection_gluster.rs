//! GLUSTERFS connections against a private glusterd (depot_testkit::gluster).
//! Root tier (docs/testing.md): a missing GlusterFS fails the test.

use std::path::Path;
use std::time::{Duration, Instant};

use depot_api::storage::DomainType;
use depot_api::Code;
use depot_os::mount::find_by_target;
use depot_os::{CommandRunner, Mounter};
use depot_storage::connection::{ConnectionParams, Connector};
use depot_testkit::gluster::Gluster;

const ID: &str = "6a3f7a3e-1b2c-4d5e-8f90-123456789abc";
const SD: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn connection_gluster_connect_and_disconnect() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let t0 = Instant::now();
    let g = Gluster::start().expect("start gluster");
    let o = g
        .cli(&["volume", "get", g.volume(), "performance.strict-o-direct"])
        .unwrap();
    assert!(o.contains("on"), "{o}");
    let repo = tempfile::tempdir().unwrap();
    let c = Connector::new(repo.path(), Mounter::new(CommandRunner::new()))
        .with_io_timeout(Duration::from_secs(20));
    let p = ConnectionParams {
        id: ID.into(),
        connection: g.spec(),
        vfs_type: Some("glusterfs".into()),
        mnt_options: Some("log-level=WARNING".into()),
        ..Default::default()
    };
    let conn = c.prepare(DomainType::GlusterFs, &p).unwrap();
    let mp = repo
        .path()
        .join("mnt/glusterSD")
        .join(format!("{}:_vol", g.host()));
    assert_eq!(conn.mount_point(), mp);

    let t = Instant::now();
    let st = c.connect_all(DomainType::GlusterFs, std::slice::from_ref(&p));
    assert_eq!(st[0].status, 0, "{st:?}");
    eprintln!("connect: {:?}", t.elapsed());
    let e = find_by_target(&mp).unwrap().expect("mounted");
    assert_eq!(e.fstype, "fuse.glusterfs");
    assert_eq!(e.source, g.spec());
    assert!(c.is_connected(&conn).unwrap());

    // Idempotent: no second mount stacked.
    c.connect(&conn).unwrap();
    let table = depot_os::mount::read_mountinfo().unwrap();
    assert_eq!(table.iter().filter(|e| e.target == mp).count(), 1);

    // Data goes to the brick; the domain scan finds a domain.
    let md = mp.join(SD).join("dom_md");
    std::fs::create_dir_all(&md).unwrap();
    std::fs::write(md.join("metadata"), b"SDUUID=x\n").unwrap();
    assert!(g.brick().join(SD).join("dom_md/metadata").is_file());
    let mfs = depot_storage::mount_fs::MountFs::in_process(&mp, Duration::from_secs(30));
    let found = depot_storage::file::domain::list_in(&mfs, &mp).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1.metadata(), md.join("metadata"));

    // `server:vol` (no slash) is the same volume on another mount point.
    let p2 = ConnectionParams {
        connection: format!("{}:vol", g.host()),
        ..p.clone()
    };
    let conn2 = c.prepare(DomainType::GlusterFs, &p2).unwrap();
    assert_ne!(conn2.mount_point(), conn.mount_point());
    c.connect(&conn2).unwrap();
    c.connect(&conn2).unwrap();
    assert!(conn2
        .mount_point()
        .join(SD)
        .join("dom_md/metadata")
        .is_file());
    c.disconnect(&conn2).unwrap();
    assert!(!conn2.mount_point().exists());

    let t = Instant::now();
    let st = c.disconnect_all(DomainType::GlusterFs, std::slice::from_ref(&p), |_| Ok(()));
    assert_eq!(st[0].status, 0, "{st:?}");
    eprintln!("disconnect: {:?}", t.elapsed());
    assert!(find_by_target(&mp).unwrap().is_none());
    assert!(!mp.exists(), "mount point removed");
    c.disconnect(&conn).unwrap();
    assert!(depot_storage::layout::mount_dirs(c.repository()).is_empty());

    // A volume that does not exist: MountError, no mount point left.
    let bad = ConnectionParams {
        connection: format!("{}:/novol", g.host()),
        ..p.clone()
    };
    let conn3 = c.prepare(DomainType::GlusterFs, &bad).unwrap();
    let err = c.connect(&conn3).unwrap_err();
    assert_eq!(err.code, Code::MountError, "{err}");
    assert!(!conn3.mount_point().exists());
    assert!(!Path::new(&conn3.mount_point()).exists());
    drop(g);
    eprintln!("gluster test total: {:?}", t0.elapsed());
}
