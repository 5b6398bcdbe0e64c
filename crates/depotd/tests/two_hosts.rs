//! Two hosts on one storage (issue 16, "Tests (real sanlock, two hosts)",
//! host tier): each host is a sanlock daemon in a mount namespace of its
//! own (depot_testkit::sanlock::SanlockHost) with a depotd started in it,
//! its own state, host id and TLS port; both connect the same LOCALFS
//! directory (a file system both see, as a shared mount would be).
//!
//! * Both hold their host ids in the domain's lockspace and see each
//!   other live; one SPM, the other's spmStart fails (651) and its SPM
//!   verbs answer 654 with nothing changed.
//! * The same job id started on both hosts into one destination volume
//!   runs once: the other fails on the destination's lease (651).
//! * Failover: a crashed depotd frees the SPM lease at once; a dead host
//!   (depotd and its sanlock daemon killed) is replaced as SPM only once
//!   sanlock's host_dead_seconds (8 x io_timeout + 60 s) passed since its
//!   last renewal; the time it took and that floor are printed (docs/
//!   performance.md, "SPM failover").
//! * A frozen SPM that another host replaced changes nothing after it
//!   thaws.
//! * A new SPM answers for the old one's tasks: they are on the master
//!   domain, and spmStart loads them.
//! * On GlusterFS (each host mounting the volume in its own namespace):
//!   ids, one SPM, 651 and 654 on the other, and what the SPM writes read
//!   by the other.
//!
//! sanlock's timeouts are real: each test takes minutes.

mod common;
mod copy_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use common::eventually;
use copy_common::*;
use depot_client::{Client, Options};
use depot_testkit::sanlock::NoDaemon;
use serde_json::{json, Value};
use storage_common::sanlock_hosts::*;
use storage_common::sanlock_pool::*;
use storage_common::*;

/// Time for one spmStart task (its host id wait, then an acquire that
/// does not wait for a silent holder).
const SPM_TASK_WAIT: Duration = Duration::from_secs(300);
/// A failover: host_dead_seconds after the last renewal, then the acquire.
const FAILOVER_WAIT: Duration = Duration::from_secs(420);
/// What the engine waits between spmStart attempts.
const RETRY: Duration = Duration::from_secs(2);

/// Two hosts, A (id 1) and B (id 2), connected to one pool whose master
/// A created on a LOCALFS directory; both hold their host ids.
async fn two_hosts(lock: &NoDaemon) -> (Host<'_>, Host<'_>, Pool) {
    let (a, b) = (host(lock, "a", 1).await, host(lock, "b", 2).await);
    let p = pool(&a.d).await;
    call_ok(&a.c, "StoragePool.connect", pool_connect(&p, a.id)).await;
    join_pool(&b.c, &p, b.id).await;
    let (sa, sb) = tokio::join!(until_acquired(&a.c, &p.sd), until_acquired(&b.c, &p.sd));
    for (h, s) in [(&a, sa), (&b, sb)] {
        assert_eq!(
            (&s["acquired"], &s["valid"]),
            (&json!(true), &json!(true)),
            "host {}: {s}",
            h.name
        );
    }
    (a, b, p)
}

/// SDM.copy_data from `src` to `dst` (generation 0) as job `job`.
async fn copy_as(c: &Client, job: &str, src: &Vol, dst: &Vol) -> Value {
    let params = json!({"job_id": job, "source": src.endpoint(None),
        "destination": dst.endpoint(Some(0))});
    call_ok(c, "SDM.copy_data", params).await
}

fn set_description(sd: &str, text: &str) -> Value {
    json!({"storagedomainID": sd, "description": text})
}

