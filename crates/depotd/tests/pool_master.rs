//! The pool's master moves (docs/storage.md, "Pools"): `switchMaster`
//! (the SPM's, never onto a backup domain, a crash between its two writes
//! leaving the higher version the master), `refresh` (a host that is not
//! the SPM learns the new master), `destroy` (every domain detached) and
//! `reconstructMaster` (a new master when the old one's storage is gone).
//! On LOCALFS (no root needed) and depotd without sanlock, whose SPM role
//! is local.

mod common;
mod storage_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Daemon, WAIT};
use depot_client::Client;
use depot_os::sanlock::{Area, HostIdState, Lockspace, Resource, Sanlock};
use depot_testkit::sanlock::SanlockDaemon;
use serde_json::{json, Value};
use storage_common::sanlock_pool::{pool, until_acquired, SANLOCK_CONFIG};
use storage_common::*;

/// A LOCALFS connection with three domains in pool `sp`, all active: `sd`
/// its master at version 1, `sd2`, and `bk`, a backup domain.
struct Setup {
    _d: Daemon,
    c: Client,
    _data: tempfile::TempDir,
    root: PathBuf,
    sd: String,
    sd2: String,
    bk: String,
    sp: String,
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
        let (sd, sd2, bk) = (new_id(), new_id(), new_id());
        for (id, name) in [(&sd, "master"), (&sd2, "second"), (&bk, "backup")] {
            call_ok(
                &c,
                "StorageDomain.create",
                create_domain_params(id, LOCALFS, &conn.connection, name, 512),
            )
            .await;
        }
        call_ok(
            &c,
            "StorageDomain.setBackup",
            json!({"storagedomainID": bk, "backup": true}),
        )
        .await;
        let sp = new_id();
        call_ok(
            &c,
            "StoragePool.create",
            json!({
                "storagepoolID": sp, "name": "master moves", "masterSdUUID": sd,
                "masterVersion": 1, "domainList": [sd, sd2, bk],
            }),
        )
        .await;
        Setup {
            _d: d,
            c,
            _data: data,
            root,
            sd,
            sd2,
            bk,
            sp,
        }
    }

    fn dom(&self, sd: &str) -> PathBuf {
        self.root.join(sd)
    }

    fn md(&self, sd: &str) -> BTreeMap<String, String> {
        domain_md(&self.dom(sd))
    }

    /// Every domain active.
    fn all_active(&self) -> Value {
        json!({self.sd.clone(): "active", self.sd2.clone(): "active", self.bk.clone(): "active"})
    }

    fn connect_params(&self, master: &str, version: i64) -> Value {
        json!({
            "storagepoolID": self.sp, "hostID": 1, "scsiKey": self.sp,
            "masterSdUUID": master, "masterVersion": version,
            "domainDict": self.all_active(),
        })
    }

    async fn connect(&self) {
        call_ok(
            &self.c,
            "StoragePool.connect",
            self.connect_params(&self.sd, 1),
        )
        .await;
    }

    async fn disconnect(&self) {
        call_ok(
            &self.c,
            "StoragePool.disconnect",
            json!({"storagepoolID": self.sp, "hostID": 1, "scsiKey": self.sp}),
        )
        .await;
    }

    fn switch(&self, old: &str, new: &str, version: i64) -> Value {
        json!({
            "storagepoolID": self.sp, "oldMasterUUID": old,
            "newMasterUUID": new, "masterVersion": version,
        })
    }

    /// The pool's master and version as getInfo shows them.
    async fn master(&self) -> (String, i64) {
        let info = call_ok(
            &self.c,
            "StoragePool.getInfo",
            json!({"storagepoolID": self.sp}),
        )
        .await;
        (
            info["info"]["master_uuid"].as_str().unwrap().to_owned(),
            info["info"]["master_ver"].as_i64().unwrap(),
        )
    }

    /// `(ROLE, MASTER_VERSION, POOL_UUID)` of domain `sd`.
    fn role(&self, sd: &str) -> (String, String, String) {
        let md = self.md(sd);
        let get = |k: &str| md.get(k).cloned().unwrap_or_default();
        (get("ROLE"), get("MASTER_VERSION"), get("POOL_UUID"))
    }
}

