//! Storage domains: where each one is ([`Storage::locate`]), the
//! domain verbs (create, info, stats, description, validate, format,
//! find, backup flag), health monitoring, and the crash recovery of the
//! mounts domains live in. Each verb reaches the domain through the domain
//! contract ([`Domain`]) on the caller's thread: a file domain's calls go
//! through its mount's helpers with their deadline (crate::mount_fs), a
//! block domain's LVM and qemu-img calls carry their own timeouts.
//!
//! Scans over every mount (locate's search, getStorageDomains, create's
//! duplicate check, crash recovery) give each mount [`SCAN_TIMEOUT`] at
//! most, go on with the others, and log each mount that could not be
//! read: a frozen mount costs a scan one short deadline, and hides
//! nothing silently (docs/storage.md, "Domains").

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use depot_api::storage::{DomainClass, DomainRole, DomainType, SdUuid, SpUuid};
use depot_api::Code;
use depot_os::lvm::Lvm;
use depot_os::sanlock::DirectConfig;

use super::Storage;
use crate::domain::{BlockDomain, Domain};
use crate::domain_spec::{self, CreateDomain};
use crate::file;
use crate::layout::{self, DomainPaths};
use crate::metadata::domain::DomainMetadata;
use crate::monitor::{CheckTarget, DomainHealth};
use crate::mount_fs::MountFs;
use crate::{StorageError, StorageResult};

/// The longest one mount's call may take in a scan over every mount (the
/// I/O timeout if that is shorter): long enough for a slow but working
/// server, short enough that a frozen one does not hold up the verbs
/// that look at every mount (issue 15, "Bounded scans").
const SCAN_TIMEOUT: Duration = Duration::from_secs(5);

/// What a search of the mounts for one domain found.
struct Search {
    found: Option<Domain>,
    /// The mounts that could not be read, each with why.
    unreadable: Vec<(PathBuf, StorageError)>,
}

/// `StorageDomain.getInfo`, typed.
#[derive(Debug, Clone)]
pub struct DomainInfo {
    pub metadata: DomainMetadata,
    pub domain: Domain,
}

impl Storage {
    /// Cleans crash leftovers in every mount present at start, after the
    /// block master mounts a depotd that died left (block_master.rs);
    /// returns what was removed, for the start-up log.
    pub fn recover(&self) -> Vec<String> {
        let mut removed = self.clean_stale_master_mounts();
        for dir in layout::mount_dirs(&self.config.repository) {
            removed.extend(self.recover_mount(&dir));
        }
        removed
    }

    /// The helpers of `dir`'s mount with a scan's deadline per call.
    pub(super) fn scan_fs(&self, dir: &Path) -> MountFs {
        self.mount_fs(dir)
            .with_timeout(self.config.io_timeout.min(SCAN_TIMEOUT))
    }

    /// Logs a mount a scan could not read; `what` says what the scan did
    /// about it. The words "could not be read" and the mount's path are
    /// what operators (and tests) look for.
    fn log_unreadable(&self, scan: &str, mount: &Path, e: &StorageError, what: &str) {
        tracing::warn!(code = e.code.number(), error = %e,
            "{scan}: mount {} could not be read; {what}", mount.display());
    }

    /// The file domains this host knows in `mount_dir`.
    fn known_on(&self, mount_dir: &Path) -> Vec<SdUuid> {
        let mut known: Vec<SdUuid> = self
            .state()
            .domains
            .iter()
            .filter(|(_, d)| !d.is_block() && d.paths().mount_dir() == mount_dir)
            .map(|(sd, _)| *sd)
            .collect();
        known.sort();
        known
    }

    /// Cleans what crashes left in `mount_dir` (half-created and
    /// half-formatted domains, then each domain's volumes), once per sight
    /// of the mount. A mount that cannot be read is logged and tried again
    /// the next time it is seen.
    pub(super) fn recover_mount(&self, mount_dir: &Path) -> Vec<String> {
        if !self.state().recovered.insert(mount_dir.to_path_buf()) {
            return Vec::new();
        }
        match self.recover_mount_now(mount_dir) {
            Ok(removed) => {
                for what in &removed {
                    tracing::warn!(%what, "removed what a crash left behind");
                }
                removed
            }
            Err(e) => {
                self.log_unreadable(
                    "crash recovery",
                    mount_dir,
                    &e,
                    "recovery is tried again the next time the mount is seen",
                );
                self.state().recovered.remove(mount_dir);
                Vec::new()
            }
        }
    }