/// Host `h` retries spmStart every RETRY (as the engine does) until it
/// succeeds; every failure must be 651. The CLOCK_MONOTONIC second of the
/// success, and the attempts that failed.
async fn spm_start_until_success(h: &Host<'_>, sp: &str) -> (f64, u32) {
    let started = Instant::now();
    let mut failed = 0;
    loop {
        let end = spm_start_task(&h.c, sp, SPM_TASK_WAIT).await;
        if end["taskResult"] == "success" {
            return (monotonic(), failed);
        }
        assert_eq!(
            (&end["taskResult"], &end["code"]),
            (&json!("cleanFailure"), &json!(651)),
            "host {}'s spmStart: {end}",
            h.name
        );
        failed += 1;
        assert!(
            started.elapsed() < FAILOVER_WAIT,
            "host {} not SPM {FAILOVER_WAIT:?} after the other host died ({failed} attempts); \
             its sanlock log:\n{}",
            h.name,
            h.sanlock.log()
        );
        tokio::time::sleep(RETRY).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn two_hosts_hold_their_ids_and_only_one_is_spm_and_a_job_runs_once() {
    depot_testkit::require_root();
    let lock = NoDaemon::hold().expect("the sanlock lock");
    let (a, b, p) = two_hosts(&lock).await;

    // Each daemon holds its own host id in the domain's lockspace.
    for h in [&a, &b] {
        let held = h.lockspaces_of(&p.sd);
        assert_eq!(held.len(), 1, "host {}: {held:?}", h.name);
        assert!(
            held[0].starts_with(&format!("{}:{}:", p.sd, h.id)) && !held[0].ends_with(" ADD"),
            "host {}: {held:?}",
            h.name
        );
    }
    // And each sees both hosts live, through depot's liveness verb.
    for h in [&a, &b] {
        eventually(
            &format!("host {} to see hosts 1 and 2 live", h.name),
            LIVE_WAIT,
            || async {
                let hosts =
                    h.c.call(
                        "StorageDomain.getHostLiveness",
                        json!({"storagedomainID": p.sd}),
                    )
                    .await
                    .ok()?;
                let live = |id: i64| {
                    hosts.as_array().is_some_and(|l| {
                        l.iter()
                            .any(|x| x["host_id"] == id && x["status"] == "live")
                    })
                };
                (live(1) && live(2)).then_some(())
            },
        )
        .await;
    }

    // A is the SPM.
    start_spm_within(&a.c, &p.sp, SPM_TASK_WAIT).await;
    let spm = spm_status_of(&a.c, &p.sp).await;
    assert_eq!(
        (&spm["spmId"], &spm["spmStatus"]),
        (&json!(1), &json!("SPM")),
        "{spm}"
    );
    let lver = spm["spmLver"].as_i64().expect("spmLver");
    assert!(lver >= 1, "{spm}");

    // B's spmStart fails with VDSM's AcquireLockFailure, and B knows who
    // the SPM is.
    let md = domain_md(&p.dom);
    let end = spm_start_task(&b.c, &p.sp, SPM_TASK_WAIT).await;
    assert_eq!(
        (&end["taskResult"], &end["code"]),
        (&json!("cleanFailure"), &json!(651)),
        "{end}"
    );
    assert_eq!(
        spm_status_of(&b.c, &p.sp).await,
        json!({"spmId": 1, "spmStatus": "Free", "spmLver": lver})
    );
    // B's SPM verbs: 654, nothing changed.
    let before = snapshot(&p.dom);
    call_err(
        &b.c,
        "StorageDomain.setDescription",
        set_description(&p.sd, "by B"),
        654,
    )
    .await;
    assert_same_tree(&before, &snapshot(&p.dom), "after B's SPM verb");
    assert_eq!(domain_md(&p.dom), md);
    assert_eq!(spm_status_of(&a.c, &p.sp).await, spm);

    // The same job id on both hosts, into one destination: one runs.
    let dom = Dom {
        domain_type: LOCALFS,
        conn: ConnectionSpec::local(p.dom.parent().unwrap()),
        conn_id: new_id(),
        sd: p.sd.clone(),
        dom: p.dom.clone(),
    };
    let size = 512 * MIB;
    let src_a = dom.new_volume(&a.c, size, "RAW", "SPARSE").await;
    let src_b = dom.new_volume(&a.c, size, "RAW", "SPARSE").await;
    let dst = dom.new_volume(&a.c, size, "RAW", "SPARSE").await;
    write_random(&src_a.path, 0, size, 1);
    write_random(&src_b.path, 0, size, 2);
    let job = new_id();
    let (ra, rb) = tokio::join!(
        copy_as(&a.c, &job, &src_a, &dst),
        copy_as(&b.c, &job, &src_b, &dst)
    );
    assert_eq!((ra, rb), (json!(true), json!(true)));
    let (ja, jb) = tokio::join!(
        wait_job(&a.c, &job, JOB_WAIT),
        wait_job(&b.c, &job, JOB_WAIT)
    );
    eprintln!("job {job}: on A {ja}, on B {jb}");
    let (winner, loser) = match (ja["status"].as_str(), jb["status"].as_str()) {
        (Some("done"), Some("failed")) => (&src_a, &jb),
        (Some("failed"), Some("done")) => (&src_b, &ja),
        _ => panic!("not exactly one of the jobs succeeded: A {ja}, B {jb}"),
    };
    assert_eq!(loser["error"]["code"], 651, "{loser}");
    assert_same_bytes(&winner.path, &dst.path, size);
    assert_eq!(dst.md()["GEN"], "1", "one copy bumped the generation");

    disconnect_pool(&[&a, &b], &p.sp).await;
}

/// A new SPM answers for the old SPM's tasks (issue 16: VDSM keeps them
/// on the master domain, and spmStart loads them): A, the SPM, creates a
/// volume, whose task T is born finished and written to the master's
/// `master/tasks/`; B, not SPM, does not know T. After spmStop on A and
/// spmStart on B, B lists T and answers it finished/success with its
/// verb; Task.clear of T on B (the SPM) removes the master's copy too.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn a_new_spm_answers_for_the_tasks_of_the_old_one() {
    depot_testkit::require_root();
    let lock = NoDaemon::hold().expect("the sanlock lock");
    let (a, b, p) = two_hosts(&lock).await;
    start_spm_within(&a.c, &p.sp, SPM_TASK_WAIT).await;
    let (img, vol) = (new_id(), new_id());
    let params = volume_params(&p.sd, &img, &vol, MIB, "RAW", "SPARSE", "by A", None);
    let t = call_ok(&a.c, "Volume.create", params).await;
    let t = t.as_str().expect("a task id").to_string();
    let on_master = p.dom.join("master").join("tasks").join(format!("{t}.json"));
    let record: Value =
        serde_json::from_slice(&std::fs::read(&on_master).expect("T on the master"))
            .expect("a JSON record");
    assert_eq!(
        (
            &record["format"],
            &record["verb"],
            &record["pool"],
            &record["state"]
        ),
        (
            &json!(2),
            &json!("createVolume"),
            &json!(p.sp),
            &json!("finished")
        ),
        "{record}"
    );
    // B is not SPM: its lists are 654, and it never saw T.
    call_err(&b.c, "Host.getAllTasksStatuses", json!({}), 654).await;
    call_err(&b.c, "Task.getStatus", json!({"taskID": t}), 401).await;

    call_ok(&a.c, "StoragePool.spmStop", json!({"storagepoolID": p.sp})).await;
    start_spm_within(&b.c, &p.sp, SPM_TASK_WAIT).await;
    let success = json!({"taskID": t, "taskState": "finished", "taskResult": "success",
        "code": 0, "message": "1 jobs completed successfully"});
    let all = call_ok(&b.c, "Host.getAllTasksStatuses", json!({})).await;
    assert_eq!(all[&t], success, "{all}");
    assert_eq!(
        call_ok(&b.c, "Task.getStatus", json!({"taskID": t})).await,
        success
    );
    let infos = call_ok(&b.c, "Host.getAllTasksInfo", json!({})).await;
    assert_eq!(
        infos[&t],
        json!({"id": t, "verb": "createVolume"}),
        "{infos}"
    );
    // A, no longer SPM, still answers T by id (as VDSM after spmStop).
    assert_eq!(
        call_ok(&a.c, "Task.getStatus", json!({"taskID": t})).await,
        success
    );

    // Task.clear on the new SPM: gone from its lists and from the master.
    call_ok(&b.c, "Task.clear", json!({"taskID": t})).await;
    call_err(&b.c, "Task.getStatus", json!({"taskID": t}), 401).await;
    let all = call_ok(&b.c, "Host.getAllTasksStatuses", json!({})).await;
    assert!(all.get(&t).is_none(), "{all}");
    assert!(
        !on_master.exists(),
        "{} is still there",
        on_master.display()
    );

    disconnect_pool(&[&a, &b], &p.sp).await;
}

/// The SPM's depotd dies (kill -9) on a live host: sanlock frees its
/// lease with the process, and the other host becomes SPM at once. Then
/// the new SPM's whole host dies (depotd and sanlock daemon, kill -9):
/// the first host's spmStart, retried every 2 s, fails until the dead
/// host's delta lease is dead by sanlock's rule (host_dead_seconds after
/// its last renewal) and succeeds after. The failover time and that floor
/// are printed: docs/performance.md, "SPM failover".
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn spm_failover_waits_for_the_dead_hosts_lease_and_not_for_a_dead_process() {
    depot_testkit::require_root();
    let lock = NoDaemon::hold().expect("the sanlock lock");
    let (mut a, mut b, p) = two_hosts(&lock).await;
    start_spm_within(&a.c, &p.sp, SPM_TASK_WAIT).await;
    let lver = spm_status_of(&a.c, &p.sp).await["spmLver"]
        .as_i64()
        .unwrap();

    // 1. A's depotd crashes; A's sanlock daemon lives on and frees the lease.
    a.d.crash();
    let crashed = Instant::now();
    start_spm_within(&b.c, &p.sp, SPM_TASK_WAIT).await;
    let took = crashed.elapsed();
    eprintln!("process crash: B became SPM {took:?} after A's depotd died");
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert_eq!(
        spm_status_of(&b.c, &p.sp).await,
        json!({"spmId": 2, "spmStatus": "SPM", "spmLver": lver + 1})
    );
    // A's depotd comes back and joins again (its daemon kept host id 1).
    a.d.restart();
    a.reconnect().await;
    join_pool(&a.c, &p, a.id).await;
    until_acquired(&a.c, &p.sd).await;
    let end = spm_start_task(&a.c, &p.sp, SPM_TASK_WAIT).await;
    assert_eq!(end["code"], 651, "B is SPM: {end}");

    // 2. B's whole host dies. Wait until A's daemon saw B renew at least
    // once more, so that the floor below is B's real last renewal.
    a.seen_renewing(&p.sd, b.id).await;
    b.kill();
    let killed = monotonic();
    let (became_spm, failed) = spm_start_until_success(&a, &p.sp).await;
    let (floor, hs) = host_dead_floor(&a, &p.sd, &b);
    let spm = spm_status_of(&a.c, &p.sp).await;
    assert_eq!(
        (&spm["spmId"], &spm["spmStatus"]),
        (&json!(1), &json!("SPM")),
        "{spm}"
    );
    assert_eq!(spm["spmLver"], lver + 2, "{spm}");
    let (failover, floor_s) = (became_spm - killed, floor - killed);
    // sanlock counts from when the survivor's daemon last saw the dead
    // host's lease change (it reads the lockspace at each of its own
    // renewals, every 2 * io_timeout), not from the renewal itself.
    let seen_floor = (hs.last_live + host_dead_seconds(hs.io_timeout)) as f64 - killed;
    eprintln!(
        "SPM failover: A's daemon last saw B renew at {} (B wrote {}): sanlock's own wait ends \
         {seen_floor:.1} s after the kill; failover / that {:.2}",
        hs.last_live,
        hs.timestamp,
        failover / seen_floor
    );
    eprintln!(
        "SPM failover: A became SPM {failover:.1} s after B was killed ({failed} spmStart \
         attempts failed first); sanlock's floor: B's last renewal at {} + host_dead_seconds \
         {} (io_timeout {}) = {floor_s:.1} s after the kill; ratio {:.2}",
        hs.timestamp,
        host_dead_seconds(hs.io_timeout),
        hs.io_timeout,
        failover / floor_s
    );
    assert!(
        became_spm >= floor,
        "A became SPM at {became_spm:.1}, before sanlock's floor {floor} ({hs:?})"
    );
    disconnect_pool(&[&a], &p.sp).await;
}

/// A frozen SPM (its sanlock daemon and depotd stopped with SIGSTOP) is
/// replaced once its lease is dead; when its depotd runs again, before
/// its sanlock daemon does (a daemon stuck longer than depotd), it must
/// not change the shared metadata: an SPM verb fails and the domain's
/// metadata is what it was. Then the daemon thaws too, and finds its
/// lockspace's renewals failed: it kills depotd.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn a_frozen_spm_replaced_by_another_host_changes_nothing_after_it_thaws() {
    depot_testkit::require_root();
    let lock = NoDaemon::hold().expect("the sanlock lock");
    let (mut a, b, p) = two_hosts(&lock).await;
    start_spm_within(&a.c, &p.sp, SPM_TASK_WAIT).await;
    // A works as the SPM.
    call_ok(
        &a.c,
        "StorageDomain.setDescription",
        set_description(&p.sd, "by A"),
    )
    .await;
    let md = domain_md(&p.dom);
    assert_eq!(md["DESCRIPTION"], "by A", "{md:?}");
    // B's daemon has seen A renew (else sanlock counts the wait from B's
    // first look, not from A's last renewal).
    b.seen_renewing(&p.sd, a.id).await;

    a.sanlock.freeze();
    a.d.signal(nix::sys::signal::Signal::SIGSTOP);
    let frozen = monotonic();
    let (became_spm, failed) = spm_start_until_success(&b, &p.sp).await;
    let (floor, hs) = host_dead_floor(&b, &p.sd, &a);
    eprintln!(
        "B became SPM {:.1} s after A froze ({failed} attempts failed first); floor {:.1} s",
        became_spm - frozen,
        floor - frozen
    );
    assert!(
        became_spm >= floor,
        "B SPM at {became_spm:.1}, before {floor} ({hs:?})"
    );

    // A's depotd runs again; its sanlock daemon is still stopped, so
    // depotd's questions to it wait for their deadline (sanlock.timeout_s,
    // 30 s): a client that waits longer.
    a.d.signal(nix::sys::signal::Signal::SIGCONT);
    let patient =
        Client::connect_with(&a.d.unix(), Options::with_timeout(Duration::from_secs(120)))
            .await
            .expect("connect to A");
    let t = Instant::now();
    let e = patient
        .call(
            "StorageDomain.setDescription",
            set_description(&p.sd, "by A, fenced"),
        )
        .await;
    eprintln!("A's SPM verb after the thaw, in {:?}: {e:?}", t.elapsed());
    match &e {
        Err(e) => assert_eq!(e.rpc_code(), Some(654), "{e}"),
        Ok(v) => panic!("A changed the domain after B became SPM: {v}"),
    }
    assert_eq!(domain_md(&p.dom), md, "A changed the domain's metadata");
    // The role ended: no SPM verb passes any more, whatever sanlock says.
    let status = spm_status_of(&patient, &p.sp).await;
    eprintln!("A's getSpmStatus after the thaw: {status}");
    assert_ne!(status["spmStatus"], "SPM", "{status}");

    // Its daemon thaws: it finds its renewals failed and kills depotd.
    a.sanlock.thaw();
    let exit = a.d.try_wait_exit(Duration::from_secs(60));
    eprintln!("A's depotd after its sanlock daemon thawed: {exit:?}");
    assert!(
        exit.is_some(),
        "A's sanlock daemon did not kill A's depotd; its log:\n{}",
        a.sanlock.log()
    );
    assert_eq!(domain_md(&p.dom), md, "the domain's metadata changed");
    // B works as the SPM.
    call_ok(
        &b.c,
        "StorageDomain.setDescription",
        set_description(&p.sd, "by B"),
    )
    .await;
    assert_eq!(domain_md(&p.dom)["DESCRIPTION"], "by B");
}

