//! OVF_STORE end to end over the real daemon (issue 4): the engine's wire
//! (`PUT /` and `GET /` with a Range on the JSON-RPC port, raw HTTP/1.1 on
//! the local socket and over mutual TLS), the restore verbs
//! (`StorageDomain.getOvfStores`, `getOvfEntities`, `getOvfEntity`), bad
//! uploads that must leave the previous store exactly as it was, and
//! crashes (SIGKILL mid-upload, a torn trailer) after which no garbage is
//! served.
//!
//! The 4096-sector xfs round trip needs the root tier (reported as ignored
//! in the others; needs util-linux and xfsprogs).

mod common;
mod ovf_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use common::Daemon;
use depot_storage::ovf::{Trailer, TrailerState};
use ovf_common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use storage_common::*;

// ---------------------------------------------------------------------------
// Round trip
// ---------------------------------------------------------------------------

/// The data disks the OVFs reference, and the entities.
struct Disks {
    tpl: Vol,
    d1: Vol,
    d2: Vol,
    base: Vol,
    snap: Vol,
}

async fn create_disks(dom: &Domain) -> Disks {
    let tpl = dom.create_volume(&new_id(), GIB, "RAW", "DATA", None).await;
    let d1 = dom.create_volume(&new_id(), GIB, "COW", "DATA", None).await;
    let d2 = dom.create_volume(&new_id(), GIB, "COW", "DATA", None).await;
    let img = new_id();
    let base = dom.create_volume(&img, GIB, "COW", "DATA", None).await;
    let snap = dom
        .create_volume(&img, GIB, "COW", "DATA", Some(&base.vol))
        .await;
    Disks {
        tpl,
        d1,
        d2,
        base,
        snap,
    }
}

fn dref(v: &Vol) -> (&str, &str) {
    (v.img.as_str(), v.vol.as_str())
}

/// `{imageID, volumeID, present}` of each disk of an entity.
fn images_json(e: &Entity, present: impl Fn(&str) -> bool) -> Value {
    Value::Array(
        e.disks
            .iter()
            .map(|(i, v)| json!({"imageID": i, "volumeID": v, "present": present(i)}))
            .collect(),
    )
}

/// Checks getOvfEntities against `entities` (in archive order); `present`
/// says which images exist.
fn assert_entities(got: &Value, entities: &[&Entity], present: impl Fn(&str) -> bool) {
    let list = got["entities"].as_array().expect("entities");
    assert_eq!(list.len(), entities.len(), "{got}");
    for e in entities {
        let g = list
            .iter()
            .find(|g| g["id"] == e.id.as_str())
            .unwrap_or_else(|| panic!("{} ({}) not listed: {got}", e.id, e.name));
        assert_eq!(g["name"], e.name.as_str(), "{g}");
        assert_eq!(g["type"], if e.template { "TEMPLATE" } else { "VM" }, "{g}");
        assert_eq!(g["images"], images_json(e, &present), "{g}");
        let complete = e.disks.iter().all(|(i, _)| present(i));
        assert_eq!(g["complete"], complete, "{g}");
    }
    assert_eq!(got["errors"], json!([]), "{got}");
}

/// The volume's raw bytes: the tar at offset 0, zeros up to the
/// alignment, depot's trailer in the last 4 KiB; the size unchanged.
fn assert_on_disk(v: &Vol, tar: &[u8], align: usize) {
    let raw = v.bytes();
    assert_eq!(raw.len() as u64, STORE_SIZE, "the volume keeps its size");
    assert!(raw[..tar.len()] == *tar, "the tar at offset 0");
    let padded = tar.len().div_ceil(align) * align;
    assert!(
        raw[tar.len()..padded].iter().all(|&b| b == 0),
        "the tail is zero-padded to {align}"
    );
    let t = &raw[raw.len() - TRAILER as usize..];
    assert_eq!(&t[..8], b"DEPOTOVF", "the trailer is in the last 4 KiB");
    let decoded = Trailer::decode(t).expect("trailer").expect("magic");
    assert_eq!(decoded.state, TrailerState::Valid);
    assert_eq!(decoded.size, tar.len() as u64);
    assert_eq!(decoded.sha256, <[u8; 32]>::from(Sha256::digest(tar)));
}

