//! A frozen NFS server (issue 15) on a real depotd in the VM tier
//! (tests/vm/run): the contract of frozen_common (storage_frozen.rs runs
//! it on GlusterFS) with an NFS v4.2 domain on the guest's own kernel
//! server and a LOCALFS master (v3 behaved the same when tried: left out
//! for the tier's time budget). The server "stops answering" by dropping
//! every packet to and from its port (2049) on the loopback, so the
//! client's calls wait for an answer instead of failing fast: depot's NFS
//! mounts are `soft,timeo=100,retrans=3` (VDSM's): a call gives up only
//! after its retransmissions (tens of seconds, each waiting longer than
//! the last), long after the I/O timeout of these tests.

mod common;
mod frozen_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use depot_testkit::process::run;
use frozen_common::*;
use storage_common::*;
use support::loopfs::LoopFs;
use support::vm::env;

const TC: Duration = Duration::from_secs(30);

/// The guest's kernel NFS server, reached at 127.0.0.1, and an ext4 file
/// system for the LOCALFS domains (the guest's /tmp is a tmpfs, which has
/// no O_DIRECT on its 6.1 kernel).
struct NfsServer {
    export: String,
    version: &'static str,
    // Dropped in order: the file system (unmounted), then its mount point.
    _local: LoopFs,
    local_mnt: tempfile::TempDir,
}

impl NfsServer {
    fn v4_2() -> NfsServer {
        NfsServer::new(env("DEPOT_VM_NFS_V4"), "4.2")
    }

    fn new(export: String, version: &'static str) -> NfsServer {
        let local = LoopFs::new("ext4", 256 * MIB, None);
        let local_mnt = tempfile::tempdir().unwrap();
        let target = local_mnt.path().to_str().expect("UTF-8 path");
        run("mount", &[&local.dev, target], TC).expect("mount the LOCALFS file system");
        NfsServer {
            export,
            version,
            _local: local,
            local_mnt,
        }
    }
}

fn tc(args: &[&str]) {
    run("tc", args, TC).unwrap_or_else(|e| panic!("tc {}: {e}", args.join(" ")));
}

/// Takes the drop rule off the loopback (also what tests/vm/guest/reset
/// does when a test binary leaves it behind).
fn answer_again() {
    if let Err(e) = run("tc", &["qdisc", "del", "dev", "lo", "root"], TC) {
        eprintln!("tc: the NFS server may still not answer: {e}");
    }
}

impl Server for NfsServer {
    fn domain_type(&self) -> i64 {
        NFS
    }

    /// A SIGKILLed helper waiting on NFS dies (the wait is killable).
    fn killed_helpers_stay_stuck(&self) -> bool {
        false
    }

    fn connection(&self) -> ConnectionSpec {
        ConnectionSpec {
            connection: self.export.clone(),
            vfs_type: None,
            mnt_options: None,
            protocol_version: Some(self.version.into()),
        }
    }

    /// A prio qdisc on lo whose filters drop NFS's packets both ways: the
    /// server neither hears the client nor answers it, and nothing else on
    /// the loopback (depotd's TLS port) is touched.
    fn freeze(&self) -> Thaw {
        run("modprobe", &["-a", "sch_prio", "cls_u32", "act_gact"], TC).expect("tc's modules");
        tc(&["qdisc", "add", "dev", "lo", "root", "handle", "1:", "prio"]);
        let thaw = Thaw::new(answer_again);
        for way in ["dport", "sport"] {
            tc(&[
                "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", way, "2049", "0xffff", "action", "drop",
            ]);
        }
        thaw
    }

    /// The client's retransmissions back off (timeo=100: 10 s, then 20 s,
    /// ...) and TCP's own too: the first call after the thaw may wait for
    /// the next of them.
    fn recovers_within(&self) -> Duration {
        Duration::from_secs(180)
    }

    /// Under TCG a process start takes 0.2-2 s and a TLS handshake about
    /// one (docs/testing.md): "at once" is 10 s here, not the host's 5.
    fn starts_within(&self) -> Duration {
        Duration::from_secs(10)
    }

    fn local_dir(&self) -> tempfile::TempDir {
        tempfile::tempdir_in(self.local_mnt.path()).unwrap()
    }
}

async fn setup() -> Setup<NfsServer> {
    Setup::new(NfsServer::v4_2()).await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the vm tier (tests/vm/run)"]
async fn verbs_on_a_frozen_nfs_server_answer_2001_naming_the_mount() {
    depot_testkit::require_vm();
    verbs_on_the_frozen_domain(setup().await).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the vm tier (tests/vm/run)"]
async fn scans_are_bounded_and_report_a_frozen_nfs_server() {
    depot_testkit::require_vm();
    scans_while_frozen(setup().await).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the vm tier (tests/vm/run)"]
async fn sigterm_with_calls_stuck_on_a_frozen_nfs_server_exits_within_the_grace() {
    depot_testkit::require_vm();
    shutdown_while_frozen(setup().await).await;
}
