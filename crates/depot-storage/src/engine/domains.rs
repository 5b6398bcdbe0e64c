//! Storage domains: where each one is ([`Storage::locate`]), the
//! domain verbs (create, info, stats, description, validate, format,
//! find, backup flag), health monitoring, and the crash recovery of the
//! mounts domains live in. Each verb reaches the domain through the domain
//! contract ([`Domain`]), which also decides whether the call runs on the
//! mount's I/O worker.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use depot_api::storage::{DomainClass, DomainRole, DomainType, SdUuid, SpUuid};
use depot_api::Code;
use depot_os::lvm::Lvm;

use super::{Lane, Storage};
use crate::domain::{BlockDomain, Domain, FileDomain, VolumeTools};
use crate::domain_spec::{self, CreateDomain};
use crate::file;
use crate::layout::{self, DomainPaths};
use crate::lock::Held;
use crate::metadata::domain::DomainMetadata;
use crate::monitor::{CheckTarget, DomainHealth};
use crate::{StorageError, StorageResult};

/// `StorageDomain.getInfo`, typed.
#[derive(Debug, Clone)]
pub struct DomainInfo {
    pub metadata: DomainMetadata,
    pub domain: Domain,
}

impl Storage {
    /// Cleans crash leftovers in every mount present at start; returns what
    /// was removed, for the start-up log.
    pub fn recover(&self) -> Vec<String> {
        let mut removed = Vec::new();
        for dir in layout::mount_dirs(&self.config.repository) {
            removed.extend(self.recover_mount(&dir));
        }
        removed
    }

    pub(super) fn recover_mount(&self, mount_dir: &Path) -> Vec<String> {
        if !self.state().recovered.insert(mount_dir.to_path_buf()) {
            return Vec::new();
        }
        let dir = mount_dir.to_path_buf();
        // Long work: finishing an interrupted postZero delete wipes.
        let op = "recover crash leftovers";
        let started = Arc::new(AtomicBool::new(false));
        let started_in = Arc::clone(&started);
        let (qemu, timeout) = (self.qemu.clone(), self.config.qemu_img_timeout);
        let fs = self.mount_fs(mount_dir);
        let found = self.io_in(Lane::Long, mount_dir, op, &Held::none(), move |live| {
            started_in.store(true, Ordering::SeqCst);
            let mut removed: Vec<String> = file::domain::recover_mount(&dir)
                .into_iter()
                .map(|p| p.display().to_string())
                .collect();
            let tools = VolumeTools {
                qemu: &qemu,
                timeout,
            };
            for (sd, paths) in file::domain::list_in(&dir) {
                let fs = fs.clone();
                let d = Domain::File(FileDomain { sd, paths, fs });
                match d.recover(tools, &|| live.beat()) {
                    Ok(cleaned) => removed.extend(cleaned.iter().map(|c| format!("{sd}: {c}"))),
                    Err(e) => tracing::warn!(sd = %sd, error = %e, "volume recovery failed"),
                }
            }
            Ok(removed)
        });
        match found {
            Ok(removed) => {
                for what in &removed {
                    tracing::warn!(%what, "removed what a crash left behind");
                }
                removed
            }
            // The mount did not answer. A call that started may still be
            // running (it goes on when its server comes back): it is not
            // started again beside it; the mount's next disconnect and
            // connect (or a restart) run it again. One that never started
            // is tried again the next time the mount is seen.
            Err(e) => {
                tracing::warn!(mount = %mount_dir.display(), error = %e,
                    "crash recovery did not finish");
                if !started.load(Ordering::SeqCst) {
                    self.state().recovered.remove(mount_dir);
                }
                Vec::new()
            }
        }
    }

    /// Where domain `sd` is: the cache when its metadata is still there,
    /// otherwise a scan of the mounts (each on its own worker). 358 if none.
    pub fn locate(&self, sd: SdUuid) -> StorageResult<Domain> {
        let cached = self.state().domains.get(&sd).cloned();
        if let Some(known) = cached {
            let op = "locate storage domain";
            if self.on_domain(Lane::Short, &known, op, &Held::none(), |d, _| {
                Ok(d.still_there())
            })? {
                return Ok(known);
            }
            self.state().domains.remove(&sd);
            // A block domain whose VG is gone is not looked for elsewhere.
            if known.is_block() {
                return Err(StorageError::new(
                    Code::StorageDomainDoesNotExist,
                    op,
                    format!("'{sd}'"),
                ));
            }
        }
        for dir in layout::mount_dirs(&self.config.repository) {
            let d = dir.clone();
            let found = self.io(&dir, "locate storage domain", move || {
                Ok(file::domain::find(&[d], sd))
            });
            if let Ok(Some(paths)) = found {
                self.recover_mount(&dir);
                let found = self.file_domain(sd, paths);
                self.state().domains.insert(sd, found.clone());
                return Ok(found);
            }
        }
        if let Some(found) = self.locate_block(sd)? {
            return Ok(found);
        }
        Err(StorageError::new(
            Code::StorageDomainDoesNotExist,
            "locate storage domain",
            format!("'{sd}'"),
        ))
    }

