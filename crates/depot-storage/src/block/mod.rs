//! Block storage domains: a volume group on SAN LUNs, in VDSM's layout
//! (docs/formats.md, "Block domains").
//!
//! * The VG is named by the domain UUID, has 128 MiB extents and the tag
//!   `RHAT_storage_domain` (`RHAT_storage_domain_UNREADY` from
//!   `LVMVolumeGroup.create` until `StorageDomain.create` finishes).
//! * The domain metadata is in `MDT_*` VG tags ([`tags`]), sealed like a
//!   file domain's; block domains add `VGUUID` and `PV<n>` keys and have
//!   no `REMOTE_PATH`.
//! * Special LVs: `metadata` (volume metadata slots, [`slots`]), `ids`,
//!   `leases`, `xleases`, `inbox`, `outbox`, `master`, with VDSM's sizes.
//!   `ids` and `leases` are formatted by sanlock at create
//!   (crate::lockspace), and the `xleases` index is formatted with them
//!   (crate::xlease); `inbox` and `outbox` are the SPM mailbox's; `master`
//!   gets an ext3 file system ([`master_fs`]), mounted by the SPM.
//! * Volumes are LVs ([`volumes`]).
//!
//! On this host a block domain also has a link directory
//! `<repository>/mnt/blockSD/<sd>/` with `dom_md -> /dev/<sd>` and, for
//! prepared images, `images/<img>/<vol> -> /dev/<sd>/<vol>`, so paths
//! under it work like a file domain's (the monitor reads
//! `dom_md/metadata`, i.e. the metadata LV, with `O_DIRECT`).

pub mod master_fs;
pub mod slots;
pub mod tags;
pub mod volumes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use depot_api::storage::{DomainClass, SdUuid};
use depot_api::Code;
use depot_os::command::CommandRunner;
use depot_os::lvm::{Lvm, LvmError, PvInfo, VgInfo};
use depot_os::sanlock::DirectConfig;
use depot_os::FsStats;

pub use volumes::BlockVolumes;

use crate::domain_spec::{alignment_for, CreateDomain};
use crate::error::{StorageError, StorageResult};
use crate::layout::{BLOCK_DIR, DOM_MD, MNT};
use crate::metadata::domain::DomainMetadata;
use crate::metadata::kv::KvMetadata;

pub const EXTENT_SIZE: u64 = 128 << 20;
pub const METADATA_LV: &str = "metadata";
/// The lockspace LV (sanlock delta leases, host ids).
pub const IDS_LV: &str = "ids";
/// The paxos leases LV (the SDM lease, volume leases).
pub const LEASES_LV: &str = "leases";
const MIB: u64 = 1 << 20;
/// VDSM's metadata keys of block domains.
pub const KEY_VGUUID: &str = "VGUUID";

/// The special LVs and their sizes for a lease `alignment`.
pub fn special_lvs(alignment: u64) -> [(&'static str, u64); 7] {
    [
        (METADATA_LV, 128 * MIB),
        (IDS_LV, 8 * MIB),
        (LEASES_LV, 2048 * alignment),
        ("xleases", 1024 * alignment),
        ("inbox", 16 * MIB),
        ("outbox", 16 * MIB),
        ("master", 1024 * MIB),
    ]
}

/// Space a new domain needs: the special LVs in whole extents.
pub fn special_lvs_size(alignment: u64) -> u64 {
    special_lvs(alignment)
        .iter()
        .map(|(_, s)| s.div_ceil(EXTENT_SIZE) * EXTENT_SIZE)
        .sum()
}

pub fn vg_name(sd: SdUuid) -> String {
    sd.to_string()
}

/// An LVM failure as a storage error with `code`; the detail keeps the
/// command, its exit code and stderr.
pub(crate) fn lvm_err(code: Code, op: &'static str, e: LvmError) -> StorageError {
    let code = match &e {
        LvmError::VgNotFound(_) => Code::VolumeGroupDoesNotExist,
        LvmError::NotActivated { .. } => Code::CannotActivateLogicalVolume,
        _ => code,
    };
    StorageError::new(code, op, e.to_string()).caused_by(e)
}

/// The link directory of a block domain on this host.
pub fn link_dir(repository: &Path, sd: SdUuid) -> PathBuf {
    repository.join(MNT).join(BLOCK_DIR).join(sd.to_string())
}

/// Makes `<link_dir>/dom_md -> /dev/<vg>` (idempotent).
pub fn ensure_links(repository: &Path, sd: SdUuid) -> StorageResult<PathBuf> {
    const OP: &str = "link block domain";
    let dir = link_dir(repository, sd);
    std::fs::create_dir_all(dir.join(crate::layout::IMAGES))
        .map_err(|e| StorageError::io(Code::StorageDomainActionError, OP, &dir, e))?;
    let link = dir.join(DOM_MD);
    let target = PathBuf::from("/dev").join(vg_name(sd));
    match std::fs::read_link(&link) {
        Ok(t) if t == target => {}
        _ => {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link)
                .map_err(|e| StorageError::io(Code::StorageDomainActionError, OP, &link, e))?;
        }
    }
    Ok(dir)
}

