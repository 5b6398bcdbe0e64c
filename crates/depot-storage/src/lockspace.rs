//! A domain's sanlock areas, in VDSM's layout (docs/formats.md,
//! "Lockspace and leases"): the lockspace named by the domain id in
//! `dom_md/ids` (one delta lease per host id), and the SDM lease (the
//! SPM's, VDSM's `SDM_LEASE_NAME`) in `dom_md/leases` at slot 1, one
//! alignment in (VDSM's `SDM_LEASE_OFFSET`, 1 MiB at 1 MiB alignment).
//! Slot 0 is left unwritten (VDSM's legacy safelease area); the volume
//! leases from slot 100 on are written when volumes are (a later step),
//! and so is the `xleases` index.
//!
//! Formatting runs `sanlock direct init` in a child process (depot_os::
//! sanlock): the child does the I/O on the mount, with a timeout.

use std::path::Path;

use depot_api::storage::SdUuid;
use depot_api::Code;
use depot_os::sanlock::{
    direct_init_lockspace, direct_init_resource, Area, DirectConfig, Geometry, Lockspace, Sanlock,
};

use crate::error::{StorageError, StorageResult};

/// VDSM's name of the SPM's lease in `leases`.
pub const SDM_LEASE: &str = "SDM";
/// Its slot: offset = slot × alignment.
pub const SDM_SLOT: u64 = 1;

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
