//! The OVF archive on a real SQLite file, and the retry queue on a real
//! directory: recording, retention, refusals that leave the file as it
//! was, an archive unavailable (its directory missing, locked by another
//! connection) and then caught up from the queue, also by a new worker
//! (a restart).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use depot_ovf_archive::archive::{Archive, ArchiveError, ArchiveProvider, Limits, Mode};
use depot_ovf_archive::queue::{Backoff, RetryQueue, Worker};
use depot_ovf_archive::{EntityCopy, EntityKind, Provider, Source, UploadRecord};
use uuid::Uuid;

fn source(sd: u128) -> Source {
    Source {
        sd: Uuid::from_u128(sd),
        img: Uuid::from_u128(sd + 1),
        vol: Uuid::from_u128(sd + 2),
    }
}

fn record(src: Source, generation: u64, entities: &[(u128, &str, &str)]) -> UploadRecord {
    UploadRecord {
        source: src,
        generation,
        time: 1_700_000_000 + generation,
        entities: entities
            .iter()
            .map(|(id, name, text)| {
                EntityCopy::new(
                    Uuid::from_u128(*id),
                    name.to_string(),
                    if name.starts_with("tpl") {
                        EntityKind::Template
                    } else {
                        EntityKind::Vm
                    },
                    text.to_string(),
                )
            })
            .collect(),
    }
}

fn open(path: &Path) -> Archive {
    Archive::open(path, Limits::default(), Mode::ReadWrite).unwrap()
}

#[test]
fn records_lists_and_returns_copies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ovf.db");
    let mut a = open(&path);
    let src = source(100);
    a.record(&record(
        src,
        1,
        &[(1, "web", "<v1/>"), (2, "tpl-base", "<t/>")],
    ))
    .unwrap();
    a.record(&record(src, 2, &[(1, "web", "<v2/>")])).unwrap();
    // The same record again (a retry): nothing changes.
    a.record(&record(src, 2, &[(1, "web", "<v2/>")])).unwrap();
    drop(a);
    // A real file, read by a new connection.
    let a = open(&path);
    let listed = a.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].generation, Some(2));
    assert_eq!(listed[0].name, "web");
    assert_eq!(listed[0].sha256, depot_ovf_archive::sha256_hex(b"<v2/>"));
    assert!(listed[0].ovf.is_none());
    let copies = a.copies(Uuid::from_u128(1)).unwrap();
    let texts: Vec<_> = copies
        .iter()
        .map(|c| (c.generation, c.ovf.clone()))
        .collect();
    assert_eq!(
        texts,
        vec![
            (Some(2), Some("<v2/>".into())),
            (Some(1), Some("<v1/>".into()))
        ]
    );
    let tpl = a.copies(Uuid::from_u128(2)).unwrap();
    assert_eq!(tpl[0].kind, EntityKind::Template);
    assert_eq!(a.latest_generations().unwrap(), vec![(src, 2)]);
}

#[test]
fn retention_keeps_generations_and_bytes_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ovf.db");
    let limits = Limits {
        max_bytes: 3000,
        keep_generations: 3,
    };
    let mut a = Archive::open(&path, limits, Mode::ReadWrite).unwrap();
    let (s1, s2) = (source(100), source(200));
    let text = "x".repeat(500);
    for g in 1..=5 {
        a.record(&record(s1, g, &[(1, "web", &text)])).unwrap();
    }
    // At most 3 generations of one store.
    let gens: Vec<_> = a
        .copies(Uuid::from_u128(1))
        .unwrap()
        .iter()
        .map(|c| c.generation.unwrap())
        .collect();
    assert_eq!(gens, vec![5, 4, 3]);
    // Past 3000 bytes the oldest go, but never the newest of a store.
    let big = "y".repeat(2000);
    a.record(&record(s2, 1, &[(9, "db", &big)])).unwrap();
    assert!(
        a.held_bytes().unwrap() <= 3000,
        "{}",
        a.held_bytes().unwrap()
    );
    let gens: Vec<_> = a
        .copies(Uuid::from_u128(1))
        .unwrap()
        .iter()
        .map(|c| c.generation.unwrap())
        .collect();
    assert_eq!(gens, vec![5, 4]);
    assert_eq!(a.copies(Uuid::from_u128(9)).unwrap().len(), 1);
    // One upload larger than the bound is refused, the archive unchanged.
    let before = a.held_bytes().unwrap();
    let huge = "z".repeat(4000);
    let e = a.record(&record(s2, 2, &[(9, "db", &huge)])).unwrap_err();
    assert!(matches!(e, ArchiveError::TooLarge { .. }), "{e}");
    assert!(!e.is_transient());
    assert_eq!(a.held_bytes().unwrap(), before);
}

