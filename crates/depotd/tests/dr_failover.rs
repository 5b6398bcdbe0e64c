//! `DR.failover` and `DR.failback` end to end on LOCALFS (temporary
//! directories, no root, no sanlock): a primary site with a pool, a data
//! domain and a backup domain, VMs' disks and an OVF_STORE; the replica
//! made by copying it (`cp -a`); the dry run changing nothing; the
//! failover's report listing every VM with its disks present and
//! complete, the master never the backup domain; a rerun changing
//! nothing and answering the same report; failback refused while the
//! primary's metadata was not copied back, and done once it was (the
//! replica copied while a VM writes to its disk); a `kill -9` between steps, then the rerun ending with the same report; a
//! different mapping refused while a journal is open.

mod common;
mod ovf_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{eventually, Daemon};
use depot_client::Client;
use depot_ovf_archive::archive::{Archive, Limits, Mode};
use depot_testkit::sanlock::NoDaemon;
use ovf_common::*;
use serde_json::{json, Value};
use storage_common::*;

use storage_common::dr_mapping::{localfs_mapping, PROD, RECOVERY};
use storage_common::sanlock_hosts::*;
use storage_common::sanlock_pool::{join_pool_on, pool, pool_connect, until_acquired};

fn mapping(primary: &Path, secondary: &Path, sd: &str, bk: &str) -> String {
    localfs_mapping(PROD, primary, secondary, &[bk, sd])
}

