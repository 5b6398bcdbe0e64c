//! Storage safety (issue 12, section 3) end to end over a real daemon:
//! volume data behind a symlink is never opened, long file-domain work
//! holds its image lock until it has really ended, storage mounts get
//! nosuid and nodev, discovery checks CHAP like connect, and a failed
//! checksum says so.

mod common;
mod copy_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use common::Daemon;
use copy_common::*;
use serde_json::json;
use storage_common::*;
use support::loopfs::LoopFs;

/// A checksum job that fails has its own code and message, not the copy's
/// "Volume copy failed".
#[tokio::test]
async fn failed_checksum_says_checksum() {
    let d = Daemon::start(CONFIG);
    let c = d.client().await;
    let dir = tempfile::tempdir().unwrap();
    let dom = local_domain(&c, &d, dir.path()).await;
    let v = dom.new_volume(&c, 8 * MIB, "RAW", "SPARSE").await;
    // The data file is shorter than the volume: it cannot be read whole.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&v.path)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let id = new_id();
    let r = call_ok(
        &c,
        "Volume.getChecksum",
        json!({"job_id": id, "storagedomainID": v.sd, "imageID": v.img, "volumeID": v.vol}),
    )
    .await;
    assert_eq!(r, json!(true));
    let err = wait_failed(&c, &id).await;
    assert_eq!(err["code"], 9016, "{err}");
    let msg = err["message"].as_str().unwrap_or_default();
    assert!(msg.starts_with("Volume checksum failed: "), "{err}");
    assert!(
        !msg.contains("Volume copy") && !msg.contains("during the copy"),
        "{err}"
    );
}

/// `ISCSIConnection.discoverSendTargets` checks the CHAP user and password
/// as `connectStorageServer` does, with the same code (1000), before
/// iscsiadm sees them, and never quotes the password.
#[tokio::test]
async fn discovery_checks_chap_as_connect_does() {
    const SECRET: &str = "s3cr3t-pw";
    let d = Daemon::start(CONFIG);
    let c = d.client().await;
    let long_user = "u".repeat(256);
    let cases: [(Option<&str>, Option<String>); 6] = [
        (Some("a b"), Some(SECRET.into())),
        (Some("-oexec"), Some(SECRET.into())),
        (Some(&long_user), Some(SECRET.into())),
        (
            Some("depot"),
            Some(format!("{SECRET}\nnode.startup=automatic")),
        ),
        (Some("depot"), None),
        (None, Some(SECRET.into())),
    ];
    for (user, password) in cases {
        let what = format!("user {user:?}");
        let mut conn = json!({"id": new_id(), "connection": "127.0.0.1", "port": 3260,
            "iqn": "iqn.2026-11.org.depot:target1"});
        let mut disc = json!({"host": "127.0.0.1", "port": 3260});
        for p in [&mut conn, &mut disc] {
            if let Some(u) = user {
                p["user"] = json!(u);
            }
            if let Some(pw) = &password {
                p["password"] = json!(pw);
            }
        }
        let st = call_ok(
            &c,
            "StoragePool.connectStorageServer",
            connect_params(3, vec![conn]),
        )
        .await;
        assert_eq!(statuses(&st), [1000], "connect, {what}: {st}");
        let msg = call_err(&c, "ISCSIConnection.discoverSendTargets", disc, 1000).await;
        assert!(!msg.contains(SECRET), "{what}: {msg}");
        let field = if user.is_some() && password.is_some() && password != Some(SECRET.into()) {
            "password"
        } else {
            "user"
        };
        assert!(msg.contains(field), "{what}: {msg}");
    }
}

/// A POSIXFS mount the engine asked nothing special for gets nosuid and
/// nodev all the same, as the kernel's mount table shows.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn storage_mounts_get_nosuid_and_nodev() {
    depot_testkit::require_root();
    let fs = LoopFs::new("ext4", 64 * MIB, None);
    let d = Daemon::start(CONFIG);
    let c = d.client().await;
    let conn = ConnectionSpec {
        vfs_type: Some("ext4".into()),
        ..ConnectionSpec::local(std::path::Path::new(&fs.dev))
    };
    let id = new_id();
    let st = call_ok(
        &c,
        "StoragePool.connectStorageServer",
        connect_params(POSIXFS, vec![conn.params(&id)]),
    )
    .await;
    assert_eq!(statuses(&st), [0], "{st}");
    let mp = mount_point(&d, POSIXFS, &fs.dev);
    let at = mounts_at(&mp);
    assert_eq!(at.len(), 1, "{at:?}");
    for o in ["nosuid", "nodev"] {
        assert!(at[0].options.iter().any(|x| x == o), "{o}: {:?}", at[0]);
    }
    disconnect_ok(&c, &d, POSIXFS, &conn, &id).await;
}
