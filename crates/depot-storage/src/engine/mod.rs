//! The storage engine: the one object the daemon calls for every storage
//! verb. It owns the connector, the locks, the health monitor and the
//! host's view of pools, and runs every file-system touch of a domain on
//! that mount's I/O worker with a timeout, so a dead server fails one call
//! instead of hanging the daemon.
//!
//! Pools are single-host for now (docs/storage.md): the pool's state lives
//! in the domains' metadata (POOL_UUID, ROLE, MASTER_VERSION) and in this
//! process; there is no SPM election and no sanlock lease yet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use depot_api::storage::{DomainClass, DomainRole, DomainType, ImgUuid, SdUuid, SpUuid, VolUuid};
use depot_api::Code;
use depot_os::lvm::Lvm;
use depot_os::{CommandRunner, IoWorker, Liveness, Mounter, QemuImg};

use crate::domain::{BlockDomain, Domain, FileDomain, VolumeTools};

use crate::backup::PreparePurpose;
use crate::connection::san::SanConnector;
use crate::connection::watch::{self, Watch};
use crate::connection::{ConnectionParams, ConnectionStatus, Connector};
use crate::domain_spec::{self, CreateDomain};
use crate::events::{Events, StorageEvent};
use crate::file::domain;
use crate::layout::{self, DomainPaths};
use crate::lock::{Held, LockGuard as Guard, LockManager, ResourceName};
use crate::metadata::domain::DomainMetadata;
use crate::monitor::{CheckTarget, DomainHealth, Monitor, MonitorConfig};
use crate::{StorageError, StorageResult};

mod copy;
pub mod lvm;
mod ovf;
mod san;
mod volumes;

pub use copy::{Control, CopyOutcome, VolRef};
pub use ovf::{OvfListing, OvfStoreInfo, Readable, UploadDone};
pub use volumes::Prepared;

#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// VDSM's repository: mounts under `mnt/`, run links under `<sp>/`.
    pub repository: PathBuf,
    /// Longest a file-system call on a domain may take before it fails
    /// (the thread is abandoned; see depot_os::worker).
    pub io_timeout: Duration,
    /// Longest a verb waits for a domain or image lock.
    pub lock_timeout: Duration,
    /// Longest one qemu-img call may take.
    pub qemu_img_timeout: Duration,
    /// Health check period (VDSM's sd_health_check_delay).
    pub monitor_interval: Duration,
}

/// A domain's state in a connected pool (the engine's domainDict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolDomainStatus {
    Active,
    Attached,
}

