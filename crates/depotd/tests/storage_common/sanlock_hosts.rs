//! The hosts of the tests with several depotd hosts on one machine
//! (two_hosts.rs, dr_failover.rs): each a sanlock daemon in a mount
//! namespace of its own (depot_testkit::sanlock::SanlockHost) with a
//! depotd started in it, and sanlock's rule for when a host that stopped
//! renewing is dead. A test file uses it with
//! `use storage_common::sanlock_hosts::*;`.

use std::time::Duration;

use depot_client::Client;
use depot_testkit::sanlock::{HostStatus, NoDaemon, SanlockHost};
use serde_json::json;

use super::call_ok;
use super::sanlock_pool::SANLOCK_CONFIG;
use crate::common::{eventually, Daemon};

/// Until each host sees the other's lease renewed (two renewals of 20 s).
pub const LIVE_WAIT: Duration = Duration::from_secs(120);
/// sanlock's watchdog fire timeout, part of host_dead_seconds (sanlock's
/// `calc_host_dead_seconds`: 8 * io_timeout + watchdog_fire_timeout; every
/// host must use the same, 60 s by default).
pub const WATCHDOG_FIRE_TIMEOUT: u64 = 60;

/// One host: its sanlock daemon and the depotd running with it.
pub struct Host<'l> {
    pub name: &'static str,
    pub id: i64,
    pub sanlock: SanlockHost<'l>,
    pub d: Daemon,
    pub c: Client,
}

pub async fn host<'l>(lock: &'l NoDaemon, name: &'static str, id: i64) -> Host<'l> {
    let sanlock = SanlockHost::start(lock, name).expect("sanlock host");
    let d = Daemon::start_in(&sanlock.ns_prefix(), SANLOCK_CONFIG);
    let c = d.client().await;
    let caps = call_ok(&c, "Host.getCapabilities", json!({})).await;
    assert_eq!(caps["sanlock"]["available"], true, "host {name}: {caps}");
    Host {
        name,
        id,
        sanlock,
        d,
        c,
    }
}

impl Host<'_> {
    /// A new client (after a restart of depotd).
    pub async fn reconnect(&mut self) {
        self.c = self.d.client().await;
    }

    /// The lockspaces of `sd` this host's daemon holds.
    pub fn lockspaces_of(&self, sd: &str) -> Vec<String> {
        let prefix = format!("{sd}:");
        self.sanlock
            .lockspaces()
            .expect("sanlock client status")
            .into_iter()
            .filter(|l| l.starts_with(&prefix))
            .collect()
    }

    /// What this host's daemon knows of host `id` in `sd`'s lockspace.
    pub fn host_status(&self, sd: &str, id: i64) -> HostStatus {
        let all = self.sanlock.host_status(sd).expect("host_status");
        all.iter()
            .find(|h| h.host_id == id as u64)
            .cloned()
            .unwrap_or_else(|| panic!("host {id} not in {}'s host_status: {all:?}", self.name))
    }

    /// Waits until this host's daemon has seen host `id` renew in `sd`'s
    /// lockspace twice (a daemon that just joined lists no other host
    /// until it has read the lockspace; sanlock counts a dead host's wait
    /// from the last renewal it saw, so a test must not start its clock
    /// before).
    pub async fn seen_renewing(&self, sd: &str, id: i64) {
        let stamp = || {
            let all = self.sanlock.host_status(sd).expect("host_status");
            all.iter()
                .find(|h| h.host_id == id as u64)
                .map(|h| h.timestamp)
        };
        let first = eventually("the daemon to list the other host", LIVE_WAIT, || async {
            stamp()
        })
        .await;
        eventually("the other host to renew again", LIVE_WAIT, || async {
            stamp().filter(|t| *t > first)
        })
        .await;
    }

    /// SIGKILL to its sanlock daemon and to depotd: the whole host dies.
    /// The daemon first: a daemon that outlives depotd even by a moment
    /// releases depotd's leases (the process-crash case).
    pub fn kill(&mut self) {
        self.sanlock.kill9();
        self.d.crash();
    }
}

/// This process's CLOCK_MONOTONIC in seconds: the clock of sanlock's
/// timestamps (every daemon of the machine shares it).
pub fn monotonic() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
}

/// sanlock's host_dead_seconds for a host renewing with `io_timeout`
/// (`calc_host_dead_seconds`): how long after the last renewal another
/// host's daemon saw, that host counts as dead.
pub fn host_dead_seconds(io_timeout: u64) -> u64 {
    8 * io_timeout + WATCHDOG_FIRE_TIMEOUT
}

/// The earliest CLOCK_MONOTONIC second sanlock lets another host take a
/// lease of host `dead` in `sd`'s lockspace: its last renewal, as host
/// `seen_by`'s daemon read it, plus host_dead_seconds for its io_timeout.
pub fn host_dead_floor(seen_by: &Host<'_>, sd: &str, dead: &Host<'_>) -> (f64, HostStatus) {
    let hs = seen_by.host_status(sd, dead.id);
    assert!(hs.timestamp > 0 && hs.io_timeout > 0, "{hs:?}");
    let floor = hs.timestamp + host_dead_seconds(hs.io_timeout);
    (floor as f64, hs)
}
