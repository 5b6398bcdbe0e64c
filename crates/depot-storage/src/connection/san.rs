//! SAN connections: `connectStorageServer` / `disconnectStorageServer` for
//! ISCSI (3) and FCP (2), and iSCSI SendTargets discovery.
//!
//! # ISCSI connect
//!
//! 1. Check the fields ([`IscsiConnection::new`]): 1000 on a bad one.
//! 2. If a session for the same target, portal group, portal and iface is
//!    already logged in (another connection's, or this one's again), it is
//!    reused when its CHAP user and password are the requested ones, and
//!    refused with 476 when they are not: a wrong password never "succeeds"
//!    by riding on someone else's login.
//! 3. Otherwise: the node record is created with `node.startup = manual`
//!    and the CHAP settings (460 on failure), and iscsiadm logs in. Exit 15
//!    (session exists, a race with another login) is success. On failure
//!    the node record is deleted again, so nothing stays behind, and the
//!    code is 476 for an authentication failure (exit 24), 464 otherwise.
//! 4. The session's LUNs are scanned synchronously (`-m session -r SID
//!    -R`), and multipathd and udev get up to [`SanTimeouts::map_wait`] to
//!    make a map (and its `/dev/mapper` node) for each of the session's
//!    disks. A disk without a map is logged, not an error: the login
//!    worked, and `Host.getDeviceList` shows exactly the maps that exist.
//!    (Waiting for these maps rather than `udevadm settle` saves 6-10 s per
//!    login in the VM tier: settle waits for every event of the machine.)
//!
//! The connection id is recorded against the session's [`SessionKey`] (a
//! reference count, see below). In one call, steps 1-3's record creation
//! runs entry by entry, then the logins run in parallel (see
//! [`depot_os::iscsi`] on why record changes and logins of one target
//! exclude each other).
//!
//! # ISCSI disconnect
//!
//! The connection's id is dropped from its session's references. While
//! other connections of this host still reference the session, nothing
//! else happens (success). The last one logs out (474 on failure) after
//! the caller's check allowed it (e.g. no active domain on the session's
//! devices) and deletes the node record (which holds the CHAP password on
//! disk). A session that is not there (never connected, already logged
//! out, a connect that failed half-way) is success: disconnect is
//! idempotent.
//!
//! The references are kept in a file of depotd's state directory
//! ([`SessionRefs`]), so a restart between two connects and their
//! disconnects changes nothing: the first disconnect still finds the
//! second connection's reference (VDSM never counts: every disconnect
//! logs out). A login that makes a new session starts its list afresh, so
//! references left from before a reboot never keep a session logged in.
//! The caller's check protects sessions in use by active domains either
//! way.
//!
//! # FCP
//!
//! Connect rescans every SCSI host ([`ScsiScanner`]; a hung host times out
//! alone) and waits for the maps of the disks that appeared. There is
//! nothing to log in to, so disconnect does nothing (as VDSM).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use depot_api::storage::DomainType;
use depot_api::Code;
use depot_os::iscsi::{Chap, IscsiError, IscsiErrorKind, Iscsiadm, Login, Portal, Session, Target};
use depot_os::lvm::{Lvm, LvmError, PvInfo};
use depot_os::multipath::Multipath;
use depot_os::scsi::ScsiScanner;
use depot_os::sysfs_block::{IscsiSessionAttrs, ScsiDevice, Sysfs};
use depot_os::CommandRunner;

use super::iscsi::{check_host, IscsiConnection, SessionKey};
use super::session_refs::SessionRefs;
use super::{ConnectionParams, ConnectionStatus};
use crate::error::{StorageError, StorageResult};

const OP_CONNECT: &str = "connect storage server";
const OP_DISCONNECT: &str = "disconnect storage server";
const OP_DISCOVER: &str = "discover iSCSI targets";

/// Most logins run at once (each can take two minutes against a dead
/// portal; VDSM's `parallel_logins` default is 10).
const PARALLEL_LOGINS: usize = 10;

/// Longest one `pvs` over the SAN devices may take (a LUN with all paths
/// down queues I/O for a while before failing it).
const LVM_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the steps after a login may take.
#[derive(Debug, Clone, Copy)]
pub struct SanTimeouts {
    /// Waiting for multipath maps of new disks.
    pub map_wait: Duration,
    /// One SCSI host's rescan.
    pub host_rescan: Duration,
}

