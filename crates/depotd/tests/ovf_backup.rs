//! OVF backup providers over the real daemon on LOCALFS domains (issue 17,
//! docs/storage.md "OVF backup providers"): an OVF_STORE upload recorded
//! in the domains' own stores, the SQLite archive (a real file) and a
//! mirror domain's OVF_STORE; the archive unavailable (its directory
//! missing, its file locked by another process) while uploads go on,
//! which never fails or slows them, then caught up, also across a
//! restart; a corrupt archive file refused and left as it was.

mod common;
mod ovf_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Daemon;
use depot_ovf_archive::archive::{Archive, Limits, Mode};
use ovf_common::*;
use serde_json::{json, Value};
use storage_common::*;

const WAIT_REC: Duration = Duration::from_secs(30);

fn backup_config(providers: &str, archive: &Path, mirror: Option<&str>) -> String {
    format!(
        "{CONFIG}[ovf_backup]\nproviders = [{providers}]\narchive_path = {:?}\n\
         retry_first_s = 0.1\nretry_max_s = 0.5\n{}",
        archive.display().to_string(),
        mirror
            .map(|m| format!("mirror_domain = \"{m}\"\n"))
            .unwrap_or_default()
    )
}

fn dref(v: &Vol) -> (&str, &str) {
    (v.img.as_str(), v.vol.as_str())
}

/// (entity id, generation, sha256) of what the archive lists.
fn archived(path: &Path) -> Vec<(String, u64, String)> {
    let Ok(a) = Archive::open(path, Limits::default(), Mode::ReadOnly) else {
        return Vec::new();
    };
    let mut v: Vec<_> = a
        .list()
        .unwrap()
        .into_iter()
        .map(|c| (c.id.to_string(), c.generation.unwrap(), c.sha256))
        .collect();
    v.sort();
    v
}

fn expected(entities: &[&Entity], generation: u64) -> Vec<(String, u64, String)> {
    let mut v: Vec<_> = entities
        .iter()
        .map(|e| (e.id.clone(), generation, sha256_hex(e.xml.as_bytes())))
        .collect();
    v.sort();
    v
}

