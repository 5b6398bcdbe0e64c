//! The verbs VDSM keeps for the SPM refuse on a host that is not the SPM
//! of their domain's pool (docs/storage.md, "Verbs only the SPM runs"):
//! 309 while the pool is not connected here, 654 while this host is not
//! its SPM, and nothing changes on disk; after `spmStart` they run; a
//! domain attached to no pool is free of the check. On LOCALFS (no root
//! needed) and depotd without sanlock, whose SPM role is local.

mod common;
mod ovf_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use common::{Daemon, WAIT};
use depot_client::Client;
use ovf_common::{engine_tar, put, Ids, Via};
use serde_json::{json, Value};
use storage_common::*;

/// A LOCALFS connection with three domains: `sd`, the master of pool
/// `sp`; `sd2`, attached to it; `free`, attached to none. `sd` holds image
/// `img` with volume `vol`.
struct Setup {
    d: Daemon,
    c: Client,
    _data: tempfile::TempDir,
    root: PathBuf,
    sd: String,
    sd2: String,
    free: String,
    sp: String,
    img: String,
    vol: String,
}

impl Setup {
    async fn new() -> Setup {
        let d = Daemon::start(CONFIG);
        let c = d.client().await;
        let data = tempfile::tempdir().unwrap();
        let root = data.path().canonicalize().unwrap();
        let conn = ConnectionSpec::local(&root);
        let st = call_ok(
            &c,
            "StoragePool.connectStorageServer",
            connect_params(LOCALFS, vec![conn.params(&new_id())]),
        )
        .await;
        assert_eq!(statuses(&st), vec![0]);
        let (sd, sd2, free) = (new_id(), new_id(), new_id());
        for (id, name) in [(&sd, "master"), (&sd2, "second"), (&free, "free")] {
            call_ok(
                &c,
                "StorageDomain.create",
                create_domain_params(id, LOCALFS, &conn.connection, name, 512),
            )
            .await;
        }
        // Made before the pool: the domain is attached to none yet.
        let (img, vol) = (new_id(), new_id());
        call_ok(
            &c,
            "Volume.create",
            volume_params(&sd, &img, &vol, 64 * MIB, "COW", "SPARSE", "base", None),
        )
        .await;
        let sp = new_id();
        call_ok(
            &c,
            "StoragePool.create",
            json!({
                "storagepoolID": sp, "name": "spm verbs", "masterSdUUID": sd,
                "masterVersion": 1, "domainList": [sd, sd2],
                "lockRenewalIntervalSec": 5, "leaseTimeSec": 60,
                "ioOpTimeoutSec": 10, "leaseRetries": 3,
            }),
        )
        .await;
        Setup {
            d,
            c,
            _data: data,
            root,
            sd,
            sd2,
            free,
            sp,
            img,
            vol,
        }
    }

    async fn connect_pool(&self) {
        call_ok(
            &self.c,
            "StoragePool.connect",
            json!({
                "storagepoolID": self.sp, "hostID": 1, "scsiKey": self.sp,
                "masterSdUUID": self.sd, "masterVersion": 1,
                "domainDict": {self.sd.clone(): "active", self.sd2.clone(): "active"},
            }),
        )
        .await;
    }

    fn vol_params(&self, extra: Value) -> Value {
        let mut p = vol_ref(&self.sd, &self.img, &self.vol);
        p["storagepoolID"] = json!(self.sp);
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    }

    /// One verb of each group VDSM keeps for the SPM, each on the pool's
    /// domains: volumes, images, the pool's membership, leases, the
    /// domain's own metadata.
    fn spm_verbs(&self) -> Vec<(&'static str, Value)> {
        let (sd, sd2, sp) = (&self.sd, &self.sd2, &self.sp);
        let lease = json!({"sd_id": sd, "lease_id": new_id()});
        vec![
            (
                "Volume.create",
                json!({
                    "storagepoolID": sp, "storagedomainID": sd, "imageID": new_id(),
                    "volumeID": new_id(), "size": (64 * MIB).to_string(),
                    "volFormat": "RAW", "preallocate": "SPARSE", "diskType": "DATA",
                    "desc": "refused", "srcImgUUID": BLANK, "srcVolUUID": BLANK,
                }),
            ),
            (
                "Volume.delete",
                self.vol_params(json!({"postZero": false, "force": false})),
            ),
            (
                "Volume.setDescription",
                self.vol_params(json!({"description": "refused"})),
            ),
            (
                "Volume.setLegality",
                self.vol_params(json!({"legality": "ILLEGAL"})),
            ),
            (
                "Volume.extendSize",
                self.vol_params(json!({"newSize": (128 * MIB).to_string()})),
            ),
            (
                "Image.delete",
                json!({"imageID": self.img, "storagepoolID": sp, "storagedomainID": sd,
                       "postZero": false, "force": false}),
            ),
            (
                "Image.move",
                json!({"imageID": self.img, "storagepoolID": sp, "storagedomainID": sd,
                       "dstSdUUID": sd2, "operation": "COPY", "postZero": false,
                       "force": false}),
            ),
            (
                "StorageDomain.attach",
                json!({"storagedomainID": self.free, "storagepoolID": sp}),
            ),
            (
                "StorageDomain.deactivate",
                json!({"storagedomainID": sd2, "storagepoolID": sp,
                       "masterSdUUID": sd, "masterVersion": 1}),
            ),
            (
                "StorageDomain.detach",
                json!({"storagedomainID": sd2, "storagepoolID": sp}),
            ),
            (
                "StorageDomain.activate",
                json!({"storagedomainID": sd2, "storagepoolID": sp}),
            ),
            (
                "StorageDomain.setDescription",
                json!({"storagedomainID": sd, "description": "refused"}),
            ),
            (
                "StorageDomain.setBackup",
                json!({"storagedomainID": sd2, "backup": true}),
            ),
            ("Lease.create", json!({"lease": lease})),
            ("Lease.delete", json!({"lease": lease})),
            ("Lease.rebuild_leases", json!({"sd_id": sd})),
        ]
    }

