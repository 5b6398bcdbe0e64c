//! The VM tier's own check (tests/vm/run): the guest environment that the
//! block and NFS tests rely on (docs/testing.md, "What the guest provides"),
//! checked with the plain tools, not with depot. Each test leaves the guest
//! as it found it. Reported as ignored outside the guest.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set in the guest"))
}

/// When the first command ran: the log shows where the time goes.
fn started() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Runs `argv` under `timeout 60`, so that a hung tool fails the test.
fn run(argv: &[&str]) -> Output {
    let out = Command::new("timeout")
        .arg("60")
        .args(argv)
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    eprintln!(
        "[{:.1?}] $ {} -> {}\n{}{}",
        started().elapsed(),
        argv.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(argv: &[&str]) -> String {
    let out = run(argv);
    assert!(out.status.success(), "{argv:?} failed: {}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        sleep(Duration::from_millis(500));
    }
}

#[test]
#[ignore = "needs the vm tier (tests/vm/run)"]
fn environment_as_documented() {
    depot_testkit::require_vm();
    let modules = fs::read_to_string("/proc/modules").unwrap();
    for m in [
        "target_core_mod",
        "iscsi_target_mod",
        "target_core_iblock",
        "target_core_file",
        "iscsi_tcp",
        "dm_multipath",
        "dm_round_robin",
        "nfsd",
        "nfs",
        "nfsv3",
        "nfsv4",
        "loop",
        "xfs",
    ] {
        assert!(
            modules.lines().any(|l| l.starts_with(&format!("{m} "))),
            "{m} not loaded"
        );
    }
    // Not logged in to anything (iscsiadm's 21: no sessions), no VGs.
    assert_eq!(run(&["iscsiadm", "-m", "session"]).status.code(), Some(21));
    assert_eq!(ok(&["vgs", "--noheadings", "-o", "vg_name"]).trim(), "");
    ok(&["multipathd", "show", "daemon"]);
    let conf = fs::read_to_string("/etc/multipath.conf").unwrap();
    for line in [
        "find_multipaths no",
        "user_friendly_names no",
        "devnode \"^vd\"",
    ] {
        assert!(
            conf.lines().any(|l| l.trim() == line),
            "multipath.conf lacks {line}"
        );
    }
    for tool in [
        "qemu-img",
        "mkfs.xfs",
        "mkfs.ext4",
        "sg_inq",
        "lvcreate",
        "losetup",
    ] {
        ok(&["sh", "-c", &format!("command -v {tool}")]);
    }
}

/// Logs out of the target and forgets its records, also when the test
/// panics half way.
struct Logout(String);

impl Drop for Logout {
    fn drop(&mut self) {
        // LIO's multipath defaults queue I/O for 60 s (no_path_retry 12)
        // when a map loses its last path: a udev probe of a new map still in
        // flight at logout would then hold the map for a minute. So: no
        // queueing first, then log out; multipathd removes the maps.
        run(&["udevadm", "settle", "--timeout=30"]);
        run(&["multipathd", "disablequeueing", "maps"]);
        run(&["iscsiadm", "-m", "node", "-T", &self.0, "--logout"]);
        run(&["iscsiadm", "-m", "node", "-T", &self.0, "-o", "delete"]);
        let start = Instant::now();
        while multipath_maps() != 0 && start.elapsed() < Duration::from_secs(20) {
            sleep(Duration::from_millis(500));
        }
        if !std::thread::panicking() {
            assert_eq!(multipath_maps(), 0, "multipath maps left after logout");
        }
    }
}

/// How many multipath maps exist.
fn multipath_maps() -> usize {
    let out = run(&["dmsetup", "ls", "--target", "multipath"]);
    let out = String::from_utf8_lossy(&out.stdout);
    out.lines().filter(|l| l.starts_with("36001405")).count()
}

/// `multipathd show paths` as (wwid, device) pairs of the iSCSI paths.
fn multipath_paths() -> Vec<(String, String)> {
    let out = ok(&["multipathd", "show", "paths", "raw", "format", "%w %d"]);
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(wwid, dev)| wwid.starts_with("36001405") && dev.starts_with("sd"))
        .map(|(w, d)| (w.to_string(), d.trim().to_string()))
        .collect()
}

#[test]
#[ignore = "needs the vm tier (tests/vm/run)"]
fn iscsi_chap_login_on_two_portals_gives_multipath_maps() {
    depot_testkit::require_vm();
    let iqn = env("DEPOT_VM_ISCSI_IQN");
    let port = env("DEPOT_VM_ISCSI_PORT");
    let portals: Vec<String> = env("DEPOT_VM_ISCSI_PORTALS")
        .split(',')
        .map(|p| format!("{p}:{port}"))
        .collect();
    assert_eq!(portals.len(), 2);

    // Discovery needs no authentication and names both portals of TPG 1.
    let found = ok(&["iscsiadm", "-m", "discovery", "-t", "st", "-p", &portals[0]]);
    for p in &portals {
        assert!(
            found.contains(&format!("{p},1 {iqn}")),
            "discovery lacks {p}"
        );
    }
    let _logout = Logout(iqn.clone());
    // Without a portal, iscsiadm updates the records of both portals.
    let set = |name: &str, value: &str| {
        ok(&[
            "iscsiadm", "-m", "node", "-T", &iqn, "-o", "update", "-n", name, "-v", value,
        ]);
    };
    let login = |portal: &str| {
        run(&[
            "iscsiadm", "-m", "node", "-T", &iqn, "-p", portal, "--login",
        ])
    };

    // Without CHAP, and with a wrong secret: 24, authentication failed.
    assert_eq!(
        login(&portals[0]).status.code(),
        Some(24),
        "login without CHAP"
    );
    set("node.session.auth.authmethod", "CHAP");
    set("node.session.auth.username", &env("DEPOT_VM_CHAP_USER"));
    set("node.session.auth.password", "not-the-secret");
    assert_eq!(
        login(&portals[0]).status.code(),
        Some(24),
        "login with a wrong secret"
    );

    set("node.session.auth.password", &env("DEPOT_VM_CHAP_PASSWORD"));
    for p in &portals {
        assert!(login(p).status.success(), "CHAP login on {p}");
    }
    assert_eq!(ok(&["iscsiadm", "-m", "session"]).lines().count(), 2);

    // 3 LUNs x 2 portals: 3 maps by WWID, 2 paths each.
    wait_for("3 multipath maps with 2 paths each", || {
        let maps = ok(&["multipathd", "show", "maps", "raw", "format", "%w %N"]);
        let two = maps
            .lines()
            .filter(|l| l.starts_with("36001405") && l.ends_with(" 2"));
        two.count() == 3
    });
    let paths = multipath_paths();
    assert_eq!(paths.len(), 6, "{paths:?}");
}

/// Writes 1 MiB with O_DIRECT into `dir` and reads it back the same way.
fn o_direct_round_trip(dir: &str) {
    let path = format!("{dir}/o_direct-{}", std::process::id());
    let layout = std::alloc::Layout::from_size_align(1 << 20, 4096).unwrap();
    // SAFETY: the layout is not zero-sized; freed below with the same layout.
    let buf = unsafe { std::slice::from_raw_parts_mut(std::alloc::alloc(layout), 1 << 20) };
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let direct = nix::fcntl::OFlag::O_DIRECT.bits();
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(direct)
        .open(&path)
        .unwrap();
    f.write_all(buf).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let expected = buf.to_vec();
    buf.fill(0);
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(direct)
        .open(&path)
        .unwrap();
    f.read_exact(buf).unwrap();
    assert!(buf == &expected[..], "O_DIRECT read back differs on {dir}");
    // SAFETY: allocated above with this layout; `buf` is not used after.
    unsafe { std::alloc::dealloc(buf.as_mut_ptr(), layout) };
    fs::remove_file(&path).unwrap();
}

struct Unmount(String);

impl Drop for Unmount {
    fn drop(&mut self) {
        run(&["umount", &self.0]);
    }
}

#[test]
#[ignore = "needs the vm tier (tests/vm/run)"]
fn nfs_v3_and_v4_2_mounts_take_o_direct_writes() {
    depot_testkit::require_vm();
    for (vers, export) in [
        ("3", env("DEPOT_VM_NFS_V3")),
        ("4.2", env("DEPOT_VM_NFS_V4")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().to_str().unwrap().to_string();
        ok(&[
            "mount",
            "-t",
            "nfs",
            "-o",
            &format!("vers={vers}"),
            &export,
            &mnt,
        ]);
        let _unmount = Unmount(mnt.clone());
        let mounts = fs::read_to_string("/proc/mounts").unwrap();
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(&mnt[..]))
            .unwrap();
        assert!(line.contains(&format!("vers={vers}")), "{line}");
        o_direct_round_trip(&mnt);
    }
}
