//! VDSM's `Lease.*` verbs: VM and external leases in a domain's `xleases`
//! volume (crate::xlease; docs/storage.md, "VM and external leases
//! (xleases)").
//!
//! `create`, `delete` and `rebuild_leases` change the index: one at a time
//! per domain on this host (VDSM's external leases lock), under the
//! domain's shared lock like the other SPM verbs. `info` reads the index
//! only; `status` asks the sanlock daemon about the lease. What needs
//! sanlock (every verb but `info`) is 2009 without it: depot cannot
//! write or read a lease then. Lease metadata (`create`'s `metadata`,
//! `fence`: VDSM keeps it in sanlock's lease value block) is not
//! implemented: 2009.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use depot_api::storage::SdUuid;
use depot_api::types::Uuid;
use depot_api::Code;
use depot_os::lvm::Lvm;
use depot_os::sanlock::{DirectConfig, Sanlock};

use super::Storage;
use crate::domain::Domain;
use crate::xlease::{Created, LeaseInfo, Xleases, XLEASES};
use crate::{StorageError, StorageResult};

/// `Lease.status`: the lease as sanlock reads it from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    /// The host ids holding it (none when free).
    pub owners: Vec<u64>,
    /// The lease's version (`lver`: raised by each acquire).
    pub version: u64,
}

/// Serializes the index changes of one domain on this host.
fn index_lock(sd: SdUuid) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<SdUuid, Arc<Mutex<()>>>>> = OnceLock::new();
    LOCKS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(sd)
        .or_default()
        .clone()
}

fn unsupported(op: &'static str, what: &str) -> StorageError {
    StorageError::new(Code::UnsupportedOperation, op, what.to_owned())
}

impl Storage {
    /// The domain's `xleases` volume (a block domain's LV activated first).
    fn xleases(&self, sd: SdUuid, op: &'static str) -> StorageResult<Xleases> {
        let domain = self.locate(sd)?;
        let md = self.read_md(&domain)?;
        Ok(match &domain {
            Domain::File(d) => Xleases::file(
                d.fs.clone(),
                d.paths.dom_md().join(XLEASES),
                sd,
                md.block_size,
                md.alignment,
            ),
            Domain::Block(_) => {
                let vg = crate::block::vg_name(sd);
                let path = Lvm::lv_path(&vg, XLEASES);
                if !path.exists() {
                    self.lvm.activate(&vg, &[XLEASES]).map_err(|e| {
                        crate::block::lvm_err(Code::CannotActivateLogicalVolume, op, e)
                    })?;
                }
                Xleases::block(path, sd, md.block_size, md.alignment)
            }
        })
    }

    /// `sanlock direct` for writing leases: 2009 when sanlock is off or
    /// its program is not installed.
    fn lease_direct(&self, op: &'static str) -> StorageResult<&DirectConfig> {
        match &self.config.sanlock {
            None => Err(unsupported(
                op,
                "leases need sanlock, and it is disabled (sanlock.enabled = false)",
            )),
            Some(s) => s.direct.as_ref().ok_or_else(|| {
                unsupported(op, "leases need sanlock, and its program is not installed")
            }),
        }
    }

    fn lease_client(&self, op: &'static str) -> StorageResult<&Sanlock> {
        self.config
            .sanlock
            .as_ref()
            .map(|s| &s.client)
            .ok_or_else(|| {
                unsupported(
                    op,
                    "leases need sanlock, and it is disabled (sanlock.enabled = false)",
                )
            })
    }

    /// `Lease.create`: creates lease `lease` in domain `sd`'s `xleases`.
    /// Idempotent, as VDSM's task (an existing lease is reused). 9032
    /// when the volume is full, 9031 when the domain has no valid index.
    pub fn lease_create(
        &self,
        sd: SdUuid,
        lease: Uuid,
        with_metadata: bool,
    ) -> StorageResult<LeaseInfo> {
        const OP: &str = "create lease";
        if with_metadata {
            return Err(unsupported(
                OP,
                "lease metadata (sanlock's lease value block) is not supported yet",
            ));
        }
        let direct = self.lease_direct(OP)?;
        let vol = self.xleases(sd, OP)?;
        let _domain = self.lock_domain(sd, false)?;
        let lock = index_lock(sd);
        let _index = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let (created, info) = vol.create(direct, &lease.to_string())?;
        if created == Created::Existed {
            tracing::info!(%sd, %lease, "reusing existing lease");
        }
        Ok(info)
    }

    /// `Lease.delete`: idempotent, as VDSM's task (a missing lease is
    /// logged, not an error).
    pub fn lease_delete(&self, sd: SdUuid, lease: Uuid) -> StorageResult<()> {
        const OP: &str = "delete lease";
        let direct = self.lease_direct(OP)?;
        let vol = self.xleases(sd, OP)?;
        let _domain = self.lock_domain(sd, false)?;
        let lock = index_lock(sd);
        let _index = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if !vol.delete(direct, &lease.to_string())? {
            tracing::info!(%sd, %lease, "lease already deleted");
        }
        Ok(())
    }

    /// `Lease.rebuild_leases`: the index rebuilt from the sanlock
    /// resources on the volume; returns how many leases it holds.
    pub fn lease_rebuild(&self, sd: SdUuid) -> StorageResult<usize> {
        const OP: &str = "rebuild leases";
        let direct = self.lease_direct(OP)?;
        let vol = self.xleases(sd, OP)?;
        let _domain = self.lock_domain(sd, false)?;
        let lock = index_lock(sd);
        let _index = lock.lock().unwrap_or_else(PoisonError::into_inner);
        vol.rebuild(direct)
    }

    /// `Lease.info`: where the lease is (936 when there is none).
    pub fn lease_info(&self, sd: SdUuid, lease: Uuid) -> StorageResult<LeaseInfo> {
        const OP: &str = "lease info";
        let vol = self.xleases(sd, OP)?;
        let _domain = self.lock_domain(sd, false)?;
        vol.lookup(&lease.to_string())?.ok_or_else(|| {
            StorageError::new(Code::NoSuchLease, OP, format!("{lease} in domain {sd}"))
        })
    }

    /// `Lease.status`: who holds the lease and its version, as the sanlock
    /// daemon reads them (no host id needed).
    pub fn lease_status(&self, sd: SdUuid, lease: Uuid) -> StorageResult<LeaseStatus> {
        const OP: &str = "lease status";
        let client = self.lease_client(OP)?;
        let info = self.lease_info(sd, lease)?;
        let state = client.read_lease(&info.resource()).map_err(|e| {
            StorageError::new(
                Code::GeneralException,
                OP,
                format!(
                    "lease {lease} at {}:{}: {e}",
                    info.path.display(),
                    info.offset
                ),
            )
            .caused_by(e)
        })?;
        Ok(LeaseStatus {
            owners: state.owners.iter().map(|h| h.host_id).collect(),
            version: state.lver,
        })
    }

    /// `Lease.fence`: not supported (the job metadata it checks and
    /// updates lives in sanlock's lease value block, which depot does not
    /// use yet), whatever the lease: 2009, nothing read or written.
    pub fn lease_fence(&self, sd: SdUuid, lease: Uuid) -> StorageResult<()> {
        const OP: &str = "fence lease";
        tracing::info!(%sd, %lease, "Lease.fence refused: not supported");
        Err(unsupported(
            OP,
            "fencing a job's lease needs lease metadata (sanlock's lease value block), \
             which is not supported yet",
        ))
    }
}