fn cp_a(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// The primary site: a pool `Prod` (this host connected as host 1) with
/// a data domain (its master) and a backup domain, three entities' disks
/// and an OVF_STORE listing them.
struct Site {
    prod: tempfile::TempDir,
    replica: tempfile::TempDir,
    sd: String,
    bk: String,
    entities: Vec<Entity>,
    /// The data domain on the primary, and its OVF_STORE.
    dom: Domain,
    store: Vol,
    /// With `Site::new(d, true)`: a disk no entity of the store uses yet,
    /// in the replica too (a VM the engine adds after the copy).
    spare: Option<Vol>,
}

impl Site {
    fn prod(&self) -> PathBuf {
        self.prod.path().canonicalize().unwrap()
    }
    fn replica(&self) -> PathBuf {
        self.replica.path().canonicalize().unwrap()
    }
    fn mapping(&self) -> String {
        mapping(&self.prod(), &self.replica(), &self.sd, &self.bk)
    }

    async fn new(d: &Daemon) -> Site {
        Site::with_spare(d, false).await
    }

    async fn with_spare(d: &Daemon, spare: bool) -> Site {
        let prod = tempfile::tempdir().unwrap();
        let replica = tempfile::tempdir().unwrap();
        let root = prod.path().canonicalize().unwrap();
        let dom = Domain::create(d, LOCALFS, ConnectionSpec::local(&root), 512).await;
        let c = &dom.c;
        let bk = new_id();
        call_ok(
            c,
            "StorageDomain.create",
            create_domain_params(&bk, LOCALFS, &dom.conn.connection, "backup", 512),
        )
        .await;
        call_ok(
            c,
            "StorageDomain.setBackup",
            json!({"storagedomainID": bk, "backup": true}),
        )
        .await;
        // Disks: a template's, a VM's two, a VM's base and its snapshot.
        let (t, a, b, s) = (new_id(), new_id(), new_id(), new_id());
        let tpl = dom.create_volume(&t, MIB, "RAW", "DATA", None).await;
        let d1 = dom.create_volume(&a, MIB, "RAW", "DATA", None).await;
        let d2 = dom.create_volume(&b, 2 * MIB, "COW", "DATA", None).await;
        let base = dom.create_volume(&s, MIB, "RAW", "DATA", None).await;
        let snap = dom
            .create_volume(&s, MIB, "COW", "DATA", Some(&base.vol))
            .await;
        let spare = match spare {
            true => Some(dom.create_volume(&new_id(), MIB, "RAW", "DATA", None).await),
            false => None,
        };
        let r = |v: &Vol| (v.img.clone(), v.vol.clone());
        let refs = |vs: &[&Vol]| vs.iter().map(|v| r(v)).collect::<Vec<_>>();
        let as_str = |v: &[(String, String)]| {
            v.iter()
                .map(|(i, v)| (i.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        let e = |name: &str, template: bool, vs: &[&Vol]| {
            let owned = as_str(&refs(vs));
            let borrowed: Vec<(&str, &str)> = owned
                .iter()
                .map(|(i, v)| (i.as_str(), v.as_str()))
                .collect();
            Entity::new(name, template, &borrowed, 0)
        };
        let entities = vec![
            e("rhel9-base", true, &[&tpl]),
            e("web & db", false, &[&d1, &d2]),
            e("vm-snap", false, &[&base, &snap]),
        ];
        let store = dom.create_store().await;
        let tar = engine_tar(&dom.sd, &entities, &[]);
        dom.set_description(&store, &dom.store_description(tar.len()))
            .await;
        put_ok(&Via::unix(d), &store, &tar).await;
        call_ok(
            c,
            "StoragePool.create",
            json!({
                "storagepoolID": PROD, "name": "Prod", "masterSdUUID": dom.sd,
                "masterVersion": 1, "domainList": [dom.sd, bk],
            }),
        )
        .await;
        call_ok(
            c,
            "StoragePool.connect",
            json!({
                "storagepoolID": PROD, "hostID": 1, "scsiKey": PROD,
                "masterSdUUID": dom.sd, "masterVersion": 1,
                "domainDict": {dom.sd.clone(): "active", bk.clone(): "active"},
            }),
        )
        .await;
        let site = Site {
            sd: dom.sd.clone(),
            bk,
            entities,
            prod,
            replica,
            dom,
            store,
            spare,
        };
        // The replica, as replication leaves it: copied while a VM still
        // writes to its disk (the copy of that file is torn, as a
        // replica's is; the volume stays present, legal, its size).
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (stop, path) = (stop.clone(), d1.path.clone());
            std::thread::spawn(move || {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let block = [(n % 251) as u8; 4096];
                    f.write_all_at(&block, (n % 256) * 4096).unwrap();
                    n += 1;
                }
                n
            })
        };
        for sd in [&site.sd, &site.bk] {
            cp_a(&site.prod().join(sd), &site.replica());
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(writer.join().unwrap() > 0, "no write during the copy");
        site
    }
}

/// Everything a dry run must leave alone.
fn trees(d: &Daemon, site: &Site) -> Vec<Tree> {
    vec![
        snapshot(&site.prod()),
        snapshot(&site.replica()),
        snapshot(&repository(d)),
        snapshot(&d.state_dir()),
    ]
}

/// Everything a refused job must leave alone: the storage, the
/// repository, the DR journal and report (the job's own record is the
/// job manager's).
fn storage_trees(d: &Daemon, site: &Site) -> (Vec<Tree>, Vec<Option<Vec<u8>>>) {
    let files = ["dr-journal.json", "dr-report.json"]
        .iter()
        .map(|f| std::fs::read(d.state_dir().join(f)).ok())
        .collect();
    (
        vec![
            snapshot(&site.prod()),
            snapshot(&site.replica()),
            snapshot(&repository(d)),
        ],
        files,
    )
}

fn assert_same_storage(
    before: &(Vec<Tree>, Vec<Option<Vec<u8>>>),
    after: &(Vec<Tree>, Vec<Option<Vec<u8>>>),
    what: &str,
) {
    assert_same(&before.0, &after.0, what);
    assert!(
        before.1 == after.1,
        "{what}: the DR journal or report changed"
    );
}

fn assert_same(before: &[Tree], after: &[Tree], what: &str) {
    for (b, a) in before.iter().zip(after) {
        assert_same_tree(b, a, what);
    }
}

/// Starts a DR job and waits for it: the job's info at its end.
async fn run_job(c: &Client, verb: &str, params: Value) -> Value {
    let started = call_ok(c, verb, params).await;
    let id = started["job_id"].as_str().expect("a job id").to_string();
    wait_job(c, &id).await
}

async fn wait_job(c: &Client, id: &str) -> Value {
    // Step 4 waits up to 180 s for sanlock's host id (root tier).
    let deadline = Instant::now() + Duration::from_secs(400);
    loop {
        let jobs = call_ok(c, "Host.getJobs", json!({"job_ids": [id]})).await;
        let job = jobs[id].clone();
        let status = job["status"].as_str().unwrap_or("").to_string();
        if !matches!(status.as_str(), "pending" | "running") {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} still {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn done(job: &Value) -> Value {
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["progress"], 100, "{job}");
    job["result"].clone()
}

/// What a report says of the VMs: sorted, without times or paths.
fn vms(report: &Value) -> Vec<Value> {
    let mut out: Vec<Value> = report["entities"]
        .as_array()
        .expect("entities")
        .iter()
        .map(|e| {
            json!({
                "name": e["name"], "kind": e["kind"], "id": e["id"],
                "sd": e["sd"], "ovf_copy": e["ovf_copy"], "copy": e["copy"],
                "disks": e["disks"],
            })
        })
        .collect();
    out.sort_by_key(|v| v["name"].as_str().unwrap_or("").to_string());
    out
}

fn check_report(report: &Value, site: &Site, op: &str, pool: &str) {
    assert_eq!(report["version"], 2, "{report}");
    assert_eq!(report["operation"], op);
    assert_eq!(report["steps_done"], 5);
    assert!(report["finished"].is_u64(), "{report}");
    // No sanlock here: the fence could not be read, and says so.
    assert_eq!(report["fence"]["verdict"], "unchecked", "{report}");
    let t = &report["takeover"];
    assert_eq!(t["pool"], pool);
    assert_eq!(t["master"], site.sd.as_str(), "never the backup domain");
    let mut ds: Vec<&str> = t["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    ds.sort();
    let mut want = vec![site.sd.as_str(), site.bk.as_str()];
    want.sort();
    assert_eq!(ds, want);
    let vms = vms(report);
    assert_eq!(vms.len(), site.entities.len(), "{report}");
    for e in &site.entities {
        let found = vms
            .iter()
            .find(|v| v["id"] == e.id.as_str())
            .unwrap_or_else(|| panic!("{} not in the report: {report}", e.name));
        assert_eq!(found["name"], e.name.as_str());
        assert_eq!(found["kind"], if e.template { "TEMPLATE" } else { "VM" });
        assert!(
            found["ovf_copy"]
                .as_str()
                .unwrap()
                .contains("valid, generation"),
            "{found}"
        );
        // No backup provider configured: the domain's OVF_STORE, as
        // before, and the report says so.
        assert_eq!(
            found["copy"],
            json!({
                "provider": "OVF_STORE", "generation": 1,
                "sha256": sha256_hex(e.xml.as_bytes()), "trusted": false,
                "reason": "the domain's OVF_STORE: no backup provider is configured",
                "in_store": true, "store_differs": null,
            }),
            "{found}"
        );
        assert_disks(found, e);
    }
    // The snapshot's chain goes down to its base.
    let snap = vms.iter().find(|v| v["name"] == "vm-snap").unwrap();
    assert_eq!(snap["disks"][1]["chain"].as_array().unwrap().len(), 2);
    // The backup domain has no OVF_STORE: a note, not an error.
    let notes = report["notes"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| n.as_str().unwrap().contains(&site.bk)),
        "{report}"
    );
}

/// Each disk of `e` in the report's entity, present and complete.
fn assert_disks(found: &Value, e: &Entity) {
    let disks = found["disks"].as_array().unwrap();
    assert_eq!(disks.len(), e.disks.len(), "{found}");
    for (disk, (img, vol)) in disks.iter().zip(&e.disks) {
        assert_eq!(disk["image"], img.as_str());
        assert_eq!(disk["volume"], vol.as_str());
        assert_eq!(disk["present"], true, "{disk}");
        assert_eq!(disk["complete"], true, "{disk}");
        assert_eq!(disk["legality"], "LEGAL");
    }
}

fn md(dom: &Path) -> std::collections::BTreeMap<String, String> {
    domain_md(dom)
}

#[tokio::test]
async fn failover_then_failback_on_a_copied_localfs_site() {
    let d = Daemon::start(CONFIG);
    let c = d.client().await;
    let site = Site::new(&d).await;
    let text = site.mapping();

    // Nothing yet.
    let st = call_ok(&c, "DR.status", json!({})).await;
    assert_eq!(st, json!({"state": "none"}));

    // The dry run: steps 1 and 3 read, nothing written anywhere.
    let before = trees(&d, &site);
    let dry = call_ok(&c, "DR.failover", json!({"mapping": text, "dryRun": true})).await;
    assert_same(&before, &trees(&d, &site), "the dry run");
    assert!(dry.get("job_id").is_none(), "{dry}");
    let dry = &dry["dry_run"];
    assert_eq!(dry["operation"], "failover");
    let found: Vec<&Value> = dry["domains"].as_array().unwrap().iter().collect();
    assert_eq!(found.len(), 2, "{dry}");
    for f in &found {
        assert!(f["problem"].is_null(), "{f}");
        assert!(
            f["path"]
                .as_str()
                .unwrap()
                .starts_with(&*site.replica().to_string_lossy()),
            "{f}"
        );
    }
    let conns = dry["connections"].as_array().unwrap();
    assert!(
        conns
            .iter()
            .any(|c| c["action"] == "disconnect pool" && c["outcome"] == "would be done"),
        "{dry}"
    );
    assert!(
        conns
            .iter()
            .any(|c| c["side"] == "secondary" && c["action"] == "connect"),
        "{dry}"
    );
    assert!(
        dry["would"][0].as_str().unwrap().contains(&site.sd),
        "{dry}"
    );

    // The failover.
    let job = run_job(&c, "DR.failover", json!({"mapping": text})).await;
    let report = done(&job);
    check_report(&report, &site, "failover", RECOVERY);
    let st = call_ok(&c, "DR.status", json!({})).await;
    assert_eq!(st["state"], "finished");
    assert_eq!(st["journal"], report, "DR.status answers the report");
    let kept: Value =
        serde_json::from_slice(&std::fs::read(d.state_dir().join("dr-report.json")).unwrap())
            .unwrap();
    assert_eq!(kept, report, "the report kept in the state directory");
    let dom = site.replica().join(&site.sd);
    assert_eq!(md(&dom)["POOL_UUID"], RECOVERY);
    assert_eq!(md(&dom)["ROLE"], "Master");
    assert_eq!(md(&dom)["MASTER_VERSION"], "2", "the lost pool's + 1");
    assert_eq!(md(&site.replica().join(&site.bk))["ROLE"], "Regular");
    assert_eq!(
        md(&site.prod().join(&site.sd))["POOL_UUID"],
        PROD,
        "the primary is not written"
    );
    let info = call_ok(
        &c,
        "StoragePool.getInfo",
        json!({"storagepoolID": RECOVERY}),
    )
    .await;
    assert_eq!(info["info"]["master_uuid"], site.sd.as_str(), "{info}");

    // A rerun: nothing to do, the same report, nothing written on the
    // storage.
    let storage = [snapshot(&site.prod()), snapshot(&site.replica())];
    let again = done(&run_job(&c, "DR.failover", json!({"mapping": text})).await);
    assert_eq!(again, report);
    assert_same(
        &storage,
        &[snapshot(&site.prod()), snapshot(&site.replica())],
        "a rerun of a finished failover",
    );

    // Failback before the primary was resynced: its copy still says the
    // lost pool, refused (9051), nothing changed.
    let before = storage_trees(&d, &site);
    let job = run_job(&c, "DR.failback", json!({"mapping": text, "hostId": 1})).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], 9051, "{job}");
    let msg = job["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&site.sd) && msg.contains(PROD), "{msg}");
    assert_same_storage(&before, &storage_trees(&d, &site), "a refused failback");
    // The dry run says it too.
    let dry = call_ok(
        &c,
        "DR.failback",
        json!({"mapping": text, "dryRun": true, "hostId": 1}),
    )
    .await;
    assert_eq!(
        dry["dry_run"]["not_resynced"].as_array().unwrap().len(),
        2,
        "{dry}"
    );

    // Resynced (the replica copied back): failback runs.
    for sd in [&site.sd, &site.bk] {
        std::fs::remove_dir_all(site.prod().join(sd)).unwrap();
        cp_a(&site.replica().join(sd), &site.prod());
    }
    let back = done(&run_job(&c, "DR.failback", json!({"mapping": text, "hostId": 1})).await);
    check_report(&back, &site, "failback", PROD);
    assert_eq!(vms(&back).len(), 3);
    let dom = site.prod().join(&site.sd);
    assert_eq!(md(&dom)["POOL_UUID"], PROD);
    assert_eq!(md(&dom)["MASTER_VERSION"], "3");
}

/// Step 5 with a backup provider: the host-local archive (keeping one
/// generation) recorded the primary's OVF_STORE after the replica was
/// copied: generation 2, where a VM changed and a VM was added, while the
/// replica's store holds generation 1. The report uses the archive's
/// copy of every entity (the only one the providers hold: the rule's
/// reason), says where the replica's store differs, and lists the VM only
/// the archive holds with its disk checked on the recovered domain.
#[tokio::test]
async fn failover_uses_the_archives_newer_copy_and_lists_what_only_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("ovf-archive.db");
    let config = format!(
        "{CONFIG}[ovf_backup]\nproviders = [\"archive\"]\narchive_path = {:?}\n\
         archive_keep_generations = 1\nretry_first_s = 0.1\nretry_max_s = 0.5\n",
        archive.display().to_string()
    );
    let d = Daemon::start(&config);
    let c = d.client().await;
    let site = Site::with_spare(&d, true).await;
    // After the copy, on the primary: "web & db" changed, "late" added
    // (its disk was in the copy).
    let mut newer = site.entities.clone();
    let web = &mut newer[1];
    web.xml = ovf_xml(&web.id, &web.name, false, &web.disks, 64);
    let spare = site.spare.as_ref().unwrap();
    newer.push(Entity::vm("late", &[(&spare.img, &spare.vol)]));
    let tar = engine_tar(&site.sd, &newer, &[]);
    // The engine writes a store in a pool as its SPM.
    start_spm(&c, PROD).await;
    site.dom
        .set_description(&site.store, &site.dom.store_description(tar.len()))
        .await;
    put_ok(&Via::unix(&d), &site.store, &tar).await;
    call_ok(&c, "StoragePool.spmStop", json!({"storagepoolID": PROD})).await;
    let want: Vec<(String, u64, String)> = {
        let mut v: Vec<_> = newer
            .iter()
            .map(|e| (e.id.clone(), 2, sha256_hex(e.xml.as_bytes())))
            .collect();
        v.sort();
        v
    };
    wait_until(
        "the archive holds generation 2 only",
        Duration::from_secs(30),
        || {
            let Ok(a) = Archive::open(&archive, Limits::default(), Mode::ReadOnly) else {
                return false;
            };
            let mut got: Vec<_> = a
                .list_all()
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.id.to_string(), c.generation.unwrap_or(0), c.sha256))
                .collect();
            got.sort();
            got == want
        },
    );

    let report = done(&run_job(&c, "DR.failover", json!({"mapping": site.mapping()})).await);
    assert_eq!(report["version"], 2, "{report}");
    assert_eq!(report["takeover"]["master"], site.sd.as_str(), "{report}");
    let vms = vms(&report);
    assert_eq!(vms.len(), newer.len(), "{report}");
    for e in &newer {
        let found = vms
            .iter()
            .find(|v| v["id"] == e.id.as_str())
            .unwrap_or_else(|| panic!("{} not in the report: {report}", e.name));
        assert_eq!(found["name"], e.name.as_str());
        assert_eq!(found["sd"], site.sd.as_str(), "{found}");
        let copy = &found["copy"];
        assert_eq!(copy["provider"], "archive", "{found}");
        assert_eq!(copy["generation"], 2, "{found}");
        assert_eq!(copy["sha256"], sha256_hex(e.xml.as_bytes()), "{found}");
        assert_eq!(copy["trusted"], true, "{found}");
        assert_eq!(
            copy["reason"], "the only usable copy (generation 2, held by archive)",
            "{found}"
        );
        assert!(
            found["ovf_copy"].as_str().unwrap().starts_with(&format!(
                "archive: generation 2 of OVF_STORE {}/{}",
                site.store.img, site.store.vol
            )),
            "{found}"
        );
        let (in_store, differs) = match e.name.as_str() {
            "late" => (false, false),
            "web & db" => (true, true),
            _ => (true, false),
        };
        assert_eq!(copy["in_store"], in_store, "{found}");
        if differs {
            let d = copy["store_differs"]
                .as_str()
                .unwrap_or_else(|| panic!("{found}"));
            let old = sha256_hex(site.entities[1].xml.as_bytes());
            assert!(d.contains("generation 1") && d.contains(&old), "{found}");
        } else {
            assert!(copy["store_differs"].is_null(), "{found}");
        }
        assert_disks(found, e);
    }
    let st = call_ok(&c, "DR.status", json!({})).await;
    assert_eq!(st["journal"], report, "DR.status answers the report");
}

/// A crash (kill -9) after step `n`, then a rerun: it continues at the
/// next step and ends with the report a run without a crash gives.
async fn crash_after(n: u8, reference: Option<&[Value]>) -> Vec<Value> {
    let mut d = Daemon::start_with_env(
        CONFIG,
        &[("DEPOTD_TEST_DR_PAUSE_AFTER_STEP", &n.to_string())],
    );
    let c = d.client().await;
    let site = Site::new(&d).await;
    let text = site.mapping();
    let started = call_ok(&c, "DR.failover", json!({"mapping": text})).await;
    let id = started["job_id"].as_str().unwrap().to_string();
    let journal = d.state_dir().join("dr-journal.json");
    let steps = || -> u64 {
        std::fs::read(&journal)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|j| j["steps_done"].as_u64())
            .unwrap_or(0)
    };
    wait_until(
        "the journal shows the step done",
        Duration::from_secs(60),
        || steps() >= u64::from(n),
    );
    if n == 1 {
        // One DR job at a time: the same run again while it is held is
        // refused (9052), nothing started.
        call_err(&c, "DR.failover", json!({"mapping": text}), 9052).await;
    }
    d.crash();
    assert_eq!(steps(), u64::from(n), "killed right after step {n}");
    let at_crash: Value = serde_json::from_slice(&std::fs::read(&journal).unwrap()).unwrap();
    drop(c);
    // The hook stays set: the rerun starts after step n, never pauses.
    d.restart();
    let c = d.client().await;
    let st = call_ok(&c, "DR.status", json!({})).await;
    assert_eq!(st["state"], "interrupted", "{st}");
    assert_eq!(st["journal"]["steps_done"], n);
    let job = wait_job(&c, &id).await;
    assert_eq!(job["status"], "failed", "not resumed by itself: {job}");

    // Another mapping while this journal is open: refused (9050), and
    // nothing written.
    let other = mapping(&site.prod(), &site.replica(), &site.sd, &new_id());
    let before = trees(&d, &site);
    let msg = call_err(&c, "DR.failover", json!({"mapping": other}), 9050).await;
    assert!(msg.contains(&format!("{n} of 5 steps")), "{msg}");
    assert_same(&before, &trees(&d, &site), "a refused mapping");

    let report = done(&run_job(&c, "DR.failover", json!({"mapping": text})).await);
    check_report(&report, &site, "failover", RECOVERY);
    // The steps done before the crash were not done again: their records
    // are the ones written then (a step redone would record what it
    // found the second time: connections already switched, domains
    // already detached).
    for (step, key) in [
        (1, "fence"),
        (2, "connections"),
        (3, "domains"),
        (4, "takeover"),
    ] {
        if step <= n {
            assert_eq!(
                report[key], at_crash[key],
                "step {step} redone after the crash"
            );
        }
    }
    assert_eq!(report["started"], at_crash["started"]);
    let got = vms(&report);
    if let Some(want) = reference {
        // Another site (new ids): compare what does not name them.
        let strip = |v: &[Value]| -> Vec<Value> {
            v.iter()
                .map(|e| {
                    let disks: Vec<Value> = e["disks"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| {
                            json!({"present": d["present"], "complete": d["complete"],
                                   "legality": d["legality"], "capacity": d["capacity"],
                                   "chain": d["chain"].as_array().unwrap().len()})
                        })
                        .collect();
                    json!({"name": e["name"], "kind": e["kind"], "disks": disks})
                })
                .collect()
        };
        assert_eq!(
            strip(&got),
            strip(want),
            "the same report after a crash after step {n}"
        );
    }
    got
}

