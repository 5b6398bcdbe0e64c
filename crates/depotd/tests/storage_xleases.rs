//! VM and external leases (issue 16, `Lease.*` on the `xleases` volume)
//! with the real sanlock daemon (depot_testkit::sanlock): a new LOCALFS
//! domain's index in VDSM's format, a lease that is a sanlock resource
//! another process can acquire (and `Lease.status` then sees held), a job's
//! metadata in a lease's value block and its fencing, delete, a lost index
//! rebuilt from the resources, and the bad inputs. The results
//! go through VDSM's schema (vdsm_schema::Checker), as the unprivileged
//! conformance test cannot make leases (its daemon runs without sanlock).

mod common;
mod storage_common;
mod vdsm_schema;

use std::path::PathBuf;
use std::time::Duration;

use common::{eventually, Daemon};
use depot_client::Client;
use depot_os::sanlock::{direct_read_leader, Area, DirectConfig, Resource, Sanlock};
use depot_testkit::sanlock::SanlockDaemon;
use serde_json::{json, Value};
use storage_common::sanlock_pool::*;
use storage_common::*;

const MIB: usize = 1 << 20;

async fn task_succeeded(c: &Client, task: &Value) {
    let s = call_ok(c, "Task.getStatus", json!({"taskID": task})).await;
    assert_eq!(
        (&s["taskState"], &s["taskResult"]),
        (&json!("finished"), &json!("success")),
        "{s}"
    );
}

