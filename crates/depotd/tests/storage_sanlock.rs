//! sanlock underneath (issue 16, step 1): a new domain's lockspace and
//! SDM lease in sanlock's own format, host ids acquired by the domain
//! monitor through the real sanlock daemon (depot_testkit::sanlock) and
//! released on disconnect, a bad host id refused, and a depotd without
//! sanlock that starts, says so, and reports `acquired` false.

mod common;
mod storage_common;

use std::path::PathBuf;
use std::time::Duration;

use common::{eventually, Daemon};
use depot_client::Client;
use depot_os::sanlock::{direct_read_leader, Area, DirectConfig};
use depot_testkit::sanlock::SanlockDaemon;
use serde_json::{json, Value};
use storage_common::sanlock_pool::*;
use storage_common::*;

/// The lockspaces of `sd` the daemon lists.
fn listed(daemon: &SanlockDaemon, sd: &str) -> Vec<String> {
    of_domain(daemon.lockspaces(), sd)
}

/// The leases of `sd`'s lockspace the daemon's clients hold.
fn leases_held(daemon: &SanlockDaemon, sd: &str) -> Vec<String> {
    of_domain(daemon.resources(), sd)
}

fn of_domain(lines: Result<Vec<String>, String>, sd: &str) -> Vec<String> {
    let prefix = format!("{sd}:");
    lines
        .expect("sanlock client status")
        .into_iter()
        .filter(|l| l.starts_with(&prefix))
        .collect()
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn host_id_is_acquired_in_a_new_domains_lockspace_and_released_on_disconnect() {
    depot_testkit::require_root();
    let daemon = SanlockDaemon::start().expect("sanlock daemon");
    let agents = fence_agents("marker", "#!/bin/sh\ncat > \"$(dirname \"$0\")/ran\"\n");
    let ran = agents.path().join("ran");
    let d = Daemon::start(&format!(
        "{SANLOCK_CONFIG}[fencing]\nagents_dir = \"{}\"\n",
        agents.path().display()
    ));
    let p = pool(&d).await;

    // The capabilities see the daemon.
    let caps = call_ok(&p.c, "Host.getCapabilities", json!({})).await;
    assert_eq!(caps["sanlock"]["available"], true, "{caps}");
    assert!(caps["sanlock"]["version"].is_string(), "{caps}");

    // The domain's lockspace and SDM lease, as sanlock reads them.
    let md = p.dom.join("dom_md");
    let direct = DirectConfig::default();
    let ids = direct_read_leader(&direct, &p.sd, "1", false, &Area::new(md.join("ids"), 0))
        .expect("a lockspace in dom_md/ids");
    assert_eq!(ids["magic"], "0x12212010", "{ids:?}");
    assert_eq!(ids["space_name"], p.sd);
    assert_eq!(ids["sector_size"], "512");
    let sdm = direct_read_leader(
        &direct,
        &p.sd,
        "SDM",
        true,
        &Area::new(md.join("leases"), MIB),
    )
    .expect("the SDM lease at slot 1 of dom_md/leases");
    assert_eq!(sdm["magic"], "0x6152010", "{sdm:?}");
    assert_eq!(sdm["resource_name"], "SDM");
    assert_eq!(sdm["max_hosts"], "2000");
    assert_eq!(std::fs::metadata(md.join("ids")).unwrap().len(), MIB);
    assert_eq!(std::fs::metadata(md.join("leases")).unwrap().len(), 2 * MIB);

    // Liveness needs this host in the lockspace: not yet.
    let by_sd = json!({"storagedomainID": p.sd});
    let e = call_err(&p.c, "StorageDomain.getHostLiveness", by_sd.clone(), 9021).await;
    assert!(e.contains("no host id acquired"), "{e}");

    // Connect: the host id is acquired in the background; the connect
    // itself returns at once.
    let t = std::time::Instant::now();
    call_ok(&p.c, "StoragePool.connect", pool_connect(&p, 3)).await;
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let stats = until_acquired(&p.c, &p.sd).await;
    assert_eq!((&stats["valid"], &stats["code"]), (&json!(true), &json!(0)));
    eprintln!("host id acquired {:?} after connect", t.elapsed());
    let held = listed(&daemon, &p.sd);
    assert_eq!(held.len(), 1, "{held:?}");
    // Through the repository's link, as VDSM's /rhev/data-center/mnt/...
    let mnt = repository(&d).join("mnt");
    assert!(
        held[0].starts_with(&format!("{}:3:{}/", p.sd, mnt.display()))
            && held[0].ends_with(&format!("/{}/dom_md/ids:0", p.sd)),
        "{held:?}"
    );

    // Now this host sees itself in the lockspace, through sanlock.
    let hosts = call_ok(&p.c, "StorageDomain.getHostLiveness", by_sd).await;
    let me = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host_id"] == 3)
        .unwrap_or_else(|| panic!("host 3 not listed: {hosts}"));
    assert!(
        matches!(me["status"].as_str(), Some("live" | "unknown")),
        "{hosts}"
    );
    assert!(me["generation"].as_u64().unwrap() >= 1, "{hosts}");
    // The host id was acquired with the configured io_timeout (sanlock's
    // default is 10).
    assert_eq!(me["io_timeout"].as_u64(), Some(IO_TIMEOUT), "{hosts}");

    // Fencing this host (id 3) is skipped: its lease is live on the
    // domain. Host 9's is not: the agent runs.
    let fence = |host_id: i64| {
        json!({"addr": "10.0.0.9", "port": "", "agent": "marker", "username": "u",
            "password": "p", "action": "off",
            "policy": {"storageDomainHostIdMap": {p.sd.clone(): host_id}}})
    };
    assert_eq!(
        call_ok(&p.c, "Host.fenceNode", fence(3)).await,
        json!({"operationStatus": "skipped"})
    );
    assert!(!ran.exists(), "the agent ran although the host is live");
    assert_eq!(
        call_ok(&p.c, "Host.fenceNode", fence(9)).await["operationStatus"],
        "initiated"
    );
    assert!(ran.exists());

    // Disconnect releases it.
    call_ok(
        &p.c,
        "StoragePool.disconnect",
        json!({"storagepoolID": p.sp, "hostID": 3, "scsiKey": p.sp}),
    )
    .await;
    eventually("the lockspace released", RELEASE_WAIT, || async {
        listed(&daemon, &p.sd).is_empty().then_some(())
    })
    .await;
    drop(d);
    drop(daemon);
}

/// The monitor checks a domain once per interval, but `acquired` must not
/// wait for the next check: while sanlock is adding the host id, the
/// monitor asks it between checks, so repoStats says `acquired` within a
/// peek (0.5 s) of sanlock holding it, here with checks 10 minutes apart.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn acquired_is_reported_as_soon_as_sanlock_holds_the_host_id_not_at_the_next_check() {
    depot_testkit::require_root();
    let daemon = SanlockDaemon::start().expect("sanlock daemon");
    let d = Daemon::start(
        "[storage]\nmonitor_interval_s = 600\n[sanlock]\nenabled = true\nio_timeout_s = 4\n",
    );
    let p = pool(&d).await;
    call_ok(&p.c, "StoragePool.connect", pool_connect(&p, 1)).await;
    // sanlock lists the lockspace with ` ADD` while it acquires the id.
    eventually("sanlock holding the host id", ACQUIRE_WAIT, || async {
        let l = listed(&daemon, &p.sd);
        (l.len() == 1 && !l[0].ends_with(" ADD")).then_some(())
    })
    .await;
    let held = std::time::Instant::now();
    // Without the peeks this waits for the check at 600 s and times out.
    until_acquired(&p.c, &p.sd).await;
    let late = held.elapsed();
    eprintln!("repoStats said acquired {late:?} after sanlock held the id");
    assert!(late < Duration::from_secs(10), "{late:?}");
    call_ok(
        &p.c,
        "StoragePool.disconnect",
        json!({"storagepoolID": p.sp, "hostID": 1, "scsiKey": p.sp}),
    )
    .await;
    eventually("the lockspace released", RELEASE_WAIT, || async {
        listed(&daemon, &p.sd).is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_host_id_sanlock_cannot_take_is_refused_and_changes_nothing() {
    let d = Daemon::start(SANLOCK_CONFIG);
    let p = pool(&d).await;
    let before = snapshot(&repository(&d));
    for bad in [0, -1, 2001, i64::MAX] {
        let e = call_err(&p.c, "StoragePool.connect", pool_connect(&p, bad), 661).await;
        assert!(e.contains("host id"), "{e}");
    }
    // Not connected, nothing monitored, nothing on disk changed.
    call_err(
        &p.c,
        "StoragePool.getInfo",
        json!({"storagepoolID": p.sp}),
        309,
    )
    .await;
    assert_eq!(repo_stats(&p).await, Value::Null);
    assert_same_tree(&before, &snapshot(&repository(&d)), "after bad host ids");
    // The edges are taken.
    call_ok(&p.c, "StoragePool.connect", pool_connect(&p, 2000)).await;
    call_ok(
        &p.c,
        "StoragePool.disconnect",
        json!({"storagepoolID": p.sp, "hostID": 2000, "scsiKey": p.sp}),
    )
    .await;
    call_ok(&p.c, "StoragePool.connect", pool_connect(&p, 1)).await;
}

/// Rounds of the monitor after which `acquired` must still be false.
async fn assert_never_acquired(p: &Pool) {
    wait_actual(&p.c, &p.sd).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = repo_stats(p).await;
        assert_eq!(
            (&s["acquired"], &s["valid"]),
            (&json!(false), &json!(true)),
            "{s}"
        );
    }
}

#[tokio::test]
async fn without_the_library_depotd_starts_says_so_and_acquires_nothing() {
    let d = Daemon::start(&format!(
        "{SANLOCK_CONFIG}library = \"/nonexistent/libsanlock_client.so.1\"\n"
    ));
    let p = pool(&d).await;
    let caps = call_ok(&p.c, "Host.getCapabilities", json!({})).await;
    assert_eq!(caps["sanlock"]["available"], false, "{caps}");
    let reason = caps["sanlock"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("sanlock unavailable: ")
            && reason.contains("/nonexistent/libsanlock_client.so.1"),
        "{caps}"
    );
    assert!(
        d.log()
            .contains("sanlock unavailable: cannot load libsanlock"),
        "{}",
        d.log()
    );
    call_ok(&p.c, "StoragePool.connect", pool_connect(&p, 1)).await;
    assert_never_acquired(&p).await;
    // sanlock enabled but unavailable: no SPM role without its lease.
    let task = call_ok(&p.c, "StoragePool.spmStart", spm_start(&p)).await;
    let end = task_end(&p.c, task.as_str().unwrap()).await;
    assert_eq!(
        (&end["taskResult"], &end["code"]),
        (&json!("cleanFailure"), &json!(651)),
        "{end}"
    );
    assert!(
        end["message"]
            .as_str()
            .unwrap_or_default()
            .contains("sanlock unavailable"),
        "{end}"
    );
    assert_eq!(spm_status(&p).await["spmStatus"], "Free");
}

/// sanlock disabled by configuration (a single-host setup): the SPM role
/// is this host's alone, with no lease and version 0.
#[tokio::test]
async fn with_sanlock_disabled_the_spm_role_is_local() {
    let d = Daemon::start("[storage]\nmonitor_interval_s = 1\n[sanlock]\nenabled = false\n");
    let p = pool(&d).await;
    call_ok(&p.c, "StoragePool.connect", pool_connect(&p, 1)).await;
    let task = call_ok(&p.c, "StoragePool.spmStart", spm_start(&p)).await;
    assert_eq!(
        task_end(&p.c, task.as_str().unwrap()).await["taskResult"],
        "success"
    );
    assert_eq!(
        spm_status(&p).await,
        json!({"spmId": 1, "spmStatus": "SPM", "spmLver": 0})
    );
    assert!(
        d.log().contains("the SPM role is this host's alone"),
        "{}",
        d.log()
    );
    call_ok(&p.c, "StoragePool.spmStop", json!({"storagepoolID": p.sp})).await;
    assert_eq!(spm_status(&p).await["spmStatus"], "Free");
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn without_the_daemon_depotd_starts_says_so_and_acquires_nothing() {
    depot_testkit::require_root();
    // Taken and stopped, so that no other test's daemon runs meanwhile.
    let mut daemon = SanlockDaemon::start().expect("sanlock daemon");
    daemon.stop();
    let d = Daemon::start(SANLOCK_CONFIG);
    let p = pool(&d).await;
    let caps = call_ok(&p.c, "Host.getCapabilities", json!({})).await;
    assert_eq!(caps["sanlock"]["available"], false, "{caps}");
    let reason = caps["sanlock"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("sanlock unavailable: the sanlock daemon does not answer"),
        "{caps}"
    );
    assert!(d.log().contains("sanlock unavailable"), "{}", d.log());
    call_ok(&p.c, "StoragePool.connect", pool_connect(&p, 1)).await;
    assert_never_acquired(&p).await;
    assert!(d.log().contains("host id not acquired"), "{}", d.log());
}

/// Polls `Task.getStatus` until the task is finished; its status.
async fn task_end(c: &Client, task: &str) -> Value {
    eventually(
        "the task to finish",
        ACQUIRE_WAIT + ACQUIRE_WAIT,
        || async {
            let s = call_ok(c, "Task.getStatus", json!({"taskID": task})).await;
            (s["taskState"] == "finished").then_some(s)
        },
    )
    .await
}

fn spm_start(p: &Pool) -> Value {
    json!({"storagepoolID": p.sp, "prevID": -1, "prevLver": "-1", "enableScsiFencing": "false"})
}

async fn spm_status(p: &Pool) -> Value {
    call_ok(
        &p.c,
        "StoragePool.getSpmStatus",
        json!({"storagepoolID": p.sp}),
    )
    .await
}

/// spmStart as a task takes the SDM lease through the real daemon (the
/// host id first): getSpmStatus and getInfo report this host and the
/// lease's version; a lease another holder has is refused with 651 and
/// leaves the host Free; spmStop and disconnect give it back, and the next
/// start has the next version.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn spm_start_takes_the_sdm_lease_and_stop_and_disconnect_give_it_back() {
    depot_testkit::require_root();
    let daemon = SanlockDaemon::start().expect("sanlock daemon");
    let d = Daemon::start(SANLOCK_CONFIG);
    let p = pool(&d).await;

    // Not connected: refused at once, no task.
    call_err(&p.c, "StoragePool.spmStart", spm_start(&p), 309).await;
    call_ok(&p.c, "StoragePool.connect", pool_connect(&p, 2)).await;
    let free = spm_status(&p).await;
    assert_eq!(
        free,
        json!({"spmId": -1, "spmStatus": "Free", "spmLver": -1})
    );

    let task = call_ok(&p.c, "StoragePool.spmStart", spm_start(&p)).await;
    let end = task_end(&p.c, task.as_str().unwrap()).await;
    assert_eq!(end["taskResult"], "success", "{end}");
    let info = call_ok(&p.c, "Task.getInfo", json!({"taskID": task})).await;
    assert_eq!(info["verb"], "spmStart", "{info}");
    assert_eq!(
        spm_status(&p).await,
        json!({"spmId": 2, "spmStatus": "SPM", "spmLver": 1})
    );
    let pool_info = call_ok(&p.c, "StoragePool.getInfo", json!({"storagepoolID": p.sp})).await;
    assert_eq!(
        (&pool_info["info"]["spm_id"], &pool_info["info"]["lver"]),
        (&json!(2), &json!(1)),
        "{pool_info}"
    );
    let held = leases_held(&daemon, &p.sd);
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(held[0].starts_with(&format!("{}:SDM:", p.sd)), "{held:?}");
    assert!(held[0].contains("/dom_md/leases:1048576:1 p "), "{held:?}");
    // Again: still SPM, no new task work.
    let again = call_ok(&p.c, "StoragePool.spmStart", spm_start(&p)).await;
    assert_eq!(
        task_end(&p.c, again.as_str().unwrap()).await["taskResult"],
        "success"
    );
    assert_eq!(spm_status(&p).await["spmLver"], 1);

    call_ok(&p.c, "StoragePool.spmStop", json!({"storagepoolID": p.sp})).await;
    assert!(leases_held(&daemon, &p.sd).is_empty());
    assert_eq!(spm_status(&p).await["spmStatus"], "Free");
    // Idempotent.
    call_ok(&p.c, "StoragePool.spmStop", json!({"storagepoolID": p.sp})).await;

    // Another holder (this test process, through the same daemon) has the
    // lease: the start fails with 651 and the host stays Free.
    let other = depot_os::sanlock::Sanlock::load(None, Duration::from_secs(60));
    let sdm = depot_os::sanlock::Resource::new(
        p.sd.clone(),
        "SDM",
        Area::new(repository_link_leases(&d, &p), MIB),
    );
    assert_eq!(other.acquire(&sdm, None).unwrap(), 2);
    let task = call_ok(&p.c, "StoragePool.spmStart", spm_start(&p)).await;
    let end = task_end(&p.c, task.as_str().unwrap()).await;
    assert_eq!(end["taskResult"], "cleanFailure", "{end}");
    assert_eq!(end["code"], 651, "{end}");
    let status = spm_status(&p).await;
    assert_eq!(status["spmStatus"], "Free", "{status}");
    assert_eq!(
        (&status["spmId"], &status["spmLver"]),
        (&json!(2), &json!(2))
    );
    other.release(&sdm).unwrap();
    drop(other);

    let task = call_ok(&p.c, "StoragePool.spmStart", spm_start(&p)).await;
    assert_eq!(
        task_end(&p.c, task.as_str().unwrap()).await["taskResult"],
        "success"
    );
    assert_eq!(spm_status(&p).await["spmLver"], 3);
    // Disconnect gives up the lease, then the host id.
    call_ok(
        &p.c,
        "StoragePool.disconnect",
        json!({"storagepoolID": p.sp, "hostID": 2, "scsiKey": p.sp}),
    )
    .await;
    assert!(leases_held(&daemon, &p.sd).is_empty());
    eventually("the lockspace released", RELEASE_WAIT, || async {
        listed(&daemon, &p.sd).is_empty().then_some(())
    })
    .await;
    drop(d);
    drop(daemon);
}

/// The domain's `leases` through the repository's mount link, as depotd
/// names it to sanlock (the same file as `p.dom`'s).
fn repository_link_leases(d: &Daemon, p: &Pool) -> PathBuf {
    let mnt = repository(d).join("mnt");
    std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().path().join(&p.sd).join("dom_md/leases"))
        .find(|l| l.exists())
        .expect("the domain under the repository's mnt")
}
