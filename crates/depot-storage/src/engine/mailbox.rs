//! Thin block volume extension through the SPM mailbox (docs/storage.md,
//! "Thin volume extension"): the mailboxes of connected pools whose
//! master is a block domain, the SPM's answering thread while this host
//! is SPM, a host's extend request ([`Storage::request_extend`]), and the
//! watermark that asks for one when a prepared thin LV runs out of room.
//!
//! Two threads started by [`Storage::start_mailbox_service`] keep it
//! going: the service thread (every `SERVICE_TICK`) starts the SPM's
//! mailbox thread of every pool this host is SPM of and stops the others,
//! and drops the host mailboxes of pools no longer connected; the
//! watermark thread checks the prepared thin LVs every
//! `thinp.check_interval`. One hook: spmStop gives the role up, then
//! stops the pool's SPM thread ([`Storage::stop_spm_mailbox`], which waits
//! for an extend under way), and only then releases the SPM's lease, so
//! this host changes no VG after another host could have taken the lease.
//! The handler also checks the role before each extend, and leaves a
//! request it may not handle any more unanswered for the next SPM.
//!
//! Threads are joined (mailboxes dropped) only after the maps' locks are
//! released: a mailbox is taken out of its map under the lock and dropped
//! outside it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use depot_api::storage::{AllocType, ImgUuid, SdUuid, SpUuid, VolType, VolUuid, VolumeFormat};
use depot_api::Code;
use depot_os::lvm::Lvm;

use super::spm::SpmRole;
use super::Storage;
use crate::block;
use crate::domain::Domain;
use crate::mailbox::format::{Extend, HostId, MAX_SIZE_MIB};
use crate::mailbox::host::{HostConfig, HostMailer, Pending};
use crate::mailbox::spm::{Handler, Reply, ScanHandler, SpmConfig, SpmMonitor};
use crate::{StorageError, StorageResult};

const MIB: u64 = 1 << 20;
const SERVICE_TICK: Duration = Duration::from_millis(500);
/// The longest wait between two tries to start an SPM's mailbox that
/// failed to start.
const RETRY_CAP: Duration = Duration::from_secs(60);

/// The mailbox's and the watermark's settings (depotd's `[mailbox]` and
/// `[thinp]`, docs/config.md).
#[derive(Debug, Clone, PartialEq)]
pub struct MailboxConfig {
    /// How often the SPM reads the event block, and a waiting host its
    /// answers.
    pub event_interval: Duration,
    /// How often the SPM reads every host's mailbox without an event.
    pub poll_interval: Duration,
    /// The SPM reads the mailboxes of hosts 1..=max_host_id.
    pub max_host_id: u32,
    /// How long a host waits for the SPM's answer.
    pub request_timeout: Duration,
    /// How much an extend adds (VDSM's `volume_utilization_chunk_mb`).
    pub chunk: u64,
    /// VDSM's `volume_utilization_percent`: an extend is asked when the
    /// free space left in the LV is under (100 - this)% of the chunk.
    pub utilization_percent: u64,
    /// How often the watermark checks the prepared thin LVs.
    pub check_interval: Duration,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        MailboxConfig {
            event_interval: Duration::from_millis(200),
            poll_interval: Duration::from_secs(2),
            max_host_id: 250,
            request_timeout: Duration::from_secs(60),
            chunk: 2560 * MIB,
            utilization_percent: 20,
            check_interval: Duration::from_secs(2),
        }
    }
}

impl MailboxConfig {
    /// The free space under which an extend is asked.
    pub fn free_limit(&self) -> u64 {
        self.chunk / 100 * (100 - self.utilization_percent.min(100))
    }
}

#[derive(Default)]
struct MbState {
    /// This host's mailbox per pool (with the master and host id it was
    /// made for).
    hosts: HashMap<SpUuid, (SdUuid, HostId, Arc<HostMailer>)>,
    /// The SPM's thread per pool this host is SPM of.
    spms: HashMap<SpUuid, (SdUuid, SpmMonitor)>,
    /// The SPM mailboxes that failed to start, per pool: when to try
    /// again.
    retries: HashMap<SpUuid, Retry>,
}

/// The tries to start an SPM's mailbox that fails to start (its LVs
/// cannot be activated, `outbox` cannot be written): the next one after
/// a tick at first, then twice as long each time, up to [`RETRY_CAP`].
/// An error is logged when it differs from the last one, not at every try.
#[derive(Debug, Default)]
struct Retry {
    failures: u32,
    next: Option<Instant>,
    error: Option<String>,
}

impl Retry {
    fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|n| now >= n)
    }

    /// How long after failure number `failures` (0-based) the next try is.
    fn delay(failures: u32) -> Duration {
        SERVICE_TICK
            .saturating_mul(1u32 << failures.min(16))
            .min(RETRY_CAP)
    }

    /// Records a failure at `now`; whether its error is new (to be logged).
    fn failed(&mut self, now: Instant, error: String) -> bool {
        self.next = Some(now + Self::delay(self.failures));
        self.failures = self.failures.saturating_add(1);
        let new = self.error.as_deref() != Some(error.as_str());
        self.error = Some(error);
        new
    }
}

