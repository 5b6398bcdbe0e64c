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
//! Needs root and the Debian packages `sanlock` and `gcc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::gluster::LockFile;
use crate::process::{cmdline, find_processes, pid_alive, run, terminate};

/// The machine-wide lock serializing tests that run the sanlock daemon.
pub const LOCK_PATH: &str = "/tmp/depot-test-sanlock.lock";
/// The prefix of every harness directory.
pub const DIR_PREFIX: &str = "depot-sanlock-";
/// The daemon's pid file (sanlock's own, fixed).
pub const PID_FILE: &str = "/run/sanlock/sanlock.pid";

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
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let src = dir.join("shim.c");
        let so = dir.join("shim.so");
        std::fs::write(&src, SHIM_C).map_err(|e| format!("write {}: {e}", src.display()))?;
        run(
            "cc",
            &["-shared", "-fPIC", "-o", path_str(&so)?, path_str(&src)?],
            CLI_TIMEOUT,
        )?;
        let log = std::fs::File::create(dir.join("daemon.log"))
            .map_err(|e| format!("create daemon.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let started = Instant::now();
        let child = Command::new("sanlock")
            .args([
                "daemon", "-D", "-w", "0", "-l", "0", "-U", "root", "-G", "root",
            ])
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
            v.starts_with(b"LD_PRELOAD=")
                && v.windows(DIR_PREFIX.len())
                    .any(|w| w == DIR_PREFIX.as_bytes())
        });
        if !ours {
            return Err(format!(
                "a sanlock daemon not started by these tests runs (pid {pid}: {}); \
                 the tests would use it: stop it first",
                cmdline(pid).join(" ")
            ));
        }
        eprintln!("sanlock: stopping the daemon pid {pid} a killed test left");
        let _ = run("sanlock", &["client", "shutdown", "-f", "1"], CLI_TIMEOUT);
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
            if let Some(pid) = name
                .strip_prefix(DIR_PREFIX)
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
}
