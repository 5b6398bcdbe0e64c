//! Block and SCSI device facts from sysfs: sizes, block sizes, discard
//! limits, SCSI vendor/model/serial, device-mapper names and stacking, and
//! which iSCSI session a SCSI disk belongs to.
//!
//! # Why sysfs
//!
//! Every fact here is an attribute the kernel already exports; reading it
//! costs no process and never does I/O to the device, so it cannot hang on
//! a dead path the way an ioctl or an inquiry through a queueing multipath
//! device can. (VDSM reads the same files, except the serial, for which it
//! runs `scsi_id`; [`ScsiFacts::vdsm_serial`] builds the same string from
//! sysfs.)
//!
//! All paths are relative to a root (`/sys` in production), so the parsers
//! are tested on small fake trees.

use std::io;
use std::path::{Path, PathBuf};

/// Where sysfs is mounted.
pub const SYSFS_ROOT: &str = "/sys";

/// sysfs `size` files count 512-byte sectors whatever the device's logical
/// block size is.
const SECTOR: u64 = 512;

/// A sysfs attribute could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {path}: {value:?} is not a number")]
    Parse { path: PathBuf, value: String },
}

impl SysfsError {
    /// Whether the attribute (or its device) does not exist, e.g. because
    /// the device went away between listing and reading.
    pub fn is_not_found(&self) -> bool {
        matches!(self, SysfsError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Sizes and limits of one block device (`/sys/block/<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockFacts {
    /// Kernel name: `sda`, `dm-3`.
    pub name: String,
    /// `major:minor`.
    pub dev_t: String,
    /// Capacity in bytes.
    pub size: u64,
    pub logical_block_size: u64,
    pub physical_block_size: u64,
    /// Largest discard the device accepts in one request; 0 = no discard.
    pub discard_max_bytes: u64,
}

/// SCSI identity of a disk (`/sys/block/<name>/device/...`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiFacts {
    /// As the device reports it, trailing padding removed (`LIO-ORG`).
    pub vendor: String,
    /// The product id (`IBLOCK`), padding removed.
    pub model: String,
    /// Firmware revision.
    pub rev: String,
    /// The unit serial number from VPD page 0x80, if the device has one.
    pub unit_serial: Option<String>,
    /// `host:channel:target:lun`.
    pub hctl: Option<Hctl>,
    /// The SCSI device state: `running`, `offline`, `blocked`, ...
    pub state: String,
}

/// A SCSI address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hctl {
    pub host: u32,
    pub channel: u32,
    pub target: u32,
    pub lun: u64,
}

impl Hctl {
    /// Parses `2:0:0:1`.
    pub fn parse(s: &str) -> Option<Hctl> {
        let mut it = s.trim().split(':');
        let h = Hctl {
            host: it.next()?.parse().ok()?,
            channel: it.next()?.parse().ok()?,
            target: it.next()?.parse().ok()?,
            lun: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(h)
    }
}

impl ScsiFacts {
    /// The serial as VDSM reports it: `scsi_id --page=0x80 --whitelisted
    /// --export --replace-whitespace` prints `ID_SERIAL=S<vendor:8><model:16>
    /// <unit serial>` with each run of white space turned into one `_` and
    /// the ends trimmed (e.g. `SLIO-ORG_IBLOCK_6b0f...`). Empty when the
    /// device has no page 0x80, as VDSM's fallback.
    pub fn vdsm_serial(&self) -> String {
        let Some(serial) = &self.unit_serial else {
            return String::new();
        };
        let raw = format!("S{:<8}{:<16}{}", self.vendor, self.model, serial);
        replace_whitespace(&raw)
    }
}

/// udev's `util_replace_whitespace`: trims both ends and replaces each run
/// of white space inside with a single `_`.
fn replace_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join("_")
}

/// A SCSI device (`/sys/bus/scsi/devices/H:C:T:L`), whether or not its
/// block device exists yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiDevice {
    /// `2:0:0:1`.
    pub hctl: String,
    /// The SCSI peripheral type; 0 is a disk (the only type that gets a
    /// `sd` block device).
    pub scsi_type: Option<u32>,
    /// The block device (`sdb`). `sd` probes disks asynchronously: for a
    /// moment after a scan the SCSI device exists and this is `None`.
    pub block: Option<String>,
    /// The iSCSI session, for devices of one.
    pub iscsi_session: Option<u32>,
}

impl ScsiDevice {
    pub fn is_disk(&self) -> bool {
        self.scsi_type == Some(0)
    }
}

/// A device-mapper device (`/sys/block/dm-N/dm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmDevice {
    /// `dm-3`.
    pub kernel_name: String,
    /// The map's name, i.e. its `/dev/mapper/<name>`.
    pub name: String,
    /// The dm uuid: `mpath-<wwid>` for multipath maps, `LVM-...` for LVs,
    /// `part1-mpath-...` for partitions of a map.
    pub uuid: String,
}