/// The mailbox state of a [`Storage`].
pub(crate) struct Mailboxes {
    config: MailboxConfig,
    state: Mutex<MbState>,
    stop: Arc<AtomicBool>,
    /// Held while a mailbox is made and put in `state` (and while spmStop
    /// takes the SPM's out): one mailbox per pool, and none made for a
    /// role that is gone. No thread is joined under it or under `state`
    /// (module docs).
    starting: Mutex<()>,
}

impl Default for Mailboxes {
    fn default() -> Self {
        Mailboxes {
            config: MailboxConfig::default(),
            state: Mutex::default(),
            stop: Arc::new(AtomicBool::new(false)),
            starting: Mutex::default(),
        }
    }
}

impl Mailboxes {
    fn lock(&self) -> MutexGuard<'_, MbState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn starting(&self) -> MutexGuard<'_, ()> {
        self.starting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops every mailbox: taken out of the maps under the lock, their
    /// threads joined after it.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let (spms, hosts) = {
            let mut st = self.lock();
            st.retries.clear();
            (std::mem::take(&mut st.spms), std::mem::take(&mut st.hosts))
        };
        drop(spms);
        drop(hosts);
    }
}

/// What one scan of the SPM's mailbox read of the VGs: the image of each
/// volume, per domain, read once per scan (a request for a volume that
/// does not exist costs no `lvs` of its own).
#[derive(Default)]
struct ScanLvs(HashMap<SdUuid, StorageResult<HashMap<VolUuid, ImgUuid>>>);

impl ScanLvs {
    fn image_of(
        &mut self,
        vols: &block::volumes::BlockVolumes<'_>,
        vol: VolUuid,
    ) -> StorageResult<ImgUuid> {
        let images = self
            .0
            .entry(vols.sd)
            .or_insert_with(|| vols.volume_images_now())
            .as_ref()
            .map_err(Clone::clone)?;
        images.get(&vol).copied().ok_or_else(|| {
            StorageError::new(
                Code::VolumeDoesNotExist,
                "find volume",
                format!("volume {vol} on domain {}", vols.sd),
            )
        })
    }
}

/// An extend request sent through the mailbox, not answered yet.
struct SentExtend {
    sd: SdUuid,
    img: ImgUuid,
    vol: VolUuid,
    /// Bytes asked.
    size: u64,
    /// The LV's size before.
    before: u64,
    started: Instant,
    pending: Pending,
}

enum Asked {
    /// The LV has the size already (bytes).
    Already(u64),
    Sent(SentExtend),
}

/// A thin LV the watermark watches.
#[derive(Debug, Clone)]
pub struct ThinLv {
    pub sp: SpUuid,
    pub sd: SdUuid,
    pub img: ImgUuid,
    pub vol: VolUuid,
}

impl Storage {
    /// Sets the mailbox's and watermark's settings (before
    /// [`start_mailbox_service`](Self::start_mailbox_service)).
    pub fn with_mailbox(mut self, config: MailboxConfig) -> Self {
        self.mailboxes.config = config;
        self
    }

    pub fn mailbox_config(&self) -> &MailboxConfig {
        &self.mailboxes.config
    }

