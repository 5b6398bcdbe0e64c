//! VDSM's `Lease.*` verbs: VM and external leases in a domain's `xleases`
//! volume (crate::xlease; docs/storage.md, "VM and external leases
//! (xleases)").
//!
//! `create`, `delete` and `rebuild_leases` change the index: one at a time
//! per domain on this host (VDSM's external leases lock), under the
//! domain's shared lock like the other SPM verbs. `info` reads the index
//! only; `status` asks the sanlock daemon about the lease. What needs
//! sanlock (every verb but `info`) is 2009 without it: depot cannot
//! write or read a lease then. A job's metadata (`create`'s `metadata`,
//! `status`, `fence`) lives in the lease's value block (crate::xlease::
//! job), read and written by acquiring the lease through the sanlock
//! daemon, which needs this host's id in the domain's lockspace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use depot_api::storage::SdUuid;
use depot_api::types::Uuid;
use depot_api::Code;
use depot_os::lvm::Lvm;
use depot_os::sanlock::{DirectConfig, Resource, Sanlock, SanlockError};
use serde_json::{Map, Value};

use super::Storage;
use crate::domain::Domain;
use crate::xlease::job::{self, LVB_SIZE};
use crate::xlease::{Created, LeaseInfo, Xleases, XLEASES};
use crate::{StorageError, StorageResult};

