//! The connection watch: notices that a storage server connection of this
//! host is gone, and publishes [`StorageEvent::ConnectionLost`] once.
//!
//! Every interval (the domain monitor's) it looks at each connection the
//! host made, reading only what cannot hang on a dead server:
//!
//! - NFS, POSIXFS, GLUSTERFS: the mount table. Lost when nothing is
//!   mounted on the mount point any more (unmounted by hand, or by the
//!   domain monitor after `ESTALE`), or another source is.
//! - LOCALFS: the link in `mnt/` and the directory it points to (a
//!   `stat` on a worker thread with a timeout). Lost when the link is gone
//!   or points elsewhere, or the directory was removed or renamed.
//! - ISCSI: sysfs. Lost when no session of the same target, portal group,
//!   portal and iface is logged in any more (logged out by hand or by
//!   another tool).
//!
//! What it does not see: a mount whose server stopped answering, or an
//! iSCSI session whose network is down but that is still logged in (the
//! kernel keeps it, multipath queues): the domain monitor reports the
//! domains on them ("Read timeout"). FCP has nothing to watch.
//!
//! Only connections made (or made again) through
//! `StoragePool.connectStorageServer` since the daemon started are
//! watched; disconnecting one forgets it. A lost connection is reported
//! once; when it is back (connected again, or remounted by hand), it is
//! watched again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use depot_api::storage::DomainType;
use depot_os::fsproc::{FileKind, FsPool, FsProcError, HelperCommand, PoolConfig};
use depot_os::sysfs_block::{IscsiSessionAttrs, Sysfs};
use depot_os::IoWorker;

use super::{read_table, same_path, Connection, ConnectionKind, OP_CONNECT};
use crate::events::{Events, StorageEvent};

/// How long the `stat` of a LOCALFS directory may take.
const STAT_TIMEOUT: Duration = Duration::from_secs(10);

/// What is watched for one connection.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A mount or a LOCALFS link.
    File(Connection),
    /// An iSCSI session, as sysfs showed it right after the login.
    Iscsi(IscsiSessionAttrs),
}

#[derive(Debug)]
struct Entry {
    domain_type: DomainType,
    connection: String,
    target: Target,
    /// Connected when last seen: a loss is reported once.
    connected: bool,
}

struct Shared {
    entries: Mutex<HashMap<String, Entry>>,
    events: Mutex<Events>,
    interval: Duration,
    /// Set by stop; wakes the thread.
    stopped: Mutex<bool>,
    wake: Condvar,
    started: Mutex<bool>,
    sysfs: Sysfs,
    /// Where a LOCALFS directory's stat runs, when set (else a worker
    /// thread): a local directory may still be on a mount that hangs.
    helper: Mutex<Option<HelperCommand>>,
}

impl Shared {
    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// See the [module docs](self).
pub struct Watch {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("interval", &self.shared.interval)
            .field("connections", &self.shared.entries().len())
            .finish()
    }
}

impl Watch {
    pub fn new(interval: Duration) -> Self {
        Watch::with_sysfs(interval, Sysfs::default())
    }

    pub fn with_sysfs(interval: Duration, sysfs: Sysfs) -> Self {
        Watch {
            shared: Arc::new(Shared {
                entries: Mutex::new(HashMap::new()),
                events: Mutex::new(Events::none()),
                interval: interval.max(Duration::from_millis(1)),
                stopped: Mutex::new(false),
                wake: Condvar::new(),
                started: Mutex::new(false),
                sysfs,
                helper: Mutex::new(None),
            }),
        }
    }

    /// Stats LOCALFS directories in helper processes started with
    /// `helper` (depot_os::fsproc). Set before the first watch.
    pub fn set_helper(&self, helper: Option<HelperCommand>) {
        *self
            .shared
            .helper
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = helper;
    }

    pub fn set_events(&self, events: Events) {
        *self
            .shared
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = events;
    }