impl Default for SanTimeouts {
    fn default() -> Self {
        SanTimeouts {
            map_wait: Duration::from_secs(30),
            host_rescan: Duration::from_secs(30),
        }
    }
}

/// What the first half of an ISCSI connect left to do.
enum Prepared {
    /// A session was there and is used.
    Reused,
    /// The node record is ready; log in.
    NeedsLogin,
}

/// What the caller's check sees before the last reference to a session is
/// dropped and the session logged out.
#[derive(Debug, Clone)]
pub struct SessionUse<'a> {
    pub connection_id: &'a str,
    pub key: &'a SessionKey,
    /// WWIDs of the multipath maps that have a path in the session.
    pub wwids: Vec<String>,
}

/// Connects and disconnects SAN storage. Blocking; see the module docs.
pub struct SanConnector {
    iscsiadm: Iscsiadm,
    multipath: Multipath,
    scanner: ScsiScanner,
    sysfs: Sysfs,
    /// Reads PV facts of SAN devices (getDeviceList, the logout check).
    /// Its own instance: its device filter is the devices asked about,
    /// and widening it must not invalidate the block domains' VG cache.
    lvm: Lvm,
    lvm_lock: Mutex<()>,
    timeouts: SanTimeouts,
    /// Connection ids per session.
    refs: SessionRefs,
    /// One lock per session, so a login and a logout of one session never
    /// interleave.
    locks: Mutex<HashMap<SessionKey, Arc<Mutex<()>>>>,
}

impl std::fmt::Debug for SanConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SanConnector")
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

fn err(code: Code, op: &'static str, detail: impl Into<String>) -> StorageError {
    StorageError::new(code, op, detail)
}

