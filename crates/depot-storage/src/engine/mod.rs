//! The engine: [`Storage`], the one object the daemon calls for every
//! storage verb, one file per concept (connections, domains, pools,
//! volumes and images, copy, OVF, SAN, LVM). This file holds what they
//! share: the configuration, the locks, the state of this host, and the
//! mounts' helpers ([`MountFs`]), through which every file-system touch of
//! a file domain is made with a deadline, in a helper process: a dead
//! server fails one call and never holds a thread of the daemon.
//!
//! ("Engine" in depot-storage means this folder only; oVirt's manager is
//! called oVirt or the manager, and depotd's JSON-RPC layer is its own.)

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use depot_api::storage::{ImgUuid, SdUuid, SpUuid, VolUuid};
use depot_os::fsproc::{FsPool, HelperCommand, PoolConfig};
use depot_os::lvm::Lvm;
use depot_os::{CommandRunner, Mounter, QemuImg};

use crate::backup::PreparePurpose;
use crate::connection::san::SanConnector;
use crate::connection::watch::Watch;
use crate::connection::Connector;
use crate::domain::FileDomain;
use crate::domain::{Domain, VolumeTools};
use crate::events::{Events, StorageEvent};
use crate::layout;
use crate::layout::DomainPaths;
use crate::lock::{Held, LockGuard as Guard, LockManager, ResourceName};
use crate::lockspace::SanlockConfig;
use crate::monitor::{Monitor, MonitorConfig};
use crate::mount_fs::MountFs;
use crate::StorageResult;
use pools::Pools;

mod block_master;
mod connections;
mod copy;
mod domains;
pub mod dr;
mod dr_failover;
mod leases;
mod liveness;
pub mod lvm;
mod mailbox;
pub mod master_tasks;
mod ovf;
mod pools;
mod san;
mod spm;
mod volume_leases;
mod volumes;

pub use copy::{Control, CopyOutcome, DestinationLease, VolRef};
pub use domains::DomainInfo;
pub use dr_failover::{fence_record as dr_fence_record, now as dr_now, DrStoreRead};
pub use leases::LeaseStatus;
pub use mailbox::{MailboxConfig, ThinLv};
pub use ovf::{OvfListing, OvfStoreInfo, Readable, StoreTexts, UploadDone};
pub use pools::{PoolDomainStatus, PoolState};
pub use spm::{Spm, SpmRole, SpmStatus};
pub use volume_leases::{VolumeLease, VolumeLeaseStatus};
pub use volumes::Prepared;

#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// VDSM's repository: mounts under `mnt/`, run links under `<sp>/`.
    pub repository: PathBuf,
    /// Longest a file-system call on a domain may take before it fails
    /// (the helper that makes it is killed and abandoned; see
    /// crate::mount_fs). Scans over several mounts use at most 5 s.
    pub io_timeout: Duration,
    /// Longest a verb waits for a domain or image lock.
    pub lock_timeout: Duration,
    /// Longest one qemu-img call may take.
    pub qemu_img_timeout: Duration,
    /// Health check period (VDSM's sd_health_check_delay).
    pub monitor_interval: Duration,
    /// How to start a file-system helper (`depot_os::fsproc`): depotd
    /// runs itself as `depotd fsproc` (and `depotd copy-raw` for the
    /// copier, copy::child). Every call on a file domain, the monitor's
    /// check and the native copier run in helpers; `None` makes them on
    /// the calling thread, without deadlines (unit tests).
    pub fsproc_command: Option<HelperCommand>,
    /// The most helpers one mount may have at once, stuck ones included
    /// (for the verbs' calls; the monitor's check has one of its own).
    pub fsproc_helpers_per_mount: usize,
    /// sanlock (crate::lockspace): new domains' lockspaces, and the host
    /// ids the monitor acquires in pool domains. `None`: no sanlock at
    /// all (as on a machine without it).
    pub sanlock: Option<SanlockConfig>,
}

#[derive(Default)]
struct State {
    /// Where each known domain is, and its kind.
    domains: HashMap<SdUuid, Domain>,
    /// Mount directories whose crash leftovers were already cleaned.
    recovered: HashSet<PathBuf>,
    /// Images prepared on this host (Image.prepare without teardown), and
    /// what for.
    prepared: HashMap<(SdUuid, ImgUuid), PreparePurpose>,
    /// OVF_STORE volumes with an upload in flight.
    uploads: HashSet<(SdUuid, VolUuid)>,
}

pub struct Storage {
    config: StorageConfig,
    connector: Connector,
    locks: LockManager,
    monitor: Monitor,
    pub(crate) qemu: QemuImg,
    state: Mutex<State>,
    /// The pools this host knows (pools.rs).
    pools: Pools,
    /// Per mount directory: the helpers every call on its file domains
    /// goes through (crate::mount_fs).
    mounts: Mutex<HashMap<PathBuf, MountFs>>,
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
    /// Which domains have volume leases (volume_leases.rs).
    lease_domains: volume_leases::LeaseDomains,
    /// The SPM mailbox and thin LV extension (mailbox.rs).
    mailboxes: mailbox::Mailboxes,
    /// The block masters' file systems this host mounted (block_master.rs).
    block_masters: block_master::BlockMasters,
}

/// Longest one LVM command may take. LVM scans every filtered device;
/// with a path down, multipath queues I/O for a while before failing it.
const LVM_TIMEOUT: Duration = Duration::from_secs(120);