    /// Every SPM verb answers `code`, and the storage is as it was.
    async fn all_refused(&self, code: i32, when: &str) {
        let before = snapshot(&self.root);
        for (method, params) in self.spm_verbs() {
            let e = call_err(&self.c, method, params, code).await;
            let want = if code == 654 { "Not SPM" } else { "pool" };
            assert!(e.contains(want), "{method} {when}: {e}");
        }
        assert_same_tree(&before, &snapshot(&self.root), when);
    }
}

/// Refused before the pool is connected (309) and while this host is not
/// its SPM (654), changing nothing; an unattached domain is free; after
/// spmStart each verb runs; spmStop, a disconnect and a restart refuse
/// again.
#[tokio::test]
async fn spm_verbs_need_the_spm_of_their_domains_pool() {
    let mut s = Setup::new().await;
    s.all_refused(309, "the pool created, not connected").await;

    s.connect_pool().await;
    s.all_refused(654, "the pool connected, no spmStart").await;
    let status = call_ok(
        &s.c,
        "StoragePool.getSpmStatus",
        json!({"storagepoolID": s.sp}),
    )
    .await;
    assert_eq!(status["spmStatus"], "Free", "{status}");

    // A domain attached to no pool: free of the check.
    let (fimg, fvol) = (new_id(), new_id());
    call_ok(
        &s.c,
        "Volume.create",
        volume_params(&s.free, &fimg, &fvol, MIB, "RAW", "SPARSE", "free", None),
    )
    .await;
    let mut p = vol_ref(&s.free, &fimg, &fvol);
    p["description"] = json!("still free");
    call_ok(&s.c, "Volume.setDescription", p).await;

    // The SPM: each verb runs.
    start_spm(&s.c, &s.sp).await;
    let (cimg, cvol) = (new_id(), new_id());
    call_ok(
        &s.c,
        "Volume.create",
        volume_params(&s.sd, &cimg, &cvol, MIB, "RAW", "SPARSE", "spm", None),
    )
    .await;
    assert!(Path::new(&s.root)
        .join(&s.sd)
        .join("images")
        .join(&cimg)
        .join(&cvol)
        .is_file());
    call_ok(
        &s.c,
        "Volume.setDescription",
        s.vol_params(json!({"description": "by the SPM"})),
    )
    .await;
    call_ok(
        &s.c,
        "Volume.setLegality",
        s.vol_params(json!({"legality": "LEGAL"})),
    )
    .await;
    call_ok(
        &s.c,
        "Volume.extendSize",
        s.vol_params(json!({"newSize": (128 * MIB).to_string()})),
    )
    .await;
    call_ok(
        &s.c,
        "StorageDomain.setDescription",
        json!({"storagedomainID": s.sd, "description": "by the SPM"}),
    )
    .await;
    for backup in [true, false] {
        call_ok(
            &s.c,
            "StorageDomain.setBackup",
            json!({"storagedomainID": s.sd2, "backup": backup}),
        )
        .await;
        let md = domain_md(&s.root.join(&s.sd2));
        let flag = md.get("DEPOT_BACKUP").map(String::as_str);
        assert_eq!(flag, backup.then_some("true"), "{md:?}");
    }
    let verbs = s.spm_verbs();
    let verb = |name: &str| {
        verbs
            .iter()
            .find(|(m, _)| *m == name)
            .map(|(_, p)| p.clone())
            .unwrap()
    };
    let moved = call_ok(&s.c, "Image.move", verb("Image.move")).await;
    let moved = moved.as_str().unwrap().to_owned();
    let end = common::eventually("the move task to end", WAIT, || {
        let (c, id) = (&s.c, moved.clone());
        async move {
            let st = c.call("Task.getStatus", json!({"taskID": id})).await.ok()?;
            (st["taskState"] == "finished").then_some(st)
        }
    })
    .await;
    assert_eq!(end["taskResult"], "success", "{end}");
    for name in [
        "StorageDomain.attach",
        "StorageDomain.deactivate",
        "StorageDomain.detach",
    ] {
        call_ok(&s.c, name, verb(name)).await;
    }
    call_ok(
        &s.c,
        "StorageDomain.attach",
        json!({"storagedomainID": s.sd2, "storagepoolID": s.sp}),
    )
    .await;
    call_ok(
        &s.c,
        "StorageDomain.activate",
        verb("StorageDomain.activate"),
    )
    .await;
    // No sanlock here: the lease verbs pass the SPM's check and fail for
    // want of sanlock, not of the role.
    for name in ["Lease.create", "Lease.delete", "Lease.rebuild_leases"] {
        let e = s.c.call(name, verb(name)).await.unwrap_err();
        assert!(
            !matches!(e.rpc_code(), Some(309 | 654)),
            "{name} on the SPM: {e}"
        );
    }
    call_ok(&s.c, "Volume.delete", verb("Volume.delete")).await;
    call_ok(
        &s.c,
        "Image.delete",
        json!({"imageID": cimg, "storagepoolID": s.sp, "storagedomainID": s.sd,
               "postZero": false, "force": false}),
    )
    .await;

    // spmStop: refused again, as before.
    call_ok(&s.c, "StoragePool.spmStop", json!({"storagepoolID": s.sp})).await;
    s.all_refused(654, "after spmStop").await;

    // Disconnected: 309.
    call_ok(
        &s.c,
        "StoragePool.disconnect",
        json!({"storagepoolID": s.sp, "hostID": 1, "scsiKey": s.sp}),
    )
    .await;
    s.all_refused(309, "the pool disconnected").await;

    // A restart forgets the pools; the domains' metadata still names
    // theirs, so nothing gets through.
    s.d.stop();
    s.d.restart();
    let c = s.d.client().await;
    let before = snapshot(&s.root);
    let (method, params) = s.spm_verbs().swap_remove(0);
    call_err(&c, method, params, 309).await;
    assert_same_tree(&before, &snapshot(&s.root), "after a restart");
}