impl DmDevice {
    /// The WWID when this is a multipath map (`mpath-<wwid>`).
    pub fn multipath_wwid(&self) -> Option<&str> {
        self.uuid.strip_prefix("mpath-").filter(|w| !w.is_empty())
    }
}

/// iSCSI session attributes (`/sys/class/iscsi_session/sessionN` and its
/// connection `connectionN:0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiSessionAttrs {
    pub sid: u32,
    pub target_name: String,
    pub tpgt: u32,
    pub iface_name: String,
    /// `None` when the session has no CHAP user.
    pub username: Option<String>,
    /// The portal the session was logged in to.
    pub persistent_address: String,
    pub persistent_port: u16,
}

/// Reads sysfs under a root.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs::new(SYSFS_ROOT)
    }
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn block(&self, name: &str) -> PathBuf {
        self.root.join("block").join(name)
    }

    fn read(&self, path: PathBuf) -> Result<String, SysfsError> {
        std::fs::read(&path)
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .trim_end_matches('\n')
                    .to_owned()
            })
            .map_err(|source| SysfsError::Read { path, source })
    }

    fn read_u64(&self, path: PathBuf) -> Result<u64, SysfsError> {
        let value = self.read(path.clone())?;
        value
            .trim()
            .parse()
            .map_err(|_| SysfsError::Parse { path, value })
    }

    /// Names under `/sys/block` (`sda`, `dm-0`, ...), sorted.
    pub fn block_devices(&self) -> Result<Vec<String>, SysfsError> {
        list_dir(&self.root.join("block"))
    }

    /// Size, block sizes and discard limit of `/sys/block/<name>`.
    pub fn block_facts(&self, name: &str) -> Result<BlockFacts, SysfsError> {
        let dir = self.block(name);
        let q = dir.join("queue");
        Ok(BlockFacts {
            name: name.to_owned(),
            dev_t: self.read(dir.join("dev"))?.trim().to_owned(),
            size: self.read_u64(dir.join("size"))? * SECTOR,
            logical_block_size: self.read_u64(q.join("logical_block_size"))?,
            physical_block_size: self.read_u64(q.join("physical_block_size"))?,
            // Old kernels lack it: no discard.
            discard_max_bytes: match self.read_u64(q.join("discard_max_bytes")) {
                Err(e) if e.is_not_found() => 0,
                other => other?,
            },
        })
    }

    /// Vendor, model, revision, serial, address and state of a SCSI disk.
    /// Missing optional attributes are left empty.
    pub fn scsi_facts(&self, name: &str) -> Result<ScsiFacts, SysfsError> {
        let dev = self.block(name).join("device");
        let opt = |file: &str| -> Result<String, SysfsError> {
            match self.read(dev.join(file)) {
                Ok(v) => Ok(v.trim_end().to_owned()),
                Err(e) if e.is_not_found() => Ok(String::new()),
                Err(e) => Err(e),
            }
        };
        let hctl = match list_dir(&dev.join("scsi_disk")) {
            Ok(names) => names.first().and_then(|n| Hctl::parse(n)),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let unit_serial = match std::fs::read(dev.join("vpd_pg80")) {
            Ok(bytes) => parse_vpd_pg80(&bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(SysfsError::Read {
                    path: dev.join("vpd_pg80"),
                    source,
                })
            }
        };
        Ok(ScsiFacts {
            vendor: opt("vendor")?,
            model: opt("model")?,
            rev: opt("rev")?,
            unit_serial,
            hctl,
            state: opt("state")?,
        })
    }

    /// The device-mapper identity of `name`, `None` if it is not a dm
    /// device (or went away).
    pub fn dm_device(&self, name: &str) -> Result<Option<DmDevice>, SysfsError> {
        let dm = self.block(name).join("dm");
        let read = |f: &str| match self.read(dm.join(f)) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        };
        let (Some(map_name), Some(uuid)) = (read("name")?, read("uuid")?) else {
            return Ok(None);
        };
        Ok(Some(DmDevice {
            kernel_name: name.to_owned(),
            name: map_name,
            uuid,
        }))
    }

    /// The devices `name` is built on (`/sys/block/<name>/slaves`).
    pub fn slaves(&self, name: &str) -> Result<Vec<String>, SysfsError> {
        list_dir_or_empty(&self.block(name).join("slaves"))
    }

    /// The devices built on `name` (`/sys/block/<name>/holders`).
    pub fn holders(&self, name: &str) -> Result<Vec<String>, SysfsError> {
        list_dir_or_empty(&self.block(name).join("holders"))
    }

    /// The kernel name of block device `major:minor`
    /// (`/sys/dev/block/M:m` links to it).
    pub fn name_of_dev_t(&self, dev_t: &str) -> Option<String> {
        let link = std::fs::read_link(self.root.join("dev/block").join(dev_t)).ok()?;
        Some(link.file_name()?.to_string_lossy().into_owned())
    }

    /// The iSCSI session a SCSI disk belongs to, from where its device sits
    /// in the device tree (`.../host2/session1/target2:0:0/2:0:0:1`);
    /// `None` for disks of other transports (FC, SAS, virtio-scsi,
    /// scsi_debug).
    pub fn iscsi_session_of(&self, name: &str) -> Option<u32> {
        let dev = std::fs::canonicalize(self.block(name).join("device")).ok()?;
        dev.ancestors()
            .filter_map(|p| p.file_name()?.to_str()?.strip_prefix("session"))
            .find_map(|n| n.parse().ok())
    }

    /// Every SCSI device (LUN) of the machine, sorted by address.
    pub fn scsi_devices(&self) -> Result<Vec<ScsiDevice>, SysfsError> {
        let dir = self.root.join("bus/scsi/devices");
        let mut out = Vec::new();
        for name in list_dir_or_empty(&dir)? {
            // Hosts and targets live here too (`host2`, `target2:0:0`).
            if Hctl::parse(&name).is_none() {
                continue;
            }
            let dev = dir.join(&name);
            let scsi_type = self
                .read(dev.join("type"))
                .ok()
                .and_then(|t| t.trim().parse().ok());
            let block = list_dir_or_empty(&dev.join("block"))?.into_iter().next();
            let iscsi_session = std::fs::canonicalize(&dev).ok().and_then(|real| {
                real.ancestors()
                    .filter_map(|p| p.file_name()?.to_str()?.strip_prefix("session"))
                    .find_map(|n| n.parse().ok())
            });
            out.push(ScsiDevice {
                hctl: name,
                scsi_type,
                block,
                iscsi_session,
            });
        }
        Ok(out)
    }

    /// The SCSI disks (`sd*`) of the machine, sorted.
    pub fn scsi_disks(&self) -> Result<Vec<String>, SysfsError> {
        Ok(self
            .block_devices()?
            .into_iter()
            .filter(|n| n.starts_with("sd"))
            .collect())
    }

    /// The iSCSI sessions (`/sys/class/iscsi_session/sessionN`), sorted.
    pub fn iscsi_sessions(&self) -> Result<Vec<u32>, SysfsError> {
        let mut sids: Vec<u32> = list_dir_or_empty(&self.root.join("class/iscsi_session"))?
            .iter()
            .filter_map(|n| n.strip_prefix("session")?.parse().ok())
            .collect();
        sids.sort_unstable();
        Ok(sids)
    }

    /// The SCSI disks of iSCSI session `sid`.
    pub fn iscsi_session_disks(&self, sid: u32) -> Result<Vec<String>, SysfsError> {
        Ok(self
            .scsi_disks()?
            .into_iter()
            .filter(|d| self.iscsi_session_of(d) == Some(sid))
            .collect())
    }

    /// The attributes of iSCSI session `sid`.
    pub fn iscsi_session(&self, sid: u32) -> Result<IscsiSessionAttrs, SysfsError> {
        let s = self
            .root
            .join("class/iscsi_session")
            .join(format!("session{sid}"));
        let c = self
            .root
            .join("class/iscsi_connection")
            .join(format!("connection{sid}:0"));
        let username = self.read(s.join("username")).ok().and_then(null_to_none);
        let port_path = c.join("persistent_port");
        let port = self.read_u64(port_path.clone())?;
        Ok(IscsiSessionAttrs {
            sid,
            target_name: self.read(s.join("targetname"))?,
            tpgt: u32::try_from(self.read_u64(s.join("tpgt"))?).unwrap_or(u32::MAX),
            iface_name: self.read(s.join("ifacename"))?,
            username,
            persistent_address: self.read(c.join("persistent_address"))?,
            persistent_port: u16::try_from(port).map_err(|_| SysfsError::Parse {
                path: port_path,
                value: port.to_string(),
            })?,
        })
    }

    /// The CHAP password the kernel holds for session `sid` (root only;
    /// `None` when there is none). Only for comparing with a requested
    /// password: callers never print it (see [`crate::Secret`]).
    pub fn iscsi_session_password(&self, sid: u32) -> Option<crate::Secret> {
        let path = self
            .root
            .join("class/iscsi_session")
            .join(format!("session{sid}"))
            .join("password");
        self.read(path)
            .ok()
            .and_then(null_to_none)
            .map(crate::Secret::new)
    }

    /// Names of the SCSI hosts (`host0`, `host1`, ...).
    pub fn scsi_hosts(&self) -> Result<Vec<String>, SysfsError> {
        list_dir_or_empty(&self.root.join("class/scsi_host"))
    }

    /// The `scan` attribute of a SCSI host.
    pub fn scsi_host_scan_path(&self, host: &str) -> PathBuf {
        self.root.join("class/scsi_host").join(host).join("scan")
    }
}

