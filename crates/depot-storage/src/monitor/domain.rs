//! The monitor thread of one domain and the state it shares with
//! [`Monitor`](super::Monitor).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use depot_api::storage::SdUuid;
use depot_api::Code;
use depot_os::fsproc::{FileKind, FsPool, FsProcError, HelperCommand, PoolConfig};
use depot_os::{IoWorker, Mounter, WorkerError};

use super::check::{self, CheckTarget, Probe, Problem};
use super::host_id::HostIdKeeper;
use super::{DomainHealth, MonitorConfig};
use crate::events::{Events, StorageEvent};
use crate::layout;
use crate::lockspace;

/// Threads of a domain's worker. One check runs at a time; the second
/// thread covers the unmount on `ESTALE` and the moment a stuck check
/// returns but is not yet counted back.
const WORKER_THREADS: usize = 2;

/// Timeout of the `umount` run on `ESTALE`.
const UMOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// While a domain stays stale, the unmount is retried this often (it fails
/// while the mount is busy, e.g. with running VMs).
const UMOUNT_RETRY: Duration = Duration::from_secs(60);

/// Helpers of a domain's check pool. One: a check that hangs holds it, and
/// the pool then refuses at once (`Hung`) until it exits, so a dead server
/// costs one stuck process per domain, never one per interval.
const CHECK_HELPERS: usize = 1;

/// While a host id is being acquired (about 20 s, sanlock's delays),
/// sanlock is asked this often whether it is held, between the checks
/// (a call on the daemon's socket, no storage I/O).
const HOST_ID_PEEK: Duration = Duration::from_millis(500);

/// The smallest interval the loop accepts (a zero interval would spin).
const MIN_INTERVAL: Duration = Duration::from_millis(1);

struct State {
    health: DomainHealth,
    /// Set by stop: the thread exits and never publishes again.
    stopped: bool,
    /// The host id to hold in the domain's lockspace.
    host_id: Option<u64>,
    /// Set by stop (not by shutdown): release the host id on the way out.
    release: bool,
}

struct Shared {
    sd: SdUuid,
    state: Mutex<State>,
    /// Wakes the monitor thread early when it is stopped.
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One monitored domain, as the [`Monitor`](super::Monitor) holds it.
pub(super) struct DomainMonitor {
    shared: Arc<Shared>,
    target: Option<CheckTarget>,
}

impl DomainMonitor {
    /// Monitors `sd` at `target`; with no target, looks for the domain in
    /// every mount under `search` (a repository) each interval until it is
    /// found (see [`Monitor::start_search`](super::Monitor::start_search)).
    pub fn spawn(
        sd: SdUuid,
        target: Option<CheckTarget>,
        search: Option<PathBuf>,
        host_id: Option<u64>,
        config: &MonitorConfig,
        events: Events,
    ) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            sd,
            state: Mutex::new(State {
                health: DomainHealth::initial(Instant::now()),
                stopped: false,
                host_id,
                release: false,
            }),
            wake: Condvar::new(),
        });
        let helpers = target
            .as_ref()
            .and_then(|t| Helpers::of(t, config.helper.as_ref(), config.check_timeout));
        let search = match (&target, search) {
            (None, Some(repository)) => Some(Search {
                repository,
                command: config.helper.clone().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::Unsupported,
                        "looking for a domain needs a helper command",
                    )
                })?,
                timeout: config.check_timeout,
                pools: HashMap::new(),
            }),
            _ => None,
        };
        let looper = Looper {
            shared: Arc::clone(&shared),
            helpers,
            search,
            helper: config.helper.clone(),
            target: target
                .clone()
                .unwrap_or_else(|| CheckTarget::block_domain("/")),
            interval: config.interval.max(MIN_INTERVAL),
            check_timeout: config.check_timeout,
            mounter: config.mounter.clone(),
            last_umount: None,
            events,
            host_ids: config.sanlock.clone().map(|s| HostIdKeeper::new(s, sd)),
        };
        let short: String = sd.to_string().chars().take(7).collect();
        thread::Builder::new()
            .name(format!("monitor/{short}"))
            .spawn(move || looper.run())?;
        Ok(DomainMonitor { shared, target })
    }

    /// The target it was started with; `None` for a domain it looks for.
    pub fn target(&self) -> Option<&CheckTarget> {
        self.target.as_ref()
    }

    pub fn health(&self) -> DomainHealth {
        self.shared.lock().health.clone()
    }

    pub fn set_version(&self, version: u32) {
        self.shared.lock().health.version = Some(version);
    }

    pub fn set_host_id(&self, host_id: Option<u64>) {
        self.shared.lock().host_id = host_id;
    }

    /// Tells the thread to exit, releasing the host id if `release`; does
    /// not wait for it.
    pub fn stop(&self, release: bool) {
        {
            let mut st = self.shared.lock();
            st.stopped = true;
            st.release = release;
        }
        self.shared.wake.notify_all();
    }
}

