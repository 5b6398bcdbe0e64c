//! POSIXFS connections on real ext4 and xfs file systems on loop devices.
//! Root tier (docs/testing.md): needs e2fsprogs and xfsprogs (mkfs.ext4,
//! mkfs.xfs) and util-linux (losetup, mount); a missing one fails the test.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use depot_api::storage::DomainType;
use depot_api::Code;
use depot_os::mount::{find_by_target, read_mountinfo};
use depot_os::{CmdError, CommandRunner, MountError, Mounter};
use depot_storage::connection::{Connection, ConnectionParams, Connector};

const ID: &str = "8d0c5f4e-2a1b-4c3d-9e8f-0a1b2c3d4e5f";
const SD: &str = "5b4a3928-1706-4f5e-9d8c-7b6a59483726";
const T: Duration = Duration::from_secs(120);

use support::loopfs::LoopFs;

fn connector(repo: &Path) -> Connector {
    Connector::new(repo, Mounter::new(CommandRunner::new()))
}

fn params(dev: &str, vfs: &str) -> ConnectionParams {
    ConnectionParams {
        id: ID.into(),
        connection: dev.into(),
        vfs_type: Some(vfs.into()),
        mnt_options: Some("noatime,nosuid,nodev".into()),
        ..Default::default()
    }
}

fn mounts_at(target: &Path) -> usize {
    read_mountinfo()
        .unwrap()
        .iter()
        .filter(|e| e.target == target)
        .count()
}