/// Rewrites domain `dom`'s metadata with `changes`, sealed as VDSM seals
/// it (docs/formats.md): what another host, or a crash between two
/// writes, leaves on the storage.
fn write_md(dom: &Path, changes: &[(&str, &str)]) {
    let mut kv = domain_md(dom);
    for (k, v) in changes {
        kv.insert((*k).to_owned(), (*v).to_owned());
    }
    let lines: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let seal = sha1_hex(lines.concat().as_bytes());
    let text = format!("{}\n_SHA_CKSUM={seal}\n", lines.join("\n"));
    std::fs::write(domain_md_path(dom), text).unwrap();
    check_seal(&std::fs::read_to_string(domain_md_path(dom)).unwrap());
}

/// A switchMaster task runs to `finished`/`success`; its id.
async fn switch_ok(c: &Client, params: Value) -> String {
    let task = call_ok(c, "StoragePool.switchMaster", params).await;
    let id = task.as_str().expect("switchMaster answers a task id");
    let end = common::eventually("the switchMaster task to end", WAIT, || async move {
        let st = c.call("Task.getStatus", json!({"taskID": id})).await.ok()?;
        (st["taskState"] == "finished").then_some(st)
    })
    .await;
    assert_eq!(end["taskResult"], "success", "{end}");
    id.to_string()
}

/// switchMaster is the SPM's (654 before spmStart), never moves the role
/// onto a backup domain (319), wants a version above the pool's (324) and
/// another domain than the master (1000), each refusal changing nothing;
/// then it moves the master: getInfo and both domains' metadata agree, and
/// repeating the finished switch succeeds.
#[tokio::test]
async fn switch_master_moves_the_master_role() {
    let s = Setup::new().await;
    s.connect().await;
    let refused = [
        (s.switch(&s.sd, &s.sd2, 2), 654, "not SPM"),
        (s.switch(&s.sd, &s.bk, 2), 319, "a backup domain"),
        (s.switch(&s.sd, &s.sd2, 1), 324, "version not above"),
        (s.switch(&s.sd2, &s.bk, 2), 324, "not the master"),
        (s.switch(&s.sd, &s.sd, 2), 1000, "the master itself"),
    ];
    for (i, (params, code, why)) in refused.into_iter().enumerate() {
        if i == 1 {
            start_spm(&s.c, &s.sp).await;
        }
        let before = snapshot(&s.root);
        let e = call_err(&s.c, "StoragePool.switchMaster", params, code).await;
        assert_same_tree(&before, &snapshot(&s.root), why);
        assert_eq!(s.master().await, (s.sd.clone(), 1), "{why}: {e}");
    }

    // Not active in the pool (369), not in it at all (353).
    let dom_op = json!({"storagedomainID": s.sd2, "storagepoolID": s.sp});
    call_ok(&s.c, "StorageDomain.deactivate", dom_op.clone()).await;
    let free = new_id();
    let conn = s.root.to_str().unwrap().to_owned();
    call_ok(
        &s.c,
        "StorageDomain.create",
        create_domain_params(&free, LOCALFS, &conn, "free", 512),
    )
    .await;
    for (new, code) in [(&s.sd2, 369), (&free, 353)] {
        let before = snapshot(&s.root);
        call_err(
            &s.c,
            "StoragePool.switchMaster",
            s.switch(&s.sd, new, 2),
            code,
        )
        .await;
        assert_same_tree(&before, &snapshot(&s.root), "not an active pool domain");
    }
    call_ok(&s.c, "StorageDomain.activate", dom_op).await;

    let t = switch_ok(&s.c, s.switch(&s.sd, &s.sd2, 2)).await;
    assert_eq!(s.master().await, (s.sd2.clone(), 2));
    assert_eq!(s.role(&s.sd2), ("Master".into(), "2".into(), s.sp.clone()));
    assert_eq!(s.role(&s.sd), ("Regular".into(), "0".into(), s.sp.clone()));
    // The switch's task is on the new master, where the next SPM looks
    // (docs/storage.md "SPM tasks").
    let task_on = |sd: &str, t: &str| {
        s.dom(sd)
            .join("master")
            .join("tasks")
            .join(format!("{t}.json"))
    };
    assert!(task_on(&s.sd2, &t).is_file());
    assert!(!task_on(&s.sd, &t).exists());
    // Repeated: succeeds, nothing changes but its task, which Task.clear
    // removes.
    let before = snapshot(&s.root);
    let t = switch_ok(&s.c, s.switch(&s.sd, &s.sd2, 2)).await;
    assert!(task_on(&s.sd2, &t).is_file());
    call_ok(&s.c, "Task.clear", json!({"taskID": t})).await;
    assert_same_tree(&before, &snapshot(&s.root), "a repeated switch");
    assert_eq!(s.master().await, (s.sd2.clone(), 2));
    // And the new master is the one to connect with.
    s.disconnect().await;
    call_err(&s.c, "StoragePool.connect", s.connect_params(&s.sd, 1), 324).await;
    call_ok(&s.c, "StoragePool.connect", s.connect_params(&s.sd2, 2)).await;
    assert_eq!(s.master().await, (s.sd2.clone(), 2));
}

