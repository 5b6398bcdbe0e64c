//! A sanlock daemon for tests: started with the LD_PRELOAD shim these
//! machines need, stopped on drop.
//!
//! ```ignore
//! let s = depot_testkit::sanlock::SanlockDaemon::start().expect("sanlock");
//! // ... depotd acquires host ids through it ...
//! assert!(s.lockspaces().unwrap().is_empty());
//! ```
//!
//! What it does (shared/reference/machine-facts.md, "sanlock daemon"):
//!
//! * The daemon sets RLIMIT_MEMLOCK, RTPRIO and CORE to unlimited at start
//!   and exits when that fails, as it does here (no CAP_SYS_RESOURCE in
//!   the container, `-l 0` does not skip it). So a shim whose `setrlimit`
//!   does nothing is compiled at test time (`cc -shared -fPIC`) into the
//!   harness directory and preloaded (`LD_PRELOAD`).
//! * `sanlock daemon -D -w 0 -l 0 -U root -G root`: in the foreground (the
//!   fixture owns the process), no watchdog (no /dev/watchdog, no wdmd
//!   here: nothing would reset a host that loses its lease), no mlockall,
//!   as root so it can open any test file. Ready when `sanlock client
//!   status` answers.
//! * Its socket, `/run/sanlock/sanlock.sock`, is fixed, so one daemon at a
//!   time: [`SanlockDaemon::start`] takes a machine-wide lock first (the
//!   file [`LOCK_PATH`], holding the owner's pid; one whose owner died is
//!   taken over), across threads and test binaries. A daemon a killed test
//!   left (its `LD_PRELOAD` names a `depot-sanlock-` directory) is shut
//!   down; any other running sanlock daemon is an error, as the tests
//!   would use it.
//! * Drop: `sanlock client shutdown -f 1` (drops every lockspace, as a
//!   test's host ids must not outlive it), waits for the process (SIGKILL
//!   after 30 s), releases the lock and removes the directory.
//!
//! * Several hosts in one test: [`SanlockHost`], a daemon each in a mount
//!   namespace of its own (a private tmpfs on `/run/sanlock`), under one
//!   [`NoDaemon`] lock the test holds.
//! * With the watchdog, as in production (the VM tier's guest): [`Wdmd`]
//!   (wdmd on softdog, `soft_noboot=1`) and
//!   [`SanlockHost::start_watched`] (`-w 1`, no shim).
//!
//! Needs root and the Debian packages `sanlock` and `gcc` (and
//! util-linux's `unshare` and `nsenter` for hosts).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::gluster::LockFile;
use crate::process::{cmdline, find_processes, pid_alive, run, signal, terminate};

/// The machine-wide lock serializing tests that run the sanlock daemon.
pub const LOCK_PATH: &str = "/tmp/depot-test-sanlock.lock";
/// The prefix of every harness directory.
pub const DIR_PREFIX: &str = "depot-sanlock-";
/// The daemon's pid file (sanlock's own, fixed).
pub const PID_FILE: &str = "/run/sanlock/sanlock.pid";

/// The variable naming its harness directory in the environment of every
/// daemon these fixtures start (with the shim, `LD_PRELOAD` names it too):
/// how a daemon a killed test left is told from anyone else's.
const HARNESS_ENV: &str = "DEPOT_SANLOCK_HARNESS";

const CLI_TIMEOUT: Duration = Duration::from_secs(30);
const LOCK_WAIT: Duration = Duration::from_secs(1800);
const READY_WAIT: Duration = Duration::from_secs(30);

const SHIM_C: &str = "\
#include <sys/resource.h>
/* sanlock sets unlimited RLIMIT_MEMLOCK/RTPRIO/CORE at start and exits when
   it may not (no CAP_SYS_RESOURCE in a container): pretend it worked. */
int setrlimit(__rlimit_resource_t r, const struct rlimit *l) { (void)r; (void)l; return 0; }
";

/// The machine-wide sanlock lock held with no daemon running: for a test
/// whose depotd must find no sanlock daemon whatever other tests run (a
/// daemon another test starts meanwhile would take this depotd's host ids
/// and leases, and its forced shutdown kills the holders of leases).
pub struct NoDaemon {
    _lock: LockFile,
}