fn queued(d: &Daemon, provider: &str) -> usize {
    std::fs::read_dir(d.state_dir().join("ovf-backup/queue").join(provider))
        .map(|r| {
            r.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// A PUT that must answer OK, and how long it took.
async fn timed_put(via: &Via, v: &Vol, tar: &[u8]) -> Duration {
    let t0 = Instant::now();
    put_ok(via, v, tar).await;
    t0.elapsed()
}

#[tokio::test]
async fn an_upload_is_recorded_in_all_three_providers() {
    let mut d = Daemon::start(CONFIG);
    let data = tempfile::tempdir().unwrap();
    let mdata = tempfile::tempdir().unwrap();
    let mut dom = Domain::create(
        &d,
        LOCALFS,
        ConnectionSpec::local(&data.path().canonicalize().unwrap()),
        512,
    )
    .await;
    let mut mirror = Domain::create(
        &d,
        LOCALFS,
        ConnectionSpec::local(&mdata.path().canonicalize().unwrap()),
        512,
    )
    .await;
    let mirror_store = mirror.create_store().await;
    let archive_dir = tempfile::tempdir().unwrap();
    let archive = archive_dir.path().join("ovf.db");
    d.stop();
    d.set_extra_config(&backup_config(
        r#""stores", "archive", "mirror""#,
        &archive,
        Some(&mirror.sd),
    ));
    d.restart();
    dom.reconnect(&d).await;
    mirror.reconnect(&d).await;

    let disk = dom.create_volume(&new_id(), GIB, "COW", "DATA", None).await;
    let store = dom.create_store().await;
    let vm = Entity::vm("web", &[dref(&disk)]);
    let tpl = Entity::template("base", &[dref(&disk)]);
    let tar = engine_tar(&dom.sd, &[vm.clone(), tpl.clone()], &[]);
    dom.set_description(&store, &dom.store_description(tar.len()))
        .await;
    let via = Via::unix(&d);
    put_ok(&via, &store, &tar).await;

    // The archive: both entities, generation 1, the hashes of their texts.
    wait_until("the archive has the upload", WAIT_REC, || {
        archived(&archive) == expected(&[&vm, &tpl], 1)
    });
    let a = Archive::open(&archive, Limits::default(), Mode::ReadOnly).unwrap();
    let copies = a.copies(vm.id.parse().unwrap()).unwrap();
    assert_eq!(copies[0].ovf.as_deref(), Some(vm.xml.as_str()));
    assert_eq!(copies[0].source.sd.to_string(), dom.sd);
    assert_eq!(copies[0].source.vol.to_string(), store.vol);
    assert_eq!(copies[0].name, "web");

    // The mirror: its own OVF_STORE, written through the upload path (a
    // valid store of its own generation), holds the same texts.
    let mut mirrored = false;
    let t0 = Instant::now();
    while t0.elapsed() < WAIT_REC {
        let st = mirror.store(&mirror_store).await;
        if st["valid"].as_bool() == Some(true) {
            mirrored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(mirrored, "the mirror store was never written");
    let ents = mirror.entities().await;
    let mut ids: Vec<String> = ents["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut want = vec![vm.id.clone(), tpl.id.clone()];
    want.sort();
    assert_eq!(ids, want, "{ents}");
    assert_eq!(mirror.entity(&vm.id).await["ovf"], vm.xml.as_str());
    assert_eq!(mirror.entity(&tpl.id).await["type"], "TEMPLATE");

    // The domain's own store: what the engine reads back.
    let own = dom.entities().await;
    assert_eq!(own["entities"].as_array().unwrap().len(), 2, "{own}");

    // A second upload: the mirror keeps one copy of each entity, now of
    // generation 2; the archive holds both generations.
    let vm2 = Entity::vm("web", &[dref(&disk)]);
    let vm2 = Entity {
        id: vm.id.clone(),
        ..vm2
    };
    let tar2 = engine_tar(&dom.sd, std::slice::from_ref(&vm2), &[]);
    dom.set_description(&store, &dom.store_description(tar2.len()))
        .await;
    put_ok(&via, &store, &tar2).await;
    wait_until("the archive has generation 2", WAIT_REC, || {
        archived(&archive) == expected(&[&vm2], 2)
    });
    assert_eq!(queued(&d, "archive"), 0);
    let t0 = Instant::now();
    loop {
        let ents = mirror.entities().await;
        let list = ents["entities"].as_array().unwrap().clone();
        if list.len() == 1 && list[0]["id"] == vm.id.as_str() {
            break;
        }
        assert!(t0.elapsed() < WAIT_REC, "mirror: {ents}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until("the mirror's queue drains", WAIT_REC, || {
        queued(&d, "mirror") == 0
    });
}

/// The archive's directory is missing while two uploads are made: they
/// answer at once, the records wait in the queue, a restart keeps them,
/// and they are in the archive once the directory is there.
#[tokio::test]
async fn an_unavailable_archive_catches_up_across_a_restart() {
    let base = tempfile::tempdir().unwrap();
    let later: PathBuf = base.path().join("not-yet");
    let archive = later.join("ovf.db");
    let mut d = Daemon::start(&backup_config(r#""archive""#, &archive, None));
    let data = tempfile::tempdir().unwrap();
    let mut dom = Domain::create(
        &d,
        LOCALFS,
        ConnectionSpec::local(&data.path().canonicalize().unwrap()),
        512,
    )
    .await;
    let disk = dom.create_volume(&new_id(), GIB, "COW", "DATA", None).await;
    let store = dom.create_store().await;
    let via = Via::unix(&d);
    let v1 = Entity::vm("db", &[dref(&disk)]);
    let tar1 = engine_tar(&dom.sd, std::slice::from_ref(&v1), &[]);
    let t1 = timed_put(&via, &store, &tar1).await;
    let v2 = Entity {
        id: v1.id.clone(),
        ..Entity::vm("db", &[dref(&disk)])
    };
    let tar2 = engine_tar(&dom.sd, std::slice::from_ref(&v2), &[]);
    let t2 = timed_put(&via, &store, &tar2).await;
    // Nowhere near a retry's backoff, nor the archive's busy wait.
    assert!(t1.max(t2) < Duration::from_secs(2), "{t1:?} {t2:?}");
    wait_until("two records queued", WAIT_REC, || {
        queued(&d, "archive") == 2
    });
    assert!(!archive.exists());

    d.stop();
    assert_eq!(queued(&d, "archive"), 2, "the queue survives the stop");
    d.restart();
    dom.reconnect(&d).await;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(queued(&d, "archive"), 2);
    std::fs::create_dir(&later).unwrap();
    wait_until("the queue drains", WAIT_REC, || queued(&d, "archive") == 0);
    let a = Archive::open(&archive, Limits::default(), Mode::ReadOnly).unwrap();
    let gens: Vec<(u64, String)> = a
        .copies(v1.id.parse().unwrap())
        .unwrap()
        .into_iter()
        .map(|c| (c.generation.unwrap(), c.sha256))
        .collect();
    assert_eq!(
        gens,
        vec![
            (2, sha256_hex(v2.xml.as_bytes())),
            (1, sha256_hex(v1.xml.as_bytes()))
        ]
    );
}

/// Another process holds the archive locked: the upload answers at once
/// (not after the archive's busy wait), the record waits, and is written
/// once the lock is released.
#[tokio::test]
async fn a_locked_archive_never_slows_an_upload() {
    let base = tempfile::tempdir().unwrap();
    let archive = base.path().join("ovf.db");
    drop(Archive::open(&archive, Limits::default(), Mode::ReadWrite).unwrap());
    let d = Daemon::start(&backup_config(r#""archive""#, &archive, None));
    let data = tempfile::tempdir().unwrap();
    let dom = Domain::create(
        &d,
        LOCALFS,
        ConnectionSpec::local(&data.path().canonicalize().unwrap()),
        512,
    )
    .await;
    let disk = dom.create_volume(&new_id(), GIB, "COW", "DATA", None).await;
    let store = dom.create_store().await;
    let locker = rusqlite::Connection::open(&archive).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    let via = Via::unix(&d);
    let vm = Entity::vm("app", &[dref(&disk)]);
    let tar = engine_tar(&dom.sd, std::slice::from_ref(&vm), &[]);
    let t = timed_put(&via, &store, &tar).await;
    assert!(t < Duration::from_secs(2), "{t:?}");
    wait_until("the record queued", WAIT_REC, || queued(&d, "archive") == 1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(queued(&d, "archive"), 1, "recorded through a lock?");
    locker.execute_batch("ROLLBACK;").unwrap();
    drop(locker);
    wait_until("the queue drains", WAIT_REC, || queued(&d, "archive") == 0);
    assert_eq!(archived(&archive), expected(&[&vm], 1));
}

/// A corrupt archive file: uploads go on, the file is never written, the
/// records stay queued and the log names the file.
#[tokio::test]
async fn a_corrupt_archive_is_left_as_it_was() {
    let base = tempfile::tempdir().unwrap();
    let archive = base.path().join("ovf.db");
    let garbage = b"not an SQLite database at all\n".repeat(100);
    std::fs::write(&archive, &garbage).unwrap();
    let d = Daemon::start(&backup_config(r#""archive""#, &archive, None));
    let data = tempfile::tempdir().unwrap();
    let dom = Domain::create(
        &d,
        LOCALFS,
        ConnectionSpec::local(&data.path().canonicalize().unwrap()),
        512,
    )
    .await;
    let disk = dom.create_volume(&new_id(), GIB, "COW", "DATA", None).await;
    let store = dom.create_store().await;
    let tar = engine_tar(&dom.sd, &[Entity::vm("x", &[dref(&disk)])], &[]);
    put_ok(&Via::unix(&d), &store, &tar).await;
    wait_until("the failure logged", WAIT_REC, || {
        d.log().contains("not a depot OVF archive")
    });
    assert_eq!(queued(&d, "archive"), 1);
    assert_eq!(std::fs::read(&archive).unwrap(), garbage);
    assert!(d.log().contains(&archive.display().to_string()));
}

async fn domain(d: &Daemon, dir: &Path) -> Domain {
    Domain::create(
        d,
        LOCALFS,
        ConnectionSpec::local(&dir.canonicalize().unwrap()),
        512,
    )
    .await
}

fn entity<'a>(listing: &'a Value, id: &str) -> &'a Value {
    listing["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {listing}"))
}

/// The providers disagree: the domain's own store is torn, the mirror
/// missed the newest upload (it was not configured then), the archive has
/// both generations. depot trusts the newest generation two providers
/// agree on (generation 1: archive and mirror), says why, and restores it
/// into the torn store and into a new domain, through the upload path.
/// Bad restores change nothing.
// long: about 130 lines: one scenario, three daemon configurations.
#[tokio::test]
async fn disagreeing_providers_and_the_restore_of_the_trusted_copy() {
    let mut d = Daemon::start(CONFIG);
    let (data, mdata, ndata) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut dom = domain(&d, data.path()).await;
    let mut mirror = domain(&d, mdata.path()).await;
    let mirror_store = mirror.create_store().await;
    let archive_dir = tempfile::tempdir().unwrap();
    let archive = archive_dir.path().join("ovf.db");
    let all = backup_config(
        r#""stores", "archive", "mirror""#,
        &archive,
        Some(&mirror.sd),
    );
    let no_mirror = backup_config(r#""stores", "archive""#, &archive, Some(&mirror.sd));
    d.stop();
    d.set_extra_config(&all);
    d.restart();
    dom.reconnect(&d).await;
    mirror.reconnect(&d).await;
    let disk = dom.create_volume(&new_id(), GIB, "COW", "DATA", None).await;
    let store = dom.create_store().await;
    let a1 = Entity::vm("app", &[dref(&disk)]);
    let t1 = Entity::template("base", &[dref(&disk)]);
    put_ok(
        &Via::unix(&d),
        &store,
        &engine_tar(&dom.sd, &[a1.clone(), t1.clone()], &[]),
    )
    .await;
    wait_until("archive gen 1", WAIT_REC, || {
        archived(&archive) == expected(&[&a1, &t1], 1)
    });
    let t0 = Instant::now();
    while mirror.store(&mirror_store).await["valid"].as_bool() != Some(true) {
        assert!(t0.elapsed() < WAIT_REC, "mirror never written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until("mirror queue", WAIT_REC, || queued(&d, "mirror") == 0);

    // Generation 2 while the mirror is not configured.
    d.stop();
    d.set_extra_config(&no_mirror);
    d.restart();
    dom.reconnect(&d).await;
    let a2 = Entity {
        id: a1.id.clone(),
        ..Entity::vm("app", &[dref(&disk)])
    };
    let tar2 = engine_tar(&dom.sd, &[a2.clone(), t1.clone()], &[]);
    put_ok(&Via::unix(&d), &store, &tar2).await;
    wait_until("archive gen 2", WAIT_REC, || {
        archived(&archive) == expected(&[&a2, &t1], 2)
    });
    // The domain's own store torn (a bit of its trailer flipped).
    d.stop();
    let mut block = store.bytes()[(STORE_SIZE - TRAILER) as usize..].to_vec();
    block[20] ^= 1;
    store.write_trailer_block(&block);
    d.set_extra_config(&all);
    d.restart();
    dom.reconnect(&d).await;
    mirror.reconnect(&d).await;
    let c = d.client().await;

    let listing = call_ok(&c, "OvfBackup.list", json!({})).await;
    let names: Vec<&str> = listing["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["stores", "archive", "mirror"], "{listing}");
    let app = entity(&listing, &a1.id);
    let sha1 = sha256_hex(a1.xml.as_bytes());
    let sha2 = sha256_hex(a2.xml.as_bytes());
    assert_eq!(app["trusted"], "archive", "{app}");
    assert_eq!(app["trustedGeneration"], 1, "{app}");
    assert_eq!(app["trustedSha256"], sha1.as_str(), "{app}");
    let reason = app["reason"].as_str().unwrap();
    assert!(reason.contains("archive, mirror"), "{reason}");
    assert!(reason.contains("one provider only"), "{reason}");
    // The copies: archive 2 and 1, mirror 1; none from the torn store.
    let mut copies: Vec<(String, u64, String)> = app["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["provider"].as_str().unwrap().to_string(),
                c["generation"].as_u64().unwrap(),
                c["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    copies.sort();
    assert_eq!(
        copies,
        vec![
            ("archive".into(), 1, sha1.clone()),
            ("archive".into(), 2, sha2.clone()),
            ("mirror".into(), 1, sha1.clone()),
        ]
    );
    let shown = call_ok(&c, "OvfBackup.show", json!({"entityID": a1.id})).await;
    assert_eq!(shown["ovf"], a1.xml.as_str());

    // Bad restores: nothing is written.
    let before = store.bytes();
    call_err(
        &c,
        "OvfBackup.restore",
        json!({"storagedomainID": dom.sd, "provider": "tape"}),
        1000,
    )
    .await;
    call_err(
        &c,
        "OvfBackup.restore",
        json!({"storagedomainID": dom.sd, "imageID": store.img}),
        1000,
    )
    .await;
    call_err(&c, "OvfBackup.show", json!({"entityID": new_id()}), 9007).await;
    assert!(store.bytes() == before, "a refused restore wrote");

    // Restore into the torn store: the trusted copies, a valid store.
    let r = call_ok(
        &c,
        "OvfBackup.restore",
        json!({"storagedomainID": dom.sd, "imageID": store.img, "volumeID": store.vol}),
    )
    .await;
    assert_eq!(r["restored"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(dom.store(&store).await["valid"], true);
    assert_eq!(dom.entity(&a1.id).await["ovf"], a1.xml.as_str());
    assert_eq!(dom.entity(&t1.id).await["ovf"], t1.xml.as_str());

    // Restore into a new domain, the archive's newest copy chosen by name.
    let fresh = domain(&d, ndata.path()).await;
    let fresh_store = fresh.create_store().await;
    let r = call_ok(
        &c,
        "OvfBackup.restore",
        json!({"storagedomainID": fresh.sd, "entityIDs": [a1.id], "provider": "archive"}),
    )
    .await;
    assert_eq!(r["volumeID"], fresh_store.vol.as_str(), "{r}");
    assert_eq!(r["restored"][0]["generation"], 2, "{r}");
    let ents = fresh.entities().await;
    assert_eq!(ents["entities"].as_array().unwrap().len(), 1, "{ents}");
    assert_eq!(fresh.entity(&a1.id).await["ovf"], a2.xml.as_str());
}

/// An archive from another host: refused when it is not one depot can
/// read (nothing written); attached `fresh` it is a read-only provider
/// ("attached") that a restore can take from, also after a restart;
/// attached `resume` it is where uploads are recorded from then on.
#[tokio::test]
async fn attaching_an_archive_fresh_and_resume() {
    let base = tempfile::tempdir().unwrap();
    let own = base.path().join("own.db");
    let old = base.path().join("old.db");
    // The old host's archive: one VM at generation 9 of some store.
    let old_vm_id = new_id();
    let old_text = r#"<?xml version="1.0" encoding="UTF-8"?><ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>legacy</Name></Content></ovf:Envelope>"#;
    {
        let mut a = Archive::open(&old, Limits::default(), Mode::ReadWrite).unwrap();
        let src = depot_ovf_archive::Source {
            sd: uuid::Uuid::new_v4(),
            img: uuid::Uuid::new_v4(),
            vol: uuid::Uuid::new_v4(),
        };
        a.record(&depot_ovf_archive::UploadRecord {
            source: src,
            generation: 9,
            time: 1_700_000_000,
            entities: vec![depot_ovf_archive::EntityCopy::new(
                old_vm_id.parse().unwrap(),
                "legacy".into(),
                depot_ovf_archive::EntityKind::Vm,
                old_text.into(),
            )],
        })
        .unwrap();
    }
    let mut d = Daemon::start(&backup_config(r#""stores", "archive""#, &own, None));
    let data = tempfile::tempdir().unwrap();
    let mut dom = domain(&d, data.path()).await;
    let store = dom.create_store().await;
    let c = d.client().await;

    // Bad inputs: nothing attached, the files unchanged.
    let garbage = base.path().join("garbage.db");
    std::fs::write(&garbage, b"garbage garbage garbage").unwrap();
    let newer = base.path().join("newer.db");
    std::fs::copy(&old, &newer).unwrap();
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 7;")
        .unwrap();
    let newer_bytes = std::fs::read(&newer).unwrap();
    for (path, mode, what) in [
        (
            garbage.display().to_string(),
            "fresh",
            "not a depot OVF archive",
        ),
        (newer.display().to_string(), "resume", "newer depot"),
        ("relative.db".to_string(), "fresh", "absolute"),
        (old.display().to_string(), "sideways", "resume or fresh"),
        (own.display().to_string(), "fresh", "being written"),
    ] {
        if path == own.display().to_string() {
            // The own archive exists once something was recorded; make it.
            drop(Archive::open(&own, Limits::default(), Mode::ReadWrite).unwrap());
        }
        let e = call_err(
            &c,
            "OvfBackup.attach",
            json!({"path": path, "mode": mode}),
            1000,
        )
        .await;
        assert!(e.contains(what), "{path} {mode}: {e}");
    }
    assert_eq!(std::fs::read(&garbage).unwrap(), b"garbage garbage garbage");
    assert_eq!(std::fs::read(&newer).unwrap(), newer_bytes);
    assert!(!d.state_dir().join("ovf-backup/attached.json").exists());

    // Fresh: read only, listed as "attached", restorable.
    let old_bytes = std::fs::read(&old).unwrap();
    let r = call_ok(
        &c,
        "OvfBackup.attach",
        json!({"path": old.display().to_string(), "mode": "fresh"}),
    )
    .await;
    assert_eq!(r["latest"][0]["generation"], 9, "{r}");
    assert_eq!(r["recording"], own.display().to_string().as_str(), "{r}");
    d.stop();
    d.restart();
    dom.reconnect(&d).await;
    let c = d.client().await;
    let listing = call_ok(&c, "OvfBackup.list", json!({})).await;
    let e = entity(&listing, &old_vm_id);
    assert_eq!(e["trusted"], "attached", "{e}");
    assert!(
        e["reason"].as_str().unwrap().contains("only usable copy"),
        "{e}"
    );
    call_ok(
        &c,
        "OvfBackup.restore",
        json!({"storagedomainID": dom.sd, "entityIDs": [old_vm_id]}),
    )
    .await;
    assert_eq!(dom.entity(&old_vm_id).await["ovf"], old_text);
    // The restore is an upload like any: recorded in the own archive, not
    // in the attached one.
    wait_until("the restore recorded", WAIT_REC, || {
        archived(&own).iter().any(|(id, _, _)| *id == old_vm_id)
    });
    assert_eq!(
        std::fs::read(&old).unwrap(),
        old_bytes,
        "the attached archive was written"
    );

    // Resume: uploads go into the attached archive from now on.
    call_ok(
        &c,
        "OvfBackup.attach",
        json!({"path": old.display().to_string(), "mode": "resume"}),
    )
    .await;
    let disk = dom.create_volume(&new_id(), GIB, "COW", "DATA", None).await;
    let vm = Entity::vm("new-here", &[dref(&disk)]);
    put_ok(
        &Via::unix(&d),
        &store,
        &engine_tar(&dom.sd, std::slice::from_ref(&vm), &[]),
    )
    .await;
    wait_until("recorded in the resumed archive", WAIT_REC, || {
        archived(&old).iter().any(|(id, _, _)| *id == vm.id)
    });
    assert!(!archived(&own).iter().any(|(id, _, _)| *id == vm.id));
}
