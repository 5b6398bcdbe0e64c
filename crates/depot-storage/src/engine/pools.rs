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
    /// The master's metadata must name this pool and version (324). The
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
        let domain = self.locate(master)?;
        let md = self.read_md(&domain)?;
        if !md.attached_pools().contains(&sp)
            || md.role != DomainRole::Master
            || md.master_version != Some(master_version)
        {
            return Err(StorageError::new(
                Code::StoragePoolWrongMaster,
                OP,
                format!(
                    "{master} is {} of pools {:?} at version {:?}, not Master of {sp} at {master_version}",
                    md.role, md.pools, md.master_version
                ),
            ));
        }
        let domains =
            domain_dict.unwrap_or_else(|| BTreeMap::from([(master, PoolDomainStatus::Active)]));
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
    fn attach_domain(&self, sd: SdUuid, sp: SpUuid, op: &'static str) -> StorageResult<()> {
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
    /// active domain must be deactivated first (382). `force` clears the
    /// domain's pool whatever it is: the disaster-recovery path, for a
    /// domain whose pool is gone. The SPM's verb (309, 654), except a
    /// forced detach from a pool not connected here: nobody here can be
    /// the SPM of a pool that is gone (VDSM's forced detach from the
    /// blank pool).
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
                return Err(StorageError::new(
                    Code::StorageDomainActive,
                    OP,
                    format!("'{sd}' is active"),
                ));
            }
        }
        self.update_md(&domain, move |md| {
            md.pools.clear();
            md.role = DomainRole::Regular;
            Ok(())
        })?;
        self.monitor.stop(sd);
        self.pools.forget_domain(sd);
        tracing::info!(sd = %sd, pool = %sp, force, "storage domain detached");
        Ok(())
    }

    /// `StorageDomain.activate`: the pool must be connected here (313) and
    /// the domain attached to it (359). Starts monitoring it. The SPM's
    /// verb (309, 654).
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

    /// Moves the master role from `old` to `new` (both attached to `sp`).
    pub fn switch_master(
        &self,
        sp: SpUuid,
        old: SdUuid,
        new: SdUuid,
        version: i64,
    ) -> StorageResult<()> {
        const OP: &str = "switch master domain";
        let new_domain = self.locate(new)?;
        let old_domain = self.locate(old)?;
        let (first, second) = if old < new { (old, new) } else { (new, old) };
        let _l1 = self.lock_domain(first, true)?;
        let _l2 = self.lock_domain(second, true)?;
        let md = self.read_md(&new_domain)?;
        check_can_be_master(&md, OP)?;
        if !md.attached_pools().contains(&sp) {
            return Err(StorageError::new(
                Code::StoragePoolWrongMaster,
                OP,
                format!("'{new}' is not attached to {sp}"),
            ));
        }
        self.update_md(&new_domain, move |md| {
            md.role = DomainRole::Master;
            md.master_version = Some(version);
            Ok(())
        })?;
        self.update_md(&old_domain, |md| {
            md.role = DomainRole::Regular;
            Ok(())
        })?;
        if let Some(pool) = self.pools.lock().get_mut(&sp) {
            pool.master = new;
            pool.master_version = version;
        }
        tracing::info!(pool = %sp, old = %old, new = %new, version, "master domain switched");
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