impl Storage {
    pub fn new(mut config: StorageConfig, runner: CommandRunner) -> Storage {
        // Mount points are compared with the mount table, which holds
        // canonical paths.
        if let Ok(real) = config.repository.canonicalize() {
            config.repository = real;
        }
        let mounter = Mounter::new(runner.clone());
        let block_masters = block_master::BlockMasters::new(runner.clone());
        let connector = Connector::new(&config.repository, mounter.clone())
            .with_io_timeout(config.io_timeout)
            .with_helper(config.fsproc_command.clone());
        let monitor = Monitor::new(MonitorConfig {
            interval: config.monitor_interval,
            check_timeout: config.monitor_interval,
            mounter: Some(mounter),
            helper: config.fsproc_command.clone(),
            sanlock: config.sanlock.as_ref().map(|s| s.client.clone()),
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
            pools: Pools::default(),
            mounts: Mutex::new(HashMap::new()),
            watch: {
                let w = Watch::new(config.monitor_interval);
                w.set_helper(config.fsproc_command.clone());
                w
            },
            events: Events::none(),
            lease_domains: Default::default(),
            mailboxes: Default::default(),
            block_masters,
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

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// Whether sanlock can be used here, and why not: the library, then
    /// the daemon (one call, bounded by the client's timeout). Blocking.
    pub fn sanlock_status(&self) -> depot_api::types::SanlockCapability {
        use depot_api::types::SanlockCapability;
        let Some(s) = &self.config.sanlock else {
            return SanlockCapability {
                available: false,
                reason: Some("sanlock unavailable: disabled (sanlock.enabled = false)".into()),
                version: None,
            };
        };
        match s.client.daemon_version() {
            Ok(version) => SanlockCapability {
                available: true,
                reason: None,
                version: Some(version),
            },
            Err(e) => SanlockCapability {
                available: false,
                reason: Some(match e {
                    depot_os::sanlock::SanlockError::Unavailable(_) => e.to_string(),
                    e => format!("sanlock unavailable: {e}"),
                }),
                version: None,
            },
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The helpers of the mount directory that holds `path` (started on
    /// first use; in process when no helper command is configured).
    pub(crate) fn mount_fs(&self, path: &Path) -> MountFs {
        let key = self.mount_key(path);
        let mut mounts = self.mounts.lock().unwrap_or_else(PoisonError::into_inner);
        mounts
            .entry(key.clone())
            .or_insert_with(|| match &self.config.fsproc_command {
                Some(command) => MountFs::new(FsPool::new(PoolConfig {
                    command: command.clone(),
                    root: key,
                    max_helpers: self.config.fsproc_helpers_per_mount,
                    timeout: self.config.io_timeout,
                })),
                None => MountFs::in_process(&key, self.config.io_timeout),
            })
            .clone()
    }

    /// The state of the helpers of the mount directory that holds `path`,
    /// with their calls counted (what a verb costs in round trips).
    pub fn mount_health(&self, path: &Path) -> depot_os::fsproc::PoolHealth {
        self.mount_fs(path).pool().health()
    }

    /// The file domain `sd` at `paths`, with its mount's helpers.
    pub(crate) fn file_domain(&self, sd: SdUuid, paths: DomainPaths) -> Domain {
        let fs = self.mount_fs(&paths.root);
        Domain::File(FileDomain { sd, paths, fs })
    }

    fn mount_key(&self, path: &Path) -> PathBuf {
        let mnt = self.config.repository.join(layout::MNT);
        // A block master's file system (`blockSD/<sd>/master`): a mount
        // of its own, and its helpers' root (they never cross a mount).
        if let Ok(rest) = path.strip_prefix(mnt.join(layout::BLOCK_DIR)) {
            let mut parts = rest.iter();
            if let (Some(sd), Some(dir)) = (parts.next(), parts.next()) {
                if dir == crate::block::master_fs::MOUNT_DIR {
                    return mnt.join(layout::BLOCK_DIR).join(sd).join(dir);
                }
            }
        }
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

    /// qemu-img and its limit, for volume work.
    pub(crate) fn volume_tools(&self) -> VolumeTools<'_> {
        VolumeTools {
            qemu: &self.qemu,
            timeout: self.config.qemu_img_timeout,
        }
    }

    pub(crate) fn lock_domain_exclusive(&self, sd: SdUuid) -> StorageResult<Guard> {
        self.lock_domain(sd, true)
    }

    /// Pool `sp` exclusive: the pool verbs that change this host's view
    /// of a pool (connect, disconnect, refresh, switchMaster, destroy,
    /// reconstructMaster) run one at a time, as VDSM's do under its
    /// `00_storage.<sp>` lock. Taken before any domain's lock.
    pub(super) fn lock_pool(&self, sp: SpUuid) -> StorageResult<Guard> {
        self.locks
            .exclusive(&ResourceName::pool(sp), self.config.lock_timeout)
    }

    pub(super) fn lock_domain(&self, sd: SdUuid, exclusive: bool) -> StorageResult<Guard> {
        let name = ResourceName::domain(sd);
        if exclusive {
            self.locks.exclusive(&name, self.config.lock_timeout)
        } else {
            self.locks.shared(&name, self.config.lock_timeout)
        }
    }

    /// The domain shared and the image shared or exclusive, to be passed
    /// to the work done under them.
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

    pub fn shutdown(&self) {
        self.mailboxes.stop();
        // The SPM's lease goes with the process: its master file system
        // must go first (block_master.rs).
        self.unmount_block_masters();
        self.monitor.shutdown();
        self.watch.stop();
    }

    pub(crate) fn locks(&self) -> &LockManager {
        &self.locks
    }

    pub(crate) fn repository(&self) -> &Path {
        &self.config.repository
    }
}