// ---- volume groups (LVMVolumeGroup.*) ----

/// `LVMVolumeGroup.create`: PVs on `devices` and a VG named `name` with
/// 128 MiB extents and the UNREADY tag. A device that is already a PV of
/// another VG is refused (601) unless `force`; an existing VG of that name
/// is 505. Returns the VG's UUID.
pub fn create_vg(lvm: &Lvm, name: &str, devices: &[PathBuf], force: bool) -> StorageResult<String> {
    const OP: &str = "create volume group";
    if devices.is_empty() {
        return Err(StorageError::new(
            Code::InvalidParameterException,
            OP,
            "devlist is empty",
        ));
    }
    lvm.add_devices(devices.iter().cloned());
    let vgs = lvm
        .vgs()
        .map_err(|e| lvm_err(Code::VolumeGroupCreateError, OP, e))?;
    if vgs.iter().any(|v| v.name == name) {
        return Err(StorageError::new(
            Code::VolumeGroupAlreadyExistsError,
            OP,
            format!("volume group {name} exists"),
        ));
    }
    let pvs = lvm
        .pvs()
        .map_err(|e| lvm_err(Code::VolumeGroupCreateError, OP, e))?;
    for d in devices {
        let dn = d.to_string_lossy();
        if let Some(pv) = pvs.iter().find(|p| p.name == dn && !p.vg_name.is_empty()) {
            if !force {
                return Err(StorageError::new(
                    Code::PhysDevInitializationError,
                    OP,
                    format!(
                        "{dn} belongs to volume group {}; pass force to reuse it",
                        pv.vg_name
                    ),
                ));
            }
        }
    }
    lvm.pvcreate(devices, true)
        .map_err(|e| lvm_err(Code::PhysDevInitializationError, OP, e))?;
    lvm.vgcreate(name, devices, EXTENT_SIZE, &[tags::UNREADY_TAG.to_owned()])
        .map_err(|e| lvm_err(Code::VolumeGroupCreateError, OP, e))?;
    let vg = lvm
        .vg_fresh(name)
        .map_err(|e| lvm_err(Code::VolumeGroupCreateError, OP, e))?;
    tracing::info!(vg = name, uuid = %vg.uuid, devices = ?devices, "volume group created");
    Ok(vg.uuid)
}

/// The VG with UUID `uuid` and its PVs; 506 if none.
pub fn vg_by_uuid(lvm: &Lvm, uuid: &str) -> StorageResult<(VgInfo, Vec<PvInfo>)> {
    const OP: &str = "volume group info";
    let vgs = lvm
        .vgs()
        .map_err(|e| lvm_err(Code::VolumeGroupDoesNotExist, OP, e))?;
    let vg = vgs.into_iter().find(|v| v.uuid == uuid).ok_or_else(|| {
        StorageError::new(Code::VolumeGroupDoesNotExist, OP, format!("VG uuid {uuid}"))
    })?;
    let pvs = lvm
        .pvs_of(&vg.name)
        .map_err(|e| lvm_err(Code::VolumeGroupDoesNotExist, OP, e))?;
    Ok((vg, pvs))
}