impl SanConnector {
    pub fn new(runner: CommandRunner) -> Self {
        let sysfs = Sysfs::default();
        SanConnector {
            iscsiadm: Iscsiadm::new(runner.clone()),
            multipath: Multipath::new(runner.clone(), sysfs.clone()),
            scanner: ScsiScanner::new(sysfs.clone(), 8),
            sysfs,
            lvm: Lvm::new(runner.clone(), LVM_TIMEOUT).with_cache(None),
            lvm_lock: Mutex::new(()),
            timeouts: SanTimeouts::default(),
            refs: SessionRefs::in_memory(),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps the session references in `file` across restarts
    /// ([`SessionRefs`]), starting from what it holds.
    pub fn with_references_file(mut self, file: PathBuf) -> Self {
        self.refs = SessionRefs::persistent(file);
        self
    }

    pub fn with_timeouts(mut self, timeouts: SanTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    pub fn iscsiadm(&self) -> &Iscsiadm {
        &self.iscsiadm
    }

    pub fn multipath(&self) -> &Multipath {
        &self.multipath
    }

    pub fn sysfs(&self) -> &Sysfs {
        &self.sysfs
    }

    /// The PVs among `devices` (one `pvs` with exactly these devices in
    /// the filter).
    pub fn pvs_of(&self, devices: &[PathBuf]) -> Result<Vec<PvInfo>, LvmError> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        // The filter is the instance's state: one caller at a time.
        let _one = self.lvm_lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.lvm.set_devices(devices.iter().cloned());
        self.lvm.pvs()
    }

    /// The connection ids referencing each session (for logs and tests).
    pub fn references(&self) -> Vec<(SessionKey, Vec<String>)> {
        self.refs.snapshot()
    }

    // ---- connect / disconnect ----

    /// Connects each entry; one status per entry, in order. Logins run in
    /// parallel.
    pub fn connect_all(
        &self,
        domain_type: DomainType,
        params: &[ConnectionParams],
    ) -> Vec<ConnectionStatus> {
        match domain_type {
            DomainType::Iscsi => {
                let results = self.connect_iscsi_all(params);
                statuses(params, results, "could not connect to iSCSI target")
            }
            DomainType::Fcp => {
                // One rescan serves every entry.
                let rescan = if params.is_empty() {
                    Ok(())
                } else {
                    self.rescan_fc()
                };
                let results = params
                    .iter()
                    .map(|p| check_id(p, OP_CONNECT).and_then(|()| rescan.clone()))
                    .collect();
                statuses(params, results, "could not connect FCP")
            }
            other => params
                .iter()
                .map(|p| ConnectionStatus::new(&p.id, &Err(not_san(other, OP_CONNECT))))
                .collect(),
        }
    }

    /// Disconnects each entry, in order. `check` is asked before a session
    /// is logged out (the last reference goes); its error is the entry's.
    pub fn disconnect_all(
        &self,
        domain_type: DomainType,
        params: &[ConnectionParams],
        mut check: impl FnMut(&SessionUse<'_>) -> StorageResult<()>,
    ) -> Vec<ConnectionStatus> {
        params
            .iter()
            .map(|p| {
                let r = match domain_type {
                    DomainType::Iscsi => {
                        IscsiConnection::new(p).and_then(|c| self.disconnect_iscsi(&c, &mut check))
                    }
                    DomainType::Fcp => check_id(p, OP_DISCONNECT),
                    other => Err(not_san(other, OP_DISCONNECT)),
                };
                if let Err(e) = &r {
                    tracing::warn!(id = %p.id, error = %e, "could not disconnect SAN storage");
                }
                ConnectionStatus::new(&p.id, &r)
            })
            .collect()
    }

    /// ISCSI connect of a call's entries: node records first, one at a
    /// time; then the logins in parallel; then the entries that share a
    /// session with one of those logins (they reuse it, or are refused if
    /// their credentials differ).
    fn connect_iscsi_all(&self, params: &[ConnectionParams]) -> Vec<StorageResult<()>> {
        let conns: Vec<StorageResult<IscsiConnection>> =
            params.iter().map(IscsiConnection::new).collect();
        let mut results: Vec<Option<StorageResult<()>>> = vec![None; params.len()];
        let mut logins: Vec<usize> = Vec::new();
        let mut later: Vec<usize> = Vec::new();
        let mut keys: BTreeSet<SessionKey> = BTreeSet::new();
        for (i, c) in conns.iter().enumerate() {
            match c {
                Err(e) => results[i] = Some(Err(e.clone())),
                Ok(c) if keys.contains(&c.key()) => later.push(i),
                Ok(c) => match self.prepare_iscsi(c) {
                    Ok(Prepared::Reused) => results[i] = Some(Ok(())),
                    Ok(Prepared::NeedsLogin) => {
                        keys.insert(c.key());
                        logins.push(i);
                    }
                    Err(e) => results[i] = Some(Err(e)),
                },
            }
        }
        let logged = parallel(&logins, |&i| match &conns[i] {
            Ok(c) => self.login_iscsi(c),
            Err(e) => Err(e.clone()),
        });
        for (i, r) in logins.into_iter().zip(logged) {
            results[i] = Some(r);
        }
        for i in later {
            if let Ok(c) = &conns[i] {
                results[i] = Some(self.connect_iscsi(c));
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(err(Code::InternalError, OP_CONNECT, "no result"))))
            .collect()
    }

    fn lock_for(&self, key: &SessionKey) -> Arc<Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(key.clone()).or_default())
    }

    fn add_ref(&self, key: &SessionKey, id: &str) {
        self.refs.add(key, id);
    }

    /// Removes `id`; returns the ids that still reference the session.
    fn drop_ref(&self, key: &SessionKey, id: &str) -> Vec<String> {
        self.refs.remove(key, id)
    }

    fn sessions(&self, op: &'static str) -> StorageResult<Vec<Session>> {
        self.iscsiadm.sessions().map_err(|e| {
            err(
                Code::StorageServeriSCSIError,
                op,
                format!("cannot list iSCSI sessions: {e}"),
            )
            .caused_by(e)
        })
    }

    /// Logs in (or reuses the session) and waits for the LUNs' maps. See
    /// the module docs.
    pub fn connect_iscsi(&self, conn: &IscsiConnection) -> StorageResult<()> {
        match self.prepare_iscsi(conn)? {
            Prepared::Reused => Ok(()),
            Prepared::NeedsLogin => self.login_iscsi(conn),
        }
    }

    /// Connect's first half: reuses an existing session (checking its
    /// credentials and waiting for its maps), or creates the node record
    /// for a login. Node records are created one at a time, before any
    /// login of the call starts (VDSM's order).
    fn prepare_iscsi(&self, conn: &IscsiConnection) -> StorageResult<Prepared> {
        let key = conn.key();
        let lock = self.lock_for(&key);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);

        if let Some(s) = self
            .sessions(OP_CONNECT)?
            .into_iter()
            .find(|s| key.matches(s))
        {
            let password = self.sysfs.iscsi_session_password(s.sid);
            if !conn.same_credentials(&s, password.as_ref()) {
                return Err(err(
                    Code::iSCSILoginAuthError,
                    OP_CONNECT,
                    format!(
                        "{key}: a session is already logged in with other CHAP credentials \
                         (session {}); not reusing it",
                        s.sid
                    ),
                ));
            }
            tracing::info!(id = conn.id(), %key, sid = s.sid, "iSCSI session already logged in");
            self.add_ref(&key, conn.id());
            let disks: Vec<String> = s.devices().map(str::to_owned).collect();
            self.wait_for_maps(&key, &disks);
            return Ok(Prepared::Reused);
        }

        if conn.iface() != depot_os::iscsi::DEFAULT_IFACE {
            let ifaces = self
                .iscsiadm
                .ifaces()
                .map_err(|e| err(Code::iSCSIifaceError, OP_CONNECT, e.to_string()).caused_by(e))?;
            if !ifaces.iter().any(|i| i == conn.iface()) {
                return Err(err(
                    Code::iSCSIifaceError,
                    OP_CONNECT,
                    format!(
                        "ifaceName={:?}: no such iSCSI iface (depot does not create ifaces)",
                        conn.iface()
                    ),
                ));
            }
        }
        self.iscsiadm
            .node_new(conn.iface(), conn.target(), conn.chap())
            .map_err(|e| err(Code::AddiSCSINodeError, OP_CONNECT, e.to_string()).caused_by(e))?;
        Ok(Prepared::NeedsLogin)
    }