fn lifecycle(fstype: &str, size: u64) {
    let t0 = Instant::now();
    let fs = LoopFs::new(fstype, size, None);
    let t_mkfs = t0.elapsed();
    let repo = tempfile::tempdir().unwrap();
    let c = connector(repo.path());
    let p = params(&fs.dev, fstype);
    let conn = c.prepare(DomainType::PosixFs, &p).unwrap();
    let mp: PathBuf = repo
        .path()
        .join("mnt")
        .join(fs.dev.replace('_', "__").replace('/', "_"));
    assert_eq!(conn.mount_point(), mp);

    // Connect, twice: one mount.
    let t = Instant::now();
    c.connect(&conn).unwrap();
    let t_connect = t.elapsed();
    c.connect(&conn).unwrap();
    let st = c.connect_all(DomainType::PosixFs, std::slice::from_ref(&p));
    assert_eq!(st[0].status, 0);
    assert_eq!(mounts_at(&mp), 1);
    let e = find_by_target(&mp).unwrap().unwrap();
    assert_eq!(e.fstype, fstype);
    assert_eq!(e.source, fs.dev);
    assert!(e.options.iter().any(|o| o == "noatime"), "{e:?}");
    assert!(e.options.iter().any(|o| o == "nosuid"), "{e:?}");

    // A domain on it is found by the scan.
    let md = mp.join(SD).join("dom_md");
    std::fs::create_dir_all(&md).unwrap();
    std::fs::write(md.join("metadata"), b"x\n").unwrap();
    let mfs = depot_storage::mount_fs::MountFs::in_process(&mp, Duration::from_secs(30));
    let found = depot_storage::file::domain::list_in(&mfs, &mp).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1.metadata(), md.join("metadata"));

    // Busy: a file held open in the mount. umount fails, the mount stays.
    let held = std::fs::File::open(md.join("metadata")).unwrap();
    let err = c.disconnect(&conn).unwrap_err();
    assert_eq!(err.code, Code::StorageServerDisconnectionError, "{err}");
    assert!(err.detail.contains("busy"), "{err}");
    assert_eq!(mounts_at(&mp), 1, "still mounted");
    assert!(md.join("metadata").is_file());
    drop(held);

    // Disconnect, twice.
    let t = Instant::now();
    c.disconnect(&conn).unwrap();
    let t_disconnect = t.elapsed();
    assert_eq!(mounts_at(&mp), 0);
    assert!(!mp.exists(), "mount point removed");
    c.disconnect(&conn).unwrap();
    let st = c.disconnect_all(DomainType::PosixFs, std::slice::from_ref(&p), |_| Ok(()));
    assert_eq!(st[0].status, 0);
    eprintln!(
        "{fstype}: mkfs+losetup {t_mkfs:?}, connect {t_connect:?}, disconnect {t_disconnect:?}"
    );
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn connection_posix_ext4_lifecycle() {
    depot_testkit::require_root();
    lifecycle("ext4", 64 << 20);
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn connection_posix_xfs_lifecycle() {
    depot_testkit::require_root();
    // mkfs.xfs refuses file systems smaller than 300 MiB.
    lifecycle("xfs", 512 << 20);
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn connection_mount_point_held_by_another_source_is_refused() {
    depot_testkit::require_root();
    let fs = LoopFs::new("ext4", 64 << 20, None);
    let repo = tempfile::tempdir().unwrap();
    let c = connector(repo.path());
    let conn: Connection = c
        .prepare(DomainType::PosixFs, &params(&fs.dev, "ext4"))
        .unwrap();
    let mp = conn.mount_point().to_owned();
    std::fs::create_dir_all(&mp).unwrap();
    // Someone else's mount at our mount point.
    let m = Mounter::new(CommandRunner::new());
    m.mount("intruder", &mp, Some("tmpfs"), &["size=1m".into()], T)
        .unwrap();

    let err = c.connect(&conn).unwrap_err();
    assert_eq!(err.code, Code::StorageServerConnectionError, "{err}");
    assert!(err.detail.contains("intruder"), "{err}");
    assert_eq!(mounts_at(&mp), 1, "nothing mounted over it");

    let err = c.disconnect(&conn).unwrap_err();
    assert_eq!(err.code, Code::StorageServerDisconnectionError, "{err}");
    assert_eq!(mounts_at(&mp), 1, "not unmounted");
    assert!(!c.is_connected(&conn).unwrap());

    m.umount(&mp, false, false, T).unwrap();
    // Now free: connect works.
    c.connect(&conn).unwrap();
    assert!(c.is_connected(&conn).unwrap());
    c.disconnect(&conn).unwrap();
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn connection_failed_mount_is_mount_error_and_leaves_no_directory() {
    depot_testkit::require_root();
    // An ext4 device mounted as xfs.
    let fs = LoopFs::new("ext4", 64 << 20, None);
    let repo = tempfile::tempdir().unwrap();
    let c = connector(repo.path());
    let conn = c
        .prepare(DomainType::PosixFs, &params(&fs.dev, "xfs"))
        .unwrap();
    let err = c.connect(&conn).unwrap_err();
    assert_eq!(err.code, Code::MountError, "{err}");
    assert!(err.detail.contains(&fs.dev), "{err}");
    assert!(!conn.mount_point().exists());
    assert_eq!(mounts_at(conn.mount_point()), 0);
}

/// The failed mount's error keeps what failed underneath: depot-os's
/// MountError, and below it the runner's error for mount(8) with its exit.
#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn failed_mount_keeps_the_mount_command_error_as_its_source() {
    depot_testkit::require_root();
    let fs = LoopFs::new("ext4", 64 << 20, None);
    let repo = tempfile::tempdir().unwrap();
    let c = connector(repo.path());
    let conn = c
        .prepare(DomainType::PosixFs, &params(&fs.dev, "xfs"))
        .unwrap();
    let err = c.connect(&conn).unwrap_err();
    assert_eq!(err.code, Code::MountError, "{err}");
    let mount = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<MountError>())
        .unwrap_or_else(|| panic!("no MountError under {err:?}"));
    let MountError::Mount { source_spec, .. } = mount else {
        panic!("not a failed mount(8): {mount:?}");
    };
    assert_eq!(source_spec, &fs.dev);
    // MountError holds the command's error boxed: the source is the Box.
    let cmd = std::error::Error::source(mount)
        .and_then(|s| s.downcast_ref::<Box<CmdError>>())
        .unwrap_or_else(|| panic!("no CmdError under {mount:?}"));
    assert!(matches!(**cmd, CmdError::Failed { .. }), "{cmd:?}");
    assert!(cmd.to_string().contains("mount"), "{cmd}");
    // The message oVirt sees is the one it always was: the MountError's.
    assert_eq!(err.detail, mount.to_string());
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn connection_through_a_symlinked_repository_stays_idempotent() {
    depot_testkit::require_root();
    let fs = LoopFs::new("ext4", 64 << 20, None);
    let real = tempfile::tempdir().unwrap();
    let links = tempfile::tempdir().unwrap();
    let repo = links.path().join("repo");
    std::os::unix::fs::symlink(real.path(), &repo).unwrap();
    let c = connector(&repo);
    let conn = c
        .prepare(DomainType::PosixFs, &params(&fs.dev, "ext4"))
        .unwrap();
    assert!(conn.mount_point().starts_with(real.path()));
    c.connect(&conn).unwrap();
    c.connect(&conn).unwrap();
    assert_eq!(mounts_at(conn.mount_point()), 1);
    c.disconnect(&conn).unwrap();
    assert_eq!(mounts_at(conn.mount_point()), 0);
}
