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

// The process helpers live in depot-testkit (one copy for every crate's
// tests); these paths stay for the tests that use them.
#[allow(unused_imports)] // each test binary uses a few of them
pub use depot_testkit::process::{cmdline, find_processes, hostname, pid_alive, signal, terminate};

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

/// A storage layer's configuration for tests on real mounts: the calls go
/// through the `depot-storage-fsproc` helpers with `io_timeout` per call
/// (the frozen-storage tests' deadline), no sanlock. Callers change what
/// their test needs with `StorageConfig { field, ..storage_config(..) }`.
pub fn storage_config(repository: &Path, io_timeout: Duration) -> depot_storage::StorageConfig {
    depot_storage::StorageConfig {
        repository: repository.to_path_buf(),
        io_timeout,
        lock_timeout: Duration::from_secs(30),
        qemu_img_timeout: Duration::from_secs(60),
        monitor_interval: Duration::from_secs(1),
        fsproc_command: Some(fsproc_command()),
        fsproc_helpers_per_mount: 4,
        sanlock: None,
    }
}

/// A mount in trouble (issue 15): one of `codes` (2001 for a read, 2002
/// for a write), naming the mount, so never "does not exist".
pub fn assert_mount_trouble(
    what: &str,
    e: &depot_storage::StorageError,
    mount: &Path,
    codes: &[depot_api::Code],
) {
    assert!(codes.contains(&e.code), "{what}: {} {e}", e.code.number());
    assert!(
        e.to_string().contains(&mount.display().to_string()),
        "{what} names the mount {}: {e}",
        mount.display()
    );
}