/// A forced detach from a pool not connected here is the disaster-recovery
/// path: no SPM is asked for. A plain detach is refused (309).
#[tokio::test]
async fn forced_detach_from_a_pool_not_connected_here_needs_no_spm() {
    let s = Setup::new().await;
    let detach =
        |force: bool| json!({"storagedomainID": s.sd2, "storagepoolID": s.sp, "force": force});
    call_err(&s.c, "StorageDomain.detach", detach(false), 309).await;
    call_ok(&s.c, "StorageDomain.detach", detach(true)).await;
    let md = domain_md(&s.root.join(&s.sd2));
    assert_eq!(md["POOL_UUID"], "", "{md:?}");
    // Unattached now: free of the check.
    let (img, vol) = (new_id(), new_id());
    call_ok(
        &s.c,
        "Volume.create",
        volume_params(&s.sd2, &img, &vol, MIB, "RAW", "SPARSE", "free", None),
    )
    .await;
}

/// The OVF_STORE's upload (VDSM's downloadImageFromStream, an SPM task)
/// on a pool's domain: refused with 654 while this host is not the SPM,
/// the store unchanged; accepted from the SPM.
#[tokio::test]
async fn an_ovf_store_upload_needs_the_spm() {
    let s = Setup::new().await;
    s.connect_pool().await;
    start_spm(&s.c, &s.sp).await;
    let (img, vol) = (new_id(), new_id());
    let mut p = volume_params(
        &s.sd,
        &img,
        &vol,
        128 * MIB,
        "RAW",
        "SPARSE",
        "OVF_STORE",
        None,
    );
    p["diskType"] = json!("OVFS");
    call_ok(&s.c, "Volume.create", p).await;
    call_ok(&s.c, "StoragePool.spmStop", json!({"storagepoolID": s.sp})).await;
    let ids = Ids {
        pool: s.sp.clone(),
        sd: s.sd.clone(),
        img,
        vol,
    };
    let tar = engine_tar(&s.sd, &[], &[]);
    let via = Via::unix(&s.d);
    let before = snapshot(&s.root);
    let r = put(&via, &ids, &tar).await;
    r.assert_error(500, 654, "a PUT on a host that is not the SPM");
    assert_same_tree(&before, &snapshot(&s.root), "a refused PUT");
    start_spm(&s.c, &s.sp).await;
    let r = put(&via, &ids, &tar).await;
    assert_eq!(r.status, 200, "{}", r.show());
}
