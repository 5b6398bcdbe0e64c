//! The SPM (Storage Pool Manager) role of a connected pool: `spmStart`,
//! `spmStop`, `getSpmStatus` (docs/storage.md, "SPM"), and the check the
//! verbs VDSM keeps for the SPM make before they change a pool's domain
//! ([`Storage::require_spm`]).
//!
//! The role is the SPM's lease, sanlock's `SDM` resource in the master
//! domain's `leases` at slot 1 (crate::lockspace), held by depotd's
//! registration with the sanlock daemon: only one host of all that share
//! the storage can hold it, and it goes with depotd (sanlock frees it when
//! depotd dies, and kills depotd when its host id cannot be renewed).
//! Without sanlock (`sanlock.enabled = false`: the single-host default of
//! a development run) the role is this host's alone, with no lease, as
//! VDSM's LocalLock on a LOCALFS pool; sanlock enabled but unavailable is
//! a failure (651), never a silent local role.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use depot_api::storage::{SdUuid, SpUuid};
use depot_api::Code;
use depot_os::sanlock::{Area, HostIdState, Lockspace, Refusal, Resource, Sanlock, SanlockError};

use super::Storage;
use crate::domain::Domain;
use crate::lockspace::{check_sanlock_file, lockspace, SDM_LEASE, SDM_SLOT};
use crate::{StorageError, StorageResult};

/// How long `spmStart` waits for this host's id in the master's lockspace
/// (VDSM's `acquireHostId(wait=True)`): a fresh acquisition takes about
/// 20 s with sanlock's default 10 s I/O timeout, longer when the last
/// owner of the id did not release it (up to about 80 s more).
const HOST_ID_WAIT: Duration = Duration::from_secs(180);
const HOST_ID_POLL: Duration = Duration::from_millis(500);

/// VDSM's reserved host id (clusterlock's `getReservedId`): the id a host
/// in no pool takes a domain's lease with.
const RESERVED_HOST_ID: u64 = 1000;

/// The lease a forced detach holds around its write
/// ([`Storage::take_detach_lease`]).
pub(super) struct DetachLease {
    lease: Resource,
    ls: Lockspace,
    /// Whether taking it joined the lockspace (then it is left after).
    joined: bool,
}

/// VDSM's SPM roles (`sp.SPM_ACQUIRED`, `SPM_CONTEND`, `SPM_FREE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpmRole {
    #[default]
    Free,
    /// `spmStart` is taking the lease.
    Contend,
    Spm,
}

impl SpmRole {
    /// The names `getSpmStatus` answers.
    pub fn name(self) -> &'static str {
        match self {
            SpmRole::Free => "Free",
            SpmRole::Contend => "Contend",
            SpmRole::Spm => "SPM",
        }
    }
}

/// This host's SPM state in a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spm {
    pub role: SpmRole,
    /// The lease's version while this host holds it.
    pub lver: Option<u64>,
    /// The lease this host holds (`None` for the local role).
    lease: Option<Resource>,
}

/// `getSpmStatus`: who is SPM (-1: nobody known), this host's role, and
/// the lease's version (-1 when unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpmStatus {
    pub spm_id: i64,
    pub role: SpmRole,
    pub lver: i64,
}

impl Storage {
    /// `StoragePool.spmStart`: takes the SPM's lease of the connected pool
    /// `sp` and makes this host the SPM. Idempotent (an SPM stays SPM); a
    /// second start while one is taking the lease is 2005. 651 when the
    /// lease cannot be taken (another live host holds it, sanlock is
    /// unavailable, this host's id was not acquired in time). `prevID`
    /// and `prevLver` are only logged, as in VDSM, where they are obsolete.
    pub fn spm_start(&self, sp: SpUuid, prev_id: i64, prev_lver: i64) -> StorageResult<u64> {
        self.spm_start_then(sp, prev_id, prev_lver, &mut || {})
    }

