//! Volume leases (issue 16, "Leases for jobs and VMs"): a new volume's
//! `.lease` is a sanlock resource on a domain with a lockspace, written
//! by the sanlock daemon or, without one, by `sanlock direct init`; and
//! `SDM.copy_data` and `SDM.update_volume` hold the destination's lease
//! while they work, release it however they end, and fail with 651,
//! changing nothing, when another process holds it. Real sanlock daemon
//! (depot_testkit::sanlock), real depotd, LOCALFS.

mod common;
mod copy_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use common::{eventually, Daemon};
use copy_common::*;
use depot_client::Client;
use depot_os::sanlock::{direct_read_leader, Area, DirectConfig, Resource, Sanlock};
use depot_testkit::sanlock::{NoDaemon, SanlockDaemon};
use serde_json::{json, Value};
use storage_common::sanlock_pool::{
    create_pool, pool_connect_params, until_acquired, ACQUIRE_WAIT, SANLOCK_CONFIG,
};
use storage_common::*;

/// Asserts that `v`'s `.lease` holds the sanlock resource named by the
/// volume in the domain's lockspace, at 0, one alignment (1 MiB) long:
/// what `sanlock direct read_leader` reads there.
fn assert_volume_lease(v: &Vol) {
    let lease = v.path.with_file_name(format!("{}.lease", v.vol));
    let leader = direct_read_leader(
        &DirectConfig::default(),
        &v.sd,
        &v.vol,
        true,
        &Area::new(&lease, 0),
    )
    .unwrap_or_else(|e| panic!("no sanlock resource in {}: {e}", lease.display()));
    assert_eq!(leader["magic"], "0x6152010", "{leader:?}");
    assert_eq!(leader["space_name"], v.sd, "{leader:?}");
    assert_eq!(leader["resource_name"], v.vol, "{leader:?}");
    assert_eq!(leader["sector_size"], "512", "{leader:?}");
    assert_eq!(leader["max_hosts"], "2000", "{leader:?}");
    assert_eq!(std::fs::metadata(&lease).unwrap().len(), MIB);
}

fn lease_path(v: &Vol) -> std::path::PathBuf {
    v.path.with_file_name(format!("{}.lease", v.vol))
}

/// Without a sanlock daemon, the lease is formatted by `sanlock direct
/// init` (depotd's child); with sanlock disabled the file stays empty.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn a_new_volume_lease_is_a_sanlock_resource_without_the_daemon_too() {
    depot_testkit::require_root();
    // No daemon may run meanwhile: this must be the direct path.
    let _no_daemon = NoDaemon::hold().expect("the sanlock lock");
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&format!("{CONFIG}[sanlock]\nenabled = true\n"));
    let c = d.client().await;
    let dom = local_domain(&c, &d, dir.path()).await;
    for (format, alloc) in [
        ("RAW", "SPARSE"),
        ("COW", "SPARSE"),
        ("RAW", "PREALLOCATED"),
    ] {
        let v = dom.new_volume(&c, 8 * MIB, format, alloc).await;
        assert_volume_lease(&v);
    }
    // A snapshot layer too.
    let base = dom.new_volume(&c, 8 * MIB, "COW", "SPARSE").await;
    let top = dom
        .create_volume(&c, &base.img, 8 * MIB, "COW", "SPARSE", Some(&base.vol))
        .await;
    assert_volume_lease(&top);
    // Deleting the volume removes its lease file, as before.
    call_ok(&c, "Volume.delete", vol_ref(&top.sd, &top.img, &top.vol)).await;
    assert!(!lease_path(&top).exists() && !top.path.exists());
    drop(d);

    // sanlock disabled: no lockspace, and the lease file stays empty.
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&format!("{CONFIG}[sanlock]\nenabled = false\n"));
    let c = d.client().await;
    let dom = local_domain(&c, &d, dir.path()).await;
    let v = dom.new_volume(&c, 8 * MIB, "RAW", "SPARSE").await;
    assert_eq!(std::fs::metadata(lease_path(&v)).unwrap().len(), 0);
}