/// Clears the flag when dropped: when the check returns, or when the worker
/// drops a check that never started.
struct BusyGuard(Arc<AtomicBool>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// How a check ended, for [`Looper::publish`].
enum Outcome {
    /// The check returned.
    Completed { at: Instant, probe: Probe },
    /// The check call failed without a probe (timeout, worker refused or
    /// panicked).
    Failed { completed_at: Option<Instant> },
}

/// The helper pool of a file domain's check, and the check's paths
/// relative to its root.
struct Helpers {
    pool: FsPool,
    read: String,
    stat: String,
}

impl Helpers {
    /// The helpers of a file domain's check, if there is a helper command.
    fn of(
        target: &CheckTarget,
        command: Option<&HelperCommand>,
        timeout: Duration,
    ) -> Option<Self> {
        let command = command.filter(|_| target.file)?;
        let (root, read, stat) = target.helper_paths()?;
        Some(Helpers {
            pool: FsPool::new(PoolConfig {
                command: command.clone(),
                root,
                max_helpers: CHECK_HELPERS,
                timeout,
            }),
            read,
            stat,
        })
    }
}

/// How a domain that could not be located is looked for: its metadata in
/// every mount directory of the repository, through a helper per mount.
struct Search {
    repository: PathBuf,
    command: HelperCommand,
    timeout: Duration,
    /// Kept from one look to the next: a helper stuck on a frozen mount
    /// keeps that mount's pool refusing at once (`Hung`), instead of a new
    /// process per interval.
    pools: HashMap<PathBuf, FsPool>,
}

impl Search {
    /// One look at every mount: the domain's target, or why it is not
    /// found: 2001 while a mount does not answer (it may be there), else
    /// 358.
    fn look(&mut self, sd: SdUuid) -> Result<CheckTarget, Problem> {
        let rel = format!("{sd}/dom_md/metadata");
        let entries = layout::mount_dir_entries(&self.repository);
        self.pools
            .retain(|dir, _| entries.iter().any(|(d, _)| d == dir));
        let mut silent = Vec::new();
        for (dir, link) in entries {
            let (command, timeout) = (&self.command, self.timeout);
            let pool = self.pools.entry(dir.clone()).or_insert_with(|| {
                FsPool::new(PoolConfig {
                    command: command.clone(),
                    root: dir.clone(),
                    max_helpers: CHECK_HELPERS,
                    timeout,
                })
            });
            match pool.stat(&rel) {
                Ok(st) if st.kind == FileKind::File => {
                    // A LOCALFS link is never in the mount table (see
                    // Storage::start_monitoring).
                    let mount = (!link).then(|| dir.clone());
                    return Ok(CheckTarget::file_domain(dir.join(sd.to_string()), mount));
                }
                Ok(_) => {}
                Err(e)
                    if !matches!(e, FsProcError::Io { .. })
                        || matches!(e.errno(), Some(libc::ENOTCONN | libc::EIO)) =>
                {
                    silent.push(e.to_string())
                }
                Err(_) => {}
            }
        }
        if silent.is_empty() {
            return Err(Problem::new(
                Code::StorageDomainDoesNotExist,
                format!(
                    "domain {sd} is on none of the mounts under {}",
                    self.repository.join(layout::MNT).display()
                ),
            ));
        }
        Err(Problem::new(
            Code::MiscFileReadException,
            format!(
                "Read timeout: domain {sd} not located yet: {}",
                silent.join("; ")
            ),
        ))
    }
}

/// The monitor thread's own state.
struct Looper {
    shared: Arc<Shared>,
    /// A file domain's check runs here, not on the worker.
    helpers: Option<Helpers>,
    /// Set while the domain is not located yet; `target` is then a
    /// placeholder.
    search: Option<Search>,
    helper: Option<HelperCommand>,
    target: CheckTarget,
    interval: Duration,
    check_timeout: Duration,
    mounter: Option<Mounter>,
    /// The last unmount attempt of the current stale episode.
    last_umount: Option<Instant>,
    events: Events,
    /// Acquires and releases the host id; `None` without sanlock.
    host_ids: Option<HostIdKeeper>,
}

impl Looper {
    fn run(mut self) {
        let sd = self.shared.sd;
        tracing::debug!(%sd, "domain monitor started");
        let worker = IoWorker::new(format!("monitor/{sd}"), WORKER_THREADS);
        // True while a check runs on the worker, including one abandoned
        // after its timeout.
        let busy = Arc::new(AtomicBool::new(false));
        // When the check that is still hanging started.
        let mut blocked_since: Option<Instant> = None;
        let mut next = Instant::now();
        loop {
            if self.shared.lock().stopped {
                break;
            }
            if let Some(search) = &mut self.search {
                match search.look(sd) {
                    Ok(target) => {
                        tracing::info!(%sd, ?target, "located the domain; checking it");
                        self.helpers =
                            Helpers::of(&target, self.helper.as_ref(), self.check_timeout);
                        self.target = target;
                        self.search = None;
                        continue;
                    }
                    Err(p) => {
                        // A look that got no answer is a check that hangs:
                        // lastCheck goes on growing.
                        let completed_at =
                            (p.code != Code::MiscFileReadException).then(Instant::now);
                        if !self.publish(Outcome::Failed { completed_at }, Err(p)) {
                            break;
                        }
                    }
                }
            } else if let Some(h) = &self.helpers {
                let verdict = self.check_via(h, &mut blocked_since);
                let stale = matches!(&verdict.1,
                    Err(p) if p.code == Code::FileStorageDomainStaleNFSHandle);
                if !self.publish(verdict.0, verdict.1) {
                    break;
                }
                if stale {
                    self.unmount_stale(&worker);
                } else {
                    self.last_umount = None;
                }
            } else if busy.load(Ordering::Acquire) {
                // As VDSM's checker: no new check while one hangs.
                let since = blocked_since.unwrap_or(next);
                let msg = format!(
                    "Read timeout: the check of {} has been blocked for {:.1} s",
                    self.target.read_path.display(),
                    since.elapsed().as_secs_f64()
                );
                tracing::debug!(%sd, "{msg}");
                self.update(|h| h.error = Some(msg));
            } else if !self.check_on_worker(&worker, &busy, &mut blocked_since) {
                break;
            }
            self.host_id_round();
            next = next_tick(next, self.interval, Instant::now());
            if !self.sleep_peeking_host_id(next) {
                break;
            }
        }
        if let Some(k) = &mut self.host_ids {
            if self.shared.lock().release {
                k.release();
            }
        }
        tracing::debug!(%sd, "domain monitor stopped");
    }

    /// After a check: asks sanlock about the host id, acquires it if the
    /// domain is valid and it is not held (crate::monitor::host_id), and
    /// records `acquired`.
    fn host_id_round(&mut self) {
        let (wanted, valid) = {
            let st = self.shared.lock();
            (st.host_id, st.health.valid && st.health.actual)
        };
        let dir = self.search.is_none().then(|| self.target.stat_path.clone());
        let Some(k) = &mut self.host_ids else {
            return;
        };
        let (file, helpers) = (self.target.file, &self.helpers);
        let check_ids = |ids: &Path| -> Result<(), String> {
            // A block domain's `ids` is this host's link to its LV.
            if !file {
                return Ok(());
            }
            match helpers {
                Some(h) => {
                    let rel = format!("{}/dom_md/ids", h.stat);
                    let st = h.pool.lstat(&rel).map(|st| (st.kind, st.nlink));
                    lockspace::sanlock_file_verdict(ids, st)
                }
                // No helper command (tests): the check's own worker reads
                // this mount in-process the same way.
                None => {
                    use std::os::unix::fs::MetadataExt;
                    let st = ids.symlink_metadata().map(|m| {
                        let kind = if m.file_type().is_file() {
                            FileKind::File
                        } else if m.file_type().is_symlink() {
                            FileKind::Symlink
                        } else {
                            FileKind::Unknown
                        };
                        (kind, m.nlink())
                    });
                    lockspace::sanlock_file_verdict(ids, st)
                }
            }
        };
        let held = k.round(wanted, dir.as_deref(), valid, check_ids);
        self.update(|h| h.acquired = held);
    }

    /// One check on the domain's worker thread (block domains, or file
    /// domains when no helper is configured). False when the monitor was
    /// stopped meanwhile.
    fn check_on_worker(
        &mut self,
        worker: &IoWorker,
        busy: &Arc<AtomicBool>,
        blocked_since: &mut Option<Instant>,
    ) -> bool {
        *blocked_since = None;
        busy.store(true, Ordering::Release);
        let guard = BusyGuard(Arc::clone(busy));
        let target = self.target.clone();
        let started = Instant::now();
        let result = worker.run(self.check_timeout, move || {
            let _busy = guard;
            check::probe(&target)
        });
        let (outcome, verdict) = match result {
            Ok(probe) => {
                let verdict = check::classify(&probe, &self.target, is_mounted);
                let at = Instant::now();
                (Outcome::Completed { at, probe }, verdict)
            }
            Err(e) => {
                let completed_at = matches!(e, WorkerError::Panicked { .. }).then(Instant::now);
                if e.is_timeout() {
                    *blocked_since = Some(started);
                }
                (
                    Outcome::Failed { completed_at },
                    Err(worker_problem(&self.target, &e)),
                )
            }
        };
        let stale = matches!(&verdict,
            Err(p) if p.code == Code::FileStorageDomainStaleNFSHandle);
        if !self.publish(outcome, verdict) {
            return false;
        }
        if stale {
            self.unmount_stale(worker);
        } else {
            self.last_umount = None;
        }
        true
    }

    /// One check of a file domain through its helper. The monitor thread
    /// only waits on the helper's pipe. A check that got no answer does
    /// not move `last_check` (as a hung check on the worker), and while
    /// the helper stays stuck the pool refuses the next ones at once: the
    /// status stays 2001 without a process per interval.
    fn check_via(
        &self,
        h: &Helpers,
        blocked_since: &mut Option<Instant>,
    ) -> (Outcome, Result<(), Problem>) {
        let started = Instant::now();
        let probe = check::probe_via(&h.pool, &h.read, &h.stat);
        let verdict = check::classify(&probe, &self.target, is_mounted);
        let no_answer = [probe.read.as_ref().err(), probe.stat.as_ref().err()]
            .into_iter()
            .flatten()
            .any(|f| f.no_answer);
        if !no_answer {
            if blocked_since.take().is_some() {
                tracing::info!(sd = %self.shared.sd, mount = %h.pool.root().display(),
                    "the domain's storage answers again");
            }
            return (
                Outcome::Completed {
                    at: Instant::now(),
                    probe,
                },
                verdict,
            );
        }
        let since = *blocked_since.get_or_insert(started);
        // repoStats has no field for the helpers' state: the log has it.
        let health = h.pool.health();
        tracing::warn!(sd = %self.shared.sd, mount = %health.mount.display(),
            trouble_since = ?health.trouble_since, stuck = health.stuck,
            blocked_s = since.elapsed().as_secs_f64(),
            "domain check got no answer from its storage");
        let verdict = verdict.map_err(|p| {
            Problem::new(
                p.code,
                format!(
                    "{} (check blocked for {:.1} s)",
                    p.message,
                    since.elapsed().as_secs_f64()
                ),
            )
        });
        (Outcome::Failed { completed_at: None }, verdict)
    }

    /// Waits until `deadline` (the next check); while the host id is being
    /// acquired, asks sanlock every [`HOST_ID_PEEK`] whether it is held now,
    /// so that `acquired` turns true within that of sanlock's answer rather
    /// than at the next check, up to an interval later. False if stopped.
    fn sleep_peeking_host_id(&mut self, deadline: Instant) -> bool {
        while self.host_ids.as_ref().is_some_and(HostIdKeeper::pending) {
            let peek = (Instant::now() + HOST_ID_PEEK).min(deadline);
            if !self.sleep_until(peek) {
                return false;
            }
            if peek >= deadline {
                return true;
            }
            if let Some(k) = &mut self.host_ids {
                if k.peek() {
                    self.update(|h| h.acquired = true);
                }
            }
        }
        self.sleep_until(deadline)
    }

    /// Waits until `deadline`; false if stopped meanwhile.
    fn sleep_until(&self, deadline: Instant) -> bool {
        let mut st = self.shared.lock();
        loop {
            if st.stopped {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            st = self
                .shared
                .wake
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Changes the health unless stopped; false if stopped.
    fn update(&self, f: impl FnOnce(&mut DomainHealth)) -> bool {
        let mut st = self.shared.lock();
        if st.stopped {
            return false;
        }
        f(&mut st.health);
        true
    }

    /// Records a check's outcome, and logs and publishes a change of state
    /// once. False if the domain was stopped meanwhile (nothing is recorded
    /// then).
    fn publish(&self, outcome: Outcome, verdict: Result<(), Problem>) -> bool {
        let sd = self.shared.sd;
        let mut st = self.shared.lock();
        if st.stopped {
            return false;
        }
        let h = &mut st.health;
        let (was_actual, was_code) = (h.actual, h.code);
        match outcome {
            Outcome::Completed { at, probe } => {
                h.last_check = Some(at);
                h.delay = probe.read.as_ref().copied().unwrap_or(Duration::ZERO);
                match probe.stat {
                    Ok(s) => {
                        h.disk_total = Some(s.total_bytes);
                        h.disk_free = Some(s.free_bytes);
                    }
                    Err(_) => {
                        h.disk_total = None;
                        h.disk_free = None;
                    }
                }
            }
            Outcome::Failed { completed_at } => {
                if completed_at.is_some() {
                    h.last_check = completed_at;
                }
                h.delay = Duration::ZERO;
            }
        }
        // A failed check is an actual status even before the first check
        // completes, as in VDSM.
        h.actual = true;
        match verdict {
            Ok(()) => {
                h.code = 0;
                h.error = None;
            }
            Err(p) => {
                h.code = p.code.number();
                h.error = Some(p.message);
            }
        }
        h.valid = h.code == 0;
        if !was_actual || was_code != h.code {
            match (&h.error, was_actual) {
                (None, false) => tracing::info!(%sd, "domain became VALID"),
                (None, true) => {
                    tracing::info!(%sd, previous_code = was_code, "domain became VALID again")
                }
                (Some(err), _) => tracing::warn!(%sd, code = h.code,
                    previous_code = was_code, error = %err, "domain became INVALID"),
            }
        }
        // The status before the first check counts as valid (code 0), so
        // a first check that succeeds changes nothing.
        let event = (was_code != h.code).then(|| StorageEvent::DomainState {
            sd,
            valid: h.valid,
            code: h.code,
            message: h.error.clone().unwrap_or_default(),
            previous_valid: was_code == 0,
            previous_code: was_code,
        });
        drop(st);
        if let Some(e) = event {
            self.events.publish(e);
        }
        true
    }

    /// Unmounts the domain's mount after `ESTALE`, as VDSM's
    /// `fileSD.selftest`: a plain `umount` (not lazy, not forced), so a
    /// mount still used by VMs stays and the unmount is retried every
    /// [`UMOUNT_RETRY`] while the domain is stale. Runs on the domain's
    /// worker, so a hanging umount costs a worker thread, not the monitor.
    fn unmount_stale(&mut self, worker: &IoWorker) {
        let (Some(mounter), Some(mp)) = (&self.mounter, &self.target.mount_point) else {
            return;
        };
        if self.last_umount.is_some_and(|t| t.elapsed() < UMOUNT_RETRY) {
            return;
        }
        self.last_umount = Some(Instant::now());
        if is_mounted(mp) != Some(true) {
            return;
        }
        let sd = self.shared.sd;
        tracing::warn!(%sd, mount_point = %mp.display(), "unmounting stale file system");
        let (mounter, target) = (mounter.clone(), mp.clone());
        let result = worker.run(UMOUNT_TIMEOUT + Duration::from_secs(5), move || {
            mounter.umount(&target, false, false, UMOUNT_TIMEOUT)
        });
        match result {
            Ok(Ok(())) => {
                tracing::info!(%sd, mount_point = %mp.display(), "stale file system unmounted")
            }
            Ok(Err(e)) => tracing::warn!(%sd, error = %e, "cannot unmount stale file system"),
            Err(e) => tracing::warn!(%sd, error = %e, "cannot unmount stale file system"),
        }
    }
}

/// The problem a failed worker call stands for.
fn worker_problem(target: &CheckTarget, e: &WorkerError) -> Problem {
    match e {
        // VDSM's checker reports a check that outlives the interval as
        // "Read timeout", a MiscFileReadException.
        WorkerError::Timeout { timeout, .. } => Problem::new(
            Code::MiscFileReadException,
            format!(
                "Read timeout: no answer from {} within {timeout:?}",
                target.read_path.display()
            ),
        ),
        WorkerError::Hung { .. } => Problem::new(
            Code::MiscFileReadException,
            format!("Read timeout: {}: {e}", target.read_path.display()),
        ),
        _ => Problem::new(Code::StorageException, e.to_string()),
    }
}

/// Whether `mount_point` is in the mount table; `None` if it cannot be
/// read. Reads `/proc`, never the (maybe hung) mount itself.
fn is_mounted(mount_point: &Path) -> Option<bool> {
    match depot_os::mount::find_by_target(mount_point) {
        Ok(found) => Some(found.is_some()),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the mount table");
            None
        }
    }
}

/// The first tick after `now` on the grid `prev + k * interval`: checks
/// start every interval, and an overrun skips ticks instead of bunching
/// checks up (as VDSM's checker).
fn next_tick(prev: Instant, interval: Duration, now: Instant) -> Instant {
    let mut next = prev + interval;
    if next <= now {
        let behind = now.duration_since(next).as_nanos();
        let skip = behind / interval.as_nanos() + 1;
        next += interval * u32::try_from(skip).unwrap_or(u32::MAX);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_stay_on_the_grid() {
        let t0 = Instant::now();
        let i = Duration::from_millis(100);
        assert_eq!(next_tick(t0, i, t0), t0 + i);
        assert_eq!(next_tick(t0, i, t0 + Duration::from_millis(99)), t0 + i);
        assert_eq!(next_tick(t0, i, t0 + i), t0 + 2 * i);
        assert_eq!(
            next_tick(t0, i, t0 + Duration::from_millis(350)),
            t0 + 4 * i
        );
    }

    #[test]
    fn timeout_is_a_read_timeout() {
        let t = CheckTarget::file_domain("/x/sd", None);
        let p = worker_problem(
            &t,
            &WorkerError::Timeout {
                worker: "w".into(),
                timeout: Duration::from_secs(10),
                started: true,
            },
        );
        assert_eq!(p.code, Code::MiscFileReadException);
        assert!(p.message.starts_with("Read timeout"), "{}", p.message);
        let p = worker_problem(
            &t,
            &WorkerError::Panicked {
                worker: "w".into(),
                message: "boom".into(),
            },
        );
        assert_eq!(p.code, Code::StorageException);
    }
}