/// The whole round trip on one domain. Returns the timings.
async fn round_trip(
    d: &Daemon,
    domain_type: i64,
    conn: ConnectionSpec,
    block_size: u32,
    expect_block: u32,
) -> String {
    let t0 = Instant::now();
    let mut laps = Vec::new();
    let mut last = Instant::now();
    let mut lap = |what: &str| {
        laps.push(format!("{what} {:.0?}", last.elapsed()));
        last = Instant::now();
    };
    let dom = Domain::create(d, domain_type, conn, block_size).await;
    let info = call_ok(
        &dom.c,
        "StorageDomain.getInfo",
        json!({"storagedomainID": dom.sd}),
    )
    .await;
    assert_eq!(info["block_size"], expect_block, "{info}");
    let disks = create_disks(&dom).await;
    // The engine makes two stores per domain; only one is written here.
    let store = dom.create_store().await;
    let other = dom.create_store().await;
    lap("setup");

    let tpl = Entity::template("rhel9-base", &[dref(&disks.tpl)]);
    let vm1 = Entity::vm("web & db <prod>", &[dref(&disks.d1), dref(&disks.d2)]);
    let vm2 = Entity::vm("vm-snap", &[dref(&disks.base), dref(&disks.snap)]);
    let tar = engine_tar(&dom.sd, &[tpl.clone(), vm1.clone(), vm2.clone()], &[]);
    assert_eq!(tar.len() % 512, 0);
    assert_ne!(tar.len() % 4096, 0, "not a multiple of 4096");

    let unix = Via::unix(d);
    let desc = dom.store_description(tar.len());
    dom.set_description(&store, &desc).await;
    let t = Instant::now();
    put_ok(&unix, &store, &tar).await;
    let put_time = t.elapsed();
    lap("PUT");

    // GET with the engine's range: exactly the tar.
    assert!(get_ok(&unix, &store, tar.len()).await == tar);
    // Any other range: exactly those bytes.
    let r = get(&unix, &store.ids(), 513, 4700).await;
    assert_eq!(r.status, 206, "{}", r.show());
    assert!(r.body == tar[513..=4700], "the bytes 513-4700");
    assert_on_disk(&store, &tar, expect_block as usize);
    lap("GET");

    // getOvfStores: both stores, the written one valid.
    let stores = dom.stores().await;
    assert_eq!(stores.len(), 2, "{stores:?}");
    let st = dom.store(&store).await;
    assert_eq!(st["imageID"], store.img.as_str(), "{st}");
    assert_eq!(st["state"], "valid", "{st}");
    assert_eq!(st["valid"], true, "{st}");
    assert_eq!(st["size"], tar.len() as u64, "{st}");
    assert_eq!(st["generation"], 1, "{st}");
    assert_eq!(st["sha256"], sha256_hex(&tar).as_str(), "{st}");
    assert_eq!(st["description"], desc.as_str(), "{st}");
    assert!(st["updated"].as_u64().unwrap() > 1_700_000_000, "{st}");
    let st2 = dom.store(&other).await;
    assert_eq!(
        (st2["state"].as_str(), &st2["valid"]),
        (Some("unknown"), &json!(false)),
        "never written: {st2}"
    );

    // getOvfEntities: every entity, every image present.
    let ents = dom.entities().await;
    assert_eq!(ents["store"]["volumeID"], store.vol.as_str(), "{ents}");
    assert_entities(&ents, &[&tpl, &vm1, &vm2], |_| true);
    // getOvfEntity: the OVF text as uploaded.
    for e in [&tpl, &vm1, &vm2] {
        let g = dom.entity(&e.id).await;
        assert_eq!(g["id"], e.id.as_str());
        assert_eq!(g["name"], e.name.as_str());
        assert_eq!(g["type"], if e.template { "TEMPLATE" } else { "VM" });
        assert_eq!(g["ovf"], e.xml.as_str(), "the OVF of {}", e.name);
    }
    call_err(
        &dom.c,
        "StorageDomain.getOvfEntity",
        json!({"storagedomainID": dom.sd, "entityID": new_id()}),
        9007,
    )
    .await;

    // A disk goes: its VM is incomplete.
    call_ok(
        &dom.c,
        "Image.delete",
        json!({"storagepoolID": BLANK, "storagedomainID": dom.sd, "imageID": disks.d2.img}),
    )
    .await;
    let gone = disks.d2.img.clone();
    let ents = dom.entities().await;
    assert_entities(&ents, &[&tpl, &vm1, &vm2], |i| i != gone);
    let g = ents["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == vm1.id.as_str())
        .unwrap();
    assert_eq!(g["complete"], false, "{g}");
    assert_eq!(g["images"][0]["present"], true, "{g}");
    assert_eq!(g["images"][1]["present"], false, "{g}");
    lap("listing");

    // The engine's next update, over mutual TLS: an unregistered entity
    // after metadata.json; the generation goes to 2.
    let vm3 = Entity::vm("unregistered", &[dref(&disks.d1)]);
    let tar2 = engine_tar(
        &dom.sd,
        &[tpl.clone(), vm1.clone()],
        std::slice::from_ref(&vm3),
    );
    assert_ne!(tar2.len() % 4096, 0);
    assert_ne!(tar2, tar);
    dom.set_description(&store, &dom.store_description(tar2.len()))
        .await;
    let tls = Via::tls(d);
    let t = Instant::now();
    put_ok(&tls, &store, &tar2).await;
    let put2_time = t.elapsed();
    assert!(get_ok(&tls, &store, tar2.len()).await == tar2);
    let st = dom.store(&store).await;
    assert_eq!(st["generation"], 2, "{st}");
    assert_eq!(st["size"], tar2.len() as u64, "{st}");
    assert_eq!(st["sha256"], sha256_hex(&tar2).as_str(), "{st}");
    assert_on_disk(&store, &tar2, expect_block as usize);
    let ents = dom.entities().await;
    assert_entities(&ents, &[&tpl, &vm1, &vm3], |i| i != gone);
    assert_eq!(dom.entity(&vm3.id).await["ovf"], vm3.xml.as_str());
    call_err(
        &dom.c,
        "StorageDomain.getOvfEntity",
        json!({"storagedomainID": dom.sd, "entityID": vm2.id}),
        9007,
    )
    .await;
    lap("PUT over TLS");
    format!(
        "{} tar {} B: PUT {put_time:.0?} (unix), {put2_time:.0?} (TLS); total {:.2?} ({})",
        type_name(domain_type),
        tar.len(),
        t0.elapsed(),
        laps.join(", ")
    )
}

#[tokio::test]
async fn round_trip_localfs() {
    let d = Daemon::start(CONFIG);
    let data = tempfile::tempdir().unwrap();
    let conn = ConnectionSpec::local(&data.path().canonicalize().unwrap());
    let report = round_trip(&d, LOCALFS, conn, 512, 512).await;
    eprintln!("{report}");
}

#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn round_trip_posixfs_xfs_4k_sectors() {
    depot_testkit::require_root();
    // Dropped in reverse: the mounts go before the loop device and the
    // daemon's directory.
    let d = Daemon::start(CONFIG);
    let fs = LoopFs::new("xfs", 512 * MIB, Some(4096));
    let _mounts = UnmountGuard(d.dir.path().to_path_buf());
    let conn = ConnectionSpec {
        connection: fs.dev.clone(),
        vfs_type: Some("xfs".into()),
        mnt_options: Some("noatime,nosuid,nodev".into()),
        protocol_version: None,
    };
    // blockSize 0: detected as 4096.
    let report = round_trip(&d, POSIXFS, conn, 0, 4096).await;
    eprintln!("{report} on {}", fs.dev);
}

