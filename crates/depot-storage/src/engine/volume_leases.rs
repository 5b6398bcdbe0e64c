//! Volume leases (docs/storage.md, "Volume leases"): which domains have
//! them, the formatting of a new volume's lease, and the lease a job
//! holds on the volume it writes (`SDM.copy_data`, `SDM.update_volume`).
//!
//! A domain has volume leases when sanlock is enabled and the domain was
//! formatted with a lockspace (its `SDM` lease is there: VDSM's
//! `hasVolumeLeases()` of a sanlock domain). That never changes for a
//! domain, so it is found once per domain (one `sanlock direct
//! read_leader` in a child, with its metadata read for the sector size
//! and alignment) and kept until the domain is formatted.
//!
//! A job takes its destination's lease through depotd's registration
//! with the sanlock daemon (as the SPM's lease is taken, spm.rs), for the
//! job's life: the guard releases it when the job ends however it ends,
//! and sanlock releases it when depotd dies. The lease needs this host's
//! id in the domain's lockspace, which depot acquires for the domains
//! active in a connected pool (the monitor): on a domain used outside a
//! connected pool (depot's single-host use, which VDSM has not) there is
//! no host id to take it with, and the job goes on without it, logged.
//!
//! `Volume.getInfo` reports a volume's lease as VDSM does (volume.py
//! `getInfo`/`getLeaseStatus`, clusterlock.py `SANLock.inspect`): where
//! it is, and, when the daemon can read it, its holders and version
//! ([`VolumeLease`]). On a file domain the mount's helper reads the
//! lease's first sector (its leader record: owner, timestamp, version)
//! in the same round trip as the volume's own files ([`LeasePlace`]);
//! on a block domain the daemon reads it (`sanlock_read_resource_owners`,
//! which reads the whole 1 MiB area). No thread of depotd touches the
//! storage for it either way.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use depot_api::storage::{ImgUuid, SdUuid, VolUuid};
use depot_api::Code;
use depot_os::sanlock::{
    direct_read_leader, Area, Geometry, HostInfo, HostStatus, LeaseState, Refusal, Resource,
    Sanlock, SanlockError,
};

use super::{Storage, VolRef};
use crate::domain::Domain;
use crate::lockspace::{
    check_sanlock_file, volume_lease, SanlockConfig, VolumeLeases, SDM_LEASE, SDM_SLOT,
};
use crate::mount_fs::{Look, Seen};
use crate::{StorageError, StorageResult};

/// sanlock_rv.h's `SANLK_LEADER_MAGIC`: no leader record where one was
/// looked for (zeros, a hole).
const SANLK_LEADER_MAGIC: i32 = -223;

/// Per domain: its lease geometry when it has volume leases, `None` when
/// it has none (found once: module docs).
#[derive(Default)]
pub(crate) struct LeaseDomains(Mutex<HashMap<SdUuid, Option<Geometry>>>);

impl LeaseDomains {
    fn get(&self, sd: SdUuid) -> Option<Option<Geometry>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&sd)
            .copied()
    }

    fn set(&self, sd: SdUuid, geometry: Option<Geometry>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(sd, geometry);
    }

    /// Forgets `sd` (formatted: a new domain may take its id).
    pub(crate) fn forget(&self, sd: SdUuid) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&sd);
    }
}

/// A volume lease this process holds: released on drop (the job ended,
/// failed or was aborted).
pub(crate) struct HeldVolumeLease {
    client: Sanlock,
    res: Resource,
}

impl Drop for HeldVolumeLease {
    fn drop(&mut self) {
        match self.client.release(&self.res) {
            Ok(()) => {
                tracing::info!(sd = %self.res.lockspace, vol = %self.res.name, "volume lease released")
            }
            // sanlock releases it when depotd exits; until then the
            // volume cannot be written by another host.
            Err(e) => tracing::error!(sd = %self.res.lockspace, vol = %self.res.name, error = %e,
                "cannot release the volume lease"),
        }
    }
}

/// A volume's lease as `Volume.getInfo` reports it (VDSM's
/// `VolumeLeaseStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeLease {
    pub path: PathBuf,
    pub offset: u64,
    /// `None` when the lease cannot be read (VDSM: "needs repair", the
    /// `owners` and `version` keys are left out).
    pub status: Option<VolumeLeaseStatus>,
}

