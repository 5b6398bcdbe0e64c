//! A typed wrapper over the lvm2 commands.
//!
//! Every call goes through the one [`CommandRunner`] with a timeout, and
//! every call carries a `--config` string built here:
//!
//! * a device filter that accepts exactly the devices depot was told about
//!   ([`Lvm::set_devices`]: the multipath maps of connected LUNs) and
//!   rejects everything else. Without it LVM also scans the paths under a
//!   multipath map (or, in the test VM, the disk behind the iSCSI target)
//!   and reports duplicate PVs, and it would scan depot's own LVs for
//!   nested PVs. With no devices set, LVM sees nothing.
//! * `obtain_device_list_from_udev=0` and `hints="none"`: the device list
//!   comes from the filter, not from a udev database that may lag.
//! * `backup { backup=0 archive=0 }`: the VG metadata lives on shared
//!   storage and is changed by one host (the SPM); per-host backup files in
//!   /etc/lvm would be stale on every other host.
//! * whatever [`Lvm::with_extra_config`] adds. On a kernel without
//!   device-mapper the tests pass `global { activation = 0 }`, so metadata
//!   changes work and activation is a no-op (which [`Lvm::activate`]
//!   detects rather than trusts).
//!
//! Reports are read with `--reportformat json --units b --nosuffix` into
//! [`PvInfo`], [`VgInfo`] and [`LvInfo`].
//!
//! # The cache
//!
//! [`Lvm::vg`] and [`Lvm::lvs`] answer from a per-VG cache when it is
//! fresher than `max_age`. A change through this wrapper updates the cached
//! LV list in place where it knows the result exactly (`lvcreate`,
//! `lvremove`, LV tags) and drops the entry otherwise (or when the command
//! failed), so depot always sees its own changes without a new `lvs`.
//! Other hosts (an SPM elsewhere) can change a shared VG behind depot's
//! back; `max_age` bounds how long that stays unseen, and callers that look
//! for one LV and miss it call [`Lvm::lvs_fresh`], which re-reads once.
//! [`Lvm::calls`] counts invocations, for the benchmark.

mod report;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

pub use report::{LvInfo, PvInfo, ReportError, VgInfo};

use crate::{Cmd, CmdError, CommandRunner};

/// The fields each report asks for; the parsers expect exactly these.
pub const PV_FIELDS: &str = "pv_name,pv_uuid,pv_size,dev_size,vg_name,vg_uuid,pe_start,\
pv_pe_count,pv_pe_alloc_count,pv_mda_count,pv_mda_used_count,pv_mda_size";
pub const VG_FIELDS: &str = "vg_name,vg_uuid,vg_attr,vg_size,vg_free,vg_extent_size,\
vg_extent_count,vg_free_count,vg_tags,vg_mda_size,vg_mda_free,pv_count,lv_count";
pub const LV_FIELDS: &str = "vg_name,lv_name,lv_uuid,lv_size,lv_attr,lv_tags,devices";

/// Why an LVM call failed.
#[derive(Debug, thiserror::Error)]
pub enum LvmError {
    /// The command ran and failed (or timed out); the error keeps argv,
    /// exit code and stderr.
    #[error(transparent)]
    Command(#[from] CmdError),
    #[error("{op}: {source}")]
    Report {
        op: &'static str,
        #[source]
        source: ReportError,
    },
    /// A name or tag LVM would refuse or misread.
    #[error("{op}: invalid {what} {value:?}")]
    Invalid {
        op: &'static str,
        what: &'static str,
        value: String,
    },
    /// `lvchange -ay` succeeded but no device node appeared (activation is
    /// disabled, or device-mapper is missing).
    #[error("activate {vg}/{lv}: lvchange succeeded but {path} does not exist")]
    NotActivated {
        vg: String,
        lv: String,
        path: PathBuf,
    },
    #[error("volume group {0} not found")]
    VgNotFound(String),
}

impl LvmError {
    /// stderr of the failed command, if this was one.
    pub fn stderr(&self) -> &str {
        match self {
            LvmError::Command(e) => e.stderr(),
            _ => "",
        }
    }
}

pub type LvmResult<T> = Result<T, LvmError>;

/// Characters LVM accepts in VG/LV names.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 127
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b))
}

/// Characters LVM accepts in tags (lvm2 `validate_tag`).
pub fn valid_tag(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 1024
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+.-/=!:#&".contains(&b))
}