impl PoolDomainStatus {
    pub fn name(self) -> &'static str {
        match self {
            PoolDomainStatus::Active => "Active",
            PoolDomainStatus::Attached => "Attached",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PoolState {
    pub name: String,
    pub master: SdUuid,
    pub master_version: i64,
    pub host_id: Option<i64>,
    pub connected: bool,
    pub domains: BTreeMap<SdUuid, PoolDomainStatus>,
}

#[derive(Default)]
struct State {
    /// Where each known domain is, and its kind.
    domains: HashMap<SdUuid, Domain>,
    /// Mount directories whose crash leftovers were already cleaned.
    recovered: HashSet<PathBuf>,
    pools: HashMap<SpUuid, PoolState>,
    /// Images prepared on this host (Image.prepare without teardown), and
    /// what for.
    prepared: HashMap<(SdUuid, ImgUuid), PreparePurpose>,
    /// OVF_STORE volumes with an upload in flight.
    uploads: HashSet<(SdUuid, VolUuid)>,
}

/// `StorageDomain.getInfo`, typed.
#[derive(Debug, Clone)]
pub struct DomainInfo {
    pub metadata: DomainMetadata,
    pub domain: Domain,
}

pub struct Storage {
    config: StorageConfig,
    connector: Connector,
    locks: LockManager,
    monitor: Monitor,
    pub(crate) qemu: QemuImg,
    state: Mutex<State>,
    workers: Mutex<HashMap<(PathBuf, Lane), Arc<IoWorker>>>,
    /// The lvm2 commands of block domains (device filter, cache).
    pub(crate) lvm: Lvm,
    /// Per block domain: serializes metadata slot allocation.
    slot_locks: Mutex<HashMap<SdUuid, Arc<Mutex<()>>>>,
    /// iSCSI and FCP connections, discovery (san.rs).
    pub(crate) san: SanConnector,
    /// Notices connections that are gone (connection/watch.rs).
    watch: Watch,
    /// Where storage events go (events.rs).
    events: Events,
}

/// Longest one LVM command may take. LVM scans every filtered device;
/// with a path down, multipath queues I/O for a while before failing it.
const LVM_TIMEOUT: Duration = Duration::from_secs(120);

/// Threads per mount worker: a hung call pins one; the rest keep serving.
const WORKER_THREADS: usize = 4;

/// Threads per mount for long work (wipes, preallocation, extends): their
/// own, so that a few long deletes never make short calls queue behind
/// them.
const LONG_WORKER_THREADS: usize = 4;

/// Which of a mount's workers a call runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    /// One file-system call, or a few (the I/O timeout bounds the lot).
    Short,
    /// Work that takes as long as the data is large and beats its
    /// [`Liveness`] as it goes.
    Long,
}

impl Storage {
    pub fn new(mut config: StorageConfig, runner: CommandRunner) -> Storage {
        // Mount points are compared with the mount table, which holds
        // canonical paths.
        if let Ok(real) = config.repository.canonicalize() {
            config.repository = real;
        }
        let mounter = Mounter::new(runner.clone());
        let connector =
            Connector::new(&config.repository, mounter.clone()).with_io_timeout(config.io_timeout);
        let monitor = Monitor::new(MonitorConfig {
            interval: config.monitor_interval,
            check_timeout: config.monitor_interval,
            mounter: Some(mounter),
        });
        Storage {
            connector,
            locks: LockManager::new(),
            monitor,
            lvm: Lvm::new(runner.clone(), LVM_TIMEOUT),
            san: SanConnector::new(runner.clone()),
            slot_locks: Mutex::new(HashMap::new()),
            qemu: QemuImg::new(runner),
            state: Mutex::new(State::default()),
            workers: Mutex::new(HashMap::new()),
            watch: Watch::new(config.monitor_interval),
            events: Events::none(),
            config,
        }
    }

    /// Publishes storage events (domain state changes, OVF_STORE writes,
    /// lost connections: [`StorageEvent`]) to `events`.
    pub fn with_events(mut self, events: Events) -> Self {
        self.monitor.set_events(events.clone());
        self.watch.set_events(events.clone());
        self.events = events;
        self
    }

    pub(crate) fn publish(&self, event: StorageEvent) {
        self.events.publish(event);
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

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cleans crash leftovers in every mount present at start; returns what
    /// was removed, for the start-up log.
    pub fn recover(&self) -> Vec<String> {
        let mut removed = Vec::new();
        for dir in layout::mount_dirs(&self.config.repository) {
            removed.extend(self.recover_mount(&dir));
        }
        removed
    }

    fn recover_mount(&self, mount_dir: &Path) -> Vec<String> {
        if !self.st().recovered.insert(mount_dir.to_path_buf()) {
            return Vec::new();
        }
        let dir = mount_dir.to_path_buf();
        // Long work: finishing an interrupted postZero delete wipes.
        let op = "recover crash leftovers";
        let started = Arc::new(AtomicBool::new(false));
        let started_in = Arc::clone(&started);
        let (qemu, timeout) = (self.qemu.clone(), self.config.qemu_img_timeout);
        let found = self.io_in(Lane::Long, mount_dir, op, &Held::none(), move |live| {
            started_in.store(true, Ordering::SeqCst);
            let mut removed: Vec<String> = domain::recover_mount(&dir)
                .into_iter()
                .map(|p| p.display().to_string())
                .collect();
            let tools = VolumeTools {
                qemu: &qemu,
                timeout,
            };
            for (sd, paths) in domain::list_in(&dir) {
                let d = Domain::File(FileDomain { sd, paths });
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
                    self.st().recovered.remove(mount_dir);
                }
                Vec::new()
            }
        }
    }

    /// Runs `f` on the I/O worker of `dir`'s mount with the I/O timeout.
    pub(crate) fn io<T: Send + 'static>(
        &self,
        dir: &Path,
        op: &'static str,
        f: impl FnOnce() -> StorageResult<T> + Send + 'static,
    ) -> StorageResult<T> {
        self.io_in(Lane::Short, dir, op, &Held::none(), move |_| f())
    }

