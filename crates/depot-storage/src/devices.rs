//! The host's SAN block devices, as `Host.getDeviceList` and
//! `Host.getDevicesVisibility` report them.
//!
//! A device is a multipath map, named by its WWID (VDSM's GUID); path
//! devices (`sdb`) are never reported as devices of their own, and their
//! names only appear as the `physdev` of a path, because the kernel may
//! give the same name to another LUN after a rescan.
//!
//! Every fact comes from sysfs ([`depot_os::sysfs_block`]) except the
//! path states (`dmsetup status`) and the PV facts (one `pvs` over all the
//! maps, through depot's LVM wrapper, passed in by the caller).
//!
//! # Fields (VDSM's)
//!
//! * `capacity`: the map's size in bytes (sysfs counts 512-byte sectors;
//!   VDSM multiplies by the logical block size instead, which overstates
//!   4Kn devices eightfold; depot reports the true size).
//! * `vendorID`, `productID`, `fwrev`: the first path's SCSI inquiry data.
//! * `serial`: `scsi_id`'s page 0x80 `ID_SERIAL` form, `S<vendor><model>
//!   <serial>` with white space runs as `_`, built from sysfs.
//! * `devtype`: `iSCSI` when every path belongs to an iSCSI session, `FCP`
//!   when none does (FC, and any other SCSI transport), `MIXED` otherwise.
//! * `pathlist`: one entry per iSCSI session among the paths:
//!   `{connection, port, iqn, portal (the tpgt), initiatorname (the iface),
//!   user?}`. VDSM also returns the CHAP password there; depot never does.
//! * `pathstatus`: per path `{physdev, state (active|failed), capacity,
//!   lun, type}`.
//! * `status`: `used` when the map is an LVM PV or has anything built on
//!   it (partitions, other device-mapper devices), else `free`; `unknown`
//!   when `checkStatus` is false. (VDSM runs `pvcreate --test` on the
//!   devices; depot does not write-test devices to list them.)

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use depot_api::Code;
use depot_os::multipath::{list_maps, MultipathMap, PathState};
use depot_os::sysfs_block::{IscsiSessionAttrs, Sysfs, SysfsError};

use crate::error::{BoxError, StorageError, StorageResult};

const OP_LIST: &str = "list block devices";

/// The transport of a device's paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevType {
    Iscsi,
    Fcp,
    Mixed,
}

impl DevType {
    /// VDSM's names.
    pub fn as_str(self) -> &'static str {
        match self {
            DevType::Iscsi => "iSCSI",
            DevType::Fcp => "FCP",
            DevType::Mixed => "MIXED",
        }
    }
}

/// Which devices a listing wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeFilter {
    All,
    /// iSCSI and mixed devices.
    Iscsi,
    /// FCP and mixed devices.
    Fcp,
}

impl TypeFilter {
    fn accepts(self, t: Option<DevType>) -> bool {
        matches!(
            (self, t),
            (TypeFilter::All, _)
                | (_, Some(DevType::Mixed))
                | (TypeFilter::Iscsi, Some(DevType::Iscsi))
                | (TypeFilter::Fcp, Some(DevType::Fcp))
        )
    }
}

/// One path of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePath {
    /// The path's SCSI disk (`sdb`).
    pub physdev: String,
    /// The kernel's multipath state; `None` if dmsetup did not list it.
    pub state: Option<PathState>,
    pub capacity: u64,
    pub lun: u64,
    pub dev_type: DevType,
    /// The iSCSI session the path belongs to.
    pub session: Option<u32>,
}

/// An iSCSI session one of the paths runs over (VDSM's pathlist entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSession {
    pub connection: String,
    pub port: u16,
    pub iqn: String,
    pub tpgt: u32,
    pub iface: String,
    pub user: Option<String>,
}

impl From<&IscsiSessionAttrs> for PathSession {
    fn from(a: &IscsiSessionAttrs) -> Self {
        PathSession {
            connection: a.persistent_address.clone(),
            port: a.persistent_port,
            iqn: a.target_name.clone(),
            tpgt: a.tpgt,
            iface: a.iface_name.clone(),
            user: a.username.clone(),
        }
    }
}

/// What LVM says about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvFacts {
    /// The PV's device path (`/dev/mapper/<wwid>`).
    pub device: String,
    pub pv_uuid: String,
    pub pv_size: u64,
    /// Empty when the PV is in no VG.
    pub vg_uuid: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    Used,
    Free,
    Unknown,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Used => "used",
            DeviceStatus::Free => "free",
            DeviceStatus::Unknown => "unknown",
        }
    }
}

