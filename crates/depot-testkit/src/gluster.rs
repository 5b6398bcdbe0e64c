//! A private GlusterFS server for tests: one `glusterd`, one single-brick
//! volume, torn down on drop; [`Gluster::mount`] mounts it, and
//! [`Gluster::freeze_brick`] stops the brick process (`SIGSTOP`) to make
//! the storage hang for real.
//!
//! ```ignore
//! let g = depot_testkit::gluster::Gluster::start().expect("gluster");
//! let m = g.mount(&dir).expect("mount");
//! let frozen = g.freeze_brick().expect("freeze"); // thawed on drop
//! ```
//!
//! (Moved here from depot-storage's tests/support so that every crate's
//! tests can use it.)
//!
//! What it does (the machine facts: shared/reference/machine-facts.md):
//!
//! * `glusterd -f <dir>/glusterd.vol -p <dir>/glusterd.pid
//!   --log-file=<dir>/glusterd.log`, where the volfile is the system's
//!   `/etc/glusterfs/glusterd.vol` with `working-directory` moved to
//!   `<dir>/wd`: the peer id, volume definitions and state are private to
//!   the test, and nothing under `/var/lib/glusterd` is touched.
//! * Two glusterd cannot run at once on one host: both listen on TCP 24007
//!   (the port FUSE clients fetch the volfile from) and the CLI talks to
//!   the one behind `/var/run/glusterd.socket`. So [`Gluster::start`] takes
//!   a machine-wide lock first (the file [`LOCK_PATH`], holding the owner's
//!   pid; one whose owner died is taken over) and tests using it run one at
//!   a time, across threads and test binaries. A glusterd left by a killed
//!   test (its volfile under a `depot-gluster-` directory) is stopped; any
//!   other running glusterd is an error, as the tests would talk to it.
//!   Leftover `depot-gluster-*` directories in the temp dir are removed.
//! * `gluster volume create vol <hostname>:<dir>/brick force` (glusterd
//!   refuses 127.0.0.1/localhost bricks, and `force` allows a brick on the
//!   root file system), `volume start vol`, `volume set vol
//!   performance.strict-o-direct on` (so an unaligned O_DIRECT write fails
//!   at write(), as on a local file system, like oVirt's virt profile).
//! * Drop: thaws a frozen brick, lazily unmounts any FUSE mount of the volume left behind, `volume
//!   stop vol force`, `volume delete vol`, SIGTERM (then SIGKILL) glusterd
//!   and any brick process of this brick, releases the lock and removes
//!   `<dir>`. Brick logs still go to `/var/log/glusterfs/bricks/`.
//!
//! Needs root and the Debian packages `glusterfs-server` and
//! `glusterfs-client` (FUSE: /dev/fuse). About 2.5 s to start, 1.5 s to stop.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process::{cmdline, find_processes, hostname, pid_alive, run, signal, terminate};

/// The machine-wide lock serializing tests that run glusterd.
pub const LOCK_PATH: &str = "/tmp/depot-test-glusterd.lock";
/// The prefix of every harness directory (how leftovers are recognised).
pub const DIR_PREFIX: &str = "depot-gluster-";
/// The volume's name.
pub const VOLUME: &str = "vol";

const SYSTEM_VOLFILE: &str = "/etc/glusterfs/glusterd.vol";
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a test waits for another one's gluster to finish.
const LOCK_WAIT: Duration = Duration::from_secs(900);

/// The machine-wide lock file; removed on drop.
pub(crate) struct LockFile {
    path: PathBuf,
}

