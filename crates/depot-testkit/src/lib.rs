//! Test tiers (docs/testing.md): the one place that says whether a test
//! can run here.
//!
//! A test that needs more than the unprivileged tier is marked so that a
//! build for another tier reports it as *ignored*, and it starts with a
//! check that *fails* it when its tier was asked for but a requirement is
//! missing (not root, no GlusterFS, not inside the VM guest). A tier-gated
//! test therefore never passes without testing.
//!
//! Root tier (`cfg(depot_root_tier)` comes from the crate's build.rs, see
//! `tier-build.rs`):
//!
//! ```ignore
//! #[test]
//! #[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
//! fn mounts_a_loop_device() {
//!     depot_testkit::require_root();
//!     // ...
//! }
//! ```
//!
//! VM tier: only in the `vm_*` test binaries that tests/vm/run runs in the
//! guest with `--include-ignored`:
//!
//! ```ignore
//! #[test]
//! #[ignore = "needs the vm tier (tests/vm/run)"]
//! fn logs_in_with_chap() {
//!     depot_testkit::require_vm();
//!     // ...
//! }
//! ```

pub mod gluster;
pub mod process;
pub mod rng;
pub mod sanlock;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The tier asked for by `DEPOT_TEST_TIER` at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Unprivileged,
    Root,
    Vm,
}

impl Tier {
    /// The tier of this run. An unknown value is a mistake of whoever
    /// started the tests, and fails the test that asks.
    pub fn current() -> Tier {
        match std::env::var("DEPOT_TEST_TIER").as_deref() {
            Err(_) | Ok("") | Ok("unprivileged") => Tier::Unprivileged,
            Ok("root") => Tier::Root,
            Ok("vm") => Tier::Vm,
            Ok(other) => panic!(
                "DEPOT_TEST_TIER={other:?}: expected unprivileged, root or vm (docs/testing.md)"
            ),
        }
    }
}

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY-free: read from /proc so this crate needs no libc binding.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The first line of a root-tier test: fails unless this run is the root
/// (or VM) tier and the process is root.
#[track_caller]
pub fn require_root() {
    let tier = Tier::current();
    assert!(
        matches!(tier, Tier::Root | Tier::Vm),
        "this root-tier test runs with DEPOT_TEST_TIER={tier:?}: build and run it with \
         DEPOT_TEST_TIER=root (tests/run does so as root)"
    );
    assert!(
        is_root(),
        "DEPOT_TEST_TIER asks for the root tier, but this process is not root"
    );
}

/// The first line of a VM-tier test: fails unless it runs inside the
/// guest of tests/vm/run.
#[track_caller]
pub fn require_vm() {
    assert_eq!(
        Tier::current(),
        Tier::Vm,
        "this VM-tier test runs only inside the guest: tests/vm/run"
    );
    assert!(is_root(), "the VM tier runs as root");
}

/// Fails the test unless `program` is on PATH (or is an existing path):
/// a requirement of the tier the test belongs to (for example glusterd in
/// the root tier, which .ci/run installs).
#[track_caller]
pub fn require_program(program: &str) {
    assert!(
        have_program(program),
        "{program} is required by this tier and is not installed (.ci/run installs it)"
    );
}

/// Whether `program` is on PATH (or an existing path).
pub fn have_program(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// The first line of a test that needs a tmpfs: `/dev/shm`, which every
/// Linux system the tests run on mounts (systemd and container runtimes
/// alike). Fails the test when it is something else, instead of letting it
/// pass without testing.
#[track_caller]
pub fn require_tmpfs_dev_shm() -> &'static Path {
    let shm = Path::new("/dev/shm");
    let fstype = mount_fstype(shm);
    assert_eq!(
        fstype.as_deref(),
        Some("tmpfs"),
        "this test needs /dev/shm to be a tmpfs (every tier promises one)"
    );
    shm
}

