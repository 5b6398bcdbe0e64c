//! The pool of the tests with the real sanlock daemon
//! (depot_testkit::sanlock): a LOCALFS domain (with its lockspace) as
//! the master of a new pool, the connect that joins the lockspace, and the
//! waits for sanlock's host id. A test file uses it with
//! `use storage_common::sanlock_pool::*;`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use depot_client::Client;
use serde_json::{json, Value};

use super::{
    call_ok, connect_params, create_domain_params, new_id, statuses, ConnectionSpec, LOCALFS,
};
use crate::common::{eventually, Daemon};

/// sanlock's delta-lease wait is about 21 s with its 10 s io_timeout
/// (machine-facts.md), then one monitor interval: generous for a loaded
/// machine.
pub const ACQUIRE_WAIT: Duration = Duration::from_secs(120);
/// An asynchronous rem_lockspace ends about 2 s later.
pub const RELEASE_WAIT: Duration = Duration::from_secs(60);
/// A monitor round a second: the host id is joined soon after a connect;
/// sanlock on (`--dev` leaves it off), its table last, so that a test can
/// add to it. With sanlock's `io_timeout` at [`IO_TIMEOUT`] s instead of
/// 10: a host id in about 8 s instead of 20, a dead host's leases free
/// after 92 s instead of 140 (docs/testing.md, "The sanlock fixture").
pub const SANLOCK_CONFIG: &str =
    "[storage]\nmonitor_interval_s = 1\n[sanlock]\nenabled = true\nio_timeout_s = 4\n";
/// `sanlock.io_timeout_s` in [`SANLOCK_CONFIG`].
pub const IO_TIMEOUT: u64 = 4;

/// A LOCALFS domain created and the master of a new pool (not connected).
pub struct Pool {
    pub c: Client,
    pub _data: tempfile::TempDir,
    pub sd: String,
    pub sp: String,
    /// `<connection>/<sd>`.
    pub dom: PathBuf,
}

/// A new LOCALFS domain (512-byte sectors) on a temporary directory, the
/// master of a new pool.
pub async fn pool(d: &Daemon) -> Pool {
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
    let sp = create_pool(&c, &sd).await;
    let dom = Path::new(&conn.connection).join(&sd);
    Pool {
        c,
        _data: data,
        sd,
        sp,
        dom,
    }
}

/// Creates a pool (a new id) with `sd` as its master; the pool's id.
pub async fn create_pool(c: &Client, sd: &str) -> String {
    let sp = new_id();
    call_ok(
        c,
        "StoragePool.create",
        json!({"storagepoolID": sp, "name": "dc", "masterSdUUID": sd, "masterVersion": 1}),
    )
    .await;
    sp
}

/// `StoragePool.connect` of pool `sp` with its master `sd` active, as
/// `host_id`.
pub fn pool_connect_params(sp: &str, sd: &str, host_id: i64) -> Value {
    json!({"storagepoolID": sp, "hostID": host_id, "scsiKey": sp, "masterSdUUID": sd,
        "masterVersion": 1, "domainDict": {sd: "active"}})
}

/// `StoragePool.connect` of `p` as `host_id`.
pub fn pool_connect(p: &Pool, host_id: i64) -> Value {
    pool_connect_params(&p.sp, &p.sd, host_id)
}

/// `p`'s domain's `Host.getStorageRepoStats` entry (null when not
/// monitored).
pub async fn repo_stats(p: &Pool) -> Value {
    domain_repo_stats(&p.c, &p.sd).await
}

async fn domain_repo_stats(c: &Client, sd: &str) -> Value {
    let all = call_ok(c, "Host.getStorageRepoStats", json!({"domains": [sd]})).await;
    all.get(sd).cloned().unwrap_or(Value::Null)
}

/// Waits (ACQUIRE_WAIT at most) until repoStats says the host id is
/// acquired in `sd`'s lockspace; that entry.
pub async fn until_acquired(c: &Client, sd: &str) -> Value {
    eventually("repoStats acquired", ACQUIRE_WAIT, || async {
        let s = domain_repo_stats(c, sd).await;
        (s["acquired"] == true).then_some(s)
    })
    .await
}

/// Another host joins `p`, made by the first: `c` (that host's depotd)
/// connects the same LOCALFS directory (a file system both hosts see, as
/// a shared mount) and the pool as `host_id`.
pub async fn join_pool(c: &Client, p: &Pool, host_id: i64) {
    let dir = p.dom.parent().expect("the domain's connection");
    join_pool_on(c, dir, pool_connect(p, host_id)).await;
}

/// Host `c` connects the LOCALFS directory `dir` and then a pool whose
/// domains are there (`connect`: `StoragePool.connect`'s parameters):
/// the pool of another site's copy of the storage, say.
pub async fn join_pool_on(c: &Client, dir: &Path, connect: Value) {
    let st = call_ok(
        c,
        "StoragePool.connectStorageServer",
        connect_params(LOCALFS, vec![ConnectionSpec::local(dir).params(&new_id())]),
    )
    .await;
    assert_eq!(statuses(&st), [0], "{st}");
    call_ok(c, "StoragePool.connect", connect).await;
}

/// `StoragePool.getSpmStatus` of pool `sp` on host `c`.
pub async fn spm_status_of(c: &Client, sp: &str) -> Value {
    call_ok(c, "StoragePool.getSpmStatus", json!({"storagepoolID": sp})).await
}
