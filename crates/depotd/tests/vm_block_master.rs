//! The block master's `master` file system in the VM tier (tests/vm/run;
//! docs/storage.md "SPM tasks", "On the master domain"), one host with
//! the local SPM role (sanlock off), on the guest's iSCSI LUN:
//!
//! * `StorageDomain.create` makes ext3 on the `master` LV and leaves the
//!   LV inactive;
//! * spmStart mounts it at `<repository>/mnt/blockSD/<sd>/master` (twice:
//!   one mount), an SPM verb's task record is written into its `tasks`;
//!   spmStop (twice) unmounts it and deactivates the LV;
//! * depotd killed (-9) as SPM leaves the mount; the next start unmounts
//!   it; a task whose record the host lost is answered again once the
//!   restarted host is SPM (loaded from the master's file system);
//! * an LV with an unknown signature (xfs) is refused (368) and left as it
//!   is; one with no signature (a domain of an older depot) gets its file
//!   system at spmStart; a broken one (its root inode cleared) that the
//!   superblock calls clean passes `e2fsck -p` (preen checks only a file
//!   system not marked clean, as VDSM's `fsck -p` does) and fails to mount
//!   (368); once marked as having errors, `e2fsck -p` refuses it (367).
//!   Each refusal leaves this host not SPM, nothing mounted.

mod common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Daemon;
use depot_client::Client;
use serde_json::{json, Value};
use storage_common::*;
use support::vm::{ok, Luns};

const ISCSI: i64 = 3;
const SLOW: Duration = Duration::from_secs(600);
const CONFIG: &str = "[storage]\nmonitor_interval_s = 0.5\n[sanlock]\nenabled = false\n";

fn is_active(vg: &str, lv: &str) -> bool {
    Path::new(&format!("/dev/{vg}/{lv}")).exists()
}

/// `lvchange -a<y|n> <vg>/master`, as a test tool outside depot.
fn master_lv(luns: &Luns, sd: &str, active: bool) {
    let flag = if active { "-ay" } else { "-an" };
    ok(&[
        "lvchange",
        "--config",
        &luns.lvm_config(),
        flag,
        &format!("{sd}/master"),
    ]);
}

/// The master LV's signature type, read with blkid outside depot (the LV
/// activated for it and deactivated after).
fn master_fs_type(luns: &Luns, sd: &str) -> String {
    master_lv(luns, sd, true);
    let out = support::vm::run(&[
        "blkid",
        "-p",
        "-o",
        "value",
        "-s",
        "TYPE",
        &format!("/dev/{sd}/master"),
    ]);
    master_lv(luns, sd, false);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn mount_target(d: &Daemon, sd: &str) -> PathBuf {
    repository(d)
        .join("mnt")
        .join("blockSD")
        .join(sd)
        .join("master")
}

async fn spm_role(c: &Client, sp: &str) -> Value {
    call_ok(c, "StoragePool.getSpmStatus", json!({"storagepoolID": sp})).await["spmStatus"].clone()
}

async fn connect(c: &Client, sp: &str, sd: &str) {
    call_ok(
        c,
        "StoragePool.connect",
        json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp, "masterSdUUID": sd,
               "masterVersion": 1, "domainDict": {sd: "active"}}),
    )
    .await;
}

/// spmStart must fail with `code`, leaving the host not SPM, nothing
/// mounted, the LV inactive.
async fn spm_start_refused(c: &Client, d: &Daemon, sp: &str, sd: &str, code: i64) {
    let end = spm_start_task(c, sp, SLOW).await;
    assert_eq!(
        (&end["taskResult"], &end["code"]),
        (&json!("cleanFailure"), &json!(code)),
        "{end}"
    );
    assert_ne!(spm_role(c, sp).await, "SPM");
    assert!(mounts_at(&mount_target(d, sd)).is_empty());
    assert!(!is_active(sd, "master"));
}

