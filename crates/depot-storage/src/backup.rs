//! The backup storage domain rules (docs/backup.md). The flag lives in the
//! domain metadata (DEPOT_BACKUP), so it travels with the storage: a host
//! that imports the domain after a disaster reads it and enforces it at
//! once. Each rule has its own error code.

use depot_api::storage::{DiskType, DomainClass, SdUuid};
use depot_api::Code;

use crate::metadata::domain::DomainMetadata;
use crate::{StorageError, StorageResult};

/// What a volume is prepared for.
///
/// oVirt's `Image.prepare` does not say, and it never prepares for a
/// VM: a VM's volumes are prepared inside VDSM's `VM.create` and
/// `VM.hotplugDisk` (`clientIF.prepareVolumePath`), which do not go through
/// `Image.prepare`. oVirt's own calls are host-side uses (image
/// transfers, OVA export and import, measure, reduce, the v2v virtio ISO,
/// backup scratch disks; docs/backup.md lists them), so a prepare that does
/// not say is [`PreparePurpose::Copy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PreparePurpose {
    /// A VM runs, hot-plugs or previews the volume: only when the caller
    /// says `"vm"`.
    Vm,
    /// Read or written on the host, not by a VM: a copy, an image
    /// transfer, a measure. The default.
    Copy,
}

impl PreparePurpose {
    pub fn parse(s: Option<&str>) -> Result<PreparePurpose, String> {
        match s {
            Some("vm") => Ok(PreparePurpose::Vm),
            None | Some("copy") => Ok(PreparePurpose::Copy),
            Some(other) => Err(format!("purpose={other:?} (\"vm\" or \"copy\")")),
        }
    }
}

/// A backup domain is a data domain: ISO and the legacy export class are
/// refused.
pub fn check_class(md: &DomainMetadata, op: &'static str) -> StorageResult<()> {
    check_class_of(md.sd_uuid, md.class, op)
}

pub fn check_class_of(sd: SdUuid, class: DomainClass, op: &'static str) -> StorageResult<()> {
    if class != DomainClass::Data {
        return Err(StorageError::new(
            Code::BackupNeedsDataDomain,
            op,
            format!("'{sd}' is a {class} domain"),
        ));
    }
    Ok(())
}

/// Preparing a volume of a backup domain for a VM is refused.
pub fn check_prepare(
    md: &DomainMetadata,
    purpose: PreparePurpose,
    op: &'static str,
) -> StorageResult<()> {
    if md.backup && purpose == PreparePurpose::Vm {
        return Err(StorageError::new(
            Code::BackupDomainCannotRunVm,
            op,
            format!(
                "'{}' is a backup domain: no VM runs from it (prepare without purpose \"vm\" to copy or transfer its volumes)",
                md.sd_uuid
            ),
        ));
    }
    Ok(())
}

/// Memory volumes and hosted-engine disks never go to a backup domain.
pub fn check_volume_kind(
    md: &DomainMetadata,
    disk_type: DiskType,
    op: &'static str,
) -> StorageResult<()> {
    if !md.backup {
        return Ok(());
    }
    let Some(code) = refusal(disk_type) else {
        return Ok(());
    };
    Err(StorageError::new(
        code,
        op,
        format!(
            "'{}' is a backup domain; DISKTYPE {disk_type} is refused",
            md.sd_uuid
        ),
    ))
}

/// Whether a backup domain refuses volumes of this kind at all: callers
/// that create an ordinary disk need not read the domain's flag.
pub fn kind_is_restricted(disk_type: DiskType) -> bool {
    refusal(disk_type).is_some()
}

/// The code a backup domain refuses this kind of volume with.
fn refusal(disk_type: DiskType) -> Option<Code> {
    match disk_type {
        DiskType::Memd | DiskType::Memm => Some(Code::BackupDomainNoMemoryVolumes),
        DiskType::Hevd | DiskType::Hesd | DiskType::Hemd | DiskType::Heci => {
            Some(Code::BackupDomainNoHostedEngine)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_api::storage::DomainType;

    fn md(backup: bool) -> DomainMetadata {
        let mut m = DomainMetadata::new_file(
            SdUuid(depot_api::types::Uuid::new_v4()),
            DomainType::LocalFs,
            DomainClass::Data,
            "d",
            "/x",
            512,
            1 << 20,
        )
        .unwrap();
        m.backup = backup;
        m
    }

    #[test]
    fn rules() {
        assert_eq!(PreparePurpose::parse(None), Ok(PreparePurpose::Copy));
        assert_eq!(PreparePurpose::parse(Some("vm")), Ok(PreparePurpose::Vm));
        assert_eq!(
            PreparePurpose::parse(Some("copy")),
            Ok(PreparePurpose::Copy)
        );
        assert!(PreparePurpose::parse(Some("VM")).is_err());
        assert!(check_prepare(&md(false), PreparePurpose::Vm, "t").is_ok());
        assert_eq!(
            check_prepare(&md(true), PreparePurpose::Vm, "t")
                .unwrap_err()
                .code,
            Code::BackupDomainCannotRunVm
        );
        assert!(check_prepare(&md(true), PreparePurpose::Copy, "t").is_ok());
        for (t, code) in [
            (DiskType::Memd, Some(Code::BackupDomainNoMemoryVolumes)),
            (DiskType::Memm, Some(Code::BackupDomainNoMemoryVolumes)),
            (DiskType::Hevd, Some(Code::BackupDomainNoHostedEngine)),
            (DiskType::Heci, Some(Code::BackupDomainNoHostedEngine)),
            (DiskType::Data, None),
            (DiskType::Ovfs, None),
        ] {
            assert_eq!(
                check_volume_kind(&md(true), t, "t").err().map(|e| e.code),
                code,
                "{t}"
            );
            assert!(check_volume_kind(&md(false), t, "t").is_ok());
        }
        let mut iso = md(false);
        iso.class = DomainClass::Iso;
        assert_eq!(
            check_class(&iso, "t").unwrap_err().code,
            Code::BackupNeedsDataDomain
        );
    }
}