    fn recover_mount_now(&self, mount_dir: &Path) -> StorageResult<Vec<String>> {
        // The listings with a scan's deadline; the domains' own recovery
        // (a promised wipe) with the mount's I/O timeout per call.
        let scan = self.scan_fs(mount_dir);
        let mut removed: Vec<String> = file::domain::recover_mount(&scan, mount_dir)?
            .into_iter()
            .map(|p| p.display().to_string())
            .collect();
        let tools = self.volume_tools();
        for (sd, paths) in file::domain::list_in(&scan, mount_dir)? {
            let d = self.file_domain(sd, paths);
            match d.recover(tools) {
                Ok(cleaned) => removed.extend(cleaned.iter().map(|c| format!("{sd}: {c}"))),
                Err(e) => tracing::warn!(sd = %sd, error = %e, "volume recovery failed"),
            }
        }
        Ok(removed)
    }

    /// Where domain `sd` is: the cache when its metadata is still there,
    /// otherwise a search of the mounts and the VGs. 358 only when every
    /// place answered that it is not there; a mount that could not be read
    /// makes it 2001 naming that mount (the domain may be there).
    pub fn locate(&self, sd: SdUuid) -> StorageResult<Domain> {
        const OP: &str = "locate storage domain";
        let search = self.search(sd)?;
        if let Some(found) = search.found {
            return Ok(found);
        }
        if let Some((_, first)) = search.unreadable.first() {
            let mounts: Vec<String> = search
                .unreadable
                .iter()
                .map(|(m, _)| m.display().to_string())
                .collect();
            return Err(StorageError::new(
                first.code,
                OP,
                format!(
                    "'{sd}' is on no storage that answered, and {} could not be read: {first}",
                    mounts.join(", ")
                ),
            )
            .with_cause_of(first));
        }
        Err(StorageError::new(
            Code::StorageDomainDoesNotExist,
            OP,
            format!("'{sd}'"),
        ))
    }

    /// Runs `verb`, a verb that changes nothing, on domain `sd`. A cached
    /// file domain is not checked first (its check is a helper call, as
    /// much as the verb's own on a getInfo): the verb runs on it, and only
    /// an answer that may come from a domain that is gone (an error, or
    /// one for which `found_nothing` holds, such as an empty listing) is
    /// checked then. If the domain is still there, that answer stands; if
    /// it is gone, the lookup's answer does (358, or 2001 naming a mount
    /// that could not be read), or the verb's on the domain found
    /// elsewhere. A mount in trouble is the verb's answer as it is: the
    /// check would get no answer either, after a deadline of its own.
    /// Verbs that change something locate first ([`locate`]): they must
    /// never write into a domain that was removed (docs/storage.md,
    /// "Layers").
    ///
    /// [`locate`]: Self::locate
    pub(super) fn reading<T>(
        &self,
        sd: SdUuid,
        verb: impl Fn(&Domain) -> StorageResult<T>,
        found_nothing: impl Fn(&T) -> bool,
    ) -> StorageResult<T> {
        // A block domain's check asks LVM's cache, not the storage: kept.
        let cached = self.state().domains.get(&sd).cloned();
        let Some(known @ Domain::File(_)) = cached else {
            return verb(&self.locate(sd)?);
        };
        let answer = verb(&known);
        let stands = match &answer {
            Ok(v) => !found_nothing(v),
            Err(e) => e.has_mount_trouble_cause() || e.has_mount_trouble_code(),
        };
        if stands {
            return answer;
        }
        let now = self.locate(sd)?;
        if now.paths() == known.paths() {
            return answer;
        }
        verb(&now)
    }