impl NoDaemon {
    /// Waits for the lock, then shuts down a daemon a killed test left;
    /// any other running sanlock daemon is an error.
    pub fn hold() -> Result<NoDaemon, String> {
        let lock = LockFile::acquire(Path::new(LOCK_PATH), LOCK_WAIT)?;
        stop_leftovers()?;
        Ok(NoDaemon { _lock: lock })
    }
}

/// A running sanlock daemon owned by this test.
pub struct SanlockDaemon {
    dir: PathBuf,
    child: Option<Child>,
    // Dropped last: the shutdown runs under the lock.
    _lock: LockFile,
}

impl SanlockDaemon {
    /// Whether the programs are installed.
    pub fn available() -> bool {
        crate::have_program("sanlock") && crate::have_program("cc")
    }

    /// Builds the shim and starts the daemon (see the module docs).
    pub fn start() -> Result<SanlockDaemon, String> {
        if !Self::available() {
            return Err("sanlock or cc missing: apt-get install -y sanlock gcc".into());
        }
        let lock = LockFile::acquire(Path::new(LOCK_PATH), LOCK_WAIT)?;
        stop_leftovers()?;
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", std::process::id()));
        let so = harness_dir(&dir)?;
        let (log, log2) = daemon_log(&dir)?;
        let started = Instant::now();
        let child = Command::new("sanlock")
            .args(DAEMON_ARGS)
            .env("LD_PRELOAD", &so)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("sanlock daemon: {e}"))?;
        let mut d = SanlockDaemon {
            dir,
            child: Some(child),
            _lock: lock,
        };
        loop {
            if let Some(c) = d.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!(
                        "sanlock daemon exited ({status}); log: {}",
                        d.log()
                    ));
                }
            }
            match d.status() {
                Ok(_) => break,
                Err(e) if started.elapsed() > READY_WAIT => {
                    return Err(format!("sanlock daemon not ready: {e}; log: {}", d.log()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        eprintln!(
            "sanlock: daemon pid {} ready in {:?}",
            d.pid(),
            started.elapsed()
        );
        Ok(d)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The daemon's log so far (stderr with `-D`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// `sanlock client status`.
    pub fn status(&self) -> Result<String, String> {
        run("sanlock", &["client", "status"], CLI_TIMEOUT)
    }

    /// The lockspaces the daemon holds or is adding, as `sanlock client
    /// status` lists them (`s NAME:HOST_ID:PATH:OFFSET[ ADD|REM]`): the
    /// whole `NAME:...` field and any state after it.
    pub fn lockspaces(&self) -> Result<Vec<String>, String> {
        Ok(lockspace_lines(&self.status()?))
    }

    /// The resource leases the daemon's clients hold, as `sanlock client
    /// status` lists them (`r LOCKSPACE:NAME:PATH:OFFSET:LVER p PID`),
    /// without the `r `.
    pub fn resources(&self) -> Result<Vec<String>, String> {
        Ok(tagged_lines(&self.status()?, "r "))
    }

    /// Stops the daemon now (what a test of "sanlock went away" needs);
    /// the lock is kept until drop.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Err(e) = run("sanlock", &["client", "shutdown", "-f", "1"], CLI_TIMEOUT) {
            eprintln!("sanlock: shutdown: {e}");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    eprintln!("sanlock: the daemon did not stop; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
}

impl Drop for SanlockDaemon {
    fn drop(&mut self) {
        let t = Instant::now();
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        eprintln!("sanlock: stopped in {:?}", t.elapsed());
    }
}

/// One host of a test with several: a sanlock daemon in a mount namespace
/// of its own (`unshare -m --propagation private`), with a private tmpfs
/// on `/run/sanlock` so that its fixed socket does not meet another
/// host's. A program runs on this host (talks to this daemon) when started
/// with [`ns_prefix`](Self::ns_prefix): depotd, `sanlock client`. The
/// rest of the file system is shared, as the storage of hosts is.
///
/// Needs the machine-wide lock ([`NoDaemon`], held by the test for all its
/// hosts: no daemon in the root namespace meanwhile, and a host a killed
/// test left is stopped by the next holder). Drop shuts the daemon down
/// (thawed first if frozen); [`kill9`](Self::kill9) and
/// [`freeze`](Self::freeze) are the failures the tests make.
pub struct SanlockHost<'l> {
    name: String,
    dir: PathBuf,
    child: Option<Child>,
    pid: u32,
    _lock: std::marker::PhantomData<&'l NoDaemon>,
}

impl<'l> SanlockHost<'l> {
    /// Starts host `name`'s daemon (a word: it names the harness
    /// directory, `depot-sanlock-<test pid>-<name>`) and waits until it
    /// answers.
    pub fn start(lock: &'l NoDaemon, name: &str) -> Result<SanlockHost<'l>, String> {
        if !SanlockDaemon::available() || !crate::have_program("unshare") {
            return Err(
                "sanlock, cc or unshare missing: apt-get install -y sanlock gcc util-linux".into(),
            );
        }
        SanlockHost::launch(lock, name, false)
    }

    /// Like [`start`](Self::start), the daemon run as in production: with
    /// the watchdog (`-w 1`, through `wdmd`, which must run: [`Wdmd`])
    /// and without the shim (where a watchdog device exists, this is a
    /// real or virtual machine whose root may raise its limits: the VM
    /// tier's guest, which has no compiler either).
    pub fn start_watched(
        lock: &'l NoDaemon,
        name: &str,
        _wdmd: &'l Wdmd,
    ) -> Result<SanlockHost<'l>, String> {
        if !crate::have_program("sanlock") || !crate::have_program("unshare") {
            return Err("sanlock or unshare missing: apt-get install -y sanlock util-linux".into());
        }
        SanlockHost::launch(lock, name, true)
    }

    fn launch(_lock: &'l NoDaemon, name: &str, watched: bool) -> Result<SanlockHost<'l>, String> {
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{name}", std::process::id()));
        fresh_dir(&dir)?;
        let so = if watched { None } else { Some(shim(&dir)?) };
        let (log, log2) = daemon_log(&dir)?;
        let mut args = DAEMON_ARGS.to_vec();
        if watched {
            args[3] = "1"; // -w 1
        }
        // The mount point, in the root namespace (the tmpfs covers it in
        // the host's only).
        std::fs::create_dir_all("/run/sanlock").map_err(|e| format!("mkdir /run/sanlock: {e}"))?;
        let started = Instant::now();
        // unshare and sh exec: the child's pid is the daemon's.
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "--", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o mode=0755 depot-sanlock-{name} /run/sanlock && exec sanlock {}",
                args.join(" ")
            ))
            .env(HARNESS_ENV, &dir);
        if let Some(so) = &so {
            cmd.env("LD_PRELOAD", so);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("unshare sanlock daemon: {e}"))?;
        let pid = child.id();
        let mut h = SanlockHost {
            name: name.to_owned(),
            dir,
            child: Some(child),
            pid,
            _lock: std::marker::PhantomData,
        };
        loop {
            if let Some(c) = h.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!(
                        "host {name}: sanlock daemon exited ({status}); log: {}",
                        h.log()
                    ));
                }
            }
            let ours = cmdline(pid).first().is_some_and(|a| a.ends_with("sanlock"));
            match h.status() {
                Ok(_) if ours => break,
                Ok(_) | Err(_) if started.elapsed() > READY_WAIT => {
                    return Err(format!(
                        "host {name}: sanlock daemon not ready; log: {}",
                        h.log()
                    ))
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        eprintln!(
            "sanlock: host {name}'s daemon pid {pid} ready in {:?} ({})",
            started.elapsed(),
            if watched {
                "watchdog on, through wdmd"
            } else {
                "no watchdog"
            }
        );
        Ok(h)
    }

    /// The daemon's pid (also after it died).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The argv that runs a command on this host: `nsenter -t PID -m --`
    /// (nsenter execs it: the command keeps its pid).
    pub fn ns_prefix(&self) -> Vec<String> {
        ["nsenter", "-t", &self.pid.to_string(), "-m", "--"]
            .map(str::to_owned)
            .to_vec()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// `sanlock ARGS` on this host: its output.
    pub fn sanlock(&self, args: &[&str]) -> Result<String, String> {
        let prefix = self.ns_prefix();
        let mut argv: Vec<&str> = prefix[1..].iter().map(String::as_str).collect();
        argv.push("sanlock");
        argv.extend_from_slice(args);
        run(&prefix[0], &argv, CLI_TIMEOUT).map_err(|e| format!("host {}: {e}", self.name))
    }

    /// `sanlock client status` on this host.
    pub fn status(&self) -> Result<String, String> {
        self.sanlock(&["client", "status"])
    }

    /// This host's lockspaces, as [`SanlockDaemon::lockspaces`].
    pub fn lockspaces(&self) -> Result<Vec<String>, String> {
        Ok(lockspace_lines(&self.status()?))
    }

    /// This host's resource leases, as [`SanlockDaemon::resources`].
    pub fn resources(&self) -> Result<Vec<String>, String> {
        Ok(tagged_lines(&self.status()?, "r "))
    }

    /// What this host's daemon knows of the hosts of `lockspace`
    /// (`sanlock client host_status -s LOCKSPACE -D`), by host id.
    pub fn host_status(&self, lockspace: &str) -> Result<Vec<HostStatus>, String> {
        Ok(parse_host_status(&self.sanlock(&[
            "client",
            "host_status",
            "-s",
            lockspace,
            "-D",
        ])?))
    }

    /// SIGKILL to the daemon: this host's delta leases are no longer
    /// renewed (and its clients' leases not released: they stay on disk
    /// as they were). Waits for it to die.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP to the daemon: a host that stopped (no renewals) and may
    /// come back.
    pub fn freeze(&self) {
        signal(self.pid, "STOP");
    }

    /// SIGCONT: the frozen daemon runs again.
    pub fn thaw(&self) {
        signal(self.pid, "CONT");
    }

    /// Whether the daemon still runs.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for SanlockHost<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.thaw();
            if let Err(e) = self.sanlock(&["client", "shutdown", "-f", "1"]) {
                eprintln!("sanlock: {e}");
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!(
                    "sanlock: host {}'s daemon did not stop; killing it",
                    self.name
                );
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The watchdog multiplexer `wdmd` (Debian's `sanlock` package) on the
/// softdog module, for sanlock daemons started with
/// [`SanlockHost::start_watched`]: the watchdog sanlock runs with in
/// production (VDSM's hosts), for the VM tier's guest. softdog is loaded
/// with `soft_noboot=1`: when it fires it logs `softdog: Triggered -
/// Reboot ignored` instead of resetting the machine, because the hosts of
/// a test share this one kernel and its one watchdog, and a reset would
/// take the surviving host with the dead one. So a test sees *when* the
/// dead host would have been reset ([`WdmdStatus::fires_at`]), not the
/// reset.
///
/// wdmd's socket (`/run/wdmd/wdmd.sock`) is shared by every mount
/// namespace (only `/run/sanlock` is private to a host), so all the
/// hosts' daemons are its clients. A host whose daemon was killed leaves
/// a client wdmd keeps testing (its expiry passes, and wdmd stops petting
/// the device); it also refuses SIGTERM then, so drop kills it (SIGKILL).
/// Needs root; the test holds [`NoDaemon`].
pub struct Wdmd {
    dir: PathBuf,
    child: Option<Child>,
    /// This harness loaded softdog (drop unloads it: the next test loads
    /// it afresh, with no timer of this one's left running).
    loaded_softdog: bool,
}

/// Written when the harness loads softdog with `soft_noboot=1`: softdog
/// does not show its parameters in sysfs (`module_param(..., 0)`), so a
/// module loaded by an earlier test of the same boot is known safe by
/// this file only.
const SOFTDOG_MARK: &str = "/run/depot-softdog-soft-noboot";

/// `wdmd --dump`'s first line: wdmd's CLOCK_MONOTONIC seconds of its
/// last keepalive of the device and of its last unclean close (0: none),
/// and the device's fire timeout (sanlock 3.8's wdmd does not print it:
/// then it is the one its log gave when it armed the device).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WdmdStatus {
    pub now: u64,
    pub last_keepalive: u64,
    pub last_closeunclean: u64,
    pub fire_timeout: u64,
}

impl WdmdStatus {
    /// When the watchdog fires (CLOCK_MONOTONIC seconds): fire_timeout
    /// after the last ping, if the last ping was the unclean close (wdmd
    /// stopped petting because a client's test failed); None while the
    /// device is petted.
    pub fn fires_at(&self) -> Option<u64> {
        (self.last_closeunclean > 0 && self.last_closeunclean >= self.last_keepalive)
            .then_some(self.last_closeunclean + self.fire_timeout)
    }
}

/// Parses `wdmd --dump`'s `wdmd PID ... now N last_keepalive N
/// last_closeunclean N ... [fire_timeout N]` line; `fire_timeout` when the
/// line has none.
pub fn parse_wdmd_dump(out: &str, fire_timeout: Option<u64>) -> Option<WdmdStatus> {
    let line = out.lines().find(|l| l.starts_with("wdmd "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let get = |k: &str| -> Option<u64> {
        let i = words.iter().position(|w| *w == k)?;
        words.get(i + 1)?.parse().ok()
    };
    Some(WdmdStatus {
        now: get("now")?,
        last_keepalive: get("last_keepalive")?,
        last_closeunclean: get("last_closeunclean")?,
        fire_timeout: get("fire_timeout").or(fire_timeout)?,
    })
}

impl Wdmd {
    /// Loads softdog (`soft_noboot=1`; one loaded without it is an error:
    /// it would reset the machine), stops a wdmd a killed test left (any
    /// other running wdmd is an error) and starts `wdmd -D`; ready when
    /// `wdmd --dump` answers.
    pub fn start(_lock: &NoDaemon) -> Result<Wdmd, String> {
        if !crate::have_program("wdmd") {
            return Err("wdmd missing: apt-get install -y sanlock".into());
        }
        for pid in find_processes(|argv| {
            argv.first()
                .is_some_and(|a| Path::new(a).file_name().is_some_and(|f| f == "wdmd"))
        }) {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let ours = environ
                .split(|&b| b == 0)
                .any(|v| v.starts_with(HARNESS_ENV.as_bytes()));
            if !ours {
                return Err(format!(
                    "a wdmd not started by these tests runs (pid {pid}): stop it first"
                ));
            }
            eprintln!("sanlock: killing the wdmd pid {pid} a killed test left");
            signal(pid, "KILL");
            gone_within(pid, Duration::from_secs(10));
        }
        let noboot = "/sys/module/softdog/parameters/soft_noboot";
        let loaded_softdog = !Path::new("/sys/module/softdog").exists();
        if loaded_softdog {
            run("modprobe", &["softdog", "soft_noboot=1"], CLI_TIMEOUT)?;
            std::fs::write(SOFTDOG_MARK, "1\n").map_err(|e| format!("{SOFTDOG_MARK}: {e}"))?;
        } else {
            let v = std::fs::read_to_string(noboot).ok();
            let marked = Path::new(SOFTDOG_MARK).exists();
            if !(v.as_deref().map(str::trim) == Some("1") || (v.is_none() && marked)) {
                return Err(format!(
                    "softdog is loaded with soft_noboot={}, not by these tests: a fired \
                     watchdog would reset this machine (rmmod softdog first)",
                    v.as_deref().map_or("(not shown)", str::trim)
                ));
            }
        }
        let dir = std::env::temp_dir().join(format!("depot-wdmd-{}", std::process::id()));
        fresh_dir(&dir)?;
        let (log, log2) = daemon_log(&dir)?;
        std::fs::create_dir_all("/run/wdmd").map_err(|e| format!("mkdir /run/wdmd: {e}"))?;
        let child = Command::new("wdmd")
            .arg("-D")
            .env(HARNESS_ENV, &dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("wdmd: {e}"))?;
        let mut w = Wdmd {
            dir,
            child: Some(child),
            loaded_softdog,
        };
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = w.child.as_mut().map(Child::try_wait) {
                return Err(format!("wdmd exited ({status}); log: {}", w.log()));
            }
            match w.status() {
                Ok(_) => break,
                Err(e) if started.elapsed() > READY_WAIT => {
                    let log = w.log();
                    let tail = &log[log.len().saturating_sub(2000)..];
                    return Err(format!("wdmd not ready: {e}; its log's end: {tail}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        eprintln!("sanlock: wdmd ready in {:?}", started.elapsed());
        Ok(w)
    }

    /// `wdmd --dump`, parsed (the fire timeout from its log's `armed with
    /// fire_timeout N` when the dump has none).
    pub fn status(&self) -> Result<WdmdStatus, String> {
        let out = run("wdmd", &["--dump"], CLI_TIMEOUT)?;
        let armed = self.log().lines().find_map(|l| {
            let (_, n) = l.split_once("armed with fire_timeout ")?;
            n.trim().parse().ok()
        });
        parse_wdmd_dump(&out, armed).ok_or_else(|| format!("wdmd --dump: {out}"))
    }

    /// `wdmd --dump` as it prints it (the clients, dead ones too).
    pub fn dump(&self) -> String {
        run("wdmd", &["--dump"], CLI_TIMEOUT).unwrap_or_else(|e| e)
    }

    /// wdmd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Wdmd {
    /// SIGTERM first: a wdmd with no dead client closes the device
    /// cleanly (no firing later, in the next test's time); one that
    /// refuses (a dead client) is killed. Then softdog is unloaded if
    /// this harness loaded it.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(c.id(), Duration::from_secs(5));
            let _ = c.wait();
        }
        if self.loaded_softdog {
            match run("rmmod", &["softdog"], CLI_TIMEOUT) {
                Ok(_) => {
                    let _ = std::fs::remove_file(SOFTDOG_MARK);
                }
                Err(e) => eprintln!("sanlock: softdog stays loaded: {e}"),
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One host of a lockspace as a daemon sees it (`sanlock client
/// host_status -D`): `timestamp` is the host's last renewal (its
/// CLOCK_MONOTONIC seconds, as it wrote it in its delta lease; 0: free),
/// `last_check` and `last_live` when this daemon last read the host's
/// lease and last saw it change (this daemon's CLOCK_MONOTONIC seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStatus {
    pub host_id: u64,
    pub timestamp: u64,
    pub last_check: u64,
    pub last_live: u64,
    pub owner_generation: u64,
    pub io_timeout: u64,
}

/// `sanlock client host_status -D`'s output: `ID timestamp TS` lines, each
/// followed by indented `key=value` lines.
pub fn parse_host_status(out: &str) -> Vec<HostStatus> {
    let mut hosts: Vec<HostStatus> = Vec::new();
    for line in out.lines() {
        let mut words = line.split_whitespace();
        if !line.starts_with(char::is_whitespace) {
            if let (Some(id), Some("timestamp"), Some(ts)) =
                (words.next(), words.next(), words.next())
            {
                if let (Ok(host_id), Ok(timestamp)) = (id.parse(), ts.parse()) {
                    hosts.push(HostStatus {
                        host_id,
                        timestamp,
                        ..HostStatus::default()
                    });
                }
            }
            continue;
        }
        let (Some(h), Some((k, v))) = (hosts.last_mut(), line.trim().split_once('=')) else {
            continue;
        };
        let v = v.parse().unwrap_or(0);
        match k {
            "last_check" => h.last_check = v,
            "last_live" => h.last_live = v,
            "owner_generation" => h.owner_generation = v,
            "io_timeout" => h.io_timeout = v,
            _ => {}
        }
    }
    hosts
}

/// The daemon's arguments (see the module docs).
const DAEMON_ARGS: [&str; 10] = [
    "daemon", "-D", "-w", "0", "-l", "0", "-U", "root", "-G", "root",
];

/// Makes the harness directory `dir` afresh with the shim compiled in it;
/// the shim's path.
fn harness_dir(dir: &Path) -> Result<PathBuf, String> {
    fresh_dir(dir)?;
    shim(dir)
}

/// Makes the harness directory `dir` afresh.
fn fresh_dir(dir: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))
}

/// Compiles the shim into `dir`; its path.
fn shim(dir: &Path) -> Result<PathBuf, String> {
    let src = dir.join("shim.c");
    let so = dir.join("shim.so");
    std::fs::write(&src, SHIM_C).map_err(|e| format!("write {}: {e}", src.display()))?;
    run(
        "cc",
        &["-shared", "-fPIC", "-o", path_str(&so)?, path_str(&src)?],
        CLI_TIMEOUT,
    )?;
    Ok(so)
}

/// `dir/daemon.log`, twice: the daemon's stdout and stderr.
fn daemon_log(dir: &Path) -> Result<(std::fs::File, std::fs::File), String> {
    let log = std::fs::File::create(dir.join("daemon.log"))
        .map_err(|e| format!("create daemon.log: {e}"))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    Ok((log, log2))
}

/// `s ...` lines of `sanlock client status`, without the `s `.
pub fn lockspace_lines(status: &str) -> Vec<String> {
    tagged_lines(status, "s ")
}

fn tagged_lines(status: &str, tag: &str) -> Vec<String> {
    status
        .lines()
        .filter_map(|l| l.strip_prefix(tag))
        .map(|l| l.trim().to_owned())
        .collect()
}

/// Shuts down a daemon a killed test left; refuses to touch any other.
fn stop_leftovers() -> Result<(), String> {
    let daemons = find_processes(|argv| {
        argv.first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|f| f == "sanlock"))
            && argv.get(1).is_some_and(|a| a == "daemon")
    });
    for pid in daemons {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let ours = environ.split(|&b| b == 0).any(|v| {
            (v.starts_with(b"LD_PRELOAD=") || v.starts_with(HARNESS_ENV.as_bytes()))
                && v.windows(DIR_PREFIX.len())
                    .any(|w| w == DIR_PREFIX.as_bytes())
        });
        // The helper of a daemon stopped above (it runs as `sanlock
        // daemon` too) goes with it: while it exits, its environment reads
        // empty.
        if !ours && gone_within(pid, Duration::from_secs(2)) || !pid_alive(pid) {
            continue;
        }
        if !ours {
            return Err(format!(
                "a sanlock daemon not started by these tests runs (pid {pid}: {}); \
                 the tests would use it: stop it first",
                cmdline(pid).join(" ")
            ));
        }
        eprintln!("sanlock: stopping the daemon pid {pid} a killed test left");
        if in_own_mount_namespace(pid) {
            // A SanlockHost's: its socket is in its namespace, and a frozen
            // one must run to shut down.
            signal(pid, "CONT");
            let pid_s = pid.to_string();
            let _ = run(
                "nsenter",
                &[
                    "-t", &pid_s, "-m", "--", "sanlock", "client", "shutdown", "-f", "1",
                ],
                CLI_TIMEOUT,
            );
        } else {
            let _ = run("sanlock", &["client", "shutdown", "-f", "1"], CLI_TIMEOUT);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if pid_alive(pid) {
            terminate(pid, Duration::from_secs(5));
        }
    }
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // `depot-sanlock-PID` or a host's `depot-sanlock-PID-NAME`.
            if let Some(pid) = name
                .strip_prefix(DIR_PREFIX)
                .and_then(|p| p.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            {
                if !pid_alive(pid) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    Ok(())
}

/// Whether process `pid` has exited or exits within `wait`.
fn gone_within(pid: u32, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while pid_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Whether process `pid` runs in a mount namespace of its own, not this
/// process's (a [`SanlockHost`]'s daemon).
fn in_own_mount_namespace(pid: u32) -> bool {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
    let theirs = ns(&pid.to_string());
    theirs.is_some() && theirs != ns("self")
}

fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_name_the_lockspaces() {
        let status = "daemon 1b2c-host\np -1 helper\np -1 listener\n\
                      s sd1:1:/m/sd1/dom_md/ids:0\ns sd2:3:/m/a\\:b/ids:0 ADD\n\
                      r sd1:SDM:/m/sd1/dom_md/leases:1048576:1 p 123\n";
        assert_eq!(
            lockspace_lines(status),
            ["sd1:1:/m/sd1/dom_md/ids:0", "sd2:3:/m/a\\:b/ids:0 ADD"]
        );
        assert!(lockspace_lines("daemon x\n").is_empty());
    }

    /// A host a killed test left (no drop ran; here frozen too) is found
    /// and stopped by the next holder of the lock, through its namespace.
    #[test]
    #[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
    fn a_host_a_killed_test_left_is_stopped_by_the_next_lock_holder() {
        crate::require_root();
        let lock = NoDaemon::hold().expect("the sanlock lock");
        let mut host = SanlockHost::start(&lock, "leftover").expect("sanlock host");
        let (pid, dir) = (host.pid(), host.dir.clone());
        assert!(in_own_mount_namespace(pid));
        assert!(host.status().is_ok());
        host.freeze();
        // What a killed test leaves: no drop, the process running (as a
        // child of this one it would stay a zombie once stopped: reaped
        // by a thread meanwhile).
        let mut child = host.child.take().expect("running");
        std::mem::forget(host);
        let reaper = std::thread::spawn(move || child.wait());
        drop(lock);
        let _again = NoDaemon::hold().expect("the sanlock lock again");
        let status = reaper.join().unwrap().expect("wait");
        eprintln!("the leftover daemon ended: {status}");
        assert!(!pid_alive(pid));
        // Shut down through its own socket, in its namespace (thawed
        // first), not killed after the wait for a shutdown that the root
        // namespace's socket could not ask for.
        assert!(status.success(), "{status}");
        // Its directory names this (live) process: left to its test.
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn wdmd_dump_gives_when_the_watchdog_fires() {
        // sanlock 3.8's `wdmd --dump` after a client's test failed.
        let out = "wdmd 412 socket_gid 0 high_priority 0 now 305 last_keepalive 230 \
                   last_closeunclean 240 allow_scripts 0 kill_script_sec 0 fire_timeout 60\n\
                   client 1 name sanlock_sd:1 pid 500 fd -1 dead 1 ref 1 now 305 renewal 160 expire 240\n";
        let st = parse_wdmd_dump(out, None).unwrap();
        assert_eq!(
            st,
            WdmdStatus {
                now: 305,
                last_keepalive: 230,
                last_closeunclean: 240,
                fire_timeout: 60
            }
        );
        assert_eq!(st.fires_at(), Some(300));
        // Petted after an earlier close: not firing.
        let petted = WdmdStatus {
            last_keepalive: 250,
            ..st.clone()
        };
        assert_eq!(petted.fires_at(), None);
        assert_eq!(WdmdStatus::default().fires_at(), None);
        assert_eq!(parse_wdmd_dump("client 1 name x\n", Some(60)), None);
        // sanlock 3.8.5's (bookworm) line has no fire_timeout: the one
        // given, from the log; none given, no status.
        let old = "wdmd 297 socket_gid 101 high_priority 0 now 66 last_keepalive 65 \
                   last_closeunclean 0 allow_scripts 0 kill_script_sec 0\n";
        let st = parse_wdmd_dump(old, Some(60)).unwrap();
        assert_eq!((st.last_keepalive, st.fire_timeout), (65, 60));
        assert_eq!(st.fires_at(), None);
        assert_eq!(parse_wdmd_dump(old, None), None);
    }

    #[test]
    fn host_status_lists_each_host_with_its_timestamps() {
        // sanlock 3.8's `client host_status -s LS -D`.
        let out = "1 timestamp 6033\n    last_check=6052\n    last_live=6032\n    \
                   last_req=0\n    owner_id=1\n    owner_generation=2\n    \
                   timestamp=6033\n    io_timeout=10\n    owner_name=a-b\n\
                   2 timestamp 0\n    last_check=6052\n    last_live=0\n";
        assert_eq!(
            parse_host_status(out),
            [
                HostStatus {
                    host_id: 1,
                    timestamp: 6033,
                    last_check: 6052,
                    last_live: 6032,
                    owner_generation: 2,
                    io_timeout: 10,
                },
                HostStatus {
                    host_id: 2,
                    last_check: 6052,
                    ..HostStatus::default()
                },
            ]
        );
    }
}