    /// Starts the service and watermark threads (module docs). They hold
    /// the storage weakly and end with it, or at [`Storage::shutdown`].
    pub fn start_mailbox_service(self: &Arc<Self>) {
        let stop = Arc::clone(&self.mailboxes.stop);
        let weak = Arc::downgrade(self);
        let s = stop.clone();
        let w = weak.clone();
        let spawned = std::thread::Builder::new()
            .name("mailbox-service".into())
            .spawn(move || service(&w, &s))
            .and_then(|_| {
                std::thread::Builder::new()
                    .name("thinp-watermark".into())
                    .spawn(move || watermark(&weak, &stop))
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the mailbox threads: thin LVs will not be extended");
        }
    }

    /// The `inbox` and `outbox` LVs of pool `sp`'s master, activated, when
    /// the master is a block domain; `None` for a file master (no
    /// mailbox, as in VDSM).
    fn mailbox_paths(&self, master: SdUuid) -> StorageResult<Option<(PathBuf, PathBuf)>> {
        const OP: &str = "prepare mailbox";
        let Domain::Block(_) = self.locate(master)? else {
            return Ok(None);
        };
        let vg = block::vg_name(master);
        self.lvm
            .activate(&vg, &["inbox", "outbox"])
            .map_err(|e| block::lvm_err(Code::CannotActivateLogicalVolume, OP, e))?;
        Ok(Some((
            Lvm::lv_path(&vg, "inbox"),
            Lvm::lv_path(&vg, "outbox"),
        )))
    }

    /// This host's mailbox in pool `sp` (made on first use).
    fn host_mailer(&self, sp: SpUuid) -> StorageResult<Arc<HostMailer>> {
        const OP: &str = "extend volume through the mailbox";
        let pool = self.connected_pool(sp, OP)?;
        let host = pool
            .host_id
            .and_then(|id| u64::try_from(id).ok())
            .and_then(|id| HostId::new(id).ok())
            .ok_or_else(|| {
                StorageError::new(
                    Code::StoragePoolNotConnected,
                    OP,
                    format!("'{sp}' has no host id"),
                )
            })?;
        // Two first uses at once (the watermark and the verb) make one.
        let starting = self.mailboxes.starting();
        if let Some((m, h, mailer)) = self.mailboxes.lock().hosts.get(&sp) {
            if *m == pool.master && *h == host {
                return Ok(Arc::clone(mailer));
            }
        }
        let Some((inbox, outbox)) = self.mailbox_paths(pool.master)? else {
            return Err(StorageError::new(
                Code::VolumeExtendingError,
                OP,
                format!(
                    "pool {sp}'s master {} is a file domain: it has no mailbox",
                    pool.master
                ),
            ));
        };
        let mailer = Arc::new(HostMailer::start(HostConfig {
            inbox,
            outbox,
            host,
            poll: self.mailboxes.config.event_interval,
        })?);
        let replaced = self
            .mailboxes
            .lock()
            .hosts
            .insert(sp, (pool.master, host, Arc::clone(&mailer)));
        // The one replaced (a new master or host id) is dropped, and its
        // thread joined, after both locks.
        drop(starting);
        drop(replaced);
        Ok(mailer)
    }

    /// The connected pool that domain `sd` is part of on this host.
    fn pool_of(&self, sd: SdUuid, op: &'static str) -> StorageResult<SpUuid> {
        self.pools
            .lock()
            .iter()
            .find(|(_, p)| p.connected && p.domains.contains_key(&sd))
            .map(|(sp, _)| *sp)
            .ok_or_else(|| {
                StorageError::new(
                    Code::StoragePoolNotConnected,
                    op,
                    format!("domain {sd} is in no pool connected on this host"),
                )
            })
    }

    /// Asks the SPM of pool `sp` to extend the LV of thin volume `vol` to
    /// `size` bytes, capped at the volume's fully allocated size, waits
    /// for its answer, refreshes the LV on this host and checks its new
    /// size; returns it (bytes: below `size` when the cap is). Blocking
    /// (up to `mailbox.request_timeout`). The volume must be a COW volume
    /// of a block domain of the pool, its image prepared on this host.
    /// Idempotent: a size already reached is answered at once.
    pub fn request_extend(
        &self,
        sp: SpUuid,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        size: u64,
    ) -> StorageResult<u64> {
        let timeout = self.mailboxes.config.request_timeout;
        match self.send_extend(sp, sd, img, vol, size)? {
            Asked::Already(now) => Ok(now),
            Asked::Sent(sent) => match sent.pending.wait_until(sent.started + timeout)? {
                Some(answer) => self.finish_extend(&sent, answer),
                None => Err(sent.pending.no_answer(timeout)),
            },
        }
    }

    /// [`request_extend`](Self::request_extend) up to the request: checks
    /// it and sends it, without waiting for the answer.
    fn send_extend(
        &self,
        sp: SpUuid,
        sd: SdUuid,
        img: ImgUuid,
        vol: VolUuid,
        size: u64,
    ) -> StorageResult<Asked> {
        const OP: &str = "extend volume through the mailbox";
        let pool = self.connected_pool(sp, OP)?;
        if !pool.domains.contains_key(&sd) {
            return Err(StorageError::new(
                Code::StorageDomainNotInPool,
                OP,
                format!("domain {sd} is not in pool {sp}"),
            ));
        }
        let domain = self.locate(sd)?;
        let Domain::Block(bd) = &domain else {
            return Err(StorageError::new(
                Code::VolumeExtendingError,
                OP,
                format!("domain {sd} is a file domain: its volumes need no extend"),
            ));
        };
        if !self.is_prepared(sd, img) {
            return Err(StorageError::new(
                Code::VolumeExtendingError,
                OP,
                format!("image {img} is not prepared on this host"),
            ));
        }
        let size_mib = size.div_ceil(MIB);
        if size_mib == 0 || size_mib > MAX_SIZE_MIB {
            return Err(StorageError::new(
                Code::VolumeResizeValueError,
                OP,
                format!("{size} bytes: not 1 MiB to {MAX_SIZE_MIB} MiB"),
            ));
        }
        let tools = self.volume_tools();
        let vols = bd.volumes(tools);
        // Already that large here: answered at once. "Here" is this host's
        // device when the LV is active (no LVM command); when it is
        // smaller, the VG may still have more (extended, not refreshed
        // yet): the SPM then answers at once and the refresh after the
        // answer picks it up.
        let dev = Lvm::lv_path(&block::vg_name(sd), &vol.to_string());
        let before = {
            let _held = self.lock_image(sd, img, false)?;
            let max = vols.thin_max_size(img, vol)?;
            let now = match device_size(&dev) {
                Ok(n) => n,
                Err(_) => vols.lv_size_now(img, vol)?,
            };
            if now >= size.min(max) {
                return Ok(Asked::Already(now));
            }
            now
        };
        let mailer = self.host_mailer(sp)?;
        let started = Instant::now();
        let req = Extend::new(sd, vol, size_mib).map_err(|e| {
            StorageError::new(Code::VolumeResizeValueError, OP, e.to_string()).caused_by(e)
        })?;
        Ok(Asked::Sent(SentExtend {
            sd,
            img,
            vol,
            size,
            before,
            started,
            pending: mailer.send(req)?,
        }))
    }

    /// [`request_extend`](Self::request_extend) after the SPM's answer
    /// (MiB; 0: it failed): refreshes the LV here and checks its size.
    fn finish_extend(&self, sent: &SentExtend, answer: u64) -> StorageResult<u64> {
        const OP: &str = "extend volume through the mailbox";
        let SentExtend {
            sd,
            img,
            vol,
            size,
            before,
            started,
            ..
        } = *sent;
        let answered = started.elapsed();
        let size_mib = sent.pending.request().size_mib;
        if answer == 0 {
            return Err(StorageError::new(
                Code::LogicalVolumeExtendError,
                OP,
                format!("the SPM could not extend volume {vol} of domain {sd} to {size_mib} MiB"),
            ));
        }
        let Domain::Block(bd) = self.locate(sd)? else {
            return Err(StorageError::new(
                Code::VolumeExtendingError,
                OP,
                format!("domain {sd} is no longer a block domain"),
            ));
        };
        let vols = bd.volumes(self.volume_tools());
        let vg = block::vg_name(sd);
        let dev = Lvm::lv_path(&vg, &vol.to_string());
        let refresh = Instant::now();
        let now = self.refreshed_size(&vols, img, vol, (&vg, &dev), OP)?;
        tracing::info!(%sd, %vol, before, now, asked = size, answer_mib = answer,
            answered_ms = answered.as_millis() as u64,
            refresh_ms = refresh.elapsed().as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64, "volume extended through the mailbox");
        if now < size.min(answer * MIB) {
            return Err(StorageError::new(
                Code::LogicalVolumeExtendError,
                OP,
                format!(
                    "volume {vol} of domain {sd}: the SPM answered {answer} MiB, the LV has {now} bytes"
                ),
            ));
        }
        Ok(now)
    }

    /// The LV's size as this host's device has it after a refresh: what a
    /// writer sees, and no second read of the VG metadata (an LVM command
    /// costs more than the whole message round trip). An LV not active
    /// here is read from the VG.
    fn refreshed_size(
        &self,
        vols: &block::volumes::BlockVolumes<'_>,
        img: ImgUuid,
        vol: VolUuid,
        (vg, dev): (&str, &std::path::Path),
        op: &'static str,
    ) -> StorageResult<u64> {
        if !dev.exists() {
            return vols.lv_size_now(img, vol);
        }
        self.lvm
            .refresh(vg, &vol.to_string())
            .map_err(|e| block::lvm_err(Code::LogicalVolumeRefreshError, op, e))?;
        device_size(dev).map_err(|e| StorageError::io(Code::LogicalVolumeRefreshError, op, dev, e))
    }

    /// The SPM's handler of an extend request of pool `sp`, within one
    /// scan: left unanswered when this host is no longer its SPM (the next
    /// SPM answers it; 0 would tell the host the extend failed).
    fn spm_extend(&self, sp: SpUuid, host: HostId, req: Extend, scan: &mut ScanLvs) -> Reply {
        let role = self
            .pools
            .lock()
            .get(&sp)
            .map(|p| (p.connected, p.spm.role));
        if role != Some((true, SpmRole::Spm)) {
            return Reply::Leave;
        }
        match self.spm_extend_checked(sp, host, req, scan) {
            Ok(size) => Reply::Size(size),
            Err(e) => Reply::Failed(e),
        }
    }

    fn spm_extend_checked(
        &self,
        sp: SpUuid,
        host: HostId,
        req: Extend,
        scan: &mut ScanLvs,
    ) -> StorageResult<u64> {
        const OP: &str = "extend volume for a host";
        let pool = self.connected_pool(sp, OP)?;
        // A domain of another pool (or none) is refused: a host asks only
        // for volumes of the pool's domains (VDSM's _assert_sd_in_pool).
        if !pool.domains.contains_key(&req.domain) {
            return Err(StorageError::new(
                Code::StorageDomainNotInPool,
                OP,
                format!("domain {} is not in pool {sp}", req.domain),
            ));
        }
        let domain = self.locate(req.domain)?;
        let Domain::Block(bd) = &domain else {
            return Err(StorageError::new(
                Code::VolumeExtendingError,
                OP,
                format!("domain {} is a file domain", req.domain),
            ));
        };
        let started = Instant::now();
        let vols = bd.volumes(self.volume_tools());
        let img = scan.image_of(&vols, req.volume)?;
        let _held = self.lock_image(req.domain, img, true)?;
        let size = req.size_mib.saturating_mul(MIB);
        let reached = vols.grow_thin(img, req.volume, size)?;
        tracing::info!(%host, sd = %req.domain, vol = %req.volume, asked_mib = req.size_mib,
            reached, took_ms = started.elapsed().as_millis() as u64, "SPM: thin volume extended");
        Ok(reached / MIB)
    }

    /// Stops the SPM's mailbox thread of pool `sp` now (spmStop), waiting
    /// for an extend it is running; outside the map's lock, so that other
    /// callers do not wait for the join.
    pub(super) fn stop_spm_mailbox(&self, sp: SpUuid) {
        // After a start under way (the service tick's) has put its monitor
        // in: that one is taken out too; later ticks see the role gone.
        let monitor = {
            let _starting = self.mailboxes.starting();
            self.mailboxes.lock().spms.remove(&sp)
        };
        if monitor.is_some() {
            tracing::info!(pool = %sp, "SPM mailbox stopped");
        }
        drop(monitor);
    }

    /// One service tick: the SPM threads follow this host's role, and the
    /// host mailboxes the pools' connections. Mailboxes stopped are taken
    /// out of the map under its lock and dropped (their threads joined)
    /// after it.
    fn mailbox_tick(self: &Arc<Self>) {
        let pools: Vec<(SpUuid, SdUuid, bool, bool)> = self
            .pools
            .lock()
            .iter()
            .map(|(sp, p)| (*sp, p.master, p.connected, p.spm.role == SpmRole::Spm))
            .collect();
        let is_spm = |sp: &SpUuid, master: &SdUuid| {
            pools
                .iter()
                .any(|(s, m, c, spm)| s == sp && m == master && *c && *spm)
        };
        let now = Instant::now();
        let mut st = self.mailboxes.lock();
        let stale_spms: Vec<SpUuid> = st
            .spms
            .iter()
            .filter(|(sp, (master, mon))| !(mon.is_running() && is_spm(sp, master)))
            .map(|(sp, _)| *sp)
            .collect();
        let stopped_spms: Vec<_> = stale_spms
            .iter()
            .filter_map(|sp| st.spms.remove_entry(sp))
            .collect();
        let stale_hosts: Vec<SpUuid> = st
            .hosts
            .iter()
            .filter(|(sp, (master, _, _))| {
                !pools
                    .iter()
                    .any(|(s, m, c, _)| s == *sp && m == master && *c)
            })
            .map(|(sp, _)| *sp)
            .collect();
        let stopped_hosts: Vec<_> = stale_hosts
            .iter()
            .filter_map(|sp| st.hosts.remove(sp))
            .collect();
        // A role gone: its next start begins without a wait.
        st.retries
            .retain(|sp, _| pools.iter().any(|(s, _, c, spm)| s == sp && *c && *spm));
        let to_start: Vec<(SpUuid, SdUuid)> = pools
            .iter()
            .filter(|(sp, _, c, spm)| {
                *c && *spm
                    && !st.spms.contains_key(sp)
                    && st.retries.get(sp).is_none_or(|r| r.due(now))
            })
            .map(|(sp, m, _, _)| (*sp, *m))
            .collect();
        drop(st);
        for (sp, _) in &stopped_spms {
            tracing::info!(pool = %sp, "SPM mailbox stopped");
        }
        drop(stopped_spms);
        drop(stopped_hosts);
        // A file master has no mailbox: known from the cache without a
        // look at the storage (a file domain's look is a helper call).
        let to_start: Vec<(SpUuid, SdUuid)> = {
            let state = self.state();
            to_start
                .into_iter()
                .filter(|(_, m)| !matches!(state.domains.get(m), Some(Domain::File(_))))
                .collect()
        };
        for (sp, master) in to_start {
            self.try_start_spm_mailbox(sp, master);
        }
    }

    /// Starts the SPM's mailbox of pool `sp` if this host is still its
    /// SPM; a failure is tried again later ([`Retry`]).
    fn try_start_spm_mailbox(self: &Arc<Self>, sp: SpUuid, master: SdUuid) {
        let _starting = self.mailboxes.starting();
        // spmStop may have run since the role was read: the role is read
        // again under `starting`, which spmStop takes too.
        let still_spm = self
            .pools
            .lock()
            .get(&sp)
            .is_some_and(|p| p.connected && p.master == master && p.spm.role == SpmRole::Spm);
        if !still_spm || self.mailboxes.stop.load(Ordering::Relaxed) {
            return;
        }
        match self.start_spm_mailbox(sp, master) {
            Ok(Some(mon)) => {
                let mut st = self.mailboxes.lock();
                match st.retries.remove(&sp) {
                    Some(r) => tracing::info!(pool = %sp, %master, failures = r.failures,
                        "SPM mailbox started after failing to start"),
                    None => tracing::info!(pool = %sp, %master, "SPM mailbox started"),
                }
                st.spms.insert(sp, (master, mon));
            }
            Ok(None) => {} // a file master: no mailbox
            Err(e) => {
                let mut st = self.mailboxes.lock();
                let retry = st.retries.entry(sp).or_default();
                if retry.failed(Instant::now(), e.to_string()) {
                    tracing::warn!(pool = %sp, error = %e,
                        retry_in_ms = Retry::delay(retry.failures - 1).as_millis() as u64,
                        "cannot start the SPM mailbox (tried again less and less often; logged again when the error changes)");
                }
            }
        }
    }

    fn start_spm_mailbox(
        self: &Arc<Self>,
        sp: SpUuid,
        master: SdUuid,
    ) -> StorageResult<Option<SpmMonitor>> {
        let Some((inbox, outbox)) = self.mailbox_paths(master)? else {
            return Ok(None);
        };
        let c = &self.mailboxes.config;
        let max_host = HostId::new(u64::from(c.max_host_id)).map_err(|e| {
            StorageError::new(
                Code::MiscFileReadException,
                "start SPM mailbox",
                e.to_string(),
            )
        })?;
        let weak = Arc::downgrade(self);
        // One session per scan, with its own look at the VGs.
        let handler: Handler = Arc::new(move || -> ScanHandler {
            let weak = weak.clone();
            let mut scan = ScanLvs::default();
            Box::new(move |host, req| match weak.upgrade() {
                Some(s) => s.spm_extend(sp, host, req, &mut scan),
                // depotd is stopping: the next SPM answers.
                None => Reply::Leave,
            })
        });
        SpmMonitor::start(
            SpmConfig {
                inbox,
                outbox,
                max_host,
                event_poll: c.event_interval,
                full_poll: c.poll_interval,
            },
            handler,
        )
        .map(Some)
    }

    /// The thin LVs the watermark watches: the COW SPARSE leaves of the
    /// images prepared on this host, on block domains of connected pools,
    /// whose LVs are active.
    pub fn thin_lvs(&self) -> Vec<ThinLv> {
        let prepared: Vec<(SdUuid, ImgUuid)> = self.state().prepared.keys().copied().collect();
        let mut out = Vec::new();
        for (sd, img) in prepared {
            let Ok(sp) = self.pool_of(sd, "watch thin volumes") else {
                continue;
            };
            let Some(Domain::Block(bd)) = self.state().domains.get(&sd).cloned() else {
                continue;
            };
            let vg = block::vg_name(sd);
            let vols = bd.volumes(self.volume_tools());
            let Ok(list) = crate::volume_store::VolumeStore::list(&vols, Some(img)) else {
                continue;
            };
            for vol in list {
                if !Lvm::lv_path(&vg, &vol.to_string()).exists() {
                    continue;
                }
                let Ok(info) = crate::volume_store::VolumeStore::info(&vols, img, vol) else {
                    continue;
                };
                let md = &info.metadata;
                if md.format == VolumeFormat::Cow
                    && md.alloc_type == AllocType::Sparse
                    && md.vol_type == VolType::Leaf
                {
                    out.push(ThinLv { sp, sd, img, vol });
                }
            }
        }
        out
    }

    /// One watermark check of `lv`: its allocation (`qemu-img check -U`'s
    /// image end), and an extend by one chunk sent when the free space left
    /// is under the limit (not waited for).
    fn check_watermark(&self, lv: &ThinLv) -> StorageResult<Option<Asked>> {
        const OP: &str = "check thin volume";
        let Domain::Block(bd) = self.locate(lv.sd)? else {
            return Ok(None);
        };
        let vols = bd.volumes(self.volume_tools());
        let path = Lvm::lv_path(&block::vg_name(lv.sd), &lv.vol.to_string());
        // The size the writer has: this host's device (no LVM command per
        // check).
        let (size, max) = {
            let _held = self.lock_image(lv.sd, lv.img, false)?;
            let size = match device_size(&path) {
                Ok(n) => n,
                Err(_) => vols.lv_size_now(lv.img, lv.vol)?,
            };
            (size, vols.thin_max_size(lv.img, lv.vol)?)
        };
        if size >= max {
            return Ok(None);
        }
        let check = self
            .qemu
            .check_shared(&path, self.config.qemu_img_timeout)
            .map_err(|e| StorageError::new(Code::VolumeExtendingError, OP, e.to_string()))?;
        let Some(end) = check.image_end_offset else {
            return Ok(None);
        };
        let c = &self.mailboxes.config;
        let free = size.saturating_sub(end);
        if free >= c.free_limit() {
            return Ok(None);
        }
        let want = (size + c.chunk).min(max);
        tracing::info!(sd = %lv.sd, vol = %lv.vol, size, end, free, want, "thin volume over its watermark");
        self.send_extend(lv.sp, lv.sd, lv.img, lv.vol, want)
            .map(Some)
    }
}

impl Watch for Storage {
    type Lv = ThinLv;
    type Sent = SentExtend;