    /// Connect's second half: the login (in parallel with the call's
    /// other logins), then the LUNs' maps. A failed login leaves no node
    /// record behind.
    fn login_iscsi(&self, conn: &IscsiConnection) -> StorageResult<()> {
        let key = conn.key();
        let lock = self.lock_for(&key);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let target = conn.target();
        tracing::info!(id = conn.id(), %key, chap = conn.chap().is_some(), "iSCSI login");
        match self.iscsiadm.login(conn.iface(), target) {
            Ok(Login::AlreadyLoggedIn) => {
                tracing::info!(%key, "login raced with another: session exists");
                self.add_ref(&key, conn.id());
            }
            // A new session: references from before it (a reboot or an
            // admin logged the old one out) are stale.
            Ok(Login::LoggedIn) => self.refs.reset(&key, conn.id()),
            Err(e) => {
                self.undo_node(conn.iface(), target);
                let code = match e.kind() {
                    IscsiErrorKind::AuthFailed => Code::iSCSILoginAuthError,
                    _ => Code::iSCSILoginError,
                };
                return Err(err(code, OP_CONNECT, e.to_string()).caused_by(e));
            }
        }
        match self.session_in_sysfs(&key) {
            Some(sid) => self.wait_for_devices(&key, sid),
            None => tracing::warn!(%key, "logged in, but sysfs shows no such session"),
        }
        Ok(())
    }

    /// The session of `key`, found in sysfs (cheaper than `-P 3`).
    fn session_in_sysfs(&self, key: &SessionKey) -> Option<u32> {
        self.session_attrs(key).map(|a| a.sid)
    }