    /// [`spm_start`](Self::spm_start) that runs `on_lease` once this host
    /// holds the SPM's lease and before it reports SPM (getSpmStatus, the
    /// task lists): depotd loads the master's tasks there, as VDSM's
    /// spmStart loads its dumped tasks before it takes the role. It runs
    /// with no lock of the pools held; it is not run when the lease could
    /// not be taken.
    pub fn spm_start_then(
        &self,
        sp: SpUuid,
        prev_id: i64,
        prev_lver: i64,
        on_lease: &mut dyn FnMut(),
    ) -> StorageResult<u64> {
        const OP: &str = "start SPM";
        let pool = self.connected_pool(sp, OP)?;
        let host_id = pool.host_id.and_then(|id| u64::try_from(id).ok());
        {
            let mut pools = self.pools.lock();
            let Some(p) = pools.get_mut(&sp) else {
                return Err(StorageError::new(
                    Code::StoragePoolUnknown,
                    OP,
                    format!("'{sp}'"),
                ));
            };
            match p.spm.role {
                SpmRole::Spm => return Ok(p.spm.lver.unwrap_or(0)),
                SpmRole::Contend => {
                    return Err(StorageError::new(
                        Code::MiscOperationInProgress,
                        OP,
                        format!("spm start {sp}"),
                    ))
                }
                SpmRole::Free => p.spm.role = SpmRole::Contend,
            }
        }
        tracing::info!(pool = %sp, prev_id, prev_lver, master = %pool.master, "starting SPM");
        let taken = host_id
            .ok_or_else(|| {
                StorageError::new(
                    Code::StoragePoolNotConnected,
                    OP,
                    format!("'{sp}' has no host id"),
                )
            })
            .and_then(|id| self.take_spm_lease(pool.master, id))
            .and_then(|(lver, lease)| match self.mount_block_master(pool.master) {
                Ok(()) => Ok((lver, lease)),
                // The master's file system is the SPM's: no role without
                // it, and the lease goes back.
                Err(e) => {
                    if let Some(res) = &lease {
                        if let Err(r) = self.release_spm_lease(res, OP) {
                            tracing::warn!(pool = %sp, error = %r, "cannot release the SPM lease");
                        }
                    }
                    Err(e)
                }
            });
        if taken.is_ok() {
            on_lease();
        }
        let mut pools = self.pools.lock();
        // A disconnect while the lease was being taken: the pool is no
        // longer this host's to manage.
        let p = pools.get_mut(&sp).filter(|p| p.connected);
        match (taken, p) {
            (Ok((lver, lease)), Some(p)) => {
                p.spm = Spm {
                    role: SpmRole::Spm,
                    lver: Some(lver),
                    lease,
                };
                tracing::info!(pool = %sp, lver, "this host is the SPM");
                Ok(lver)
            }
            (Ok((_, lease)), None) => {
                // Disconnected meanwhile: give the lease back.
                if let Some(p) = pools.get_mut(&sp) {
                    p.spm = Spm::default();
                }
                drop(pools);
                self.unmount_block_master(pool.master)?;
                if let Some(res) = lease {
                    self.release_spm_lease(&res, OP)?;
                }
                Err(StorageError::new(
                    Code::StoragePoolNotConnected,
                    OP,
                    format!("'{sp}'"),
                ))
            }
            (Err(e), _) => {
                if let Some(p) = pools.get_mut(&sp) {
                    p.spm.role = SpmRole::Free;
                }
                tracing::warn!(pool = %sp, error = %e, "SPM start failed");
                Err(e)
            }
        }
    }

    /// `StoragePool.spmStop`: releases the SPM's lease. Idempotent (a host
    /// that is not SPM has nothing to stop); 660 when sanlock cannot
    /// release it, and the host stays SPM.
    pub fn spm_stop(&self, sp: SpUuid) -> StorageResult<()> {
        const OP: &str = "stop SPM";
        // As VDSM's spmStop: under the pool's lock, so that no switch,
        // destroy or disconnect is half done when the role goes.
        let _pool_lock = self.lock_pool(sp)?;
        self.connected_pool(sp, OP)?;
        self.stop_spm_of(sp, OP)
    }