    /// [`locate`](Self::locate)'s work: the cached domain if it is still
    /// there (its mount's I/O timeout: one domain's call, not a scan),
    /// else each mount with a scan's deadline, then the VGs.
    fn search(&self, sd: SdUuid) -> StorageResult<Search> {
        const OP: &str = "locate storage domain";
        let cached = self.state().domains.get(&sd).cloned();
        if let Some(known) = cached {
            if known.still_there()? {
                return Ok(Search {
                    found: Some(known),
                    unreadable: Vec::new(),
                });
            }
            self.state().domains.remove(&sd);
            // A block domain whose VG is gone is not looked for elsewhere.
            if known.is_block() {
                return Err(StorageError::new(
                    Code::StorageDomainDoesNotExist,
                    OP,
                    format!("'{sd}'"),
                ));
            }
        }
        let mut unreadable = Vec::new();
        for dir in layout::mount_dirs(&self.config.repository) {
            match file::domain::find_in(&self.scan_fs(&dir), &dir, sd) {
                Ok(Some(paths)) => {
                    self.recover_mount(&dir);
                    let found = self.file_domain(sd, paths);
                    self.state().domains.insert(sd, found.clone());
                    return Ok(Search {
                        found: Some(found),
                        unreadable,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    self.log_unreadable(
                        "locate storage domain",
                        &dir,
                        &e,
                        &format!("{sd} may be there"),
                    );
                    unreadable.push((dir, e));
                }
            }
        }
        let found = self.locate_block(sd)?;
        Ok(Search { found, unreadable })
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
        match found.recover(self.volume_tools()) {
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
        domain.read_metadata()
    }

    pub(super) fn update_md(
        &self,
        domain: &Domain,
        change: impl FnOnce(&mut DomainMetadata) -> StorageResult<()>,
    ) -> StorageResult<DomainMetadata> {
        domain.update_metadata(change)
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
        let paths = file::domain::create_with_lockspace(
            &self.mount_fs(&mount),
            &mount,
            &req,
            self.sanlock_direct(sd),
        )?;
        tracing::info!(sd = %sd, path = %paths.root.display(), "storage domain created");
        self.state().domains.insert(sd, self.file_domain(sd, paths));
        Ok(())
    }

    /// How to format a new domain's lockspace; `None` (logged) when
    /// sanlock is off or its program is not installed.
    fn sanlock_direct(&self, sd: SdUuid) -> Option<&DirectConfig> {
        let direct = self.config.sanlock.as_ref().and_then(|s| s.direct.as_ref());
        if direct.is_none() {
            tracing::warn!(%sd, "sanlock unavailable: no sanlock program; the new domain's \
                ids and leases are left empty (no host can join its lockspace)");
        }
        direct
    }

    /// Refuses a domain id that exists on connected storage, file or block
    /// (365), and a backup flag on a class that cannot have it. A domain
    /// this host knows on a mount that cannot be read counts as existing;
    /// an unknown one there cannot be seen, and the search logged the
    /// mount (docs/storage.md).
    fn check_new_domain(&self, req: &CreateDomain, op: &'static str) -> StorageResult<()> {
        let exists = |detail: String| {
            Err(StorageError::new(
                Code::StorageDomainAlreadyExists,
                op,
                detail,
            ))
        };
        let known = self.state().domains.get(&req.sd).cloned();
        if let Some(known) = known {
            // A scan's deadline: a frozen mount must not hold up a create
            // elsewhere for the whole I/O timeout.
            let short = self.config.io_timeout.min(SCAN_TIMEOUT);
            let answer = match &known {
                Domain::File(d) => file::domain::still_there(&d.fs.with_timeout(short), &d.paths),
                Domain::Block(_) => known.still_there(),
            };
            match answer {
                Ok(true) => return exists(format!("'{}'", req.sd)),
                Ok(false) => {}
                Err(e) => {
                    return Err(StorageError::new(
                        Code::StorageDomainAlreadyExists,
                        op,
                        format!(
                            "'{}' is known on {}, which could not be read: {e}",
                            req.sd,
                            known.paths().mount_dir().display()
                        ),
                    )
                    .with_cause_of(&e))
                }
            }
        }
        match self.search(req.sd) {
            Ok(Search { found: Some(_), .. }) => return exists(format!("'{}'", req.sd)),
            Ok(Search { found: None, .. }) => {}
            // A known domain whose mount stopped answering between the
            // two looks.
            Err(e) if e.has_mount_trouble_cause() => {
                return Err(StorageError::new(
                    Code::StorageDomainAlreadyExists,
                    op,
                    format!(
                        "'{}' is known on storage that could not be read: {e}",
                        req.sd
                    ),
                )
                .with_cause_of(&e))
            }
            Err(e) if e.code == Code::StorageDomainDoesNotExist => {}
            Err(e) => return Err(e),
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
        crate::block::create_domain(
            &self.lvm,
            &self.block_masters.runner,
            &req,
            &vg_uuid,
            self.sanlock_direct(req.sd),
        )?;
        self.locate(req.sd).map(|_| ())
    }

    pub fn domain_info(&self, sd: SdUuid) -> StorageResult<DomainInfo> {
        let domain = self.locate(sd)?;
        let _lock = self.lock_domain(sd, false)?;
        let metadata = self.read_md(&domain)?;
        Ok(DomainInfo { metadata, domain })
    }

    pub fn domain_stats(&self, sd: SdUuid) -> StorageResult<depot_os::FsStats> {
        self.locate(sd)?.stats()
    }

    /// The SPM's verb on a domain attached to a pool (309, 654).
    pub fn set_domain_description(&self, sd: SdUuid, description: String) -> StorageResult<()> {
        let domain = self.locate(sd)?;
        self.require_spm(&domain, "set storage domain description")?;
        let _lock = self.lock_domain(sd, true)?;
        self.update_md(&domain, move |md| md.set_description(&description))
            .map(|_| ())
    }

    pub fn validate_domain(&self, sd: SdUuid) -> StorageResult<()> {
        let domain = self.locate(sd)?;
        let _lock = self.lock_domain(sd, false)?;
        domain.validate().map(|_| ())
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
        // that is how an admin gets rid of a broken one. A mount that does
        // not answer says nothing of the metadata: no format then.
        let md = match self.read_md(&domain) {
            Ok(md) => Some(md),
            Err(e) if e.has_mount_trouble_cause() => return Err(e.in_op(OP)),
            Err(e) => {
                tracing::warn!(sd = %sd, error = %e, "formatting a domain whose metadata cannot be read");
                None
            }
        };
        if let Some(md) = md {
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
        domain.format(&self.config.repository)?;
        self.state().domains.remove(&sd);
        self.pools.forget_domain(sd);
        self.lease_domains.forget(sd);
        tracing::info!(sd = %sd, "storage domain formatted");
        Ok(())
    }

    /// `Host.getStorageDomains`: domains on connected storage, filtered.
    /// Each mount is read with a scan's deadline; a mount that could not be
    /// read is logged, and the domains this host knows on it are listed
    /// anyway (unfiltered where the filter needs metadata that could not
    /// be read), so a frozen mount never hides a domain.
    pub fn find_domains(
        &self,
        pool: Option<SpUuid>,
        class: Option<DomainClass>,
        domain_type: Option<DomainType>,
        remote_path: Option<&str>,
    ) -> Vec<SdUuid> {
        const SCAN: &str = "getStorageDomains";
        let keep = |md: &DomainMetadata| {
            class.is_none_or(|c| md.class == c)
                && domain_type.is_none_or(|t| md.domain_type == t)
                && remote_path.is_none_or(|r| md.remote_path == r)
                && pool.is_none_or(|p| md.attached_pools().contains(&p))
        };
        let filtered =
            pool.is_some() || class.is_some() || domain_type.is_some() || remote_path.is_some();
        let mut found = Vec::new();
        for dir in layout::mount_dirs(&self.config.repository) {
            let fs = self.scan_fs(&dir);
            let listed = match file::domain::list_in(&fs, &dir) {
                Ok(listed) => listed,
                Err(e) => {
                    let known = self.known_on(&dir);
                    let what = format!(
                        "listing the {} domain(s) known on it{}: {known:?}",
                        known.len(),
                        if filtered { " unfiltered" } else { "" }
                    );
                    self.log_unreadable(SCAN, &dir, &e, &what);
                    found.extend(known);
                    continue;
                }
            };
            for (sd, paths) in listed {
                let md = file::domain::read_metadata(&fs, &paths);
                self.state().domains.insert(sd, self.file_domain(sd, paths));
                match md {
                    Ok(md) if keep(&md) => found.push(sd),
                    Ok(_) => {}
                    Err(e) if e.has_mount_trouble_cause() => {
                        self.log_unreadable(
                            SCAN,
                            &dir,
                            &e,
                            &format!("listing {sd}{}", if filtered { " unfiltered" } else { "" }),
                        );
                        found.push(sd);
                    }
                    Err(e) => {
                        tracing::warn!(sd = %sd, error = %e,
                            "getStorageDomains: not listing a domain whose metadata is unsound");
                    }
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
    /// domain is prepared (9013); clearing it is always allowed. It
    /// writes the domain's metadata: on a domain attached to a pool, the
    /// SPM's verb (309, 654), as every other metadata write.
    pub fn set_backup(&self, sd: SdUuid, backup: bool) -> StorageResult<()> {
        const OP: &str = "set backup flag";
        let domain = self.locate(sd)?;
        self.require_spm(&domain, OP)?;
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
