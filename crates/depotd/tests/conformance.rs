//! Wire conformance with VDSM's schema (tests/data/vdsm-api-storage.json,
//! from vdsm-api.yml): for every verb of depot's catalogue that VDSM also
//! has, the parameters (names, optionality, the values VDSM's types allow,
//! the properties of object parameters) without a daemon, and the result
//! of a real call on `depotd --dev` (LOCALFS) against VDSM's return type.
//! The SAN verbs' results are checked in the VM tier (vm_block.rs,
//! vm_iscsi.rs) through the same checker.
//!
//! Every difference must be listed, with its reason, in
//! `depot_api::conformance::DIFFERENCES` (shown in docs/api.md); an entry
//! that no longer differs fails too.

mod common;
mod storage_common;
mod vdsm_schema;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::Daemon;
use depot_api::conformance::{Difference, Item, DIFFERENCES, EVERY_VERB};
use depot_api::{methods, Call, MethodSpec};
use depot_client::Client;
use serde_json::{json, Map, Value};
use storage_common::*;
use vdsm_schema::{Checker, Schema};

fn catalogue() -> Vec<MethodSpec> {
    methods()
}

fn shared_verbs(schema: &Schema) -> Vec<MethodSpec> {
    catalogue()
        .into_iter()
        .filter(|m| schema.has_verb(m.name))
        .collect()
}

fn listed(verb: &str) -> impl Iterator<Item = &'static Difference> + '_ {
    DIFFERENCES.iter().filter(move |d| d.is_for(verb))
}

fn show(d: &Difference) -> String {
    format!("{}: {}", d.verb, d.item.describe())
}

// ---------------------------------------------------------------------------
// Parameters, without a daemon
// ---------------------------------------------------------------------------

/// A difference in the parameters of one verb.
#[derive(Debug, Clone, PartialEq)]
enum ParamFinding {
    /// depot has it, VDSM has not.
    Extra(String),
    /// VDSM has it, depot does not read it.
    Ignored(String),
    /// VDSM requires it, depot lets it be left out.
    Optional(String),
    /// depot refuses VDSM's sample of the parameter: depot's error.
    Type(String, String),
    /// depot refuses this value of an enum inside the parameter.
    Refused(String, String),
    /// A property of an object parameter that makes no difference to the
    /// parsed call.
    IgnoredProperty(String),
}

impl ParamFinding {
    fn excused_by(&self, item: &Item) -> bool {
        match (self, item) {
            (ParamFinding::Extra(p), Item::ExtraParam(q))
            | (ParamFinding::Ignored(p), Item::IgnoredParam(q))
            | (ParamFinding::Optional(p), Item::OptionalParam(q))
            | (ParamFinding::IgnoredProperty(p), Item::IgnoredProperty(q))
            | (ParamFinding::Type(p, _), Item::ParamType(q, _)) => p == q,
            (ParamFinding::Refused(p, v), Item::RefusedValue(q, w)) => p == q && v == w,
            _ => false,
        }
    }
}

/// The parameter an error of `Call::parse` names.
fn named_param(detail: &str) -> Option<String> {
    let start = detail.find('\'')? + 1;
    let len = detail[start..].find('\'')?;
    Some(detail[start..start + len].to_owned())
}

fn parse(verb: &str, params: &Map<String, Value>) -> Result<Call, String> {
    Call::parse(verb, Some(Value::Object(params.clone()))).map_err(|e| e.detail)
}

/// Values depot may take for a parameter whose VDSM form it refuses, to go
/// on checking the other parameters.
fn fallbacks() -> Vec<Value> {
    vec![
        json!("1"),
        json!(1),
        json!(true),
        json!(vdsm_schema::new_uuid()),
        json!(["1"]),
        json!({}),
    ]
}

