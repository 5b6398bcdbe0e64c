//! The domain health monitor: VDSM's `DomainMonitor` and `repoStats`.
//!
//! Every monitored domain is checked every [`MonitorConfig::interval`]
//! (VDSM's `sd_health_check_delay`, 10 s): an `O_DIRECT` read of the first
//! 4 KiB of its [`CheckTarget::read_path`] (VDSM's `dd ... iflag=direct`
//! path check) and a `statvfs` of its [`CheckTarget::stat_path`] (VDSM's
//! `selftest` and `getStats`). The result is kept as a [`DomainHealth`],
//! which the daemon renders as repoStats.
//!
//! # Threads
//!
//! One monitor thread per domain (named `monitor/<sd[:7]>`, as VDSM's).
//! With a [`MonitorConfig::helper`], a file domain's check runs in a
//! helper process (`depot_os::fsproc`, one per domain, rooted at its mount)
//! with [`MonitorConfig::check_timeout`] as the deadline of each call: the
//! monitor thread only waits on the helper's pipe, and a helper that misses
//! the deadline is killed and abandoned, so no thread of depotd ever sleeps
//! inside a hung mount. A block domain's check (and any check without a
//! helper command) runs on the domain's own
//! [`IoWorker`](depot_os::IoWorker) with the same timeout, so a check that
//! hangs blocks only that worker thread. Either way, not other domains,
//! not the callers of [`Monitor`] (which only read and write the shared
//! state under a short lock).
//!
//! A hung check is not repeated while it hangs: as VDSM's checker, the next
//! check waits until the previous one has returned (its thread is then
//! counted back by the worker; a stuck helper holds the domain's only
//! helper slot, so its pool refuses at once), so a dead server costs one
//! stuck thread or process per domain, not one per interval. Meanwhile the status says 2001 "Read
//! timeout" and [`DomainHealth::last_check`] stays at the last completed
//! check, so the engine's `lastCheck` keeps growing.
//!
//! [`Monitor::stop`] and [`Monitor::shutdown`] do not join anything: they
//! mark the domain stopped and return. A monitor thread exits as soon as it
//! is not inside a check (at once when waiting for the next one; after at
//! most `check_timeout` when in one); a worker thread stuck in the kernel
//! is abandoned and exits if its call ever returns. A stopped domain never
//! publishes again, so a late check cannot resurrect it.
//!
//! # Codes
//!
//! See [`DomainHealth::code`]; the mapping of failures is in
//! `check::classify`. In short: 0 healthy; 2001 read failed or timed out;
//! 384 `ESTALE` (the mount point is then unmounted, as VDSM's
//! `fileSD.selftest` does); 360 mount gone; 358 domain directory gone; 385
//! permission denied; 200 other statvfs errors.

mod check;
mod domain;
mod host_id;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use depot_api::storage::SdUuid;
use depot_api::Code;
use depot_os::fsproc::HelperCommand;
use depot_os::sanlock::Sanlock;
use depot_os::{CommandRunner, Mounter};

use crate::error::{StorageError, StorageResult};
use crate::events::Events;

pub use check::{CheckTarget, READ_SIZE};

use domain::DomainMonitor;

/// VDSM's `sd_health_check_delay`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Settings of a [`Monitor`].
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// Time between the starts of two checks of one domain.
    pub interval: Duration,
    /// How long a check may take before it counts as a "Read timeout"
    /// (2001). VDSM uses the interval.
    pub check_timeout: Duration,
    /// Unmounts a domain's mount point when the server answers `ESTALE`.
    /// `None`: report 384 but leave the mount alone.
    pub mounter: Option<Mounter>,
    /// How to start a file-system helper (`depot_os::fsproc`): a file
    /// domain's check then runs in a helper process of its own, so no
    /// thread of this process ever waits inside a hung mount. `None`: on
    /// the domain's worker thread, as a block domain's check always does.
    pub helper: Option<HelperCommand>,
    /// The sanlock daemon's client: a domain given a host id
    /// ([`Monitor::set_host_id`]) acquires it in its lockspace
    /// (`dom_md/ids`) and reports `acquired`. `None`: never acquired.
    pub sanlock: Option<Sanlock>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig::with_interval(DEFAULT_INTERVAL)
    }
}

impl MonitorConfig {
    /// `interval`, a check timeout of one interval (as VDSM), and unmount on
    /// `ESTALE` with the default command runner.
    pub fn with_interval(interval: Duration) -> Self {
        MonitorConfig {
            interval,
            check_timeout: interval,
            mounter: Some(Mounter::new(CommandRunner::new())),
            helper: None,
            sanlock: None,
        }
    }
}