    /// Releases the pool's SPM role if this host has it (spmStop, and a
    /// disconnect, which must give the lease up before the host ids).
    pub(super) fn stop_spm_of(&self, sp: SpUuid, op: &'static str) -> StorageResult<()> {
        // The role goes first: no SPM verb passes the check from here, and
        // the mailbox service starts no SPM thread. The running one is
        // stopped (joined: an extend under way finishes) before the lease
        // goes, so no VG change of this host's follows another host's
        // taking the lease.
        let (held, master) = {
            let mut pools = self.pools.lock();
            match pools.get_mut(&sp) {
                Some(p) if p.spm.role == SpmRole::Spm => (std::mem::take(&mut p.spm), p.master),
                _ => return Ok(()),
            }
        };
        self.stop_spm_mailbox(sp);
        // The master's file system goes before the lease: once the lease
        // is free another host may mount it. One that will not unmount
        // keeps the role (and the lease), as VDSM's stopSpm fails.
        if let Err(e) = self.unmount_block_master(master) {
            if let Some(p) = self.pools.lock().get_mut(&sp) {
                p.spm = held;
            }
            return Err(e);
        }
        if let Some(res) = &held.lease {
            if let Err(e) = self.release_spm_lease(res, op) {
                // Still held: still the SPM (the mailbox restarts).
                if let Some(p) = self.pools.lock().get_mut(&sp) {
                    p.spm = held;
                }
                return Err(e);
            }
        }
        tracing::info!(pool = %sp, "SPM stopped");
        Ok(())
    }

    /// `StoragePool.getSpmStatus`: this host's role; who holds the lease
    /// and its version as sanlock reads them from the master domain (any
    /// host in the lockspace can ask), or this host's own when it is SPM.
    pub fn spm_status(&self, sp: SpUuid) -> StorageResult<SpmStatus> {
        const OP: &str = "get SPM status";
        let pool = self.connected_pool(sp, OP)?;
        let own = |spm: &Spm| SpmStatus {
            spm_id: pool.host_id.unwrap_or(-1),
            role: spm.role,
            lver: spm.lver.map_or(-1, |v| v as i64),
        };
        if pool.spm.role == SpmRole::Spm {
            return Ok(own(&pool.spm));
        }
        let free = SpmStatus {
            spm_id: -1,
            role: pool.spm.role,
            lver: -1,
        };
        let Some(client) = self.sanlock_client() else {
            return Ok(free);
        };
        let (res, _) = self.spm_areas(pool.master)?;
        match client.read_lease(&res) {
            Ok(state) => Ok(SpmStatus {
                spm_id: state.owners.first().map_or(-1, |h| h.host_id as i64),
                role: pool.spm.role,
                lver: if state.lver == 0 {
                    -1
                } else {
                    state.lver as i64
                },
            }),
            // A lease area sanlock cannot read (a domain made without
            // sanlock, storage down): nobody is known to be SPM.
            Err(e) => {
                tracing::debug!(pool = %sp, error = %e, "cannot read the SPM lease");
                Ok(free)
            }
        }
    }

    /// The pools connected on this host, each with whether this host is
    /// its SPM: which pools' tasks `Host.getAllTasks*` lists (VDSM lists a
    /// pool's SPM tasks only on its SPM).
    pub fn connected_pools_spm(&self) -> Vec<(SpUuid, bool)> {
        self.pools
            .lock()
            .iter()
            .filter(|(_, p)| p.connected)
            .map(|(sp, p)| (*sp, p.spm.role == SpmRole::Spm))
            .collect()
    }

    /// The connected pool `sd` is a domain of, from memory: the pool an SPM
    /// verb's task on `sd` belongs to (such a verb passed
    /// [`require_spm`](Self::require_spm), so a domain of no connected pool
    /// is one attached to none).
    pub fn connected_pool_of(&self, sd: SdUuid) -> Option<SpUuid> {
        self.pools
            .lock()
            .iter()
            .find(|(_, p)| p.connected && p.domains.contains_key(&sd))
            .map(|(sp, _)| *sp)
    }