/// `LVMVolumeGroup.remove`: refused while it holds a storage domain (515).
pub fn remove_vg(lvm: &Lvm, uuid: &str) -> StorageResult<()> {
    const OP: &str = "remove volume group";
    let (vg, pvs) = vg_by_uuid(lvm, uuid)?;
    if vg.tags.iter().any(|t| t == tags::DOMAIN_TAG) {
        return Err(StorageError::new(
            Code::VolumeGroupHasDomainTag,
            OP,
            format!(
                "volume group {} holds a storage domain; format it first",
                vg.name
            ),
        ));
    }
    lvm.vgremove(&vg.name)
        .map_err(|e| lvm_err(Code::VolumeGroupRemoveError, OP, e))?;
    let devs: Vec<PathBuf> = pvs.iter().map(|p| PathBuf::from(&p.name)).collect();
    if !devs.is_empty() {
        lvm.pvremove(&devs)
            .map_err(|e| lvm_err(Code::VolumeGroupRemoveError, OP, e))?;
    }
    Ok(())
}

// ---- domains ----

/// The names of the VGs that are complete block domains.
pub fn find_domains(lvm: &Lvm) -> StorageResult<Vec<SdUuid>> {
    let vgs = lvm
        .vgs()
        .map_err(|e| lvm_err(Code::VolumeGroupDoesNotExist, "find block domains", e))?;
    Ok(vgs
        .iter()
        .filter(|v| v.tags.iter().any(|t| t == tags::DOMAIN_TAG))
        .filter_map(|v| SdUuid::from_str(&v.name).ok())
        .collect())
}

/// Whether `sd` is a complete block domain visible to this host.
pub fn exists(lvm: &Lvm, sd: SdUuid) -> bool {
    lvm.vg(&vg_name(sd))
        .is_ok_and(|v| v.tags.iter().any(|t| t == tags::DOMAIN_TAG))
}

/// `StorageDomain.create` of an ISCSI or FCP domain on the VG `vg_uuid`
/// made by [`create_vg`]. Idempotent after a crash: special LVs that exist
/// are kept (the `master` LV's file system too), and the UNREADY tag is
/// only replaced at the very end.
pub fn create_domain(
    lvm: &Lvm,
    runner: &CommandRunner,
    req: &CreateDomain,
    vg_uuid: &str,
    sanlock: Option<&DirectConfig>,
) -> StorageResult<DomainMetadata> {
    const OP: &str = "create storage domain";
    let err = |code, detail: String| StorageError::new(code, OP, detail);
    if req.class != DomainClass::Data {
        return Err(err(
            Code::StorageDomainClassError,
            format!(
                "class {} cannot be created on block storage (Data only)",
                req.class
            ),
        ));
    }
    let (vg, pvs) = vg_by_uuid(lvm, vg_uuid)?;
    let name = vg_name(req.sd);
    if vg.name != name {
        return Err(err(
            Code::VolumeGroupUninitialized,
            format!(
                "volume group {vg_uuid} is named {}, not the domain id {name}",
                vg.name
            ),
        ));
    }
    if vg.tags.iter().any(|t| t == tags::DOMAIN_TAG) {
        return Err(err(
            Code::StorageDomainAlreadyExists,
            format!("volume group {name} already holds a storage domain"),
        ));
    }
    if !vg.tags.iter().any(|t| t == tags::UNREADY_TAG) {
        return Err(err(
            Code::VolumeGroupUninitialized,
            format!("volume group {name} was not made by LVMVolumeGroup.create"),
        ));
    }
    let block_size = match req.block_size {
        Some(b) => b,
        None => probe_block_size(&pvs),
    };
    let alignment = alignment_for(block_size, req.max_hosts);
    let new_master = create_special_lvs(lvm, &vg, alignment)?;
    let mut md = DomainMetadata::new_file(
        req.sd,
        depot_api::storage::DomainType::LocalFs,
        req.class,
        &req.description,
        "",
        block_size,
        alignment,
    )?;
    md.domain_type = req.domain_type;
    md.backup = req.backup;
    md.extra.insert(KEY_VGUUID.into(), vg.uuid.clone());
    for (k, v) in pv_keys(&pvs) {
        md.extra.insert(k, v);
    }
    prepare_special_lvs(lvm, req.sd, block_size, alignment, sanlock)?;
    make_master_fs(lvm, runner, req.sd, new_master)?;
    let kv = md.to_kv()?;
    let mut add = tags::to_tags(&kv);
    add.push(tags::DOMAIN_TAG.to_owned());
    let mut del = tags::metadata_tags(&vg.tags);
    del.push(tags::UNREADY_TAG.to_owned());
    // One vgchange: the metadata and the "complete" tag land together.
    lvm.vg_tags(&name, &add, &del)
        .map_err(|e| lvm_err(Code::VolumeGroupReplaceTagError, OP, e))?;
    tracing::info!(sd = %req.sd, vg = %vg.uuid, block_size, alignment, "block storage domain created");
    Ok(md)
}

