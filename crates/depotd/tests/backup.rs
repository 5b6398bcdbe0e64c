//! Backup storage domains (issue 6): the flag lives on storage, the host
//! enforces every rule with its own code, and a second host that imports
//! the domain sees and enforces the flag.

mod common;
mod storage_common;

#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use common::Daemon;
use depot_client::Client;
use serde_json::{json, Value};
use storage_common::*;

const BACKUP_NEEDS_DATA: i32 = 9010;
const CANNOT_RUN_VM: i32 = 9011;
const NO_MEMORY: i32 = 9012;
const IN_USE: i32 = 9013;
const NO_HOSTED_ENGINE: i32 = 9014;
const BACKUP_CANNOT_BE_MASTER: i32 = 319;

struct Setup {
    sd: String,
    conn: ConnectionSpec,
    domain_type: i64,
}

async fn connect(c: &Client, domain_type: i64, conn: &ConnectionSpec) {
    let st = call_ok(
        c,
        "StoragePool.connectStorageServer",
        connect_params(domain_type, vec![conn.params(&new_id())]),
    )
    .await;
    assert_eq!(st[0]["status"], 0, "{st}");
}

async fn create(
    c: &Client,
    domain_type: i64,
    conn: &ConnectionSpec,
    class: i64,
    backup: bool,
) -> String {
    let sd = new_id();
    let mut p = create_domain_params(&sd, domain_type, &conn.connection, "backup test", 512);
    p["domainClass"] = json!(class);
    p["backup"] = json!(backup);
    call_ok(c, "StorageDomain.create", p).await;
    sd
}

async fn info(c: &Client, sd: &str) -> Value {
    call_ok(c, "StorageDomain.getInfo", json!({"storagedomainID": sd})).await
}

fn disk(sd: &str, disk_type: &str) -> (String, String, Value) {
    let (img, vol) = (new_id(), new_id());
    let mut p = volume_params(sd, &img, &vol, 64 * MIB, "RAW", "SPARSE", "d", None);
    p["diskType"] = json!(disk_type);
    (img, vol, p)
}

fn prepare(sp: &str, sd: &str, img: &str, vol: &str, purpose: Option<&str>) -> Value {
    let mut p =
        json!({"storagepoolID": sp, "storagedomainID": sd, "imageID": img, "volumeID": vol});
    if let Some(purpose) = purpose {
        p["purpose"] = json!(purpose);
    }
    p
}