/// iscsi sysfs shows unset strings as `(null)` or `<NULL>`.
fn null_to_none(v: String) -> Option<String> {
    let t = v.trim();
    (!t.is_empty() && t != "(null)" && t != "<NULL>").then(|| t.to_owned())
}

/// The unit serial from a raw VPD page 0x80 (header: qualifier/type, page
/// code 0x80, 2-byte length; then the ASCII serial, often space padded).
pub fn parse_vpd_pg80(bytes: &[u8]) -> Option<String> {
    if bytes.len() < 4 || bytes[1] != 0x80 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    let data = bytes.get(4..4 + len).unwrap_or(&bytes[4..]);
    let text: String = String::from_utf8_lossy(data)
        .trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .to_owned();
    (!text.is_empty()).then_some(text)
}

fn list_dir(dir: &Path) -> Result<Vec<String>, SysfsError> {
    let rd = std::fs::read_dir(dir).map_err(|source| SysfsError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn list_dir_or_empty(dir: &Path) -> Result<Vec<String>, SysfsError> {
    match list_dir(dir) {
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        other => other,
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake sysfs tree for unit tests of the parsers.

    use std::os::unix::fs::symlink;
    use std::path::Path;

    pub fn write(root: &Path, rel: &str, value: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, value).unwrap();
    }

    pub fn link(root: &Path, rel: &str, target: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(target, p).unwrap();
    }

    /// A SCSI disk of iSCSI session `sid` on host `host` with lun `lun`,
    /// laid out as the kernel does for software iSCSI.
    #[allow(clippy::too_many_arguments)]
    pub fn iscsi_disk(
        root: &Path,
        name: &str,
        dev_t: &str,
        host: u32,
        sid: u32,
        lun: u32,
        sectors: u64,
        serial: &str,
    ) {
        let hctl = format!("{host}:0:0:{lun}");
        let devdir = format!("devices/platform/host{host}/session{sid}/target{host}:0:0/{hctl}");
        scsi_disk(root, name, dev_t, &devdir, &hctl, sectors, serial);
    }

    pub fn scsi_disk(
        root: &Path,
        name: &str,
        dev_t: &str,
        devdir: &str,
        hctl: &str,
        sectors: u64,
        serial: &str,
    ) {
        write(root, &format!("{devdir}/vendor"), "LIO-ORG \n");
        write(root, &format!("{devdir}/model"), "IBLOCK          \n");
        write(root, &format!("{devdir}/rev"), "4.0 \n");
        write(root, &format!("{devdir}/state"), "running\n");
        write(root, &format!("{devdir}/type"), "0\n");
        link(
            root,
            &format!("bus/scsi/devices/{hctl}"),
            &root.join(devdir).to_string_lossy(),
        );
        std::fs::create_dir_all(root.join(format!("{devdir}/scsi_disk/{hctl}"))).unwrap();
        let mut pg80 = vec![0x00, 0x80, 0x00, serial.len() as u8];
        pg80.extend_from_slice(serial.as_bytes());
        let p = root.join(format!("{devdir}/vpd_pg80"));
        std::fs::write(p, pg80).unwrap();
        let blk = format!("{devdir}/block/{name}");
        block(root, &blk, dev_t, sectors, 512, 512, 8388608);
        link(
            root,
            &format!("block/{name}"),
            &root.join(&blk).to_string_lossy(),
        );
        link(
            root,
            &format!("block/{name}/device"),
            &root.join(devdir).to_string_lossy(),
        );
        link(
            root,
            &format!("dev/block/{dev_t}"),
            &root.join(&blk).to_string_lossy(),
        );
    }

    pub fn block(
        root: &Path,
        dir: &str,
        dev_t: &str,
        sectors: u64,
        lbs: u64,
        pbs: u64,
        discard: u64,
    ) {
        write(root, &format!("{dir}/dev"), &format!("{dev_t}\n"));
        write(root, &format!("{dir}/size"), &format!("{sectors}\n"));
        write(
            root,
            &format!("{dir}/queue/logical_block_size"),
            &format!("{lbs}\n"),
        );
        write(
            root,
            &format!("{dir}/queue/physical_block_size"),
            &format!("{pbs}\n"),
        );
        write(
            root,
            &format!("{dir}/queue/discard_max_bytes"),
            &format!("{discard}\n"),
        );
    }

    /// A multipath map `dm-N` named `wwid` over `slaves`.
    pub fn mpath(root: &Path, n: u32, wwid: &str, slaves: &[&str], sectors: u64) {
        let dir = format!("devices/virtual/block/dm-{n}");
        block(root, &dir, &format!("254:{n}"), sectors, 512, 4096, 8388608);
        write(root, &format!("{dir}/dm/name"), &format!("{wwid}\n"));
        write(root, &format!("{dir}/dm/uuid"), &format!("mpath-{wwid}\n"));
        std::fs::create_dir_all(root.join(format!("{dir}/holders"))).unwrap();
        link(
            root,
            &format!("block/dm-{n}"),
            &root.join(&dir).to_string_lossy(),
        );
        link(
            root,
            &format!("dev/block/254:{n}"),
            &root.join(&dir).to_string_lossy(),
        );
        for s in slaves {
            link(
                root,
                &format!("{dir}/slaves/{s}"),
                &root.join(format!("block/{s}")).to_string_lossy(),
            );
            link(
                root,
                &format!("block/{s}/holders/dm-{n}"),
                &root.join(&dir).to_string_lossy(),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn iscsi_session(
        root: &Path,
        sid: u32,
        iqn: &str,
        tpgt: u32,
        addr: &str,
        port: u16,
        user: &str,
        password: &str,
    ) {
        let s = format!("class/iscsi_session/session{sid}");
        write(root, &format!("{s}/targetname"), &format!("{iqn}\n"));
        write(root, &format!("{s}/tpgt"), &format!("{tpgt}\n"));
        write(root, &format!("{s}/ifacename"), "default\n");
        write(root, &format!("{s}/username"), &format!("{user}\n"));
        write(root, &format!("{s}/password"), &format!("{password}\n"));
        let c = format!("class/iscsi_connection/connection{sid}:0");
        write(
            root,
            &format!("{c}/persistent_address"),
            &format!("{addr}\n"),
        );
        write(root, &format!("{c}/persistent_port"), &format!("{port}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    #[test]
    fn vpd_pg80_and_vdsm_serial() {
        let mut page = vec![0x00, 0x80, 0x00, 0x24];
        page.extend_from_slice(b"6001405a1b2c3d4e5f60718293a4b5c6d7e8");
        let serial = parse_vpd_pg80(&page).unwrap();
        assert_eq!(serial, "6001405a1b2c3d4e5f60718293a4b5c6d7e8");
        let f = ScsiFacts {
            vendor: "LIO-ORG".into(),
            model: "IBLOCK".into(),
            unit_serial: Some(serial),
            ..Default::default()
        };
        assert_eq!(
            f.vdsm_serial(),
            "SLIO-ORG_IBLOCK_6001405a1b2c3d4e5f60718293a4b5c6d7e8"
        );
        // LIO's page as read in the guest (NUL padded), and the ID_SERIAL
        // that scsi_id printed for that disk there.
        let mut lio = vec![0x00, 0x80, 0x00, 0x25];
        lio.extend_from_slice(b"de907000-0000-4000-8000-000000000000\0");
        let f = ScsiFacts {
            vendor: "LIO-ORG".into(),
            model: "IBLOCK".into(),
            unit_serial: parse_vpd_pg80(&lio),
            ..Default::default()
        };
        assert_eq!(
            f.vdsm_serial(),
            "SLIO-ORG_IBLOCK_de907000-0000-4000-8000-000000000000"
        );
        // No page 0x80: empty, as VDSM when scsi_id fails.
        assert_eq!(ScsiFacts::default().vdsm_serial(), "");
        // Wrong page code, short page, padding only.
        assert_eq!(parse_vpd_pg80(&[0, 0x83, 0, 1, b'x']), None);
        assert_eq!(parse_vpd_pg80(&[0, 0x80]), None);
        assert_eq!(parse_vpd_pg80(&[0, 0x80, 0, 3, b' ', b' ', 0]), None);
        // A length past the end keeps what is there.
        assert_eq!(parse_vpd_pg80(&[0, 0x80, 0, 9, b'a', b'b']).unwrap(), "ab");
    }

    #[test]
    fn hctl_parse() {
        assert_eq!(
            Hctl::parse("2:0:1:17\n"),
            Some(Hctl {
                host: 2,
                channel: 0,
                target: 1,
                lun: 17
            })
        );
        assert_eq!(Hctl::parse("2:0:1"), None);
        assert_eq!(Hctl::parse("2:0:1:1:1"), None);
        assert_eq!(Hctl::parse("a:0:1:1"), None);
    }

    #[test]
    fn facts_from_a_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        iscsi_disk(root, "sda", "8:0", 2, 1, 0, 4194304, "serial-a");
        iscsi_disk(root, "sdb", "8:16", 3, 2, 0, 4194304, "serial-a");
        mpath(root, 0, "36001405aaa", &["sda", "sdb"], 4194304);
        iscsi_session(
            root,
            1,
            "iqn.2026-11.org.depot:t1",
            1,
            "127.0.0.1",
            3260,
            "u",
            "pw",
        );
        let fs = Sysfs::new(root);

        assert_eq!(fs.block_devices().unwrap(), ["dm-0", "sda", "sdb"]);
        let b = fs.block_facts("dm-0").unwrap();
        assert_eq!(b.size, 2 << 30);
        assert_eq!((b.logical_block_size, b.physical_block_size), (512, 4096));
        assert_eq!(b.discard_max_bytes, 8388608);
        assert_eq!(b.dev_t, "254:0");

        let dm = fs.dm_device("dm-0").unwrap().unwrap();
        assert_eq!(dm.multipath_wwid(), Some("36001405aaa"));
        assert_eq!(fs.dm_device("sda").unwrap(), None);
        assert_eq!(fs.slaves("dm-0").unwrap(), ["sda", "sdb"]);
        assert_eq!(fs.holders("sda").unwrap(), ["dm-0"]);
        assert!(fs.holders("dm-0").unwrap().is_empty());
        assert_eq!(fs.name_of_dev_t("8:16").as_deref(), Some("sdb"));

        let s = fs.scsi_facts("sda").unwrap();
        assert_eq!((s.vendor.as_str(), s.model.as_str()), ("LIO-ORG", "IBLOCK"));
        assert_eq!(s.rev, "4.0");
        assert_eq!(s.state, "running");
        assert_eq!(s.hctl.unwrap().lun, 0);
        assert_eq!(s.vdsm_serial(), "SLIO-ORG_IBLOCK_serial-a");

        assert_eq!(fs.scsi_disks().unwrap(), ["sda", "sdb"]);
        // A LUN whose disk the kernel has not probed yet, and an enclosure.
        write(
            root,
            "devices/platform/host2/session1/target2:0:0/2:0:0:5/type",
            "0\n",
        );
        link(
            root,
            "bus/scsi/devices/2:0:0:5",
            &root
                .join("devices/platform/host2/session1/target2:0:0/2:0:0:5")
                .to_string_lossy(),
        );
        write(
            root,
            "devices/pseudo/host9/target9:0:0/9:0:0:0/type",
            "13\n",
        );
        link(
            root,
            "bus/scsi/devices/9:0:0:0",
            &root
                .join("devices/pseudo/host9/target9:0:0/9:0:0:0")
                .to_string_lossy(),
        );
        std::fs::create_dir_all(root.join("bus/scsi/devices/host2")).unwrap();
        let devs = fs.scsi_devices().unwrap();
        let summary: Vec<(&str, bool, Option<&str>, Option<u32>)> = devs
            .iter()
            .map(|d| {
                (
                    d.hctl.as_str(),
                    d.is_disk(),
                    d.block.as_deref(),
                    d.iscsi_session,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("2:0:0:0", true, Some("sda"), Some(1)),
                ("2:0:0:5", true, None, Some(1)),
                ("3:0:0:0", true, Some("sdb"), Some(2)),
                ("9:0:0:0", false, None, None),
            ]
        );
        assert_eq!(fs.iscsi_sessions().unwrap(), [1]);
        assert_eq!(fs.iscsi_session_disks(2).unwrap(), ["sdb"]);
        assert_eq!(fs.iscsi_session_of("sda"), Some(1));
        assert_eq!(fs.iscsi_session_of("sdb"), Some(2));
        assert_eq!(fs.iscsi_session_of("dm-0"), None);
        let a = fs.iscsi_session(1).unwrap();
        assert_eq!(a.target_name, "iqn.2026-11.org.depot:t1");
        assert_eq!(
            (a.persistent_address.as_str(), a.persistent_port),
            ("127.0.0.1", 3260)
        );
        assert_eq!(a.username.as_deref(), Some("u"));
        assert_eq!(fs.iscsi_session_password(1).unwrap().expose(), "pw");
        assert!(fs.iscsi_session(9).unwrap_err().is_not_found());
    }

    #[test]
    fn unset_session_strings_are_none() {
        let t = tempfile::tempdir().unwrap();
        iscsi_session(
            t.path(),
            4,
            "iqn.x:y",
            1,
            "10.0.0.1",
            3260,
            "(null)",
            "(null)",
        );
        let fs = Sysfs::new(t.path());
        assert_eq!(fs.iscsi_session(4).unwrap().username, None);
        assert!(fs.iscsi_session_password(4).is_none());
    }
}