fn check_name(op: &'static str, what: &'static str, v: &str) -> LvmResult<()> {
    if valid_name(v) {
        Ok(())
    } else {
        Err(LvmError::Invalid {
            op,
            what,
            value: v.to_owned(),
        })
    }
}

fn check_tags<'a>(op: &'static str, tags: impl IntoIterator<Item = &'a String>) -> LvmResult<()> {
    for t in tags {
        if !valid_tag(t) {
            return Err(LvmError::Invalid {
                op,
                what: "tag",
                value: t.clone(),
            });
        }
    }
    Ok(())
}

#[derive(Default)]
struct VgEntry {
    vg: Option<(Instant, VgInfo)>,
    lvs: Option<(Instant, Vec<LvInfo>)>,
}

/// The lvm2 commands, typed. Cheap to clone; clones share the device set,
/// the cache and the call counter.
#[derive(Clone)]
pub struct Lvm {
    runner: CommandRunner,
    timeout: Duration,
    extra_config: Arc<str>,
    devices: Arc<RwLock<BTreeSet<PathBuf>>>,
    cache: Arc<Mutex<HashMap<String, VgEntry>>>,
    max_age: Arc<Mutex<Option<Duration>>>,
    calls: Arc<AtomicU64>,
}

impl Lvm {
    /// LVM with the cache on (entries live `max_age` at most).
    pub fn new(runner: CommandRunner, timeout: Duration) -> Self {
        Lvm {
            runner: runner.with_env("LVM_SUPPRESS_FD_WARNINGS", "1"),
            timeout,
            extra_config: Arc::from(""),
            devices: Arc::default(),
            cache: Arc::default(),
            max_age: Arc::new(Mutex::new(Some(Duration::from_secs(30)))),
            calls: Arc::default(),
        }
    }

    /// How long a cached VG or LV report is trusted; `None` turns the
    /// cache off (every read runs a command).
    pub fn with_cache(self, max_age: Option<Duration>) -> Self {
        self.set_cache(max_age);
        self
    }

    /// Changes the cache's `max_age` for this wrapper and its clones (the
    /// benchmark compares on and off in one daemon-less run).
    pub fn set_cache(&self, max_age: Option<Duration>) {
        *self.max_age.lock().unwrap_or_else(PoisonError::into_inner) = max_age;
        self.invalidate_all();
    }

    /// Extra `--config` text, e.g. `global { activation = 0 }`.
    pub fn with_extra_config(mut self, text: &str) -> Self {
        self.extra_config = Arc::from(text);
        self
    }

    /// The devices LVM may see; all others are filtered out.
    pub fn set_devices(&self, devices: impl IntoIterator<Item = PathBuf>) {
        let mut set = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        *set = devices.into_iter().collect();
        drop(set);
        self.invalidate_all();
    }

    /// Adds devices to the set (e.g. the LUNs of a VG being created).
    pub fn add_devices(&self, devices: impl IntoIterator<Item = PathBuf>) {
        let mut set = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        let before = set.len();
        set.extend(devices);
        let changed = set.len() != before;
        drop(set);
        if changed {
            self.invalidate_all();
        }
    }

    pub fn devices(&self) -> Vec<PathBuf> {
        self.devices
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// How many LVM commands ran through this wrapper.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The `--config` string of every command.
    pub fn config_string(&self) -> String {
        let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
        let mut filter: Vec<String> = devices
            .iter()
            .map(|d| format!("\"a|^{}$|\"", regex_escape(&d.to_string_lossy())))
            .collect();
        filter.push("\"r|.*|\"".into());
        let filter = filter.join(",");
        format!(
            "devices {{ preferred_names=[\"^/dev/mapper/\"] ignore_suspended_devices=1 \
             write_cache_state=0 disable_after_error_count=3 \
             filter=[{filter}] global_filter=[{filter}] \
             obtain_device_list_from_udev=0 hints=\"none\" }} \
             global {{ use_lvmpolld=1 }} backup {{ backup=0 archive=0 }} {}",
            self.extra_config
        )
    }

    fn cmd(&self, program: &str) -> Cmd {
        Cmd::new("lvm", self.timeout)
            .arg(program)
            .arg("--config")
            .arg(self.config_string())
    }

    fn run(&self, cmd: &Cmd) -> LvmResult<String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let out = self.runner.run(cmd)?;
        Ok(out.stdout_lossy().into_owned())
    }