/// Every rule of a backup domain, and every allowed operation, on one
/// storage type. Leaves the domain a backup domain.
async fn check_rules(c: &Client, s: &Setup, root: &std::path::Path) {
    let sd = &s.sd;
    assert_eq!(info(c, sd).await["backup"], true);
    let md = domain_md(&root.join(sd));
    assert_eq!(
        md.get("DEPOT_BACKUP").map(String::as_str),
        Some("true"),
        "{md:?}"
    );

    // Data and OVF_STORE volumes are allowed; memory and hosted-engine
    // disks are refused, and nothing of them is left on disk.
    let (img, vol, p) = disk(sd, "DATA");
    call_ok(c, "Volume.create", p).await;
    let (_, _, p) = disk(sd, "OVFS");
    call_ok(c, "Volume.create", p).await;
    let before = snapshot(&root.join(sd));
    for (t, code) in [
        ("MEMD", NO_MEMORY),
        ("MEMM", NO_MEMORY),
        ("HEVD", NO_HOSTED_ENGINE),
        ("HESD", NO_HOSTED_ENGINE),
        ("HEMD", NO_HOSTED_ENGINE),
        ("HECI", NO_HOSTED_ENGINE),
    ] {
        let (_, _, p) = disk(sd, t);
        let msg = call_err(c, "Volume.create", p, code).await;
        assert!(msg.contains("backup"), "{msg}");
    }
    assert_same_tree(&before, &snapshot(&root.join(sd)), "refused volume kinds");

    // A pool whose master is a normal domain, with the backup domain
    // attached and active: attach and activate are allowed.
    let master = create(c, s.domain_type, &s.conn, 1, false).await;
    let sp = new_id();
    let msg = call_err(
        c,
        "StoragePool.create",
        json!({"storagepoolID": sp, "name": "dc", "masterSdUUID": sd, "masterVersion": 1}),
        BACKUP_CANNOT_BE_MASTER,
    )
    .await;
    assert!(msg.contains("backup"), "{msg}");
    assert_eq!(
        info(c, sd).await["role"],
        "Regular",
        "refused create changed nothing"
    );
    call_ok(
        c,
        "StoragePool.create",
        json!({"storagepoolID": sp, "name": "dc", "masterSdUUID": master, "masterVersion": 1}),
    )
    .await;
    call_ok(
        c,
        "StoragePool.connect",
        json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp,
        "masterSdUUID": master, "masterVersion": 1, "domainDict": {master.clone(): "active"}}),
    )
    .await;
    start_spm(c, &sp).await;
    call_ok(
        c,
        "StorageDomain.attach",
        json!({"storagedomainID": sd, "storagepoolID": sp}),
    )
    .await;
    call_ok(
        c,
        "StorageDomain.activate",
        json!({"storagedomainID": sd, "storagepoolID": sp}),
    )
    .await;

    // The master role never moves to it.
    call_err(
        c,
        "StorageDomain.deactivate",
        json!({"storagedomainID": master, "storagepoolID": sp, "masterSdUUID": sd, "masterVersion": 2}),
        BACKUP_CANNOT_BE_MASTER,
    )
    .await;
    assert_eq!(info(c, &master).await["role"], "Master");
    assert_eq!(info(c, sd).await["role"], "Regular");

    // A prepare for a VM is refused; the engine's prepare (no purpose: a
    // disk download or upload, never a VM) and a copy's are allowed.
    let msg = call_err(
        c,
        "Image.prepare",
        prepare(&sp, sd, &img, &vol, Some("vm")),
        CANNOT_RUN_VM,
    )
    .await;
    assert!(msg.contains("backup"), "{msg}");
    let prepared = call_ok(c, "Image.prepare", prepare(&sp, sd, &img, &vol, None)).await;
    assert!(std::path::Path::new(prepared["path"].as_str().unwrap()).exists());
    let prepared = call_ok(
        c,
        "Image.prepare",
        prepare(&sp, sd, &img, &vol, Some("copy")),
    )
    .await;
    assert!(std::path::Path::new(prepared["path"].as_str().unwrap()).exists());

    // Clearing is allowed while in use; setting is not.
    call_ok(
        c,
        "StorageDomain.setBackup",
        json!({"storagedomainID": sd, "backup": false}),
    )
    .await;
    assert_eq!(info(c, sd).await["backup"], false);
    let msg = call_err(
        c,
        "StorageDomain.setBackup",
        json!({"storagedomainID": sd, "backup": true}),
        IN_USE,
    )
    .await;
    assert!(msg.contains("prepared"), "{msg}");
    assert_eq!(
        info(c, sd).await["backup"],
        false,
        "refused set changed nothing"
    );
    call_ok(
        c,
        "Image.teardown",
        json!({"storagepoolID": sp, "storagedomainID": sd, "imageID": img}),
    )
    .await;
    call_ok(
        c,
        "StorageDomain.setBackup",
        json!({"storagedomainID": sd, "backup": true}),
    )
    .await;
    assert_eq!(info(c, sd).await["backup"], true);

    // The master cannot become a backup domain.
    call_err(
        c,
        "StorageDomain.setBackup",
        json!({"storagedomainID": master, "backup": true}),
        BACKUP_CANNOT_BE_MASTER,
    )
    .await;

    // Deactivate and detach are allowed.
    call_ok(c, "StorageDomain.deactivate", json!({"storagedomainID": sd, "storagepoolID": sp, "masterSdUUID": master, "masterVersion": 1})).await;
    call_ok(
        c,
        "StorageDomain.detach",
        json!({"storagedomainID": sd, "storagepoolID": sp}),
    )
    .await;
    call_ok(
        c,
        "StoragePool.disconnect",
        json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp}),
    )
    .await;

    // Only data domains: ISO is refused at create and at setBackup.
    let mut p = create_domain_params(&new_id(), s.domain_type, &s.conn.connection, "iso", 512);
    p["domainClass"] = json!(2);
    p["backup"] = json!(true);
    call_err(c, "StorageDomain.create", p, BACKUP_NEEDS_DATA).await;
    let iso = create(c, s.domain_type, &s.conn, 2, false).await;
    call_err(
        c,
        "StorageDomain.setBackup",
        json!({"storagedomainID": iso, "backup": true}),
        BACKUP_NEEDS_DATA,
    )
    .await;
    call_ok(
        c,
        "StorageDomain.format",
        json!({"storagedomainID": iso, "autoDetach": true}),
    )
    .await;
}