/// Activates the metadata LV now: the first volume needs it, and a
/// failure here (no device-mapper) should fail the create, not later.
/// With `sanlock`, formats sanlock's areas on the `ids` and `leases` LVs
/// as on a file domain (crate::lockspace), through their device nodes.
fn prepare_special_lvs(
    lvm: &Lvm,
    sd: SdUuid,
    block_size: u32,
    alignment: u64,
    sanlock: Option<&DirectConfig>,
) -> StorageResult<()> {
    const OP: &str = "create storage domain";
    let name = vg_name(sd);
    lvm.activate(&name, &[METADATA_LV])
        .map_err(|e| lvm_err(Code::CannotActivateLogicalVolume, OP, e))?;
    let Some(direct) = sanlock else {
        return Ok(());
    };
    lvm.activate(&name, &[IDS_LV, LEASES_LV, crate::xlease::XLEASES])
        .map_err(|e| lvm_err(Code::CannotActivateLogicalVolume, OP, e))?;
    crate::lockspace::init_domain(
        direct,
        sd,
        &Lvm::lv_path(&name, IDS_LV),
        &Lvm::lv_path(&name, LEASES_LV),
        block_size,
        alignment,
    )?;
    let xleases = Lvm::lv_path(&name, crate::xlease::XLEASES);
    crate::xlease::Xleases::block(xleases, sd, block_size, alignment).format()
}

/// The special LVs `vg` lacks, made (those a create cut short made are
/// kept); whether the `master` LV is one made now. 504 when they do not
/// fit.
fn create_special_lvs(lvm: &Lvm, vg: &VgInfo, alignment: u64) -> StorageResult<bool> {
    const OP: &str = "create storage domain";
    let name = &vg.name;
    let existing = lvm
        .lvs_fresh(name)
        .map_err(|e| lvm_err(Code::StorageDomainCreationError, OP, e))?;
    let missing: Vec<(&str, u64)> = special_lvs(alignment)
        .into_iter()
        .filter(|(n, _)| !existing.iter().any(|l| l.name == *n))
        .collect();
    let need: u64 = missing
        .iter()
        .map(|(_, s)| s.div_ceil(EXTENT_SIZE) * EXTENT_SIZE)
        .sum();
    if need > vg.free {
        return Err(StorageError::new(
            Code::VolumeGroupSizeError,
            OP,
            format!(
                "volume group {name} has {} bytes free; the domain's special LVs need {need}",
                vg.free
            ),
        ));
    }
    // A master LV made now holds whatever the disk had at its extents (a
    // former domain's file system, its tasks): its file system is made
    // whatever blkid finds there.
    let new_master = missing.iter().any(|(n, _)| *n == master_fs::MASTER_LV);
    for (lv, size) in missing {
        lvm.lvcreate(name, lv, size, &[])
            .map_err(|e| lvm_err(Code::CannotCreateLogicalVolume, OP, e))?;
    }
    Ok(new_master)
}

/// The ext3 file system of the `master` LV (VDSM's `_createVMSfs`): made
/// on an LV this create made (`new`), whatever the disk held there; on
/// one a create cut short made (a repeat after a crash), made when it has
/// no signature at all, kept if it is an ext file system, refused
/// otherwise (608: never written over). The LV is left inactive, as VDSM
/// leaves it: only the SPM activates and mounts it.
fn make_master_fs(lvm: &Lvm, runner: &CommandRunner, sd: SdUuid, new: bool) -> StorageResult<()> {
    const OP: &str = "create storage domain";
    let name = vg_name(sd);
    let dev = lvm
        .activate(&name, &[master_fs::MASTER_LV])
        .map_err(|e| lvm_err(Code::CannotActivateLogicalVolume, OP, e))?
        .remove(0);
    let probed = if new {
        Ok(master_fs::Signature::None)
    } else {
        master_fs::probe(runner, &dev)
    };
    let made = probed
        .map_err(|e| {
            StorageError::new(Code::MkfsError, OP, format!("probe {}: {e}", dev.display()))
        })
        .and_then(|sig| match sig {
            master_fs::Signature::None => master_fs::mkfs(runner, &dev)
                .map_err(|e| StorageError::new(Code::MkfsError, OP, e.to_string()).caused_by(e)),
            master_fs::Signature::Ext(t) => {
                tracing::info!(%sd, fs = %t, "the master LV has its file system already");
                Ok(())
            }
            master_fs::Signature::Other(what) => Err(StorageError::new(
                Code::MkfsError,
                OP,
                format!(
                    "{} holds {what}, not a file system depot made: not written over",
                    dev.display()
                ),
            )),
        });
    if let Err(e) = lvm.deactivate(&name, &[master_fs::MASTER_LV]) {
        tracing::warn!(%sd, error = %e, "cannot deactivate the master LV after making its file system");
    }
    made
}