// ---------------------------------------------------------------------------
// Bad uploads
// ---------------------------------------------------------------------------

/// A LOCALFS domain with an OVF store holding a good archive.
struct Env {
    d: Daemon,
    _data: tempfile::TempDir,
    dom: Domain,
    store: Vol,
    disk: Vol,
    via: Via,
    good: Vec<u8>,
    seen: Seen,
}

impl Env {
    async fn new() -> Env {
        let d = Daemon::start(CONFIG);
        let data = tempfile::tempdir().unwrap();
        let conn = ConnectionSpec::local(&data.path().canonicalize().unwrap());
        let dom = Domain::create(&d, LOCALFS, conn, 512).await;
        let disk = dom.create_volume(&new_id(), GIB, "COW", "DATA", None).await;
        let store = dom.create_store().await;
        let via = Via::unix(&d);
        let good = engine_tar(
            &dom.sd,
            &[
                Entity::template("tpl", &[dref(&disk)]),
                Entity::vm("vm-1", &[dref(&disk)]),
                Entity::vm("vm-2", &[dref(&disk)]),
            ],
            &[],
        );
        dom.set_description(&store, &dom.store_description(good.len()))
            .await;
        put_ok(&via, &store, &good).await;
        let seen = Seen::take(&dom, &via, &store, &good, 1).await;
        Env {
            d,
            _data: data,
            dom,
            store,
            disk,
            via,
            good,
            seen,
        }
    }

    /// Another good archive (new entity ids).
    fn another_tar(&self, n: usize) -> Vec<u8> {
        let ents: Vec<Entity> = (0..n)
            .map(|i| Entity::vm(&format!("other-{i}"), &[dref(&self.disk)]))
            .collect();
        engine_tar(&self.dom.sd, &ents, &[])
    }

    async fn assert_unchanged(&self, what: &str) {
        wait_idle(&self.via, &self.store).await;
        self.seen
            .assert_same(&self.dom, &self.via, &self.store, what)
            .await;
    }
}

/// An OVF with a DTD defining an external entity (XXE).
const XXE_OVF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE ovf:Envelope [ <!ENTITY xxe SYSTEM "file:///etc/shadow"> ]>
<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>&xxe;</Name></Content></ovf:Envelope>"#;

/// Archives depot must refuse with 400 / 1000, each naming the problem.
#[tokio::test]
async fn bad_archives_leave_the_store_as_it_was() {
    let t0 = Instant::now();
    let e = Env::new().await;
    let sd = e.dom.sd.clone();
    let ovf_name = format!("{}.ovf", new_id());
    let good_xml = ovf_xml(&new_id(), "x", false, &[], 0);

    let mut not_tar = b"This is not a tar archive. ".repeat(400);
    not_tar.resize(8192, b'.');
    let mut xxe = Vec::new();
    {
        let mut b = tar::Builder::new(&mut xxe);
        append(&mut b, "info.json", info_json(&sd).as_bytes());
        append(&mut b, &ovf_name, XXE_OVF.as_bytes());
        append(&mut b, "metadata.json", b"{}");
        b.finish().unwrap();
    }
    let mut garbage = e.good.clone();
    garbage.extend_from_slice(&[b'A'; 512]);
    let mut bad_sum = e.good.clone();
    bad_sum[100] ^= 0x01; // the mode field of the first header

    // (what, body, Content-Length (0: the body's), a word of the message)
    let cases: Vec<(&str, Vec<u8>, u64, &str)> = vec![
        ("not a tar", not_tar, 8192, "not a tar"),
        (
            "bad header checksum",
            bad_sum,
            e.good.len() as u64,
            "checksum",
        ),
        (
            "../x",
            raw_tar(&sd, &[raw_entry("../x", b'0', b"x", "")]),
            0,
            "../x",
        ),
        (
            "absolute name",
            raw_tar(&sd, &[raw_entry("/etc/x", b'0', b"x", "")]),
            0,
            "/etc/x",
        ),
        (
            "nested name",
            raw_tar(&sd, &[raw_entry(&format!("a/{ovf_name}"), b'0', b"x", "")]),
            0,
            "a/",
        ),
        (
            "pax path ../x",
            raw_tar(
                &sd,
                &[
                    pax_entry(&[("path", "../x")]),
                    raw_entry(&ovf_name, b'0', good_xml.as_bytes(), ""),
                ],
            ),
            0,
            "../x",
        ),
        (
            "symlink entry",
            raw_tar(&sd, &[raw_entry(&ovf_name, b'2', b"", "/etc/shadow")]),
            0,
            "link",
        ),
        (
            "hard link entry",
            raw_tar(&sd, &[raw_entry(&ovf_name, b'1', b"", "info.json")]),
            0,
            "link",
        ),
        (
            "char device entry",
            raw_tar(&sd, &[raw_entry(&ovf_name, b'3', b"", "")]),
            0,
            "device",
        ),
        (
            "block device entry",
            raw_tar(&sd, &[raw_entry(&ovf_name, b'4', b"", "")]),
            0,
            "device",
        ),
        (
            "directory entry",
            raw_tar(&sd, &[raw_entry("images", b'5', b"", "")]),
            0,
            "director",
        ),
        (
            "wrong name",
            raw_tar(&sd, &[raw_entry("vm.txt", b'0', b"hello", "")]),
            0,
            "vm.txt",
        ),
        (
            "upper-case uuid",
            raw_tar(
                &sd,
                &[raw_entry(
                    &ovf_name.to_uppercase().replace(".OVF", ".ovf"),
                    b'0',
                    good_xml.as_bytes(),
                    "",
                )],
            ),
            0,
            ".ovf",
        ),
        ("DTD and entity", xxe.clone(), xxe.len() as u64, "DOCTYPE"),
        (
            "garbage after the end blocks",
            garbage.clone(),
            garbage.len() as u64,
            "after",
        ),
        (
            "Content-Length not a multiple of 512",
            e.good[..e.good.len() - 100].to_vec(),
            e.good.len() as u64 - 100,
            "512",
        ),
        ("empty", Vec::new(), 0, "Content-Length"),
    ];
    let n = cases.len();
    for (what, body, cl, word) in cases {
        let cl = if cl == 0 && !body.is_empty() {
            body.len() as u64
        } else {
            cl
        };
        assert_eq!(body.len() as u64, cl, "{what}: test data");
        let r = put_len(&e.via, &e.store.ids(), cl, &body).await;
        r.assert_error(400, 1000, what);
        let msg = r.message();
        assert!(
            msg.to_lowercase().contains(&word.to_lowercase()),
            "{what}: the message names the problem ({word:?}): {msg}"
        );
        e.assert_unchanged(what).await;
    }
    eprintln!("{n} bad archives refused in {:.2?}", t0.elapsed());
}