    /// The sysfs attributes of `key`'s session, if one is logged in (for
    /// the connection watch, which then compares them without resolving
    /// the portal's name again).
    pub(crate) fn session_attrs(&self, key: &SessionKey) -> Option<IscsiSessionAttrs> {
        let sids = match self.sysfs.iscsi_sessions() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot list iSCSI sessions in sysfs");
                return None;
            }
        };
        sids.into_iter().find_map(|sid| {
            self.sysfs
                .iscsi_session(sid)
                .ok()
                .filter(|a| key.matches_attrs(a))
        })
    }

    /// After a failed login: no session and no node record (with its
    /// password) stay behind.
    fn undo_node(&self, iface: &str, target: &Target) {
        if let Err(e) = self.iscsiadm.logout(iface, target) {
            tracing::warn!(error = %e, "logout after a failed login");
        }
        if let Err(e) = self.iscsiadm.node_delete(iface, target) {
            tracing::warn!(error = %e, "cannot delete the node record after a failed login");
        }
    }

    /// Scans the session's LUNs (synchronously: the disks exist when it
    /// returns) and waits for their multipath maps. Problems are logged:
    /// the session is up either way.
    fn wait_for_devices(&self, key: &SessionKey, sid: u32) {
        if let Err(e) = self.iscsiadm.rescan_session(sid) {
            tracing::warn!(%key, error = %e, "session rescan");
        }
        let disks = self.wait_for_disks(key, |d| d.iscsi_session == Some(sid));
        self.wait_for_maps(key, &disks);
    }

    /// The SCSI hctls now.
    fn luns_now(&self) -> BTreeSet<String> {
        self.sysfs
            .scsi_devices()
            .map(|d| d.into_iter().map(|d| d.hctl).collect())
            .unwrap_or_default()
    }

    /// Waits until every SCSI disk that `pick` selects has its block device
    /// (`sd` probes asynchronously, so a scan returns before the disks
    /// exist), at most [`SanTimeouts::map_wait`]; returns the block devices.
    fn wait_for_disks(
        &self,
        what: &dyn std::fmt::Display,
        pick: impl Fn(&ScsiDevice) -> bool,
    ) -> Vec<String> {
        let start = Instant::now();
        loop {
            let devs = match self.sysfs.scsi_devices() {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(%what, error = %e, "cannot list SCSI devices");
                    return Vec::new();
                }
            };
            let wanted: Vec<&ScsiDevice> = devs.iter().filter(|d| d.is_disk() && pick(d)).collect();
            let waiting: Vec<&str> = wanted
                .iter()
                .filter(|d| d.block.is_none())
                .map(|d| d.hctl.as_str())
                .collect();
            if waiting.is_empty() || start.elapsed() >= self.timeouts.map_wait {
                if !waiting.is_empty() {
                    tracing::warn!(%what, luns = ?waiting, "LUNs without a block device");
                }
                return wanted.iter().filter_map(|d| d.block.clone()).collect();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for_maps(&self, what: &dyn std::fmt::Display, disks: &[String]) {
        match self.multipath.wait_for_maps(disks, self.timeouts.map_wait) {
            Ok(w) if w.missing.is_empty() => {
                tracing::info!(%what, disks = disks.len(), waited_ms = w.waited.as_millis() as u64,
                    "every disk has a multipath map");
            }
            Ok(w) => tracing::warn!(%what, missing = ?w.missing,
                "no multipath map for these disks (blacklisted, or multipathd not running?)"),
            Err(e) => tracing::warn!(%what, error = %e, "waiting for multipath maps"),
        }
    }

    /// Drops the connection's reference; logs out when it was the last.
    /// See the module docs.
    pub fn disconnect_iscsi(
        &self,
        conn: &IscsiConnection,
        check: &mut dyn FnMut(&SessionUse<'_>) -> StorageResult<()>,
    ) -> StorageResult<()> {
        let key = conn.key();
        let lock = self.lock_for(&key);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);

        let left = self.drop_ref(&key, conn.id());
        if !left.is_empty() {
            tracing::info!(id = conn.id(), %key, still_used_by = ?left,
                "iSCSI session still used by other connections: staying logged in");
            return Ok(());
        }
        let session = match self.sessions(OP_DISCONNECT) {
            Ok(list) => list.into_iter().find(|s| key.matches(s)),
            Err(e) => {
                self.add_ref(&key, conn.id());
                return Err(e);
            }
        };
        let Some(session) = session else {
            tracing::info!(id = conn.id(), %key, "not logged in");
            if let Err(e) = self.iscsiadm.node_delete(conn.iface(), conn.target()) {
                tracing::warn!(%key, error = %e, "cannot delete the node record");
            }
            return Ok(());
        };
        let wwids = self.session_wwids(&session);
        let usage = SessionUse {
            connection_id: conn.id(),
            key: &key,
            wwids,
        };
        if let Err(e) = check(&usage) {
            self.add_ref(&key, conn.id());
            return Err(e);
        }
        // The maps of LUNs this session is the only path of: no queueing
        // while their paths go (see Multipath::set_queueing), and gone
        // after the logout.
        let disks: Vec<&str> = session.devices().collect();
        let only_here: Vec<(String, String)> = self
            .multipath
            .maps()
            .map(|maps| {
                maps.into_iter()
                    .filter(|m| {
                        usage.wwids.contains(&m.wwid)
                            && m.paths.iter().all(|p| disks.contains(&p.as_str()))
                    })
                    .map(|m| (m.wwid, m.name))
                    .collect()
            })
            .unwrap_or_default();
        for (_, name) in &only_here {
            if let Err(e) = self.multipath.set_queueing(name, false) {
                tracing::warn!(%key, map = %name, error = %e, "cannot stop queueing");
            }
        }
        tracing::info!(id = conn.id(), %key, sid = session.sid, "iSCSI logout");
        if let Err(e) = self.iscsiadm.logout(conn.iface(), conn.target()) {
            self.add_ref(&key, conn.id());
            for (_, name) in &only_here {
                if let Err(e) = self.multipath.set_queueing(name, true) {
                    tracing::warn!(%key, map = %name, error = %e, "cannot restore queueing");
                }
            }
            return Err(err(Code::iSCSILogoutError, OP_DISCONNECT, e.to_string()).caused_by(e));
        }
        if let Err(e) = self.iscsiadm.node_delete(conn.iface(), conn.target()) {
            tracing::warn!(%key, error = %e, "logged out; cannot delete the node record");
        }
        let wwids: Vec<String> = only_here.into_iter().map(|(w, _)| w).collect();
        if !wwids.is_empty() {
            match self
                .multipath
                .remove_pathless(&wwids, self.timeouts.map_wait)
            {
                Ok(left) if left.is_empty() => {}
                Ok(left) => {
                    tracing::warn!(%key, maps = ?left, "maps without paths remain (in use?)")
                }
                Err(e) => tracing::warn!(%key, error = %e, "removing maps without paths"),
            }
        }
        Ok(())
    }

    /// WWIDs of the maps with a path in `session`.
    fn session_wwids(&self, session: &Session) -> Vec<String> {
        let maps = match self.multipath.maps() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list multipath maps");
                return Vec::new();
            }
        };
        let mut wwids: Vec<String> = session
            .devices()
            .filter_map(|d| depot_os::multipath::map_of_path(&maps, d))
            .map(|m| m.wwid.clone())
            .collect();
        wwids.sort();
        wwids.dedup();
        wwids
    }

    /// FCP connect: rescans every SCSI host and waits for the maps of the
    /// disks that appeared.
    fn rescan_fc(&self) -> StorageResult<()> {
        let before = self.luns_now();
        let report = self
            .scanner
            .rescan_all(self.timeouts.host_rescan)
            .map_err(|e| {
                err(
                    Code::StorageServerConnectionError,
                    OP_CONNECT,
                    e.to_string(),
                )
                .caused_by(e)
            })?;
        tracing::info!(scanned = ?report.scanned, failed = ?report.failed,
            took_ms = report.took.as_millis() as u64, "SCSI hosts rescanned");
        self.wait_for_new_disks(&before);
        Ok(())
    }

    /// Rescans iSCSI sessions and SCSI hosts and waits for the maps of new
    /// disks, as VDSM does before listing devices. Problems are logged
    /// only: the listing shows what exists.
    pub fn refresh(&self) {
        let before = self.luns_now();
        if let Err(e) = self.iscsiadm.rescan_sessions() {
            tracing::warn!(error = %e, "iSCSI session rescan");
        }
        match self.scanner.rescan_all(self.timeouts.host_rescan) {
            Ok(r) if r.failed.is_empty() => {}
            Ok(r) => tracing::warn!(failed = ?r.failed, "SCSI host rescan"),
            Err(e) => tracing::warn!(error = %e, "SCSI host rescan"),
        }
        self.wait_for_new_disks(&before);
    }

    /// Waits for the disks of the LUNs that are not in `before`, then for
    /// their maps. (Only new LUNs: an old disk without a map is
    /// blacklisted, e.g. the boot disk, and would make every wait time
    /// out.)
    fn wait_for_new_disks(&self, before: &BTreeSet<String>) {
        let what = "new SCSI disks";
        let new = self.wait_for_disks(&what, |d| !before.contains(&d.hctl));
        if !new.is_empty() {
            self.wait_for_maps(&what, &new);
        }
    }

    // ---- discovery ----

    /// `ISCSIConnection.discoverSendTargets`: the targets `host:port`
    /// offers, as VDSM: with CHAP when a user is given, IPv6 portals only
    /// when `ipv6_enabled`. 475 on failure, 476 on an authentication
    /// failure, 1000 on a bad host.
    pub fn discover(
        &self,
        host: &str,
        port: u16,
        chap: Option<Chap>,
        ipv6_enabled: bool,
    ) -> StorageResult<Vec<Target>> {
        let host = check_host(host)?;
        let portal = Portal::new(host, port);
        tracing::info!(%portal, chap = chap.is_some(), "iSCSI SendTargets discovery");
        let targets = self
            .iscsiadm
            .discover_sendtargets(depot_os::iscsi::DEFAULT_IFACE, &portal, chap.as_ref())
            .map_err(|e| discovery_error(&portal, e))?;
        Ok(targets
            .into_iter()
            .filter(|t| ipv6_enabled || !t.portal.host.contains(':'))
            .collect())
    }
}

