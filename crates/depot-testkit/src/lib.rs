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

use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn have_program_finds_sh_and_not_nonsense() {
        assert!(have_program("sh"));
        assert!(!have_program("depot-no-such-program-x"));
        assert!(have_program("/bin/sh"));
    }
}