/// `PV<n>=pv:<name>,uuid:<uuid>,pestart:<bytes>,pecount:<n>,mapoffset:<n>`,
/// VDSM's record of each PV of a block domain.
fn pv_keys(pvs: &[PvInfo]) -> BTreeMap<String, String> {
    let mut offset = 0;
    pvs.iter()
        .enumerate()
        .map(|(i, p)| {
            let name = p.name.rsplit('/').next().unwrap_or(&p.name).to_owned();
            let v = format!(
                "pv:{name},uuid:{},pestart:{},pecount:{},mapoffset:{offset}",
                p.uuid, p.pe_start, p.pe_count
            );
            offset += p.pe_count;
            (format!("PV{i}"), v)
        })
        .collect()
}

/// The largest logical block size of the PVs (512 when unknown).
fn probe_block_size(pvs: &[PvInfo]) -> u32 {
    pvs.iter()
        .filter_map(|p| depot_os::direct::probe_alignment_path(Path::new(&p.name)).ok())
        .map(|a| if a.offset_align > 512 { 4096 } else { 512 })
        .max()
        .unwrap_or(512)
}

/// Reads the metadata from the VG tags (always a fresh `vgs`: the SPM on
/// another host may have changed it).
pub fn read_metadata(lvm: &Lvm, sd: SdUuid) -> StorageResult<DomainMetadata> {
    const OP: &str = "read domain metadata";
    let vg = lvm.vg_fresh(&vg_name(sd)).map_err(|e| match e {
        LvmError::VgNotFound(_) => {
            StorageError::new(Code::StorageDomainDoesNotExist, OP, format!("'{sd}'"))
        }
        e => lvm_err(Code::MetaDataGeneralError, OP, e),
    })?;
    if !vg.tags.iter().any(|t| t == tags::DOMAIN_TAG) {
        return Err(StorageError::new(
            Code::StorageDomainDoesNotExist,
            OP,
            format!("'{sd}': volume group without a complete domain"),
        ));
    }
    let kv = tags::from_tags(&vg.tags)?;
    let md = DomainMetadata::from_kv(&kv)?;
    if md.sd_uuid != sd {
        return Err(StorageError::new(
            Code::MetaDataValidationError,
            OP,
            format!("VG {sd} holds the metadata of {}", md.sd_uuid),
        ));
    }
    Ok(md)
}

/// Read, change, write back as one `vgchange` that removes the old
/// metadata tags and adds the new ones (LVM commits it atomically).
pub fn update_metadata(
    lvm: &Lvm,
    sd: SdUuid,
    change: impl FnOnce(&mut DomainMetadata) -> StorageResult<()>,
) -> StorageResult<DomainMetadata> {
    const OP: &str = "update domain metadata";
    let mut md = read_metadata(lvm, sd)?;
    change(&mut md)?;
    let vg = lvm
        .vg(&vg_name(sd))
        .map_err(|e| lvm_err(Code::MetaDataGeneralError, OP, e))?;
    let new = tags::to_tags(&md.to_kv()?);
    let old = tags::metadata_tags(&vg.tags);
    let add: Vec<String> = new.iter().filter(|t| !old.contains(t)).cloned().collect();
    let del: Vec<String> = old.iter().filter(|t| !new.contains(t)).cloned().collect();
    if !add.is_empty() || !del.is_empty() {
        lvm.vg_tags(&vg_name(sd), &add, &del)
            .map_err(|e| lvm_err(Code::VolumeGroupReplaceTagError, OP, e))?;
    }
    Ok(md)
}