/// A switch interrupted after its first write (the new master written, the
/// old one not demoted yet): both claim the role, and connect takes the
/// higher version's only, refusing the stale one with 324 and changing
/// nothing; the SPM repeating the switch finishes it.
#[tokio::test]
async fn an_interrupted_switch_leaves_the_higher_version_master() {
    let s = Setup::new().await;
    write_md(
        &s.dom(&s.sd2),
        &[("ROLE", "Master"), ("MASTER_VERSION", "2")],
    );
    let before = snapshot(&s.root);
    let e = call_err(&s.c, "StoragePool.connect", s.connect_params(&s.sd, 1), 324).await;
    assert!(e.contains(&s.sd2), "names the master: {e}");
    assert_same_tree(&before, &snapshot(&s.root), "a refused connect");
    call_err(
        &s.c,
        "StoragePool.getInfo",
        json!({"storagepoolID": s.sp}),
        309,
    )
    .await;

    call_ok(&s.c, "StoragePool.connect", s.connect_params(&s.sd2, 2)).await;
    assert_eq!(s.master().await, (s.sd2.clone(), 2));
    start_spm(&s.c, &s.sp).await;
    switch_ok(&s.c, s.switch(&s.sd, &s.sd2, 2)).await;
    assert_eq!(s.role(&s.sd), ("Regular".into(), "0".into(), s.sp.clone()));
    assert_eq!(s.role(&s.sd2), ("Master".into(), "2".into(), s.sp.clone()));
}

/// A domain that still claims the master role at a version below the
/// pool's (a stale claim: another host's half-done reconstruct, a
/// hand-restored backup) is not a finished switch: naming it as the new
/// master with its own version is refused (324), and neither the pool's
/// master nor the SPM's lease moves to it.
#[tokio::test]
async fn a_stale_master_claim_does_not_pass_for_a_finished_switch() {
    let s = Setup::new().await;
    s.connect().await;
    start_spm(&s.c, &s.sp).await;
    switch_ok(&s.c, s.switch(&s.sd, &s.sd2, 5)).await;
    assert_eq!(s.master().await, (s.sd2.clone(), 5));
    write_md(
        &s.dom(&s.sd),
        &[("ROLE", "Master"), ("MASTER_VERSION", "3")],
    );
    let before = snapshot(&s.root);
    call_err(
        &s.c,
        "StoragePool.switchMaster",
        s.switch(&s.bk, &s.sd, 3),
        324,
    )
    .await;
    assert_eq!(s.master().await, (s.sd2.clone(), 5));
    assert_same_tree(&before, &snapshot(&s.root), "a refused switch");
}