    fn report_cmd(&self, program: &str, fields: &str) -> Cmd {
        self.cmd(program).args([
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            fields,
        ])
    }

    // ---- the cache ----

    fn fresh(&self, at: Instant) -> bool {
        self.max_age
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|m| at.elapsed() < m)
    }

    /// Forgets what is cached about `vg`.
    pub fn invalidate(&self, vg: &str) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(vg);
    }

    /// Applies a change this wrapper just made to the cached LV list of
    /// `vg`, instead of dropping it: the next read needs no `lvs`. `freed`
    /// extents (negative: taken) are added to the cached VG's free space.
    /// Without a cached list, nothing to do.
    fn update_cached_lvs(&self, vg: &str, freed: i64, change: impl FnOnce(&mut Vec<LvInfo>)) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = cache.get_mut(vg) {
            if let Some((_, v)) = entry.vg.as_mut() {
                v.free_count = v.free_count.saturating_add_signed(freed);
                v.free = v.free_count * v.extent_size;
            }
            if let Some((_, lvs)) = entry.lvs.as_mut() {
                change(lvs);
            }
        }
    }

    pub fn invalidate_all(&self) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    // ---- reports ----

    /// Every PV among the filtered devices (one `pvs`). Devices that are not
    /// PVs are simply absent.
    pub fn pvs(&self) -> LvmResult<Vec<PvInfo>> {
        let out = self.run(&self.report_cmd("pvs", PV_FIELDS))?;
        report::parse_pvs(&out).map_err(|source| LvmError::Report { op: "pvs", source })
    }

    /// The PVs of one VG.
    pub fn pvs_of(&self, vg: &str) -> LvmResult<Vec<PvInfo>> {
        check_name("pvs", "VG name", vg)?;
        let cmd = self
            .report_cmd("pvs", PV_FIELDS)
            .args(["--select", &format!("vg_name={vg}")]);
        let out = self.run(&cmd)?;
        report::parse_pvs(&out).map_err(|source| LvmError::Report { op: "pvs", source })
    }

    /// Every VG on the filtered devices (one `vgs`, not cached).
    pub fn vgs(&self) -> LvmResult<Vec<VgInfo>> {
        let out = self.run(&self.report_cmd("vgs", VG_FIELDS))?;
        let vgs =
            report::parse_vgs(&out).map_err(|source| LvmError::Report { op: "vgs", source })?;
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        for vg in &vgs {
            cache.entry(vg.name.clone()).or_default().vg = Some((now, vg.clone()));
        }
        Ok(vgs)
    }

    /// One VG, from the cache when fresh.
    pub fn vg(&self, name: &str) -> LvmResult<VgInfo> {
        check_name("vgs", "VG name", name)?;
        if let Some((at, vg)) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .and_then(|e| e.vg.clone())
        {
            if self.fresh(at) {
                return Ok(vg);
            }
        }
        self.vg_fresh(name)
    }

    /// One VG, read now.
    pub fn vg_fresh(&self, name: &str) -> LvmResult<VgInfo> {
        check_name("vgs", "VG name", name)?;
        let cmd = self
            .report_cmd("vgs", VG_FIELDS)
            .arg(name)
            .ok_codes(&[0, 5]);
        let out = self.run(&cmd)?;
        let vg = report::parse_vgs(&out)
            .map_err(|source| LvmError::Report { op: "vgs", source })?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| LvmError::VgNotFound(name.to_owned()))?;
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .vg = Some((Instant::now(), vg.clone()));
        Ok(vg)
    }

    /// The LVs of a VG, from the cache when fresh.
    pub fn lvs(&self, vg: &str) -> LvmResult<Vec<LvInfo>> {
        check_name("lvs", "VG name", vg)?;
        if let Some((at, lvs)) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(vg)
            .and_then(|e| e.lvs.clone())
        {
            if self.fresh(at) {
                return Ok(lvs);
            }
        }
        self.lvs_fresh(vg)
    }

    /// The LVs of a VG, read now.
    pub fn lvs_fresh(&self, vg: &str) -> LvmResult<Vec<LvInfo>> {
        check_name("lvs", "VG name", vg)?;
        let out = self.run(&self.report_cmd("lvs", LV_FIELDS).arg(vg))?;
        let lvs =
            report::parse_lvs(&out).map_err(|source| LvmError::Report { op: "lvs", source })?;
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(vg.to_owned())
            .or_default()
            .lvs = Some((Instant::now(), lvs.clone()));
        Ok(lvs)
    }

    /// One LV: from the cache, and if it is not there, read again once
    /// (another host may have created it since).
    pub fn lv(&self, vg: &str, lv: &str) -> LvmResult<Option<LvInfo>> {
        if let Some(found) = self.lvs(vg)?.into_iter().find(|l| l.name == lv) {
            return Ok(Some(found));
        }
        Ok(self.lvs_fresh(vg)?.into_iter().find(|l| l.name == lv))
    }

    // ---- changes ----

    /// `pvcreate` with VDSM's metadata size (128 MiB: room for thousands
    /// of LVs' tags). `force` wipes an existing signature (`-ff`).
    pub fn pvcreate(&self, devices: &[PathBuf], force: bool) -> LvmResult<()> {
        self.add_devices(devices.iter().cloned());
        let mut cmd = self
            .cmd("pvcreate")
            .args(["--metadatasize", "128m", "--yes"]);
        if force {
            cmd = cmd.arg("-ff");
        }
        self.run(&cmd.args(devices.iter().map(|d| d.as_os_str().to_owned())))?;
        Ok(())
    }

    /// `vgcreate` on PVs made by [`pvcreate`](Self::pvcreate).
    pub fn vgcreate(
        &self,
        name: &str,
        devices: &[PathBuf],
        extent_size: u64,
        tags: &[String],
    ) -> LvmResult<()> {
        check_name("vgcreate", "VG name", name)?;
        check_tags("vgcreate", tags)?;
        let mut cmd = self
            .cmd("vgcreate")
            .args(["--physicalextentsize", &format!("{}b", extent_size)]);
        for t in tags {
            cmd = cmd.args(["--addtag", t]);
        }
        cmd = cmd.arg(name);
        self.run(&cmd.args(devices.iter().map(|d| d.as_os_str().to_owned())))?;
        self.invalidate(name);
        Ok(())
    }

    pub fn vgextend(&self, vg: &str, devices: &[PathBuf]) -> LvmResult<()> {
        check_name("vgextend", "VG name", vg)?;
        let cmd = self
            .cmd("vgextend")
            .arg(vg)
            .args(devices.iter().map(|d| d.as_os_str().to_owned()));
        self.run(&cmd)?;
        self.invalidate(vg);
        Ok(())
    }

    pub fn pvresize(&self, vg: &str, device: &Path) -> LvmResult<()> {
        self.run(&self.cmd("pvresize").arg(device))?;
        self.invalidate(vg);
        Ok(())
    }

    /// Adds and removes VG tags in one command.
    pub fn vg_tags(&self, vg: &str, add: &[String], del: &[String]) -> LvmResult<()> {
        check_name("vgchange", "VG name", vg)?;
        check_tags("vgchange", add.iter().chain(del))?;
        let mut cmd = self.cmd("vgchange");
        for t in del {
            cmd = cmd.args(["--deltag", t]);
        }
        for t in add {
            cmd = cmd.args(["--addtag", t]);
        }
        self.run(&cmd.arg(vg))?;
        self.invalidate(vg);
        Ok(())
    }

    /// Removes a VG and its LVs (`vgremove -f`).
    pub fn vgremove(&self, vg: &str) -> LvmResult<()> {
        check_name("vgremove", "VG name", vg)?;
        self.run(&self.cmd("vgremove").args(["-f", vg]))?;
        self.invalidate(vg);
        Ok(())
    }

    pub fn pvremove(&self, devices: &[PathBuf]) -> LvmResult<()> {
        let cmd = self
            .cmd("pvremove")
            .args(["-ff", "--yes"])
            .args(devices.iter().map(|d| d.as_os_str().to_owned()));
        self.run(&cmd)?;
        Ok(())
    }

    /// Creates an LV, inactive and not zeroed (zeroing needs activation;
    /// depot activates explicitly where it needs the device). LVM rounds
    /// the size up to whole extents; here it is first rounded up to 512.
    pub fn lvcreate(&self, vg: &str, lv: &str, size: u64, tags: &[String]) -> LvmResult<()> {
        let size = size.div_ceil(512).max(1) * 512;
        check_name("lvcreate", "VG name", vg)?;
        check_name("lvcreate", "LV name", lv)?;
        check_tags("lvcreate", tags)?;
        let mut cmd = self.cmd("lvcreate").args([
            "--activate",
            "n",
            "--zero",
            "n",
            "--wipesignatures",
            "n",
            "--contiguous",
            "n",
            "--size",
            &format!("{size}b"),
            "--name",
            lv,
        ]);
        for t in tags {
            cmd = cmd.args(["--addtag", t]);
        }
        let extent = self.cached_extent_size(vg);
        match self.run(&cmd.arg(vg)) {
            Ok(_) => {}
            Err(e) => {
                self.invalidate(vg);
                return Err(e);
            }
        }
        match extent {
            // The new LV as `lvs` would show it, but for its UUID and
            // devices, which depot does not use.
            Some(extent) => self.update_cached_lvs(vg, -(size.div_ceil(extent) as i64), |lvs| {
                lvs.push(LvInfo {
                    vg_name: vg.to_owned(),
                    name: lv.to_owned(),
                    uuid: String::new(),
                    size: size.div_ceil(extent) * extent,
                    attr: "-wi-------".to_owned(),
                    tags: tags.to_vec(),
                    devices: String::new(),
                })
            }),
            None => self.invalidate(vg),
        }
        Ok(())
    }

    fn cached_extent_size(&self, vg: &str) -> Option<u64> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = cache.get(vg)?;
        entry.lvs.as_ref()?;
        entry.vg.as_ref().map(|(_, v)| v.extent_size)
    }

    /// Grows an LV to `size` bytes (rounded up to extents by LVM).
    pub fn lvextend(&self, vg: &str, lv: &str, size: u64) -> LvmResult<()> {
        let size = size.div_ceil(512).max(1) * 512;
        check_name("lvextend", "LV name", lv)?;
        let cmd = self
            .cmd("lvextend")
            .args(["--size", &format!("{size}b"), &format!("{vg}/{lv}")]);
        self.run(&cmd)?;
        self.invalidate(vg);
        Ok(())
    }

    pub fn lvremove(&self, vg: &str, lvs: &[&str]) -> LvmResult<()> {
        check_name("lvremove", "VG name", vg)?;
        let mut cmd = self.cmd("lvremove").arg("-f");
        for lv in lvs {
            check_name("lvremove", "LV name", lv)?;
            cmd = cmd.arg(format!("{vg}/{lv}"));
        }
        if let Err(e) = self.run(&cmd) {
            self.invalidate(vg);
            return Err(e);
        }
        let freed: u64 = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(vg)
            .and_then(|e| e.lvs.as_ref())
            .map(|(_, cached)| {
                cached
                    .iter()
                    .filter(|l| lvs.contains(&l.name.as_str()))
                    .map(|l| l.size)
                    .sum()
            })
            .unwrap_or(0);
        match self.cached_extent_size(vg) {
            Some(extent) => self.update_cached_lvs(vg, (freed / extent) as i64, |cached| {
                cached.retain(|l| !lvs.contains(&l.name.as_str()))
            }),
            None => self.invalidate(vg),
        }
        Ok(())
    }

    /// Adds and removes LV tags in one command.
    pub fn lv_tags(&self, vg: &str, lv: &str, add: &[String], del: &[String]) -> LvmResult<()> {
        check_name("lvchange", "LV name", lv)?;
        check_tags("lvchange", add.iter().chain(del))?;
        let mut cmd = self.cmd("lvchange");
        for t in del {
            cmd = cmd.args(["--deltag", t]);
        }
        for t in add {
            cmd = cmd.args(["--addtag", t]);
        }
        if let Err(e) = self.run(&cmd.arg(format!("{vg}/{lv}"))) {
            self.invalidate(vg);
            return Err(e);
        }
        self.update_cached_lvs(vg, 0, |lvs| {
            if let Some(l) = lvs.iter_mut().find(|l| l.name == lv) {
                l.tags.retain(|t| !del.contains(t));
                for t in add {
                    if !l.tags.contains(t) {
                        l.tags.push(t.clone());
                    }
                }
            }
        });
        Ok(())
    }

    /// The device node of an active LV.
    pub fn lv_path(vg: &str, lv: &str) -> PathBuf {
        PathBuf::from(format!("/dev/{vg}/{lv}"))
    }

    /// Activates LVs (one command) and checks that each device node exists:
    /// `lvchange -ay` exits 0 without doing anything when activation is
    /// disabled. Activating an active LV is success.
    pub fn activate(&self, vg: &str, lvs: &[&str]) -> LvmResult<Vec<PathBuf>> {
        if lvs.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = self.cmd("lvchange").args(["--activate", "y"]);
        for lv in lvs {
            check_name("lvchange", "LV name", lv)?;
            cmd = cmd.arg(format!("{vg}/{lv}"));
        }
        // Activation changes no metadata: the cache stays (depot checks
        // activity by the device node, not lv_attr).
        self.run(&cmd)?;
        lvs.iter()
            .map(|lv| {
                let path = Self::lv_path(vg, lv);
                if path.exists() {
                    Ok(path)
                } else {
                    Err(LvmError::NotActivated {
                        vg: vg.to_owned(),
                        lv: (*lv).to_owned(),
                        path,
                    })
                }
            })
            .collect()
    }

    /// Deactivates LVs (one command). Inactive LVs are success.
    pub fn deactivate(&self, vg: &str, lvs: &[&str]) -> LvmResult<()> {
        if lvs.is_empty() {
            return Ok(());
        }
        let mut cmd = self.cmd("lvchange").args(["--activate", "n"]);
        for lv in lvs {
            check_name("lvchange", "LV name", lv)?;
            cmd = cmd.arg(format!("{vg}/{lv}"));
        }
        self.run(&cmd)?;
        Ok(())
    }

    /// Reloads an active LV's device-mapper table from the VG metadata
    /// (`lvchange --refresh`): how a host sees an extend another host (the
    /// SPM) made. The cached report of `vg` is dropped, so the next read
    /// has the new size.
    pub fn refresh(&self, vg: &str, lv: &str) -> LvmResult<()> {
        check_name("lvchange", "VG name", vg)?;
        check_name("lvchange", "LV name", lv)?;
        let r = self.run(
            &self
                .cmd("lvchange")
                .args(["--refresh", &format!("{vg}/{lv}")]),
        );
        self.invalidate(vg);
        r.map(|_| ())
    }

    /// Deactivates every LV of a VG (`vgchange -an`).
    pub fn deactivate_vg(&self, vg: &str) -> LvmResult<()> {
        check_name("vgchange", "VG name", vg)?;
        self.run(&self.cmd("vgchange").args(["--activate", "n", vg]))?;
        self.invalidate(vg);
        Ok(())
    }

    /// `vgck`: LVM's own consistency check of the VG metadata.
    pub fn vgck(&self, vg: &str) -> LvmResult<()> {
        check_name("vgck", "VG name", vg)?;
        self.run(&self.cmd("vgck").arg(vg))?;
        Ok(())
    }
}