#[test]
fn a_corrupt_file_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        (
            "garbage.db",
            b"this is not a database, it is a note".to_vec(),
        ),
        ("empty.db", Vec::new()),
        // The right header, then garbage: SQLite itself refuses it.
        ("torn.db", {
            let mut b = b"SQLite format 3\0".to_vec();
            b.extend(std::iter::repeat_n(0xA5u8, 8192));
            b
        }),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let e = Archive::open(&path, Limits::default(), Mode::ReadWrite)
            .err()
            .unwrap_or_else(|| panic!("{name} opened"));
        assert!(matches!(e, ArchiveError::Corrupt { .. }), "{name}: {e}");
        assert!(e.to_string().contains(name), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name} was changed");
        let p = ArchiveProvider::new(path.clone(), Limits::default(), Mode::ReadWrite);
        assert!(p
            .record(&record(source(1), 1, &[(1, "a", "<a/>")]))
            .is_err());
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name} was changed");
    }
    // Someone else's SQLite database.
    let other = dir.path().join("other.db");
    rusqlite_exec(&other, "CREATE TABLE t (x); INSERT INTO t VALUES (1);");
    let bytes = std::fs::read(&other).unwrap();
    let e = Archive::open(&other, Limits::default(), Mode::ReadWrite)
        .err()
        .expect("opened");
    assert!(e.to_string().contains("application_id"), "{e}");
    assert_eq!(std::fs::read(&other).unwrap(), bytes);
}

fn rusqlite_exec(path: &Path, sql: &str) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(sql).unwrap();
}