    /// Looks for `sd` among the VGs on this host's multipath devices. On
    /// first sight: the link directory, the metadata LV active (the
    /// monitor and the volume slots read it), and the LVs a crash left
    /// half-created removed.
    pub(super) fn locate_block(&self, sd: SdUuid) -> StorageResult<Option<Domain>> {
        self.refresh_lvm_devices();
        // No multipath device, no VG: no need to ask LVM.
        if self.lvm.devices().is_empty() || !crate::block::exists(&self.lvm, sd) {
            return Ok(None);
        }
        let md = crate::block::read_metadata(&self.lvm, sd)?;
        let root = crate::block::ensure_links(&self.config.repository, sd)?;
        let vg = crate::block::vg_name(sd);
        if !Lvm::lv_path(&vg, crate::block::METADATA_LV).exists() {
            if let Err(e) = self.lvm.activate(&vg, &[crate::block::METADATA_LV]) {
                tracing::warn!(sd = %sd, error = %e, "cannot activate the metadata LV");
            }
        }
        let found = Domain::Block(BlockDomain {
            sd,
            paths: DomainPaths::new(root),
            lvm: self.lvm.clone(),
            block_size: md.block_size,
            slot_lock: self.slot_lock(sd),
        });
        match found.recover(self.volume_tools(), &|| ()) {
            Ok(removed) => {
                for lv in removed {
                    tracing::warn!(sd = %sd, %lv, "removed an LV a crash left half-created");
                }
            }
            Err(e) => tracing::warn!(sd = %sd, error = %e, "block volume recovery failed"),
        }
        self.state().domains.insert(sd, found.clone());
        Ok(Some(found))
    }

    pub(super) fn slot_lock(&self, sd: SdUuid) -> Arc<Mutex<()>> {
        self.slot_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(sd)
            .or_default()
            .clone()
    }

    pub(super) fn read_md(&self, domain: &Domain) -> StorageResult<DomainMetadata> {
        let op = "read domain metadata";
        self.on_domain(Lane::Short, domain, op, &Held::none(), |d, _| {
            d.read_metadata()
        })
    }

    pub(super) fn update_md(
        &self,
        domain: &Domain,
        change: impl FnOnce(&mut DomainMetadata) -> StorageResult<()> + Send + 'static,
    ) -> StorageResult<DomainMetadata> {
        let op = "update domain metadata";
        self.on_domain(Lane::Short, domain, op, &Held::none(), |d, _| {
            d.update_metadata(change)
        })
    }

    /// `StorageDomain.create` for file domains. `version` other than 5 is
    /// refused (394); the domain must not exist on any connected storage.
    pub fn create_domain(&self, req: CreateDomain, version: i64) -> StorageResult<()> {
        const OP: &str = "create storage domain";
        if version != domain_spec::VERSION {
            return Err(StorageError::new(
                Code::UnsupportedDomainVersion,
                OP,
                format!(
                    "version {version}; depot creates version {}",
                    domain_spec::VERSION
                ),
            ));
        }
        if req.domain_type.is_block() {
            return self.create_block_domain(req);
        }
        if !req.domain_type.is_file() {
            return Err(StorageError::new(
                Code::StorageDomainTypeError,
                OP,
                format!("{} domains cannot be created", req.domain_type),
            ));
        }
        let _lock = self.lock_domain(req.sd, true)?;
        self.check_new_domain(&req, OP)?;
        let mount = self
            .connector
            .connected_mount_point(req.domain_type, &req.remote_path)?;
        self.recover_mount(&mount);
        let sd = req.sd;
        let m = mount.clone();
        let paths = self.io(&mount, OP, move || file::domain::create(&m, &req))?;
        tracing::info!(sd = %sd, path = %paths.root.display(), "storage domain created");
        self.state().domains.insert(sd, self.file_domain(sd, paths));
        Ok(())
    }