    fn key(lv: &ThinLv) -> (SdUuid, VolUuid) {
        (lv.sd, lv.vol)
    }

    fn thin_lvs(&self) -> Vec<ThinLv> {
        Storage::thin_lvs(self)
    }

    fn check(&self, lv: &ThinLv) -> StorageResult<Option<SentExtend>> {
        Ok(match self.check_watermark(lv)? {
            Some(Asked::Sent(sent)) => Some(sent),
            Some(Asked::Already(_)) | None => None,
        })
    }

    fn sent_at(sent: &SentExtend) -> Instant {
        sent.started
    }

    fn wait(&self, sent: &SentExtend, deadline: Instant) -> StorageResult<Option<u64>> {
        sent.pending.wait_until(deadline)
    }

    fn finish(&self, sent: &SentExtend, answer: u64) -> StorageResult<u64> {
        self.finish_extend(sent, answer)
    }

    fn no_answer(sent: &SentExtend, waited: Duration) -> StorageError {
        sent.pending.no_answer(waited)
    }
}

/// What a watermark round needs (a trait: the round's order and bounds
/// are tested without LVs).
trait Watch {
    type Lv;
    type Sent;
    fn key(lv: &Self::Lv) -> (SdUuid, VolUuid);
    /// The LVs to watch.
    fn thin_lvs(&self) -> Vec<Self::Lv>;
    /// Checks one LV; the extend sent when it is over its watermark.
    fn check(&self, lv: &Self::Lv) -> StorageResult<Option<Self::Sent>>;
    fn sent_at(sent: &Self::Sent) -> Instant;
    /// The SPM's answer (MiB) if it came by `deadline`.
    fn wait(&self, sent: &Self::Sent, deadline: Instant) -> StorageResult<Option<u64>>;
    /// After the answer: refresh and check.
    fn finish(&self, sent: &Self::Sent, answer: u64) -> StorageResult<u64>;
    fn no_answer(sent: &Self::Sent, waited: Duration) -> StorageError;
}

/// One round of the watermark, ended by `round_end`: every LV without an
/// extend under way is checked and the extends of all those over their
/// watermark are sent first; then the answers are awaited, together,
/// until `round_end` at the latest. An extend not answered by then stays
/// in `pending` for the next rounds (its LV is not checked again) until
/// it is answered or `timeout` after it was sent. So one slow extend holds
/// neither the checks nor the other extends.
fn watermark_round<W: Watch>(
    w: &W,
    pending: &mut HashMap<(SdUuid, VolUuid), W::Sent>,
    round_end: Instant,
    timeout: Duration,
    stop: &AtomicBool,
) {
    for lv in w.thin_lvs() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let key = W::key(&lv);
        if pending.contains_key(&key) {
            continue;
        }
        match w.check(&lv) {
            Ok(Some(sent)) => {
                pending.insert(key, sent);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(sd = %key.0, vol = %key.1, error = %e, "thin volume watermark")
            }
        }
    }
    let keys: Vec<(SdUuid, VolUuid)> = pending.keys().copied().collect();
    for key in keys {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let sent = &pending[&key];
        let expires = W::sent_at(sent) + timeout;
        let outcome = match w.wait(sent, round_end.min(expires)) {
            Ok(Some(answer)) => Some(w.finish(sent, answer)),
            Ok(None) if Instant::now() >= expires => Some(Err(W::no_answer(sent, timeout))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        };
        if let Some(result) = outcome {
            pending.remove(&key);
            if let Err(e) = result {
                tracing::warn!(sd = %key.0, vol = %key.1, error = %e, "thin volume watermark");
            }
        }
    }
}

/// The size of a block device (its end: no I/O, the kernel's size).
fn device_size(dev: &std::path::Path) -> std::io::Result<u64> {
    use std::io::Seek;
    std::fs::File::open(dev)?.seek(std::io::SeekFrom::End(0))
}

fn service(storage: &Weak<Storage>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let Some(s) = storage.upgrade() else { return };
        s.mailbox_tick();
        drop(s);
        std::thread::sleep(SERVICE_TICK);
    }
}