/// The file system type of the mount point `path` (not of any directory
/// below it), from `/proc/self/mountinfo`.
fn mount_fstype(path: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let target = path.to_str()?;
    // Field 5 is the mount point, the file system type follows the " - ".
    // The last mount on a path is the one that is visible.
    table
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(target))
        .and_then(|l| l.split(" - ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .map(str::to_owned)
}

/// How long a tool the helpers below run may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `argv` with a timeout; the output, or a panic that says why not.
/// For test helpers only: the product's commands go through depot-os.
#[track_caller]
fn run_tool(argv: &[&str]) -> Output {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (a requirement of this tier)", argv.join(" ")));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{} did not end in {TOOL_TIMEOUT:?}", argv.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect the tool's output")
}

/// A loop device over a file, for root-tier tests; detached on drop, also
/// when the test fails. Attaching is a requirement of the root tier: when
/// `losetup` fails the test fails with its message (a loop device that
/// cannot be made is never a reason to pass).
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    /// Attaches `file` with 512-byte logical sectors.
    #[track_caller]
    pub fn attach(file: &Path) -> LoopDevice {
        LoopDevice::attach_with(file, None, false)
    }

    /// Attaches `file` with `sector_size`-byte logical sectors (512 when
    /// `None`), and with `--direct-io=on` when `direct_io` is set.
    #[track_caller]
    pub fn attach_with(file: &Path, sector_size: Option<u32>, direct_io: bool) -> LoopDevice {
        assert!(
            is_root(),
            "loop devices need root: a test that attaches one is a root-tier test \
             (start it with depot_testkit::require_root())"
        );
        let sector = sector_size.map(|s| s.to_string());
        let file = file.to_str().expect("a UTF-8 path");
        let mut argv = vec!["losetup", "--find", "--show"];
        if let Some(s) = &sector {
            argv.extend(["--sector-size", s.as_str()]);
        }
        if direct_io {
            argv.push("--direct-io=on");
        }
        argv.push(file);
        let out = run_tool(&argv);
        assert!(
            out.status.success(),
            "{} failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            path.starts_with("/dev/loop"),
            "losetup printed {path:?}, not a loop device"
        );
        LoopDevice { path: path.into() }
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a string, for argv and JSON.
    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("/dev/loopN is UTF-8")
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let out = Command::new("losetup")
            .arg("--detach")
            .arg(&self.path)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "cannot detach {}: {}",
                self.path.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("cannot detach {}: {e}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn have_program_finds_sh_and_not_nonsense() {
        assert!(have_program("sh"));
        assert!(!have_program("depot-no-such-program-x"));
        assert!(have_program("/bin/sh"));
    }

    #[test]
    fn the_root_file_system_has_a_type_and_a_plain_directory_has_none() {
        assert!(mount_fstype(Path::new("/")).is_some_and(|t| !t.is_empty()));
        let dir = std::env::temp_dir().join("depot-testkit-not-a-mount-point");
        assert_eq!(mount_fstype(&dir), None);
    }

    #[test]
    fn a_failing_tool_is_reported_not_hidden() {
        let out = run_tool(&["sh", "-c", "echo no >&2; exit 3"]);
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stderr), "no\n");
        let missing = std::panic::catch_unwind(|| run_tool(&["depot-no-such-program-x"]));
        assert!(missing.is_err(), "a missing program must fail the test");
    }

    fn sysfs(dev: &Path, file: &str) -> Option<String> {
        let name = dev.file_name()?.to_str()?;
        std::fs::read_to_string(format!("/sys/block/{name}/{file}"))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    #[test]
    #[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
    fn loop_device_is_attached_with_its_sector_size_and_detached_on_drop() {
        require_root();
        let dir = std::env::temp_dir().join(format!("depot-testkit-loop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("backing");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let lo = LoopDevice::attach_with(&file, Some(4096), true);
        let dev = lo.path().to_owned();
        assert_eq!(
            sysfs(&dev, "queue/logical_block_size").as_deref(),
            Some("4096")
        );
        assert_eq!(sysfs(&dev, "loop/dio").as_deref(), Some("1"));
        assert_eq!(
            sysfs(&dev, "loop/backing_file").map(PathBuf::from),
            Some(file.canonicalize().unwrap())
        );
        drop(lo);
        assert_eq!(sysfs(&dev, "loop/backing_file"), None, "still attached");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
    fn a_loop_device_that_cannot_be_made_fails_the_test() {
        require_root();
        let r = std::panic::catch_unwind(|| {
            LoopDevice::attach(Path::new("/nonexistent/depot-testkit/backing"))
        });
        let msg = r.expect_err("losetup of a missing file must panic");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("losetup") && msg.contains("failed"), "{msg}");
    }
}