/// The health of one domain: what VDSM's repoStats reports for it, plus the
/// disk numbers of getStats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainHealth {
    /// 0 when healthy, else the code of the failure (a `depot_api::Code`
    /// number): 2001 MiscFileReadException (read failed or timed out), 384
    /// FileStorageDomainStaleNFSHandle, 360 StorageDomainFSNotMounted, 358
    /// StorageDomainDoesNotExist, 385 StorageDomainInsufficientPermissions,
    /// 200 StorageException.
    pub code: i32,
    /// When the last check that completed (successfully or not) finished;
    /// `None` before the first. A check that hangs does not move it, so
    /// repoStats' `lastCheck` (see [`DomainHealth::last_check_age`]) grows.
    pub last_check: Option<Instant>,
    /// When monitoring started: the age of the status before the first
    /// check completes (VDSM's initial status is timed at its creation).
    pub monitoring_since: Instant,
    /// The latency of the last successful read (open and 4 KiB read);
    /// zero when the last check failed, as VDSM reports.
    pub delay: Duration,
    /// `code == 0`.
    pub valid: bool,
    /// False until the first check completes (VDSM reports a fake valid
    /// status until then, marked not actual).
    pub actual: bool,
    /// The domain version, set by the owner with [`Monitor::set_version`].
    pub version: Option<u32>,
    /// Whether this host holds its host id in the domain's sanlock
    /// lockspace, as sanlock answered in the last round (false without a
    /// host id, without sanlock, while acquiring, and when it was lost).
    pub acquired: bool,
    /// Size of the domain's filesystem in bytes (statvfs), from the last
    /// check where statvfs worked.
    pub disk_total: Option<u64>,
    /// Space an unprivileged writer can still use, in bytes.
    pub disk_free: Option<u64>,
    /// What is wrong, for logs and humans; `None` when healthy.
    pub error: Option<String>,
}

impl DomainHealth {
    fn initial(now: Instant) -> Self {
        DomainHealth {
            code: 0,
            last_check: None,
            monitoring_since: now,
            delay: Duration::ZERO,
            valid: true,
            actual: false,
            version: None,
            acquired: false,
            disk_total: None,
            disk_free: None,
            error: None,
        }
    }

    /// repoStats' `lastCheck` as a duration: time since the last completed
    /// check, or since monitoring started before the first.
    pub fn last_check_age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_check.unwrap_or(self.monitoring_since))
    }

    /// repoStats' `lastCheck` string: seconds with one decimal (`"%.1f"`).
    pub fn last_check_str(&self, now: Instant) -> String {
        format!("{:.1}", self.last_check_age(now).as_secs_f64())
    }

    /// repoStats' `delay` string: seconds, as Python's `str(float)` would
    /// show a read delay (e.g. `"0.000412"`).
    pub fn delay_str(&self) -> String {
        format!("{}", self.delay.as_secs_f64())
    }

    /// The code as a `depot_api::Code`, `None` when healthy.
    pub fn error_code(&self) -> Option<Code> {
        Code::from_number(self.code).filter(|_| self.code != 0)
    }
}

struct Inner {
    config: MonitorConfig,
    /// Where state changes go ([`crate::events::StorageEvent::DomainState`]).
    events: Events,
    domains: HashMap<SdUuid, DomainMonitor>,
    /// The host id each domain acquires ([`Monitor::set_host_id`]), kept
    /// here so a domain started later gets it from its first round.
    host_ids: HashMap<SdUuid, u64>,
    shut_down: bool,
}

/// The domain monitor of one daemon. See the [module docs](self).
///
/// Dropping it shuts it down.
pub struct Monitor {
    inner: Mutex<Inner>,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("Monitor")
            .field("config", &inner.config)
            .field("domains", &inner.domains.len())
            .field("shut_down", &inner.shut_down)
            .finish()
    }
}

impl Monitor {
    pub fn new(config: MonitorConfig) -> Self {
        Monitor {
            inner: Mutex::new(Inner {
                config,
                events: Events::none(),
                domains: HashMap::new(),
                host_ids: HashMap::new(),
                shut_down: false,
            }),
        }
    }