/// Every difference of `m`'s parameters from VDSM's, and the hard errors
/// that no list may excuse.
fn param_findings(schema: &Schema, m: &MethodSpec) -> (Vec<ParamFinding>, Vec<String>) {
    let verb = m.name;
    let vdsm = schema.params(verb);
    let mut found = Vec::new();
    let mut hard = Vec::new();

    // Names and optionality.
    for p in &m.params {
        match vdsm.iter().find(|v| v.name == p.name) {
            None if p.required => hard.push(format!(
                "{verb}: depot requires `{}`, which VDSM's callers never send",
                p.name
            )),
            None => found.push(ParamFinding::Extra(p.name.to_owned())),
            Some(v) if v.optional && p.required => hard.push(format!(
                "{verb}: `{}` is optional in VDSM and required by depot",
                p.name
            )),
            Some(v) if !v.optional && !p.required => {
                found.push(ParamFinding::Optional(p.name.to_owned()))
            }
            Some(_) => {}
        }
    }
    let read: Vec<_> = vdsm
        .iter()
        .filter(|v| {
            let has = m.params.iter().any(|p| p.name == v.name);
            if !has {
                found.push(ParamFinding::Ignored(v.name.clone()));
            }
            has
        })
        .collect();

    // Types: every parameter with VDSM's sample value (all properties of
    // objects), then each enum value inside each parameter.
    let mut base: Map<String, Value> = read
        .iter()
        .map(|p| (p.name.clone(), schema.sample(&p.ty, true)))
        .collect();
    let mut refused_form = BTreeSet::new();
    for _ in 0..=read.len() {
        let Err(e) = parse(verb, &base) else { break };
        let Some(name) = named_param(&e).filter(|n| base.contains_key(n)) else {
            hard.push(format!("{verb}: VDSM's sample call is refused: {e}"));
            return (found, hard);
        };
        // An enum's first value may be one depot refuses: another of VDSM's
        // values will do (the refused ones are found below).
        let ty = &read.iter().find(|p| p.name == name).expect("read").ty;
        let other = schema
            .alternatives(ty, &base[&name])
            .into_iter()
            .find_map(|sample| {
                let mut b = base.clone();
                b.insert(name.clone(), sample.clone());
                parse(verb, &b)
                    .map_or_else(|e| named_param(&e).as_ref() != Some(&name), |_| true)
                    .then_some(sample)
            });
        if let Some(sample) = other {
            base.insert(name, sample);
            continue;
        }
        found.push(ParamFinding::Type(name.clone(), e));
        refused_form.insert(name.clone());
        let fallback = fallbacks().into_iter().find(|f| {
            let mut b = base.clone();
            b.insert(name.clone(), f.clone());
            parse(verb, &b).map_or_else(|e| named_param(&e).as_ref() != Some(&name), |_| true)
        });
        match fallback {
            Some(f) => {
                base.insert(name, f);
            }
            None => {
                hard.push(format!("{verb}: no value of `{name}` is accepted"));
                return (found, hard);
            }
        }
    }
    if let Err(e) = parse(verb, &base) {
        hard.push(format!("{verb}: VDSM's sample call is refused: {e}"));
        return (found, hard);
    }
    for p in read.iter().filter(|p| !refused_form.contains(&p.name)) {
        for (sub, value, sample) in schema.variants(&p.ty, &base[&p.name]) {
            let mut b = base.clone();
            b.insert(p.name.clone(), sample);
            if parse(verb, &b).is_err() {
                found.push(ParamFinding::Refused(
                    format!("{}{sub}", p.name),
                    value.to_string(),
                ));
            }
        }
        // A property that changes nothing in the parsed call is not read;
        // one whose VDSM value is refused (and not already as an enum
        // value) is depot's other form of the parameter.
        for (sub, with, without) in schema.property_probes(&p.ty, &base[&p.name]) {
            let path = format!("{}{sub}", p.name);
            let mut a = base.clone();
            a.insert(p.name.clone(), with);
            let mut b = base.clone();
            b.insert(p.name.clone(), without);
            match (parse(verb, &a), parse(verb, &b)) {
                (Ok(x), Ok(y)) if x == y => found.push(ParamFinding::IgnoredProperty(path)),
                (Err(e), Ok(_))
                    if !found
                        .iter()
                        .any(|f| matches!(f, ParamFinding::Refused(q, _) if *q == path)) =>
                {
                    found.push(ParamFinding::Type(path, e))
                }
                _ => {}
            }
        }
    }
    found.dedup();
    (found, hard)
}