    /// Refuses a verb VDSM reserves for the SPM (docs/storage.md, "Verbs
    /// only the SPM runs") on `domain` unless this host may run it: a domain attached
    /// to a pool (POOL_UUIDS in its metadata) needs that pool connected
    /// here (309) and this host its SPM (654); a domain attached to no
    /// pool is free (depot's single-host use). The caller has changed
    /// nothing yet. A domain of a pool whose SPM this host is passes
    /// without reading its metadata (only the SPM attaches and detaches
    /// it); any other reads it, so a restart, which forgets the pools,
    /// never lets a pool's domain through.
    pub(crate) fn require_spm(&self, domain: &Domain, op: &'static str) -> StorageResult<()> {
        let sd = domain.sd();
        let spm_of_its_pool = self
            .pools
            .lock()
            .iter()
            .find(|(_, p)| p.connected && p.spm.role == SpmRole::Spm && p.domains.contains_key(&sd))
            .map(|(sp, _)| *sp);
        if let Some(sp) = spm_of_its_pool {
            return self.require_pool_spm(sp, op);
        }
        match self.read_md(domain)?.attached_pools().first() {
            None => Ok(()),
            Some(sp) => self.require_pool_spm(*sp, op),
        }
    }

    /// [`require_spm`](Self::require_spm) for domain `sd`, for a verb
    /// that checks before it starts a job (`Image.move`: VDSM refuses
    /// before it schedules the task, and so does depot).
    pub fn require_spm_of(&self, sd: SdUuid, op: &'static str) -> StorageResult<()> {
        self.require_spm(&self.locate(sd)?, op)
    }

    /// This host must be the SPM of pool `sp`, connected here: 309 when
    /// the pool is not connected (VDSM's getPool answers 309 for an
    /// unknown pool and a disconnected one alike), 654 when this host is
    /// not its SPM (`Contend` too: the lease is not held yet).
    ///
    /// An SPM holding sanlock's lease also needs the lease to be still
    /// valid ([`spm_lease_lost`](Self::spm_lease_lost)): when it is not,
    /// the role ends here (654), as sanlock, which will kill depotd for
    /// it, has already let it go.
    pub(crate) fn require_pool_spm(&self, sp: SpUuid, op: &'static str) -> StorageResult<()> {
        let held = match self.pools.lock().get(&sp) {
            Some(p) if p.connected && p.spm.role == SpmRole::Spm => {
                p.spm.lease.clone().map(|res| (res, p.host_id))
            }
            _ => None,
        };
        if let Some((res, host_id)) = held {
            let host_id = host_id.and_then(|id| u64::try_from(id).ok()).unwrap_or(0);
            if let Some(why) = self.spm_lease_lost(&res, host_id) {
                self.lose_spm_role(sp, &res, &why);
                return Err(StorageError::new(
                    Code::SpmStatusError,
                    op,
                    format!("this host is no longer the SPM of pool {sp}: {why}"),
                ));
            }
        }
        match self.pools.lock().get(&sp) {
            Some(p) if p.connected && p.spm.role == SpmRole::Spm => Ok(()),
            Some(p) if p.connected => Err(StorageError::new(
                Code::SpmStatusError,
                op,
                format!(
                    "this host is not the SPM of pool {sp} (role {})",
                    p.spm.role.name()
                ),
            )),
            _ => Err(StorageError::new(
                Code::StoragePoolUnknown,
                op,
                format!("pool {sp} is not connected on this host"),
            )),
        }
    }

    /// Why the SPM's lease `res` (this host's, as `host_id`) can no longer
    /// be trusted, or `None` while it is valid. sanlock keeps a lease while
    /// its holder's host id is renewed: it gives up a lockspace whose last
    /// renewal is `8 * io_timeout` old (id_renewal_fail_seconds, 80 s) and
    /// kills the lease holders, and another host may take the lease
    /// `8 * io_timeout + 60` s after the last renewal it saw. So a host
    /// whose sanlock daemon stopped renewing (stuck, frozen, its storage
    /// gone) must stop acting as SPM by the first limit, whether or not the
    /// daemon could kill it yet: the daemon's last renewal of this host's
    /// id (its CLOCK_MONOTONIC second, the clock this process reads too)
    /// is asked for each time, and a daemon that cannot answer counts as
    /// no renewal. Right after joining, before the daemon read the
    /// lockspace once (EAGAIN), the renewal is the fresh acquisition.
    fn spm_lease_lost(&self, res: &Resource, host_id: u64) -> Option<String> {
        let client = self.sanlock_client()?;
        let hosts = match client.get_hosts(&res.lockspace, host_id) {
            Ok(hosts) => hosts,
            Err(e) if e.errno() == Some(libc::EAGAIN) => return None,
            Err(e) => {
                return Some(format!(
                    "sanlock cannot tell whether host id {host_id} is renewed: {e}"
                ))
            }
        };
        let Some(me) = hosts.iter().find(|h| h.host_id == host_id) else {
            return Some(format!(
                "host id {host_id} is not in the lockspace of {}",
                res.lockspace
            ));
        };
        let now = monotonic_seconds();
        let limit = me.timestamp + 8 * u64::from(me.io_timeout.max(1));
        if me.timestamp == 0 || now >= limit {
            return Some(format!(
                "host id {host_id} in the lockspace of {} was last renewed at {} (monotonic s), \
                 {} s ago; sanlock gives the lease up after {} s",
                res.lockspace,
                me.timestamp,
                now.saturating_sub(me.timestamp),
                limit - me.timestamp
            ));
        }
        None
    }