async fn spm_stop(c: &Client, d: &Daemon, sp: &str, sd: &str) {
    call_ok(c, "StoragePool.spmStop", json!({"storagepoolID": sp})).await;
    assert!(mounts_at(&mount_target(d, sd)).is_empty(), "still mounted");
    assert!(!is_active(sd, "master"), "the master LV is still active");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the vm tier (tests/vm/run)"]
async fn block_master_file_system_is_mounted_by_the_spm_only() {
    depot_testkit::require_vm();
    let luns = Luns::login();
    let mut d = Daemon::start(CONFIG);
    let mut c = d.client().await;
    c.set_call_timeout(SLOW);
    let sd = new_id();
    let vg_uuid = call_ok(
        &c,
        "LVMVolumeGroup.create",
        json!({"name": sd, "devlist": [luns.wwids[0]], "force": false}),
    )
    .await;
    call_ok(
        &c,
        "StorageDomain.create",
        create_domain_params(&sd, ISCSI, vg_uuid.as_str().unwrap(), "master fs", 512),
    )
    .await;
    assert!(
        !is_active(&sd, "master"),
        "create leaves the master LV active"
    );
    assert_eq!(master_fs_type(&luns, &sd), "ext3");
    let sp = new_id();
    call_ok(
        &c,
        "StoragePool.create",
        json!({"storagepoolID": sp, "name": "master fs", "masterSdUUID": sd,
               "masterVersion": 1, "domainList": [sd]}),
    )
    .await;
    connect(&c, &sp, &sd).await;
    let target = mount_target(&d, &sd);
    assert!(mounts_at(&target).is_empty());

    // spmStart mounts it, once however often it is asked.
    start_spm_within(&c, &sp, SLOW).await;
    start_spm_within(&c, &sp, SLOW).await;
    let m = mounts_at(&target);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(m[0].fstype.starts_with("ext"), "{m:?}");
    // An SPM verb's task lands in the master's file system.
    let (img, vol) = (new_id(), new_id());
    let task = call_ok(
        &c,
        "Volume.create",
        volume_params(&sd, &img, &vol, 64 * MIB, "COW", "SPARSE", "task", None),
    )
    .await;
    let task = task.as_str().expect("a task id").to_owned();
    let record = target.join("tasks").join(format!("{task}.json"));
    assert!(record.is_file(), "{} is not there", record.display());
    spm_stop(&c, &d, &sp, &sd).await;
    spm_stop(&c, &d, &sp, &sd).await;
    assert!(!record.exists(), "the record is on the host's disk");

    // Killed as SPM: the mount stays until the next start cleans it. The
    // host's own record of the task is lost meanwhile: only the master's
    // copy can bring it back.
    start_spm_within(&c, &sp, SLOW).await;
    assert_eq!(mounts_at(&target).len(), 1);
    d.crash();
    assert_eq!(mounts_at(&target).len(), 1, "a crash unmounted it");
    std::fs::remove_file(d.state_dir().join("tasks").join(format!("{task}.json")))
        .expect("the host's record of the task");
    d.restart();
    let mut c = d.client().await;
    c.set_call_timeout(SLOW);
    // Cleaned by the start's recovery, which may go on in the background.
    wait_until("the stale master mount cleaned", SLOW, || {
        d.log()
            .contains("unmounted a master file system a depotd that died left")
    });
    assert!(mounts_at(&target).is_empty());
    assert!(!is_active(&sd, "master"));
    connect(&c, &sp, &sd).await;
    call_err(&c, "Task.getStatus", json!({"taskID": task}), 401).await;
    start_spm_within(&c, &sp, SLOW).await;
    let st = call_ok(&c, "Task.getStatus", json!({"taskID": task})).await;
    assert_eq!(
        (&st["taskState"], &st["taskResult"]),
        (&json!("finished"), &json!("success")),
        "{st}"
    );
    spm_stop(&c, &d, &sp, &sd).await;

    // Not depot's file system: refused, left as it is.
    master_lv(&luns, &sd, true);
    ok(&["mkfs.xfs", "-q", "-f", &format!("/dev/{sd}/master")]);
    master_lv(&luns, &sd, false);
    spm_start_refused(&c, &d, &sp, &sd, 368).await;
    assert_eq!(master_fs_type(&luns, &sd), "xfs");
    // No signature at all (an older depot's domain): made at spmStart.
    master_lv(&luns, &sd, true);
    ok(&["wipefs", "-q", "-a", &format!("/dev/{sd}/master")]);
    master_lv(&luns, &sd, false);
    start_spm_within(&c, &sp, SLOW).await;
    assert_eq!(mounts_at(&target).len(), 1);
    assert!(d.log().contains("the master LV has no file system"));
    spm_stop(&c, &d, &sp, &sd).await;
    assert_eq!(master_fs_type(&luns, &sd), "ext3");
    // A file system with its root inode cleared: marked clean, e2fsck -p
    // does not look at it and the mount fails; marked as having errors,
    // e2fsck -p checks it and will not repair it.
    master_lv(&luns, &sd, true);
    let dev = format!("/dev/{sd}/master");
    ok(&["debugfs", "-w", "-R", "clri <2>", &dev]);
    master_lv(&luns, &sd, false);
    spm_start_refused(&c, &d, &sp, &sd, 368).await;
    master_lv(&luns, &sd, true);
    ok(&["tune2fs", "-E", "force_fsck", &dev]);
    master_lv(&luns, &sd, false);
    spm_start_refused(&c, &d, &sp, &sd, 367).await;
    assert!(d
        .log()
        .contains("e2fsck left errors on the master file system"));

    call_ok(
        &c,
        "StoragePool.disconnect",
        json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp}),
    )
    .await;
    call_ok(
        &c,
        "StorageDomain.format",
        json!({"storagedomainID": sd, "autoDetach": true}),
    )
    .await;
    d.stop();
}
