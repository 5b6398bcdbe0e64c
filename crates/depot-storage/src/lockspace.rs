//! A domain's sanlock areas, in VDSM's layout (docs/formats.md,
//! "Lockspace and leases"): the lockspace named by the domain id in
//! `dom_md/ids` (one delta lease per host id), and the SDM lease (the
//! SPM's, VDSM's `SDM_LEASE_NAME`) in `dom_md/leases` at slot 1, one
//! alignment in (VDSM's `SDM_LEASE_OFFSET`, 1 MiB at 1 MiB alignment).
//! Slot 0 is left unwritten (VDSM's legacy safelease area); the
//! `xleases` volume is crate::xlease's.
//!
//! Volume leases ([`VolumeLeases`]): a paxos lease named by the volume id
//! in the domain's lockspace, in `<vol>.lease` at 0 on a file domain and
//! at slot 100 + the volume's metadata slot of `leases` on a block domain
//! (VDSM's `RESERVED_LEASES`), formatted when the volume is created on a
//! domain that has a lockspace.
//!
//! A domain is formatted with `sanlock direct init` in a child process
//! (depot_os::sanlock): the child does the I/O on the mount, with a
//! timeout. A volume's lease is written by the sanlock daemon
//! (`sanlock_write_resource`, as VDSM does; one call on the daemon's
//! socket, no process started), or by the same child when no daemon
//! answers.

use std::path::Path;

use depot_api::storage::{SdUuid, VolUuid};
use depot_api::Code;
use depot_os::fsproc::FileKind;
use depot_os::sanlock::{
    direct_init_lockspace, direct_init_resource, Area, DirectConfig, Geometry, Lockspace, Resource,
    Sanlock, SanlockError,
};

use crate::error::{StorageError, StorageResult};
use crate::mount_fs::MountFs;

/// VDSM's name of the SPM's lease in `leases`.
pub const SDM_LEASE: &str = "SDM";
/// Its slot: offset = slot × alignment.
pub const SDM_SLOT: u64 = 1;

/// The first slot of `leases` that holds volume leases (VDSM's
/// `RESERVED_LEASES`): a block volume in metadata slot `n` has its lease
/// at `(100 + n) × alignment`.
pub const VOLUME_LEASE_FIRST_SLOT: u64 = 100;
/// Slots of a block domain's `leases` LV (2048 × alignment, as VDSM
/// sizes it): metadata slots from 1948 on have no room for a lease.
pub const LEASES_SLOTS: u64 = 2048;

/// How depot reaches sanlock: the daemon's client (possibly unavailable,
/// with the reason) and the `sanlock` program for formatting, `None`
/// when it is not installed (new domains then get no lockspace, and say
/// so in the log).
#[derive(Debug, Clone)]
pub struct SanlockConfig {
    pub client: Sanlock,
    pub direct: Option<DirectConfig>,
}

/// The lockspace of domain `sd` for `host_id`, at `ids`.
pub fn lockspace(sd: SdUuid, host_id: u64, ids: &Path) -> Lockspace {
    Lockspace::new(sd.to_string(), host_id, Area::new(ids, 0))
}

/// Formats the lockspace at `ids` and the SDM lease in `leases` for a new
/// domain with VDSM's `block_size` and `alignment` (sanlock's sector and
/// align flags). Both files or LVs must exist. 701 when sanlock fails.
pub fn init_domain(
    direct: &DirectConfig,
    sd: SdUuid,
    ids: &Path,
    leases: &Path,
    block_size: u32,
    alignment: u64,
) -> StorageResult<()> {
    const OP: &str = "initialize domain lockspace";
    let err = |e: depot_os::sanlock::SanlockError| {
        StorageError::new(Code::ClusterLockInitError, OP, format!("domain {sd}: {e}")).caused_by(e)
    };
    let geometry = Geometry::new(block_size, alignment).map_err(err)?;
    let name = sd.to_string();
    direct_init_lockspace(direct, &name, &Area::new(ids, 0), geometry).map_err(err)?;
    direct_init_resource(
        direct,
        &name,
        SDM_LEASE,
        &Area::new(leases, SDM_SLOT * alignment),
        geometry,
    )
    .map_err(err)?;
    tracing::info!(%sd, ids = %ids.display(), leases = %leases.display(), block_size, alignment,
        "domain lockspace and SDM lease initialized");
    Ok(())
}