/// Host `h` connects the GlusterFS volume `conn` (mounted in its own
/// namespace, as each host mounts its storage).
async fn connect_gluster(h: &Host<'_>, conn: &ConnectionSpec, conn_id: &str) {
    let st = call_ok(
        &h.c,
        "StoragePool.connectStorageServer",
        connect_params(GLUSTERFS, vec![conn.params(conn_id)]),
    )
    .await;
    assert_eq!(statuses(&st), [0], "host {}: {st}", h.name);
}

/// Host `h` disconnects it: nothing of it left mounted in its namespace
/// (a FUSE client left behind would keep the namespace alive).
async fn disconnect_gluster(h: &Host<'_>, conn: &ConnectionSpec, conn_id: &str) {
    let st = call_ok(
        &h.c,
        "StoragePool.disconnectStorageServer",
        connect_params(GLUSTERFS, vec![conn.params(conn_id)]),
    )
    .await;
    assert_eq!(statuses(&st), [0], "host {}: {st}", h.name);
    let mounts = std::fs::read_to_string(format!("/proc/{}/mounts", h.sanlock.pid())).unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains("fuse.glusterfs")),
        "host {}: {mounts}",
        h.name
    );
}

/// The same on GlusterFS: each host mounts the volume in its own
/// namespace; both hold their ids in the domain's lockspace (on the
/// volume), one is SPM, the other's spmStart fails with 651 and its SPM
/// verb answers 654 with nothing changed.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn two_hosts_share_a_glusterfs_domain_and_only_one_is_spm() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let g = depot_testkit::gluster::Gluster::start().expect("gluster harness");
    let lock = NoDaemon::hold().expect("the sanlock lock");
    let (a, b) = (host(&lock, "a", 1).await, host(&lock, "b", 2).await);
    let conn = ConnectionSpec {
        connection: g.spec(),
        vfs_type: Some("glusterfs".into()),
        mnt_options: None,
        protocol_version: None,
    };
    let conn_id = new_id();
    connect_gluster(&a, &conn, &conn_id).await;
    let sd = new_id();
    call_ok(
        &a.c,
        "StorageDomain.create",
        create_domain_params(&sd, GLUSTERFS, &conn.connection, "two hosts", 0),
    )
    .await;
    let sp = create_pool(&a.c, &sd).await;
    call_ok(
        &a.c,
        "StoragePool.connect",
        pool_connect_params(&sp, &sd, a.id),
    )
    .await;
    connect_gluster(&b, &conn, &conn_id).await;
    call_ok(
        &b.c,
        "StoragePool.connect",
        pool_connect_params(&sp, &sd, b.id),
    )
    .await;
    tokio::join!(until_acquired(&a.c, &sd), until_acquired(&b.c, &sd));
    for h in [&a, &b] {
        let held = h.lockspaces_of(&sd);
        assert!(
            held.len() == 1 && held[0].starts_with(&format!("{sd}:{}:", h.id)),
            "host {}: {held:?}",
            h.name
        );
    }

    start_spm_within(&a.c, &sp, SPM_TASK_WAIT).await;
    let spm = spm_status_of(&a.c, &sp).await;
    assert_eq!(
        (&spm["spmId"], &spm["spmStatus"]),
        (&json!(1), &json!("SPM")),
        "{spm}"
    );
    let end = spm_start_task(&b.c, &sp, SPM_TASK_WAIT).await;
    assert_eq!(
        (&end["taskResult"], &end["code"]),
        (&json!("cleanFailure"), &json!(651)),
        "{end}"
    );
    let status = spm_status_of(&b.c, &sp).await;
    assert_eq!(
        (&status["spmId"], &status["spmStatus"]),
        (&json!(1), &json!("Free")),
        "{status}"
    );
    // The domain through A's mount: B's refused verb changes nothing.
    let info = call_ok(
        &a.c,
        "StorageDomain.getInfo",
        json!({"storagedomainID": sd}),
    )
    .await;
    call_err(
        &b.c,
        "StorageDomain.setDescription",
        set_description(&sd, "by B"),
        654,
    )
    .await;
    assert_eq!(
        call_ok(
            &a.c,
            "StorageDomain.getInfo",
            json!({"storagedomainID": sd})
        )
        .await,
        info
    );
    call_ok(
        &a.c,
        "StorageDomain.setDescription",
        set_description(&sd, "by A"),
    )
    .await;
    // B reads what A wrote, through its own mount.
    eventually(
        "B to read A's description",
        Duration::from_secs(30),
        || async {
            let info = call_ok(
                &b.c,
                "StorageDomain.getInfo",
                json!({"storagedomainID": sd}),
            )
            .await;
            (info["name"] == "by A").then_some(())
        },
    )
    .await;

    disconnect_pool(&[&a, &b], &sp).await;
    for h in [&a, &b] {
        eventually("the lockspace released", RELEASE_WAIT, || async {
            h.lockspaces_of(&sd).is_empty().then_some(())
        })
        .await;
        disconnect_gluster(h, &conn, &conn_id).await;
    }
}

/// Each of `hosts` disconnects pool `sp` (its host id given back).
async fn disconnect_pool(hosts: &[&Host<'_>], sp: &str) {
    for h in hosts {
        call_ok(
            &h.c,
            "StoragePool.disconnect",
            json!({"storagepoolID": sp, "hostID": h.id, "scsiKey": sp}),
        )
        .await;
    }
}
