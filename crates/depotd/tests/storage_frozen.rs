//! A frozen storage server (issue 15), end to end on a real depotd: a
//! GlusterFS domain and a LOCALFS domain in one pool, the GlusterFS brick
//! frozen with SIGSTOP. The frozen domain is reported in trouble within the
//! monitor interval while the LOCALFS one stays valid and fresh, and it is
//! valid again on its own after the thaw, also when the pool was connected
//! during the outage; and the contract of the verbs (frozen_common): the
//! right error within the I/O timeout, bounded scans, shutdown within the
//! grace with calls stuck, no depotd thread in the mount. Root tier (real
//! GlusterFS); the NFS variant is vm_nfs_frozen.rs.

mod common;
mod frozen_common;
mod storage_common;

use std::time::{Duration, Instant};

use depot_client::Client;
use depot_testkit::gluster::Gluster;
use frozen_common::*;
use serde_json::{json, Value};
use storage_common::*;

/// After a thaw GlusterFS may take a while to answer again.
const RECOVERS_WITHIN: Duration = Duration::from_secs(90);

/// The test volume's brick, frozen with SIGSTOP.
impl Server for Gluster {
    fn domain_type(&self) -> i64 {
        GLUSTERFS
    }

    fn connection(&self) -> ConnectionSpec {
        ConnectionSpec {
            connection: self.spec(),
            vfs_type: Some("glusterfs".into()),
            mnt_options: None,
            protocol_version: None,
        }
    }

    fn freeze(&self) -> Thaw {
        let frozen = self.freeze_brick().expect("freeze the brick");
        eprintln!("brick {:?} frozen", frozen.pids());
        Thaw::new(move || frozen.thaw())
    }

    fn recovers_within(&self) -> Duration {
        RECOVERS_WITHIN
    }
}

/// The pool on a new GlusterFS volume (a test checks its tier first).
async fn setup() -> Setup<Gluster> {
    Setup::new(Gluster::start().expect("gluster harness")).await
}

/// A call that must answer quickly while the brick is frozen.
async fn answers_fast(c: &Client, method: &str, params: Value) -> Value {
    let t0 = Instant::now();
    let v = call_ok(c, method, params).await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "{method} took {took:?}");
    v
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn frozen_brick_is_reported_and_recovers_without_a_call() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let s = setup().await;
    let mount = s.mount();

    let frozen = s.freeze();
    let froze = Instant::now();
    let bad = s
        .wait_stats(
            &s.sd_frozen,
            REPORTED_WITHIN,
            "the frozen domain in trouble",
            |e| e["code"] != 0,
        )
        .await;
    eprintln!("frozen domain reported after {:?}: {bad}", froze.elapsed());
    // 2001 MiscFileReadException: VDSM's code for a read timeout.
    assert_eq!(bad["code"], 2001, "{bad}");
    assert_eq!(bad["valid"], false, "{bad}");
    let log = s.d.log();
    assert!(
        log.contains("Read timeout") && log.contains(&mount.display().to_string()),
        "the log names the read timeout and the mount"
    );

    // A few intervals of the outage: the LOCALFS domain stays valid with a
    // fresh lastCheck, and ping and LOCALFS verbs answer at once.
    let until = Instant::now() + 5 * INTERVAL;
    while Instant::now() < until {
        let all = s.repo_stats().await;
        let local = &all[&s.sd_local];
        assert_eq!(local["code"], 0, "{local}");
        assert_eq!(local["valid"], true, "{local}");
        assert!(last_check(local) < 3.0 * INTERVAL.as_secs_f64(), "{local}");
        assert_eq!(all[&s.sd_frozen]["code"], 2001, "{all}");
        // The monitor's check waits in a helper process, not in depotd.
        let stuck = threads_in_the_storage(s.d.pid());
        assert!(
            stuck.is_empty(),
            "depotd threads in the frozen mount: {stuck:?}"
        );
        answers_fast(&s.c, "Host.ping2", json!({})).await;
        let info = answers_fast(
            &s.c,
            "StorageDomain.getInfo",
            json!({"storagedomainID": s.sd_local}),
        )
        .await;
        assert_eq!(info["uuid"], s.sd_local.as_str(), "{info}");
        answers_fast(
            &s.c,
            "StorageDomain.getStats",
            json!({"storagedomainID": s.sd_local}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    frozen.thaw();
    let thawed = Instant::now();
    let good = s
        .wait_stats(&s.sd_frozen, RECOVERS_WITHIN, "valid after the thaw", |e| {
            e["code"] == 0 && e["valid"] == true
        })
        .await;
    eprintln!("valid again {:?} after the thaw: {good}", thawed.elapsed());
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn pool_connected_during_the_outage_recovers_alone() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let mut s = setup().await;
    call_ok(
        &s.c,
        "StoragePool.disconnect",
        json!({"storagepoolID": s.sp, "hostID": 1, "scsiKey": s.sp}),
    )
    .await;
    // A depotd that has not seen the domain yet (as after a reboot): it
    // must look for it on the mounts, and the frozen one does not answer.
    let status = s.d.stop();
    assert!(status.success(), "{status:?}");
    s.d.restart();
    s.c = s.d.client().await;
    let all = s.repo_stats().await;
    assert!(all.get(&s.sd_frozen).is_none(), "{all}");

    let frozen = s.freeze();
    let t0 = Instant::now();
    let answer = call_ok(&s.c, "StoragePool.connect", s.connect_params()).await;
    assert_eq!(answer, json!(true));
    eprintln!("StoragePool.connect while frozen took {:?}", t0.elapsed());
    // Monitored although it could not be located: in repoStats, in trouble.
    let bad = s
        .wait_stats(
            &s.sd_frozen,
            REPORTED_WITHIN,
            "the domain in trouble",
            |e| e["actual"] == true,
        )
        .await;
    assert_eq!(bad["code"], 2001, "{bad}");
    assert_eq!(bad["valid"], false, "{bad}");
    let local = s
        .wait_stats(&s.sd_local, REPORTED_WITHIN, "the LOCALFS domain", |e| {
            e["actual"] == true
        })
        .await;
    assert_eq!(local["code"], 0, "{local}");

    frozen.thaw();
    let thawed = Instant::now();
    // No StorageDomain.activate: repoStats only.
    let good = s
        .wait_stats(&s.sd_frozen, RECOVERS_WITHIN, "valid after the thaw", |e| {
            e["code"] == 0 && e["valid"] == true
        })
        .await;
    eprintln!("valid again {:?} after the thaw: {good}", thawed.elapsed());
    let pinfo = call_ok(&s.c, "StoragePool.getInfo", json!({"storagepoolID": s.sp})).await;
    assert_eq!(
        pinfo["dominfo"][&s.sd_frozen]["status"], "Active",
        "{pinfo}"
    );
}

// The contract of the verbs through helpers (frozen_common), on a frozen
// brick.

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn verbs_on_a_frozen_brick_answer_2001_naming_the_mount() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let s = setup().await;
    verbs_on_the_frozen_domain(s).await;
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn scans_are_bounded_and_report_a_frozen_brick() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let s = setup().await;
    scans_while_frozen(s).await;
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn sigterm_with_calls_stuck_on_a_frozen_brick_exits_within_the_grace() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let s = setup().await;
    shutdown_while_frozen(s).await;
}
