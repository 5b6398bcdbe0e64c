//! The SAN verbs on the `Storage` object: `ISCSIConnection.discoverSendTargets`,
//! `Host.getDeviceList` and `Host.getDevicesVisibility` (connect and
//! disconnect go through `connect_storage_server` in mod.rs). See
//! `connection::san` and `devices` for the behaviour.

use std::path::PathBuf;

use depot_api::Code;
use depot_os::iscsi::Target;
use depot_os::Secret;

use super::Storage;
use crate::connection::iscsi::check_chap;
use crate::devices::{self, BlockDevice, PvFacts, TypeFilter};
use crate::{StorageError, StorageResult};

const OP_LIST: &str = "list block devices";

impl Storage {
    /// SendTargets discovery through `host:port`; CHAP when `user` is not
    /// empty. The CHAP fields are checked as connect checks them
    /// ([`check_chap`]: 1000 for a bad user or password, or only one of
    /// them).
    pub fn discover_send_targets(
        &self,
        host: &str,
        port: u16,
        user: Option<&str>,
        password: Option<Secret>,
        ipv6_enabled: bool,
    ) -> StorageResult<Vec<Target>> {
        // The same checks as a login's (connection::iscsi), before
        // iscsiadm sees either.
        let chap = check_chap("discover iSCSI targets", user, password)?;
        self.san.discover(host, port, chap, ipv6_enabled)
    }

    /// The multipath devices (see `devices`), after a rescan when
    /// `refresh`. PV facts come from one `pvs` over all the maps.
    pub fn device_list(
        &self,
        filter: TypeFilter,
        guids: &[String],
        check_status: bool,
        refresh: bool,
    ) -> StorageResult<Vec<BlockDevice>> {
        if let Some(bad) = guids.iter().find(|g| !devices::valid_guid(g)) {
            return Err(bad_guid(bad));
        }
        if refresh {
            self.san.refresh();
        }
        let states = self.san.multipath().path_states().map_err(|e| {
            StorageError::new(Code::MultipathSetupError, OP_LIST, e.to_string()).caused_by(e)
        })?;
        let mut devs = devices::list(self.san.sysfs(), &states, guids, filter)?;
        let pvs = self.pv_facts(&devs)?;
        devices::apply_lvm(&mut devs, &pvs, check_status);
        Ok(devs)
    }

    fn pv_facts(&self, devs: &[BlockDevice]) -> StorageResult<Vec<PvFacts>> {
        if devs.is_empty() {
            return Ok(Vec::new());
        }
        let paths: Vec<PathBuf> = devs.iter().map(|d| d.path.clone()).collect();
        let pvs = self.san.pvs_of(&paths).map_err(|e| {
            StorageError::new(
                Code::BlockDeviceActionError,
                OP_LIST,
                format!("cannot read LVM physical volumes: {e}"),
            )
            .caused_by(e)
        })?;
        Ok(pvs
            .into_iter()
            .map(|pv| PvFacts {
                device: pv.name,
                pv_uuid: pv.uuid,
                pv_size: pv.size,
                vg_uuid: pv.vg_uuid,
            })
            .collect())
    }

    /// Whether each GUID's multipath device exists; when one does not,
    /// rescans (iSCSI sessions, SCSI hosts) once and looks again, as VDSM.
    pub fn devices_visibility(&self, guids: &[String]) -> StorageResult<Vec<(String, bool)>> {
        if let Some(bad) = guids.iter().find(|g| !devices::valid_guid(g)) {
            return Err(bad_guid(bad));
        }
        let mut seen = devices::visible(self.san.sysfs(), guids)?;
        if seen.iter().any(|v| !v) {
            self.san.refresh();
            seen = devices::visible(self.san.sysfs(), guids)?;
        }
        Ok(guids.iter().cloned().zip(seen).collect())
    }
}

fn bad_guid(g: &str) -> StorageError {
    let shown: String = g.chars().take(200).collect();
    StorageError::new(
        Code::InvalidParameterException,
        OP_LIST,
        format!("guid={shown:?}: not a device GUID (WWID)"),
    )
}