/// Broken streams: truncated, disconnected, concurrent.
#[tokio::test]
async fn bad_streams_leave_the_store_as_it_was() {
    let t0 = Instant::now();
    let e = Env::new().await;
    let ids = e.store.ids();
    let (next, _) = big_tar(&e.dom.sd, 3 << 20, &[dref(&e.disk)]);
    assert!(next.len() > 2 << 20, "big enough to be held mid-stream");

    // Truncated: fewer bytes than Content-Length, then the client closes
    // its side. An error answer, or a closed connection; nothing written.
    let r = exchange(
        &e.via,
        put_head(&ids, next.len() as u64),
        next[..next.len() - 1536].to_vec(),
        true,
    )
    .await;
    match &r {
        Ok(r) => assert!(r.status >= 400, "truncated: {}", r.show()),
        Err(err) => eprintln!("truncated upload: no answer ({err})"),
    }
    if let Ok(r) = &r {
        eprintln!("truncated upload: {} {}", r.status, r.message());
    }
    e.assert_unchanged("a truncated upload").await;

    // A client that goes away mid-stream.
    let mut up = OpenUpload::start(&e.via, &ids, next.len() as u64).await;
    up.send(&next[..next.len() / 2]).await;
    wait_until("the staging file", WAIT_FS, || e.store.staging().exists());
    drop(up);
    e.assert_unchanged("a client that disconnects mid-stream")
        .await;

    // Two at once: the second is refused with 409 while the first is held
    // mid-stream; another store of the domain is not blocked; the first
    // then completes.
    let other_store = e.dom.create_store().await;
    let mut first = OpenUpload::start(&e.via, &ids, next.len() as u64).await;
    first.send(&next[..next.len() / 2]).await;
    wait_until("the staging file", WAIT_FS, || e.store.staging().exists());
    let staged = std::fs::read(e.store.staging()).unwrap();
    let r = put(&e.via, &ids, &e.another_tar(2)).await;
    r.assert_error(409, 203, "a concurrent upload");
    assert!(r.message().contains("being updated"), "{}", r.message());
    // Over TLS too.
    let r = put(&Via::tls(&e.d), &ids, &e.good).await;
    r.assert_error(409, 203, "a concurrent upload over TLS");
    assert!(
        std::fs::read(e.store.staging())
            .unwrap()
            .starts_with(&staged),
        "the first upload's staging file is left alone"
    );
    assert!(e.store.bytes() == e.seen.volume, "the volume is untouched");
    assert!(
        get_ok(&e.via, &e.store, e.good.len()).await == e.good,
        "reads go on"
    );
    put_ok(&e.via, &other_store, &e.good).await;
    first.send(&next[next.len() / 2..]).await;
    let r = first.finish().await;
    assert_eq!(r.status, 200, "the first upload completes: {}", r.show());
    Seen::take(&e.dom, &e.via, &e.store, &next, 2).await;
    eprintln!("bad streams in {:.2?}", t0.elapsed());
}

const WAIT_FS: Duration = Duration::from_secs(30);

/// The daemon's `depotd fsproc` helpers that map a stream's shared
/// buffer (docs/formats.md, `stream_share`).
fn helpers_sharing_a_buffer(daemon: u32) -> Vec<u32> {
    depot_testkit::process::find_processes(|argv| argv.get(1).is_some_and(|a| a == "fsproc"))
        .into_iter()
        .filter(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            ppid == Some(daemon.to_string().as_str())
        })
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_ok_and(|m| m.contains("memfd:depot-fsproc-stream"))
        })
        .collect()
}

/// An upload's pieces reach depotd's own helpers (`depotd fsproc`, which
/// open the buffer through `/proc/<depotd>/fd`) in the memory a stream
/// shares with its helper, not on the pipe; the upload lands as sent.
#[tokio::test]
async fn an_upload_s_pieces_reach_the_helpers_in_shared_memory() {
    let e = Env::new().await;
    let ids = e.store.ids();
    let (next, _) = big_tar(&e.dom.sd, 3 << 20, &[dref(&e.disk)]);
    let daemon = u32::try_from(e.d.pid()).unwrap();
    assert!(helpers_sharing_a_buffer(daemon).is_empty());
    let mut up = OpenUpload::start(&e.via, &ids, next.len() as u64).await;
    // More than a piece: the first is written while the rest is held.
    up.send(&next[..next.len() / 2]).await;
    wait_until(
        "a helper mapping the stream's shared buffer",
        WAIT_FS,
        || !helpers_sharing_a_buffer(daemon).is_empty(),
    );
    up.send(&next[next.len() / 2..]).await;
    let r = up.finish().await;
    assert_eq!(r.status, 200, "{}", r.show());
    Seen::take(&e.dom, &e.via, &e.store, &next, 2).await;
}