#[tokio::test]
async fn a_crash_between_steps_then_a_rerun_gives_the_same_report() {
    let reference = {
        let d = Daemon::start(CONFIG);
        let c = d.client().await;
        let site = Site::new(&d).await;
        let report = done(&run_job(&c, "DR.failover", json!({"mapping": site.mapping()})).await);
        check_report(&report, &site, "failover", RECOVERY);
        vms(&report)
    };
    for n in 1..=4 {
        crash_after(n, Some(&reference)).await;
    }
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let d = Daemon::start(CONFIG);
    let c = d.client().await;
    let site = Site::new(&d).await;
    let before = trees(&d, &site);
    // A bad mapping: its code, no job.
    call_err(&c, "DR.failover", json!({"mapping": "version = 2"}), 9040).await;
    // A recovery pool id the mapping contradicts (it names RECOVERY):
    // 9048 naming the parameter, no job.
    let other = "5e7a1c2b-3d4e-4f50-8a61-b72c83d94e05";
    for verb in ["DR.failover", "DR.plan"] {
        let msg = call_err(
            &c,
            verb,
            json!({"mapping": site.mapping(), "recoveryPoolID": other}),
            9048,
        )
        .await;
        assert!(
            msg.contains("recoveryPoolID") && msg.contains(RECOVERY),
            "{verb}: {msg}"
        );
    }
    // Failback drops the mapping's this_host: a host id is needed.
    let msg = call_err(&c, "DR.failback", json!({"mapping": site.mapping()}), 9053).await;
    assert!(msg.contains("hostId"), "{msg}");
    // A host id sanlock does not take: refused before any job.
    for bad in [0, 2001] {
        let msg = call_err(
            &c,
            "DR.failback",
            json!({"mapping": site.mapping(), "hostId": bad}),
            1000,
        )
        .await;
        assert!(msg.contains("hostId"), "{msg}");
    }
    // A journal this depot cannot read: 9054, nothing done.
    std::fs::write(d.state_dir().join("dr-journal.json"), b"{\"version\": 9}").unwrap();
    let before_j = trees(&d, &site);
    let msg = call_err(&c, "DR.failover", json!({"mapping": site.mapping()}), 9054).await;
    assert!(msg.contains("version 9"), "{msg}");
    call_err(&c, "DR.status", json!({}), 9054).await;
    assert_same(&before_j, &trees(&d, &site), "an unreadable journal");
    std::fs::remove_file(d.state_dir().join("dr-journal.json")).unwrap();
    assert_same(&before, &trees(&d, &site), "refused requests");
}