    /// Ends this host's SPM role in pool `sp` because its lease `res` is
    /// lost: no release (sanlock, stuck or already failing the lockspace,
    /// releases it with depotd), the role and the mailbox's SPM side go.
    fn lose_spm_role(&self, sp: SpUuid, res: &Resource, why: &str) {
        {
            let mut pools = self.pools.lock();
            match pools.get_mut(&sp) {
                Some(p) if p.spm.lease.as_ref() == Some(res) => p.spm = Spm::default(),
                _ => return,
            }
        }
        tracing::error!(pool = %sp, lease = %res.lockspace, why, "SPM lease lost: this host is no longer the SPM");
        self.stop_spm_mailbox(sp);
        // The lease's lockspace is the master's name.
        if let Ok(master) = res.lockspace.parse::<SdUuid>() {
            if let Err(e) = self.unmount_block_master(master) {
                tracing::error!(pool = %sp, error = %e,
                    "the master file system stays mounted after the SPM lease was lost");
            }
        }
    }

    /// The sanlock client when sanlock is enabled (it may still be
    /// unavailable: then every call says why).
    fn sanlock_client(&self) -> Option<&Sanlock> {
        self.config.sanlock.as_ref().map(|s| &s.client)
    }

    /// The SPM's lease of domain `master` (`SDM` at slot 1 of its
    /// `leases`), and its lockspace area (`ids`).
    fn spm_areas(&self, master: SdUuid) -> StorageResult<(Resource, PathBuf)> {
        let domain = self.locate(master)?;
        let md = self.read_md(&domain)?;
        let dom_md = domain.paths().dom_md();
        if let Domain::File(d) = &domain {
            for name in ["leases", "ids"] {
                check_sanlock_file(&d.fs, &dom_md.join(name)).map_err(|why| {
                    StorageError::new(
                        Code::AcquireLockFailure,
                        "SPM lease",
                        format!("domain {master}: {why}"),
                    )
                })?;
            }
        }
        let lease = Resource::new(
            master.to_string(),
            SDM_LEASE,
            Area::new(dom_md.join("leases"), SDM_SLOT * md.alignment),
        );
        Ok((lease, dom_md.join("ids")))
    }

    /// Waits for this host's id in the master's lockspace, then acquires
    /// the SPM's lease: its version and the lease, or `None` for the local
    /// role when sanlock is disabled.
    fn take_spm_lease(
        &self,
        master: SdUuid,
        host_id: u64,
    ) -> StorageResult<(u64, Option<Resource>)> {
        const OP: &str = "acquire SPM lease";
        let Some(client) = self.sanlock_client() else {
            tracing::warn!(%master, "sanlock disabled: the SPM role is this host's alone, with no lease");
            return Ok((0, None));
        };
        let fail = |e: SanlockError| {
            let why = match e.refusal() {
                Some(Refusal::Held) => "another host holds it",
                Some(Refusal::Lver) => "its version changed",
                None => "sanlock failed",
            };
            StorageError::new(
                Code::AcquireLockFailure,
                OP,
                format!("SDM lease of {master} for host id {host_id}: {why}: {e}"),
            )
            .caused_by(e)
        };
        let (res, ids) = self.spm_areas(master)?;
        let ls = lockspace(master, host_id, &ids);
        // The monitor acquires the host id in the background; asking here
        // too is harmless (sanlock answers "in progress" or "held").
        client.add_lockspace(&ls).map_err(fail)?;
        let deadline = Instant::now() + HOST_ID_WAIT;
        loop {
            match client.inq_lockspace(&ls).map_err(fail)? {
                HostIdState::Held => break,
                // A release of it was under way when asked (the add was
                // not sent): now that it is over, join again.
                HostIdState::Free if Instant::now() < deadline => {
                    client.add_lockspace(&ls).map_err(fail)?;
                    std::thread::sleep(HOST_ID_POLL);
                }
                _ if Instant::now() >= deadline => {
                    return Err(StorageError::new(
                        Code::AcquireLockFailure,
                        OP,
                        format!(
                        "host id {host_id} in the lockspace of {master} not acquired within {} s",
                        HOST_ID_WAIT.as_secs()
                    ),
                    ))
                }
                _ => std::thread::sleep(HOST_ID_POLL),
            }
        }
        // The wait above can take minutes: the lease file is checked again
        // right before the daemon opens it (docs/architecture.md, "sanlock").
        drop(res);
        let (res, _) = self.spm_areas(master)?;
        let lver = client.acquire(&res, None).map_err(fail)?;
        Ok((lver, Some(res)))
    }