struct Pool {
    c: Client,
    dom: Dom,
    sp: String,
}

/// A LOCALFS domain (with its lockspace), master of a new pool connected
/// with host id 3; returns once the host id is acquired and this host is
/// the SPM (volumes on a pool's domain are the SPM's to create).
async fn connected_pool(d: &Daemon, dir: &Path) -> Pool {
    let c = d.client().await;
    let dom = local_domain(&c, d, dir).await;
    let sp = create_pool(&c, &dom.sd).await;
    call_ok(
        &c,
        "StoragePool.connect",
        pool_connect_params(&sp, &dom.sd, 3),
    )
    .await;
    until_acquired(&c, &dom.sd).await;
    start_spm_within(&c, &sp, ACQUIRE_WAIT).await;
    Pool { c, dom, sp }
}

/// The volume leases of `sd` the daemon's clients hold (`sanlock client
/// status`: `LOCKSPACE:NAME:PATH:OFFSET:LVER p PID`).
fn held(daemon: &SanlockDaemon, sd: &str, vol: &str) -> Vec<String> {
    let prefix = format!("{sd}:{vol}:");
    daemon
        .resources()
        .expect("sanlock client status")
        .into_iter()
        .filter(|l| l.starts_with(&prefix))
        .collect()
}

fn update_params(v: &Vol, generation: u32, new_generation: u32) -> Value {
    json!({"job_id": new_id(),
        "vol_info": {"sd_id": v.sd, "img_id": v.img, "vol_id": v.vol, "generation": generation},
        "vol_attr": {"legality": "ILLEGAL", "generation": new_generation}})
}