/// Once the new master is written, the switch is done even when the old
/// master cannot be demoted yet (here its metadata is made immutable):
/// the new master's higher version wins at connect, so this host must
/// hold the role there, not give the lease up and stay on the old one. A
/// repeat of the verb finishes the demotion.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn a_switch_whose_old_master_cannot_be_demoted_is_done_on_the_new_one() {
    depot_testkit::require_root();
    let s = Setup::new().await;
    s.connect().await;
    start_spm(&s.c, &s.sp).await;
    let old_md = domain_md_path(&s.dom(&s.sd));
    let chattr = |flag: &str| {
        let st = std::process::Command::new("chattr")
            .arg(flag)
            .arg(&old_md)
            .status()
            .expect("chattr");
        assert!(st.success(), "chattr {flag} {}", old_md.display());
    };
    chattr("+i");
    let switched =
        s.c.call("StoragePool.switchMaster", s.switch(&s.sd, &s.sd2, 2))
            .await;
    let master = s.master().await;
    chattr("-i");
    switched.expect("switchMaster");
    assert_eq!(
        master,
        (s.sd2.clone(), 2),
        "the pool's master after the switch"
    );
    assert_eq!(s.role(&s.sd2), ("Master".into(), "2".into(), s.sp.clone()));
    assert_eq!(
        s.role(&s.sd).0,
        "Master",
        "the old master could not be demoted"
    );
    switch_ok(&s.c, s.switch(&s.sd, &s.sd2, 2)).await;
    assert_eq!(s.role(&s.sd), ("Regular".into(), "0".into(), s.sp.clone()));
}

/// A host that is not the SPM learns the master another host's SPM
/// switched to (the metadata written as that SPM writes it) with refresh;
/// a refresh naming the old master is 324 and changes nothing.
#[tokio::test]
async fn refresh_learns_the_master_the_spm_switched_to() {
    let s = Setup::new().await;
    s.connect().await;
    // The SPM elsewhere: the new master first, then the old one demoted.
    write_md(
        &s.dom(&s.sd2),
        &[("ROLE", "Master"), ("MASTER_VERSION", "2")],
    );
    write_md(
        &s.dom(&s.sd),
        &[("ROLE", "Regular"), ("MASTER_VERSION", "0")],
    );
    assert_eq!(s.master().await, (s.sd.clone(), 1), "not re-read by itself");
    let refresh =
        |sd: &str, v: i64| json!({"storagepoolID": s.sp, "masterSdUUID": sd, "masterVersion": v});
    call_err(&s.c, "StoragePool.refresh", refresh(&s.sd, 1), 324).await;
    call_err(&s.c, "StoragePool.refresh", refresh(&s.sd2, 3), 324).await;
    assert_eq!(s.master().await, (s.sd.clone(), 1));
    call_ok(&s.c, "StoragePool.refresh", refresh(&s.sd2, 2)).await;
    assert_eq!(s.master().await, (s.sd2.clone(), 2));
    // Not connected: 309.
    s.disconnect().await;
    call_err(&s.c, "StoragePool.refresh", refresh(&s.sd2, 2), 309).await;
}

/// destroy needs the pool's host id (700), checked first as VDSM does,
/// this host its SPM (654) and no active domain but the master (347),
/// each refusal changing nothing; it leaves every domain unattached (the master too:
/// ROLE Regular, MASTER_VERSION 0), the pool unknown here, and the
/// domains free for a new pool.
#[tokio::test]
async fn destroy_detaches_every_domain() {
    let s = Setup::new().await;
    s.connect().await;
    let destroy = |host_id: i64| json!({"storagepoolID": s.sp, "hostID": host_id, "scsiKey": s.sp});
    let before = snapshot(&s.root);
    // VDSM's order: the host id (700) before the SPM's role (654).
    call_err(&s.c, "StoragePool.destroy", destroy(2), 700).await;
    call_err(&s.c, "StoragePool.destroy", destroy(1), 654).await;
    start_spm(&s.c, &s.sp).await;
    call_err(&s.c, "StoragePool.destroy", destroy(2), 700).await;
    // Active domains other than the master: 347 (VDSM's detachSD), as
    // for a detach; the engine deactivates them first.
    call_err(&s.c, "StoragePool.destroy", destroy(1), 347).await;
    call_err(
        &s.c,
        "StorageDomain.detach",
        json!({"storagedomainID": s.sd2, "storagepoolID": s.sp}),
        347,
    )
    .await;
    assert_same_tree(&before, &snapshot(&s.root), "a refused destroy");
    for sd in [&s.sd2, &s.bk] {
        call_ok(
            &s.c,
            "StorageDomain.deactivate",
            json!({"storagedomainID": sd, "storagepoolID": s.sp,
                   "masterSdUUID": s.sd, "masterVersion": 1}),
        )
        .await;
    }

    call_ok(&s.c, "StoragePool.destroy", destroy(1)).await;
    for sd in [&s.sd, &s.sd2, &s.bk] {
        let (role, _, pool) = s.role(sd);
        assert_eq!((role.as_str(), pool.as_str()), ("Regular", ""), "{sd}");
    }
    assert_eq!(s.md(&s.sd)["MASTER_VERSION"], "0");
    call_err(
        &s.c,
        "StoragePool.getInfo",
        json!({"storagepoolID": s.sp}),
        309,
    )
    .await;
    // Gone: a repeat is 309.
    call_err(&s.c, "StoragePool.destroy", destroy(1), 309).await;

    let sp2 = new_id();
    call_ok(
        &s.c,
        "StoragePool.create",
        json!({
            "storagepoolID": sp2, "name": "after destroy", "masterSdUUID": s.sd2,
            "masterVersion": 1, "domainList": [s.sd2, s.sd],
        }),
    )
    .await;
    call_ok(
        &s.c,
        "StoragePool.connect",
        json!({
            "storagepoolID": sp2, "hostID": 1, "scsiKey": sp2,
            "masterSdUUID": s.sd2, "masterVersion": 1,
            "domainDict": {s.sd2.clone(): "active", s.sd.clone(): "active"},
        }),
    )
    .await;
    assert_eq!(s.role(&s.sd), ("Regular".into(), "0".into(), sp2.clone()));
}