/// Who holds a volume's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeLeaseStatus {
    /// Host ids; empty when the lease is free.
    pub owners: Vec<u64>,
    /// The lease's version (lver) when a host holds it, or held it and
    /// is known to have lost it; `None` when it is free (VDSM's `inspect`
    /// says `None, None` then, although sanlock knows the version).
    pub version: Option<u64>,
}

/// Where a volume's lease is, for `Volume.getInfo`
/// ([`Storage::volume_lease_place`]), and how it is read: on a file
/// domain the caller has the mount's helper read [`LeasePlace::sector`]
/// in the same round trip as the volume's own files (docs/performance.md,
/// "Volume.getInfo's lease") and hands the bytes to
/// [`LeasePlace::reported_from`]; on a block domain the daemon reads it
/// ([`LeasePlace::reported_by_daemon`]).
pub(super) struct LeasePlace<'a> {
    client: &'a Sanlock,
    /// The domain's sector size: the leader record's length.
    sector: u32,
    res: Resource,
    vol: VolUuid,
}

impl LeasePlace<'_> {
    /// The read of a file volume's lease: its first sector, the leader
    /// record, with O_DIRECT (what another host wrote, not a cached page).
    /// Not checked with `check_sanlock_file` first: that guards the paths
    /// handed to sanlock, which follows symlinks and writes; this read is
    /// depot's own, through the helper, which follows no symlink, opens
    /// only a regular file on the mount's own file system, and writes
    /// nothing. What a hard link planted there could show is parsed as this
    /// volume's leader record or refused, never answered as bytes.
    pub(super) fn sector(&self) -> Look<'_> {
        let area = &self.res.area;
        Look::ReadDirect(&area.path, area.offset, self.sector)
    }

    /// The lease as getInfo reports it, from what [`LeasePlace::sector`]
    /// read (`None`: it was not read).
    pub(super) fn reported_from(self, read: Option<io::Result<Seen>>) -> VolumeLease {
        let state = match read {
            Some(Ok(Seen::Data(bytes))) => parse_leader(&bytes, self.vol),
            Some(Ok(other)) => Err(format!("data expected, the helper answered {other:?}")),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the lease's sector was not read".into()),
        };
        self.report(state)
    }

    /// The lease as getInfo reports it, read by the daemon
    /// (`sanlock_read_resource_owners`: the whole 1 MiB area; a block
    /// domain's `leases` LV is not read on depotd's threads).
    pub(super) fn reported_by_daemon(self) -> VolumeLease {
        let state = self.client.read_lease(&self.res).map_err(|e| e.to_string());
        self.report(state)
    }

    /// Logged when the lease cannot be read: reported without its status.
    fn report(self, read: Result<LeaseState, String>) -> VolumeLease {
        let status = match read {
            Ok(state) => Some(lease_status(self.client, &self.res, state)),
            Err(e) => {
                tracing::warn!(sd = %self.res.lockspace, vol = %self.vol, error = %e,
                    "cannot read the volume's lease");
                None
            }
        };
        VolumeLease {
            path: self.res.area.path,
            offset: self.res.area.offset,
            status,
        }
    }
}