fn lease(sd: &str, id: &str) -> Value {
    json!({"lease": {"sd_id": sd, "lease_id": id}})
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn leases_are_sanlock_resources_in_the_xleases_volume() {
    depot_testkit::require_root();
    let daemon = SanlockDaemon::start().expect("sanlock daemon");
    let d = Daemon::start(SANLOCK_CONFIG);
    let conform = vdsm_schema::Checker::new();
    let p = pool(&d).await;
    let c = &p.c;
    // The pool connected, its host id acquired, and this host its SPM:
    // Lease.create, delete and rebuild are the SPM's verbs.
    call_ok(c, "StoragePool.connect", pool_connect(&p, 4)).await;
    until_acquired(c, &p.sd).await;
    start_spm_within(c, &p.sp, ACQUIRE_WAIT).await;

    // The new domain's index, in VDSM's format, one alignment in.
    let xleases = p.dom.join("dom_md").join("xleases");
    let raw = std::fs::read(&xleases).unwrap();
    assert_eq!(raw.len(), MIB + 62 * 4096);
    assert_eq!(&raw[MIB..MIB + 4], &[0x12, 0x15, 0x20, 0x16]);
    assert_eq!(&raw[MIB + 5..MIB + 9], b"0001");
    assert_eq!(&raw[MIB + 10..MIB + 46], p.sd.as_bytes());

    let a = new_id();
    let e = call_err(c, "Lease.info", lease(&p.sd, &a), 936).await;
    assert!(e.contains(&a), "{e}");

    // Create: a task born finished; info says where.
    let task = call_ok(c, "Lease.create", lease(&p.sd, &a)).await;
    conform.check("Lease.create", &task);
    task_succeeded(c, &task).await;
    let info = call_ok(c, "Lease.info", lease(&p.sd, &a)).await;
    conform.check("Lease.info", &info);
    assert_eq!(
        (&info["sd_id"], &info["lease_id"]),
        (&json!(p.sd), &json!(a))
    );
    assert_eq!(info["offset"], 3 * MIB, "{info}");
    let path = PathBuf::from(info["path"].as_str().unwrap());
    assert!(path.ends_with(format!("{}/dom_md/xleases", p.sd)), "{info}");
    assert_eq!(
        path.canonicalize().unwrap(),
        xleases.canonicalize().unwrap()
    );
    // sanlock's own resource, named by the lease, in the domain's
    // lockspace.
    let leader = direct_read_leader(
        &DirectConfig::default(),
        &p.sd,
        &a,
        true,
        &Area::new(&path, 3 * MIB as u64),
    )
    .expect("a sanlock resource at the lease's offset");
    assert_eq!(leader["resource_name"], a);
    // Idempotent, as VDSM's task: the same lease.
    task_succeeded(c, &call_ok(c, "Lease.create", lease(&p.sd, &a)).await).await;
    assert_eq!(call_ok(c, "Lease.info", lease(&p.sd, &a)).await, info);

    // Free.
    let st = call_ok(c, "Lease.status", lease(&p.sd, &a)).await;
    conform.check("Lease.status", &st);
    assert_eq!(st["owners"], json!([]), "{st}");

    // Acquired by another process of this host (as a VM's qemu would be
    // given it): status sees this host's id.
    let client = Sanlock::load(None, Duration::from_secs(30));
    let res = Resource::new(p.sd.clone(), a.clone(), Area::new(&path, 3 * MIB as u64));
    let lver = client.acquire(&res, None).expect("acquire the lease");
    let st = call_ok(c, "Lease.status", lease(&p.sd, &a)).await;
    conform.check("Lease.status", &st);
    assert_eq!(st["owners"], json!([4]), "{st}");
    assert_eq!(st["version"], lver, "{st}");
    client.release(&res).expect("release the lease");
    let st = call_ok(c, "Lease.status", lease(&p.sd, &a)).await;
    assert_eq!(st["owners"], json!([]), "{st}");
    // Free and readable by this host: its value block, never written.
    assert_eq!(st.get("metadata"), None, "{st}");

    // A job's lease: its metadata in the value block, then fenced.
    let job = new_id();
    let job_lease = new_id();
    let md = |status: &str, generation: u64| json!({"type": "JOB", "job_id": job, "job_status": status, "generation": generation});
    let with_md =
        |id: &str, m: Value| json!({"lease": {"sd_id": p.sd, "lease_id": id}, "metadata": m});
    let task = call_ok(c, "Lease.create", with_md(&job_lease, md("PENDING", 7))).await;
    task_succeeded(c, &task).await;
    let st = call_ok(c, "Lease.status", lease(&p.sd, &job_lease)).await;
    conform.check("Lease.status", &st);
    let got = &st["metadata"];
    assert_eq!(
        (
            &got["type"],
            &got["job_id"],
            &got["job_status"],
            &got["generation"]
        ),
        (&json!("JOB"), &json!(job), &json!("PENDING"), &json!(7)),
        "{st}"
    );
    assert!(got["created"].as_u64().unwrap() > 0, "{st}");
    // What does not match is refused, and changes nothing.
    let fence = |m: Value| with_md(&job_lease, m);
    call_err(c, "Lease.fence", fence(md("SUCCEEDED", 7)), 912).await;
    call_err(c, "Lease.fence", fence(md("PENDING", 8)), 911).await;
    let mut other = md("PENDING", 7);
    other["job_id"] = json!(new_id());
    call_err(c, "Lease.fence", fence(other), 2009).await;
    call_err(c, "Lease.fence", fence(json!({"type": "JOB"})), 1000).await;
    // While the job's host holds the lease, it cannot be fenced.
    let job_res = Resource::new(
        p.sd.clone(),
        job_lease.clone(),
        Area::new(&path, 4 * MIB as u64),
    );
    client
        .acquire(&job_res, None)
        .expect("acquire the job's lease");
    let e = call_err(c, "Lease.fence", fence(md("PENDING", 7)), 651).await;
    assert!(e.contains("holds it"), "{e}");
    client.release(&job_res).unwrap();
    let done = call_ok(c, "Lease.fence", fence(md("PENDING", 7))).await;
    conform.check("Lease.fence", &done);
    let st = call_ok(c, "Lease.status", lease(&p.sd, &job_lease)).await;
    let got = &st["metadata"];
    assert_eq!(
        (&got["job_status"], &got["generation"], &got["job_id"]),
        (&json!("FENCED"), &json!(8), &json!(job)),
        "{st}"
    );
    // Fenced once: the old status no longer matches.
    call_err(c, "Lease.fence", fence(md("PENDING", 7)), 912).await;
    call_ok(c, "Lease.delete", lease(&p.sd, &job_lease)).await;

    // Delete, idempotent; the slot is free again.
    let task = call_ok(c, "Lease.delete", lease(&p.sd, &a)).await;
    conform.check("Lease.delete", &task);
    task_succeeded(c, &task).await;
    call_err(c, "Lease.info", lease(&p.sd, &a), 936).await;
    task_succeeded(c, &call_ok(c, "Lease.delete", lease(&p.sd, &a)).await).await;

    // The index lost (zeroed): no lease can be found, until a rebuild
    // reads them back from sanlock's resources.
    let b = new_id();
    call_ok(c, "Lease.create", lease(&p.sd, &b)).await;
    let mut raw = std::fs::read(&xleases).unwrap();
    raw[MIB..MIB + 62 * 4096].fill(0);
    std::fs::write(&xleases, &raw).unwrap();
    call_err(c, "Lease.info", lease(&p.sd, &b), 9031).await;
    // The rebuild needs the index's metadata (VDSM's too): one a crash
    // left "updating" is repaired, one that is gone must be formatted.
    call_err(c, "Lease.rebuild_leases", json!({"sd_id": p.sd}), 9031).await;
    raw[MIB..MIB + 512].copy_from_slice(&index_metadata(&p.sd, true));
    std::fs::write(&xleases, &raw).unwrap();
    let task = call_ok(c, "Lease.rebuild_leases", json!({"sd_id": p.sd})).await;
    conform.check("Lease.rebuild_leases", &task);
    task_succeeded(c, &task).await;
    let info = call_ok(c, "Lease.info", lease(&p.sd, &b)).await;
    assert_eq!(info["offset"], 3 * MIB, "{info}");
    call_err(c, "Lease.info", lease(&p.sd, &a), 936).await;

    // Bad input, refused with nothing changed.
    let before = std::fs::read(&xleases).unwrap();
    call_err(c, "Lease.create", lease(&p.sd, "not-a-uuid"), -32602).await;
    call_err(c, "Lease.create", lease(&p.sd, "../../etc/passwd"), -32602).await;
    call_err(c, "Lease.create", lease(&new_id(), &new_id()), 358).await;
    for bad in [
        json!({"type": "VM", "job_id": new_id(), "job_status": "PENDING", "generation": 0}),
        json!({"type": "JOB", "job_id": "x", "job_status": "PENDING", "generation": 0}),
        json!({"type": "JOB", "job_id": new_id(), "job_status": "RUNNING", "generation": 0}),
        json!({"type": "JOB", "job_id": new_id(), "job_status": "PENDING", "generation": 1000}),
    ] {
        let id = new_id();
        call_err(
            c,
            "Lease.create",
            json!({"lease": {"sd_id": p.sd, "lease_id": id}, "metadata": bad}),
            1000,
        )
        .await;
        call_err(c, "Lease.info", lease(&p.sd, &id), 936).await;
        call_err(
            c,
            "Lease.fence",
            json!({"lease": {"sd_id": p.sd, "lease_id": b}, "metadata": bad}),
            1000,
        )
        .await;
    }
    assert_eq!(std::fs::read(&xleases).unwrap(), before);
    // A domain without an index (as one made without sanlock): every
    // verb says so, and writes nothing.
    std::fs::write(&xleases, b"").unwrap();
    for (verb, params) in [
        ("Lease.create", lease(&p.sd, &new_id())),
        ("Lease.delete", lease(&p.sd, &b)),
        ("Lease.info", lease(&p.sd, &b)),
        ("Lease.status", lease(&p.sd, &b)),
        ("Lease.rebuild_leases", json!({"sd_id": p.sd})),
    ] {
        let e = call_err(c, verb, params, 9031).await;
        assert!(e.contains("xleases"), "{verb}: {e}");
    }
    assert_eq!(std::fs::metadata(&xleases).unwrap().len(), 0);

    call_ok(
        c,
        "StoragePool.disconnect",
        json!({"storagepoolID": p.sp, "hostID": 4, "scsiKey": p.sp}),
    )
    .await;
    eventually("the lockspace released", RELEASE_WAIT, || async {
        let held = daemon.lockspaces().expect("sanlock client status");
        (!held.iter().any(|l| l.starts_with(&p.sd))).then_some(())
    })
    .await;
    conform.assert_all_used("storage_xleases");
    drop(d);
    drop(daemon);
}

/// The index's metadata block as VDSM writes it (docs/formats.md,
/// "xleases"), for a test that breaks an index on purpose.
fn index_metadata(sd: &str, updating: bool) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..4].copy_from_slice(&0x1215_2016u32.to_be_bytes());
    b[5..9].copy_from_slice(b"0001");
    b[10..10 + sd.len()].copy_from_slice(sd.as_bytes());
    b[59..69].copy_from_slice(b"0000000001");
    b[70] = if updating { b'u' } else { b'-' };
    b[511] = b'\n';
    b
}
