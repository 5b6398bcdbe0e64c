//! Issue 17's disaster recovery of a block domain in the VM tier
//! (tests/vm/run; docs/dr.md): a block domain on the guest's iSCSI LUN A
//! (LIO, CHAP, two paths through dm-multipath), master of a pool, with a
//! qcow2 and a raw volume holding data and an OVF_STORE describing two
//! VMs. The primary host leaves cleanly (pool disconnected, daemon
//! stopped, VG deactivated); LUN A is copied block for block onto LUN B
//! (`dd` with O_DIRECT in the guest, as an array's replication would);
//! then the primary site is lost: LUN A is unmapped from the LIO target and
//! its devices removed, so that only B carries the PV (LVM never sees a
//! duplicate). A fresh depotd (the recovery host; every host runs its own
//! sanlock daemon, with the watchdog) runs
//! `DR.failover` with an iSCSI mapping (primary: LUN A behind one portal,
//! secondary: LUN B behind the other portal of the same target, with the
//! target's CHAP credentials; the test logs out of that portal and deletes
//! its node record after the dry run, so depot logs in itself): the job
//! finds the domain by its UUID on B's VG, takes it over into the recovery
//! pool with this host SPM, and reports both VMs with their disks present
//! and complete; the volumes' data reads back on B.

mod common;
#[allow(unused_imports)]
mod ovf_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Daemon;
use depot_client::Client;
use depot_testkit::sanlock::{NoDaemon, SanlockHost, Wdmd};
use ovf_common::Entity;
use serde_json::{json, Value};
use storage_common::*;
use support::vm::{env, ok, run, wait_for, Luns};

const ISCSI: i64 = 3;
const SLOW: Duration = Duration::from_secs(600);
/// sanlock on: each host runs its own daemon (with the watchdog, through
/// wdmd on softdog, as vm_two_hosts), so the fence check of step 4 reads
/// the replica's lockspace for real; io_timeout 4 s keeps each join to
/// about 10 s. A refusal by a live host is the root tier's
/// (dr_failover.rs).
const DR_CONFIG: &str =
    "[storage]\nmonitor_interval_s = 0.2\n[sanlock]\nenabled = true\nio_timeout_s = 4\n";
const PROD: &str = "5849b030-626e-47cb-ad90-3ce782d831b3";
const RECOVERY: &str = "a1f2c3d4-0e5f-4a6b-8c7d-9e0f1a2b3c4d";
const LIO: &str = "/sys/kernel/config/target";

/// A LUN of the guest's target: its WWID, its LIO LUN number and the
/// guest disk behind it (tests/vm/guest/setup: LUN n is /dev/vd[abc]).
#[derive(Debug, Clone)]
struct Lun {
    wwid: String,
    index: u32,
    disk: PathBuf,
}

impl Lun {
    /// The LUN number and disk of `wwid`, from the SCSI devices' sysfs
    /// entries (`<h:c:t:lun>/device/wwid` is `naa.<hex>`, the map's WWID
    /// `3<hex>`).
    fn of(wwid: &str) -> Lun {
        for e in std::fs::read_dir("/sys/class/scsi_disk").unwrap() {
            let e = e.unwrap();
            let hctl = e.file_name().to_string_lossy().into_owned();
            let Ok(w) = std::fs::read_to_string(e.path().join("device/wwid")) else {
                continue;
            };
            let w = w.trim().trim_start_matches("naa.");
            if format!("3{w}") == wwid {
                let index: u32 = hctl.rsplit(':').next().unwrap().parse().unwrap();
                let disk = PathBuf::from(format!("/dev/vd{}", (b'a' + index as u8) as char));
                return Lun {
                    wwid: wwid.to_string(),
                    index,
                    disk,
                };
            }
        }
        panic!("no SCSI device with the WWID {wwid}");
    }

    fn tpg_lun(&self) -> PathBuf {
        Path::new(LIO).join(format!(
            "iscsi/{}/tpgt_1/lun/lun_{}",
            env("DEPOT_VM_ISCSI_IQN"),
            self.index
        ))
    }

    fn backstore(&self) -> PathBuf {
        Path::new(LIO).join(format!("core/iblock_{0}/lun{0}", self.index))
    }

    /// The SCSI disks (sdX) that are its paths.
    fn paths(&self) -> Vec<String> {
        ok(&["multipathd", "show", "paths", "raw", "format", "%w %d"])
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(w, _)| *w == self.wwid)
            .map(|(_, d)| d.trim().to_string())
            .collect()
    }
}