/// Requests aimed at the wrong thing: refused before anything is read or
/// written.
#[tokio::test]
async fn bad_targets_are_refused() {
    let t0 = Instant::now();
    let e = Env::new().await;
    let ids = e.store.ids();

    // Larger than the volume (minus its trailer block): refused at once.
    for cl in [STORE_SIZE - TRAILER + 512, STORE_SIZE, 1 << 40] {
        let r = put_oversized(&e.via, &ids, cl).await;
        assert_eq!(r.code(), 9005, "Content-Length {cl}: {}", r.show());
        assert!(r.status == 413 || r.status == 500, "{}", r.show());
        e.assert_unchanged("Content-Length over the volume").await;
    }

    // A missing or malformed id header.
    for h in [
        "Storage-Pool-Id",
        "Storage-Domain-Id",
        "Image-Id",
        "Volume-Id",
    ] {
        let mut hd = head(
            "PUT",
            &ids,
            Some(h),
            &[("Content-Length", e.good.len().to_string())],
        );
        let r = exchange(&e.via, hd.clone(), e.good.clone(), false)
            .await
            .unwrap();
        r.assert_error(400, 1000, &format!("PUT without {h}"));
        assert!(r.message().contains(h), "{}", r.message());
        hd = head("GET", &ids, Some(h), &[("Range", "bytes=0-511".into())]);
        let r = exchange(&e.via, hd, Vec::new(), false).await.unwrap();
        r.assert_error(400, 1000, &format!("GET without {h}"));
        let mut bad = ids.clone();
        match h {
            "Storage-Pool-Id" => bad.pool = "not-a-uuid".into(),
            "Storage-Domain-Id" => bad.sd = "not-a-uuid".into(),
            "Image-Id" => bad.img = "../../etc".into(),
            _ => bad.vol = "not-a-uuid".into(),
        }
        put(&e.via, &bad, &e.good)
            .await
            .assert_error(400, 1000, &format!("PUT with a bad {h}"));
        e.assert_unchanged(&format!("missing {h}")).await;
    }
    // No Content-Length: 411.
    let hd = head("PUT", &ids, None, &[]);
    let r = exchange(&e.via, hd, Vec::new(), false).await.unwrap();
    r.assert_error(411, 1000, "PUT without Content-Length");

    // Unknown volume, image, domain: 404.
    let mut unknown = ids.clone();
    unknown.vol = new_id();
    put(&e.via, &unknown, &e.good)
        .await
        .assert_error(404, 201, "unknown volume");
    let r = get(&e.via, &unknown, 0, 511).await;
    assert_eq!(r.status, 404, "GET of an unknown volume: {}", r.show());
    let mut unknown = ids.clone();
    unknown.img = new_id();
    let r = put(&e.via, &unknown, &e.good).await;
    assert_eq!(r.status, 404, "unknown image: {}", r.show());
    let mut unknown = ids.clone();
    unknown.sd = new_id();
    let r = put(&e.via, &unknown, &e.good).await;
    assert_eq!(r.status, 404, "unknown domain: {}", r.show());
    e.assert_unchanged("unknown targets").await;

    // A VM's disk (DATA) is never written or served as an OVF store.
    let data = e
        .dom
        .create_volume(&new_id(), 16 * MIB, "RAW", "DATA", None)
        .await;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&data.path)
            .unwrap();
        f.write_all_at(&b"guest data ".repeat(1000), 0).unwrap();
        f.sync_all().unwrap();
    }
    let before = data.bytes();
    let dir_before = snapshot(data.path.parent().unwrap());
    let r = put(&e.via, &data.ids(), &e.good).await;
    r.assert_error(400, 1000, "PUT to a DATA volume");
    assert!(r.message().contains("OVF"), "{}", r.message());
    let r = get(&e.via, &data.ids(), 0, 511).await;
    r.assert_error(400, 1000, "GET of a DATA volume");
    assert!(data.bytes() == before, "the DATA volume is untouched");
    assert_same_tree(
        &dir_before,
        &snapshot(data.path.parent().unwrap()),
        "PUT to a DATA volume",
    );
    // A range past the end of the volume, a range backwards.
    let r = get(&e.via, &ids, STORE_SIZE - 10, STORE_SIZE + 10).await;
    r.assert_error(400, 1000, "a range past the end");
    let r = get(&e.via, &ids, 10, 5).await;
    r.assert_error(416, 1000, "a range backwards");
    e.assert_unchanged("bad targets").await;

    // A COW volume marked OVFS is refused too (then removed: see
    // odd_ovfs_volume_does_not_break_the_listing).
    let cow = e
        .dom
        .create_volume(&new_id(), 128 * MIB, "COW", "OVFS", None)
        .await;
    let before = cow.bytes();
    put(&e.via, &cow.ids(), &e.good)
        .await
        .assert_error(400, 1000, "PUT to a COW OVFS volume");
    assert!(cow.bytes() == before);
    call_ok(
        &e.dom.c,
        "Volume.delete",
        vol_ref(&e.dom.sd, &cow.img, &cow.vol),
    )
    .await;
    e.assert_unchanged("a COW OVFS volume").await;
    eprintln!("bad targets in {:.2?}", t0.elapsed());
}