/// The destination's `.meta` bytes and data digest: what "untouched" means.
fn snapshot(v: &Vol) -> (Vec<u8>, String) {
    (std::fs::read(v.meta()).unwrap(), file_digest(&v.path))
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn copy_data_and_update_volume_hold_the_destination_lease() {
    depot_testkit::require_root();
    let daemon = SanlockDaemon::start().expect("sanlock daemon");
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(SANLOCK_CONFIG);
    let p = connected_pool(&d, dir.path()).await;
    let (c, dom) = (&p.c, &p.dom);

    // Made with the daemon running: the daemon wrote the leases.
    let size = 256 * MIB;
    let src = dom.new_volume(c, size, "RAW", "SPARSE").await;
    let dst = dom.new_volume(c, size, "RAW", "SPARSE").await;
    assert_volume_lease(&dst);
    write_random(&src.path, 0, size, 7);
    let res = Resource::new(
        dst.sd.clone(),
        dst.vol.clone(),
        Area::new(lease_path(&dst), 0),
    );
    // The test's own client: another process, with its own registration.
    let other = Sanlock::load(None, Duration::from_secs(30));
    assert_eq!(other.read_lease(&res).unwrap().lver, 0, "never acquired");

    // 1. Another process holds the destination's lease: the copy and the
    // fence fail with 651 and the destination is untouched.
    other.acquire(&res, None).expect("the test takes the lease");
    let before = snapshot(&dst);
    let id = start_copy(c, &src, &dst, Some(0)).await;
    let e = wait_failed(c, &id).await;
    assert_eq!(e["code"], 651, "{e}");
    assert!(
        e["message"].as_str().unwrap_or("").contains(&dst.vol),
        "{e}"
    );
    assert_eq!(snapshot(&dst), before, "the destination changed");
    let fence = update_params(&dst, 0, 5);
    call_ok(c, "SDM.update_volume", fence.clone()).await;
    let e = wait_failed(c, fence["job_id"].as_str().unwrap()).await;
    assert_eq!(e["code"], 651, "{e}");
    assert_eq!(snapshot(&dst), before, "the destination changed");
    other.release(&res).expect("the test gives the lease back");
    let lver = other.read_lease(&res).unwrap().lver;

    // 2. The copy holds the lease while it runs (depotd's registration),
    // and an abort releases it.
    let id = start_copy(c, &src, &dst, Some(0)).await;
    wait_progress(c, &id, 1, Duration::from_secs(120)).await;
    let during = held(&daemon, &dst.sd, &dst.vol);
    assert_eq!(during.len(), 1, "{during:?}");
    assert!(
        during[0].ends_with(&format!(" p {}", d.pid())),
        "held by depotd: {during:?}"
    );
    call_ok(c, "Host.abortJob", json!({"job_id": id})).await;
    let j = wait_job(c, &id, JOB_WAIT).await;
    assert_eq!(j["status"], "aborted", "{j}");
    eventually(
        "the lease released after the abort",
        Duration::from_secs(30),
        || async { held(&daemon, &dst.sd, &dst.vol).is_empty().then_some(()) },
    )
    .await;

    // 3. A copy that succeeds releases it at the end; the fence takes it
    // too (each acquire raises the lease's version).
    copy_ok(c, &src, &dst, Some(0)).await;
    assert!(held(&daemon, &dst.sd, &dst.vol).is_empty());
    assert_same_bytes(&src.path, &dst.path, size);
    let fence = update_params(&dst, 1, 9);
    call_ok(c, "SDM.update_volume", fence.clone()).await;
    wait_done(c, fence["job_id"].as_str().unwrap()).await;
    assert!(held(&daemon, &dst.sd, &dst.vol).is_empty());
    assert_eq!(dst.md()["GEN"], "9");
    let after = other.read_lease(&res).unwrap();
    assert!(after.owners.is_empty(), "{after:?}");
    // The aborted copy, the copy and the fence: three acquisitions.
    assert_eq!(after.lver, lver + 3, "{after:?}");

    // A failed job releases it too: a stale generation (911).
    let id = start_copy(c, &src, &dst, Some(0)).await;
    assert_eq!(wait_failed(c, &id).await["code"], 911);
    assert!(held(&daemon, &dst.sd, &dst.vol).is_empty());
    other
        .acquire(&res, None)
        .expect("free again for another process");
    other.release(&res).unwrap();

    // A volume the pool does not have: 201, as before (not a lease that
    // cannot be found).
    let missing = dom.vol(&dst.img, &new_id());
    let id = start_copy(c, &src, &missing, Some(0)).await;
    assert_eq!(wait_failed(c, &id).await["code"], 201);

    // A volume made before volume leases (an empty `.lease`): no lease to
    // take, the copy goes on as it did then.
    let old = dom.new_volume(c, size, "RAW", "SPARSE").await;
    std::fs::File::create(lease_path(&old)).unwrap();
    copy_ok(c, &src, &old, Some(0)).await;
    assert_same_bytes(&src.path, &old.path, size);

    call_ok(
        c,
        "StoragePool.disconnect",
        json!({"storagepoolID": p.sp, "hostID": 3, "scsiKey": p.sp}),
    )
    .await;
    drop(d);
    drop(daemon);
}

/// `Volume.getInfo`'s `lease`, as VDSM reports it: where the lease is,
/// and who holds it as the sanlock daemon reads it. Free: no owners and
/// no version; while a copy holds the destination's lease: this host's id
/// and the lease's version. With sanlock disabled the key is left out.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn volume_get_info_reports_the_lease_and_its_owner() {
    depot_testkit::require_root();
    let daemon = SanlockDaemon::start().expect("sanlock daemon");
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(SANLOCK_CONFIG);
    let p = connected_pool(&d, dir.path()).await;
    let (c, dom) = (&p.c, &p.dom);

    let size = 256 * MIB;
    let src = dom.new_volume(c, size, "RAW", "SPARSE").await;
    let dst = dom.new_volume(c, size, "RAW", "SPARSE").await;
    write_random(&src.path, 0, size, 11);
    let free = json!({"path": lease_path(&dst).display().to_string(), "offset": 0,
        "owners": [], "version": null});
    let info = volume_info(c, &dst.sd, &dst.img, &dst.vol).await;
    assert_eq!(info["lease"], free, "{info}");

    // Held: the owner is this host's id (the test's own process takes it
    // through this host's daemon, as a copy_data job takes it in depotd;
    // a getInfo of the volume a copy writes waits for the copy's image
    // lock, in depot as in VDSM, so the copy itself cannot be asked).
    let res = Resource::new(
        dst.sd.clone(),
        dst.vol.clone(),
        Area::new(lease_path(&dst), 0),
    );
    let other = Sanlock::load(None, Duration::from_secs(30));
    let lver = other.acquire(&res, None).expect("the test takes the lease");
    let info = volume_info(c, &dst.sd, &dst.img, &dst.vol).await;
    let mut owned = free.clone();
    owned["owners"] = json!([3]);
    owned["version"] = json!(lver);
    assert_eq!(info["lease"], owned, "{info}");
    other.release(&res).unwrap();
    let info = volume_info(c, &dst.sd, &dst.img, &dst.vol).await;
    assert_eq!(info["lease"], free, "{info}");

    // A copy_data job takes and releases it: the version shows it.
    copy_ok(c, &src, &dst, Some(0)).await;
    let info = volume_info(c, &dst.sd, &dst.img, &dst.vol).await;
    assert_eq!(info["lease"], free, "{info}");
    let lease = other.read_lease(&res).unwrap();
    assert_eq!(lease.lver, lver + 1, "{lease:?}");

    // A volume made before volume leases (an empty `.lease`): its place,
    // without owners or version (VDSM: the lease needs repair).
    let old = dom.new_volume(c, 8 * MIB, "RAW", "SPARSE").await;
    std::fs::File::create(lease_path(&old)).unwrap();
    let info = volume_info(c, &old.sd, &old.img, &old.vol).await;
    assert_eq!(
        info["lease"],
        json!({"path": lease_path(&old).display().to_string(), "offset": 0}),
        "{info}"
    );

    call_ok(
        c,
        "StoragePool.disconnect",
        json!({"storagepoolID": p.sp, "hostID": 3, "scsiKey": p.sp}),
    )
    .await;
    drop(d);

    // sanlock disabled: no volume leases, no `lease` key.
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&format!("{CONFIG}[sanlock]\nenabled = false\n"));
    let c = d.client().await;
    let dom = local_domain(&c, &d, dir.path()).await;
    let v = dom.new_volume(&c, 8 * MIB, "RAW", "SPARSE").await;
    let info = volume_info(&c, &v.sd, &v.img, &v.vol).await;
    assert!(info.get("lease").is_none(), "{info}");
    drop(d);
    drop(daemon);
}