/// Check the VG: metadata readable and sealed, `vgck` clean, not partial.
pub fn validate(lvm: &Lvm, sd: SdUuid) -> StorageResult<DomainMetadata> {
    const OP: &str = "validate storage domain";
    let md = read_metadata(lvm, sd)?;
    let vg = lvm
        .vg(&vg_name(sd))
        .map_err(|e| lvm_err(Code::StorageDomainAccessError, OP, e))?;
    if vg.is_partial() {
        return Err(StorageError::new(
            Code::StorageDomainAccessError,
            OP,
            format!("volume group {sd} is missing a PV"),
        ));
    }
    lvm.vgck(&vg_name(sd))
        .map_err(|e| lvm_err(Code::StorageDomainAccessError, OP, e))?;
    Ok(md)
}

/// What `StorageDomain.getInfo` adds for a block domain, as VDSM's
/// blockSD.getInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDomainInfo {
    /// LVM's UUID of the domain's VG (`vguuid`).
    pub vg_uuid: String,
    /// A PV of the VG is missing (`state` PARTIAL rather than OK).
    pub partial: bool,
    /// The device (GUID) of the metadata LV's first extent
    /// (`metadataDevice`).
    pub metadata_device: String,
    /// The PV holding the VG's metadata (`vgMetadataDevice`), when exactly
    /// one does; VDSM leaves it out otherwise (a domain it does not
    /// support, or depot's, whose every PV keeps a copy).
    pub vg_metadata_device: Option<String>,
}