/// A site's LUN made unreachable: unmapped from the LIO target (both
/// portals share the TPG), its SCSI devices deleted and its map flushed.
/// Dropping it maps the LUN back and wipes both LUNs' PV labels, so that
/// the binaries after this one see three clean LUNs and no duplicate PV;
/// [`LostLun::back`] maps it back as it is instead (the wipe is then the
/// next guard's).
struct LostLun {
    lost: Lun,
    copy: Lun,
    wipe: bool,
}

impl LostLun {
    fn lose(lost: &Lun, copy: &Lun) -> LostLun {
        let paths = lost.paths();
        assert!(!paths.is_empty(), "LUN {} has no path", lost.wwid);
        let guard = LostLun {
            lost: lost.clone(),
            copy: copy.clone(),
            wipe: true,
        };
        let link = lost.tpg_lun().join(format!("lun{}", lost.index));
        std::fs::remove_file(&link).unwrap_or_else(|e| panic!("unmap {}: {e}", link.display()));
        std::fs::remove_dir(lost.tpg_lun())
            .unwrap_or_else(|e| panic!("rmdir {}: {e}", lost.tpg_lun().display()));
        ok(&["multipath", "-f", &lost.wwid]);
        for sd in &paths {
            std::fs::write(format!("/sys/block/{sd}/device/delete"), "1")
                .unwrap_or_else(|e| panic!("delete {sd}: {e}"));
        }
        run(&["multipath", "-f", &lost.wwid]);
        let map = format!("/dev/mapper/{}", lost.wwid);
        wait_for("LUN A's map and paths to go", || {
            !Path::new(&map).exists()
                && paths
                    .iter()
                    .all(|sd| !Path::new(&format!("/sys/block/{sd}")).exists())
        });
        // A rescan of both sessions must not bring it back.
        ok(&["iscsiadm", "-m", "session", "-R"]);
        std::thread::sleep(Duration::from_secs(1));
        assert!(!Path::new(&map).exists(), "LUN A came back after a rescan");
        guard
    }
}

impl LostLun {
    /// Maps the LUN back into the TPG, its content as it is.
    fn map_back(&self) {
        let dir = self.lost.tpg_lun();
        if !dir.exists() {
            let _ = std::fs::create_dir(&dir);
            let _ = std::os::unix::fs::symlink(
                self.lost.backstore(),
                dir.join(format!("lun{}", self.lost.index)),
            );
        }
    }

    /// The LUN back, as the site's array would present it again: mapped,
    /// the sessions rescanned, its multipath map there.
    fn back(mut self) {
        self.wipe = false;
        self.map_back();
        ok(&["iscsiadm", "-m", "session", "-R"]);
        let map = format!("/dev/mapper/{}", self.lost.wwid);
        wait_for("the LUN's map to come back", || Path::new(&map).exists());
    }
}

impl Drop for LostLun {
    fn drop(&mut self) {
        self.map_back();
        if !self.wipe {
            return;
        }
        for lun in [&self.lost, &self.copy] {
            let of = format!("of={}", lun.disk.display());
            run(&[
                "dd",
                "if=/dev/zero",
                &of,
                "bs=1M",
                "count=1",
                "oflag=direct",
            ]);
        }
    }
}

/// How many MiB of LUN `lun` its PV uses: up to the end of its last
/// allocated extent (the label and metadata area are before the first).
/// Beyond it the PV's extents are free: nothing of the domain is there.
fn used_mib(lun: &Lun, cfg: &str) -> u64 {
    let dev = format!("/dev/mapper/{}", lun.wwid);
    let head = ok(&[
        "pvs",
        "--config",
        cfg,
        "--noheadings",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        "pe_start,vg_extent_size",
        &dev,
    ]);
    let nums: Vec<u64> = head
        .split_whitespace()
        .map(|n| n.parse().unwrap_or_else(|_| panic!("pvs: {head}")))
        .collect();
    let segs = ok(&[
        "pvs",
        "--config",
        cfg,
        "--noheadings",
        "--segments",
        "-o",
        "pvseg_start,pvseg_size,lv_name",
        &dev,
    ]);
    let end = segs
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| f[0].parse::<u64>().unwrap() + f[1].parse::<u64>().unwrap())
        })
        .max()
        .unwrap_or_else(|| panic!("no allocated segment on {dev}: {segs}"));
    (nums[0] + end * nums[1]).div_ceil(MIB)
}