/// Swaps `path` for a symlink to a copy of it outside the domain (so that
/// sanlock, following the link, would find a valid lease there and write
/// to it); returns the copy and its bytes. [`unplant`] puts it back.
fn plant_symlink(path: &Path, outside: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let target = outside.join(path.file_name().unwrap());
    std::fs::copy(path, &target).unwrap();
    let saved = path.with_extension("saved");
    std::fs::rename(path, &saved).unwrap();
    std::os::unix::fs::symlink(&target, path).unwrap();
    let bytes = std::fs::read(&target).unwrap();
    (target, bytes)
}

fn unplant(path: &Path) {
    std::fs::remove_file(path).unwrap();
    std::fs::rename(path.with_extension("saved"), path).unwrap();
}

/// The error of a verb that answers with a task born finished or fails at
/// once: `None` when it succeeded.
async fn verb_error(c: &Client, method: &str, params: Value) -> Option<String> {
    let task = match c.call(method, params).await {
        Err(e) => return Some(e.to_string()),
        Ok(task) => task,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let s = call_ok(c, "Task.getStatus", json!({"taskID": task})).await;
        if s["taskState"] == "finished" {
            return (s["taskResult"] != "success").then(|| s.to_string());
        }
        assert!(std::time::Instant::now() < deadline, "task {task}: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// sanlock opens the path it is given, following symlinks, and writes
/// leases there as root: a symlink planted on the storage where a lease
/// file is (a volume's `.lease`, `dom_md/leases`, `dom_md/xleases`) is
/// never handed to it. The verb fails and the file the symlink points to
/// (outside the domain) keeps its bytes.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn sanlock_is_never_handed_a_symlink_planted_on_the_storage() {
    depot_testkit::require_root();
    let daemon = SanlockDaemon::start().expect("sanlock daemon");
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let d = Daemon::start(SANLOCK_CONFIG);
    let p = connected_pool(&d, dir.path()).await;
    let (c, dom) = (&p.c, &p.dom);
    let dom_md = dom.dom.join("dom_md");

    // copy_data's destination lease.
    let src = dom.new_volume(c, 8 * MIB, "RAW", "SPARSE").await;
    let dst = dom.new_volume(c, 8 * MIB, "RAW", "SPARSE").await;
    let (target, bytes) = plant_symlink(&lease_path(&dst), outside.path());
    let id = start_copy(c, &src, &dst, Some(0)).await;
    let e = wait_failed(c, &id).await;
    assert_eq!(e["code"], 651, "{e}");
    assert!(held(&daemon, &dst.sd, &dst.vol).is_empty());
    assert_eq!(std::fs::read(&target).unwrap(), bytes, "written through");
    unplant(&lease_path(&dst));

    // Volume.create: a symlink where the new volume's `.lease` goes.
    let vol = new_id();
    let planted = dom.vol(&src.img, &vol);
    let target = outside.path().join("planted.lease");
    std::fs::copy(lease_path(&src), &target).unwrap();
    let bytes = std::fs::read(&target).unwrap();
    std::os::unix::fs::symlink(&target, lease_path(&planted)).unwrap();
    let params = volume_params(
        &dom.sd,
        &src.img,
        &vol,
        8 * MIB,
        "COW",
        "SPARSE",
        "planted",
        Some(&src.vol),
    );
    let e = verb_error(c, "Volume.create", params).await;
    assert!(
        e.is_some(),
        "Volume.create over a planted symlink succeeded"
    );
    assert_eq!(std::fs::read(&target).unwrap(), bytes, "written through");
    let _ = std::fs::remove_file(lease_path(&planted));

    // Lease.create on `dom_md/xleases`.
    let xleases = dom_md.join("xleases");
    let (target, bytes) = plant_symlink(&xleases, outside.path());
    let lease = json!({"lease": {"sd_id": dom.sd, "lease_id": new_id()}});
    let e = verb_error(c, "Lease.create", lease).await;
    assert!(e.is_some(), "Lease.create through a symlink succeeded");
    assert_eq!(std::fs::read(&target).unwrap(), bytes, "written through");
    unplant(&xleases);

    // spmStart on `dom_md/leases` (the SDM lease): the pool's SPM role,
    // taken by connected_pool, is given back first (a start while SPM
    // does not touch the lease).
    call_ok(c, "StoragePool.spmStop", json!({"storagepoolID": p.sp})).await;
    let leases = dom_md.join("leases");
    let (target, bytes) = plant_symlink(&leases, outside.path());
    let spm = json!({"storagepoolID": p.sp, "prevID": -1, "prevLver": "-1",
        "enableScsiFencing": "false"});
    let e = verb_error(c, "StoragePool.spmStart", spm).await;
    assert!(e.is_some(), "spmStart through a symlink succeeded");
    assert_eq!(std::fs::read(&target).unwrap(), bytes, "written through");
    unplant(&leases);

    call_ok(
        c,
        "StoragePool.disconnect",
        json!({"storagepoolID": p.sp, "hostID": 3, "scsiKey": p.sp}),
    )
    .await;
    drop(d);
    drop(daemon);
}