    /// Watches connection `id` (replacing what was watched under that id),
    /// which is connected now. Starts the thread on first use.
    pub(crate) fn watch(
        &self,
        id: &str,
        domain_type: DomainType,
        connection: String,
        target: Target,
    ) {
        self.shared.entries().insert(
            id.to_string(),
            Entry {
                domain_type,
                connection,
                target,
                connected: true,
            },
        );
        self.start();
    }

    /// Forgets connection `id` (disconnected on purpose).
    pub fn forget(&self, id: &str) {
        self.shared.entries().remove(id);
    }

    /// Forgets every connection watched on `connection` (its spec, as
    /// watched), whatever its id: a DR failover disconnects a primary
    /// that the engine connected under an id depot was not told.
    pub fn forget_connection(&self, connection: &str) {
        self.shared
            .entries()
            .retain(|_, e| e.connection != connection);
    }

    /// The ids watched now, for tests and logs.
    pub fn watched(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.shared.entries().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Whether `id` was connected when last seen.
    #[cfg(test)]
    fn is_connected(&self, id: &str) -> Option<bool> {
        self.shared.entries().get(id).map(|e| e.connected)
    }

    fn start(&self) {
        let mut started = self
            .shared
            .started
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *started || self.is_stopped() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        match thread::Builder::new()
            .name("connection-watch".into())
            .spawn(move || run(shared))
        {
            Ok(_) => *started = true,
            Err(e) => tracing::warn!(error = %e, "cannot start the connection watch"),
        }
    }

    fn is_stopped(&self) -> bool {
        *self
            .shared
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the thread (returns at once).
    pub fn stop(&self) {
        *self
            .shared
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.wake.notify_all();
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a LOCALFS directory is stat'ed: in a helper of a pool per parent
/// directory (kept from round to round: a stuck one makes its pool refuse
/// at once), or on a worker thread.
enum Stater {
    Helpers {
        command: HelperCommand,
        pools: HashMap<PathBuf, FsPool>,
    },
    Worker(IoWorker),
}

impl Stater {
    /// `Some(Ok(is a directory))`, `Some(Err(the OS error))`, or `None`
    /// when there is no answer in time.
    fn lstat_is_dir(&mut self, path: &Path) -> Option<std::io::Result<bool>> {
        match self {
            Stater::Helpers { command, pools } => {
                let (parent, name) = (path.parent()?, path.file_name()?.to_str()?);
                let pool = pools.entry(parent.to_owned()).or_insert_with(|| {
                    FsPool::new(PoolConfig {
                        command: command.clone(),
                        root: parent.to_owned(),
                        max_helpers: 1,
                        timeout: STAT_TIMEOUT,
                    })
                });
                match pool.lstat(name) {
                    Ok(st) => Some(Ok(st.kind == FileKind::Dir)),
                    Err(FsProcError::Io { source, .. }) => Some(Err(source)),
                    Err(_) => None,
                }
            }
            Stater::Worker(worker) => {
                let p = path.to_owned();
                worker
                    .run(STAT_TIMEOUT, move || std::fs::symlink_metadata(&p))
                    .ok()
                    .map(|r| r.map(|m| m.is_dir()))
            }
        }
    }

    /// Forgets the pools of directories no longer watched.
    fn keep_only(&mut self, dirs: &[PathBuf]) {
        if let Stater::Helpers { pools, .. } = self {
            pools.retain(|d, _| dirs.contains(d));
        }
    }
}

fn run(shared: Arc<Shared>) {
    let helper = shared
        .helper
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut worker = match helper {
        Some(command) => Stater::Helpers {
            command,
            pools: HashMap::new(),
        },
        None => Stater::Worker(IoWorker::new("connection-watch", 2)),
    };
    loop {
        {
            let mut stopped = shared
                .stopped
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let deadline = std::time::Instant::now() + shared.interval;
            while !*stopped {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                stopped = shared
                    .wake
                    .wait_timeout(stopped, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            if *stopped {
                return;
            }
        }
        check_all(&shared, &mut worker);
    }
}

/// One round: checks every entry (without holding the lock while
/// checking) and publishes the losses.
fn check_all(shared: &Shared, worker: &mut Stater) {
    let snapshot: Vec<(String, Target)> = shared
        .entries()
        .iter()
        .map(|(id, e)| (id.clone(), e.target.clone()))
        .collect();
    let local_parents: Vec<PathBuf> = snapshot
        .iter()
        .filter_map(|(_, t)| match t {
            Target::File(c) => match c.kind() {
                ConnectionKind::Local { path } => path.parent().map(Path::to_path_buf),
                ConnectionKind::Mount(_) => None,
            },
            Target::Iscsi(_) => None,
        })
        .collect();
    worker.keep_only(&local_parents);
    for (id, target) in snapshot {
        let Some(now) = check(&target, &shared.sysfs, worker) else {
            continue; // cannot tell: no change
        };
        let event = {
            let mut entries = shared.entries();
            // Forgotten or replaced meanwhile: this result is stale.
            let Some(entry) = entries
                .get_mut(&id)
                .filter(|e| same_target(&e.target, &target))
            else {
                continue;
            };
            match (entry.connected, now) {
                (true, Err(reason)) => {
                    entry.connected = false;
                    tracing::warn!(id = %id, connection = %entry.connection, %reason,
                        "storage server connection lost");
                    Some(StorageEvent::ConnectionLost {
                        id: id.clone(),
                        domain_type: entry.domain_type,
                        connection: entry.connection.clone(),
                        mount_point: mount_point(&entry.target),
                        reason,
                    })
                }
                (false, Ok(())) => {
                    entry.connected = true;
                    tracing::info!(id = %id, connection = %entry.connection,
                        "storage server connection is back");
                    None
                }
                _ => None,
            }
        };
        if let Some(e) = event {
            shared
                .events
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .publish(e);
        }
    }
}

fn same_target(a: &Target, b: &Target) -> bool {
    match (a, b) {
        (Target::File(x), Target::File(y)) => x == y,
        (Target::Iscsi(x), Target::Iscsi(y)) => x == y,
        _ => false,
    }
}

fn mount_point(t: &Target) -> Option<PathBuf> {
    match t {
        Target::File(c) => Some(c.mount_point().to_path_buf()),
        Target::Iscsi(_) => None,
    }
}

/// Whether the connection is there: `Ok`, `Err(what is found instead)`,
/// or `None` when that cannot be told now (the mount table or sysfs
/// unreadable, the stat timed out).
fn check(target: &Target, sysfs: &Sysfs, worker: &mut Stater) -> Option<Result<(), String>> {
    match target {
        Target::File(conn) => match conn.kind() {
            ConnectionKind::Mount(plan) => {
                let table = read_table(OP_CONNECT).ok()?;
                let mp = conn.mount_point();
                Some(match super::find_in(table, mp) {
                    None => Err(format!("nothing is mounted on {}", mp.display())),
                    Some(e) if !plan.matches(&e) => Err(format!(
                        "{} is mounted from {} instead of {}",
                        mp.display(),
                        super::describe(&e),
                        plan.source
                    )),
                    Some(_) => Ok(()),
                })
            }
            ConnectionKind::Local { path } => {
                let link = conn.mount_point();
                match std::fs::read_link(link) {
                    Err(e) => return Some(Err(format!("the link {}: {e}", link.display()))),
                    Ok(t) if !same_path(&t, path) => {
                        return Some(Err(format!(
                            "the link {} points to {}",
                            link.display(),
                            t.display()
                        )))
                    }
                    Ok(_) => {}
                }
                let stat = worker.lstat_is_dir(path)?;
                Some(match stat {
                    Ok(true) => Ok(()),
                    Ok(_) => Err(format!("{} is not a directory", path.display())),
                    Err(e) => Err(format!("{}: {e}", path.display())),
                })
            }
        },
        Target::Iscsi(want) => {
            let sids = sysfs.iscsi_sessions().ok()?;
            let found = sids.into_iter().any(|sid| {
                sysfs.iscsi_session(sid).is_ok_and(|a| {
                    a.target_name == want.target_name
                        && a.tpgt == want.tpgt
                        && a.iface_name == want.iface_name
                        && a.persistent_address == want.persistent_address
                        && a.persistent_port == want.persistent_port
                })
            });
            Some(if found {
                Ok(())
            } else {
                Err(format!(
                    "no iSCSI session to {} at {}:{},{} (iface {}) is logged in",
                    want.target_name,
                    want.persistent_address,
                    want.persistent_port,
                    want.tpgt,
                    want.iface_name
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Recorder;
    use std::path::Path;
    use std::time::Instant;

    /// The sysfs files `Sysfs::iscsi_session` reads, for session `sid`.
    fn fake_session(root: &Path, sid: u32) {
        let s = root.join(format!("class/iscsi_session/session{sid}"));
        let c = root.join(format!("class/iscsi_connection/connection{sid}:0"));
        std::fs::create_dir_all(&s).unwrap();
        std::fs::create_dir_all(&c).unwrap();
        for (dir, name, value) in [
            (&s, "targetname", "iqn.2026-01.test:t1"),
            (&s, "tpgt", "1"),
            (&s, "ifacename", "default"),
            (&s, "username", "(null)"),
            (&c, "persistent_address", "10.0.0.1"),
            (&c, "persistent_port", "3260"),
        ] {
            std::fs::write(dir.join(name), format!("{value}\n")).unwrap();
        }
    }

    fn drop_session(root: &Path, sid: u32) {
        std::fs::remove_dir_all(root.join(format!("class/iscsi_session/session{sid}"))).unwrap();
        std::fs::remove_dir_all(root.join(format!("class/iscsi_connection/connection{sid}:0")))
            .unwrap();
    }

    fn wait_events(rec: &Recorder, n: usize) -> Vec<StorageEvent> {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let ev = rec.events();
            if ev.len() >= n {
                return ev;
            }
            assert!(Instant::now() < end, "{ev:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// An iSCSI session that is logged out is lost, once; one logged in
    /// again (a new sid, the same target and portal) is watched again.
    #[test]
    fn iscsi_session_gone_and_back() {
        let root = tempfile::tempdir().unwrap();
        fake_session(root.path(), 1);
        let sysfs = Sysfs::new(root.path());
        let attrs = sysfs.iscsi_session(1).unwrap();
        let watch = Watch::with_sysfs(Duration::from_millis(10), sysfs);
        let rec = Arc::new(Recorder::default());
        watch.set_events(Events::new(rec.clone()));
        watch.watch(
            "c1",
            DomainType::Iscsi,
            "10.0.0.1:3260,1 iqn.2026-01.test:t1 (iface default)".into(),
            Target::Iscsi(attrs),
        );
        thread::sleep(Duration::from_millis(100));
        assert!(rec.events().is_empty());

        drop_session(root.path(), 1);
        let ev = wait_events(&rec, 1);
        let StorageEvent::ConnectionLost {
            id,
            domain_type,
            mount_point,
            reason,
            ..
        } = &ev[0]
        else {
            panic!("{ev:?}")
        };
        assert_eq!((id.as_str(), *domain_type), ("c1", DomainType::Iscsi));
        assert_eq!(mount_point, &None);
        assert!(reason.contains("iqn.2026-01.test:t1"), "{reason}");
        thread::sleep(Duration::from_millis(100));
        assert_eq!(rec.events().len(), 1);

        fake_session(root.path(), 7);
        let end = Instant::now() + Duration::from_secs(20);
        while watch.is_connected("c1") != Some(true) {
            assert!(Instant::now() < end, "the session never counted as back");
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(rec.events().len(), 1);
        drop_session(root.path(), 7);
        wait_events(&rec, 2);

        watch.forget("c1");
        assert!(watch.watched().is_empty());
        watch.stop();
    }
}