/// Escapes a path for LVM's filter regex (`|` delimited).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lvm() -> Lvm {
        Lvm::new(CommandRunner::new(), Duration::from_secs(5))
    }

    #[test]
    fn filter_accepts_exactly_the_devices() {
        let l = lvm();
        assert!(l.config_string().contains("filter=[\"r|.*|\"]"));
        l.set_devices([PathBuf::from("/dev/mapper/3600a.b")]);
        let c = l.config_string();
        assert!(
            c.contains(r#"filter=["a|^/dev/mapper/3600a\.b$|","r|.*|"]"#),
            "{c}"
        );
        assert!(c.contains("backup=0"));
    }

    #[test]
    fn extra_config_is_appended() {
        let l = lvm().with_extra_config("global { activation = 0 }");
        assert!(l.config_string().ends_with("global { activation = 0 }"));
    }

    #[test]
    fn names_and_tags_are_checked_before_running() {
        let l = lvm();
        let e = l.lvcreate("vg", "bad name", 1, &[]).unwrap_err();
        assert!(
            matches!(
                e,
                LvmError::Invalid {
                    what: "LV name",
                    ..
                }
            ),
            "{e}"
        );
        let e = l.vg_tags("vg", &["MDT_X=a b".to_owned()], &[]).unwrap_err();
        assert!(matches!(e, LvmError::Invalid { what: "tag", .. }), "{e}");
        assert_eq!(l.calls(), 0, "nothing ran");
    }

    #[test]
    fn tag_charset_is_lvms() {
        assert!(valid_tag("MDT_PV0=pv:36001405abc&44&uuid:x"));
        assert!(valid_tag("IU_0b2f-11"));
        assert!(!valid_tag("a,b"));
        assert!(!valid_tag(""));
    }
}