/// reconstructMaster, disaster recovery: refused while the pool is
/// connected here (325) and onto a backup domain (319), changing nothing;
/// with the master's storage gone, it makes another domain the master at
/// the new version, and connect with it works.
#[tokio::test]
async fn reconstruct_master_after_the_master_is_gone() {
    let s = Setup::new().await;
    let reconstruct = |master: &str, version: i64| {
        json!({
            "storagepoolID": s.sp, "hostId": 1, "name": "reconstructed",
            "masterSdUUID": master, "masterVersion": version,
            "domainDict": s.all_active(),
            "lockRenewalIntervalSec": 5, "leaseTimeSec": 60,
            "ioOpTimeoutSec": 10, "leaseRetries": 3,
        })
    };
    s.connect().await;
    let before = snapshot(&s.root);
    call_err(
        &s.c,
        "StoragePool.reconstructMaster",
        reconstruct(&s.sd2, 5),
        325,
    )
    .await;
    s.disconnect().await;
    call_err(
        &s.c,
        "StoragePool.reconstructMaster",
        reconstruct(&s.bk, 5),
        319,
    )
    .await;
    let mut outside = reconstruct(&s.sd2, 5);
    outside["domainDict"] = json!({s.sd.clone(): "active"});
    call_err(&s.c, "StoragePool.reconstructMaster", outside, 1000).await;
    assert_same_tree(&before, &snapshot(&s.root), "a refused reconstruct");

    // The master's storage is gone.
    std::fs::remove_dir_all(s.dom(&s.sd)).unwrap();
    let e =
        s.c.call("StoragePool.connect", s.connect_params(&s.sd, 1))
            .await
            .unwrap_err();
    assert!(e.to_string().contains(&s.sd), "{e}");
    call_ok(
        &s.c,
        "StoragePool.reconstructMaster",
        reconstruct(&s.sd2, 5),
    )
    .await;
    assert_eq!(s.role(&s.sd2), ("Master".into(), "5".into(), s.sp.clone()));
    assert_eq!(s.role(&s.bk).2, s.sp, "the others stay in the pool");
    let mut params = s.connect_params(&s.sd2, 5);
    params["domainDict"] = json!({s.sd2.clone(): "active", s.bk.clone(): "active"});
    call_ok(&s.c, "StoragePool.connect", params).await;
    assert_eq!(s.master().await, (s.sd2.clone(), 5));
    start_spm(&s.c, &s.sp).await;
}

/// The SDM leases of `sd`'s lockspace the sanlock daemon's clients hold.
fn sdm_held(daemon: &SanlockDaemon, sd: &str) -> Vec<String> {
    let prefix = format!("{sd}:SDM:");
    daemon
        .resources()
        .expect("sanlock client status")
        .into_iter()
        .filter(|l| l.starts_with(&prefix))
        .collect()
}