/// Checks, through the mount's helpers, that `path` on a file domain is
/// what sanlock may be given: a regular file with one link, reached
/// without a symlink (the helper's walk refuses one on the way; `lstat`
/// sees one at the end). sanlock (the daemon, root, or a `sanlock direct`
/// child) opens the path it is given and follows symlinks, and it writes
/// paxos ballots and delta leases there: a symlink or a hard link planted
/// on the storage would have it write into any file of this host. Called
/// right before each call that hands sanlock a path on a mount; the
/// window left between the check and sanlock's open is in
/// docs/architecture.md ("sanlock"). `Err` says why not.
pub fn check_sanlock_file(fs: &MountFs, path: &Path) -> Result<(), String> {
    sanlock_file_verdict(path, fs.lstat(path).map(|st| (st.kind, st.nlink)))
}

/// [`check_sanlock_file`]'s verdict on what `lstat` of `path` answered
/// (its kind and link count), for a caller that asked its own way (the
/// domain monitor, through its check's helpers, before it joins the
/// lockspace on `ids`).
pub fn sanlock_file_verdict<E: std::fmt::Display>(
    path: &Path,
    lstat: Result<(FileKind, u64), E>,
) -> Result<(), String> {
    match lstat {
        Ok((kind, _)) if kind != FileKind::File => Err(format!(
            "{} is {kind:?}, not a regular file: not handed to sanlock",
            path.display(),
        )),
        Ok((_, nlink)) if nlink != 1 => Err(format!(
            "{} has {nlink} links (a hard link to another file?): not handed to sanlock",
            path.display(),
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The lease of volume `vol` of domain `sd` at `area` (VDSM's volume
/// lease: lockspace the domain id, resource the volume id).
pub fn volume_lease(sd: SdUuid, vol: VolUuid, area: Area) -> Resource {
    Resource::new(sd.to_string(), vol.to_string(), area)
}

/// Where the lease of the block volume in metadata slot `slot` is in the
/// `leases` LV; `None` past its end.
pub fn block_volume_lease_offset(slot: u64, alignment: u64) -> Option<u64> {
    let lease_slot = VOLUME_LEASE_FIRST_SLOT.checked_add(slot)?;
    (lease_slot < LEASES_SLOTS).then(|| lease_slot * alignment)
}

/// How the leases of new volumes are written on one domain that has a
/// lockspace: sanlock and the domain's sector size and alignment.
#[derive(Debug, Clone, Copy)]
pub struct VolumeLeases<'a> {
    pub sanlock: &'a SanlockConfig,
    pub geometry: Geometry,
}

impl VolumeLeases<'_> {
    /// Formats the lease of `vol` at `area` (which must exist): by the
    /// daemon, or by `sanlock direct init -r` in a child when the daemon
    /// cannot be reached. 205 when neither can.
    pub fn format(&self, sd: SdUuid, vol: VolUuid, area: Area) -> StorageResult<()> {
        const OP: &str = "create volume lease";
        let err = |e: SanlockError| {
            StorageError::new(
                Code::VolumeCreationError,
                OP,
                format!(
                    "lease of volume {vol} at {}:{}: {e}",
                    area.path.display(),
                    area.offset
                ),
            )
            .caused_by(e)
        };
        let res = volume_lease(sd, vol, area.clone());
        match self.sanlock.client.write_resource(&res, self.geometry) {
            Ok(()) => Ok(()),
            Err(e) if daemon_unreachable(&e) => {
                let Some(direct) = &self.sanlock.direct else {
                    return Err(err(e));
                };
                tracing::debug!(%sd, %vol, error = %e, "no sanlock daemon: formatting the volume lease directly");
                direct_init_resource(direct, &res.lockspace, &res.name, &area, self.geometry)
                    .map_err(err)
            }
            Err(e) => Err(err(e)),
        }
    }
}

/// Whether `e` says the daemon is not there to ask (no library, nothing
/// listening on its socket), rather than that it answered with an error.
pub fn daemon_unreachable(e: &SanlockError) -> bool {
    matches!(e, SanlockError::Unavailable(_))
        || matches!(
            e.errno(),
            Some(libc::ENOENT | libc::ECONNREFUSED | libc::ECONNRESET | libc::EPIPE | libc::EACCES)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_volume_leases_follow_vdsms_slots() {
        const MIB: u64 = 1 << 20;
        assert_eq!(block_volume_lease_offset(1, MIB), Some(101 * MIB));
        assert_eq!(block_volume_lease_offset(5, 8 * MIB), Some(105 * 8 * MIB));
        // The last slot of the 2048-slot LV, and the first past it.
        assert_eq!(block_volume_lease_offset(1947, MIB), Some(2047 * MIB));
        assert_eq!(block_volume_lease_offset(1948, MIB), None);
        assert_eq!(block_volume_lease_offset(u64::MAX, MIB), None);
    }
}