/// One multipath device, with everything `getDeviceList` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// The WWID.
    pub guid: String,
    /// `/dev/mapper/<name>`.
    pub path: PathBuf,
    /// Kernel name (`dm-3`).
    pub dm: String,
    pub capacity: u64,
    pub vendor: String,
    pub product: String,
    pub fwrev: String,
    pub serial: String,
    pub logical_block_size: u64,
    pub physical_block_size: u64,
    pub discard_max_bytes: u64,
    /// `None` for a map without paths.
    pub dev_type: Option<DevType>,
    pub paths: Vec<DevicePath>,
    pub sessions: Vec<PathSession>,
    /// Devices built on the map (kernel names).
    pub holders: Vec<String>,
    /// Whether one of the holders is a partition of the map.
    pub partitioned: bool,
    pub pv: Option<PvFacts>,
    pub status: DeviceStatus,
}

fn list_err(e: impl std::fmt::Display + Into<BoxError>) -> StorageError {
    StorageError::new(Code::BlockDeviceActionError, OP_LIST, e.to_string()).caused_by(e)
}

/// Lists the multipath devices (all, or only `guids`; unknown guids are
/// simply absent), of the transport `filter` asks for, sorted by GUID.
/// `states` maps path devices to their multipath state (from
/// [`depot_os::multipath::Multipath::path_states`]). PV facts and status
/// are filled in by [`apply_lvm`].
pub fn list(
    sysfs: &Sysfs,
    states: &BTreeMap<String, PathState>,
    guids: &[String],
    filter: TypeFilter,
) -> StorageResult<Vec<BlockDevice>> {
    let maps = list_maps(sysfs).map_err(list_err)?;
    let mut sessions: HashMap<u32, Option<IscsiSessionAttrs>> = HashMap::new();
    let mut out = Vec::new();
    for m in maps {
        if !guids.is_empty() && !guids.contains(&m.wwid) {
            continue;
        }
        match device(sysfs, &m, states, &mut sessions) {
            Ok(d) if filter.accepts(d.dev_type) => out.push(d),
            Ok(_) => {}
            // The map (or one of its paths) went away while we read it.
            Err(e) if e.is_not_found() => {
                tracing::info!(wwid = %m.wwid, error = %e, "device vanished while listing it");
            }
            Err(e) => return Err(list_err(e)),
        }
    }
    Ok(out)
}

fn device(
    sysfs: &Sysfs,
    m: &MultipathMap,
    states: &BTreeMap<String, PathState>,
    sessions: &mut HashMap<u32, Option<IscsiSessionAttrs>>,
) -> Result<BlockDevice, SysfsError> {
    let facts = sysfs.block_facts(&m.dm)?;
    let mut dev = BlockDevice {
        guid: m.wwid.clone(),
        path: m.dev_path(),
        dm: m.dm.clone(),
        capacity: facts.size,
        vendor: String::new(),
        product: String::new(),
        fwrev: String::new(),
        serial: String::new(),
        logical_block_size: facts.logical_block_size,
        physical_block_size: facts.physical_block_size,
        discard_max_bytes: facts.discard_max_bytes,
        dev_type: None,
        paths: Vec::new(),
        sessions: Vec::new(),
        holders: m.holders.clone(),
        partitioned: false,
        pv: None,
        status: DeviceStatus::Unknown,
    };
    for h in &m.holders {
        if let Ok(Some(dm)) = sysfs.dm_device(h) {
            // kpartx names partitions' dm uuids `partN-mpath-<wwid>`.
            if dm.uuid.starts_with("part") {
                dev.partitioned = true;
            }
        }
    }
    for p in &m.paths {
        let pf = match sysfs.block_facts(p) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let scsi = sysfs.scsi_facts(p)?;
        if dev.vendor.is_empty() {
            dev.vendor = scsi.vendor.clone();
            dev.product = scsi.model.clone();
            dev.fwrev = scsi.rev.clone();
            dev.serial = scsi.vdsm_serial();
        }
        let session = sysfs.iscsi_session_of(p);
        let dev_type = if session.is_some() {
            DevType::Iscsi
        } else {
            DevType::Fcp
        };
        dev.dev_type = Some(match dev.dev_type {
            None => dev_type,
            Some(t) if t == dev_type => t,
            Some(_) => DevType::Mixed,
        });
        if let Some(sid) = session {
            let attrs = sessions
                .entry(sid)
                .or_insert_with(|| sysfs.iscsi_session(sid).ok());
            if let Some(a) = attrs {
                let ps = PathSession::from(&*a);
                if !dev.sessions.contains(&ps) {
                    dev.sessions.push(ps);
                }
            }
        }
        dev.paths.push(DevicePath {
            physdev: p.clone(),
            state: states.get(p).copied(),
            capacity: pf.size,
            lun: scsi.hctl.map(|h| h.lun).unwrap_or(0),
            dev_type,
            session,
        });
    }
    Ok(dev)
}