/// With sanlock, the SPM's lease moves with the master (VDSM's
/// masterMigrate takes the new master's before it writes): after the
/// switch this host holds the SDM lease on the new master and not on the
/// old, so no other host can become SPM on the new master while this one
/// is; spmStop gives the new one back.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn switch_master_moves_the_spm_lease() {
    depot_testkit::require_root();
    let daemon = SanlockDaemon::start().expect("sanlock daemon");
    let d = Daemon::start(SANLOCK_CONFIG);
    let p = pool(&d).await;
    let conn = p.dom.parent().unwrap().to_str().unwrap().to_owned();
    let sd2 = new_id();
    call_ok(
        &p.c,
        "StorageDomain.create",
        create_domain_params(&sd2, LOCALFS, &conn, "second", 512),
    )
    .await;
    call_ok(
        &p.c,
        "StoragePool.connect",
        json!({"storagepoolID": p.sp, "hostID": 3, "scsiKey": p.sp, "masterSdUUID": p.sd,
               "masterVersion": 1, "domainDict": {p.sd.clone(): "active"}}),
    )
    .await;
    start_spm_within(&p.c, &p.sp, Duration::from_secs(300)).await;
    let dom_op = json!({"storagedomainID": sd2, "storagepoolID": p.sp});
    call_ok(&p.c, "StorageDomain.attach", dom_op.clone()).await;
    call_ok(&p.c, "StorageDomain.activate", dom_op).await;
    until_acquired(&p.c, &sd2).await;
    assert_eq!(sdm_held(&daemon, &p.sd).len(), 1);
    assert!(sdm_held(&daemon, &sd2).is_empty());

    switch_ok(
        &p.c,
        json!({"storagepoolID": p.sp, "oldMasterUUID": p.sd, "newMasterUUID": sd2,
               "masterVersion": 2}),
    )
    .await;
    assert_eq!(sdm_held(&daemon, &sd2).len(), 1, "the new master's lease");
    assert!(sdm_held(&daemon, &p.sd).is_empty(), "the old one released");
    let status = call_ok(
        &p.c,
        "StoragePool.getSpmStatus",
        json!({"storagepoolID": p.sp}),
    )
    .await;
    assert_eq!(status["spmStatus"], "SPM", "{status}");

    call_ok(&p.c, "StoragePool.spmStop", json!({"storagepoolID": p.sp})).await;
    assert!(sdm_held(&daemon, &sd2).is_empty());
    call_ok(
        &p.c,
        "StoragePool.disconnect",
        json!({"storagepoolID": p.sp, "hostID": 3, "scsiKey": p.sp}),
    )
    .await;
    drop(d);
    drop(daemon);
}

/// Another holder of `sd`'s SDM lease: this test process, as `host_id`
/// in the same daemon (which joins a lockspace with one host id only, so
/// depotd's call must use the same), naming the domain as depotd does to
/// sanlock (through the repository's mount link). The client, the
/// lockspace and the lease.
async fn hold_sdm(d: &Daemon, sd: &str, host_id: u64) -> (Sanlock, Lockspace, Resource) {
    let mnt = repository(d).join("mnt");
    let dom_md = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().path().join(sd).join("dom_md"))
        .find(|l| l.exists())
        .expect("the domain under the repository's mnt");
    let other = Sanlock::load(None, Duration::from_secs(60));
    let ls = Lockspace::new(sd.to_owned(), host_id, Area::new(dom_md.join("ids"), 0));
    other.add_lockspace(&ls).unwrap();
    common::eventually("the test's host id", Duration::from_secs(180), || async {
        (other.inq_lockspace(&ls).ok()? == HostIdState::Held).then_some(())
    })
    .await;
    let sdm = Resource::new(sd.to_owned(), "SDM", Area::new(dom_md.join("leases"), MIB));
    other.acquire(&sdm, None).unwrap();
    (other, ls, sdm)
}