#[test]
fn shared_verbs_take_vdsms_parameters() {
    let schema = Schema::load();
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for m in shared_verbs(&schema) {
        let (found, hard) = param_findings(&schema, &m);
        problems.extend(hard);
        for f in found {
            let hit = DIFFERENCES
                .iter()
                .position(|d| d.is_for(m.name) && f.excused_by(&d.item));
            match hit {
                Some(i) => {
                    used.insert(i);
                }
                None => problems.push(format!("{}: {f:?} is not listed", m.name)),
            }
        }
    }
    for (i, d) in DIFFERENCES.iter().enumerate() {
        if d.item.is_param() && !used.contains(&i) {
            problems.push(format!("listed but no longer differs: {}", show(d)));
        }
    }
    assert!(
        problems.is_empty(),
        "parameters differ from VDSM's (fix depot or list the difference with its reason in depot_api::conformance):\n  {}",
        problems.join("\n  ")
    );
}

/// Verbs depot has and VDSM lacks are depot's, and listed as such; every
/// entry names a verb of the catalogue.
#[test]
fn depot_verbs_are_listed_and_entries_name_real_verbs() {
    let schema = Schema::load();
    let names: BTreeSet<&str> = catalogue().iter().map(|m| m.name).collect();
    let mut problems = Vec::new();
    for m in catalogue() {
        let own = listed(m.name).any(|d| d.item == Item::DepotVerb);
        if !schema.has_verb(m.name) && !own {
            problems.push(format!(
                "{}: VDSM has no such verb; list it as depot's",
                m.name
            ));
        }
        if schema.has_verb(m.name) && own {
            problems.push(format!("{}: listed as depot's, but VDSM has it", m.name));
        }
    }
    for d in DIFFERENCES {
        let every = d.verb == EVERY_VERB && d.item.is_param();
        if !every && !names.contains(d.verb) {
            problems.push(format!("listed verb not in the catalogue: {}", show(d)));
        }
        if d.item.is_result() && d.seen_by != "conformance" {
            let file = format!("{}/tests/{}.rs", env!("CARGO_MANIFEST_DIR"), d.seen_by);
            if !std::path::Path::new(&file).is_file() {
                problems.push(format!("{}: no test {file}", show(d)));
            }
        }
        if d.why.trim().is_empty() {
            problems.push(format!("{}: no reason", show(d)));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A verb whose result is checked in the VM tier is checked there: its test
/// passes the result to the same checker.
#[test]
fn vm_tier_verbs_are_checked_by_their_test() {
    let mut problems = Vec::new();
    for d in DIFFERENCES {
        let (Item::VmTier(test) | Item::SanlockTier(test)) = d.item else {
            continue;
        };
        let file = format!("{}/tests/{test}.rs", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if !text.contains(&format!(".check(\"{}\"", d.verb)) {
            problems.push(format!("{}: {file} does not check its result", d.verb));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------
// Results, on a real daemon
// ---------------------------------------------------------------------------

/// The checker fails on what the list does not excuse: a listed
/// difference excuses only its own form.
#[test]
fn the_checker_excuses_only_what_is_listed() {
    let ck = Checker::new();
    let left = |verb: &str, v: Value| {
        ck.unexcused(verb, &v)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    // Sizes are listed as decimal strings: digits pass, anything else not.
    assert!(left(
        "Volume.getSize",
        json!({"apparentsize": "1", "truesize": "2"})
    )
    .is_empty());
    for bad in [json!({"size": "1"}), json!("12x"), json!(-1), json!(null)] {
        let found = left(
            "Volume.getSize",
            json!({"apparentsize": bad, "truesize": "2"}),
        );
        assert_eq!(found.len(), 1, "{bad}: {found:?}");
    }
    assert_eq!(
        left("StorageDomain.resizePV", json!({"size": "1"})).len(),
        1
    );
    assert!(left("StorageDomain.resizePV", json!("1")).is_empty());
    // A verb that returns nothing answers true.
    assert_eq!(left("Host.ping2", json!(false)).len(), 1);
    assert!(left("Host.ping2", json!(true)).is_empty());
    // Unknown and missing properties, enum values, element types.
    let found = left(
        "Task.getStatus",
        json!({"taskID": "x", "taskState": "done", "taskResult": "", "code": "0", "extra": 1}),
    );
    assert_eq!(found.len(), 4, "{found:?}");
    assert_eq!(left("StorageDomain.getImages", json!(["a", 1])).len(), 1);
    // Only the listed properties may be left out of a partial answer.
    assert!(left("Host.getStats", json!({"storageDomains": {}})).is_empty());
    assert_eq!(left("Host.getStats", json!({})).len(), 1);
}

/// Calls a verb and checks its result against VDSM's type.
async fn call(c: &Client, ck: &Checker, verb: &str, params: Value) -> Value {
    let v = call_ok(c, verb, params).await;
    ck.record(verb, &v);
    v
}

/// Polls Task.getStatus (checking each answer) until the task has ended,
/// whatever its result.
async fn wait_task_end(c: &Client, ck: &Checker, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = call(c, ck, "Task.getStatus", json!({"taskID": id})).await;
        if s["taskState"] == "finished" {
            return s;
        }
        assert!(Instant::now() < deadline, "task {id} did not end: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls Host.getJobs (checking each answer) until the job has ended.
async fn wait_job(c: &Client, ck: &Checker, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = call(c, ck, "Host.getJobs", json!({"job_ids": [id]})).await;
        let j = all[id].clone();
        if matches!(j["status"].as_str(), Some("done" | "failed" | "aborted")) {
            assert_eq!(j["status"], "done", "job {id}: {j}");
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} did not end: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn results_match_vdsms_types() {
    let ck = Checker::new();
    // No sanlock: spmStart must not register with a daemon another test
    // owns (and would shut down); the local SPM role has the same types.
    // Host.fenceNode runs an agent of its own (fencing.rs tests the real
    // ones): it answers "on".
    let agents = fence_agents("conformance", "#!/bin/sh\ncat > /dev/null\n");
    let d = Daemon::start(&format!(
        "{CONFIG}[sanlock]\nenabled = false\n[fencing]\nagents_dir = \"{}\"\n",
        agents.path().display()
    ));
    let c = d.client().await;
    let data = tempfile::tempdir().unwrap();
    let conn = ConnectionSpec::local(&data.path().canonicalize().unwrap());
    let spec = conn.connection.clone();

    // ---- host ----
    call(&c, &ck, "Host.ping2", json!({})).await;
    call(&c, &ck, "Host.getCapabilities", json!({})).await;

    // ---- connection and domains: two data domains and an ISO domain ----
    let conn_id = new_id();
    let cp = connect_params(LOCALFS, vec![conn.params(&conn_id)]);
    call(&c, &ck, "StoragePool.connectStorageServer", cp.clone()).await;
    let (sd, sd2, iso) = (new_id(), new_id(), new_id());
    for (id, name) in [(&sd, "conformance"), (&sd2, "conformance two")] {
        call(
            &c,
            &ck,
            "StorageDomain.create",
            create_domain_params(id, LOCALFS, &spec, name, 512),
        )
        .await;
    }
    let mut p = create_domain_params(&iso, LOCALFS, &spec, "conformance iso", 512);
    p["domainClass"] = json!(2);
    call(&c, &ck, "StorageDomain.create", p).await;
    let by_sd = |sd: &str| json!({"storagedomainID": sd});
    call(&c, &ck, "StorageDomain.getInfo", by_sd(&sd)).await;
    call(&c, &ck, "StorageDomain.getStats", by_sd(&sd)).await;
    call(
        &c,
        &ck,
        "StorageDomain.setDescription",
        json!({"storagedomainID": sd, "description": "conformance, renamed"}),
    )
    .await;
    call(&c, &ck, "StorageDomain.validate", by_sd(&sd)).await;
    call(&c, &ck, "Host.getStorageDomains", json!({})).await;

    // An ISO image file where VDSM keeps them.
    let iso_dir = std::path::Path::new(&spec)
        .join(&iso)
        .join("images")
        .join("11111111-1111-1111-1111-111111111111");
    std::fs::create_dir_all(&iso_dir).unwrap();
    std::fs::write(iso_dir.join("tools.iso"), vec![0u8; 4096]).unwrap();
    let private = iso_dir.join("private.iso");
    std::fs::write(&private, b"x").unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let files = call(
        &c,
        &ck,
        "StorageDomain.getFileStats",
        json!({"storagedomainID": iso, "pattern": "*.iso", "caseSensitive": true}),
    )
    .await;
    // VDSM's status: 0 when QEMU can read the file, 469 when not.
    assert_eq!(files["tools.iso"]["status"], 0, "{files}");
    assert_eq!(files["private.iso"]["status"], 469, "{files}");

    // ---- pool ----
    let sp = new_id();
    call(
        &c,
        &ck,
        "StoragePool.create",
        json!({
            "storagepoolID": sp, "name": "conformance", "masterSdUUID": sd,
            "masterVersion": 1, "domainList": [sd], "lockRenewalIntervalSec": 5,
            "leaseTimeSec": 60, "ioOpTimeoutSec": 10, "leaseRetries": 3,
        }),
    )
    .await;
    call(
        &c,
        &ck,
        "StoragePool.connect",
        json!({
            "storagepoolID": sp, "hostID": 1, "scsiKey": sp, "masterSdUUID": sd,
            "masterVersion": 1, "domainDict": {sd.clone(): "active"},
        }),
    )
    .await;
    // The SPM verbs' types (the local role: sanlock is off here;
    // storage_sanlock.rs tests the lease). This host stays SPM until the
    // pool goes down: attach, volumes, images and leases are its verbs.
    let spm = call(
        &c,
        &ck,
        "StoragePool.spmStart",
        json!({"storagepoolID": sp, "prevID": -1, "prevLver": "-1", "enableScsiFencing": "false"}),
    )
    .await;
    wait_task_end(&c, &ck, spm.as_str().unwrap()).await;
    call(
        &c,
        &ck,
        "StoragePool.getSpmStatus",
        json!({"storagepoolID": sp}),
    )
    .await;
    let dom_op = |id: &str| json!({"storagedomainID": id, "storagepoolID": sp, "masterSdUUID": sd, "masterVersion": 1});
    call(&c, &ck, "StorageDomain.attach", dom_op(&sd2)).await;
    // Attached, not active: its pool entry has no space figures yet.
    call(&c, &ck, "StoragePool.getInfo", json!({"storagepoolID": sp})).await;
    call(&c, &ck, "StorageDomain.activate", dom_op(&sd2)).await;
    wait_actual(&c, &sd).await;
    wait_actual(&c, &sd2).await;
    call(&c, &ck, "Host.getStorageRepoStats", json!({})).await;
    call(&c, &ck, "Host.getStats", json!({})).await;
    call(&c, &ck, "StoragePool.getInfo", json!({"storagepoolID": sp})).await;
    call(&c, &ck, "StorageDomain.getInfo", by_sd(&sd)).await;
    // The master moves to sd2 and back (the SPM's task), and the pool's
    // master is re-read.
    for (old, new, version) in [(&sd, &sd2, 2), (&sd2, &sd, 3)] {
        let task = call(
            &c,
            &ck,
            "StoragePool.switchMaster",
            json!({"storagepoolID": sp, "oldMasterUUID": old, "newMasterUUID": new,
                   "masterVersion": version}),
        )
        .await;
        wait_task_end(&c, &ck, task.as_str().unwrap()).await;
    }
    call(
        &c,
        &ck,
        "StoragePool.refresh",
        json!({"storagepoolID": sp, "masterSdUUID": sd, "masterVersion": 3}),
    )
    .await;
    call(
        &c,
        &ck,
        "Host.fenceNode",
        json!({"addr": "10.0.0.9", "port": "623", "agent": "conformance", "username": "u",
            "password": "p", "action": "status"}),
    )
    .await;
    call(
        &c,
        &ck,
        "Host.fenceNode",
        json!({"addr": "10.0.0.9", "port": 623, "agent": "conformance", "username": "u",
            "password": "p", "action": "reboot", "secure": false, "options": "",
            "policy": {"storageDomainHostIdMap": {sd.clone(): 2}}}),
    )
    .await;

    // ---- volumes ----
    let (img, base, top) = (new_id(), new_id(), new_id());
    let task = call(
        &c,
        &ck,
        "Volume.create",
        volume_params(&sd, &img, &base, 64 * MIB, "COW", "SPARSE", "base", None),
    )
    .await;
    call(
        &c,
        &ck,
        "Volume.create",
        volume_params(
            &sd,
            &img,
            &top,
            64 * MIB,
            "COW",
            "SPARSE",
            "top",
            Some(&base),
        ),
    )
    .await;
    call(&c, &ck, "Task.getStatus", json!({"taskID": task})).await;
    call(&c, &ck, "Host.getAllTasksStatuses", json!({})).await;
    call(&c, &ck, "Task.getInfo", json!({"taskID": task})).await;
    call(&c, &ck, "Host.getAllTasksInfo", json!({})).await;
    call(&c, &ck, "Task.clear", json!({"taskID": task})).await;
    for v in [&base, &top] {
        let vi = call(&c, &ck, "Volume.getInfo", vol_ref(&sd, &img, v)).await;
        // The type allows a lease; one that is reported must exist (a
        // sanlock resource is at least 1 MiB). VDSM leaves the key out for
        // a volume without a lease.
        if let Some(lease) = vi.get("lease") {
            let len = lease["path"]
                .as_str()
                .and_then(|p| std::fs::metadata(p).ok())
                .map_or(0, |m| m.len());
            assert!(
                len >= MIB,
                "Volume.getInfo reports a lease that does not exist: {vi}"
            );
        }
    }
    call(&c, &ck, "Volume.getSize", vol_ref(&sd, &img, &top)).await;
    let mut p = vol_ref(&sd, &img, &top);
    p["description"] = json!("conformance top");
    call(&c, &ck, "Volume.setDescription", p).await;
    let mut p = vol_ref(&sd, &img, &top);
    p["legality"] = json!("LEGAL");
    call(&c, &ck, "Volume.setLegality", p).await;
    let mut p = vol_ref(&sd, &img, &top);
    p["newSize"] = json!((128 * MIB).to_string());
    call(&c, &ck, "Volume.extendSize", p).await;
    call(&c, &ck, "StorageDomain.getImages", by_sd(&sd)).await;
    call(
        &c,
        &ck,
        "StorageDomain.getVolumes",
        json!({"storagedomainID": sd, "storagepoolID": sp, "imageID": img}),
    )
    .await;
    let prep = json!({"storagepoolID": sp, "storagedomainID": sd, "imageID": img, "volumeID": top});
    call(&c, &ck, "Image.prepare", prep.clone()).await;
    call(&c, &ck, "Image.teardown", prep).await;

    // ---- host jobs: copy, update, move ----
    let (dimg, dvol) = (new_id(), new_id());
    call(
        &c,
        &ck,
        "Volume.create",
        volume_params(&sd, &dimg, &dvol, 64 * MIB, "RAW", "SPARSE", "dst", None),
    )
    .await;
    let endpoint = |img: &str, vol: &str| json!({"endpoint_type": "div", "sd_id": sd, "img_id": img, "vol_id": vol});
    let job = new_id();
    let mut dst = endpoint(&dimg, &dvol);
    dst["generation"] = json!(0);
    call(
        &c,
        &ck,
        "SDM.copy_data",
        json!({"job_id": job, "source": endpoint(&img, &base), "destination": dst}),
    )
    .await;
    wait_job(&c, &ck, &job).await;
    let job = new_id();
    let mut vi = endpoint(&dimg, &dvol);
    vi.as_object_mut().unwrap().remove("endpoint_type");
    vi["generation"] = json!(1);
    call(
        &c,
        &ck,
        "SDM.update_volume",
        json!({"job_id": job, "vol_info": vi, "vol_attr": {"description": "updated", "generation": 2}}),
    )
    .await;
    wait_job(&c, &ck, &job).await;
    call(&c, &ck, "Host.getJobs", json!({})).await;
    let moved = call(
        &c,
        &ck,
        "Image.move",
        json!({"storagepoolID": sp, "storagedomainID": sd, "dstSdUUID": sd2, "imageID": dimg,
               "vmUUID": "", "operation": 1, "postZero": false, "force": false}),
    )
    .await;
    let moved = moved.as_str().unwrap().to_owned();
    wait_job(&c, &ck, &moved).await;
    call(&c, &ck, "Task.getStatus", json!({"taskID": moved})).await;

    // ---- deletes ----
    let mut p = vol_ref(&sd, &img, &top);
    p["postZero"] = json!(false);
    p["force"] = json!(false);
    call(&c, &ck, "Volume.delete", p).await;
    call(
        &c,
        &ck,
        "Image.delete",
        json!({"storagepoolID": sp, "storagedomainID": sd, "imageID": img, "postZero": false, "force": false}),
    )
    .await;

    // ---- leases: sanlock is off here (storage_xleases.rs checks their
    // results with the sanlock daemon) ----
    let lease = json!({"sd_id": sd, "lease_id": new_id()});
    let e = call_err(&c, "Lease.create", json!({"lease": lease}), 2009).await;
    assert!(e.contains("sanlock"), "{e}");
    // A domain made without sanlock has no index.
    call_err(&c, "Lease.info", json!({"lease": lease}), 9031).await;
    let job = json!({"type": "JOB", "job_id": new_id(), "job_status": "PENDING", "generation": 0});
    let e = call_err(
        &c,
        "Lease.fence",
        json!({"lease": lease, "metadata": job}),
        2009,
    )
    .await;
    assert!(e.contains("sanlock"), "{e}");

    // ---- the pool down, domains formatted, disconnected ----
    call(&c, &ck, "StorageDomain.deactivate", dom_op(&sd2)).await;
    call(&c, &ck, "StorageDomain.detach", dom_op(&sd2)).await;
    call(
        &c,
        &ck,
        "StorageDomain.format",
        json!({"storagedomainID": sd2, "autoDetach": false}),
    )
    .await;
    call(&c, &ck, "StoragePool.spmStop", json!({"storagepoolID": sp})).await;
    call(
        &c,
        &ck,
        "StoragePool.disconnect",
        json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp}),
    )
    .await;
    // Disaster recovery's master, then the pool destroyed by its SPM.
    call(
        &c,
        &ck,
        "StoragePool.reconstructMaster",
        json!({
            "storagepoolID": sp, "hostId": 1, "name": "conformance", "masterSdUUID": sd,
            "masterVersion": 4, "domainDict": {sd.clone(): "active"},
            "lockRenewalIntervalSec": 5, "leaseTimeSec": 60, "ioOpTimeoutSec": 10,
            "leaseRetries": 3,
        }),
    )
    .await;
    call(
        &c,
        &ck,
        "StoragePool.connect",
        json!({
            "storagepoolID": sp, "hostID": 1, "scsiKey": sp, "masterSdUUID": sd,
            "masterVersion": 4, "domainDict": {sd.clone(): "active"},
        }),
    )
    .await;
    let spm = call(
        &c,
        &ck,
        "StoragePool.spmStart",
        json!({"storagepoolID": sp, "prevID": -1, "prevLver": "-1", "enableScsiFencing": "false"}),
    )
    .await;
    wait_task_end(&c, &ck, spm.as_str().unwrap()).await;
    call(
        &c,
        &ck,
        "StoragePool.destroy",
        json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp}),
    )
    .await;
    for id in [&sd, &iso] {
        call(
            &c,
            &ck,
            "StorageDomain.format",
            json!({"storagedomainID": id, "autoDetach": true}),
        )
        .await;
    }
    call(&c, &ck, "StoragePool.disconnectStorageServer", cp).await;

    // Every shared verb was checked here, or is listed with the VM-tier
    // test that checks it; and every listed result difference still is one.
    ck.assert_recorded_clean();
    let schema = Schema::load();
    let checked = ck.checked_verbs();
    let mut problems = Vec::new();
    for m in shared_verbs(&schema) {
        let vm = listed(m.name).any(|d| matches!(d.item, Item::VmTier(_) | Item::SanlockTier(_)));
        match (checked.contains(m.name), vm) {
            (false, false) => problems.push(format!(
                "{}: not called here and not listed as checked in the VM or sanlock tier",
                m.name
            )),
            (true, true) => problems.push(format!(
                "{}: called here, yet listed as checked in the VM or sanlock tier",
                m.name
            )),
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    ck.assert_all_used("conformance");
}
