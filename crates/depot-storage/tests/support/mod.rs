//! Helpers shared by depot-storage's integration tests. A test file uses
//! them with `mod support;`. Not every file uses every helper.
#![allow(dead_code)]

pub mod loopfs;
pub mod vm;

use std::path::Path;
use std::time::Duration;

use depot_os::fsproc::{FsPool, HelperCommand, PoolConfig};
use depot_os::{Cmd, CommandRunner};
use depot_storage::mount_fs::MountFs;

/// The machine's host name (`/proc/sys/kernel/hostname`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
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

/// Runs a program through depot's runner; returns stdout, or the error text
/// (with stderr) so a test can show why.
pub fn run(program: &str, args: &[&str], timeout: Duration) -> Result<String, String> {
    let cmd = Cmd::new(program, timeout).args(args.iter().copied());
    CommandRunner::new()
        .run(&cmd)
        .map(|o| o.stdout_lossy().into_owned())
        .map_err(|e| format!("{e} (stderr: {})", e.stderr().trim()))
}

/// Whether a process is alive: `/proc/<pid>` exists and it is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the ")" that ends the command name, is the state.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The argv of a process from `/proc/<pid>/cmdline`.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Live processes whose argv satisfies `pred`.
pub fn find_processes(pred: impl Fn(&[String]) -> bool) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id() && pid_alive(pid) && pred(&cmdline(pid)))
        .collect()
}

/// Sends `signal` (e.g. "TERM") to `pid` with kill(1).
pub fn signal(pid: u32, signal: &str) {
    let _ = run(
        "kill",
        &[&format!("-{signal}"), &pid.to_string()],
        Duration::from_secs(5),
    );
}

/// SIGTERM, wait up to `grace`, then SIGKILL; returns once it is gone
/// (or after another second).
pub fn terminate(pid: u32, grace: Duration) {
    signal(pid, "TERM");
    let deadline = std::time::Instant::now() + grace;
    while pid_alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if pid_alive(pid) {
        signal(pid, "KILL");
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while pid_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The file-system helper of depot-storage's tests (the
/// `depot-storage-fsproc` binary, which serves as depotd's own
/// `depotd fsproc` does). Only depot-storage's tests have it: depotd's
/// tests include this file too, and run depotd itself.
// Compiled into depotd's tests too (which never call it): there the
// variable is absent and a call would be the test's bug.
#[allow(dead_code, clippy::option_env_unwrap)]
pub fn fsproc_command() -> HelperCommand {
    let bin = option_env!("CARGO_BIN_EXE_depot-storage-fsproc")
        .expect("only depot-storage's tests have the depot-storage-fsproc helper");
    HelperCommand::new(bin)
}

/// Helper processes on `root`, as depotd runs them on a mount (4 at most,
/// `timeout` per call): for tests that build a file domain's volume store
/// directly.
pub fn mount_helpers(root: &Path, timeout: Duration) -> MountFs {
    MountFs::new(FsPool::new(PoolConfig {
        command: fsproc_command(),
        root: root.to_owned(),
        max_helpers: 4,
        timeout,
    }))
}