    /// Refuses a domain id that exists on connected storage, file or block
    /// (365), and a backup flag on a class that cannot have it.
    fn check_new_domain(&self, req: &CreateDomain, op: &'static str) -> StorageResult<()> {
        if self.locate(req.sd).is_ok() {
            return Err(StorageError::new(
                Code::StorageDomainAlreadyExists,
                op,
                format!("'{}'", req.sd),
            ));
        }
        if req.backup {
            crate::backup::check_class_of(req.sd, req.class, op)?;
        }
        Ok(())
    }

    /// `StorageDomain.create` for ISCSI and FCP: `typeArgs` is the UUID of
    /// the VG made by `LVMVolumeGroup.create` (crate::block).
    fn create_block_domain(&self, req: CreateDomain) -> StorageResult<()> {
        const OP: &str = "create storage domain";
        let _lock = self.lock_domain(req.sd, true)?;
        self.check_new_domain(&req, OP)?;
        let vg_uuid = req.remote_path.clone();
        crate::block::create_domain(&self.lvm, &req, &vg_uuid)?;
        self.locate(req.sd).map(|_| ())
    }

    pub fn domain_info(&self, sd: SdUuid) -> StorageResult<DomainInfo> {
        let domain = self.locate(sd)?;
        let _lock = self.lock_domain(sd, false)?;
        let metadata = self.read_md(&domain)?;
        Ok(DomainInfo { metadata, domain })
    }

    pub fn domain_stats(&self, sd: SdUuid) -> StorageResult<depot_os::FsStats> {
        let domain = self.locate(sd)?;
        self.on_domain(
            Lane::Short,
            &domain,
            "domain stats",
            &Held::none(),
            |d, _| d.stats(),
        )
    }

    pub fn set_domain_description(&self, sd: SdUuid, description: String) -> StorageResult<()> {
        let domain = self.locate(sd)?;
        let _lock = self.lock_domain(sd, true)?;
        self.update_md(&domain, move |md| md.set_description(&description))
            .map(|_| ())
    }

    pub fn validate_domain(&self, sd: SdUuid) -> StorageResult<()> {
        let domain = self.locate(sd)?;
        let _lock = self.lock_domain(sd, false)?;
        let op = "validate storage domain";
        self.on_domain(Lane::Short, &domain, op, &Held::none(), |d, _| d.validate())
            .map(|_| ())
    }

    /// Removes the domain. Refused while it is active in a connected pool
    /// (382), and while attached to a pool unless `auto_detach` (350).
    pub fn format_domain(&self, sd: SdUuid, auto_detach: bool) -> StorageResult<()> {
        const OP: &str = "format storage domain";
        let domain = self.locate(sd)?;
        let _lock = self.lock_domain(sd, true)?;
        if self.pools.is_active(sd) || self.monitor.is_monitoring(sd) || self.has_prepared(sd) {
            return Err(StorageError::new(
                Code::StorageDomainActive,
                OP,
                format!("'{sd}' is active"),
            ));
        }
        // A domain whose metadata cannot be read can still be formatted:
        // that is how an admin gets rid of a broken one.
        if let Ok(md) = self.read_md(&domain) {
            let pools = md.attached_pools();
            if !pools.is_empty() && !auto_detach {
                return Err(StorageError::new(
                    Code::StorageDomainActionError,
                    OP,
                    format!(
                        "'{sd}' is attached to pool {}; detach it or pass autoDetach",
                        pools[0]
                    ),
                ));
            }
        }
        let repository = self.config.repository.clone();
        self.on_domain(Lane::Short, &domain, OP, &Held::none(), move |d, _| {
            d.format(&repository)
        })?;
        self.state().domains.remove(&sd);
        self.pools.forget_domain(sd);
        tracing::info!(sd = %sd, "storage domain formatted");
        Ok(())
    }

