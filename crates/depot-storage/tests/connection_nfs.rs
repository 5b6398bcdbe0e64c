//! The NFS connection flow with the exact `mount`/`umount` argv.
//!
//! This machine has no kernel NFS client, so `mount` and `umount` are
//! replaced for the Connector (through the runner's PATH, not this
//! process's) by scripts that log their argv and then mount a tmpfs whose
//! source is the NFS spec: the mount table then looks as it would with NFS
//! (apart from the type), and connect/disconnect run their real logic.
//! A real NFS mount is tested in a VM. Root only.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use depot_api::storage::DomainType;
use depot_os::mount::find_by_target;
use depot_os::{CommandRunner, Mounter};
use depot_storage::connection::{ConnectionParams, Connector};

const ID: &str = "1f2e3d4c-5b6a-4978-8a9b-0c1d2e3f4a5b";

struct FakeBin {
    dir: tempfile::TempDir,
}

impl FakeBin {
    fn new() -> FakeBin {
        let dir = tempfile::tempdir().unwrap();
        let real = |p: &str| {
            ["/usr/bin/", "/bin/"]
                .iter()
                .map(|d| format!("{d}{p}"))
                .find(|c| Path::new(c).exists())
                .unwrap_or_else(|| panic!("no {p}"))
        };
        let log = dir.path().join("log");
        let mount = format!(
            "#!/bin/sh\nprintf 'mount %s\\n' \"$*\" >> '{log}'\n\
             for a; do src=$tgt; tgt=$a; done\n\
             exec {real} -t tmpfs -o size=1m -- \"$src\" \"$tgt\"\n",
            log = log.display(),
            real = real("mount"),
        );
        let umount = format!(
            "#!/bin/sh\nprintf 'umount %s\\n' \"$*\" >> '{log}'\nexec {real} \"$@\"\n",
            log = log.display(),
            real = real("umount"),
        );
        for (name, text) in [("mount", mount), ("umount", umount)] {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        FakeBin { dir }
    }

    fn runner(&self) -> CommandRunner {
        let path = std::env::var("PATH").unwrap_or_default();
        CommandRunner::new().with_env("PATH", format!("{}:{path}", self.dir.path().display()))
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn nfs_lifecycle(p: ConnectionParams, expect_options: &str) {
    let bin = FakeBin::new();
    let repo = tempfile::tempdir().unwrap();
    let c = Connector::new(repo.path(), Mounter::new(bin.runner()));
    let conn = c.prepare(DomainType::Nfs, &p).unwrap();
    let mp: PathBuf = repo.path().join("mnt/srv.example.com:_export_data__1");
    assert_eq!(conn.mount_point(), mp);
    let plan = conn.mount_plan().unwrap();

    c.connect(&conn).unwrap();
    let want = format!(
        "mount -t nfs -o {expect_options} -- srv.example.com:/export/data_1 {}",
        mp.display()
    );
    assert_eq!(bin.log(), vec![want.clone()]);
    // What the Mounter ran is what the plan shows.
    assert_eq!(plan.command().to_string(), want);
    let e = find_by_target(&mp).unwrap().expect("mounted");
    assert_eq!(e.source, "srv.example.com:/export/data_1");

    // Idempotent: no second mount command.
    c.connect(&conn).unwrap();
    assert_eq!(bin.log().len(), 1);

    c.disconnect(&conn).unwrap();
    assert_eq!(bin.log()[1], format!("umount -f -- {}", mp.display()));
    assert!(find_by_target(&mp).unwrap().is_none());
    assert!(!mp.exists());
    c.disconnect(&conn).unwrap();
    assert_eq!(bin.log().len(), 2, "nothing to unmount the second time");
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn connection_nfs_v3_defaults() {
    depot_testkit::require_root();
    nfs_lifecycle(
        ConnectionParams {
            id: ID.into(),
            connection: "srv.example.com:/export/data_1/".into(),
            ..Default::default()
        },
        "soft,nosharecache,timeo=100,retrans=3,nfsvers=3,nolock,nosuid,nodev",
    );
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn connection_nfs_v41_engine_fields() {
    depot_testkit::require_root();
    nfs_lifecycle(
        ConnectionParams {
            id: ID.into(),
            connection: "srv.example.com:/export/data_1".into(),
            protocol_version: Some("4.1".into()),
            timeout: Some(600),
            retrans: Some(6),
            mnt_options: Some("noatime,rsize=1048576".into()),
            ..Default::default()
        },
        "soft,nosharecache,timeo=600,retrans=6,nfsvers=4,minorversion=1,noatime,rsize=1048576,nosuid,nodev",
    );
}
