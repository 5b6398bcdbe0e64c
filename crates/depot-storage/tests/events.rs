//! Storage events as depot-storage publishes them (typed, to a sink): the
//! domain monitor's state changes and the connection watch's losses. The
//! daemon's mapping to notifications is tested in crates/depotd/tests.

use std::fs;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use depot_api::storage::{DomainType, SdUuid};
use depot_api::types::Uuid;
use depot_os::fsproc::HelperCommand;
use depot_os::CommandRunner;
use depot_storage::connection::ConnectionParams;
use depot_storage::events::{Events, Recorder, StorageEvent};
use depot_storage::monitor::{CheckTarget, Monitor, MonitorConfig};
use depot_storage::{Storage, StorageConfig};

const INTERVAL: Duration = Duration::from_millis(100);
const LIMIT: Duration = Duration::from_secs(20);

/// Waits until `rec` holds `n` events; them.
fn wait_events(rec: &Recorder, n: usize, what: &str) -> Vec<StorageEvent> {
    let end = Instant::now() + LIMIT;
    loop {
        let ev = rec.events();
        if ev.len() >= n {
            return ev;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}: {ev:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn monitor_publishes_each_change_of_state_once() {
    let root = tempfile::tempdir().unwrap();
    let sd = SdUuid(Uuid::new_v4());
    let dir = root.path().join(sd.to_string());
    fs::create_dir_all(dir.join("dom_md")).unwrap();
    let md = dir.join("dom_md/metadata");
    fs::write(&md, b"CLASS=Data\nVERSION=5\n").unwrap();
    let rec = Arc::new(Recorder::default());
    let m = Monitor::new(MonitorConfig {
        interval: INTERVAL,
        check_timeout: Duration::from_secs(5),
        mounter: None,
        helper: Some(HelperCommand::new(env!(
            "CARGO_BIN_EXE_depot-storage-fsproc"
        ))),
        sanlock: None,
    });
    m.set_events(Events::new(rec.clone()));
    m.start(sd, CheckTarget::file_domain(&dir, None)).unwrap();

    // Healthy from the start: the first check changes nothing.
    let end = Instant::now() + LIMIT;
    while !m.status(sd).unwrap().actual {
        assert!(Instant::now() < end);
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(3 * INTERVAL);
    assert_eq!(rec.events(), vec![]);

    // Invalid: one event, however many checks fail.
    fs::rename(&md, dir.join("dom_md/away")).unwrap();
    let ev = wait_events(&rec, 1, "the domain to become invalid");
    thread::sleep(3 * INTERVAL);
    assert_eq!(rec.events().len(), 1, "{:?}", rec.events());
    let StorageEvent::DomainState {
        sd: got,
        valid,
        code,
        message,
        previous_valid,
        previous_code,
    } = &ev[0]
    else {
        panic!("{ev:?}");
    };
    assert_eq!(
        (*got, *valid, *code, *previous_valid, *previous_code),
        (sd, false, 2001, true, 0)
    );
    assert!(message.contains("metadata"), "{message}");

    // Valid again.
    fs::rename(dir.join("dom_md/away"), &md).unwrap();
    let ev = wait_events(&rec, 2, "the domain to become valid");
    assert_eq!(
        ev[1],
        StorageEvent::DomainState {
            sd,
            valid: true,
            code: 0,
            message: String::new(),
            previous_valid: false,
            previous_code: 2001,
        }
    );
    m.shutdown();
}

/// A storage on the repository `repo` whose events go to `rec`.
fn watched_storage(repo: &std::path::Path, rec: &Arc<Recorder>) -> Storage {
    Storage::new(
        StorageConfig {
            repository: repo.to_path_buf(),
            io_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(10),
            qemu_img_timeout: Duration::from_secs(10),
            monitor_interval: INTERVAL,
            fsproc_command: Some(HelperCommand::new(env!(
                "CARGO_BIN_EXE_depot-storage-fsproc"
            ))),
            fsproc_helpers_per_mount: 4,
            sanlock: None,
        },
        CommandRunner::new(),
    )
    .with_events(Events::new(rec.clone()))
}

#[test]
fn watch_reports_a_lost_localfs_connection_once() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let local = data.path().join("domain");
    fs::create_dir(&local).unwrap();
    let rec = Arc::new(Recorder::default());
    let s = watched_storage(repo.path(), &rec);
    let id = Uuid::new_v4().to_string();
    let params = vec![ConnectionParams {
        id: id.clone(),
        connection: local.to_str().unwrap().to_string(),
        ..Default::default()
    }];
    let st = s.connect_storage_server(DomainType::LocalFs, &params);
    assert_eq!(st[0].status, 0, "{st:?}");
    assert_eq!(s.watched_connections(), vec![id.clone()]);
    thread::sleep(3 * INTERVAL);
    assert_eq!(rec.events(), vec![]);

    // The directory goes: one event.
    fs::rename(&local, data.path().join("moved")).unwrap();
    let ev = wait_events(&rec, 1, "the loss");
    thread::sleep(3 * INTERVAL);
    assert_eq!(rec.events().len(), 1, "{:?}", rec.events());
    let StorageEvent::ConnectionLost {
        id: got,
        domain_type,
        connection,
        mount_point,
        reason,
    } = &ev[0]
    else {
        panic!("{ev:?}");
    };
    assert_eq!(got, &id);
    assert_eq!(*domain_type, DomainType::LocalFs);
    assert_eq!(connection, local.to_str().unwrap());
    assert!(mount_point
        .as_ref()
        .unwrap()
        .starts_with(repo.path().canonicalize().unwrap()));
    assert!(reason.contains("No such file"), "{reason}");

    // (That a connection back is watched again, and lost again is a new
    // event, is connection::watch's unit test.)

    // Disconnected on purpose: forgotten, nothing more reported.
    fs::create_dir(&local).unwrap();
    let st = s.disconnect_storage_server(DomainType::LocalFs, &params);
    assert_eq!(st[0].status, 0, "{st:?}");
    assert!(s.watched_connections().is_empty());
    thread::sleep(5 * INTERVAL);
    assert_eq!(rec.events().len(), 1, "{:?}", rec.events());
}

/// A DR failover's step 2 disconnects a primary that was connected under
/// another id (the engine's): the watch forgets it all the same, and no
/// loss is reported for a connection left on purpose.
#[test]
fn dr_switch_forgets_the_primary_whatever_its_id() {
    let repo = tempfile::tempdir().unwrap();
    let prod = tempfile::tempdir().unwrap();
    let replica = tempfile::tempdir().unwrap();
    let (prod, replica) = (
        prod.path().canonicalize().unwrap(),
        replica.path().canonicalize().unwrap(),
    );
    let rec = Arc::new(Recorder::default());
    let s = watched_storage(repo.path(), &rec);
    let engines = Uuid::new_v4().to_string();
    let params = vec![ConnectionParams {
        id: engines.clone(),
        connection: prod.to_str().unwrap().to_string(),
        ..Default::default()
    }];
    let st = s.connect_storage_server(DomainType::LocalFs, &params);
    assert_eq!(st[0].status, 0, "{st:?}");
    assert_eq!(s.watched_connections(), vec![engines.clone()]);
    let text = format!(
        "version = 1\n[pool.primary]\nid = \"{}\"\n[pool.secondary]\nid = \"{}\"\n\
         [[connections]]\nname = \"local\"\ntype = \"LOCALFS\"\ndomains = [\"{}\"]\n\
         primary = {{ path = \"{}\" }}\nsecondary = {{ path = \"{}\" }}\n",
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        prod.display(),
        replica.display()
    );
    let mapping = depot_dr::parse_toml(&text).unwrap();
    let done = s.dr_switch_connections(&mapping, false).unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(
        (done[0].action.as_str(), done[0].outcome.as_str()),
        ("disconnect", "ok")
    );
    assert_eq!(
        (done[1].action.as_str(), done[1].outcome.as_str()),
        ("connect", "ok")
    );
    let watched = s.watched_connections();
    assert_eq!(watched.len(), 1, "{watched:?}");
    assert!(
        !watched.contains(&engines),
        "the primary is still watched: {watched:?}"
    );
    thread::sleep(5 * INTERVAL);
    assert_eq!(
        rec.events(),
        vec![],
        "a loss reported for a primary left on purpose"
    );
    // Again: nothing to do, nothing done.
    let again = s.dr_switch_connections(&mapping, false).unwrap();
    assert!(again.iter().all(|c| c.action == "none"), "{again:?}");
}