/// `Lease.status`: the lease as sanlock reads it from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    /// The host ids holding it (none when free).
    pub owners: Vec<u64>,
    /// The lease's version (`lver`: raised by each acquire).
    pub version: u64,
    /// The job metadata in its value block, read when the lease is free
    /// and this host could take it (`{}` when none was written).
    pub metadata: Option<Map<String, Value>>,
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
            Domain::File(d) => {
                // Every Lease verb hands sanlock this path (the daemon or
                // a `sanlock direct` child): checked first, each time.
                let path = d.paths.dom_md().join(XLEASES);
                crate::lockspace::check_sanlock_file(&d.fs, &path).map_err(|why| {
                    StorageError::new(Code::GeneralException, op, format!("domain {sd}: {why}"))
                })?;
                Xleases::file(d.fs.clone(), path, sd, md.block_size, md.alignment)
            }
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
    /// Idempotent, as VDSM's task (an existing lease is reused, and its
    /// metadata left as it is). 9032 when the volume is full, 9031 when the
    /// domain has no valid index. With `metadata` (VDSM's JobMetadata,
    /// 1000 when it is not), the new lease is acquired, the metadata
    /// written in its value block with `created`/`modified`, and released
    /// (651 when it cannot be acquired, e.g. no host id here yet).
    pub fn lease_create(
        &self,
        sd: SdUuid,
        lease: Uuid,
        metadata: Option<Map<String, Value>>,
    ) -> StorageResult<LeaseInfo> {
        const OP: &str = "create lease";
        if let Some(md) = &metadata {
            job::check(md).map_err(|why| {
                StorageError::new(
                    Code::InvalidParameterException,
                    OP,
                    format!("metadata: {why}"),
                )
            })?;
        }
        self.require_spm_of(sd, OP)?;
        let direct = self.lease_direct(OP)?;
        // The domain's lock first: the lease file is checked after the
        // wait, right before sanlock is handed its path.
        let _domain = self.lock_domain(sd, false)?;
        let vol = self.xleases(sd, OP)?;
        let (created, info) = {
            let lock = index_lock(sd);
            let _index = lock.lock().unwrap_or_else(PoisonError::into_inner);
            vol.create(direct, &lease.to_string())?
        };
        if created == Created::Existed {
            tracing::info!(%sd, %lease, "reusing existing lease");
            return Ok(info);
        }
        if let Some(given) = metadata {
            // VDSM's keys only, as VDSM writes them.
            let mut md: Map<String, Value> = ["type", "job_id", "job_status", "generation"]
                .into_iter()
                .filter_map(|k| Some((k.to_owned(), given.get(k)?.clone())))
                .collect();
            let now = now();
            md.insert("created".into(), now.into());
            md.insert("modified".into(), now.into());
            let client = self.lease_client(OP)?;
            let res = info.resource();
            self.with_lvb(client, &res, OP, |client| set_lvb(client, &res, &md, OP))?;
            tracing::info!(%sd, %lease, ?md, "lease metadata written");
        }
        Ok(info)
    }

    /// `Lease.delete`: idempotent, as VDSM's task (a missing lease is
    /// logged, not an error).
    pub fn lease_delete(&self, sd: SdUuid, lease: Uuid) -> StorageResult<()> {
        const OP: &str = "delete lease";
        self.require_spm_of(sd, OP)?;
        let direct = self.lease_direct(OP)?;
        // The domain's lock first: the lease file is checked after the
        // wait, right before sanlock is handed its path.
        let _domain = self.lock_domain(sd, false)?;
        let vol = self.xleases(sd, OP)?;
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
        self.require_spm_of(sd, OP)?;
        // The domain's lock first: the lease file is checked after the
        // wait, right before sanlock is handed its path.
        let _domain = self.lock_domain(sd, false)?;
        let vol = self.xleases(sd, OP)?;
        let lock = index_lock(sd);
        let _index = lock.lock().unwrap_or_else(PoisonError::into_inner);
        vol.rebuild()
    }

    /// `Lease.info`: where the lease is (936 when there is none).
    pub fn lease_info(&self, sd: SdUuid, lease: Uuid) -> StorageResult<LeaseInfo> {
        const OP: &str = "lease info";
        // The domain's lock first: the lease file is checked after the
        // wait, right before sanlock is handed its path.
        let _domain = self.lock_domain(sd, false)?;
        let vol = self.xleases(sd, OP)?;
        vol.lookup(&lease.to_string())?.ok_or_else(|| {
            StorageError::new(Code::NoSuchLease, OP, format!("{lease} in domain {sd}"))
        })
    }

    /// `Lease.status`: who holds the lease and its version, as the sanlock
    /// daemon reads them (no host id needed); when it is free, also the
    /// job metadata in its value block, read by acquiring it for a moment
    /// (left out when it cannot be acquired, as in VDSM).
    pub fn lease_status(&self, sd: SdUuid, lease: Uuid) -> StorageResult<LeaseStatus> {
        const OP: &str = "lease status";
        let client = self.lease_client(OP)?;
        let info = self.lease_info(sd, lease)?;
        let res = info.resource();
        let state = client.read_lease(&res).map_err(|e| {
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
        let metadata = if state.owners.is_empty() {
            match client.acquire_lvb(&res) {
                Err(e) => {
                    tracing::warn!(%sd, %lease, error = %e, "cannot acquire the lease to read its metadata");
                    None
                }
                Ok(_) => {
                    let read = get_lvb(client, &res, OP);
                    release(client, &res, OP)?;
                    Some(read?)
                }
            }
        } else {
            None
        };
        Ok(LeaseStatus {
            owners: state.owners.iter().map(|h| h.host_id).collect(),
            version: state.lver,
            metadata,
        })
    }

    /// `Lease.fence`: fences a job that is no longer running (VDSM 4.4.6):
    /// acquires the lease (651 while the job's host holds it), checks that
    /// its metadata is the one given (2009 for another job type or id, 912
    /// for another status, 911 for another generation), then writes it
    /// back with `job_status` FENCED, the next generation and `modified`
    /// now, and releases the lease: a job that had not finished can then
    /// never report success.
    pub fn lease_fence(
        &self,
        sd: SdUuid,
        lease: Uuid,
        metadata: Map<String, Value>,
    ) -> StorageResult<()> {
        const OP: &str = "fence lease";
        job::check(&metadata).map_err(|why| {
            StorageError::new(
                Code::InvalidParameterException,
                OP,
                format!("metadata: {why}"),
            )
        })?;
        let client = self.lease_client(OP)?;
        let info = self.lease_info(sd, lease)?;
        let res = info.resource();
        self.with_lvb(client, &res, OP, |client| {
            let current = get_lvb(client, &res, OP)?;
            let differs = |key: &str, code: Code| {
                let (want, got) = (&metadata[key], current.get(key).unwrap_or(&Value::Null));
                (want != got).then(|| {
                    StorageError::new(
                        code,
                        OP,
                        format!("lease {lease}: {key} is {got}, expected {want}"),
                    )
                })
            };
            for (key, code) in [
                ("type", Code::UnsupportedOperation),
                ("job_id", Code::UnsupportedOperation),
                ("job_status", Code::JobStatusMismatch),
                ("generation", Code::GenerationMismatch),
            ] {
                if let Some(e) = differs(key, code) {
                    return Err(e);
                }
            }
            let generation = metadata["generation"].as_u64().unwrap_or(0);
            let mut fenced = current.clone();
            fenced.insert("modified".into(), now().into());
            fenced.insert("generation".into(), job::next_generation(generation).into());
            fenced.insert("job_status".into(), "FENCED".into());
            set_lvb(client, &res, &fenced, OP)?;
            tracing::info!(%sd, %lease, ?fenced, "job lease fenced");
            Ok(())
        })
    }

    /// Runs `f` with `res` acquired with its value block, and releases it
    /// whatever `f` did (a failed release is the error when `f` succeeded).
    fn with_lvb<T>(
        &self,
        client: &Sanlock,
        res: &Resource,
        op: &'static str,
        f: impl FnOnce(&Sanlock) -> StorageResult<T>,
    ) -> StorageResult<T> {
        client.acquire_lvb(res).map_err(|e| {
            // Held elsewhere: a refusal; held by another process of this
            // host: EEXIST.
            let why = if e.refusal().is_some() || e.errno() == Some(libc::EEXIST) {
                "another host or process holds it"
            } else {
                "sanlock failed (is this host's id in the domain's lockspace?)"
            };
            StorageError::new(
                Code::AcquireLockFailure,
                op,
                format!("lease {} of {}: {why}: {e}", res.name, res.lockspace),
            )
            .caused_by(e)
        })?;
        let out = f(client);
        let released = release(client, res, op);
        let out = out?;
        released?;
        Ok(out)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lvb_err(op: &'static str, res: &Resource, e: impl std::fmt::Display) -> StorageError {
    StorageError::new(
        Code::SanlockLVBError,
        op,
        format!("lease {} of {}: {e}", res.name, res.lockspace),
    )
}

fn get_lvb(
    client: &Sanlock,
    res: &Resource,
    op: &'static str,
) -> StorageResult<Map<String, Value>> {
    let data = client
        .get_lvb(res, LVB_SIZE)
        .map_err(|e| lvb_err(op, res, &e).caused_by(e))?;
    job::from_lvb(&data).map_err(|why| lvb_err(op, res, why))
}

fn set_lvb(
    client: &Sanlock,
    res: &Resource,
    md: &Map<String, Value>,
    op: &'static str,
) -> StorageResult<()> {
    let data = job::to_lvb(md)
        .ok_or_else(|| lvb_err(op, res, format!("metadata over {LVB_SIZE} bytes")))?;
    client
        .set_lvb(res, &data)
        .map_err(|e| lvb_err(op, res, &e).caused_by(e))
}

fn release(client: &Sanlock, res: &Resource, op: &'static str) -> StorageResult<()> {
    client.release(res).map_err(|e: SanlockError| {
        StorageError::new(
            Code::ReleaseLockFailure,
            op,
            format!("lease {} of {}: {e}", res.name, res.lockspace),
        )
        .caused_by(e)
    })
}
