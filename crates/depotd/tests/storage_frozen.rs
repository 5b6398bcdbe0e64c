//! A frozen storage server (issue 15), end to end on a real depotd: a
//! GlusterFS domain and a LOCALFS domain in one pool, the GlusterFS brick
//! frozen with SIGSTOP. The frozen domain is reported in trouble within the
//! monitor interval while the LOCALFS one stays valid and fresh, and it is
//! valid again on its own after the thaw, also when the pool was connected
//! during the outage. Root tier (real GlusterFS).

mod common;
mod storage_common;

use std::time::{Duration, Instant};

use common::{eventually, Daemon};
use depot_client::Client;
use depot_testkit::gluster::{FrozenBrick, Gluster};
use serde_json::{json, Value};
use storage_common::*;

/// A one-second monitor, and an I/O timeout short enough that the verbs
/// that still wait for a frozen mount (a pool connect locating its
/// domains) answer within the client's wait.
const FROZEN_CONFIG: &str = "[storage]\nmonitor_interval_s = 1\nio_timeout_s = 3\n";
const INTERVAL: Duration = Duration::from_secs(1);
/// The monitor's interval and its check's deadline, plus a generous margin
/// for a shared machine.
const REPORTED_WITHIN: Duration = Duration::from_secs(15);
/// After a thaw GlusterFS may take a while to answer again.
const RECOVERS_WITHIN: Duration = Duration::from_secs(90);

/// The pool of a LOCALFS (master: a pool connect must read the master's
/// metadata, which a frozen brick would refuse) and a GlusterFS domain,
/// connected.
struct Setup {
    // Dropped in order: the client, the daemon's mounts, the daemon, then
    // gluster (whose brick a FrozenBrick of the test thaws first).
    c: Client,
    _mounts: UnmountGuard,
    d: Daemon,
    _local: tempfile::TempDir,
    g: Gluster,
    sp: String,
    sd_gluster: String,
    sd_local: String,
}

impl Setup {
    async fn new() -> Setup {
        let g = Gluster::start().expect("gluster harness");
        let d = Daemon::start(FROZEN_CONFIG);
        let mounts = UnmountGuard(d.dir.path().to_path_buf());
        let c = d.client().await;
        let local = tempfile::tempdir().unwrap();
        let gconn = ConnectionSpec {
            connection: g.spec(),
            vfs_type: Some("glusterfs".into()),
            mnt_options: None,
            protocol_version: None,
        };
        let lconn = ConnectionSpec::local(&local.path().canonicalize().unwrap());
        let mut sds = Vec::new();
        for (domain_type, conn) in [(GLUSTERFS, &gconn), (LOCALFS, &lconn)] {
            let id = new_id();
            let st = call_ok(
                &c,
                "StoragePool.connectStorageServer",
                connect_params(domain_type, vec![conn.params(&id)]),
            )
            .await;
            assert_eq!(statuses(&st), vec![0], "{st}");
            let sd = new_id();
            call_ok(
                &c,
                "StorageDomain.create",
                create_domain_params(&sd, domain_type, &conn.connection, "frozen", 0),
            )
            .await;
            sds.push(sd);
        }
        let (sd_gluster, sd_local) = (sds[0].clone(), sds[1].clone());
        let sp = new_id();
        call_ok(
            &c,
            "StoragePool.create",
            json!({
                "storagepoolID": sp, "name": "frozen pool", "masterSdUUID": sd_local,
                "masterVersion": 1, "domainList": [sd_gluster, sd_local],
                "lockRenewalIntervalSec": 5, "leaseTimeSec": 60,
                "ioOpTimeoutSec": 10, "leaseRetries": 3,
            }),
        )
        .await;
        let s = Setup {
            c,
            _mounts: mounts,
            d,
            _local: local,
            g,
            sp,
            sd_gluster,
            sd_local,
        };
        let answer = call_ok(&s.c, "StoragePool.connect", s.connect_params()).await;
        assert_eq!(answer, json!(true));
        wait_actual(&s.c, &s.sd_gluster).await;
        wait_actual(&s.c, &s.sd_local).await;
        s
    }

    fn connect_params(&self) -> Value {
        json!({
            "storagepoolID": self.sp, "hostID": 1, "scsiKey": self.sp,
            "masterSdUUID": self.sd_local, "masterVersion": 1,
            "domainDict": {self.sd_gluster.clone(): "active", self.sd_local.clone(): "active"},
        })
    }

    fn freeze(&self) -> FrozenBrick {
        let frozen = self.g.freeze_brick().expect("freeze the brick");
        eprintln!("brick {:?} frozen", frozen.pids());
        frozen
    }

    async fn repo_stats(&self) -> Value {
        call_ok(&self.c, "Host.getStorageRepoStats", json!({})).await
    }

    /// Waits, calling nothing but repoStats, until `sd`'s entry satisfies
    /// `cond`.
    async fn wait_stats(
        &self,
        sd: &str,
        limit: Duration,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(what, limit, || async {
            let all = self.repo_stats().await;
            all.get(sd).filter(|e| cond(e)).cloned()
        })
        .await
    }
}

fn last_check(entry: &Value) -> f64 {
    entry["lastCheck"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("lastCheck: {entry}"))
}

/// The threads of process `pid` waiting inside a file system: in `D`
/// state, or waiting for a FUSE answer (which the kernel first waits for
/// interruptibly: `S` with the wchan `request_wait_answer`). A thread of
/// depotd there is one its shutdown would wait for (issue 15).
fn threads_in_the_storage(pid: i32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .next()?
                .to_owned();
            let in_fuse = wchan == "request_wait_answer" || wchan.starts_with("fuse");
            (state == "D" || in_fuse).then(|| format!("{wchan}: {stat}"))
        })
        .collect()
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
    let s = Setup::new().await;
    let mount = mount_point(&s.d, GLUSTERFS, &s.g.spec());

    let frozen = s.freeze();
    let froze = Instant::now();
    let bad = s
        .wait_stats(
            &s.sd_gluster,
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
        assert_eq!(all[&s.sd_gluster]["code"], 2001, "{all}");
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
        .wait_stats(
            &s.sd_gluster,
            RECOVERS_WITHIN,
            "valid after the thaw",
            |e| e["code"] == 0 && e["valid"] == true,
        )
        .await;
    eprintln!("valid again {:?} after the thaw: {good}", thawed.elapsed());
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn pool_connected_during_the_outage_recovers_alone() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let mut s = Setup::new().await;
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
    assert!(all.get(&s.sd_gluster).is_none(), "{all}");

    let frozen = s.freeze();
    let t0 = Instant::now();
    let answer = call_ok(&s.c, "StoragePool.connect", s.connect_params()).await;
    assert_eq!(answer, json!(true));
    eprintln!("StoragePool.connect while frozen took {:?}", t0.elapsed());
    // Monitored although it could not be located: in repoStats, in trouble.
    let bad = s
        .wait_stats(
            &s.sd_gluster,
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
        .wait_stats(
            &s.sd_gluster,
            RECOVERS_WITHIN,
            "valid after the thaw",
            |e| e["code"] == 0 && e["valid"] == true,
        )
        .await;
    eprintln!("valid again {:?} after the thaw: {good}", thawed.elapsed());
    let pinfo = call_ok(&s.c, "StoragePool.getInfo", json!({"storagepoolID": s.sp})).await;
    assert_eq!(
        pinfo["dominfo"][&s.sd_gluster]["status"], "Active",
        "{pinfo}"
    );
}
