//! Storage pools (docs/storage.md): the pool state this host keeps
//! ([`Pools`]) and the pool verbs (create, connect, disconnect, attach,
//! detach, activate, deactivate, master switch). A pool's lasting state is
//! in its domains' metadata (POOL_UUID, ROLE, MASTER_VERSION); the SPM
//! role and its lease are spm.rs's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use depot_api::storage::{DomainClass, DomainRole, SdUuid, SpUuid};
use depot_api::Code;

use super::spm::Spm;
use super::Storage;
use crate::domain::Domain;
use crate::metadata::domain::DomainMetadata;
use crate::{StorageError, StorageResult};

/// A domain's state in a connected pool (oVirt's domainDict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolDomainStatus {
    Active,
    Attached,
}

impl PoolDomainStatus {
    pub fn name(self) -> &'static str {
        match self {
            PoolDomainStatus::Active => "Active",
            PoolDomainStatus::Attached => "Attached",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PoolState {
    pub name: String,
    pub master: SdUuid,
    pub master_version: i64,
    pub host_id: Option<i64>,
    pub connected: bool,
    pub domains: BTreeMap<SdUuid, PoolDomainStatus>,
    /// This host's SPM role in the pool (spm.rs).
    pub spm: Spm,
}

/// The pools this host knows, under a lock of their own. Lock order: a
/// caller holding the storage state's lock may take this one, never the
/// other way round.
#[derive(Default)]
pub(crate) struct Pools {
    pools: Mutex<HashMap<SpUuid, PoolState>>,
}

impl Pools {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<SpUuid, PoolState>> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `sd` is active in a pool connected on this host.
    pub(crate) fn is_active(&self, sd: SdUuid) -> bool {
        self.lock()
            .values()
            .any(|p| p.connected && p.domains.get(&sd) == Some(&PoolDomainStatus::Active))
    }

    /// Takes `sd` out of every pool (it was detached or formatted).
    pub(crate) fn forget_domain(&self, sd: SdUuid) {
        for pool in self.lock().values_mut() {
            pool.domains.remove(&sd);
        }
    }
}

impl Storage {
    /// `StoragePool.create`: makes `master` the pool's master domain and
    /// attaches the other domains. The master must be a Data domain (317
    /// for ISO) and not a backup domain (319).
    pub fn create_pool(
        &self,
        sp: SpUuid,
        name: String,
        master: SdUuid,
        master_version: i64,
        others: Vec<SdUuid>,
    ) -> StorageResult<()> {
        const OP: &str = "create storage pool";
        let domain = self.locate(master)?;
        let _lock = self.lock_domain(master, true)?;
        let md = self.read_md(&domain)?;
        check_can_be_master(&md, OP)?;
        if let Some(other) = md.attached_pools().into_iter().find(|p| *p != sp) {
            return Err(StorageError::new(
                Code::StorageDomainAlreadyAttached,
                OP,
                format!("master {master} is attached to pool {other}"),
            ));
        }
        self.update_md(&domain, move |md| {
            md.pools = vec![sp];
            md.role = DomainRole::Master;
            md.master_version = Some(master_version);
            Ok(())
        })?;
        drop(_lock);
        let mut domains = BTreeMap::new();
        domains.insert(master, PoolDomainStatus::Attached);
        self.pools.lock().insert(
            sp,
            PoolState {
                name,
                master,
                master_version,
                host_id: None,
                connected: false,
                domains,
                spm: Spm::default(),
            },
        );
        // The pool's creator attaches its domains: no SPM yet (VDSM's
        // create holds a temporary lease of the master instead).
        for sd in others.into_iter().filter(|sd| *sd != master) {
            self.attach_domain(sd, sp, OP)?;
        }
        tracing::info!(pool = %sp, master = %master, "storage pool created");
        Ok(())
    }

    /// `StoragePool.connect`: oVirt tells which domains are active.
    /// The master's metadata must name this pool and version, and no
    /// other domain of `domain_dict` may claim the pool's master role at a
    /// higher version (324: [`check_master`](Self::check_master)). The
    /// host id must be one sanlock takes (1..=2000, else 661 and nothing
    /// changes); the domain monitor acquires it in every active domain's
    /// lockspace in the background (a domain whose lockspace cannot be
    /// joined is logged and reports `acquired` false; the connect does not
    /// fail for it).
    pub fn connect_pool(
        &self,
        sp: SpUuid,
        host_id: i64,
        master: SdUuid,
        master_version: i64,
        domain_dict: Option<BTreeMap<SdUuid, PoolDomainStatus>>,
    ) -> StorageResult<()> {
        const OP: &str = "connect storage pool";
        let sanlock_id = check_host_id(host_id, OP)?;
        let _pool_lock = self.lock_pool(sp)?;
        if let Some(other) = self
            .pools
            .lock()
            .iter()
            .find(|(id, p)| **id != sp && p.connected)
            .map(|(id, _)| *id)
        {
            return Err(StorageError::new(
                Code::CannotConnectMultiplePools,
                OP,
                format!("connected to pool {other}"),
            ));
        }
        let domains =
            domain_dict.unwrap_or_else(|| BTreeMap::from([(master, PoolDomainStatus::Active)]));
        self.check_master(sp, master, master_version, domains.keys().copied(), OP)?;
        {
            let mut pools = self.pools.lock();
            let pool = pools.entry(sp).or_insert_with(|| PoolState {
                name: String::new(),
                master,
                master_version,
                host_id: None,
                connected: false,
                domains: BTreeMap::new(),
                spm: Spm::default(),
            });
            pool.master = master;
            pool.master_version = master_version;
            pool.host_id = Some(host_id);
            pool.connected = true;
            pool.domains = domains.clone();
        }
        for (sd, status) in domains {
            if status == PoolDomainStatus::Active {
                self.monitor.set_host_id(sd, Some(sanlock_id));
                if let Err(e) = self.start_monitoring(sd) {
                    // Its storage may only be frozen: monitored anyway (in
                    // trouble), it becomes valid on its own when the
                    // storage returns, and repoStats shows it meanwhile.
                    tracing::warn!(pool = %sp, sd = %sd, error = %e,
                        "cannot locate a pool domain; monitoring it until it is found");
                    if let Err(e) = self.monitor.start_search(sd, &self.config.repository) {
                        tracing::warn!(pool = %sp, sd = %sd, error = %e, "cannot monitor a pool domain");
                    }
                }
            }
        }
        tracing::info!(pool = %sp, host_id, "connected to storage pool");
        Ok(())
    }

    /// `StoragePool.disconnect`: gives up the SPM role first (its lease
    /// must go before the host ids; 660 if sanlock cannot release it, and
    /// nothing else changes), then stops monitoring the pool's domains,
    /// which releases the host ids. Idempotent.
    pub fn disconnect_pool(&self, sp: SpUuid) -> StorageResult<()> {
        let _pool_lock = self.lock_pool(sp)?;
        self.disconnect_locked(sp)
    }

    /// [`disconnect_pool`](Self::disconnect_pool) with the pool's lock held.
    fn disconnect_locked(&self, sp: SpUuid) -> StorageResult<()> {
        self.stop_spm_of(sp, "disconnect storage pool")?;
        let domains: Vec<SdUuid> = {
            let mut pools = self.pools.lock();
            let Some(pool) = pools.get_mut(&sp) else {
                return Ok(()); // Idempotent: nothing to disconnect.
            };
            pool.connected = false;
            pool.host_id = None;
            pool.domains.keys().copied().collect()
        };
        for sd in domains {
            self.monitor.stop(sd);
        }
        tracing::info!(pool = %sp, "disconnected from storage pool");
        Ok(())
    }

    pub fn pool(&self, sp: SpUuid) -> StorageResult<PoolState> {
        match self.pools.lock().get(&sp) {
            Some(p) if p.connected => Ok(p.clone()),
            _ => Err(StorageError::new(
                Code::StoragePoolUnknown,
                "storage pool info",
                format!("'{sp}'"),
            )),
        }
    }

    /// `StorageDomain.attach`: POOL_UUID = sp, ROLE Regular. Idempotent;
    /// a domain attached to another pool is refused (380). The SPM's verb:
    /// the pool connected here (309) and this host its SPM (654).
    pub fn attach(&self, sd: SdUuid, sp: SpUuid) -> StorageResult<()> {
        const OP: &str = "attach storage domain";
        self.require_pool_spm(sp, OP)?;
        self.attach_domain(sd, sp, OP)
    }

    /// Attaches `sd` to `sp`, a pool this host knows (309 otherwise):
    /// `attach`'s work, and `create`'s for the pool's other domains.
    pub(super) fn attach_domain(
        &self,
        sd: SdUuid,
        sp: SpUuid,
        op: &'static str,
    ) -> StorageResult<()> {
        if !self.pools.lock().contains_key(&sp) {
            return Err(StorageError::new(
                Code::StoragePoolUnknown,
                op,
                format!("'{sp}'"),
            ));
        }
        let domain = self.locate(sd)?;
        let _lock = self.lock_domain(sd, true)?;
        let md = self.read_md(&domain)?;
        if md.class == DomainClass::Backup {
            return Err(StorageError::new(
                Code::StorageDomainAttachError,
                op,
                "legacy export domains are not supported",
            ));
        }
        match md.attached_pools().as_slice() {
            [] => {
                self.update_md(&domain, move |md| {
                    md.pools = vec![sp];
                    md.role = DomainRole::Regular;
                    Ok(())
                })?;
            }
            [p] if *p == sp => {}
            [other, ..] => {
                return Err(StorageError::new(
                    Code::StorageDomainAlreadyAttached,
                    op,
                    format!("'{sd}' is attached to pool {other}"),
                ))
            }
        }
        if let Some(pool) = self.pools.lock().get_mut(&sp) {
            pool.domains.entry(sd).or_insert(PoolDomainStatus::Attached);
        }
        Ok(())
    }

    /// `StorageDomain.detach`. The master cannot be detached (383) and an
    /// active domain must be deactivated first (347, as VDSM's detachSD). `force` clears the
    /// domain's pool whatever it is: the disaster-recovery path, for a
    /// domain whose pool is gone. The SPM's verb (309, 654), except a
    /// forced detach from a pool not connected here: nobody here can be
    /// the SPM of a pool that is gone (VDSM's forced detach from the
    /// blank pool), so it takes the domain's own lease instead, as VDSM
    /// does ([`take_detach_lease`](Self::take_detach_lease)).
    pub fn detach(&self, sd: SdUuid, sp: SpUuid, force: bool) -> StorageResult<()> {
        const OP: &str = "detach storage domain";
        let connected = matches!(self.pools.lock().get(&sp), Some(p) if p.connected);
        if !force || connected {
            self.require_pool_spm(sp, OP)?;
        }
        let domain = self.locate(sd)?;
        let _lock = self.lock_domain(sd, true)?;
        let md = self.read_md(&domain)?;
        if !force {
            if !md.attached_pools().contains(&sp) {
                return Err(StorageError::new(
                    Code::StorageDomainDetachError,
                    OP,
                    format!("'{sd}' is not attached to {sp}"),
                ));
            }
            if md.role == DomainRole::Master {
                return Err(StorageError::new(
                    Code::CannotDetachMasterStorageDomain,
                    OP,
                    format!("'{sd}' is the master of {sp}"),
                ));
            }
            if self.pools.lock().get(&sp).and_then(|p| p.domains.get(&sd))
                == Some(&PoolDomainStatus::Active)
            {
                // VDSM's detachSD: 347, the domain not in the Attached state.
                return Err(StorageError::new(
                    Code::StorageDomainIllegalState,
                    OP,
                    format!("'{sd}' is active: deactivate it first"),
                ));
            }
        }
        // A forced detach from a pool not connected here holds the
        // domain's lease around its write (VDSM's cluster lock): a pool
        // whose SPM is alive after all keeps its domain (651).
        let lease = if force && !connected {
            self.take_detach_lease(sd)?
        } else {
            None
        };
        let written = self.update_md(&domain, move |md| {
            md.pools.clear();
            md.role = DomainRole::Regular;
            Ok(())
        });
        self.drop_detach_lease(lease, OP);
        written?;
        self.monitor.stop(sd);
        self.pools.forget_domain(sd);
        tracing::info!(sd = %sd, pool = %sp, force, "storage domain detached");
        Ok(())
    }

    /// `StorageDomain.activate`: the SPM's verb (309 when the pool is not
    /// connected here, 654 when this host is not its SPM); the domain must
    /// be attached to the pool (359). Starts monitoring it.
    pub fn activate(&self, sd: SdUuid, sp: SpUuid) -> StorageResult<()> {
        const OP: &str = "activate storage domain";
        self.require_pool_spm(sp, OP)?;
        let host_id = self.connected_pool(sp, OP)?.host_id;
        let domain = self.locate(sd)?;
        let md = self.read_md(&domain)?;
        if !md.attached_pools().contains(&sp) {
            return Err(StorageError::new(
                Code::StorageDomainActivateError,
                OP,
                format!("'{sd}' is not attached to {sp}"),
            ));
        }
        self.monitor
            .set_host_id(sd, host_id.and_then(|id| u64::try_from(id).ok()));
        self.start_monitoring(sd)?;
        if let Some(pool) = self.pools.lock().get_mut(&sp) {
            pool.domains.insert(sd, PoolDomainStatus::Active);
        }
        Ok(())
    }

    /// `StorageDomain.deactivate`. Deactivating the master with another
    /// `new_master` moves the master role there (oVirt's master
    /// switch); the new master must be able to be one (317, 319). The
    /// SPM's verb (309, 654).
    pub fn deactivate(
        &self,
        sd: SdUuid,
        sp: SpUuid,
        new_master: Option<SdUuid>,
        master_version: Option<i64>,
    ) -> StorageResult<()> {
        const OP: &str = "deactivate storage domain";
        self.require_pool_spm(sp, OP)?;
        let pool = self.connected_pool(sp, OP)?;
        if pool.master == sd {
            match new_master.filter(|m| *m != sd) {
                Some(m) => self.switch_master(
                    sp,
                    sd,
                    m,
                    master_version.unwrap_or(pool.master_version + 1),
                )?,
                None if pool
                    .domains
                    .values()
                    .filter(|s| **s == PoolDomainStatus::Active)
                    .count()
                    > 1 =>
                {
                    return Err(StorageError::new(
                        Code::StorageDomainActionError,
                        OP,
                        format!("'{sd}' is the master; name another master to deactivate it"),
                    ))
                }
                None => {}
            }
        }
        self.monitor.stop(sd);
        if let Some(pool) = self.pools.lock().get_mut(&sp) {
            if pool.domains.contains_key(&sd) {
                pool.domains.insert(sd, PoolDomainStatus::Attached);
            }
        }
        Ok(())
    }

    /// `StoragePool.switchMaster` (and `deactivate` of the master): moves
    /// the master role of `sp` from `old` to `new` at `version`. The SPM's
    /// verb (309, 654). `new` must be an active domain of the pool (353,
    /// 369) that can be master (317, 319), other than `old` (1000); `old`
    /// must be the pool's master and `version` above the pool's (324, as
    /// VDSM's masterMigrate). Nothing is written until every check passed.
    ///
    /// The new master is written first (ROLE=Master, MASTER_VERSION), the
    /// old one demoted after (ROLE=Regular, MASTER_VERSION=0, as VDSM's
    /// setDomainRegularRole): a crash between the two leaves both claiming
    /// the role, and the higher version wins at connect
    /// ([`check_master`](Self::check_master)). Repeating a switch whose new
    /// master already has the role at `version` finishes it (demotes `old`
    /// if it still claims the role) and succeeds.
    pub fn switch_master(
        &self,
        sp: SpUuid,
        old: SdUuid,
        new: SdUuid,
        version: i64,
    ) -> StorageResult<()> {
        const OP: &str = "switch master domain";
        let _pool_lock = self.lock_pool(sp)?;
        self.require_pool_spm(sp, OP)?;
        if old == new {
            return Err(StorageError::new(
                Code::InvalidParameterException,
                OP,
                format!("the new master {new} is the old one"),
            ));
        }
        let new_domain = self.locate(new)?;
        let old_domain = self.locate(old)?;
        let (first, second) = if old < new { (old, new) } else { (new, old) };
        let _l1 = self.lock_domain(first, true)?;
        let _l2 = self.lock_domain(second, true)?;
        let pool = self.connected_pool(sp, OP)?;
        let md = self.read_md(&new_domain)?;
        let done = md.attached_pools().contains(&sp)
            && md.role == DomainRole::Master
            && md.master_version == Some(version);
        check_switch(&pool, sp, (old, new), version, (&md, done), OP)?;
        let old_md = self.read_md(&old_domain)?;
        if claims_master(&old_md, sp) && old_md.master_version.unwrap_or(0) > version {
            return Err(StorageError::new(
                Code::StoragePoolWrongMaster,
                OP,
                format!(
                    "'{old}' is master of {sp} at version {:?}, above {version}",
                    old_md.master_version
                ),
            ));
        }
        // The SPM's lease on the new master before anything is written;
        // the old one given up once the switch is written.
        let taken = self.take_spm_lease_on(sp, new)?;
        // A block master's file system moves with the role: the new one
        // mounted before anything is written (depotd copies the tasks
        // there), the old one unmounted before its lease goes.
        if let Err(e) = self.mount_block_master(new) {
            self.finish_spm_lease_move(sp, taken, false, OP);
            return Err(e);
        }
        let promoted = if done {
            Ok(())
        } else {
            self.update_md(&new_domain, move |md| {
                md.role = DomainRole::Master;
                md.master_version = Some(version);
                Ok(())
            })
            .map(drop)
        };
        let unmount = if promoted.is_ok() { old } else { new };
        if let Err(e) = self.unmount_block_master(unmount) {
            tracing::warn!(pool = %sp, sd = %unmount, error = %e,
                "a master file system that is no longer the SPM's stays mounted");
        }
        self.finish_spm_lease_move(sp, taken, promoted.is_ok(), OP);
        promoted?;
        // From here `new` is the master on storage (the higher version
        // wins at connect): the switch is done, and this host holds its
        // lease. The old master's demotion is cleanup; if it fails now, a
        // repeat of the verb (the `done` path) finishes it.
        if let Some(pool) = self.pools.lock().get_mut(&sp) {
            pool.master = new;
            pool.master_version = version;
        }
        if let Err(e) = self.demote_old_master(sp, &old_domain) {
            tracing::warn!(pool = %sp, old = %old, error = %e,
                "the old master still claims the role (a lower version); switchMaster again demotes it");
        }
        tracing::info!(pool = %sp, old = %old, new = %new, version, "master domain switched");
        Ok(())
    }

    /// switchMaster's second write: the old master demoted if it still
    /// claims the role.
    fn demote_old_master(&self, sp: SpUuid, old_domain: &Domain) -> StorageResult<()> {
        if claims_master(&self.read_md(old_domain)?, sp) {
            self.update_md(old_domain, |md| {
                demote(md);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The master of pool `sp` is `master` at `version`: its metadata
    /// names the pool, ROLE=Master and that MASTER_VERSION, and none of
    /// `others` (the domains the caller knows in the pool) claims the role
    /// for `sp` at a higher version; 324 otherwise. Two claims are what a
    /// master switch interrupted between its two writes leaves (the new
    /// master written, the old not demoted yet): the higher version is the
    /// master. A domain of `others` that cannot be read claims nothing.
    fn check_master(
        &self,
        sp: SpUuid,
        master: SdUuid,
        version: i64,
        others: impl IntoIterator<Item = SdUuid>,
        op: &'static str,
    ) -> StorageResult<()> {
        let md = self.read_md(&self.locate(master)?)?;
        if !md.attached_pools().contains(&sp)
            || md.role != DomainRole::Master
            || md.master_version != Some(version)
        {
            return Err(StorageError::new(
                Code::StoragePoolWrongMaster,
                op,
                format!(
                    "{master} is {} of pools {:?} at version {:?}, not Master of {sp} at {version}",
                    md.role, md.pools, md.master_version
                ),
            ));
        }
        for sd in others.into_iter().filter(|sd| *sd != master) {
            let claim = match self.locate(sd).and_then(|d| self.read_md(&d)) {
                Ok(md) => md,
                Err(e) => {
                    tracing::debug!(pool = %sp, sd = %sd, error = %e, "cannot read a pool domain's claim to the master role");
                    continue;
                }
            };
            if claim.role == DomainRole::Master
                && claim.attached_pools().contains(&sp)
                && claim.master_version.is_some_and(|v| v > version)
            {
                return Err(StorageError::new(
                    Code::StoragePoolWrongMaster,
                    op,
                    format!(
                        "{sd} is the master of {sp} at version {:?}, above {master}'s {version}",
                        claim.master_version
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `StoragePool.refresh`: this host learns the pool's master anew (a
    /// host that is not the SPM, after the SPM switched the master). The
    /// pool must be connected here (309) and `master` its master at
    /// `version` ([`check_master`](Self::check_master), 324); nothing
    /// changes otherwise. Under the pool's lock, so that a refresh never
    /// interleaves with a connect, a switch or another refresh (one that
    /// read the old master before a switch wrote the new one would put
    /// the old one back).
    pub fn refresh_pool(&self, sp: SpUuid, master: SdUuid, version: i64) -> StorageResult<()> {
        const OP: &str = "refresh storage pool";
        let _pool_lock = self.lock_pool(sp)?;
        let pool = match self.pools.lock().get(&sp) {
            Some(p) if p.connected => p.clone(),
            _ => {
                return Err(StorageError::new(
                    Code::StoragePoolUnknown,
                    OP,
                    format!("pool {sp} is not connected on this host"),
                ))
            }
        };
        self.check_master(sp, master, version, pool.domains.keys().copied(), OP)?;
        if let Some(p) = self.pools.lock().get_mut(&sp) {
            p.master = master;
            p.master_version = version;
        }
        tracing::info!(pool = %sp, master = %master, version, "storage pool refreshed");
        Ok(())
    }

    /// `StoragePool.destroy`, checked in VDSM's order: the pool connected
    /// here (309), with the host id it was connected with (700), this host
    /// its SPM (654), and no domain but the master active (347, VDSM's
    /// detachSD: the engine deactivates them first); nothing changes when
    /// a check fails. Detaches every domain of the pool, the master last
    /// (POOL_UUID loses the pool; ROLE=Regular; the master's
    /// MASTER_VERSION=0), then disconnects (the SPM's lease, then the host
    /// ids) and forgets the pool. A domain that cannot be written fails
    /// the call with the pool still connected and this host SPM, the
    /// domains before it detached: a repeat goes on from there. Once
    /// destroyed the pool is unknown here: a repeat is 309.
    pub fn destroy_pool(&self, sp: SpUuid, host_id: i64) -> StorageResult<()> {
        const OP: &str = "destroy storage pool";
        let _pool_lock = self.lock_pool(sp)?;
        let pool = self.connected_pool(sp, OP)?;
        if pool.host_id != Some(host_id) {
            return Err(StorageError::new(
                Code::HostIdMismatch,
                OP,
                format!(
                    "host id {host_id}; {sp} is connected with {:?}",
                    pool.host_id
                ),
            ));
        }
        self.require_pool_spm(sp, OP)?;
        if let Some((sd, _)) = pool
            .domains
            .iter()
            .find(|(sd, status)| **sd != pool.master && **status == PoolDomainStatus::Active)
        {
            return Err(StorageError::new(
                Code::StorageDomainIllegalState,
                OP,
                format!("'{sd}' is active in {sp}: deactivate it first"),
            ));
        }
        let others = pool.domains.keys().copied().filter(|sd| *sd != pool.master);
        for sd in others.chain([pool.master]) {
            self.leave_pool(sd, sp, OP)?;
        }
        self.disconnect_locked(sp)?;
        self.pools.lock().remove(&sp);
        tracing::info!(pool = %sp, "storage pool destroyed");
        Ok(())
    }

    /// Takes `sd` out of pool `sp` on storage: POOL_UUID without `sp`,
    /// ROLE=Regular, MASTER_VERSION=0 if it was master. Nothing to do for
    /// a domain not attached to `sp`.
    fn leave_pool(&self, sd: SdUuid, sp: SpUuid, op: &'static str) -> StorageResult<()> {
        let domain = self.locate(sd)?;
        let _lock = self.lock_domain(sd, true)?;
        let md = self.read_md(&domain)?;
        if !md.attached_pools().contains(&sp) {
            return Ok(());
        }
        self.update_md(&domain, move |md| {
            md.pools.retain(|p| *p != sp);
            demote(md);
            Ok(())
        })?;
        tracing::info!(sd = %sd, pool = %sp, op, "storage domain left its pool");
        Ok(())
    }

    /// `StoragePool.reconstructMaster`: disaster recovery's tool
    /// (docs/storage.md, "Reconstructing the master"). On a host where
    /// the pool is not connected (325), makes `master`, which must be in
    /// `domains` (1000) and able to be master (317, 319) and not attached
    /// to another pool (380), the master of `sp` at `version`, then
    /// attaches every other domain of `domains` it can read to `sp` (a
    /// master among them demoted), holding the SPM's lease of `master`
    /// meanwhile when sanlock is enabled (651 and nothing written when
    /// another host holds it). Checks no version: the caller (the engine)
    /// has decided the old master is gone.
    pub fn reconstruct_master(
        &self,
        sp: SpUuid,
        host_id: i64,
        name: String,
        master: SdUuid,
        version: i64,
        domains: BTreeMap<SdUuid, PoolDomainStatus>,
    ) -> StorageResult<()> {
        const OP: &str = "reconstruct master";
        let sanlock_id = check_host_id(host_id, OP)?;
        // Held to the end: no connect can slip in between the 325 check
        // and the pool's state written below.
        let _pool_lock = self.lock_pool(sp)?;
        if matches!(self.pools.lock().get(&sp), Some(p) if p.connected) {
            return Err(StorageError::new(
                Code::StoragePoolConnected,
                OP,
                format!("pool {sp} is connected on this host"),
            ));
        }
        if !domains.contains_key(&master) {
            return Err(StorageError::new(
                Code::InvalidParameterException,
                OP,
                format!("master {master} is not in domainDict"),
            ));
        }
        let domain = self.locate(master)?;
        let lock = self.lock_domain(master, true)?;
        let md = self.read_md(&domain)?;
        check_can_be_master(&md, OP)?;
        if let Some(other) = md.attached_pools().into_iter().find(|p| *p != sp) {
            return Err(StorageError::new(
                Code::StorageDomainAlreadyAttached,
                OP,
                format!("master {master} is attached to pool {other}"),
            ));
        }
        // The SPM's lease of the future master around the writes (651,
        // nothing written, when another host holds it).
        let lease = self.take_master_lease(master, sanlock_id)?;
        let written = self.update_md(&domain, move |md| {
            md.pools = vec![sp];
            md.role = DomainRole::Master;
            md.master_version = Some(version);
            Ok(())
        });
        drop(lock);
        if written.is_ok() {
            for sd in domains.keys().copied().filter(|sd| *sd != master) {
                if let Err(e) = self.join_reconstructed(sd, sp) {
                    tracing::warn!(pool = %sp, sd = %sd, error = %e,
                        "reconstruct master: a domain of domainDict is left as it is");
                }
            }
        }
        self.drop_master_lease(lease, OP);
        written?;
        self.pools.lock().insert(
            sp,
            PoolState {
                name,
                master,
                master_version: version,
                host_id: None,
                connected: false,
                domains,
                spm: Spm::default(),
            },
        );
        tracing::info!(pool = %sp, master = %master, version, host_id, "master reconstructed");
        Ok(())
    }

    /// A domain of a reconstructed pool: attached to `sp` (unless it is
    /// another pool's: 380), ROLE=Regular (a former master gets
    /// MASTER_VERSION=0).
    fn join_reconstructed(&self, sd: SdUuid, sp: SpUuid) -> StorageResult<()> {
        const OP: &str = "reconstruct master";
        let domain = self.locate(sd)?;
        let _lock = self.lock_domain(sd, true)?;
        let md = self.read_md(&domain)?;
        if let Some(other) = md.attached_pools().into_iter().find(|p| *p != sp) {
            return Err(StorageError::new(
                Code::StorageDomainAlreadyAttached,
                OP,
                format!("'{sd}' is attached to pool {other}"),
            ));
        }
        self.update_md(&domain, move |md| {
            md.pools = vec![sp];
            demote(md);
            Ok(())
        })?;
        Ok(())
    }

    pub(super) fn connected_pool(&self, sp: SpUuid, op: &'static str) -> StorageResult<PoolState> {
        match self.pools.lock().get(&sp) {
            Some(p) if p.connected => Ok(p.clone()),
            Some(_) => Err(StorageError::new(
                Code::StoragePoolNotConnected,
                op,
                format!("'{sp}'"),
            )),
            None => Err(StorageError::new(
                Code::StoragePoolUnknown,
                op,
                format!("'{sp}'"),
            )),
        }
    }

    /// Whether `sd` is in use by a pool connected on this host.
    pub fn is_active(&self, sd: SdUuid) -> bool {
        self.pools.is_active(sd)
    }
}

/// Only a Data domain that is not a backup domain can be master.
/// A host id sanlock takes: 1..=2000 (its most hosts per lockspace). VDSM
/// hands any number to sanlock, which refuses it with EINVAL, reported as
/// 661 AcquireHostIdFailure; depot refuses it at once, before anything
/// changes.
fn check_host_id(host_id: i64, op: &'static str) -> StorageResult<u64> {
    u64::try_from(host_id)
        .ok()
        .filter(|id| (1..=depot_os::sanlock::MAX_HOST_ID).contains(id))
        .ok_or_else(|| {
            StorageError::new(
                Code::AcquireHostIdFailure,
                op,
                format!(
                    "host id {host_id}: sanlock host ids are 1 to {}",
                    depot_os::sanlock::MAX_HOST_ID
                ),
            )
        })
}

/// Whether `md` claims the master role of pool `sp`.
fn claims_master(md: &DomainMetadata, sp: SpUuid) -> bool {
    md.role == DomainRole::Master && md.attached_pools().contains(&sp)
}

fn check_can_be_master(md: &DomainMetadata, op: &'static str) -> StorageResult<()> {
    if md.class != DomainClass::Data {
        return Err(StorageError::new(
            Code::IsoCannotBeMasterDomain,
            op,
            format!("'{}' is a {} domain", md.sd_uuid, md.class),
        ));
    }
    if md.backup {
        return Err(StorageError::new(
            Code::BackupCannotBeMasterDomain,
            op,
            format!("'{}' is a backup domain", md.sd_uuid),
        ));
    }
    Ok(())
}

/// switchMaster's checks of the pool as this host knows it, before
/// anything is taken or written. `done`: `new` already says it is the
/// master of `sp` at `version` (`md` is its metadata).
fn check_switch(
    pool: &PoolState,
    sp: SpUuid,
    (old, new): (SdUuid, SdUuid),
    version: i64,
    (md, done): (&DomainMetadata, bool),
    op: &'static str,
) -> StorageResult<()> {
    // A repeat of a finished switch (`done`) passes with the pool's
    // master already `new` at `version`; anything else is checked as
    // a new switch, so a stale claim of `new` cannot move the lease.
    let wrong = |why: String| Err(StorageError::new(Code::StoragePoolWrongMaster, op, why));
    if pool.master != old && !(done && pool.master == new) {
        return wrong(format!("the master of {sp} is {}, not {old}", pool.master));
    }
    if version < pool.master_version || (!done && version == pool.master_version) {
        return wrong(format!(
            "master version {version} is not above the pool's {}",
            pool.master_version
        ));
    }
    match pool.domains.get(&new) {
        Some(PoolDomainStatus::Active) => {}
        Some(PoolDomainStatus::Attached) => {
            return Err(StorageError::new(
                Code::StorageDomainNotActive,
                op,
                format!("'{new}' is not active in {sp}"),
            ))
        }
        None => {
            return Err(StorageError::new(
                Code::StorageDomainNotInPool,
                op,
                format!("'{new}' is not a domain of {sp}"),
            ))
        }
    }
    if !done {
        check_can_be_master(md, op)?;
        if !md.attached_pools().contains(&sp) {
            return Err(StorageError::new(
                Code::StorageDomainNotInPool,
                op,
                format!("'{new}' is not attached to {sp}"),
            ));
        }
    }
    Ok(())
}

/// A domain that is no master (any more): ROLE=Regular, and
/// MASTER_VERSION=0 if it was the master, as VDSM's setDomainRegularRole.
fn demote(md: &mut DomainMetadata) {
    if md.role == DomainRole::Master {
        md.master_version = Some(0);
    }
    md.role = DomainRole::Regular;
}