fn discovery_error(portal: &Portal, e: IscsiError) -> StorageError {
    let code = match e.kind() {
        IscsiErrorKind::AuthFailed => Code::iSCSILoginAuthError,
        _ => Code::iSCSIDiscoveryError,
    };
    err(code, OP_DISCOVER, format!("portal={portal}, err={e}")).caused_by(e)
}

fn not_san(t: DomainType, op: &'static str) -> StorageError {
    err(
        Code::StorageDomainTypeError,
        op,
        format!(
            "domainType={} ({}) is not a SAN type",
            t.number().unwrap_or(0),
            t.name()
        ),
    )
}

fn check_id(p: &ConnectionParams, op: &'static str) -> StorageResult<()> {
    if p.id.parse::<depot_api::types::Uuid>().is_err() {
        let shown: String = p.id.chars().take(200).collect();
        return Err(err(
            Code::InvalidParameterException,
            op,
            format!("id={shown:?}: not a UUID"),
        ));
    }
    Ok(())
}

fn statuses(
    params: &[ConnectionParams],
    results: Vec<StorageResult<()>>,
    what: &str,
) -> Vec<ConnectionStatus> {
    params
        .iter()
        .zip(results)
        .map(|(p, r)| {
            if let Err(e) = &r {
                tracing::warn!(id = %p.id, error = %e, "{what}");
            }
            ConnectionStatus::new(&p.id, &r)
        })
        .collect()
}