/// The issue asks for 413 when Content-Length exceeds the volume.
#[tokio::test]
async fn content_length_over_the_volume_is_413() {
    let e = Env::new().await;
    let r = put_oversized(&e.via, &e.store.ids(), STORE_SIZE).await;
    r.assert_error(413, 9005, "Content-Length over the volume");
    e.assert_unchanged("Content-Length over the volume").await;
}

/// One OVFS volume that is not a usable store (a COW volume with DISKTYPE
/// OVFS, a RAW one too small for the trailer) must not hide the domain's
/// good store from the restore verbs.
#[tokio::test]
async fn odd_ovfs_volume_does_not_break_the_listing() {
    let e = Env::new().await;
    let cow = e
        .dom
        .create_volume(&new_id(), 128 * MIB, "COW", "OVFS", None)
        .await;
    let tiny = e
        .dom
        .create_volume(&new_id(), 4096, "RAW", "OVFS", None)
        .await;
    let stores = e.dom.stores().await;
    assert_eq!(stores.len(), 3, "{stores:?}");
    for odd in [&cow, &tiny] {
        let st = e.dom.store(odd).await;
        assert_eq!(st["valid"], false, "{st}");
    }
    let ents = e.dom.entities().await;
    assert_eq!(ents["store"]["volumeID"], e.store.vol.as_str(), "{ents}");
    e.assert_unchanged("odd OVFS volumes").await;
}

/// A refusal the daemon decides before reading the body (here: no such
/// volume) should be answered at once, as HTTP allows, without waiting for
/// the body the client may never send.
#[tokio::test]
async fn early_refusal_does_not_wait_for_the_body() {
    let e = Env::new().await;
    let mut ids = e.store.ids();
    ids.vol = new_id();
    let up = OpenUpload::start(&e.via, &ids, e.good.len() as u64).await;
    let r = tokio::time::timeout(Duration::from_secs(5), up.finish())
        .await
        .expect("an answer within 5 s, before the rest of the body");
    r.assert_error(404, 201, "PUT to an unknown volume");
}

/// docs/formats.md: "a stream that ends early is refused naming the missing
/// byte count" (InvalidParameterException, 400).
#[tokio::test]
async fn truncated_upload_is_a_400_naming_the_missing_bytes() {
    let e = Env::new().await;
    let tar = e.another_tar(3);
    let r = exchange(
        &e.via,
        put_head(&e.store.ids(), tar.len() as u64),
        tar[..tar.len() - 1536].to_vec(),
        true,
    )
    .await
    .expect("an answer");
    r.assert_error(400, 1000, "a truncated upload");
    assert!(r.message().contains("1536"), "{}", r.message());
    e.assert_unchanged("a truncated upload").await;
}

/// A file volume with a second link (as a template's volume is linked into
/// the images of its VMs) cannot be replaced by a rename without breaking
/// the link: it is staged and copied into the same file with O_DIRECT
/// (docs/formats.md, "Upload and commit"), with the same refusals.
#[tokio::test]
async fn a_linked_volume_is_updated_in_place() {
    use std::os::unix::fs::MetadataExt;
    let e = Env::new().await;
    let link = e
        .store
        .path
        .with_file_name(format!("{}.second-link", e.store.vol));
    std::fs::hard_link(&e.store.path, &link).unwrap();
    let ino = std::fs::metadata(&e.store.path).unwrap().ino();
    let seen = Seen::take(&e.dom, &e.via, &e.store, &e.good, 1).await;

    let mut bad = e.another_tar(2);
    bad[100] ^= 0x01;
    put(&e.via, &e.store.ids(), &bad).await.assert_error(
        400,
        1000,
        "a bad upload to a linked volume",
    );
    wait_idle(&e.via, &e.store).await;
    seen.assert_same(&e.dom, &e.via, &e.store, "a bad upload to a linked volume")
        .await;

    let next = e.another_tar(3);
    put_ok(&e.via, &e.store, &next).await;
    assert_eq!(
        std::fs::metadata(&e.store.path).unwrap().ino(),
        ino,
        "written in place"
    );
    assert!(
        std::fs::read(&link).unwrap() == e.store.bytes(),
        "the other link sees the new store"
    );
    Seen::take(&e.dom, &e.via, &e.store, &next, 2).await;
    std::fs::remove_file(&link).unwrap();
}

// ---------------------------------------------------------------------------
// Crashes
// ---------------------------------------------------------------------------

/// What a store shows after a crash: the old content, the new, or torn
/// (and then every GET is refused with 9004). Anything else is garbage.
async fn outcome(dom: &Domain, via: &Via, v: &Vol, old: &[u8], new: &[u8]) -> &'static str {
    let st = dom.store(v).await;
    match st["state"].as_str() {
        Some("valid") => {
            let size = st["size"].as_u64().unwrap() as usize;
            let body = get_ok(via, v, size).await;
            let which = if body == old {
                "old"
            } else if body == new {
                "new"
            } else {
                panic!("a valid store serves neither the old nor the new tar: {st}")
            };
            assert_eq!(st["sha256"], sha256_hex(&body).as_str(), "{st}");
            which
        }
        Some("torn") => {
            assert_eq!(st["valid"], false, "{st}");
            for len in [old.len(), new.len()] {
                let r = get(via, &v.ids(), 0, len as u64 - 1).await;
                assert_ne!(r.status, 206, "a torn store is served: {st}");
                r.assert_error(500, 9004, "GET of a torn store");
            }
            // The domain's only store: nothing to restore from.
            call_err(
                &dom.c,
                "StorageDomain.getOvfEntities",
                json!({"storagedomainID": dom.sd}),
                9006,
            )
            .await;
            "torn"
        }
        _ => panic!("unexpected store state after a crash: {st}"),
    }
}