#[tokio::test]
async fn localfs_backup_domain_rules_restart_and_import() {
    let storage = tempfile::tempdir().unwrap();
    let conn = ConnectionSpec::local(storage.path());
    let mut d = Daemon::start(CONFIG);
    let c = d.client().await;
    connect(&c, LOCALFS, &conn).await;
    let sd = create(&c, LOCALFS, &conn, 1, true).await;
    let setup = Setup {
        sd: sd.clone(),
        conn: conn.clone(),
        domain_type: LOCALFS,
    };
    check_rules(&c, &setup, storage.path()).await;
    let img_vol = {
        let (img, vol, p) = disk(&sd, "DATA");
        call_ok(&c, "Volume.create", p).await;
        (img, vol)
    };
    drop(c);

    // The flag survives a restart: it is on storage.
    d.stop();
    d.restart();
    let c = d.client().await;
    connect(&c, LOCALFS, &conn).await;
    assert_eq!(info(&c, &sd).await["backup"], true);
    drop(c);
    d.stop();

    // Another host (its own state directory) imports the domain after a
    // disaster: it finds it, reads the flag from storage and enforces it.
    let other = Daemon::start(CONFIG);
    let c = other.client().await;
    connect(&c, LOCALFS, &conn).await;
    let found = call_ok(&c, "Host.getStorageDomains", json!({})).await;
    assert!(strings(&found).contains(&sd), "{found}");
    assert_eq!(info(&c, &sd).await["backup"], true);
    let (img, vol) = img_vol;
    call_err(
        &c,
        "Image.prepare",
        prepare(&new_id(), &sd, &img, &vol, Some("vm")),
        CANNOT_RUN_VM,
    )
    .await;
    let (_, _, p) = disk(&sd, "MEMD");
    call_err(&c, "Volume.create", p, NO_MEMORY).await;
    // A pool of the new host cannot take it as master either.
    call_err(
        &c,
        "StoragePool.create",
        json!({"storagepoolID": new_id(), "name": "dr", "masterSdUUID": sd, "masterVersion": 1}),
        BACKUP_CANNOT_BE_MASTER,
    )
    .await;
}

/// A live move into a backup domain is refused: a copy whose source is
/// prepared for a VM (9015); once torn down, the same copy is allowed.
#[tokio::test]
async fn no_live_move_into_a_backup_domain() {
    let storage = tempfile::tempdir().unwrap();
    let conn = ConnectionSpec::local(storage.path());
    let d = Daemon::start(CONFIG);
    let c = d.client().await;
    connect(&c, LOCALFS, &conn).await;
    let normal = create(&c, LOCALFS, &conn, 1, false).await;
    let backup = create(&c, LOCALFS, &conn, 1, true).await;
    let (img, vol) = (new_id(), new_id());
    for sd in [&normal, &backup] {
        call_ok(
            &c,
            "Volume.create",
            volume_params(sd, &img, &vol, 8 * MIB, "RAW", "SPARSE", "d", None),
        )
        .await;
    }
    let sp = new_id();
    call_ok(
        &c,
        "Image.prepare",
        prepare(&sp, &normal, &img, &vol, Some("vm")),
    )
    .await;
    let copy = |job: &str| {
        json!({"job_id": job,
            "source": {"endpoint_type": "div", "sd_id": normal, "img_id": img, "vol_id": vol},
            "destination": {"endpoint_type": "div", "sd_id": backup, "img_id": img, "vol_id": vol, "generation": 0}})
    };
    let job = new_id();
    call_ok(&c, "SDM.copy_data", copy(&job)).await;
    let failed = common::eventually("the live move to fail", common::WAIT, || async {
        let jobs = c
            .call("Host.getJobs", json!({"job_ids": [job]}))
            .await
            .ok()?;
        Some(jobs[&job].clone()).filter(|j| j["status"] == "failed")
    })
    .await;
    assert_eq!(failed["error"]["code"], 9015, "{failed}");
    let md = volume_info(&c, &backup, &img, &vol).await;
    assert_eq!(
        (md["legality"].as_str(), md["generation"].as_i64()),
        (Some("LEGAL"), Some(0)),
        "unchanged"
    );

    // Not in use by a VM any more: the copy into the backup domain is
    // allowed, also while the engine has the source prepared without a
    // purpose (a disk download: not a VM).
    call_ok(
        &c,
        "Image.teardown",
        json!({"storagepoolID": sp, "storagedomainID": normal, "imageID": img}),
    )
    .await;
    call_ok(&c, "Image.prepare", prepare(&sp, &normal, &img, &vol, None)).await;
    let job = new_id();
    call_ok(&c, "SDM.copy_data", copy(&job)).await;
    common::eventually("the copy to finish", common::WAIT, || async {
        let jobs = c
            .call("Host.getJobs", json!({"job_ids": [job]}))
            .await
            .ok()?;
        Some(()).filter(|_| jobs[&job]["status"] == "done")
    })
    .await;
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn glusterfs_backup_domain_rules() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let g = depot_testkit::gluster::Gluster::start().expect("gluster harness");
    let conn = ConnectionSpec {
        connection: g.spec(),
        vfs_type: None,
        mnt_options: None,
        protocol_version: None,
    };
    let d = Daemon::start(CONFIG);
    let _mounts = UnmountGuard(d.dir.path().to_path_buf());
    let c = d.client().await;
    connect(&c, GLUSTERFS, &conn).await;
    let sd = create(&c, GLUSTERFS, &conn, 1, true).await;
    let root = mount_point(&d, GLUSTERFS, &conn.connection);
    check_rules(
        &c,
        &Setup {
            sd,
            conn,
            domain_type: GLUSTERFS,
        },
        &root,
    )
    .await;
}