impl Storage {
    /// Where the lease of volume `img`/`vol` on `domain` is, for
    /// `Volume.getInfo`: `None` when the domain has no volume leases
    /// (sanlock disabled, no lockspace), as VDSM leaves the key out then,
    /// or when not even the lease's place is known (logged). Never an
    /// error: getInfo answers about the volume regardless.
    pub(super) fn volume_lease_place(
        &self,
        domain: &Domain,
        img: ImgUuid,
        vol: VolUuid,
    ) -> Option<LeasePlace<'_>> {
        let sd = domain.sd();
        let leases = match self.volume_leases(domain, Code::VolumeMetadataReadError) {
            Ok(leases) => leases?,
            Err(e) => {
                tracing::warn!(%sd, %vol, error = %e, "cannot tell whether the domain has volume leases");
                return None;
            }
        };
        let area = match domain.volume_lease_area(
            self.volume_tools(),
            img,
            vol,
            leases.geometry.align(),
        ) {
            Ok(area) => area,
            Err(e) => {
                tracing::warn!(%sd, %vol, error = %e, "cannot find the volume's lease");
                return None;
            }
        };
        Some(LeasePlace {
            client: &leases.sanlock.client,
            sector: leases.geometry.sector(),
            res: volume_lease(sd, vol, area),
            vol,
        })
    }

    /// How new volumes' leases are formatted on `domain`: `None` when it
    /// has no volume leases. `code` is the error of a domain whose
    /// lockspace cannot be looked at.
    pub(super) fn volume_leases(
        &self,
        domain: &Domain,
        code: Code,
    ) -> StorageResult<Option<VolumeLeases<'_>>> {
        let Some(sanlock) = &self.config.sanlock else {
            return Ok(None);
        };
        Ok(self
            .lease_geometry(domain, sanlock, code)?
            .map(|geometry| VolumeLeases { sanlock, geometry }))
    }

    /// The domain's lease geometry if it has a lockspace (found once).
    fn lease_geometry(
        &self,
        domain: &Domain,
        sanlock: &SanlockConfig,
        code: Code,
    ) -> StorageResult<Option<Geometry>> {
        const OP: &str = "look for the domain's lockspace";
        let sd = domain.sd();
        if let Some(known) = self.lease_domains.get(sd) {
            return Ok(known);
        }
        let md = self.read_md(domain)?;
        let err =
            |e: SanlockError| StorageError::new(code, OP, format!("domain {sd}: {e}")).caused_by(e);
        let area = Area::new(
            domain.paths().dom_md().join("leases"),
            SDM_SLOT * md.alignment,
        );
        if let Domain::File(d) = domain {
            check_sanlock_file(&d.fs, &area.path)
                .map_err(|why| StorageError::new(code, OP, format!("domain {sd}: {why}")))?;
        }
        let name = sd.to_string();
        let found = match &sanlock.direct {
            Some(direct) => direct_read_leader(direct, &name, SDM_LEASE, true, &area).map(drop),
            None => sanlock
                .client
                .read_lease(&Resource::new(name, SDM_LEASE, area))
                .map(drop),
        };
        let has = match found {
            Ok(()) => true,
            // A domain made without sanlock: `leases` is empty (sanlock
            // reads short: EMSGSIZE) or zeros (no magic).
            Err(SanlockError::Call { rv, .. })
                if rv == SANLK_LEADER_MAGIC || rv == -libc::EMSGSIZE =>
            {
                false
            }
            Err(e) => return Err(err(e)),
        };
        let known = if has {
            Some(Geometry::new(md.block_size, md.alignment).map_err(err)?)
        } else {
            None
        };
        tracing::info!(%sd, volume_leases = has, "domain lockspace looked for");
        self.lease_domains.set(sd, known);
        Ok(known)
    }

    /// Takes the lease of volume `v` for a job that writes it (`op`),
    /// exclusively, through depotd's registration with sanlock; released
    /// when the guard drops. `None` (logged) when sanlock is disabled, the
    /// domain has no volume leases, or it is not active in a pool
    /// connected on this host. 651 when the lease cannot be taken:
    /// another host or process holds it, this host's id in the lockspace
    /// is not acquired yet, the daemon does not answer. The caller holds
    /// the image lock; nothing is changed here.
    pub(super) fn take_volume_lease(
        &self,
        v: VolRef,
        op: &'static str,
    ) -> StorageResult<Option<HeldVolumeLease>> {
        let Some(sanlock) = &self.config.sanlock else {
            tracing::debug!(sd = %v.sd, vol = %v.vol, "sanlock disabled: no volume lease");
            return Ok(None);
        };
        if !self.pools.is_active(v.sd) {
            tracing::warn!(sd = %v.sd, vol = %v.vol, op,
                "the domain is not active in a connected pool (no host id in its lockspace): \
                 writing without the volume lease");
            return Ok(None);
        }
        let domain = self.locate(v.sd)?;
        let Some(geometry) = self.lease_geometry(&domain, sanlock, Code::AcquireLockFailure)?
        else {
            tracing::debug!(sd = %v.sd, vol = %v.vol, "the domain has no lockspace: no volume lease");
            return Ok(None);
        };
        let area = domain.volume_lease_area(self.volume_tools(), v.img, v.vol, geometry.align())?;
        if let Domain::File(d) = &domain {
            check_sanlock_file(&d.fs, &area.path).map_err(|why| {
                StorageError::new(
                    Code::AcquireLockFailure,
                    op,
                    format!("lease of volume {} on {}: {why}", v.vol, v.sd),
                )
            })?;
        }
        let res = volume_lease(v.sd, v.vol, area);
        let lver = match sanlock.client.acquire(&res, None) {
            Ok(lver) => lver,
            // A volume made before depot wrote volume leases has an empty
            // `.lease` (or a block slot never formatted): there is no lease
            // for any host to hold, and the job goes on as it did then.
            Err(e) if no_leader(&e) => {
                tracing::warn!(sd = %v.sd, vol = %v.vol, op, error = %e,
                    "the volume has no lease (made before volume leases): writing without it");
                return Ok(None);
            }
            Err(e) => return Err(acquire_failed(v, op, e)),
        };
        tracing::info!(sd = %v.sd, vol = %v.vol, lver, op, "volume lease acquired");
        Ok(Some(HeldVolumeLease {
            client: sanlock.client.clone(),
            res,
        }))
    }
}