/// The fence check with the real sanlock daemon: this host holds id 1 in
/// the primary domain's lockspace (the pool connected); a mapping that
/// says this host is 3 and 1 is the lost site's sees host 1 renewing its
/// lease (as it would see an old site still alive): the failover is
/// refused naming it (9049), nothing written and no journal; confirmed
/// fenced, the failover runs, the confirmation recorded in the journal,
/// and the check made again after this host joined the replica's
/// lockspace (where the copied lease of host 1 is not dead yet) passes on
/// the same confirmation.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn a_live_host_refuses_the_failover_unless_confirmed_fenced() {
    depot_testkit::require_root();
    use storage_common::sanlock_pool::SANLOCK_CONFIG;
    let _sanlock = depot_testkit::sanlock::SanlockDaemon::start().expect("sanlock daemon");
    let d = Daemon::start(SANLOCK_CONFIG);
    let p = pool(&d).await;
    call_ok(&p.c, "StoragePool.connect", pool_connect(&p, 1)).await;
    until_acquired(&p.c, &p.sd).await;
    let primary = p.dom.parent().unwrap().to_path_buf();
    let replica = tempfile::tempdir().unwrap();
    let replica = replica.keep().canonicalize().unwrap();
    cp_a(&p.dom, &replica);
    let text = localfs_mapping(&p.sp, &primary, &replica, &[&p.sd]);
    let journal = d.state_dir().join("dr-journal.json");
    let before = (
        snapshot(&primary),
        snapshot(&replica),
        snapshot(&repository(&d)),
    );
    let job = run_job(&p.c, "DR.failover", json!({"mapping": text})).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], 9049, "{job}");
    let msg = job["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("host 1 (") && msg.contains("primary site"),
        "{msg}"
    );
    assert!(!journal.exists(), "a refused fence check wrote a journal");
    assert_same_tree(
        &before.1,
        &snapshot(&replica),
        "a refused failover (replica)",
    );
    assert_same_tree(
        &before.2,
        &snapshot(&repository(&d)),
        "a refused failover (repository)",
    );
    assert_eq!(domain_md(&p.dom)["POOL_UUID"], p.sp);

    let report = done(
        &run_job(
            &p.c,
            "DR.failover",
            json!({"mapping": text, "confirmedFenced": [1]}),
        )
        .await,
    );
    assert_eq!(
        report["fence"]["verdict"], "pass (confirmed fenced)",
        "{report}"
    );
    assert_eq!(report["fence"]["confirmed_fenced"], json!([1]), "{report}");
    assert_eq!(report["fence"]["hosts"][0]["host_id"], 1, "{report}");
    let again = &report["takeover"]["fence"];
    assert!(
        matches!(
            again["verdict"].as_str(),
            Some("pass" | "pass (confirmed fenced)")
        ),
        "{report}"
    );
    assert_eq!(report["takeover"]["master"], p.sd.as_str(), "{report}");
    assert_eq!(domain_md(&replica.join(&p.sd))["POOL_UUID"], RECOVERY);
    let kept: Value = serde_json::from_slice(&std::fs::read(&journal).unwrap()).unwrap();
    assert_eq!(kept["fence"]["confirmed_fenced"], json!([1]), "recorded");
    let _ = std::fs::remove_dir_all(&replica);
}