#[test]
fn an_archive_from_a_newer_depot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ovf.db");
    let mut a = open(&path);
    a.record(&record(source(1), 1, &[(1, "a", "<a/>")]))
        .unwrap();
    drop(a);
    rusqlite_exec(&path, "PRAGMA user_version = 2;");
    let bytes = std::fs::read(&path).unwrap();
    let e = Archive::open(&path, Limits::default(), Mode::ReadWrite)
        .err()
        .expect("opened");
    match &e {
        ArchiveError::Newer {
            found, supported, ..
        } => assert_eq!((*found, *supported), (2, 1)),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("newer depot"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn read_only_archive_refuses_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ovf.db");
    open(&path)
        .record(&record(source(1), 1, &[(1, "a", "<a/>")]))
        .unwrap();
    let mut ro = Archive::open(&path, Limits::default(), Mode::ReadOnly).unwrap();
    assert_eq!(ro.list().unwrap().len(), 1);
    let e = ro
        .record(&record(source(1), 2, &[(1, "a", "<b/>")]))
        .unwrap_err();
    assert!(matches!(e, ArchiveError::ReadOnly { .. }), "{e}");
    assert!(Archive::open(
        &dir.path().join("none.db"),
        Limits::default(),
        Mode::ReadOnly
    )
    .is_err());
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const FAST: Backoff = Backoff {
    first: Duration::from_millis(50),
    max: Duration::from_millis(200),
};

/// The archive's directory is missing (an unmounted file system) while
/// records come in: they stay queued, and are recorded, in order, once it
/// is there; a restart in between (a new queue and worker on the same
/// directory) loses none.
#[test]
fn a_missing_directory_catches_up_from_the_queue_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let qdir = dir.path().join("queue");
    let adir = dir.path().join("later");
    let path = adir.join("ovf.db");
    let provider: Arc<dyn Provider> = Arc::new(ArchiveProvider::new(
        path.clone(),
        Limits::default(),
        Mode::ReadWrite,
    ));
    let q = Arc::new(RetryQueue::open(&qdir).unwrap());
    let w = Worker::spawn(q.clone(), provider.clone(), FAST).unwrap();
    for g in 1..=3 {
        q.push(
            "archive",
            &record(source(1), g, &[(1, "web", &format!("<v{g}/>"))]),
        )
        .unwrap();
        w.wake();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(q.pending("archive").unwrap().len(), 3);
    assert!(!path.exists());
    // A restart: the worker goes, a new queue reads the same files.
    drop(w);
    drop(q);
    let q = Arc::new(RetryQueue::open(&qdir).unwrap());
    assert_eq!(q.pending("archive").unwrap().len(), 3);
    q.push("archive", &record(source(1), 4, &[(1, "web", "<v4/>")]))
        .unwrap();
    let _w = Worker::spawn(q.clone(), provider.clone(), FAST).unwrap();
    std::fs::create_dir(&adir).unwrap();
    wait_until("the queue drains", || {
        q.pending("archive").unwrap().is_empty()
    });
    let a = open(&path);
    let gens: Vec<_> = a
        .copies(Uuid::from_u128(1))
        .unwrap()
        .iter()
        .map(|c| c.generation.unwrap())
        .collect();
    assert_eq!(gens, vec![4, 3, 2, 1]);
}

/// Another process (here: another connection) holds the archive locked:
/// the record waits in the queue, and is written once the lock is gone.
#[test]
fn a_locked_archive_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ovf.db");
    drop(open(&path));
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    let provider: Arc<dyn Provider> = Arc::new(ArchiveProvider::new(
        path.clone(),
        Limits::default(),
        Mode::ReadWrite,
    ));
    let e = provider
        .record(&record(source(1), 1, &[(1, "web", "<v1/>")]))
        .unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    assert!(e.to_string().contains("locked"), "{e}");
    let q = Arc::new(RetryQueue::open(&dir.path().join("q")).unwrap());
    q.push("archive", &record(source(1), 1, &[(1, "web", "<v1/>")]))
        .unwrap();
    let w = Worker::spawn(q.clone(), provider, FAST).unwrap();
    w.wake();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(q.pending("archive").unwrap().len(), 1);
    locker.execute_batch("ROLLBACK;").unwrap();
    wait_until("the queue drains", || {
        q.pending("archive").unwrap().is_empty()
    });
    assert_eq!(open(&path).list().unwrap().len(), 1);
}

/// A queue file from a newer depot is left where it is; a damaged one is
/// set aside; neither stops the others.
#[test]
fn queue_files_newer_or_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let qdir = dir.path().join("q");
    let q = Arc::new(RetryQueue::open(&qdir).unwrap());
    let newer = qdir.join("archive").join("0000000000000001.json");
    std::fs::create_dir_all(newer.parent().unwrap()).unwrap();
    std::fs::write(
        &newer,
        r#"{"format":"depot-ovf-backup-queue","version":9,"record":{}}"#,
    )
    .unwrap();
    let bad = qdir.join("archive").join("0000000000000002.json");
    std::fs::write(&bad, "{not json").unwrap();
    let q2 = Arc::new(RetryQueue::open(&qdir).unwrap());
    drop(q);
    q2.push("archive", &record(source(1), 1, &[(1, "web", "<v1/>")]))
        .unwrap();
    let path = dir.path().join("ovf.db");
    let provider: Arc<dyn Provider> = Arc::new(ArchiveProvider::new(
        path.clone(),
        Limits::default(),
        Mode::ReadWrite,
    ));
    let _w = Worker::spawn(q2.clone(), provider, FAST).unwrap();
    // Read-only and tolerant: the worker may be creating the file right
    // now (a half-made archive is refused, never written by this look).
    wait_until("recorded", || {
        Archive::open(&path, Limits::default(), Mode::ReadOnly)
            .and_then(|a| a.list())
            .is_ok_and(|l| l.len() == 1)
    });
    wait_until("the bad file set aside", || !bad.exists());
    assert!(newer.exists());
    assert!(qdir.join("archive/0000000000000002.json.bad").exists());
    assert_eq!(q2.pending("archive").unwrap(), vec![newer]);
}