/// A file volume's lease as sanlock's `read_resource_owners` reports an
/// exclusive one, from its leader record alone (the first sector, read by
/// the mount's helper with O_DIRECT): held by the owner the record names
/// while its timestamp is set (sanlock clears it at the release). A record
/// that is not this volume's lease is an error (VDSM: `InvalidLeaseName`,
/// the status left out).
fn parse_leader(bytes: &[u8], vol: VolUuid) -> Result<LeaseState, String> {
    use crate::xlease::leader::{Leader, PAXOS_DISK_MAGIC};
    let leader = Leader::parse(bytes).map_err(|e| e.to_string())?;
    if leader.magic != PAXOS_DISK_MAGIC || leader.resource_name != vol.to_string() {
        return Err(format!(
            "no lease of volume {vol} there (magic {:#x}, name {:?})",
            leader.magic, leader.resource_name
        ));
    }
    let owners = if leader.timestamp != 0 && leader.owner_id != 0 {
        vec![HostInfo {
            host_id: leader.owner_id,
            generation: leader.owner_generation,
            timestamp: leader.timestamp,
            io_timeout: 0,
            status: None,
        }]
    } else {
        Vec::new()
    };
    Ok(LeaseState {
        lver: leader.lver,
        owners,
    })
}

/// The holders of a lease as VDSM's `SANLock.inspect` tells them: the
/// owner sanlock read in the leader record, unless its host is known to
/// have lost the lease (a new generation: it rejoined the lockspace; or
/// its delta lease is dead or free), when the version alone is reported.
/// A free lease has neither.
fn lease_status(client: &Sanlock, res: &Resource, state: LeaseState) -> VolumeLeaseStatus {
    // Volume leases are exclusive: one owner at most.
    let Some(owner) = state.owners.first() else {
        return VolumeLeaseStatus {
            owners: Vec::new(),
            version: None,
        };
    };
    let lost = match client.get_hosts(&res.lockspace, owner.host_id) {
        Ok(hosts) => hosts.first().is_some_and(|h| {
            h.generation != owner.generation
                || matches!(h.status, Some(HostStatus::Dead | HostStatus::Free))
        }),
        // Not in the lockspace here, or its hosts not read yet: the owner
        // may hold it (VDSM says so for EAGAIN; for ENOENT it fails
        // getInfo, depot reports what sanlock read on the disk).
        Err(e) => {
            tracing::debug!(lease = %res.name, error = %e, "the lease owner's host status is unknown");
            false
        }
    };
    VolumeLeaseStatus {
        owners: if lost {
            Vec::new()
        } else {
            vec![owner.host_id]
        },
        version: Some(state.lver),
    }
}

/// Whether sanlock found no lease at all where it looked: no leader
/// record (zeros), or an area past the end of the file (an empty
/// `.lease`: sanlock reads short).
fn no_leader(e: &SanlockError) -> bool {
    matches!(e, SanlockError::Call { rv, .. } if *rv == SANLK_LEADER_MAGIC || *rv == -libc::EMSGSIZE)
}

/// 651 for a volume lease that could not be taken, saying why.
fn acquire_failed(v: VolRef, op: &'static str, e: SanlockError) -> StorageError {
    let why = match e.refusal() {
        Some(Refusal::Held) => "another host holds it",
        Some(Refusal::Lver) => "its version changed",
        // Held by another process of this host: sanlock says EEXIST.
        None if e.errno() == Some(libc::EEXIST) => "another process holds it",
        None => "sanlock failed",
    };
    StorageError::new(
        Code::AcquireLockFailure,
        op,
        format!("lease of volume {} on {}: {why}: {e}", v.vol, v.sd),
    )
    .caused_by(e)
}
