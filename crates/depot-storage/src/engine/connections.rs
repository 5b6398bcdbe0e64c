//! Connections to storage servers: `StoragePool.connectStorageServer` and
//! `disconnectStorageServer` for file (mounts) and block (iSCSI, FCP)
//! storage, the connection watch, and the refusal to log out of a session
//! or unmount a server that an active domain uses.

use std::path::{Path, PathBuf};

use depot_api::storage::{DomainType, SdUuid};
use depot_api::Code;

use super::Storage;
use crate::connection::watch;
use crate::connection::{ConnectionParams, ConnectionStatus};
use crate::{StorageError, StorageResult};

impl Storage {
    pub fn connect_storage_server(
        &self,
        domain_type: DomainType,
        params: &[ConnectionParams],
    ) -> Vec<ConnectionStatus> {
        if domain_type.is_block() {
            let statuses = self.san.connect_all(domain_type, params);
            if domain_type == DomainType::Iscsi {
                for p in connected(params, &statuses) {
                    let Ok(c) = crate::connection::iscsi::IscsiConnection::new(p) else {
                        continue;
                    };
                    let key = c.key();
                    match self.san.session_attrs(&key) {
                        Some(attrs) => self.watch.watch(
                            &p.id,
                            domain_type,
                            key.to_string(),
                            watch::Target::Iscsi(attrs),
                        ),
                        None => {
                            tracing::warn!(id = %p.id, %key, "connected, but sysfs shows no session to watch")
                        }
                    }
                }
            }
            return statuses;
        }
        let statuses = self.connector.connect_all(domain_type, params);
        for p in connected(params, &statuses) {
            if let Ok(c) = self.connector.prepare(domain_type, p) {
                // Clean what crashes left in the mounts that are now there.
                self.recover_mount(c.mount_point());
                self.watch.watch(
                    &p.id,
                    domain_type,
                    c.spec().to_string(),
                    watch::Target::File(c),
                );
            }
        }
        statuses
    }

    pub fn disconnect_storage_server(
        &self,
        domain_type: DomainType,
        params: &[ConnectionParams],
    ) -> Vec<ConnectionStatus> {
        if domain_type.is_block() {
            let statuses = self
                .san
                .disconnect_all(domain_type, params, |usage| self.check_san_logout(usage));
            for p in connected(params, &statuses) {
                self.watch.forget(&p.id);
            }
            return statuses;
        }
        let statuses = self.connector.disconnect_all(domain_type, params, |conn| {
            let mount = conn.mount_point();
            let state = self.state();
            let busy = state.domains.iter().find(|(sd, d)| {
                d.paths().root.starts_with(mount)
                    && (self.monitor.is_monitoring(**sd) || self.pools.is_active(**sd))
            });
            match busy {
                Some((sd, _)) => Err(StorageError::new(
                    Code::StorageServerDisconnectionError,
                    "disconnect storage server",
                    format!(
                        "domain {sd} on {} is active; deactivate it first",
                        mount.display()
                    ),
                )),
                None => Ok(()),
            }
        });
        for p in params {
            if let Ok(c) = self.connector.prepare(domain_type, p) {
                let mount = c.mount_point().to_path_buf();
                let mut state = self.state();
                state.recovered.remove(&mount);
                state
                    .domains
                    .retain(|_, d| !d.paths().root.starts_with(&mount));
            }
        }
        for p in connected(params, &statuses) {
            self.watch.forget(&p.id);
        }
        statuses
    }

    /// The connection ids the connection watch looks after.
    pub fn watched_connections(&self) -> Vec<String> {
        self.watch.watched()
    }

    /// Keeps the iSCSI session references in `file` across restarts
    /// (connection::session_refs); without it they live in memory.
    pub fn with_san_references(mut self, file: PathBuf) -> Self {
        self.san = self.san.with_references_file(file);
        self
    }

    /// Before the last connection of an iSCSI session logs out: refuses
    /// (452) while a block domain on one of the session's devices is
    /// active in a connected pool or monitored. A block domain's VG is
    /// named by its sdUUID; its PVs come from one `pvs` over the devices.
    pub(crate) fn check_san_logout(
        &self,
        usage: &crate::connection::san::SessionUse<'_>,
    ) -> StorageResult<()> {
        if usage.wwids.is_empty() {
            return Ok(());
        }
        let devices: Vec<PathBuf> = usage
            .wwids
            .iter()
            .map(|w| Path::new(depot_os::multipath::DEV_MAPPER).join(w))
            .collect();
        let pvs = self.san.pvs_of(&devices).map_err(|e| {
            StorageError::new(
                Code::StorageServerDisconnectionError,
                "disconnect storage server",
                format!("cannot tell which domains use {}: {e}", usage.key),
            )
            .caused_by(e)
        })?;
        for pv in pvs
            .iter()
            .filter(|pv| devices.iter().any(|d| Path::new(&pv.name) == d))
        {
            let Ok(sd) = pv.vg_name.parse::<SdUuid>() else {
                continue;
            };
            if self.monitor.is_monitoring(sd) || self.pools.is_active(sd) {
                return Err(StorageError::new(
                    Code::StorageServerDisconnectionError,
                    "disconnect storage server",
                    format!(
                        "domain {sd} on {} (session {}) is active; deactivate it first",
                        pv.name, usage.key
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The entries whose status is 0.
fn connected<'a>(
    params: &'a [ConnectionParams],
    statuses: &'a [ConnectionStatus],
) -> impl Iterator<Item = &'a ConnectionParams> {
    params
        .iter()
        .filter(move |p| statuses.iter().any(|s| s.id == p.id && s.status == 0))
}