impl LockFile {
    pub(crate) fn acquire(path: &Path, wait: Duration) -> Result<LockFile, String> {
        let deadline = Instant::now() + wait;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    return Ok(LockFile {
                        path: path.to_owned(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    match owner {
                        // The owner died without its Drop: take over. (An
                        // empty file is an owner between create and write,
                        // so it is waited for, not taken.)
                        Some(pid) if !pid_alive(pid) => {
                            let _ = std::fs::remove_file(path);
                            continue;
                        }
                        _ => {}
                    }
                    if Instant::now() > deadline {
                        return Err(format!(
                            "{} is held by pid {owner:?} for more than {wait:?}",
                            path.display()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
            }
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A running private glusterd with the started volume [`VOLUME`].
pub struct Gluster {
    host: String,
    dir: PathBuf,
    glusterd_pid: u32,
    volume_created: bool,
    // Dropped last: the teardown runs under the lock.
    _lock: LockFile,
}

impl Gluster {
    /// Whether the gluster programs are installed.
    pub fn available() -> bool {
        crate::have_program("glusterd")
            && crate::have_program("gluster")
            && Path::new("/sbin/mount.glusterfs").exists()
            && Path::new("/dev/fuse").exists()
    }

    /// Starts glusterd and the volume (see the module docs). Needs root.
    pub fn start() -> Result<Gluster, String> {
        if !Self::available() {
            return Err("glusterd, gluster, mount.glusterfs or /dev/fuse missing: \
                 apt-get install -y glusterfs-server glusterfs-client"
                .into());
        }
        let lock = LockFile::acquire(Path::new(LOCK_PATH), LOCK_WAIT)?;
        stop_leftovers()?;
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let wd = dir.join("wd");
        let brick = dir.join("brick");
        for d in [&wd, &brick] {
            std::fs::create_dir(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        let volfile = dir.join("glusterd.vol");
        let system = std::fs::read_to_string(SYSTEM_VOLFILE)
            .map_err(|e| format!("read {SYSTEM_VOLFILE}: {e}"))?;
        let private: String = system
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("option working-directory") {
                    format!("    option working-directory {}", wd.display())
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&volfile, private + "\n").map_err(|e| format!("write volfile: {e}"))?;

        let pidfile = dir.join("glusterd.pid");
        let log = dir.join("glusterd.log");
        let started = Instant::now();
        // glusterd daemonizes: the command returns once the daemon forked.
        run(
            "glusterd",
            &[
                "-f",
                path_str(&volfile)?,
                "-p",
                path_str(&pidfile)?,
                &format!("--log-file={}", log.display()),
            ],
            CLI_TIMEOUT,
        )
        .map_err(|e| format!("glusterd: {e}"))?;

        let mut g = Gluster {
            host: hostname(),
            glusterd_pid: 0,
            volume_created: false,
            dir,
            _lock: lock,
        };
        g.glusterd_pid = wait_for_pid(&pidfile, Duration::from_secs(20))
            .map_err(|e| format!("{e}; log: {}", tail(&log)))?;
        // Ready when the CLI gets an answer.
        let ready = loop {
            match g.cli(&["volume", "list"]) {
                Ok(_) => break Ok(()),
                Err(e) if started.elapsed() > Duration::from_secs(30) => break Err(e),
                Err(_) if !pid_alive(g.glusterd_pid) => {
                    break Err(format!("glusterd exited; log: {}", tail(&log)))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        ready.map_err(|e| format!("glusterd not ready: {e}"))?;

        let brick_spec = format!("{}:{}", g.host, brick.display());
        g.cli(&["volume", "create", VOLUME, &brick_spec, "force"])?;
        g.volume_created = true;
        g.cli(&["volume", "start", VOLUME])?;
        g.cli(&["volume", "set", VOLUME, "performance.strict-o-direct", "on"])?;
        eprintln!(
            "gluster: glusterd pid {} and volume {} ready in {:?}",
            g.glusterd_pid,
            g.spec(),
            started.elapsed()
        );
        Ok(g)
    }

    /// The brick host: the machine's host name (it resolves to 127.0.0.1).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn volume(&self) -> &str {
        VOLUME
    }

    /// `<host>:/vol`, the connection string of a GLUSTERFS domain.
    pub fn spec(&self) -> String {
        format!("{}:/{VOLUME}", self.host)
    }

    /// The brick directory: files written through a mount appear here.
    pub fn brick(&self) -> PathBuf {
        self.dir.join("brick")
    }

    /// The harness directory (glusterd.log is there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `gluster --mode=script ARGS`; stdout or the error with stderr.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["--mode=script"];
        all.extend_from_slice(args);
        run("gluster", &all, CLI_TIMEOUT).map_err(|e| format!("gluster {}: {e}", args.join(" ")))
    }

    fn teardown(&mut self) {
        // Mounts of this volume a failed test left behind.
        let spec = self.spec();
        let bare = format!("{}:{VOLUME}", self.host);
        for brick in self.brick_pids() {
            signal(brick, "CONT");
        }
        for target in fuse_mounts_of(&[&spec, &bare]).into_iter().rev() {
            eprintln!("gluster: unmounting leftover mount {target}");
            let _ = run("umount", &["-l", "--", &target], CLI_TIMEOUT);
        }
        if self.volume_created {
            if let Err(e) = self.cli(&["volume", "stop", VOLUME, "force"]) {
                eprintln!("gluster teardown: {e}");
            }
            if let Err(e) = self.cli(&["volume", "delete", VOLUME]) {
                eprintln!("gluster teardown: {e}");
            }
        }
        if self.glusterd_pid != 0 {
            terminate(self.glusterd_pid, Duration::from_secs(5));
        }
        let brick = self.brick().display().to_string();
        for pid in find_processes(|argv| argv.iter().any(|a| a == &brick)) {
            terminate(pid, Duration::from_secs(5));
        }
    }
}

impl Drop for Gluster {
    fn drop(&mut self) {
        let t = Instant::now();
        self.teardown();
        let _ = std::fs::remove_dir_all(&self.dir);
        eprintln!("gluster: torn down in {:?}", t.elapsed());
    }
}

impl Gluster {
    /// The brick processes (`glusterfsd`) of this volume.
    pub fn brick_pids(&self) -> Vec<u32> {
        let brick = self.brick().display().to_string();
        find_processes(|argv| {
            argv.iter().any(|a| a == &brick)
                && argv
                    .first()
                    .is_some_and(|a| Path::new(a).file_name().is_some_and(|f| f == "glusterfsd"))
        })
    }

    /// Mounts the volume on `target` (created if missing) with
    /// `mount -t glusterfs`; unmounted (lazily) on drop.
    pub fn mount(&self, target: &Path) -> Result<GlusterMount, String> {
        std::fs::create_dir_all(target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
        let t = path_str(target)?;
        run(
            "mount",
            &[
                "-t",
                "glusterfs",
                "-o",
                "log-level=WARNING",
                &self.spec(),
                t,
            ],
            CLI_TIMEOUT,
        )?;
        Ok(GlusterMount {
            target: target.to_owned(),
        })
    }

    /// Stops the brick process(es) with `SIGSTOP`: every call on a mount of
    /// the volume that needs the brick hangs (in the kernel, uninterruptibly)
    /// until [`FrozenBrick`] is dropped or thawed.
    pub fn freeze_brick(&self) -> Result<FrozenBrick, String> {
        let pids = self.brick_pids();
        if pids.is_empty() {
            return Err(format!("no glusterfsd runs for {}", self.brick().display()));
        }
        for &pid in &pids {
            signal(pid, "STOP");
        }
        Ok(FrozenBrick { pids })
    }
}

/// A FUSE mount of the test volume; unmounted lazily on drop (a lazy
/// unmount also works while the brick is frozen).
#[derive(Debug)]
pub struct GlusterMount {
    target: PathBuf,
}

impl GlusterMount {
    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for GlusterMount {
    fn drop(&mut self) {
        let t = self.target.display().to_string();
        if let Err(e) = run("umount", &["-l", "--", &t], CLI_TIMEOUT) {
            eprintln!("gluster: umount {t}: {e}");
        }
    }
}

/// Brick processes stopped by [`Gluster::freeze_brick`]; continued on drop.
#[derive(Debug)]
pub struct FrozenBrick {
    pids: Vec<u32>,
}

impl FrozenBrick {
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// `SIGCONT` now (also done on drop).
    pub fn thaw(self) {}
}

impl Drop for FrozenBrick {
    fn drop(&mut self) {
        for &pid in &self.pids {
            signal(pid, "CONT");
        }
    }
}

/// Mount points of FUSE GlusterFS mounts whose source is one of `sources`,
/// from `/proc/self/mountinfo`, in table order.
fn fuse_mounts_of(sources: &[&str]) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| {
            let target = l.split(' ').nth(4)?;
            let mut rest = l.split(" - ").nth(1)?.split(' ');
            let (fstype, source) = (rest.next()?, rest.next()?);
            (fstype == "fuse.glusterfs" && sources.contains(&source))
                .then(|| unescape_octal(target))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(n) = u8::from_str_radix(&code, 8) {
                out.push(n as char);
                continue;
            }
            out.push(c);
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()))
}

/// Stops gluster processes a killed test left (recognised by
/// [`DIR_PREFIX`] in their argv); fails if a foreign glusterd runs.
fn stop_leftovers() -> Result<(), String> {
    let ours = |argv: &[String]| argv.iter().any(|a| a.contains(DIR_PREFIX));
    let is = |argv: &[String], name: &str| {
        argv.first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|f| f == name))
    };
    for pid in find_processes(|a| ours(a) && (is(a, "glusterfsd") || is(a, "glusterfs"))) {
        eprintln!("gluster: stopping leftover brick/client process {pid}");
        terminate(pid, Duration::from_secs(5));
    }
    for pid in find_processes(|a| is(a, "glusterd")) {
        if ours(&cmdline(pid)) {
            eprintln!("gluster: stopping leftover test glusterd {pid}");
            terminate(pid, Duration::from_secs(5));
        } else {
            return Err(format!(
                "a glusterd not started by the tests is running (pid {pid}: {}); \
                 stop it first, the tests need port 24007",
                cmdline(pid).join(" ")
            ));
        }
    }
    // Their directories: under the lock, every one belongs to a dead run.
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
                eprintln!("gluster: removing leftover {}", e.path().display());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

fn wait_for_pid(pidfile: &Path, timeout: Duration) -> Result<u32, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            return Err(format!("no pid in {} after {timeout:?}", pidfile.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of a log, for error messages.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}