/// A block-for-block copy of `from` onto `to`, below the LIO target (the
/// LUNs' backing disks, as an array replicates under its SCSI targets):
/// `to`'s range zeroed first (write-zeroes: qemu allocates it without
/// writing data), then
/// every non-zero MiB of `from`'s first `mib` written at its offset
/// (`conv=sparse`), O_DIRECT both ways. Through the iSCSI paths the same
/// copy costs TCG's TCP copies.
fn replicate(from: &Lun, to: &Lun, mib: u64) {
    let t = Instant::now();
    let dev = to.disk.to_str().unwrap();
    let name = dev.trim_start_matches("/dev/");
    let wz = std::fs::read_to_string(format!("/sys/block/{name}/queue/write_zeroes_max_bytes"))
        .unwrap_or_default();
    assert!(
        wz.trim().parse::<u64>().unwrap_or(0) > 0,
        "{dev} has no write-zeroes ({wz:?}): zeroing would write every byte"
    );
    // -f: LIO holds the disk open exclusively; blkdiscard wants O_EXCL.
    // Only the range copied: the host allocates what is zeroed.
    ok(&[
        "blkdiscard",
        "-f",
        "-z",
        "-l",
        &format!("{}", mib * MIB),
        dev,
    ]);
    let zeroed = t.elapsed();
    ok(&[
        "dd",
        &format!("if={}", from.disk.display()),
        &format!("of={dev}"),
        "bs=1M",
        &format!("count={mib}"),
        "iflag=direct",
        "oflag=direct",
        "conv=sparse,fsync",
    ]);
    println!(
        "vm_dr: LUN {} ({mib} MiB used) copied onto LUN {} in {} ms (zeroing {} ms)",
        from.index,
        to.index,
        t.elapsed().as_millis(),
        zeroed.as_millis()
    );
    // The initiator's cache of B's map holds nothing of the copy.
    ok(&[
        "blockdev",
        "--flushbufs",
        &format!("/dev/mapper/{}", to.wwid),
    ]);
}

fn mapping(sd: &str, a: &Lun, b: &Lun) -> String {
    let iqn = env("DEPOT_VM_ISCSI_IQN");
    let port = env("DEPOT_VM_ISCSI_PORT");
    let (user, password) = (env("DEPOT_VM_CHAP_USER"), env("DEPOT_VM_CHAP_PASSWORD"));
    let portals: Vec<String> = env("DEPOT_VM_ISCSI_PORTALS")
        .split(',')
        .map(str::to_string)
        .collect();
    // One target, two portals: the primary site's LUN behind the first,
    // the replica's behind the second (a guest has one LIO target).
    format!(
        r#"
version = 1
[pool.primary]
id = "{PROD}"
name = "Prod"
[pool.secondary]
id = "{RECOVERY}"
name = "Recovery"
[hosts]
this_host = 2
primary_site = [1]
secondary_site = [2]

[[connections]]
name = "san"
type = "ISCSI"
domains = ["{sd}"]
[connections.primary]
address = "{}"
port = {port}
targets = ["{iqn}"]
luns = ["{}"]
username = "{user}"
password = "{password}"
[connections.secondary]
address = "{}"
port = {port}
targets = ["{iqn}"]
luns = ["{}"]
username = "{user}"
password = "{password}"
"#,
        portals[0], a.wwid, portals[1], b.wwid,
    )
}

/// Logs out of portal `i` of the target and deletes its node record.
fn forget_portal(luns: &Luns, i: usize) {
    let port = env("DEPOT_VM_ISCSI_PORT");
    let portal = format!(
        "{}:{port}",
        env("DEPOT_VM_ISCSI_PORTALS")
            .split(',')
            .nth(i)
            .expect("the portal")
    );
    for op in [&["--logout"][..], &["-o", "delete"]] {
        let mut argv = vec!["iscsiadm", "-m", "node", "-T", &luns.iqn, "-p", &portal];
        argv.extend_from_slice(op);
        ok(&argv);
    }
}