/// Busy-waits (up to 30 s) until the commit of the upload of `generation`
/// begins: a trailer with that generation appears in the volume (the copy
/// strategy writes its Writing trailer there first) or in the staging file
/// (the replace strategy seals the new file with it, then renames it over
/// the volume). Both paths are opened anew each time: after a rename the
/// path is another file. Says what it saw.
fn watch_trailer(v: &Vol, generation: u64) -> String {
    use std::os::unix::fs::FileExt;
    let mut block = vec![0u8; TRAILER as usize];
    let deadline = Instant::now() + WAIT_FS;
    while Instant::now() < deadline {
        for (path, what) in [
            (v.staging(), "sealed staging file"),
            (v.path.clone(), "volume"),
        ] {
            let Ok(f) = std::fs::File::open(&path) else {
                continue;
            };
            if f.read_exact_at(&mut block, STORE_SIZE - TRAILER).is_err() {
                continue; // not sized yet
            }
            match Trailer::decode(&block) {
                Ok(Some(t)) if t.generation == generation => {
                    return format!("the {} trailer in the {what}", t.state.as_str());
                }
                Err(_) if what == "volume" => return "a torn trailer".into(),
                _ => {}
            }
        }
    }
    panic!("the commit of generation {generation} did not start");
}

/// SIGKILL while an upload streams in: after the restart the previous
/// content is still served; the next upload clears the leftover. Then
/// SIGKILL right after the last byte, at several delays, to land in the
/// validation, the commit or after it: each time the store is the old one
/// or the new one, never garbage (and, the volume being replaced by a
/// rename, never torn).
#[tokio::test]
async fn killed_upload_never_serves_garbage() {
    let t0 = Instant::now();
    let mut d = Daemon::start(CONFIG);
    let data = tempfile::tempdir().unwrap();
    let conn = ConnectionSpec::local(&data.path().canonicalize().unwrap());
    let mut dom = Domain::create(&d, LOCALFS, conn, 512).await;
    let disk_vol = dom.create_volume(&new_id(), GIB, "COW", "DATA", None).await;
    let store = dom.create_store().await;
    let small = engine_tar(
        &dom.sd,
        &[Entity::vm("before-the-crash", &[dref(&disk_vol)])],
        &[],
    );
    put_ok(&Via::unix(&d), &store, &small).await;
    let seen = Seen::take(&dom, &Via::unix(&d), &store, &small, 1).await;
    let (big_a, _) = big_tar(&dom.sd, 16 << 20, &[dref(&disk_vol)]);
    let (big_b, _) = big_tar(&dom.sd, 12 << 20, &[dref(&disk_vol)]);
    assert_ne!(big_a.len() % 4096, 0);
    eprintln!(
        "archives built in {:.2?} ({} and {} bytes)",
        t0.elapsed(),
        big_a.len(),
        big_b.len()
    );

    // Killed mid-stream.
    let mut up = OpenUpload::start(&Via::unix(&d), &store.ids(), big_a.len() as u64).await;
    up.send(&big_a[..big_a.len() / 2]).await;
    wait_until("staging data", WAIT_FS, || {
        std::fs::metadata(store.staging()).is_ok_and(|m| m.len() >= 1 << 20)
    });
    d.crash();
    drop(up);
    d.restart();
    dom.reconnect(&d).await;
    let via = Via::unix(&d);
    let st = dom.store(&store).await;
    assert_eq!(
        (st["valid"].as_bool(), st["generation"].as_u64()),
        (Some(true), Some(1)),
        "{st}"
    );
    assert!(get_ok(&via, &store, small.len()).await == small);
    assert!(store.bytes() == seen.volume, "the volume is untouched");
    let ents = dom.entities().await;
    assert_eq!(ents["entities"][0]["name"], "before-the-crash", "{ents}");
    eprintln!(
        "after the crash mid-stream the staging file is {}",
        if store.staging().exists() {
            "still there (removed by the next upload)"
        } else {
            "gone"
        }
    );
    // A normal upload of the big archive, timed from its last byte to the
    // answer: the span in which validation ends and the commit runs.
    let t = Instant::now();
    let mut up = OpenUpload::start(&via, &store.ids(), big_a.len() as u64).await;
    up.send(&big_a).await;
    let sent = Instant::now();
    let r = up.finish().await;
    assert_eq!(r.status, 200, "{}", r.show());
    let tail = sent.elapsed();
    eprintln!(
        "PUT of {} bytes: {:.2?}, {tail:.2?} of it after the last byte",
        big_a.len(),
        t.elapsed()
    );
    Seen::take(&dom, &via, &store, &big_a, 2).await;

    // Killed after the last byte: at fractions of that span, and (the
    // commit window is only milliseconds) a given time after the daemon's
    // Writing trailer appears in the volume, which a busy loop watches for.
    let mut current = big_a.clone();
    let mut generation = 2;
    let mut outcomes = Vec::new();
    let plan: Vec<(&str, u32)> = [
        ("span", 0),
        ("span", 60),
        ("span", 150),
        ("writing", 0),
        ("writing", 10),
        ("writing", 100),
        ("writing", 400),
    ]
    .into();
    for (trigger, n) in plan {
        let via = Via::unix(&d);
        let next = if current == big_a { &big_b } else { &big_a };
        let mut up = OpenUpload::start(&via, &store.ids(), next.len() as u64).await;
        up.send(next).await;
        let when = if trigger == "span" {
            let delay = tail * n / 100;
            tokio::time::sleep(delay).await;
            format!("{n}% of the span ({delay:.0?})")
        } else {
            let seen = watch_trailer(&store, generation + 1);
            std::thread::sleep(Duration::from_millis(n as u64));
            format!("{n} ms after {seen}")
        };
        d.crash();
        drop(up);
        d.restart();
        dom.reconnect(&d).await;
        let via = Via::unix(&d);
        let o = outcome(&dom, &via, &store, &current, next).await;
        outcomes.push(format!("{when}: {o}"));
        // A LOCALFS volume is a file of its own: uploads replace it with a
        // rename of a complete, durable file, so no crash leaves it torn.
        assert_ne!(o, "torn", "{when}: a replaced file volume is never torn");
        match o {
            "new" => {
                current = next.clone();
                generation += 1;
            }
            "torn" => {
                // The next upload repairs it.
                put_ok(&via, &store, &current).await;
                assert_eq!(outcome(&dom, &via, &store, &current, next).await, "old");
                generation += 2;
            }
            _ => {}
        }
        assert_eq!(dom.store(&store).await["generation"], generation);
    }
    eprintln!(
        "killed uploads:\n  {}\ntotal {:.2?}",
        outcomes.join("\n  "),
        t0.elapsed()
    );
}