/// With sanlock, reconstructMaster holds the SPM's lease of the future
/// master around its writes (VDSM's acquireClusterLock): while another
/// holder has it (this test process, as host id 4 in the same daemon) the
/// call is refused with 651 and nothing is written; once free it runs, and
/// gives the lease back.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn reconstruct_master_holds_the_spm_lease_of_the_new_master() {
    depot_testkit::require_root();
    let daemon = SanlockDaemon::start().expect("sanlock daemon");
    let d = Daemon::start(SANLOCK_CONFIG);
    let p = pool(&d).await;
    let conn = p.dom.parent().unwrap().to_owned();
    let sd2 = new_id();
    call_ok(
        &p.c,
        "StorageDomain.create",
        create_domain_params(&sd2, LOCALFS, conn.to_str().unwrap(), "second", 512),
    )
    .await;
    let (other, _, sdm) = hold_sdm(&d, &sd2, 4).await;

    let reconstruct = json!({
        "storagepoolID": p.sp, "hostId": 4, "name": "reconstructed",
        "masterSdUUID": sd2, "masterVersion": 5,
        "domainDict": {sd2.clone(): "active", p.sd.clone(): "active"},
        "lockRenewalIntervalSec": 5, "leaseTimeSec": 60,
        "ioOpTimeoutSec": 10, "leaseRetries": 3,
    });
    // The metadata, not the tree: sanlock renews the delta leases in `ids`.
    let mds = || [domain_md(&conn.join(&sd2)), domain_md(&p.dom)];
    let before = mds();
    call_err(
        &p.c,
        "StoragePool.reconstructMaster",
        reconstruct.clone(),
        651,
    )
    .await;
    assert_eq!(before, mds(), "a reconstruct without the lease wrote");

    other.release(&sdm).unwrap();
    call_ok(&p.c, "StoragePool.reconstructMaster", reconstruct).await;
    let md = domain_md(&conn.join(&sd2));
    assert_eq!(
        (md["ROLE"].as_str(), md["MASTER_VERSION"].as_str()),
        ("Master", "5")
    );
    assert!(sdm_held(&daemon, &sd2).is_empty(), "given back");
    drop(other);
    drop(d);
    drop(daemon);
}

/// With sanlock, a forced detach from a pool not connected here takes
/// the domain's own SDM lease around its write (VDSM's cluster lock, with
/// its reserved host id 1000 on a host in no pool): while another holder
/// has it (a live SPM: the pool is not gone; here this test process as
/// host id 1000 in the same daemon) the detach is refused with 651 and
/// nothing is written; once free it runs and gives the lease back; a
/// detach that joined the lockspace for it leaves it after.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn a_forced_detach_holds_the_domains_lease() {
    depot_testkit::require_root();
    let daemon = SanlockDaemon::start().expect("sanlock daemon");
    let d = Daemon::start(SANLOCK_CONFIG);
    let p = pool(&d).await;
    let (other, ls, sdm) = hold_sdm(&d, &p.sd, 1000).await;
    let detach = json!({"storagedomainID": p.sd, "storagepoolID": p.sp, "force": true});
    let before = domain_md(&p.dom);
    call_err(&p.c, "StorageDomain.detach", detach.clone(), 651).await;
    assert_eq!(
        before,
        domain_md(&p.dom),
        "a detach without the lease wrote"
    );

    other.release(&sdm).unwrap();
    call_ok(&p.c, "StorageDomain.detach", detach.clone()).await;
    assert_eq!(domain_md(&p.dom)["POOL_UUID"], "");
    assert!(sdm_held(&daemon, &p.sd).is_empty(), "the lease given back");

    // Attached again (as the lost pool left it), and the lockspace left by
    // the test: depotd joins it for the detach and leaves it after.
    write_md(&p.dom, &[("POOL_UUID", p.sp.as_str())]);
    other.rem_lockspace(&ls, false).unwrap();
    let reserved = format!("{}:1000:", p.sd);
    let joined = || {
        let lines = daemon.lockspaces().expect("sanlock client status");
        lines.iter().any(|l| l.starts_with(&reserved))
    };
    assert!(!joined(), "the test's host id left");
    call_ok(&p.c, "StorageDomain.detach", detach).await;
    assert_eq!(domain_md(&p.dom)["POOL_UUID"], "");
    assert!(!joined(), "the reserved host id left after the detach");
    drop(other);
    drop(d);
    drop(daemon);
}