fn watermark(storage: &Weak<Storage>, stop: &AtomicBool) {
    let mut pending = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(s) = storage.upgrade() else { return };
        let c = &s.mailboxes.config;
        let round_end = Instant::now() + c.check_interval;
        watermark_round(&*s, &mut pending, round_end, c.request_timeout, stop);
        drop(s);
        std::thread::sleep(round_end.saturating_duration_since(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::format::{Mailbox, MAILBOX_SIZE};
    use crate::mailbox::spm::per_request;
    use std::str::FromStr;
    use std::sync::mpsc;

    fn sd() -> SdUuid {
        SdUuid::from_str("1f2c3d4e-5a6b-4c7d-8e9f-a0b1c2d3e4f5").unwrap()
    }

    fn vol(n: u8) -> VolUuid {
        VolUuid::from_str(&format!("00112233-4455-6677-8899-aabbccddee{n:02x}")).unwrap()
    }

    #[test]
    fn retries_back_off_and_log_each_error_once() {
        let mut r = Retry::default();
        let t0 = Instant::now();
        assert!(r.due(t0));
        assert!(r.failed(t0, "no LV".into()), "the first error is logged");
        assert!(!r.due(t0));
        assert!(r.due(t0 + SERVICE_TICK));
        let mut delays = vec![Retry::delay(0)];
        for _ in 0..20 {
            assert!(!r.failed(t0, "no LV".into()), "the same error again");
            delays.push(r.next.unwrap() - t0);
        }
        assert_eq!(delays[0], SERVICE_TICK);
        assert_eq!(delays[1], 2 * SERVICE_TICK);
        assert_eq!(delays[2], 4 * SERVICE_TICK);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert_eq!(*delays.last().unwrap(), RETRY_CAP);
        assert!(r.failed(t0, "I/O error".into()), "a new error is logged");
    }

    /// A fake storage for the watermark's round: every LV is over its
    /// watermark; the SPM never answers `slow`'s extend.
    struct Fake {
        lvs: Vec<VolUuid>,
        slow: VolUuid,
        checked: Mutex<Vec<VolUuid>>,
        finished: Mutex<Vec<VolUuid>>,
    }

    impl Watch for Fake {
        type Lv = VolUuid;
        type Sent = (VolUuid, Instant);
        fn key(lv: &VolUuid) -> (SdUuid, VolUuid) {
            (sd(), *lv)
        }
        fn thin_lvs(&self) -> Vec<VolUuid> {
            self.lvs.clone()
        }
        fn check(&self, lv: &VolUuid) -> StorageResult<Option<(VolUuid, Instant)>> {
            self.checked.lock().unwrap().push(*lv);
            Ok(Some((*lv, Instant::now())))
        }
        fn sent_at(sent: &(VolUuid, Instant)) -> Instant {
            sent.1
        }
        fn wait(&self, sent: &(VolUuid, Instant), deadline: Instant) -> StorageResult<Option<u64>> {
            if sent.0 == self.slow {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                return Ok(None);
            }
            Ok(Some(100))
        }
        fn finish(&self, sent: &(VolUuid, Instant), answer: u64) -> StorageResult<u64> {
            self.finished.lock().unwrap().push(sent.0);
            Ok(answer * MIB)
        }
        fn no_answer(_: &(VolUuid, Instant), _: Duration) -> StorageError {
            StorageError::new(Code::LogicalVolumeExtendError, "test", "no answer")
        }
    }

    /// One LV whose extend the SPM does not answer holds neither the
    /// other LVs' requests (all sent in the same round) nor the round
    /// (bounded), and is not asked again while its request waits.
    #[test]
    fn a_slow_extend_does_not_hold_the_other_lvs() {
        let fake = Fake {
            lvs: vec![vol(1), vol(2), vol(3)],
            slow: vol(1),
            checked: Mutex::default(),
            finished: Mutex::default(),
        };
        let stop = AtomicBool::new(false);
        let mut pending = HashMap::new();
        let timeout = Duration::from_secs(60);
        let t = Instant::now();
        watermark_round(
            &fake,
            &mut pending,
            t + Duration::from_millis(300),
            timeout,
            &stop,
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(*fake.checked.lock().unwrap(), [vol(1), vol(2), vol(3)]);
        let mut finished = fake.finished.lock().unwrap().clone();
        finished.sort();
        assert_eq!(finished, [vol(2), vol(3)]);
        assert_eq!(pending.len(), 1);
        // The next round: the slow one's request still waits, and is not
        // asked again; the others are checked again.
        watermark_round(
            &fake,
            &mut pending,
            Instant::now() + Duration::from_millis(100),
            timeout,
            &stop,
        );
        assert_eq!(
            *fake.checked.lock().unwrap(),
            [vol(1), vol(2), vol(3), vol(2), vol(3)]
        );
        assert_eq!(pending.len(), 1);
        // Past its timeout it is given up, and asked again next round.
        watermark_round(
            &fake,
            &mut pending,
            Instant::now() + Duration::from_millis(100),
            Duration::ZERO,
            &stop,
        );
        assert!(pending.is_empty());
    }

    /// Stopping the mailboxes joins their threads after the map's lock:
    /// a thread stuck in an extend does not hold everyone that needs the
    /// map.
    #[test]
    fn stop_joins_the_threads_outside_the_lock() {
        let areas = crate::mailbox::test_areas::areas();
        let (inbox, outbox) = (areas.inbox.clone(), areas.outbox.clone());
        let mut mb = Mailbox::default();
        mb.set(0, &Extend::new(sd(), vol(1), 10).unwrap().to_bytes());
        crate::mailbox::io::write(&inbox, MAILBOX_SIZE as u64, &mb.to_bytes()).unwrap();
        let (entered, entered_rx) = mpsc::channel::<()>();
        let (release, released) = mpsc::channel::<()>();
        let (entered, released) = (Mutex::new(entered), Mutex::new(released));
        let monitor = SpmMonitor::start(
            SpmConfig {
                inbox,
                outbox,
                max_host: HostId::new(4).unwrap(),
                event_poll: Duration::from_millis(20),
                full_poll: Duration::from_secs(3600),
            },
            per_request(move |_, e| {
                let _ = entered.lock().unwrap().send(());
                let _ = released.lock().unwrap().recv();
                Reply::Size(e.size_mib)
            }),
        )
        .unwrap();
        let mailboxes = Mailboxes::default();
        let sp = SpUuid::from_str("5f2c3d4e-5a6b-4c7d-8e9f-a0b1c2d3e4f5").unwrap();
        mailboxes.lock().spms.insert(sp, (sd(), monitor));
        entered_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let got_the_lock = std::thread::scope(|s| {
            let stopping = s.spawn(|| mailboxes.stop());
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut got = false;
            // Until the stop took the monitor out, then the lock is free
            // while the thread is joined.
            while Instant::now() < deadline {
                if let Ok(st) = mailboxes.state.try_lock() {
                    if st.spms.is_empty() {
                        got = true;
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            release.send(()).unwrap();
            stopping.join().unwrap();
            got
        });
        assert!(
            got_the_lock,
            "the map's lock was held while a thread was joined"
        );
    }
}