    /// Runs `f` on the `lane` worker of `dir`'s mount, holding `held`
    /// until `f` has returned, whenever that is: if the call times out
    /// (no [`Liveness::beat`] for the I/O timeout), the verb fails but the
    /// locks stay with the thread still in `f`, so nothing else works on
    /// what they protect until it is really done.
    pub(crate) fn io_in<T: Send + 'static>(
        &self,
        lane: Lane,
        dir: &Path,
        op: &'static str,
        held: &Held,
        f: impl FnOnce(&Liveness) -> StorageResult<T> + Send + 'static,
    ) -> StorageResult<T> {
        let worker = self.worker_for(dir, lane);
        let held = held.clone();
        let run = worker.run_watched(self.config.io_timeout, move |live| {
            let _held = held;
            f(live)
        });
        match run {
            Ok(r) => r,
            Err(e) => Err(StorageError::new(
                Code::MiscFileReadException,
                op,
                format!("{}: {e} (is the storage server answering?)", dir.display()),
            )),
        }
    }

    /// Runs `f` on `domain` where the domain says its calls run
    /// ([`Domain::mount_root`]): on the `lane` worker of its mount with the
    /// I/O timeout, holding `held` until `f` has returned (as
    /// [`io_in`](Self::io_in)), or on this thread, where the caller holds
    /// the locks.
    pub(crate) fn on_domain<T: Send + 'static>(
        &self,
        lane: Lane,
        domain: &Domain,
        op: &'static str,
        held: &Held,
        f: impl FnOnce(&Domain, Option<&Liveness>) -> StorageResult<T> + Send + 'static,
    ) -> StorageResult<T> {
        match domain.mount_root() {
            Some(root) => {
                let d = domain.clone();
                self.io_in(lane, root, op, held, move |live| f(&d, Some(live)))
            }
            None => f(domain, None),
        }
    }

    /// The `lane` worker of the mount directory that holds `path` (the
    /// first component under `<repository>/mnt` or `mnt/glusterSD`).
    pub(crate) fn worker_for(&self, path: &Path, lane: Lane) -> Arc<IoWorker> {
        let key = self.mount_key(path);
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        workers
            .entry((key.clone(), lane))
            .or_insert_with(|| {
                let name = key
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let (prefix, threads) = match lane {
                    Lane::Short => ("io", WORKER_THREADS),
                    Lane::Long => ("io-long", LONG_WORKER_THREADS),
                };
                Arc::new(IoWorker::new(format!("{prefix}/{name}"), threads))
            })
            .clone()
    }

    fn mount_key(&self, path: &Path) -> PathBuf {
        let mnt = self.config.repository.join(layout::MNT);
        let gluster = mnt.join(layout::GLUSTER_DIR);
        for base in [&gluster, &mnt] {
            if let Ok(rest) = path.strip_prefix(base) {
                if let Some(first) = rest.components().next() {
                    return base.join(first);
                }
            }
        }
        path.to_path_buf()
    }

    // ---- connections ----

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
            let st = self.st();
            let busy = st.domains.iter().find(|(sd, d)| {
                d.paths().root.starts_with(mount)
                    && (self.monitor.is_monitoring(**sd) || in_active_pool(&st, **sd))
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
                let mut st = self.st();
                st.recovered.remove(&mount);
                st.domains
                    .retain(|_, d| !d.paths().root.starts_with(&mount));
            }
        }
        for p in connected(params, &statuses) {
            self.watch.forget(&p.id);
        }
        statuses
    }

    // ---- locating domains ----

    /// Where domain `sd` is: the cache when its metadata is still there,
    /// otherwise a scan of the mounts (each on its own worker). 358 if none.
    pub fn locate(&self, sd: SdUuid) -> StorageResult<Domain> {
        let cached = self.st().domains.get(&sd).cloned();
        if let Some(known) = cached {
            let op = "locate storage domain";
            if self.on_domain(Lane::Short, &known, op, &Held::none(), |d, _| {
                Ok(d.still_there())
            })? {
                return Ok(known);
            }
            self.st().domains.remove(&sd);
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
                Ok(domain::find(&[d], sd))
            });
            if let Ok(Some(paths)) = found {
                self.recover_mount(&dir);
                let found = Domain::File(FileDomain { sd, paths });
                self.st().domains.insert(sd, found.clone());
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
    fn locate_block(&self, sd: SdUuid) -> StorageResult<Option<Domain>> {
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
        self.st().domains.insert(sd, found.clone());
        Ok(Some(found))
    }

    /// qemu-img and its limit, for volume work.
    pub(crate) fn volume_tools(&self) -> VolumeTools<'_> {
        VolumeTools {
            qemu: &self.qemu,
            timeout: self.config.qemu_img_timeout,
        }
    }

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

    fn slot_lock(&self, sd: SdUuid) -> Arc<Mutex<()>> {
        self.slot_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(sd)
            .or_default()
            .clone()
    }

    pub(crate) fn lock_domain_exclusive(&self, sd: SdUuid) -> StorageResult<Guard> {
        self.lock_domain(sd, true)
    }

    fn lock_domain(&self, sd: SdUuid, exclusive: bool) -> StorageResult<Guard> {
        let name = ResourceName::domain(sd);
        if exclusive {
            self.locks.exclusive(&name, self.config.lock_timeout)
        } else {
            self.locks.shared(&name, self.config.lock_timeout)
        }
    }

    /// The domain shared and the image shared or exclusive, to be passed
    /// to every worker call made under them ([`Storage::io_in`]).
    pub(crate) fn lock_image(
        &self,
        sd: SdUuid,
        img: ImgUuid,
        exclusive: bool,
    ) -> StorageResult<Held> {
        let d = self.lock_domain(sd, false)?;
        let name = ResourceName::image(sd, img);
        let i = if exclusive {
            self.locks.exclusive(&name, self.config.lock_timeout)?
        } else {
            self.locks.shared(&name, self.config.lock_timeout)?
        };
        Ok(Held::new(vec![d, i]))
    }

    fn read_md(&self, domain: &Domain) -> StorageResult<DomainMetadata> {
        let op = "read domain metadata";
        self.on_domain(Lane::Short, domain, op, &Held::none(), |d, _| {
            d.read_metadata()
        })
    }

    fn update_md(
        &self,
        domain: &Domain,
        change: impl FnOnce(&mut DomainMetadata) -> StorageResult<()> + Send + 'static,
    ) -> StorageResult<DomainMetadata> {
        let op = "update domain metadata";
        self.on_domain(Lane::Short, domain, op, &Held::none(), |d, _| {
            d.update_metadata(change)
        })
    }

    // ---- domains ----

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
        let paths = self.io(&mount, OP, move || domain::create(&m, &req))?;
        tracing::info!(sd = %sd, path = %paths.root.display(), "storage domain created");
        self.st()
            .domains
            .insert(sd, Domain::File(FileDomain { sd, paths }));
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
        let paths = self.locate(sd)?;
        let _lock = self.lock_domain(sd, true)?;
        self.update_md(&paths, move |md| md.set_description(&description))
            .map(|_| ())
    }

    pub fn validate_domain(&self, sd: SdUuid) -> StorageResult<()> {
        let paths = self.locate(sd)?;
        let _lock = self.lock_domain(sd, false)?;
        let op = "validate storage domain";
        self.on_domain(Lane::Short, &paths, op, &Held::none(), |d, _| d.validate())
            .map(|_| ())
    }

    /// Removes the domain. Refused while it is active in a connected pool
    /// (382), and while attached to a pool unless `auto_detach` (350).
    pub fn format_domain(&self, sd: SdUuid, auto_detach: bool) -> StorageResult<()> {
        const OP: &str = "format storage domain";
        let paths = self.locate(sd)?;
        let _lock = self.lock_domain(sd, true)?;
        if in_active_pool(&self.st(), sd) || self.monitor.is_monitoring(sd) || self.has_prepared(sd)
        {
            return Err(StorageError::new(
                Code::StorageDomainActive,
                OP,
                format!("'{sd}' is active"),
            ));
        }
        // A domain whose metadata cannot be read can still be formatted:
        // that is how an admin gets rid of a broken one.
        if let Ok(md) = self.read_md(&paths) {
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
        self.on_domain(Lane::Short, &paths, OP, &Held::none(), move |d, _| {
            d.format(&repository)
        })?;
        let mut st = self.st();
        st.domains.remove(&sd);
        for pool in st.pools.values_mut() {
            pool.domains.remove(&sd);
        }
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
                Ok(domain::list_in(&d)
                    .into_iter()
                    .filter_map(|(sd, paths)| {
                        domain::read_metadata(&paths).ok().map(|md| (sd, paths, md))
                    })
                    .collect::<Vec<_>>())
            });
            let Ok(listed) = listed else {
                tracing::warn!(mount = %dir.display(), "skipped a mount that did not answer");
                continue;
            };
            for (sd, paths, md) in listed {
                self.st()
                    .domains
                    .insert(sd, Domain::File(FileDomain { sd, paths }));
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

    // ---- health ----

    pub fn repo_stats(&self, only: Option<&[SdUuid]>) -> Vec<(SdUuid, DomainHealth)> {
        self.monitor
            .all()
            .into_iter()
            .filter(|(sd, _)| only.is_none_or(|o| o.contains(sd)))
            .collect()
    }

    fn start_monitoring(&self, sd: SdUuid) -> StorageResult<()> {
        let paths = self.locate(sd)?;
        // A block domain has no mount: its dom_md links to the VG's LVs.
        // Nor has a LOCALFS domain: its `mnt/` entry is a link to a local
        // directory, never in the mount table, so "not mounted" (360)
        // would misname its failures (VDSM reports them as read errors).
        let mount = paths
            .mount_root()
            .map(|root| self.mount_key(root))
            .filter(|m| !std::fs::symlink_metadata(m).is_ok_and(|md| md.file_type().is_symlink()));
        self.monitor.start(
            sd,
            CheckTarget::file_domain(paths.paths().root.clone(), mount),
        )?;
        self.monitor.set_version(sd, domain_spec::VERSION as u32);
        Ok(())
    }

    pub fn shutdown(&self) {
        self.monitor.shutdown();
        self.watch.stop();
    }

    // ---- pools (single host; docs/storage.md) ----

    /// `StoragePool.create`: makes `master` the pool's master domain and
    /// attaches the other domains. The master must be a Data domain (317
    /// for ISO) and not a backup domain (319).
    pub fn create_pool(
        &self,
        sp: SpUuid,
        name: String,
        master: SdUuid,
        master_version: i64,
        others: Vec<SdUuid>,
    ) -> StorageResult<()> {
        const OP: &str = "create storage pool";
        let paths = self.locate(master)?;
        let _lock = self.lock_domain(master, true)?;
        let md = self.read_md(&paths)?;
        check_can_be_master(&md, OP)?;
        if let Some(other) = md.attached_pools().into_iter().find(|p| *p != sp) {
            return Err(StorageError::new(
                Code::StorageDomainAlreadyAttached,
                OP,
                format!("master {master} is attached to pool {other}"),
            ));
        }
        self.update_md(&paths, move |md| {
            md.pools = vec![sp];
            md.role = DomainRole::Master;
            md.master_version = Some(master_version);
            Ok(())
        })?;
        drop(_lock);
        let mut domains = BTreeMap::new();
        domains.insert(master, PoolDomainStatus::Attached);
        self.st().pools.insert(
            sp,
            PoolState {
                name,
                master,
                master_version,
                host_id: None,
                connected: false,
                domains,
            },
        );
        for sd in others.into_iter().filter(|sd| *sd != master) {
            self.attach(sd, sp)?;
        }
        tracing::info!(pool = %sp, master = %master, "storage pool created");
        Ok(())
    }

    /// `StoragePool.connect`: the engine tells which domains are active.
    /// The master's metadata must name this pool and version (324).
    pub fn connect_pool(
        &self,
        sp: SpUuid,
        host_id: i64,
        master: SdUuid,
        master_version: i64,
        domain_dict: Option<BTreeMap<SdUuid, PoolDomainStatus>>,
    ) -> StorageResult<()> {
        const OP: &str = "connect storage pool";
        if let Some(other) = self
            .st()
            .pools
            .iter()
            .find(|(id, p)| **id != sp && p.connected)
            .map(|(id, _)| *id)
        {
            return Err(StorageError::new(
                Code::CannotConnectMultiplePools,
                OP,
                format!("connected to pool {other}"),
            ));
        }
        let paths = self.locate(master)?;
        let md = self.read_md(&paths)?;
        if !md.attached_pools().contains(&sp)
            || md.role != DomainRole::Master
            || md.master_version != Some(master_version)
        {
            return Err(StorageError::new(
                Code::StoragePoolWrongMaster,
                OP,
                format!(
                    "{master} is {} of pools {:?} at version {:?}, not Master of {sp} at {master_version}",
                    md.role, md.pools, md.master_version
                ),
            ));
        }
        let domains =
            domain_dict.unwrap_or_else(|| BTreeMap::from([(master, PoolDomainStatus::Active)]));
        {
            let mut st = self.st();
            let pool = st.pools.entry(sp).or_insert_with(|| PoolState {
                name: String::new(),
                master,
                master_version,
                host_id: None,
                connected: false,
                domains: BTreeMap::new(),
            });
            pool.master = master;
            pool.master_version = master_version;
            pool.host_id = Some(host_id);
            pool.connected = true;
            pool.domains = domains.clone();
        }
        for (sd, status) in domains {
            if status == PoolDomainStatus::Active {
                if let Err(e) = self.start_monitoring(sd) {
                    tracing::warn!(pool = %sp, sd = %sd, error = %e, "cannot monitor a pool domain");
                }
            }
        }
        tracing::info!(pool = %sp, host_id, "connected to storage pool");
        Ok(())
    }

    pub fn disconnect_pool(&self, sp: SpUuid) -> StorageResult<()> {
        let domains: Vec<SdUuid> = {
            let mut st = self.st();
            let Some(pool) = st.pools.get_mut(&sp) else {
                return Ok(()); // Idempotent: nothing to disconnect.
            };
            pool.connected = false;
            pool.host_id = None;
            pool.domains.keys().copied().collect()
        };
        for sd in domains {
            self.monitor.stop(sd);
        }
        tracing::info!(pool = %sp, "disconnected from storage pool");
        Ok(())
    }

    pub fn pool(&self, sp: SpUuid) -> StorageResult<PoolState> {
        match self.st().pools.get(&sp) {
            Some(p) if p.connected => Ok(p.clone()),
            _ => Err(StorageError::new(
                Code::StoragePoolUnknown,
                "storage pool info",
                format!("'{sp}'"),
            )),
        }
    }

    /// Health of a pool domain for `StoragePool.getInfo`'s dominfo.
    pub fn health(&self, sd: SdUuid) -> Option<DomainHealth> {
        self.monitor.status(sd)
    }

    /// `StorageDomain.attach`: POOL_UUID = sp, ROLE Regular. Idempotent;
    /// a domain attached to another pool is refused (380).
    pub fn attach(&self, sd: SdUuid, sp: SpUuid) -> StorageResult<()> {
        const OP: &str = "attach storage domain";
        if !self.st().pools.contains_key(&sp) {
            return Err(StorageError::new(
                Code::StoragePoolUnknown,
                OP,
                format!("'{sp}'"),
            ));
        }
        let paths = self.locate(sd)?;
        let _lock = self.lock_domain(sd, true)?;
        let md = self.read_md(&paths)?;
        if md.class == DomainClass::Backup {
            return Err(StorageError::new(
                Code::StorageDomainAttachError,
                OP,
                "legacy export domains are not supported",
            ));
        }
        match md.attached_pools().as_slice() {
            [] => {
                self.update_md(&paths, move |md| {
                    md.pools = vec![sp];
                    md.role = DomainRole::Regular;
                    Ok(())
                })?;
            }
            [p] if *p == sp => {}
            [other, ..] => {
                return Err(StorageError::new(
                    Code::StorageDomainAlreadyAttached,
                    OP,
                    format!("'{sd}' is attached to pool {other}"),
                ))
            }
        }
        if let Some(pool) = self.st().pools.get_mut(&sp) {
            pool.domains.entry(sd).or_insert(PoolDomainStatus::Attached);
        }
        Ok(())
    }

    /// `StorageDomain.detach`. The master cannot be detached (383) and an
    /// active domain must be deactivated first (382). `force` clears the
    /// domain's pool whatever it is: the disaster-recovery path, for a
    /// domain whose pool is gone.
    pub fn detach(&self, sd: SdUuid, sp: SpUuid, force: bool) -> StorageResult<()> {
        const OP: &str = "detach storage domain";
        let paths = self.locate(sd)?;
        let _lock = self.lock_domain(sd, true)?;
        let md = self.read_md(&paths)?;
        if !force {
            if !md.attached_pools().contains(&sp) {
                return Err(StorageError::new(
                    Code::StorageDomainDetachError,
                    OP,
                    format!("'{sd}' is not attached to {sp}"),
                ));
            }
            if md.role == DomainRole::Master {
                return Err(StorageError::new(
                    Code::CannotDetachMasterStorageDomain,
                    OP,
                    format!("'{sd}' is the master of {sp}"),
                ));
            }
            if self.st().pools.get(&sp).and_then(|p| p.domains.get(&sd))
                == Some(&PoolDomainStatus::Active)
            {
                return Err(StorageError::new(
                    Code::StorageDomainActive,
                    OP,
                    format!("'{sd}' is active"),
                ));
            }
        }
        self.update_md(&paths, move |md| {
            md.pools.clear();
            md.role = DomainRole::Regular;
            Ok(())
        })?;
        self.monitor.stop(sd);
        for pool in self.st().pools.values_mut() {
            pool.domains.remove(&sd);
        }
        tracing::info!(sd = %sd, pool = %sp, force, "storage domain detached");
        Ok(())
    }

    /// `StorageDomain.activate`: the pool must be connected here (313) and
    /// the domain attached to it (359). Starts monitoring it.
    pub fn activate(&self, sd: SdUuid, sp: SpUuid) -> StorageResult<()> {
        const OP: &str = "activate storage domain";
        self.connected_pool(sp, OP)?;
        let paths = self.locate(sd)?;
        let md = self.read_md(&paths)?;
        if !md.attached_pools().contains(&sp) {
            return Err(StorageError::new(
                Code::StorageDomainActivateError,
                OP,
                format!("'{sd}' is not attached to {sp}"),
            ));
        }
        self.start_monitoring(sd)?;
        if let Some(pool) = self.st().pools.get_mut(&sp) {
            pool.domains.insert(sd, PoolDomainStatus::Active);
        }
        Ok(())
    }

    /// `StorageDomain.deactivate`. Deactivating the master with another
    /// `new_master` moves the master role there (the engine's master
    /// switch); the new master must be able to be one (317, 319).
    pub fn deactivate(
        &self,
        sd: SdUuid,
        sp: SpUuid,
        new_master: Option<SdUuid>,
        master_version: Option<i64>,
    ) -> StorageResult<()> {
        const OP: &str = "deactivate storage domain";
        let pool = self.connected_pool(sp, OP)?;
        if pool.master == sd {
            match new_master.filter(|m| *m != sd) {
                Some(m) => self.switch_master(
                    sp,
                    sd,
                    m,
                    master_version.unwrap_or(pool.master_version + 1),
                )?,
                None if pool
                    .domains
                    .values()
                    .filter(|s| **s == PoolDomainStatus::Active)
                    .count()
                    > 1 =>
                {
                    return Err(StorageError::new(
                        Code::StorageDomainActionError,
                        OP,
                        format!("'{sd}' is the master; name another master to deactivate it"),
                    ))
                }
                None => {}
            }
        }
        self.monitor.stop(sd);
        if let Some(pool) = self.st().pools.get_mut(&sp) {
            if pool.domains.contains_key(&sd) {
                pool.domains.insert(sd, PoolDomainStatus::Attached);
            }
        }
        Ok(())
    }

    /// Moves the master role from `old` to `new` (both attached to `sp`).
    pub fn switch_master(
        &self,
        sp: SpUuid,
        old: SdUuid,
        new: SdUuid,
        version: i64,
    ) -> StorageResult<()> {
        const OP: &str = "switch master domain";
        let new_paths = self.locate(new)?;
        let old_paths = self.locate(old)?;
        let (first, second) = if old < new { (old, new) } else { (new, old) };
        let _l1 = self.lock_domain(first, true)?;
        let _l2 = self.lock_domain(second, true)?;
        let md = self.read_md(&new_paths)?;
        check_can_be_master(&md, OP)?;
        if !md.attached_pools().contains(&sp) {
            return Err(StorageError::new(
                Code::StoragePoolWrongMaster,
                OP,
                format!("'{new}' is not attached to {sp}"),
            ));
        }
        self.update_md(&new_paths, move |md| {
            md.role = DomainRole::Master;
            md.master_version = Some(version);
            Ok(())
        })?;
        self.update_md(&old_paths, |md| {
            md.role = DomainRole::Regular;
            Ok(())
        })?;
        if let Some(pool) = self.st().pools.get_mut(&sp) {
            pool.master = new;
            pool.master_version = version;
        }
        tracing::info!(pool = %sp, old = %old, new = %new, version, "master domain switched");
        Ok(())
    }

    fn connected_pool(&self, sp: SpUuid, op: &'static str) -> StorageResult<PoolState> {
        match self.st().pools.get(&sp) {
            Some(p) if p.connected => Ok(p.clone()),
            Some(_) => Err(StorageError::new(
                Code::StoragePoolNotConnected,
                op,
                format!("'{sp}'"),
            )),
            None => Err(StorageError::new(
                Code::StoragePoolUnknown,
                op,
                format!("'{sp}'"),
            )),
        }
    }

    /// Whether `sd` is in use by a pool connected on this host.
    pub fn is_active(&self, sd: SdUuid) -> bool {
        in_active_pool(&self.st(), sd)
    }

    pub(crate) fn locks(&self) -> &LockManager {
        &self.locks
    }

    pub(crate) fn repository(&self) -> &Path {
        &self.config.repository
    }

    pub(crate) fn mark_prepared(&self, sd: SdUuid, img: ImgUuid, purpose: PreparePurpose) {
        let mut st = self.st();
        let slot = st.prepared.entry((sd, img)).or_insert(purpose);
        // Prepared for a VM wins: that is what the rules need to know.
        if purpose == PreparePurpose::Vm {
            *slot = PreparePurpose::Vm;
        }
    }

    pub(crate) fn forget_prepared(&self, sd: SdUuid, img: ImgUuid) {
        self.st().prepared.remove(&(sd, img));
    }

    pub fn is_prepared(&self, sd: SdUuid, img: ImgUuid) -> bool {
        self.st().prepared.contains_key(&(sd, img))
    }

    /// Whether the image is prepared for a VM on this host (a copy of it is
    /// then a live move).
    pub fn is_prepared_for_vm(&self, sd: SdUuid, img: ImgUuid) -> bool {
        self.st().prepared.get(&(sd, img)) == Some(&PreparePurpose::Vm)
    }

    /// Claims the one upload slot of an OVF_STORE volume; a second upload
    /// is refused (203) instead of interleaving writes.
    pub(crate) fn begin_upload(
        &self,
        sd: SdUuid,
        vol: VolUuid,
        op: &'static str,
    ) -> StorageResult<ovf::UploadSlotGuard<'_>> {
        if !self.st().uploads.insert((sd, vol)) {
            return Err(StorageError::new(
                Code::VolumeIsBusy,
                op,
                format!("OVF store {vol} is being updated by another upload"),
            ));
        }
        Ok(ovf::UploadSlotGuard::new(self, (sd, vol)))
    }

    pub(crate) fn end_upload(&self, key: (SdUuid, VolUuid)) {
        self.st().uploads.remove(&key);
    }

    /// Whether any image of `sd` is prepared on this host.
    pub fn has_prepared(&self, sd: SdUuid) -> bool {
        self.st().prepared.keys().any(|(d, _)| *d == sd)
    }

    /// `StorageDomain.setBackup`. Setting the flag is refused on a non-data
    /// domain (9010), on a master domain (319), and while any volume of the
    /// domain is prepared (9013); clearing it is always allowed.
    pub fn set_backup(&self, sd: SdUuid, backup: bool) -> StorageResult<()> {
        const OP: &str = "set backup flag";
        let paths = self.locate(sd)?;
        let _lock = self.lock_domain(sd, true)?;
        if backup {
            let md = self.read_md(&paths)?;
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
        self.update_md(&paths, move |md| {
            md.backup = backup;
            Ok(())
        })?;
        tracing::info!(sd = %sd, backup, "backup flag changed");
        Ok(())
    }
}

impl Storage {
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
        })?;
        let st = self.st();
        for pv in pvs
            .iter()
            .filter(|pv| devices.iter().any(|d| Path::new(&pv.name) == d))
        {
            let Ok(sd) = pv.vg_name.parse::<SdUuid>() else {
                continue;
            };
            if self.monitor.is_monitoring(sd) || in_active_pool(&st, sd) {
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

fn in_active_pool(st: &State, sd: SdUuid) -> bool {
    st.pools
        .values()
        .any(|p| p.connected && p.domains.get(&sd) == Some(&PoolDomainStatus::Active))
}

/// Only a Data domain that is not a backup domain can be master.
fn check_can_be_master(md: &DomainMetadata, op: &'static str) -> StorageResult<()> {
    if md.class != DomainClass::Data {
        return Err(StorageError::new(
            Code::IsoCannotBeMasterDomain,
            op,
            format!("'{}' is a {} domain", md.sd_uuid, md.class),
        ));
    }
    if md.backup {
        return Err(StorageError::new(
            Code::BackupCannotBeMasterDomain,
            op,
            format!("'{}' is a backup domain", md.sd_uuid),
        ));
    }
    Ok(())
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