    /// A master switch's first step (VDSM's masterMigrate takes the
    /// cluster lock of the new master before it writes): the SPM's lease
    /// of pool `sp` on domain `new_master` too, while this host still holds
    /// the old one, so that no other host can become SPM on the new master
    /// meanwhile. `None` when there is nothing to take: the local role (no
    /// lease), or the lease already on `new_master` (a repeated switch).
    /// 651 when it cannot be taken, and nothing changed.
    pub(super) fn take_spm_lease_on(
        &self,
        sp: SpUuid,
        new_master: SdUuid,
    ) -> StorageResult<Option<(u64, Resource)>> {
        let (held, host_id) = {
            let pools = self.pools.lock();
            match pools.get(&sp) {
                Some(p) => (p.spm.lease.clone(), p.host_id),
                None => return Ok(None),
            }
        };
        let Some(held) = held.filter(|res| res.lockspace != new_master.to_string()) else {
            return Ok(None);
        };
        let host_id = host_id
            .and_then(|id| u64::try_from(id).ok())
            .ok_or_else(|| {
                StorageError::new(
                    Code::StoragePoolNotConnected,
                    "switch master domain",
                    format!("'{sp}' has no host id"),
                )
            })?;
        tracing::info!(pool = %sp, old = %held.lockspace, new = %new_master, "taking the SPM lease on the new master");
        match self.take_spm_lease(new_master, host_id)? {
            (lver, Some(res)) => Ok(Some((lver, res))),
            (_, None) => Ok(None),
        }
    }

    /// `reconstructMaster`'s lease (VDSM's acquireHostId and
    /// acquireClusterLock on the future master): the SPM's lease of
    /// domain `master` as host `host_id`, held around the writes so that no
    /// SPM of the pool runs on that domain meanwhile. The host id stays
    /// acquired, as in VDSM (the next connect's monitor takes it over).
    /// `None` with sanlock disabled; 651 when it cannot be taken.
    pub(super) fn take_master_lease(
        &self,
        master: SdUuid,
        host_id: u64,
    ) -> StorageResult<Option<Resource>> {
        Ok(self.take_spm_lease(master, host_id)?.1)
    }

    /// Releases a lease [`take_master_lease`](Self::take_master_lease)
    /// took (a refusal is logged: the lease goes with depotd at the
    /// latest).
    pub(super) fn drop_master_lease(&self, lease: Option<Resource>, op: &'static str) {
        if let Some(res) = lease {
            if let Err(e) = self.release_spm_lease(&res, op) {
                tracing::warn!(lease = %res.lockspace, error = %e, "cannot release the SPM lease");
            }
        }
    }