/// Runs `f` on each item, at most [`PARALLEL_LOGINS`] at a time; results
/// in input order.
fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(PARALLEL_LOGINS) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|item| s.spawn(|| f(item))).collect();
            for h in handles {
                // A panic in one login is a bug; re-raise it here.
                out.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3c4e0bde-7c3f-4f9a-9d1a-2b2a3f3e4d5c";

    #[test]
    fn parallel_keeps_order() {
        let items: Vec<u32> = (0..25).collect();
        let out = parallel(&items, |i| {
            std::thread::sleep(Duration::from_millis(u64::from(25 - i)));
            i * 2
        });
        assert_eq!(out, (0..25).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn invalid_entries_fail_alone_before_any_command() {
        // iscsiadm is not even run for entries that do not validate.
        let c = SanConnector::new(CommandRunner::new());
        let params = [
            ConnectionParams {
                id: ID.into(),
                connection: "10.0.0.1".into(),
                ..Default::default()
            },
            ConnectionParams {
                id: "nope".into(),
                ..Default::default()
            },
        ];
        let st = c.connect_all(DomainType::Iscsi, &params);
        assert_eq!(st[0].status, 1000);
        assert_eq!(st[1].status, 1000);
        let st = c.disconnect_all(DomainType::Iscsi, &params, |_| Ok(()));
        assert_eq!(st[0].status, 1000);
        let st = c.disconnect_all(DomainType::Fcp, &params, |_| Ok(()));
        assert_eq!((st[0].status, st[1].status), (0, 1000));
        let st = c.connect_all(DomainType::Nfs, &params[..1]);
        assert_eq!(st[0].status, 372);
    }

    #[test]
    fn references_count_per_session() {
        let c = SanConnector::new(CommandRunner::new());
        let p = |id: &str| ConnectionParams {
            id: id.into(),
            connection: "10.0.0.1".into(),
            iqn: Some("iqn.2026-11.org.depot:t".into()),
            ..Default::default()
        };
        let a = IscsiConnection::new(&p(ID)).unwrap();
        let b_id = "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a";
        let key = a.key();
        c.add_ref(&key, ID);
        c.add_ref(&key, ID);
        c.add_ref(&key, b_id);
        assert_eq!(c.references()[0].1.len(), 2);
        assert_eq!(c.drop_ref(&key, ID), [b_id]);
        assert!(c.drop_ref(&key, b_id).is_empty());
        assert!(c.references().is_empty());
        assert!(c.drop_ref(&key, b_id).is_empty());
    }
}