/// Fills in the PV facts from `pvs` and, when `check_status`, the
/// used/free status (see the module docs).
pub fn apply_lvm(devices: &mut [BlockDevice], pvs: &[PvFacts], check_status: bool) {
    for d in devices.iter_mut() {
        d.pv = pvs
            .iter()
            .find(|pv| same_device(&pv.device, &d.path, &d.guid))
            .cloned();
        d.status = if !check_status {
            DeviceStatus::Unknown
        } else if d.pv.is_some() || !d.holders.is_empty() {
            DeviceStatus::Used
        } else {
            DeviceStatus::Free
        };
    }
}

/// LVM may name a PV `/dev/mapper/<name>` or `/dev/dm-N`.
fn same_device(pv_device: &str, path: &Path, guid: &str) -> bool {
    Path::new(pv_device) == path
        || Path::new(pv_device).file_name().and_then(|n| n.to_str()) == Some(guid)
}

/// Whether `guid` is a plausible WWID (what may be looked up under
/// `/dev/mapper`): letters, digits and `_-.:`, 1..=128 bytes.
pub fn valid_guid(guid: &str) -> bool {
    !guid.is_empty()
        && guid.len() <= 128
        && !guid.starts_with('.')
        && guid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

/// Which of `guids` have a multipath map with a device node.
pub fn visible(sysfs: &Sysfs, guids: &[String]) -> StorageResult<Vec<bool>> {
    let maps = list_maps(sysfs).map_err(list_err)?;
    Ok(guids
        .iter()
        .map(|g| {
            maps.iter()
                .find(|m| m.wwid == *g)
                .is_some_and(|m| m.dev_path().exists())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake tree (see depot_os's sysfs fakes): two iSCSI paths of one
    /// map over sessions 1 and 2, and one scsi_debug-like FC disk.
    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let w = |rel: &str, v: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        let l = |rel: &str, target: &Path| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        };
        let disk = |name: &str, devdir: &str, hctl: &str, serial: &str, vendor: &str| {
            w(&format!("{devdir}/vendor"), &format!("{vendor}\n"));
            w(&format!("{devdir}/model"), "IBLOCK          \n");
            w(&format!("{devdir}/rev"), "4.0 \n");
            w(&format!("{devdir}/state"), "running\n");
            std::fs::create_dir_all(root.join(format!("{devdir}/scsi_disk/{hctl}"))).unwrap();
            let mut pg = vec![0, 0x80, 0, serial.len() as u8];
            pg.extend_from_slice(serial.as_bytes());
            std::fs::write(root.join(format!("{devdir}/vpd_pg80")), pg).unwrap();
            let blk = format!("{devdir}/block/{name}");
            w(&format!("{blk}/dev"), "8:0\n");
            w(&format!("{blk}/size"), "4194304\n");
            w(&format!("{blk}/queue/logical_block_size"), "512\n");
            w(&format!("{blk}/queue/physical_block_size"), "512\n");
            w(&format!("{blk}/queue/discard_max_bytes"), "0\n");
            l(&format!("block/{name}"), &root.join(&blk));
            l(&format!("block/{name}/device"), &root.join(devdir));
        };
        disk(
            "sda",
            "devices/platform/host2/session1/target2:0:0/2:0:0:1",
            "2:0:0:1",
            "ser1",
            "LIO-ORG ",
        );
        disk(
            "sdb",
            "devices/platform/host3/session2/target3:0:0/3:0:0:1",
            "3:0:0:1",
            "ser1",
            "LIO-ORG ",
        );
        disk(
            "sdc",
            "devices/pseudo_0/adapter0/host4/target4:0:0/4:0:0:0",
            "4:0:0:0",
            "2000",
            "Linux   ",
        );
        let map = |n: u32, wwid: &str, slaves: &[&str]| {
            let dir = format!("devices/virtual/block/dm-{n}");
            w(&format!("{dir}/dev"), &format!("254:{n}\n"));
            w(&format!("{dir}/size"), "4194304\n");
            w(&format!("{dir}/queue/logical_block_size"), "512\n");
            w(&format!("{dir}/queue/physical_block_size"), "4096\n");
            w(&format!("{dir}/queue/discard_max_bytes"), "4194304\n");
            w(&format!("{dir}/dm/name"), &format!("{wwid}\n"));
            w(&format!("{dir}/dm/uuid"), &format!("mpath-{wwid}\n"));
            std::fs::create_dir_all(root.join(format!("{dir}/holders"))).unwrap();
            l(&format!("block/dm-{n}"), &root.join(&dir));
            for s in slaves {
                l(
                    &format!("{dir}/slaves/{s}"),
                    &root.join(format!("block/{s}")),
                );
            }
        };
        map(0, "36001405aaa", &["sda", "sdb"]);
        map(1, "35333333000002710", &["sdc"]);
        for (sid, addr) in [(1, "127.0.0.1"), (2, "10.0.2.15")] {
            let s = format!("class/iscsi_session/session{sid}");
            w(
                &format!("{s}/targetname"),
                "iqn.2026-11.org.depot:target1\n",
            );
            w(&format!("{s}/tpgt"), "1\n");
            w(&format!("{s}/ifacename"), "default\n");
            w(&format!("{s}/username"), "depot\n");
            w(&format!("{s}/password"), "depot-chap-secret\n");
            let c = format!("class/iscsi_connection/connection{sid}:0");
            w(&format!("{c}/persistent_address"), &format!("{addr}\n"));
            w(&format!("{c}/persistent_port"), "3260\n");
        }
        t
    }

    #[test]
    fn lists_maps_with_paths_sessions_and_types() {
        let t = tree();
        let fs = Sysfs::new(t.path());
        let states: BTreeMap<String, PathState> = [
            ("sda".to_string(), PathState::Active),
            ("sdb".to_string(), PathState::Failed),
        ]
        .into();
        let devs = list(&fs, &states, &[], TypeFilter::All).unwrap();
        assert_eq!(devs.len(), 2);
        let fc = &devs[0];
        assert_eq!(fc.guid, "35333333000002710");
        assert_eq!(fc.dev_type, Some(DevType::Fcp));
        assert!(fc.sessions.is_empty());
        assert_eq!(fc.paths[0].state, None);
        assert_eq!(fc.vendor, "Linux");

        let d = &devs[1];
        assert_eq!(d.guid, "36001405aaa");
        assert_eq!(d.path, Path::new("/dev/mapper/36001405aaa"));
        assert_eq!(d.capacity, 2 << 30);
        assert_eq!((d.logical_block_size, d.physical_block_size), (512, 4096));
        assert_eq!(d.discard_max_bytes, 4194304);
        assert_eq!(d.dev_type, Some(DevType::Iscsi));
        assert_eq!(
            (d.vendor.as_str(), d.product.as_str(), d.fwrev.as_str()),
            ("LIO-ORG", "IBLOCK", "4.0")
        );
        assert_eq!(d.serial, "SLIO-ORG_IBLOCK_ser1");
        assert_eq!(d.paths.len(), 2);
        assert_eq!(d.paths[0].physdev, "sda");
        assert_eq!(d.paths[0].lun, 1);
        assert_eq!(d.paths[1].state, Some(PathState::Failed));
        assert_eq!(d.sessions.len(), 2);
        assert_eq!(d.sessions[1].connection, "10.0.2.15");
        assert_eq!(d.sessions[1].user.as_deref(), Some("depot"));
        // Nothing in the device carries the password.
        assert!(!format!("{devs:?}").contains("depot-chap-secret"));

        let only = list(&fs, &states, &["36001405aaa".into()], TypeFilter::All).unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(list(&fs, &states, &[], TypeFilter::Iscsi).unwrap().len(), 1);
        assert_eq!(
            list(&fs, &states, &[], TypeFilter::Fcp).unwrap()[0].guid,
            "35333333000002710"
        );
        assert!(list(&fs, &states, &["nope".into()], TypeFilter::All)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn status_from_pvs_and_holders() {
        let t = tree();
        let fs = Sysfs::new(t.path());
        let mut devs = list(&fs, &BTreeMap::new(), &[], TypeFilter::All).unwrap();
        let pvs = [PvFacts {
            device: "/dev/mapper/36001405aaa".into(),
            pv_uuid: "pv-1".into(),
            pv_size: 123,
            vg_uuid: "vg-1".into(),
        }];
        apply_lvm(&mut devs, &pvs, true);
        assert_eq!(devs[1].status, DeviceStatus::Used);
        assert_eq!(devs[1].pv.as_ref().unwrap().vg_uuid, "vg-1");
        assert_eq!(devs[0].status, DeviceStatus::Free);
        devs[0].holders.push("dm-5".into());
        apply_lvm(&mut devs, &pvs, true);
        assert_eq!(devs[0].status, DeviceStatus::Used);
        apply_lvm(&mut devs, &pvs, false);
        assert!(devs.iter().all(|d| d.status == DeviceStatus::Unknown));
        assert!(devs[1].pv.is_some(), "PV facts even without checkStatus");
    }

    #[test]
    fn guids() {
        assert!(valid_guid("36001405de907000000040008000000000"));
        assert!(valid_guid("mpatha"));
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(129)] {
            assert!(!valid_guid(bad), "{bad:?}");
        }
        let t = tree();
        let fs = Sysfs::new(t.path());
        // The maps exist in sysfs but /dev/mapper has no such nodes here.
        assert_eq!(
            visible(&fs, &["36001405aaa".into(), "nope".into()]).unwrap(),
            [false, false]
        );
    }
}
