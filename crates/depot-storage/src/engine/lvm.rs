//! The LVM verbs of the `Storage` object: `LVMVolumeGroup.create/getInfo/remove`,
//! `Host.getLVMVolumeGroups`, `StorageDomain.extend` and `resizePV`.
//!
//! oVirt names LUNs by GUID (the multipath WWID); depot opens them as
//! `/dev/mapper/<GUID>` and never by `sdX` path names, which change.

use std::path::PathBuf;

use depot_api::storage::SdUuid;
use depot_api::Code;
use depot_os::lvm::{Lvm, PvInfo, VgInfo};

use super::Storage;
use crate::block;
use crate::{StorageError, StorageResult};

/// A VG and its PVs, for `LVMVolumeGroup.getInfo`.
#[derive(Debug, Clone)]
pub struct VgReport {
    pub vg: VgInfo,
    pub pvs: Vec<PvInfo>,
}

/// `/dev/mapper/<guid>`; a GUID that could leave that directory is 1000.
pub fn guid_device(guid: &str, op: &'static str) -> StorageResult<PathBuf> {
    let ok = !guid.is_empty()
        && guid.len() <= 128
        && guid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
        && !guid.starts_with('.');
    if !ok {
        return Err(StorageError::new(
            Code::InvalidParameterException,
            op,
            format!("guid={guid:?}: not a device GUID"),
        ));
    }
    Ok(PathBuf::from("/dev/mapper").join(guid))
}

fn devices_of(guids: &[String], op: &'static str) -> StorageResult<Vec<PathBuf>> {
    let devs = guids
        .iter()
        .map(|g| guid_device(g, op))
        .collect::<StorageResult<Vec<_>>>()?;
    for d in &devs {
        if !d.exists() {
            return Err(StorageError::new(
                Code::InaccessiblePhysDev,
                op,
                format!("{} does not exist (is the LUN connected?)", d.display()),
            ));
        }
    }
    Ok(devs)
}

impl Storage {
    /// The block part of `StorageDomain.getInfo` (VG UUID and state, the
    /// metadata devices).
    pub fn block_domain_info(&self, sd: SdUuid) -> StorageResult<block::BlockDomainInfo> {
        block::domain_info(&self.lvm, sd)
    }

    /// `LVMVolumeGroup.create`; returns the VG's UUID.
    pub fn create_vg(&self, name: SdUuid, guids: &[String], force: bool) -> StorageResult<String> {
        const OP: &str = "create volume group";
        let devs = devices_of(guids, OP)?;
        self.refresh_lvm_devices();
        block::create_vg(&self.lvm, &block::vg_name(name), &devs, force)
    }

    pub fn vg_info(&self, uuid: &str) -> StorageResult<VgReport> {
        self.refresh_lvm_devices();
        let (vg, pvs) = block::vg_by_uuid(&self.lvm, uuid)?;
        Ok(VgReport { vg, pvs })
    }

    pub fn remove_vg(&self, uuid: &str) -> StorageResult<()> {
        self.refresh_lvm_devices();
        block::remove_vg(&self.lvm, uuid)
    }

    /// `Host.getLVMVolumeGroups`: every VG on this host's multipath devices.
    pub fn list_vgs(&self) -> StorageResult<Vec<VgReport>> {
        const OP: &str = "list volume groups";
        self.refresh_lvm_devices();
        let vgs = self
            .lvm
            .vgs()
            .map_err(|e| block::lvm_err(Code::VolumeGroupActionError, OP, e))?;
        let pvs = self
            .lvm
            .pvs()
            .map_err(|e| block::lvm_err(Code::VolumeGroupActionError, OP, e))?;
        Ok(vgs
            .into_iter()
            .map(|vg| {
                let mine = pvs
                    .iter()
                    .filter(|p| p.vg_name == vg.name)
                    .cloned()
                    .collect();
                VgReport { vg, pvs: mine }
            })
            .collect())
    }

    /// 372 unless `sd` is a block domain.
    fn require_block(&self, sd: SdUuid, op: &'static str) -> StorageResult<()> {
        if self.locate(sd)?.is_block() {
            return Ok(());
        }
        Err(StorageError::new(
            Code::StorageDomainTypeError,
            op,
            format!("'{sd}' is a file domain"),
        ))
    }

    /// `StorageDomain.extend`: adds LUNs to a block domain's VG. The
    /// SPM's verb on a domain attached to a pool (309, 654).
    pub fn extend_domain(&self, sd: SdUuid, guids: &[String], force: bool) -> StorageResult<()> {
        const OP: &str = "extend storage domain";
        self.require_block(sd, OP)?;
        self.require_spm_of(sd, OP)?;
        let devs = devices_of(guids, OP)?;
        let _lock = self.lock_domain_exclusive(sd)?;
        block::extend(&self.lvm, sd, &devs, force)
    }

    /// `StorageDomain.resizePV`: returns the PV's new size in bytes. The
    /// SPM's verb on a domain attached to a pool (309, 654).
    pub fn resize_pv(&self, sd: SdUuid, guid: &str) -> StorageResult<u64> {
        const OP: &str = "resize physical volume";
        self.require_block(sd, OP)?;
        self.require_spm_of(sd, OP)?;
        let dev = guid_device(guid, OP)?;
        let _lock = self.lock_domain_exclusive(sd)?;
        block::resize_pv(&self.lvm, sd, &dev)?;
        let name = dev.to_string_lossy().into_owned();
        self.lvm
            .pvs_of(&block::vg_name(sd))
            .map_err(|e| block::lvm_err(Code::CouldNotResizePhysicalVolume, OP, e))?
            .into_iter()
            .find(|p| p.name == name)
            .map(|p| p.size)
            .ok_or_else(|| {
                StorageError::new(
                    Code::CouldNotResizePhysicalVolume,
                    OP,
                    format!("{name} is not a PV of '{sd}'"),
                )
            })
    }
}

impl Storage {
    /// Tells LVM which devices it may scan: the multipath maps present
    /// now. Cheap (sysfs only); LVM's cache is dropped only on a change.
    pub(crate) fn refresh_lvm_devices(&self) {
        let sysfs = depot_os::sysfs_block::Sysfs::new("/sys");
        let Ok(maps) = depot_os::multipath::list_maps(&sysfs) else {
            return;
        };
        let now: Vec<PathBuf> = maps.iter().map(|m| m.dev_path()).collect();
        let mut sorted = now.clone();
        sorted.sort();
        if sorted != self.lvm.devices() {
            self.lvm.set_devices(now);
        }
    }

    /// The LVM wrapper (for the LVMVolumeGroup verbs and benchmarks).
    pub fn lvm(&self) -> &Lvm {
        &self.lvm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_cannot_escape_dev_mapper() {
        assert_eq!(
            guid_device("36001405abc", "t").unwrap(),
            PathBuf::from("/dev/mapper/36001405abc")
        );
        for bad in ["", "../sda", "a/b", "..", "a b"] {
            assert_eq!(
                guid_device(bad, "t").unwrap_err().code,
                Code::InvalidParameterException,
                "{bad}"
            );
        }
    }
}