    /// `Host.getStorageDomains`: domains on connected storage, filtered.
    pub fn find_domains(
        &self,
        pool: Option<SpUuid>,
        class: Option<DomainClass>,
        domain_type: Option<DomainType>,
        remote_path: Option<&str>,
    ) -> Vec<SdUuid> {
        let mut found = Vec::new();
        for dir in layout::mount_dirs(&self.config.repository) {
            let d = dir.clone();
            let listed = self.io(&dir, "list storage domains", move || {
                Ok(file::domain::list_in(&d)
                    .into_iter()
                    .filter_map(|(sd, paths)| {
                        file::domain::read_metadata(&paths)
                            .ok()
                            .map(|md| (sd, paths, md))
                    })
                    .collect::<Vec<_>>())
            });
            let Ok(listed) = listed else {
                tracing::warn!(mount = %dir.display(), "skipped a mount that did not answer");
                continue;
            };
            for (sd, paths, md) in listed {
                self.state().domains.insert(sd, self.file_domain(sd, paths));
                let keep = class.is_none_or(|c| md.class == c)
                    && domain_type.is_none_or(|t| md.domain_type == t)
                    && remote_path.is_none_or(|r| md.remote_path == r)
                    && pool.is_none_or(|p| md.attached_pools().contains(&p));
                if keep {
                    found.push(sd);
                }
            }
        }
        self.refresh_lvm_devices();
        let block = if self.lvm.devices().is_empty() {
            Vec::new()
        } else {
            crate::block::find_domains(&self.lvm).unwrap_or_default()
        };
        for sd in block {
            let Ok(md) = crate::block::read_metadata(&self.lvm, sd) else {
                continue;
            };
            let keep = class.is_none_or(|c| md.class == c)
                && domain_type.is_none_or(|t| md.domain_type == t)
                && remote_path.is_none()
                && pool.is_none_or(|p| md.attached_pools().contains(&p));
            if keep {
                found.push(sd);
            }
        }
        found.sort();
        found.dedup();
        found
    }

    pub fn repo_stats(&self, only: Option<&[SdUuid]>) -> Vec<(SdUuid, DomainHealth)> {
        self.monitor
            .all()
            .into_iter()
            .filter(|(sd, _)| only.is_none_or(|o| o.contains(sd)))
            .collect()
    }

    pub(super) fn start_monitoring(&self, sd: SdUuid) -> StorageResult<()> {
        let domain = self.locate(sd)?;
        // A block domain has no mount: its dom_md links to the VG's LVs.
        // Nor has a LOCALFS domain: its `mnt/` entry is a link to a local
        // directory, never in the mount table, so "not mounted" (360)
        // would misname its failures (VDSM reports them as read errors).
        // Which it is comes from the entries of `mnt/`: an lstat of the
        // mount point would ask the mounted file system for its root, and
        // hang this thread while the storage is frozen.
        let links = layout::mount_dir_entries(&self.config.repository);
        let mount = domain
            .mount_root()
            .map(|root| self.mount_key(root))
            .filter(|m| !links.iter().any(|(dir, link)| dir == m && *link));
        let root = domain.paths().root.clone();
        let target = if domain.is_block() {
            CheckTarget::block_domain(root)
        } else {
            CheckTarget::file_domain(root, mount)
        };
        self.monitor.start(sd, target)?;
        self.monitor.set_version(sd, domain_spec::VERSION as u32);
        Ok(())
    }

    /// Health of a pool domain for `StoragePool.getInfo`'s dominfo.
    pub fn health(&self, sd: SdUuid) -> Option<DomainHealth> {
        self.monitor.status(sd)
    }

    /// `StorageDomain.setBackup`. Setting the flag is refused on a non-data
    /// domain (9010), on a master domain (319), and while any volume of the
    /// domain is prepared (9013); clearing it is always allowed.
    pub fn set_backup(&self, sd: SdUuid, backup: bool) -> StorageResult<()> {
        const OP: &str = "set backup flag";
        let domain = self.locate(sd)?;
        let _lock = self.lock_domain(sd, true)?;
        if backup {
            let md = self.read_md(&domain)?;
            crate::backup::check_class(&md, OP)?;
            if md.role == DomainRole::Master {
                return Err(StorageError::new(
                    Code::BackupCannotBeMasterDomain,
                    OP,
                    format!("'{sd}' is the master of its pool; move the master role first"),
                ));
            }
            if self.has_prepared(sd) {
                return Err(StorageError::new(
                    Code::BackupFlagDomainInUse,
                    OP,
                    format!("'{sd}' has prepared volumes; tear them down first"),
                ));
            }
        }
        self.update_md(&domain, move |md| {
            md.backup = backup;
            Ok(())
        })?;
        tracing::info!(sd = %sd, backup, "backup flag changed");
        Ok(())
    }
}