    /// Publishes each domain's state changes (valid <-> invalid, or a new
    /// failure of an invalid domain) to `events`, from the domains started
    /// after this call.
    pub fn set_events(&self, events: Events) {
        self.lock().events = events;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts monitoring `sd`; the first check starts at once. Starting a
    /// domain already monitored does nothing (its target is kept).
    ///
    /// Fails with 9003 ShuttingDown after [`Monitor::shutdown`], or 200 if
    /// the thread cannot be started.
    pub fn start(&self, sd: SdUuid, target: CheckTarget) -> StorageResult<()> {
        self.spawn(sd, Some(target), None)
    }

    /// Starts monitoring `sd`, which could not be located (its storage did
    /// not answer, or it is not there): each interval, its metadata is
    /// looked for in every mount directory of `repository` through helper
    /// processes, and once found it is checked as [`Monitor::start`] would.
    /// Meanwhile the status is in trouble: 2001 while a mount does not
    /// answer, 358 when every mount answered without it. So a pool domain
    /// whose storage was frozen when the pool connected becomes valid on
    /// its own when the storage returns. Block domains are not looked for.
    ///
    /// Needs [`MonitorConfig::helper`] (200 without it); fails as
    /// [`Monitor::start`] otherwise.
    pub fn start_search(&self, sd: SdUuid, repository: &Path) -> StorageResult<()> {
        self.spawn(sd, None, Some(repository.to_owned()))
    }

    fn spawn(
        &self,
        sd: SdUuid,
        target: Option<CheckTarget>,
        search: Option<PathBuf>,
    ) -> StorageResult<()> {
        let mut inner = self.lock();
        if inner.shut_down {
            return Err(StorageError::new(
                Code::ShuttingDown,
                "start domain monitor",
                format!("domain {sd}: the monitor is shut down"),
            ));
        }
        if let Some(existing) = inner.domains.get(&sd) {
            if target.is_some()
                && existing.target().is_some()
                && existing.target() != target.as_ref()
            {
                tracing::warn!(%sd, ?target, current = ?existing.target(),
                    "domain is already monitored with another target; keeping the current one");
            } else {
                tracing::debug!(%sd, "domain is already monitored");
            }
            return Ok(());
        }
        let host_id = inner.host_ids.get(&sd).copied();
        let dm = DomainMonitor::spawn(
            sd,
            target,
            search,
            host_id,
            &inner.config,
            inner.events.clone(),
        )
        .map_err(|e| {
            StorageError::new(
                Code::StorageException,
                "start domain monitor",
                format!("domain {sd}: cannot start the monitor thread: {e}"),
            )
            .caused_by(e)
        })?;
        tracing::info!(%sd, target = ?dm.target(), "start monitoring domain");
        inner.domains.insert(sd, dm);
        Ok(())
    }

    /// Stops monitoring `sd`, forgets its status and its host id; the
    /// monitor thread releases the host id as it exits. Returns at once
    /// (see the [module docs](self)); false if `sd` was not monitored.
    pub fn stop(&self, sd: SdUuid) -> bool {
        let removed = {
            let mut inner = self.lock();
            inner.host_ids.remove(&sd);
            inner.domains.remove(&sd)
        };
        match removed {
            Some(dm) => {
                tracing::info!(%sd, "stop monitoring domain");
                dm.stop(true);
                true
            }
            None => false,
        }
    }

    /// Whether `sd` is monitored.
    pub fn is_monitoring(&self, sd: SdUuid) -> bool {
        self.lock().domains.contains_key(&sd)
    }

    /// The health of `sd`, `None` if it is not monitored.
    pub fn status(&self, sd: SdUuid) -> Option<DomainHealth> {
        self.lock().domains.get(&sd).map(DomainMonitor::health)
    }

    /// The health of every monitored domain, sorted by domain id.
    pub fn all(&self) -> Vec<(SdUuid, DomainHealth)> {
        let mut v: Vec<_> = self
            .lock()
            .domains
            .iter()
            .map(|(sd, dm)| (*sd, dm.health()))
            .collect();
        v.sort_by_key(|(sd, _)| *sd);
        v
    }

    /// The host id this host is to hold in `sd`'s lockspace (set by a
    /// pool connect), if any.
    pub fn host_id(&self, sd: SdUuid) -> Option<u64> {
        self.lock().host_ids.get(&sd).copied()
    }

    /// The host id `sd` acquires in its lockspace from the next round
    /// (`None`: releases it). Kept for a domain not monitored yet, which
    /// gets it when started.
    pub fn set_host_id(&self, sd: SdUuid, host_id: Option<u64>) {
        let mut inner = self.lock();
        match host_id {
            Some(id) => inner.host_ids.insert(sd, id),
            None => inner.host_ids.remove(&sd),
        };
        if let Some(dm) = inner.domains.get(&sd) {
            dm.set_host_id(host_id);
        }
    }

    /// Records the domain version reported in repoStats. False if `sd` is
    /// not monitored.
    pub fn set_version(&self, sd: SdUuid, version: u32) -> bool {
        match self.lock().domains.get(&sd) {
            Some(dm) => {
                dm.set_version(version);
                true
            }
            None => false,
        }
    }

    /// Stops every domain monitor and refuses new ones. Returns at once;
    /// calling it again does nothing. Host ids are kept (as VDSM's
    /// shutdown does): the next depotd finds them held.
    pub fn shutdown(&self) {
        let domains: Vec<_> = {
            let mut inner = self.lock();
            if inner.shut_down {
                return;
            }
            inner.shut_down = true;
            inner.domains.drain().collect()
        };
        tracing::info!(domains = domains.len(), "shutting down domain monitors");
        for (_, dm) in domains {
            dm.stop(false);
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shutdown();
    }
}