    /// A master switch's last step: the lease [`take_spm_lease_on`]
    /// took becomes the SPM's and the old one is released (a release
    /// sanlock refuses is logged: the master has moved, and the old lease
    /// goes with depotd at the latest). With `written` false (the switch
    /// failed) the new lease is released instead.
    ///
    /// [`take_spm_lease_on`]: Self::take_spm_lease_on
    pub(super) fn finish_spm_lease_move(
        &self,
        sp: SpUuid,
        taken: Option<(u64, Resource)>,
        written: bool,
        op: &'static str,
    ) {
        let Some((lver, new)) = taken else { return };
        let release = if written {
            let mut pools = self.pools.lock();
            match pools.get_mut(&sp) {
                Some(p) if p.spm.role == SpmRole::Spm => {
                    p.spm.lver = Some(lver);
                    p.spm.lease.replace(new)
                }
                _ => Some(new),
            }
        } else {
            Some(new)
        };
        if let Some(res) = release {
            if let Err(e) = self.release_spm_lease(&res, op) {
                tracing::warn!(pool = %sp, lease = %res.lockspace, error = %e,
                    "cannot release an SPM lease after a master switch");
            }
        }
    }

    /// VDSM's cluster lock for a forced detach from a pool not connected
    /// here (hsm's `_detachStorageDomainFromOldPools`): the domain's own
    /// `SDM` lease, under the host id this host holds in the domain's
    /// lockspace already (a DR failover's step 4 joined it), else that of
    /// the pool this host is connected to, or VDSM's reserved id 1000
    /// when it is in none. 651 and nothing
    /// written when another host holds it (a live SPM of that pool: the
    /// pool is not gone after all). `None` with sanlock disabled.
    pub(super) fn take_detach_lease(&self, sd: SdUuid) -> StorageResult<Option<DetachLease>> {
        let Some(client) = self.sanlock_client() else {
            return Ok(None);
        };
        // The id this host holds in the domain's lockspace already, if
        // any (a DR failover joined it before detaching): sanlock refuses
        // a second id in one lockspace (EINVAL).
        let held = self
            .monitor
            .host_id(sd)
            .filter(|_| self.monitor.status(sd).is_some_and(|h| h.acquired));
        let host_id = held.unwrap_or_else(|| {
            self.pools
                .lock()
                .values()
                .find(|p| p.connected)
                .and_then(|p| p.host_id)
                .map_or(RESERVED_HOST_ID, |id| id as u64)
        });
        let (_, ids) = self.spm_areas(sd)?;
        let ls = lockspace(sd, host_id, &ids);
        // Whether this call joins the lockspace, and so must leave it.
        let joined = !matches!(client.inq_lockspace(&ls), Ok(HostIdState::Held));
        match self.take_spm_lease(sd, host_id) {
            Ok((_, lease)) => Ok(lease.map(|lease| DetachLease { lease, ls, joined })),
            Err(e) => {
                if joined {
                    // Synchronously, so that a repeat finds it gone rather
                    // than being removed. Best effort: a host id left
                    // joined goes when depotd's sanlock daemon does.
                    let _ = client.rem_lockspace(&ls, false);
                }
                Err(e)
            }
        }
    }

    /// Gives back what [`take_detach_lease`](Self::take_detach_lease)
    /// took: the lease, then the host id if that call joined the
    /// lockspace (synchronously, about 2 s: a repeat must not find it
    /// being removed). A refusal is logged.
    pub(super) fn drop_detach_lease(&self, taken: Option<DetachLease>, op: &'static str) {
        let (Some(taken), Some(client)) = (taken, self.sanlock_client()) else {
            return;
        };
        if let Err(e) = self.release_spm_lease(&taken.lease, op) {
            tracing::warn!(lease = %taken.lease.lockspace, error = %e, "cannot release the domain's lease");
        }
        if taken.joined {
            if let Err(e) = client.rem_lockspace(&taken.ls, false) {
                tracing::warn!(sd = %taken.ls.name, error = %e, "cannot release the host id");
            }
        }
    }

    fn release_spm_lease(&self, res: &Resource, op: &'static str) -> StorageResult<()> {
        let Some(client) = self.sanlock_client() else {
            return Ok(());
        };
        client.release(res).map_err(|e| {
            StorageError::new(
                Code::ReleaseLockFailure,
                op,
                format!("SDM lease of {}: {e}", res.lockspace),
            )
            .caused_by(e)
        })
    }
}

/// CLOCK_MONOTONIC in whole seconds: sanlock's clock for its lease
/// timestamps (its `monotime()`), on the same host.
fn monotonic_seconds() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0)
}