/// A DR job the fence check refused (9049): its message.
fn fence_refusal(job: &Value) -> String {
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], 9049, "{job}");
    job["error"]["message"].as_str().unwrap().to_string()
}

/// A directory's files but the lockspaces' (`dom_md/ids`: the delta
/// leases, which the hosts joined renew all the time, by design).
fn without_ids(root: &Path) -> Tree {
    let mut t = snapshot(root);
    t.retain(|p, _| !p.ends_with("dom_md/ids"));
    t
}

/// What host `c`'s liveness verb (`StorageDomain.getHostLiveness`, from
/// its sanlock daemon) says of host `id` in `sd`'s lockspace.
async fn liveness_of(c: &Client, sd: &str, id: i64) -> Option<String> {
    let hosts = c
        .call(
            "StorageDomain.getHostLiveness",
            json!({"storagedomainID": sd}),
        )
        .await
        .ok()?;
    hosts
        .as_array()?
        .iter()
        .find(|h| h["host_id"] == id)
        .and_then(|h| h["status"].as_str())
        .map(str::to_owned)
}

/// Until `c`'s liveness verb says host `id` is live in `sd`'s lockspace
/// (its daemon saw the lease renewed, not just present).
async fn until_seen_live(c: &Client, sd: &str, id: i64) {
    eventually(&format!("host {id} live"), LIVE_WAIT, || async {
        (liveness_of(c, sd, id).await.as_deref() == Some("live")).then_some(())
    })
    .await
}