async fn wait_job(c: &Client, id: &str) -> Value {
    let deadline = Instant::now() + SLOW;
    loop {
        let jobs = call_ok(c, "Host.getJobs", json!({"job_ids": [id]})).await;
        let job = jobs[id].clone();
        let status = job["status"].as_str().unwrap_or("").to_string();
        if !matches!(status.as_str(), "pending" | "running") {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "DR job {id} still {status} after {} s: {job}",
            SLOW.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn task_end(c: &Client, task: &str) -> Value {
    let start = Instant::now();
    loop {
        let s = call_ok(c, "Task.getStatus", json!({"taskID": task})).await;
        if s["taskState"] == "finished" {
            return s;
        }
        assert!(start.elapsed() < SLOW, "task {task}: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A volume made LEGAL (the engine's last step of a creation).
async fn volume(
    c: &Client,
    sd: &str,
    size: u64,
    format: &str,
    alloc: &str,
    disk_type: &str,
) -> (String, String) {
    let (img, vol) = (new_id(), new_id());
    let mut p = volume_params(sd, &img, &vol, size, format, alloc, "", None);
    p["diskType"] = json!(disk_type);
    call_ok(c, "Volume.create", p).await;
    call_ok(
        c,
        "Volume.setLegality",
        json!({"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img,
               "volumeID": vol, "legality": "LEGAL"}),
    )
    .await;
    (img, vol)
}

async fn set_description(c: &Client, sd: &str, v: &(String, String), desc: &str) {
    let mut p = vol_ref(sd, &v.0, &v.1);
    p["description"] = json!(desc);
    assert_eq!(call_ok(c, "Volume.setDescription", p).await, json!(true));
}

/// Prepares a volume in `sp`, runs qemu-io's `cmd` on it, tears it down;
/// qemu-io's output.
async fn qemu_io(
    c: &Client,
    sp: &str,
    sd: &str,
    v: &(String, String),
    fmt: &str,
    cmd: &str,
) -> String {
    let prep = call_ok(
        c,
        "Image.prepare",
        json!({"storagepoolID": sp, "storagedomainID": sd, "imageID": v.0, "volumeID": v.1}),
    )
    .await;
    let path = prep["path"].as_str().expect("a path").to_string();
    let out = ok(&["qemu-io", "-t", "none", "-f", fmt, "-c", cmd, &path]);
    call_ok(
        c,
        "Image.teardown",
        json!({"storagepoolID": sp, "storagedomainID": sd, "imageID": v.0}),
    )
    .await;
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("error"),
        "qemu-io {cmd} on {path}: {out}"
    );
    out
}

struct Site {
    sd: String,
    web: (String, String),
    db: (String, String),
    store: (String, String),
    entities: Vec<Entity>,
}

/// The primary site on LUN A, daemon `d` its only host (host 1): a block
/// domain, master of the pool Prod; a qcow2 and a raw volume with data;
/// an OVF_STORE with two VMs. Left cleanly: the pool disconnected.
async fn primary_site(d: &Daemon, a: &Lun) -> Site {
    let mut c = d.client().await;
    c.set_call_timeout(SLOW);
    let sd = new_id();
    let vg_uuid = call_ok(
        &c,
        "LVMVolumeGroup.create",
        json!({"name": sd, "devlist": [a.wwid], "force": false}),
    )
    .await;
    call_ok(
        &c,
        "StorageDomain.create",
        create_domain_params(&sd, ISCSI, vg_uuid.as_str().unwrap(), "dr-block", 512),
    )
    .await;
    let web = volume(&c, &sd, 64 * MIB, "COW", "SPARSE", "DATA").await;
    let db = volume(&c, &sd, 128 * MIB, "RAW", "PREALLOCATED", "DATA").await;
    let store = volume(&c, &sd, 128 * MIB, "RAW", "PREALLOCATED", "OVFS").await;
    set_description(
        &c,
        &sd,
        &store,
        r#"{"Updated":false,"Disk Description":"OVF_STORE"}"#,
    )
    .await;
    let entities = vec![
        Entity::vm("web", &[(web.0.as_str(), web.1.as_str())]),
        Entity::vm("db", &[(db.0.as_str(), db.1.as_str())]),
    ];
    let tar = ovf_common::engine_tar(&sd, &entities, &[]);
    let headers = [
        ("Storage-Pool-Id", BLANK),
        ("Storage-Domain-Id", sd.as_str()),
        ("Image-Id", store.0.as_str()),
        ("Volume-Id", store.1.as_str()),
    ];
    let mut tc = d.tls_client().await;
    tc.set_call_timeout(SLOW);
    tc.put_stream(&headers, tar.len() as u64, &tar[..])
        .await
        .expect("OVF_STORE PUT on the block domain");
    set_description(
        &c,
        &sd,
        &store,
        &format!(
            r#"{{"Updated":true,"Size":{},"Last Updated":"Mon May 06 07:08:09 UTC 2024","Storage Domains":[{{"uuid":"{sd}"}}],"Disk Description":"OVF_STORE"}}"#,
            tar.len()
        ),
    )
    .await;
    call_ok(
        &c,
        "StoragePool.create",
        json!({"storagepoolID": PROD, "name": "Prod", "masterSdUUID": sd,
               "masterVersion": 1, "domainList": [sd]}),
    )
    .await;
    call_ok(
        &c,
        "StoragePool.connect",
        json!({"storagepoolID": PROD, "hostID": 1, "scsiKey": PROD, "masterSdUUID": sd,
               "masterVersion": 1, "domainDict": {sd.clone(): "active"}}),
    )
    .await;
    // Host 1 in the lockspace before it leaves (released, its delta lease
    // is free on the copy too).
    storage_common::sanlock_pool::until_acquired(&c, &sd).await;
    // Data in both disks, read back after the failover from LUN B.
    qemu_io(&c, PROD, &sd, &web, "qcow2", "write -P 0x5a 0 4M").await;
    qemu_io(&c, PROD, &sd, &db, "raw", "write -P 0xa5 1M 4M").await;
    call_ok(
        &c,
        "StoragePool.disconnect",
        json!({"storagepoolID": PROD, "hostID": 1, "scsiKey": PROD}),
    )
    .await;
    Site {
        sd,
        web,
        db,
        store,
        entities,
    }
}

/// What a run's report must say besides the VMs.
struct Expect {
    operation: &'static str,
    /// The pool in the metadata step 3 found (the site's before the run).
    found_in: &'static str,
    /// The pool taken over into, its master version and this host's id.
    pool: &'static str,
    master_version: u64,
    host_id: u64,
}

const FAILOVER: Expect = Expect {
    operation: "failover",
    found_in: PROD,
    pool: RECOVERY,
    master_version: 2,
    host_id: 2,
};

const FAILBACK: Expect = Expect {
    operation: "failback",
    found_in: RECOVERY,
    pool: PROD,
    master_version: 3,
    host_id: 1,
};

fn check_report(report: &Value, site: &Site, x: &Expect) {
    assert_eq!(report["operation"], x.operation, "{report}");
    assert_eq!(report["steps_done"], 5, "{report}");
    // The fence check: step 1 cannot read a lockspace this host is not
    // in yet; step 4 reads it after joining, and the other site's host
    // (which left cleanly) holds no id there.
    assert_eq!(report["fence"]["verdict"], "unknown", "{report}");
    assert_eq!(report["takeover"]["fence"]["verdict"], "pass", "{report}");
    // Step 2: the primary's portal logged out; the secondary's logged
    // in by depot with the mapping's CHAP credentials (the test logged
    // it out and deleted its node record before), never naming them.
    let conns = report["connections"].as_array().expect("connections");
    assert!(
        conns
            .iter()
            .any(|c| c["side"] == "primary" && c["action"] == "disconnect" && c["outcome"] == "ok"),
        "{report}"
    );
    assert!(
        conns.iter().any(|c| c["side"] == "secondary"
            && c["action"] == "connect"
            && c["outcome"] == "ok"
            && c["connection"]
                .as_str()
                .is_some_and(|d| d.ends_with("(CHAP)"))),
        "{report}"
    );
    let secret = env("DEPOT_VM_CHAP_PASSWORD");
    assert!(
        !report.to_string().contains(&secret),
        "the CHAP secret in the report"
    );
    // Step 3: found by its UUID, on LUN B's VG, its metadata as the
    // primary left it.
    let doms = report["domains"].as_array().expect("domains");
    assert_eq!(doms.len(), 1, "{report}");
    let dom = &doms[0];
    assert_eq!(dom["sd"], site.sd.as_str());
    assert!(dom["problem"].is_null(), "{dom}");
    assert_eq!(dom["path"], format!("VG {}", site.sd), "{dom}");
    assert_eq!(dom["metadata"]["role"], "Master", "{dom}");
    assert_eq!(dom["metadata"]["pools"], json!([x.found_in]), "{dom}");
    // Step 4: the pool recovered into, this host its SPM, the domain its
    // master at the next version.
    let t = &report["takeover"];
    assert_eq!(t["pool"], x.pool, "{report}");
    assert_eq!(t["master"], site.sd.as_str());
    assert_eq!(t["master_version"], x.master_version);
    assert_eq!(t["host_id"], x.host_id);
    // Step 5: both VMs, each disk present and complete, from the store.
    let ents = report["entities"].as_array().expect("entities");
    assert_eq!(ents.len(), site.entities.len(), "{report}");
    for e in &site.entities {
        let found = ents
            .iter()
            .find(|v| v["id"] == e.id.as_str())
            .unwrap_or_else(|| panic!("{} not in the report: {report}", e.name));
        assert_eq!(found["name"], e.name.as_str());
        assert_eq!(found["kind"], "VM");
        let copy = found["ovf_copy"].as_str().unwrap();
        assert!(
            copy.contains(&site.store.1) && copy.contains("valid, generation"),
            "{found}"
        );
        let disks = found["disks"].as_array().unwrap();
        assert_eq!(disks.len(), e.disks.len(), "{found}");
        for (disk, (img, vol)) in disks.iter().zip(&e.disks) {
            assert_eq!(disk["image"], img.as_str());
            assert_eq!(disk["volume"], vol.as_str());
            assert_eq!(disk["present"], true, "{disk}");
            assert_eq!(disk["complete"], true, "{disk}");
            assert_eq!(disk["legality"], "LEGAL", "{disk}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the vm tier (tests/vm/run)"]
async fn block_domain_fails_over_to_a_lun_copied_block_for_block() {
    depot_testkit::require_vm();
    let t0 = Instant::now();
    let luns = Luns::login();
    let (a, b) = (Lun::of(&luns.wwids[0]), Lun::of(&luns.wwids[1]));
    assert_ne!(a.index, b.index);
    // The sanlock daemons: the lost site's host (id 1, which fails back
    // later) and the recovery host (id 2).
    let lock = NoDaemon::hold().expect("the sanlock lock");
    let wdmd = Wdmd::start(&lock).expect("wdmd on softdog");
    let lost_site = SanlockHost::start_watched(&lock, "prod", &wdmd).expect("sanlock host");
    let recovery = SanlockHost::start_watched(&lock, "recovery", &wdmd).expect("sanlock host");

    // 1. The primary site, built by its host, which then leaves cleanly.
    let mut primary = Daemon::start_in(&lost_site.ns_prefix(), DR_CONFIG);
    let site = primary_site(&primary, &a).await;
    primary.stop();
    left(&lost_site, &site.sd);
    let cfg = luns.lvm_config();
    ok(&["vgchange", "--config", &cfg, "-an", &site.sd]);
    println!("vm_dr: primary site built in {} s", t0.elapsed().as_secs());

    // 2. The replica: LUN A block for block onto LUN B. 3. LUN A lost.
    let mib = used_mib(&a, &cfg);
    replicate(&a, &b, mib);
    assert_eq!(a.paths().len(), 2, "LUN A has two paths");
    let lost = LostLun::lose(&a, &b);
    let pvs = ok(&[
        "pvs",
        "--config",
        &cfg,
        "--noheadings",
        "-o",
        "pv_name,vg_name",
    ]);
    let on_b: Vec<&str> = pvs.lines().filter(|l| l.contains(&site.sd)).collect();
    assert_eq!(on_b.len(), 1, "only LUN B carries the VG: {pvs}");
    assert!(on_b[0].contains(&b.wwid), "{pvs}");

    // 4. The recovery host: a fresh depotd, never connected to Prod.
    let d = Daemon::start_in(&recovery.ns_prefix(), DR_CONFIG);
    let mut c = d.client().await;
    c.set_call_timeout(SLOW);
    let text = mapping(&site.sd, &a, &b);
    let plan = call_ok(&c, "DR.plan", json!({"mapping": text})).await;
    println!("vm_dr: DR.plan: {plan}");
    // The dry run reads the replica's VG already (its portal is logged
    // in): the domain found by its UUID on B, nothing done.
    let dry = call_ok(&c, "DR.failover", json!({"mapping": text, "dryRun": true})).await;
    assert!(dry.get("job_id").is_none(), "{dry}");
    let found = &dry["dry_run"]["domains"];
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{dry}");
    assert_eq!(found[0]["path"], format!("VG {}", site.sd), "{dry}");
    assert!(found[0]["problem"].is_null(), "{dry}");
    assert_eq!(found[0]["metadata"]["pools"], json!([PROD]), "{dry}");
    let st = call_ok(&c, "DR.status", json!({})).await;
    assert_eq!(st, json!({"state": "none"}), "the dry run wrote no journal");
    // The replica's portal logged out and its node record (with the
    // test's CHAP settings) deleted: step 2 logs in with the mapping's.
    forget_portal(&luns, 1);
    let t = Instant::now();
    let started = call_ok(&c, "DR.failover", json!({"mapping": text})).await;
    let id = started["job_id"].as_str().expect("a job id").to_string();
    let job = wait_job(&c, &id).await;
    assert_eq!(job["status"], "done", "{job}\n{}", d.log());
    println!("vm_dr: DR.failover done in {} ms", t.elapsed().as_millis());
    let report = job["result"].clone();
    println!("vm_dr: report: {report}");
    check_report(&report, &site, &FAILOVER);
    assert!(
        !d.log().contains(&env("DEPOT_VM_CHAP_PASSWORD")),
        "the CHAP secret in the daemon log"
    );
    let st = call_ok(&c, "DR.status", json!({})).await;
    assert_eq!(st["state"], "finished", "{st}");

    // The pool is up on the recovery side, this host its SPM; the domain
    // is its master, on LUN B.
    let spm = call_ok(
        &c,
        "StoragePool.getSpmStatus",
        json!({"storagepoolID": RECOVERY}),
    )
    .await;
    assert_eq!(spm["spmStatus"], "SPM", "{spm}");
    let info = call_ok(
        &c,
        "StorageDomain.getInfo",
        json!({"storagedomainID": site.sd}),
    )
    .await;
    assert_eq!(info["role"], "Master", "{info}");
    assert_eq!(info["pool"], json!([RECOVERY]), "{info}");
    assert_eq!(info["metadataDevice"], json!(b.wwid), "{info}");
    // The data written on A reads back from B.
    qemu_io(
        &c,
        RECOVERY,
        &site.sd,
        &site.web,
        "qcow2",
        "read -P 0x5a 0 4M",
    )
    .await;
    qemu_io(
        &c,
        RECOVERY,
        &site.sd,
        &site.db,
        "raw",
        "read -P 0xa5 1M 4M",
    )
    .await;

    // A rerun answers the same report and changes nothing.
    let again = call_ok(&c, "DR.failover", json!({"mapping": text})).await;
    let again = wait_job(&c, again["job_id"].as_str().unwrap()).await;
    assert_eq!(again["status"], "done", "{again}");
    assert_eq!(again["result"], report, "the rerun's report");

    // The recovery site leaves cleanly (the SPM role given back, the pool
    // left, the daemon stopped, the VG deactivated), for the failback.
    leave(&c, RECOVERY, 2).await;
    drop(c);
    let mut d = d;
    d.stop();
    left(&recovery, &site.sd);
    ok(&["vgchange", "--config", &cfg, "-an", &site.sd]);
    let mib = used_mib(&b, &cfg);
    println!("vm_dr: failover part {} s", t0.elapsed().as_secs());
    failback(&text, &site, &lost_site, lost, (&a, &b), mib).await;
    println!("vm_dr: {} s in all", t0.elapsed().as_secs());
}

/// Waits until `host`'s sanlock daemon has left `sd`'s lockspace (a pool
/// disconnect removes it asynchronously; its `ids` LV stays open until
/// then, and the VG cannot be deactivated).
fn left(host: &SanlockHost, sd: &str) {
    let prefix = format!("{sd}:");
    wait_for("the host's daemon to leave the lockspace", || {
        host.lockspaces()
            .expect("sanlock client status")
            .iter()
            .all(|l| !l.starts_with(&prefix))
    });
}

/// Gives the SPM role of `sp` back and leaves the pool.
async fn leave(c: &Client, sp: &str, host_id: u64) {
    let task = call_ok(c, "StoragePool.spmStop", json!({"storagepoolID": sp})).await;
    if let Some(task) = task.as_str() {
        task_end(c, task).await;
    }
    call_ok(
        c,
        "StoragePool.disconnect",
        json!({"storagepoolID": sp, "hostID": host_id, "scsiKey": sp}),
    )
    .await;
}

/// The failback to LUN A (docs/dr.md "Failback"), run by a host of the
/// lost site (id 1). Step 1 reads the domain's metadata on B, the site
/// running now (where the copy is: the block domain's VG on B's LUN
/// alone). The job pauses after step 1 (the test hook) and is killed
/// there, so that the LUNs can be swapped as the arrays would present
/// them (one LIO TPG serves both portals here: B unmapped, A mapped back
/// with what the lost site left); the rerun continues at step 2 (B's
/// portal logged out, A's logged in with the mapping's CHAP credentials)
/// and refuses in step 3 (9051): A's metadata is not B's. B copied block
/// for block onto A (the resync), the rerun continues at step 3 and
/// takes the domain over into Prod (master version 3), the VMs found and
/// the data read back from A.
async fn failback(
    text: &str,
    site: &Site,
    host: &SanlockHost<'_>,
    lost_a: LostLun,
    ab: (&Lun, &Lun),
    mib: u64,
) {
    let (a, b) = ab;
    let mut f = Daemon::start_in_with_env(
        &host.ns_prefix(),
        DR_CONFIG,
        &[("DEPOTD_TEST_DR_PAUSE_AFTER_STEP", "1")],
    );
    let mut c = f.client().await;
    c.set_call_timeout(SLOW);
    let params = json!({"mapping": text, "hostId": 1});
    let started = call_ok(&c, "DR.failback", params.clone()).await;
    assert!(started["job_id"].is_string(), "{started}");
    let journal = f.state_dir().join("dr-journal.json");
    let read_journal = || -> Value {
        std::fs::read(&journal)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while read_journal()["steps_done"].as_u64() < Some(1) {
        assert!(Instant::now() < deadline, "step 1 not done: {}", f.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let j = read_journal();
    let read_on_b = &j["primary_metadata"];
    assert_eq!(read_on_b.as_array().map(Vec::len), Some(1), "{j}");
    assert_eq!(read_on_b[0]["sd"], site.sd.as_str(), "{j}");
    assert_eq!(
        read_on_b[0]["pools"],
        json!([RECOVERY]),
        "B's metadata: {j}"
    );
    drop(c);
    f.crash();

    // The swap: B gone first, then A back (never both: one PV twice).
    let lost_b = LostLun::lose(b, a);
    lost_a.back();
    f.restart();
    let mut c = f.client().await;
    c.set_call_timeout(SLOW);
    let st = call_ok(&c, "DR.status", json!({})).await;
    assert_eq!(st["state"], "interrupted", "{st}");
    let started = call_ok(&c, "DR.failback", params.clone()).await;
    let job = wait_job(&c, started["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], 9051, "{job}");
    let why = job["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains(&site.sd) && why.contains(PROD), "{why}");
    assert_eq!(read_journal()["steps_done"], 2, "refused in step 3");

    // The resync (B onto A, below the target), then the rerun.
    replicate(b, a, mib);
    let started = call_ok(&c, "DR.failback", params).await;
    let job = wait_job(&c, started["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "done", "{job}\n{}", f.log());
    let report = job["result"].clone();
    println!("vm_dr: failback report: {report}");
    check_report(&report, site, &FAILBACK);
    let info = call_ok(
        &c,
        "StorageDomain.getInfo",
        json!({"storagedomainID": site.sd}),
    )
    .await;
    assert_eq!(info["pool"], json!([PROD]), "{info}");
    assert_eq!(info["metadataDevice"], json!(a.wwid), "{info}");
    qemu_io(&c, PROD, &site.sd, &site.web, "qcow2", "read -P 0x5a 0 4M").await;
    qemu_io(&c, PROD, &site.sd, &site.db, "raw", "read -P 0xa5 1M 4M").await;
    assert!(
        !f.log().contains(&env("DEPOT_VM_CHAP_PASSWORD")),
        "the CHAP secret in the daemon log"
    );

    // Clean up: the pool left, the domain formatted (its VG on A
    // removed); B mapped back and both LUNs wiped by the guard.
    leave(&c, PROD, 1).await;
    left(host, &site.sd);
    call_ok(
        &c,
        "StorageDomain.format",
        json!({"storagedomainID": site.sd, "autoDetach": true}),
    )
    .await;
    drop(c);
    f.stop();
    drop(lost_b);
}