/// A crash after the commit began, made by hand: depot's Writing trailer
/// in the last 4 KiB and the first block of the new data at offset 0.
/// After the restart GET refuses the store with 9004, getOvfStores says
/// torn, and the listing uses the other (valid) store; a torn trailer
/// record on that one too leaves no store to restore from (9006). The
/// next upload repairs each.
#[tokio::test]
async fn torn_store_is_reported_after_restart() {
    let t0 = Instant::now();
    let mut d = Daemon::start(CONFIG);
    let data = tempfile::tempdir().unwrap();
    let conn = ConnectionSpec::local(&data.path().canonicalize().unwrap());
    let mut dom = Domain::create(&d, LOCALFS, conn, 512).await;
    let disk_vol = dom.create_volume(&new_id(), GIB, "COW", "DATA", None).await;
    let (a, b) = (dom.create_store().await, dom.create_store().await);
    let vm_a = Entity::vm("in-store-a", &[dref(&disk_vol)]);
    let vm_b = Entity::vm("in-store-b", &[dref(&disk_vol)]);
    let tar_a = engine_tar(&dom.sd, std::slice::from_ref(&vm_a), &[]);
    let tar_b = engine_tar(&dom.sd, std::slice::from_ref(&vm_b), &[]);
    let via = Via::unix(&d);
    put_ok(&via, &a, &tar_a).await;
    put_ok(&via, &b, &tar_b).await;
    // B again, so it is the newest (generation 2).
    put_ok(&via, &b, &tar_b).await;
    assert_eq!(dom.store(&b).await["generation"], 2);
    assert_eq!(dom.entities().await["store"]["volumeID"], b.vol.as_str());

    // The crash: B's commit of a new archive had begun.
    d.crash();
    let tar_b2 = engine_tar(
        &dom.sd,
        &[vm_b.clone(), Entity::vm("new", &[dref(&disk_vol)])],
        &[],
    );
    b.write_trailer_block(
        &Trailer {
            state: TrailerState::Writing,
            generation: 3,
            size: tar_b2.len() as u64,
            sha256: Sha256::digest(&tar_b2).into(),
            updated: 1_715_000_000,
        }
        .encode(),
    );
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&b.path)
            .unwrap();
        f.write_all_at(&tar_b2[..4096], 0).unwrap();
        f.sync_all().unwrap();
    }
    d.restart();
    dom.reconnect(&d).await;
    let via = Via::unix(&d);
    for len in [tar_b.len(), tar_b2.len(), 512] {
        let r = get(&via, &b.ids(), 0, len as u64 - 1).await;
        assert_ne!(r.status, 206, "a torn store is never served");
        r.assert_error(500, 9004, "GET of a torn store");
    }
    let st = dom.store(&b).await;
    assert_eq!(st["state"], "torn", "{st}");
    assert_eq!(st["valid"], false, "{st}");
    assert_eq!(st["size"], Value::Null, "{st}");
    assert!(
        st["reason"]
            .as_str()
            .unwrap_or("")
            .contains("did not finish"),
        "{st}"
    );
    // Restore reads the other store.
    let ents = dom.entities().await;
    assert_eq!(ents["store"]["volumeID"], a.vol.as_str(), "{ents}");
    assert_eq!(ents["entities"][0]["name"], "in-store-a", "{ents}");
    assert_eq!(dom.entity(&vm_a.id).await["ovf"], vm_a.xml.as_str());
    assert!(get_ok(&via, &a, tar_a.len()).await == tar_a);

    // A torn trailer record on A too (a half-written trailer block): no
    // store to restore from.
    d.crash();
    let mut block = a.bytes()[(STORE_SIZE - TRAILER) as usize..].to_vec();
    block[20] ^= 1;
    a.write_trailer_block(&block);
    d.restart();
    dom.reconnect(&d).await;
    let via = Via::unix(&d);
    let r = get(&via, &a.ids(), 0, tar_a.len() as u64 - 1).await;
    r.assert_error(500, 9004, "GET of a store with a torn trailer");
    let st = dom.store(&a).await;
    assert_eq!(st["state"], "torn", "{st}");
    call_err(
        &dom.c,
        "StorageDomain.getOvfEntities",
        json!({"storagedomainID": dom.sd}),
        9006,
    )
    .await;
    call_err(
        &dom.c,
        "StorageDomain.getOvfEntity",
        json!({"storagedomainID": dom.sd, "entityID": vm_a.id}),
        9006,
    )
    .await;

    // The next uploads repair them.
    put_ok(&via, &b, &tar_b2).await;
    Seen::take(&dom, &via, &b, &tar_b2, 4).await;
    put_ok(&via, &a, &tar_a).await;
    let st = dom.store(&a).await;
    assert_eq!(st["valid"], true, "{st}");
    assert!(get_ok(&via, &a, tar_a.len()).await == tar_a);
    eprintln!("torn stores in {:.2?}", t0.elapsed());
}