/// Issue 17's test with a second host: A (id 3, the secondary site)
/// fails over a LOCALFS domain whose replica B (id 1, the lost site's
/// host, its own depotd and sanlock daemon) still uses: B holds its id in
/// the replica's lockspace and renews it.
///
/// 1. Step 1 cannot read that lockspace (A is not in it: `unknown`, it
///    goes on); step 4 joins it and reads B: refused (9049) naming host
///    1 and its site, the domain's files unchanged (but its delta
///    leases), the journal at step 3, no report; confirming another host
///    changes nothing.
/// 2. B killed (depotd and sanlock daemon, kill -9): while A's liveness
///    verb says `fail` the failover is still refused; once it says `dead`
///    (polled; the time printed against sanlock's floor, host_dead_seconds
///    after the last renewal A's daemon saw) the failover runs to its end
///    without any confirmation, the check after joining passing.
/// 3. Another host of that site (id 2) joins the recovery pool on the
///    replica: the failback's step 1 (A is in that lockspace now) refuses
///    naming it, nothing written, no journal; confirmed fenced, the
///    failback runs and the journal records the confirmation.
///
/// One lease expiry for the whole test (about 92 s: io_timeout 4).
// long: the three cases share one setup and one lease expiry (sanlock's
// waits are minutes; the sanlock tests run one at a time).
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn a_second_host_on_the_replica_refuses_the_failover_until_dead_or_confirmed_fenced() {
    depot_testkit::require_root();
    let lock = NoDaemon::hold().expect("the sanlock lock");
    // The test's own time, without the wait for the lock.
    let t0 = Instant::now();
    let (a, mut b) = tokio::join!(host(&lock, "a", 3), host(&lock, "b", 1));
    // The lost site: a pool A made on a LOCALFS directory (A holds no id
    // there); the replica: a copy of its domain, on a directory both
    // hosts see.
    let p = pool(&a.d).await;
    let primary = p.dom.parent().unwrap().to_path_buf();
    let replica = tempfile::tempdir().unwrap().keep().canonicalize().unwrap();
    cp_a(&p.dom, &replica);
    join_pool_on(&b.c, &replica, pool_connect(&p, b.id)).await;
    until_acquired(&b.c, &p.sd).await;
    let text = localfs_mapping(&p.sp, &primary, &replica, &[&p.sd]);
    let journal = a.d.state_dir().join("dr-journal.json");
    let report_file = a.d.state_dir().join("dr-report.json");
    eprintln!("setup: {:?}", t0.elapsed());

    // 1. Refused in step 4, once A reads B in the replica's lockspace.
    let (primary_before, replica_before) = (snapshot(&primary), without_ids(&replica));
    let job = run_job(&a.c, "DR.failover", json!({"mapping": text})).await;
    let msg = fence_refusal(&job);
    assert!(
        msg.contains("host 1 (") && msg.contains("primary site"),
        "{msg}"
    );
    assert!(!msg.contains("host 3 ("), "this host named: {msg}");
    let at_refusal = std::fs::read(&journal).expect("steps 1 to 3 in the journal");
    let j: Value = serde_json::from_slice(&at_refusal).unwrap();
    assert_eq!(j["steps_done"], 3, "{j}");
    assert!(j["takeover"].is_null(), "{j}");
    assert_eq!(
        j["fence"]["verdict"], "unknown",
        "step 1 cannot read it: {j}"
    );
    assert!(!report_file.exists(), "a report after a refusal");
    assert_same_tree(&primary_before, &snapshot(&primary), "a refused failover");
    assert_same_tree(
        &replica_before,
        &without_ids(&replica),
        "a refused failover",
    );
    assert_eq!(domain_md(&replica.join(&p.sd))["POOL_UUID"], p.sp);
    let held = a.lockspaces_of(&p.sd);
    assert!(
        held.len() == 1 && held[0].starts_with(&format!("{}:3:", p.sd)),
        "A joined the replica's lockspace as host 3 in step 4: {held:?}"
    );
    // Confirming another host changes nothing.
    let job = run_job(
        &a.c,
        "DR.failover",
        json!({"mapping": text, "confirmedFenced": [2]}),
    )
    .await;
    assert!(fence_refusal(&job).contains("host 1 ("), "{job}");
    assert_eq!(
        std::fs::read(&journal).unwrap(),
        at_refusal,
        "a refused step 4 changed the journal"
    );
    assert_same_tree(
        &replica_before,
        &without_ids(&replica),
        "a refused failover",
    );
    eprintln!("refused while B renews: {:?}", t0.elapsed());

    // 2. B dies. A's daemon saw B renew (`live`), so sanlock counts from
    // B's last renewal.
    until_seen_live(&a.c, &p.sd, b.id).await;
    b.kill();
    let killed = monotonic();
    let mut refused_failing = false;
    let dead_at = loop {
        let status = liveness_of(&a.c, &p.sd, b.id).await;
        let now = monotonic();
        match status.as_deref() {
            Some("dead") => break now,
            Some("fail") if !refused_failing => {
                // Stopped renewing, not dead: it may still write.
                let job = run_job(&a.c, "DR.failover", json!({"mapping": text})).await;
                let msg = fence_refusal(&job);
                assert!(msg.contains("host 1 (fail, primary site)"), "{msg}");
                refused_failing = true;
            }
            Some("live" | "fail") => {}
            other => panic!("host 1 in A's liveness after the kill: {other:?}"),
        }
        assert!(now - killed < 300.0, "host 1 not dead 300 s after the kill");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(refused_failing, "never saw host 1 `fail`");
    let hs = a.host_status(&p.sd, b.id);
    let floor = (hs.last_live + host_dead_seconds(hs.io_timeout)) as f64;
    eprintln!(
        "B dead by A's liveness verb {:.1} s after the kill; sanlock's floor: A's daemon last saw \
         B renew at {} (B wrote {}), + host_dead_seconds {} (io_timeout {}) = {:.1} s after the \
         kill; ratio {:.2}",
        dead_at - killed,
        hs.last_live,
        hs.timestamp,
        host_dead_seconds(hs.io_timeout),
        hs.io_timeout,
        floor - killed,
        (dead_at - killed) / (floor - killed)
    );
    assert!(
        dead_at >= floor,
        "dead at {dead_at:.1}, before sanlock's floor {floor} ({hs:?})"
    );
    let report = done(&run_job(&a.c, "DR.failover", json!({"mapping": text})).await);
    assert_eq!(
        report["fence"], j["fence"],
        "step 1's record kept: {report}"
    );
    let again = &report["takeover"]["fence"];
    assert_eq!(again["verdict"], "pass", "{report}");
    assert_eq!(again["confirmed_fenced"], json!([]), "{report}");
    assert_eq!(report["takeover"]["master"], p.sd.as_str(), "{report}");
    assert_eq!(domain_md(&replica.join(&p.sd))["POOL_UUID"], RECOVERY);
    assert_eq!(domain_md(&primary.join(&p.sd))["POOL_UUID"], p.sp);
    eprintln!("failed over once B was dead: {:?}", t0.elapsed());

    // 3. Host 2 joins the recovery pool on the replica and renews there.
    let c = host(&lock, "c", 2).await;
    let connect = json!({"storagepoolID": RECOVERY, "hostID": c.id, "scsiKey": RECOVERY,
        "masterSdUUID": p.sd, "masterVersion": 2, "domainDict": {p.sd.clone(): "active"}});
    join_pool_on(&c.c, &replica, connect).await;
    until_acquired(&c.c, &p.sd).await;
    until_seen_live(&a.c, &p.sd, c.id).await;
    // The lost site resynced from the replica, as failback needs.
    std::fs::remove_dir_all(primary.join(&p.sd)).unwrap();
    cp_a(&replica.join(&p.sd), &primary);
    let failback = json!({"mapping": text, "hostId": 3});
    // What a refused failback must leave: the sites (but the delta
    // leases renewed on the replica), the repository, the failover's
    // journal and report.
    let state = || {
        (
            snapshot(&primary),
            without_ids(&replica),
            snapshot(&repository(&a.d)),
            std::fs::read(&journal).unwrap(),
            std::fs::read(&report_file).unwrap(),
        )
    };
    let before = state();
    let job = run_job(&a.c, "DR.failback", failback.clone()).await;
    let msg = fence_refusal(&job);
    // Host 1 may be named too: A's daemon left and joined this lockspace
    // again in the takeover (the forced detach releases the host id), so
    // it sees host 1's stale lease afresh (`unknown`, then `fail`, until
    // host_dead_seconds after it joined).
    assert!(msg.contains("host 2 (live, secondary site)"), "{msg}");
    let after = state();
    assert_same_tree(&before.0, &after.0, "a refused failback (its secondary)");
    assert_same_tree(&before.1, &after.1, "a refused failback (its primary)");
    assert_same_tree(&before.2, &after.2, "a refused failback (repository)");
    assert!(
        before.3 == after.3 && before.4 == after.4,
        "a refused failback wrote a journal or report"
    );
    // Confirmed fenced: 2, and 1, whose lease in the resynced copy is
    // stale (not seen dead by this host's daemon there yet).
    let mut confirmed = failback;
    confirmed["confirmedFenced"] = json!([1, 2]);
    let back = done(&run_job(&a.c, "DR.failback", confirmed).await);
    assert_eq!(
        back["fence"]["verdict"], "pass (confirmed fenced)",
        "{back}"
    );
    assert_eq!(back["fence"]["confirmed_fenced"], json!([1, 2]), "{back}");
    let host2 = back["fence"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host_id"] == 2)
        .unwrap_or_else(|| panic!("host 2 not in the check: {back}"));
    assert_eq!(
        (&host2["status"], &host2["confirmed"]),
        (&json!("live"), &json!(true)),
        "{back}"
    );
    let kept: Value = serde_json::from_slice(&std::fs::read(&journal).unwrap()).unwrap();
    assert_eq!(kept["operation"], "failback");
    assert_eq!(kept["fence"]["confirmed_fenced"], json!([1, 2]), "recorded");
    assert_eq!(domain_md(&primary.join(&p.sd))["POOL_UUID"], p.sp);
    eprintln!("wall time: {:?}", t0.elapsed());
    let _ = std::fs::remove_dir_all(&replica);
}