/// The name of the first device in LVM's `devices` column
/// (`/dev/mapper/<guid>(<extent>),...`): `<guid>`.
fn first_device(devices: &str) -> Option<String> {
    let first = devices.split(',').next()?.split('(').next()?.trim();
    let name = first.rsplit('/').next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// The VG's identity and metadata devices, fresh from LVM.
pub fn domain_info(lvm: &Lvm, sd: SdUuid) -> StorageResult<BlockDomainInfo> {
    const OP: &str = "block domain info";
    let name = vg_name(sd);
    let err = |e| lvm_err(Code::StorageDomainAccessError, OP, e);
    let vg = lvm.vg_fresh(&name).map_err(err)?;
    let metadata_device = lvm
        .lvs_fresh(&name)
        .map_err(err)?
        .iter()
        .find(|l| l.name == METADATA_LV)
        .and_then(|l| first_device(&l.devices))
        .ok_or_else(|| {
            StorageError::new(
                Code::StorageDomainAccessError,
                OP,
                format!("volume group {name} has no {METADATA_LV} LV on a device"),
            )
        })?;
    let pvs = lvm.pvs_of(&name).map_err(err)?;
    let holders: Vec<&PvInfo> = pvs.iter().filter(|p| p.mda_used_count > 0).collect();
    let vg_metadata_device = match holders[..] {
        [one] => first_device(&one.name),
        _ => None,
    };
    Ok(BlockDomainInfo {
        vg_uuid: vg.uuid.clone(),
        partial: vg.is_partial(),
        metadata_device,
        vg_metadata_device,
    })
}

/// Space of the VG as file-system-like stats (no inodes on a VG).
pub fn stats(lvm: &Lvm, sd: SdUuid) -> StorageResult<FsStats> {
    let vg = lvm
        .vg_fresh(&vg_name(sd))
        .map_err(|e| lvm_err(Code::StorageDomainAccessError, "domain stats", e))?;
    Ok(FsStats {
        block_size: vg.extent_size,
        total_bytes: vg.size,
        free_bytes: vg.free,
        free_bytes_root: vg.free,
        total_inodes: 0,
        free_inodes: 0,
        read_only: false,
    })
}

/// Removes the domain: its LVs, the VG and the PV labels.
pub fn format(lvm: &Lvm, repository: &Path, sd: SdUuid) -> StorageResult<()> {
    const OP: &str = "format storage domain";
    let name = vg_name(sd);
    let pvs = lvm
        .pvs_of(&name)
        .map_err(|e| lvm_err(Code::StorageDomainFormatError, OP, e))?;
    let _ = lvm.deactivate_vg(&name);
    lvm.vgremove(&name)
        .map_err(|e| lvm_err(Code::StorageDomainFormatError, OP, e))?;
    let devs: Vec<PathBuf> = pvs.iter().map(|p| PathBuf::from(&p.name)).collect();
    if !devs.is_empty() {
        lvm.pvremove(&devs)
            .map_err(|e| lvm_err(Code::StorageDomainFormatError, OP, e))?;
    }
    let _ = std::fs::remove_dir_all(link_dir(repository, sd));
    Ok(())
}

/// Adds `devices` to the domain's VG (`StorageDomain.extend`) and records
/// the new PVs in the metadata.
pub fn extend(lvm: &Lvm, sd: SdUuid, devices: &[PathBuf], force: bool) -> StorageResult<()> {
    const OP: &str = "extend storage domain";
    let name = vg_name(sd);
    read_metadata(lvm, sd)?;
    lvm.add_devices(devices.iter().cloned());
    let pvs = lvm
        .pvs()
        .map_err(|e| lvm_err(Code::VolumeGroupExtendError, OP, e))?;
    let mut new = Vec::new();
    for d in devices {
        let dn = d.to_string_lossy();
        match pvs.iter().find(|p| p.name == dn) {
            Some(p) if p.vg_name == name => {}
            Some(p) if !p.vg_name.is_empty() && !force => {
                return Err(StorageError::new(
                    Code::PhysDevInitializationError,
                    OP,
                    format!("{dn} belongs to volume group {}", p.vg_name),
                ))
            }
            _ => new.push(d.clone()),
        }
    }
    if !new.is_empty() {
        lvm.pvcreate(&new, true)
            .map_err(|e| lvm_err(Code::PhysDevInitializationError, OP, e))?;
        lvm.vgextend(&name, &new)
            .map_err(|e| lvm_err(Code::VolumeGroupExtendError, OP, e))?;
    }
    refresh_pv_keys(lvm, sd)
}

/// `resizePV`: grows the PV on `device` to the LUN's new size.
pub fn resize_pv(lvm: &Lvm, sd: SdUuid, device: &Path) -> StorageResult<()> {
    const OP: &str = "resize physical volume";
    read_metadata(lvm, sd)?;
    lvm.pvresize(&vg_name(sd), device)
        .map_err(|e| lvm_err(Code::CouldNotResizePhysicalVolume, OP, e))?;
    refresh_pv_keys(lvm, sd)
}

fn refresh_pv_keys(lvm: &Lvm, sd: SdUuid) -> StorageResult<()> {
    let pvs = lvm
        .pvs_of(&vg_name(sd))
        .map_err(|e| lvm_err(Code::VolumeGroupExtendError, "record PVs", e))?;
    update_metadata(lvm, sd, |md| {
        md.extra
            .retain(|k, _| !(k.starts_with("PV") && k[2..].parse::<u32>().is_ok()));
        md.extra.extend(pv_keys(&pvs));
        Ok(())
    })
    .map(|_| ())
}

/// Parses `KvMetadata` of a block domain given as tags (for tests/tools).
pub fn metadata_from_tags(tags: &[String]) -> StorageResult<DomainMetadata> {
    DomainMetadata::from_kv(&tags::from_tags(tags)?)
}

#[allow(dead_code)]
fn _kv(_: &KvMetadata) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_lvs_fit_vdsms_minimum() {
        // 1 MiB alignment: metadata 128 + ids 128 + leases 2048 + xleases
        // 1024 + inbox 128 + outbox 128 + master 1024 MiB.
        assert_eq!(special_lvs_size(MIB), 4608 * MIB);
    }

    #[test]
    fn first_device_of_an_lv() {
        assert_eq!(
            first_device("/dev/mapper/36001405abc(0),/dev/mapper/36001405def(12)").as_deref(),
            Some("36001405abc")
        );
        assert_eq!(first_device("/dev/loop0(8)").as_deref(), Some("loop0"));
        assert_eq!(first_device("/dev/mapper/x").as_deref(), Some("x"));
        assert_eq!(first_device(""), None);
    }

    #[test]
    fn pv_keys_have_running_map_offsets() {
        let pv = |n: &str, c| PvInfo {
            name: format!("/dev/mapper/{n}"),
            uuid: "u".into(),
            size: 0,
            dev_size: 0,
            vg_name: "v".into(),
            vg_uuid: "x".into(),
            pe_start: MIB,
            pe_count: c,
            pe_alloc_count: 0,
            mda_count: 1,
            mda_used_count: 1,
            mda_size: 0,
        };
        let k = pv_keys(&[pv("a", 10), pv("b", 5)]);
        assert_eq!(
            k["PV0"],
            "pv:a,uuid:u,pestart:1048576,pecount:10,mapoffset:0"
        );
        assert_eq!(
            k["PV1"],
            "pv:b,uuid:u,pestart:1048576,pecount:5,mapoffset:10"
        );
    }
}
