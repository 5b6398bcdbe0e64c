//! sanlock underneath (issue 16, step 1): a new domain's lockspace and
//! SDM lease in sanlock's own format, host ids acquired by the domain
//! monitor through the real sanlock daemon (depot_testkit::sanlock) and
//! released on disconnect, a bad host id refused, and a depotd without
//! sanlock that starts, says so, and reports `acquired` false.

mod common;
mod storage_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{eventually, Daemon};
use depot_client::Client;
use depot_os::sanlock::{direct_read_leader, Area, DirectConfig};
use depot_testkit::sanlock::SanlockDaemon;
use serde_json::{json, Value};
use storage_common::*;

const MIB: u64 = 1 << 20;
/// sanlock's delta-lease wait is about 21 s with its 10 s io_timeout
/// (machine-facts.md), then one monitor interval: generous for a loaded
/// machine.
const ACQUIRE_WAIT: Duration = Duration::from_secs(120);
/// An asynchronous rem_lockspace ends about 2 s later.
const RELEASE_WAIT: Duration = Duration::from_secs(60);
const SANLOCK_CONFIG: &str = "[storage]\nmonitor_interval_s = 1\n";

/// A LOCALFS domain created and the master of a new pool (not connected).
struct Pool {
    c: Client,
    _data: tempfile::TempDir,
    sd: String,
    sp: String,
    dom: PathBuf,
}

async fn pool(d: &Daemon) -> Pool {
    let c = d.client().await;
    let data = tempfile::tempdir().unwrap();
    let conn = ConnectionSpec::local(&data.path().canonicalize().unwrap());
    let st = call_ok(
        &c,
        "StoragePool.connectStorageServer",
        connect_params(LOCALFS, vec![conn.params(&new_id())]),
    )
    .await;
    assert_eq!(statuses(&st), [0], "{st}");
    let sd = new_id();
    call_ok(
        &c,
        "StorageDomain.create",
        create_domain_params(&sd, LOCALFS, &conn.connection, "sanlock", 512),
    )
    .await;
    let sp = new_id();
    call_ok(
        &c,
        "StoragePool.create",
        json!({"storagepoolID": sp, "name": "dc", "masterSdUUID": sd, "masterVersion": 1}),
    )
    .await;
    let dom = Path::new(&conn.connection).join(&sd);
    Pool {
        c,
        _data: data,
        sd,
        sp,
        dom,
    }
}

fn pool_connect(p: &Pool, host_id: i64) -> Value {
    json!({"storagepoolID": p.sp, "hostID": host_id, "scsiKey": p.sp, "masterSdUUID": p.sd,
        "masterVersion": 1, "domainDict": {p.sd.clone(): "active"}})
}

async fn repo_stats(p: &Pool) -> Value {
    let all = call_ok(&p.c, "Host.getStorageRepoStats", json!({"domains": [p.sd]})).await;
    all.get(&p.sd).cloned().unwrap_or(Value::Null)
}

/// The lockspaces of `sd` the daemon lists.
fn listed(daemon: &SanlockDaemon, sd: &str) -> Vec<String> {
    let prefix = format!("{sd}:");
    daemon
        .lockspaces()
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
    let d = Daemon::start(SANLOCK_CONFIG);
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

    // Connect: the host id is acquired in the background; the connect
    // itself returns at once.
    let t = std::time::Instant::now();
    call_ok(&p.c, "StoragePool.connect", pool_connect(&p, 3)).await;
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let stats = eventually("repoStats acquired", ACQUIRE_WAIT, || async {
        let s = repo_stats(&p).await;
        (s["acquired"] == true).then_some(s)
    })
    .await;
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
        "{SANLOCK_CONFIG}[sanlock]\nlibrary = \"/nonexistent/libsanlock_client.so.1\"\n"
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
