//! The end-to-end scenario of a file storage domain, shared by the LOCALFS,
//! POSIXFS and GLUSTERFS tests: every storage verb over a real daemon, with
//! its answer AND its effect on disk checked (files under the mount,
//! metadata bytes and seal, modes), plus the helpers the bad-input and
//! crash tests use (tree snapshots, metadata parsing, qemu-img).
//!
//! A test file uses it with `mod common; mod storage_common;`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use depot_client::Client;
use serde_json::{json, Value};

use crate::common::{eventually, Daemon, WAIT};

pub mod dr_mapping;
pub mod sanlock_hosts;
pub mod sanlock_pool;

pub const NFS: i64 = 1;
pub const LOCALFS: i64 = 4;
pub const POSIXFS: i64 = 6;
pub const GLUSTERFS: i64 = 7;
pub const BLANK: &str = "00000000-0000-0000-0000-000000000000";
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// The daemon configuration of the storage tests: a health check every
/// 0.2 s, so that repoStats reports `actual` quickly.
pub const CONFIG: &str = "[storage]\nmonitor_interval_s = 0.2\n";

/// One engine connection: `{connection, vfs_type?, mnt_options?}`.
#[derive(Debug, Clone)]
pub struct ConnectionSpec {
    pub connection: String,
    pub vfs_type: Option<String>,
    pub mnt_options: Option<String>,
    /// NFS: `protocol_version` (3, 4.2, ...).
    pub protocol_version: Option<String>,
}

impl ConnectionSpec {
    pub fn local(path: &Path) -> ConnectionSpec {
        ConnectionSpec {
            connection: path.to_str().expect("UTF-8 path").to_owned(),
            vfs_type: None,
            mnt_options: None,
            protocol_version: None,
        }
    }

    /// The engine's dict for `connectionParams`.
    pub fn params(&self, id: &str) -> Value {
        let mut v = json!({"id": id, "connection": self.connection});
        if let Some(t) = &self.vfs_type {
            v["vfs_type"] = json!(t);
        }
        if let Some(o) = &self.mnt_options {
            v["mnt_options"] = json!(o);
        }
        if let Some(p) = &self.protocol_version {
            v["protocol_version"] = json!(p);
        }
        v
    }
}

pub fn new_id() -> String {
    depot_api::types::Uuid::new_v4().to_string()
}

pub fn type_name(domain_type: i64) -> &'static str {
    match domain_type {
        NFS => "NFS",
        LOCALFS => "LOCALFS",
        POSIXFS => "POSIXFS",
        GLUSTERFS => "GLUSTERFS",
        other => panic!("no file domain type {other}"),
    }
}

// ---- calls ----

/// The call's result; panics with the call and the error otherwise.
pub async fn call_ok(c: &Client, method: &str, params: Value) -> Value {
    match c.call(method, params.clone()).await {
        Ok(v) => v,
        Err(e) => panic!("{method}({params}) failed: {e}"),
    }
}

/// Asserts the call fails with `code`; returns the error text.
pub async fn call_err(c: &Client, method: &str, params: Value, code: i32) -> String {
    match c.call(method, params.clone()).await {
        Ok(v) => panic!("{method}({params}) returned {v}; expected error {code}"),
        Err(e) => {
            assert_eq!(e.rpc_code(), Some(code), "{method}({params}): {e}");
            e.to_string()
        }
    }
}

/// A verb VDSM runs as a task answers with a task id (a UUID).
fn assert_task_id(v: &Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a task id: {v}"));
    assert!(
        s.parse::<depot_api::types::Uuid>().is_ok(),
        "{what}: {s} is not a UUID"
    );
}

pub fn connect_params(domain_type: i64, list: Vec<Value>) -> Value {
    json!({"storagepoolID": BLANK, "domainType": domain_type, "connectionParams": list})
}

/// The status codes of a connect or disconnect answer, in entry order.
pub fn statuses(answer: &Value) -> Vec<i64> {
    answer
        .as_array()
        .expect("a list of statuses")
        .iter()
        .map(|s| s["status"].as_i64().expect("a numeric status"))
        .collect()
}

pub fn create_domain_params(
    sd: &str,
    domain_type: i64,
    conn: &str,
    name: &str,
    block_size: u32,
) -> Value {
    json!({
        "storagedomainID": sd,
        "domainType": domain_type,
        "typeArgs": conn,
        "name": name,
        "domainClass": 1,
        "version": 5,
        "blockSize": block_size,
    })
}

/// `Volume.create` parameters.
#[allow(clippy::too_many_arguments)]
pub fn volume_params(
    sd: &str,
    img: &str,
    vol: &str,
    size: u64,
    format: &str,
    alloc: &str,
    desc: &str,
    parent: Option<&str>,
) -> Value {
    json!({
        "storagepoolID": BLANK,
        "storagedomainID": sd,
        "imageID": img,
        "volumeID": vol,
        "size": size.to_string(),
        "volFormat": format,
        "preallocate": alloc,
        "diskType": "DATA",
        "desc": desc,
        "srcImgUUID": if parent.is_some() { img } else { BLANK },
        "srcVolUUID": parent.unwrap_or(BLANK),
    })
}

pub fn vol_ref(sd: &str, img: &str, vol: &str) -> Value {
    json!({"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img, "volumeID": vol})
}

pub async fn volume_info(c: &Client, sd: &str, img: &str, vol: &str) -> Value {
    call_ok(c, "Volume.getInfo", vol_ref(sd, img, vol)).await
}

pub async fn list_volumes(c: &Client, sd: &str, img: &str) -> BTreeSet<String> {
    let v = call_ok(
        c,
        "StorageDomain.getVolumes",
        json!({"storagedomainID": sd, "storagepoolID": BLANK, "imageID": img}),
    )
    .await;
    strings(&v)
}

pub async fn list_images(c: &Client, sd: &str) -> BTreeSet<String> {
    strings(&call_ok(c, "StorageDomain.getImages", json!({"storagedomainID": sd})).await)
}

pub fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A decimal-string size of the wire.
pub fn num(v: &Value, what: &str) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: not a decimal string: {v}"))
}

// ---- where things are ----

/// The daemon's repository (canonical, as the daemon uses it).
pub fn repository(d: &Daemon) -> PathBuf {
    d.dev_dir()
        .join("repository")
        .canonicalize()
        .expect("repository")
}

/// VDSM's transformPath.
pub fn transform(spec: &str) -> String {
    spec.replace('_', "__").replace('/', "_")
}

/// Where the connection appears: the mount point, or LOCALFS's link.
pub fn mount_point(d: &Daemon, domain_type: i64, connection: &str) -> PathBuf {
    let mnt = repository(d).join("mnt");
    let base = if domain_type == GLUSTERFS {
        mnt.join("glusterSD")
    } else {
        mnt
    };
    base.join(transform(connection))
}

/// Mount table entries at `target`.
pub fn mounts_at(target: &Path) -> Vec<depot_os::mount::MountEntry> {
    depot_os::mount::read_mountinfo()
        .expect("mountinfo")
        .into_iter()
        .filter(|e| e.target == target)
        .collect()
}

/// One volume of a domain and its data file (for a block domain: the link
/// in the domain's directory). The copy and OVF tests add their own methods.
#[derive(Debug, Clone)]
pub struct Vol {
    pub sd: String,
    pub img: String,
    pub vol: String,
    pub path: PathBuf,
}

impl Vol {
    /// Volume `img/vol` of domain `sd`, whose directory is `dom`.
    pub fn in_domain(sd: &str, dom: &Path, img: &str, vol: &str) -> Vol {
        Vol {
            sd: sd.to_owned(),
            img: img.to_owned(),
            vol: vol.to_owned(),
            path: dom.join("images").join(img).join(vol),
        }
    }
}

/// Disconnects a connection the way the engine does after formatting its
/// domain, and checks that nothing is left mounted at its mount point.
pub async fn disconnect_ok(
    c: &Client,
    d: &Daemon,
    domain_type: i64,
    conn: &ConnectionSpec,
    conn_id: &str,
) {
    let st = call_ok(
        c,
        "StoragePool.disconnectStorageServer",
        connect_params(domain_type, vec![conn.params(conn_id)]),
    )
    .await;
    assert_eq!(
        st,
        json!([{"id": conn_id, "status": 0}]),
        "disconnect {conn:?}"
    );
    let mp = mount_point(d, domain_type, &conn.connection);
    assert!(
        mounts_at(&mp).is_empty(),
        "still mounted at {}",
        mp.display()
    );
}

/// Every mount point of the machine, to see that nothing was mounted.
pub fn all_mount_targets() -> Vec<PathBuf> {
    depot_os::mount::read_mountinfo()
        .expect("mountinfo")
        .into_iter()
        .map(|e| e.target)
        .collect()
}

pub fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

// ---- tree snapshots ----

/// One entry of a snapshot: type, mode, size, and the bytes of small files
/// (every metadata file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        len: u64,
        bytes: Option<Vec<u8>>,
    },
    Link(PathBuf),
}

pub type Tree = BTreeMap<PathBuf, Node>;

/// Files up to this size are snapshotted with their bytes.
const SNAPSHOT_BYTES: u64 = 64 << 10;

/// Every name under `root` (not following symlinks below it), relative.
pub fn snapshot(root: &Path) -> Tree {
    let root = root
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    let mut tree = Tree::new();
    walk(&root, &root, &mut tree);
    tree
}

fn walk(root: &Path, dir: &Path, tree: &mut Tree) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let m = std::fs::symlink_metadata(&p).unwrap();
        let mode = m.permissions().mode() & 0o7777;
        if m.file_type().is_symlink() {
            tree.insert(rel, Node::Link(std::fs::read_link(&p).unwrap()));
        } else if m.is_dir() {
            tree.insert(rel, Node::Dir { mode });
            walk(root, &p, tree);
        } else {
            let bytes = (m.len() <= SNAPSHOT_BYTES).then(|| std::fs::read(&p).unwrap());
            tree.insert(
                rel,
                Node::File {
                    mode,
                    len: m.len(),
                    bytes,
                },
            );
        }
    }
}

/// Asserts two snapshots are equal, naming what differs.
pub fn assert_same_tree(before: &Tree, after: &Tree, what: &str) {
    if before == after {
        return;
    }
    let mut diffs = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => diffs.push(format!("removed {}", k.display())),
            Some(a) if a != v => diffs.push(format!("changed {}: {v:?} -> {a:?}", k.display())),
            Some(_) => {}
        }
    }
    for k in after.keys().filter(|k| !before.contains_key(*k)) {
        diffs.push(format!("added {}", k.display()));
    }
    let shown: Vec<String> = diffs
        .iter()
        .map(|d| d.chars().take(400).collect())
        .collect();
    panic!("{what} changed the disk:\n  {}", shown.join("\n  "));
}

// ---- metadata ----

/// `KEY=value` lines of a domain metadata file (the seal included).
pub fn parse_kv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

pub fn domain_md_path(dom: &Path) -> PathBuf {
    dom.join("dom_md").join("metadata")
}

/// The domain's metadata keys, after checking its seal.
pub fn domain_md(dom: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(domain_md_path(dom)).expect("domain metadata");
    check_seal(&text);
    let mut kv = parse_kv(&text);
    kv.remove("_SHA_CKSUM");
    kv
}

/// Checks the seal as VDSM computes it (docs/formats.md), independently of
/// depot's code: the sorted `key=value` lines, the last line
/// `_SHA_CKSUM=<sha1 of those lines concatenated>`, each line ending in
/// `\n`, non-ASCII characters hashed as `&#<code point>;`.
pub fn check_seal(text: &str) {
    assert!(text.ends_with('\n'), "metadata lacks a final newline");
    let lines: Vec<&str> = text.lines().collect();
    let (last, body) = lines.split_last().expect("empty metadata");
    let seal = last
        .strip_prefix("_SHA_CKSUM=")
        .unwrap_or_else(|| panic!("the last line is not the seal: {text}"));
    let mut sorted = body.to_vec();
    sorted.sort();
    assert_eq!(sorted, body, "metadata lines are not sorted");
    let hashed: String = body
        .iter()
        .flat_map(|l| l.chars())
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                format!("&#{};", c as u32)
            }
        })
        .collect();
    assert_eq!(sha1_hex(hashed.as_bytes()), seal, "broken seal: {text}");
}

/// SHA-1 by the system's sha1sum (coreutils).
pub fn sha1_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha1sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha1sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..40].to_owned()
}

/// A volume's `.meta` record: its keys, checking the V5 shape (13 keys,
/// sorted, `EOF` last, at most 512 bytes).
pub fn volume_md(path: &Path) -> BTreeMap<String, String> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() <= 512,
        "{}: {} bytes",
        path.display(),
        bytes.len()
    );
    let text = String::from_utf8(bytes).expect("UTF-8 record");
    assert!(text.ends_with("EOF\n"), "{}: {text}", path.display());
    let lines: Vec<&str> = text.lines().take_while(|l| *l != "EOF").collect();
    let keys: Vec<&str> = lines.iter().map(|l| l.split('=').next().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "CAP",
            "CTIME",
            "DESCRIPTION",
            "DISKTYPE",
            "DOMAIN",
            "FORMAT",
            "GEN",
            "IMAGE",
            "LEGALITY",
            "PUUID",
            "SEQ",
            "TYPE",
            "VOLTYPE"
        ],
        "{}: {text}",
        path.display()
    );
    parse_kv(&text)
}

/// `qemu-img info --output=json` of an image.
pub fn qemu_img_info(path: &Path) -> Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(path)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img info {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("qemu-img JSON")
}

// ---- the scenario ----

struct Clock {
    start: Instant,
    last: Instant,
    label: String,
    phases: Vec<String>,
}

impl Clock {
    fn new(label: &str) -> Clock {
        let now = Instant::now();
        Clock {
            start: now,
            last: now,
            label: label.to_owned(),
            phases: Vec::new(),
        }
    }

    fn lap(&mut self, phase: &str) {
        let now = Instant::now();
        self.phases
            .push(format!("{phase} {:.0?}", now.duration_since(self.last)));
        self.last = now;
    }

    fn report(&self) {
        eprintln!(
            "{}: scenario in {:.2?} ({})",
            self.label,
            self.start.elapsed(),
            self.phases.join(", ")
        );
    }
}

/// Checks that the connection is there once: LOCALFS's link, or one mount
/// at the mount point with the requested options.
fn assert_connected(domain_type: i64, mp: &Path, conn: &ConnectionSpec) {
    if domain_type == LOCALFS {
        assert_eq!(
            std::fs::read_link(mp).expect("LOCALFS link"),
            Path::new(&conn.connection)
        );
        return;
    }
    let at = mounts_at(mp);
    assert_eq!(at.len(), 1, "one mount at {}: {at:?}", mp.display());
    let e = &at[0];
    if let Some(t) = &conn.vfs_type {
        let shown = if t == "glusterfs" {
            "fuse.glusterfs"
        } else {
            t
        };
        assert_eq!(e.fstype, shown, "{e:?}");
    }
    for o in conn.mnt_options.iter().flat_map(|o| o.split(',')) {
        assert!(
            e.options.iter().any(|x| x == o),
            "option {o} not on the mount: {e:?}"
        );
    }
    // Whatever the engine asked for (docs/storage.md, "Connections").
    for o in ["nosuid", "nodev"] {
        assert!(
            e.options.iter().any(|x| x == o),
            "{o} not on the mount: {e:?}"
        );
    }
}

fn assert_disconnected(domain_type: i64, mp: &Path, conn: &ConnectionSpec) {
    assert!(!exists(mp), "{} still there", mp.display());
    if domain_type != LOCALFS {
        assert!(mounts_at(mp).is_empty(), "{} still mounted", mp.display());
    } else {
        assert!(Path::new(&conn.connection).is_dir(), "the local dir stays");
    }
}

/// Checks a new domain's files: VDSM's layout and sizes, depot's modes
/// (docs/formats.md), and its sealed metadata.
fn check_new_domain_on_disk(
    dom: &Path,
    sd: &str,
    domain_type: i64,
    conn: &str,
    name: &str,
    sanlock: bool,
) -> BTreeMap<String, String> {
    assert!(dom.is_dir(), "{} missing", dom.display());
    let mount = dom.parent().unwrap();
    assert!(
        !exists(&mount.join(format!(".creating-{sd}"))),
        "the work directory was renamed into place"
    );
    let md_dir = dom.join("dom_md");
    assert!(md_dir.is_dir() && dom.join("images").is_dir());
    // With sanlock (`sanlock`: enabled, and its program found, which CI
    // installs), sanlock formats the
    // lockspace (1 × alignment) and the SDM lease at slot 1 (to 2 ×
    // alignment), docs/formats.md "Lockspace and leases", and depot the
    // xleases index (at 1 × alignment, 62 × 4096 bytes: VDSM's size,
    // docs/formats.md "xleases"); else all stay empty as VDSM creates them.
    let (ids, leases, xleases) = if sanlock {
        let alignment: u64 = domain_md(dom)["ALIGNMENT"].parse().unwrap();
        (alignment, 2 * alignment, alignment + 62 * 4096)
    } else {
        (0, 0, 0)
    };
    for (file, size) in [
        ("ids", ids),
        ("leases", leases),
        ("xleases", xleases),
        ("inbox", 16 * MIB),
        ("outbox", 16 * MIB),
    ] {
        let p = md_dir.join(file);
        let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(m.is_file());
        assert_eq!(m.len(), size, "{}", p.display());
    }
    let names: BTreeSet<String> = std::fs::read_dir(&md_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        set(&["ids", "inbox", "leases", "metadata", "outbox", "xleases"]),
        "nothing else in dom_md (no probe file left)"
    );
    assert_eq!(mode(&domain_md_path(dom)), 0o660, "metadata mode");
    assert!(
        std::fs::read_dir(dom.join("images"))
            .unwrap()
            .next()
            .is_none(),
        "no images yet"
    );

    let md = domain_md(dom);
    let expect = [
        ("VERSION", "5"),
        ("SDUUID", sd),
        ("TYPE", type_name(domain_type)),
        ("CLASS", "Data"),
        ("ROLE", "Regular"),
        ("DESCRIPTION", name),
        ("POOL_UUID", ""),
        ("LOCKPOLICY", ""),
        ("LOCKRENEWALINTERVALSEC", "5"),
        ("LEASETIMESEC", "60"),
        ("IOOPTIMEOUTSEC", "10"),
        ("LEASERETRIES", "3"),
        ("REMOTE_PATH", conn),
    ];
    for (k, v) in expect {
        assert_eq!(md.get(k).map(String::as_str), Some(v), "{k} in {md:?}");
    }
    let keys: BTreeSet<&str> = md.keys().map(String::as_str).collect();
    let mut want: BTreeSet<&str> = expect.iter().map(|(k, _)| *k).collect();
    want.extend(["BLOCK_SIZE", "ALIGNMENT"]);
    assert_eq!(
        keys, want,
        "exactly VDSM's keys at creation (no MASTER_VERSION)"
    );
    md
}

/// The documented modes of a new domain's files (docs/formats.md: dom_md
/// 0775, its files 0660).
pub fn check_domain_modes(dom: &Path) {
    let md_dir = dom.join("dom_md");
    let mut wrong = Vec::new();
    if mode(&md_dir) != 0o775 {
        wrong.push(format!("dom_md {:o} (want 775)", mode(&md_dir)));
    }
    for f in ["ids", "leases", "xleases", "inbox", "outbox", "metadata"] {
        let m = mode(&md_dir.join(f));
        if m != 0o660 {
            wrong.push(format!("dom_md/{f} {m:o} (want 660)"));
        }
    }
    assert!(
        wrong.is_empty(),
        "modes of {}: {}",
        dom.display(),
        wrong.join(", ")
    );
}

/// A new volume's files: data, `.meta` and `.lease` 0660, no marker.
fn check_volume_files(dom: &Path, img: &str, vol: &str, sanlock: bool) -> BTreeMap<String, String> {
    let dir = dom.join("images").join(img);
    for name in [
        vol.to_owned(),
        format!("{vol}.meta"),
        format!("{vol}.lease"),
    ] {
        let p = dir.join(&name);
        assert!(p.is_file(), "{} missing", p.display());
        assert_eq!(mode(&p), 0o660, "mode of {}", p.display());
    }
    // With sanlock (enabled, its program found: CI installs it) the
    // domain has a
    // lockspace, and the lease file holds the volume's sanlock resource,
    // one alignment long; else it stays empty (docs/formats.md).
    let lease = dir.join(format!("{vol}.lease"));
    let lease_size = std::fs::metadata(&lease).unwrap().len();
    if sanlock {
        let dmd = domain_md(dom);
        assert_eq!(lease_size, dmd["ALIGNMENT"].parse::<u64>().unwrap());
        let leader = depot_os::sanlock::direct_read_leader(
            &depot_os::sanlock::DirectConfig::default(),
            &dmd["SDUUID"],
            vol,
            true,
            &depot_os::sanlock::Area::new(&lease, 0),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", lease.display()));
        assert_eq!(leader["resource_name"], vol, "{leader:?}");
    } else {
        assert_eq!(lease_size, 0);
    }
    assert!(!exists(&dir.join(format!("{vol}.creating"))), "marker left");
    let md = volume_md(&dir.join(format!("{vol}.meta")));
    assert_eq!(md["IMAGE"], img);
    assert_eq!(md["GEN"], "0");
    assert!(md["CTIME"].parse::<u64>().is_ok(), "{md:?}");
    md
}

/// Runs the whole life of a file domain over the daemon `d` (started with
/// [`CONFIG`]): connect, two domains, a pool, volumes of every kind,
/// prepare, deletes, deactivate/detach/format, disconnect. Asserts every
/// answer and what it did on disk. `expect_block_size`: what blockSize 0
/// must detect, when the storage is known.
pub async fn run_file_domain_scenario(
    d: &Daemon,
    domain_type: i64,
    conn: ConnectionSpec,
    expect_block_size: Option<u32>,
) {
    let mut clock = Clock::new(&format!("{} {}", type_name(domain_type), conn.connection));
    let c = d.client().await;
    let sanlock = formats_with_sanlock(&c).await;
    let repo = repository(d);
    let spec = conn.connection.as_str();

    // ---- connectStorageServer, twice ----
    let conn_id = new_id();
    let cp = connect_params(domain_type, vec![conn.params(&conn_id)]);
    let ok_status = json!([{"id": conn_id, "status": 0}]);
    assert_eq!(
        call_ok(&c, "StoragePool.connectStorageServer", cp.clone()).await,
        ok_status
    );
    let mp = mount_point(d, domain_type, spec);
    assert_connected(domain_type, &mp, &conn);
    assert_eq!(
        call_ok(&c, "StoragePool.connectStorageServer", cp.clone()).await,
        ok_status,
        "connect is idempotent"
    );
    assert_connected(domain_type, &mp, &conn);
    clock.lap("connect");

    // ---- StorageDomain.create, blockSize 0: detected ----
    let sd = new_id();
    let name = "scenario data";
    assert_eq!(
        call_ok(
            &c,
            "StorageDomain.create",
            create_domain_params(&sd, domain_type, spec, name, 0)
        )
        .await,
        json!(true)
    );
    let dom = mp.join(&sd);
    let md = check_new_domain_on_disk(&dom, &sd, domain_type, spec, name, sanlock);
    let block_size: u32 = md["BLOCK_SIZE"].parse().unwrap();
    assert!(block_size == 512 || block_size == 4096, "{md:?}");
    if let Some(want) = expect_block_size {
        assert_eq!(block_size, want, "detected block size");
    }
    // VDSM's default maxHosts is 2000 (sc.HOSTS_512_1M): 1 MiB with 512-byte
    // blocks, 8 MiB with 4 KiB ones (docs/api.md, docs/formats.md).
    let alignment: u64 = if block_size == 512 { MIB } else { 8 * MIB };
    assert_eq!(md["ALIGNMENT"], alignment.to_string(), "{md:?}");
    clock.lap("create");

    // ---- getInfo ----
    let info = call_ok(&c, "StorageDomain.getInfo", json!({"storagedomainID": sd})).await;
    assert_eq!(info["uuid"], sd.as_str());
    assert_eq!(info["name"], name);
    assert_eq!(info["type"], type_name(domain_type));
    assert_eq!(info["class"], "Data");
    assert_eq!(info["role"], "Regular");
    assert_eq!(info["pool"], json!([]));
    assert_eq!(info["version"], "5");
    assert_eq!(info["master_ver"], 0);
    assert_eq!(info["remotePath"], spec);
    assert_eq!(info["block_size"], block_size);
    assert_eq!(info["alignment"], alignment);

    // ---- getStats: decimal strings, the file system's figures ----
    let stats = call_ok(&c, "StorageDomain.getStats", json!({"storagedomainID": sd})).await;
    let total = num(&stats["disktotal"], "disktotal");
    let free = num(&stats["diskfree"], "diskfree");
    let fs = depot_os::fsutil::statvfs(&dom).unwrap();
    assert_eq!(total, fs.total_bytes, "{stats}");
    assert!(free > 0 && free <= total, "{stats}");

    // ---- setDescription: in getInfo and in the sealed file ----
    let before = domain_md(&dom);
    let renamed = "scenario data, renamed";
    assert_eq!(
        call_ok(
            &c,
            "StorageDomain.setDescription",
            json!({"storagedomainID": sd, "description": renamed})
        )
        .await,
        json!(true)
    );
    let after = domain_md(&dom); // seal checked
    assert_eq!(after["DESCRIPTION"], renamed);
    let mut expected = before.clone();
    expected.insert("DESCRIPTION".into(), renamed.into());
    assert_eq!(after, expected, "only DESCRIPTION changed");
    let info = call_ok(&c, "StorageDomain.getInfo", json!({"storagedomainID": sd})).await;
    assert_eq!(info["name"], renamed);

    // ---- validate ----
    assert_eq!(
        call_ok(&c, "StorageDomain.validate", json!({"storagedomainID": sd})).await,
        json!(true)
    );

    // ---- Host.getStorageDomains and its filters ----
    let found = |v: &Value| strings(v).contains(&sd);
    for (filter, want) in [
        (json!({}), true),
        (json!({"domainClass": 1}), true),
        (json!({"domainClass": "Data"}), true),
        (json!({"domainClass": 2}), false),
        (json!({"remotePath": spec}), true),
        (json!({"remotePath": "elsewhere:/not/this"}), false),
        (json!({"storageType": domain_type}), true),
        (
            json!({"storageType": if domain_type == NFS { 4 } else { 1 }}),
            false,
        ),
        (json!({"domainClass": 1, "remotePath": spec}), true),
        (json!({"storagepoolID": new_id()}), false),
    ] {
        let v = call_ok(&c, "Host.getStorageDomains", filter.clone()).await;
        assert_eq!(found(&v), want, "getStorageDomains({filter}) = {v}");
    }
    clock.lap("domain verbs");

    // ---- a second domain, for attach/activate later ----
    let sd2 = new_id();
    assert_eq!(
        call_ok(
            &c,
            "StorageDomain.create",
            create_domain_params(&sd2, domain_type, spec, "scenario second", 0)
        )
        .await,
        json!(true)
    );
    let dom2 = mp.join(&sd2);
    check_new_domain_on_disk(&dom2, &sd2, domain_type, spec, "scenario second", sanlock);
    let v = call_ok(&c, "Host.getStorageDomains", json!({"remotePath": spec})).await;
    assert_eq!(
        strings(&v),
        set(&[&sd, &sd2]),
        "both domains on the connection"
    );

    // ---- StoragePool.create ----
    let sp = new_id();
    call_err(&c, "StoragePool.getInfo", json!({"storagepoolID": sp}), 309).await;
    assert_eq!(
        call_ok(
            &c,
            "StoragePool.create",
            json!({
                "storagepoolID": sp, "name": "scenario pool", "masterSdUUID": sd,
                "masterVersion": 1, "domainList": [sd],
                "lockRenewalIntervalSec": 5, "leaseTimeSec": 60,
                "ioOpTimeoutSec": 10, "leaseRetries": 3,
            })
        )
        .await,
        json!(true)
    );
    let md = domain_md(&dom);
    assert_eq!(md["ROLE"], "Master");
    assert_eq!(md["POOL_UUID"], sp);
    assert_eq!(md["MASTER_VERSION"], "1");
    let v = call_ok(&c, "Host.getStorageDomains", json!({"storagepoolID": sp})).await;
    assert_eq!(strings(&v), set(&[&sd]), "the pool's domains");
    let info = call_ok(&c, "StorageDomain.getInfo", json!({"storagedomainID": sd})).await;
    assert_eq!(info["role"], "Master");
    assert_eq!(info["pool"], json!([sp]));
    assert_eq!(info["master_ver"], 1);

    // ---- StoragePool.connect: a wrong master version changes nothing ----
    let connect_pool = |version: i64| {
        json!({
            "storagepoolID": sp, "hostID": 1, "scsiKey": sp, "masterSdUUID": sd,
            "masterVersion": version, "domainDict": {sd.clone(): "active"},
        })
    };
    let tree = snapshot(&dom);
    call_err(&c, "StoragePool.connect", connect_pool(2), 324).await;
    assert_same_tree(
        &tree,
        &snapshot(&dom),
        "StoragePool.connect with a wrong version",
    );
    call_err(&c, "StoragePool.getInfo", json!({"storagepoolID": sp}), 309).await;
    assert_eq!(
        call_ok(&c, "StoragePool.connect", connect_pool(1)).await,
        json!(true)
    );
    // The volumes below, the attach and detach are the SPM's verbs.
    start_spm(&c, &sp).await;
    let pinfo = call_ok(&c, "StoragePool.getInfo", json!({"storagepoolID": sp})).await;
    assert_eq!(pinfo["info"]["master_uuid"], sd.as_str(), "{pinfo}");
    assert_eq!(pinfo["info"]["master_ver"], 1, "{pinfo}");
    assert_eq!(pinfo["info"]["name"], "scenario pool", "{pinfo}");
    assert_eq!(pinfo["info"]["pool_status"], "connected", "{pinfo}");
    assert_eq!(
        pinfo["info"]["type"],
        type_name(domain_type),
        "the master's type: {pinfo}"
    );
    assert_eq!(pinfo["dominfo"][&sd]["isoprefix"], "", "{pinfo}");
    assert_eq!(
        pinfo["info"]["domains"],
        format!("{sd}:Active").as_str(),
        "{pinfo}"
    );
    assert_eq!(pinfo["dominfo"][&sd]["status"], "Active", "{pinfo}");
    clock.lap("pool");

    // ---- health: repoStats and Host.getStats after a check ----
    let stats = wait_actual(&c, &sd).await;
    assert_eq!(stats["valid"], true, "{stats}");
    assert_eq!(stats["version"], 5, "{stats}");
    assert!(
        stats["lastCheck"]
            .as_str()
            .is_some_and(|s| s.parse::<f64>().is_ok()),
        "{stats}"
    );
    let hs = call_ok(&c, "Host.getStats", json!({})).await;
    let e = &hs["storageDomains"][&sd];
    assert_eq!(e["code"], 0, "{hs}");
    assert_eq!(e["actual"], true, "{hs}");
    assert_eq!(num(&e["disktotal"], "disktotal"), total, "{hs}");
    num(&e["diskfree"], "diskfree");
    let pinfo = call_ok(&c, "StoragePool.getInfo", json!({"storagepoolID": sp})).await;
    assert_eq!(
        num(&pinfo["dominfo"][&sd]["disktotal"], "dominfo disktotal"),
        total,
        "{pinfo}"
    );
    clock.lap("health");

    // ---- volumes ----
    let images = dom.join("images");
    let (img_raw, r1) = (new_id(), new_id());
    let (img_pre, p1) = (new_id(), new_id());
    let (img_cow, c1, c2) = (new_id(), new_id(), new_id());
    let desc = r#"{"DiskAlias":"scenario_Disk1","DiskDescription":""}"#;

    // RAW SPARSE
    let v = call_ok(
        &c,
        "Volume.create",
        volume_params(&sd, &img_raw, &r1, GIB, "RAW", "SPARSE", desc, None),
    )
    .await;
    assert_task_id(&v, "Volume.create");
    let vmd = check_volume_files(&dom, &img_raw, &r1, sanlock);
    for (k, want) in [
        ("CAP", GIB.to_string()),
        ("DESCRIPTION", desc.to_owned()),
        ("DISKTYPE", "DATA".into()),
        ("DOMAIN", sd.clone()),
        ("FORMAT", "RAW".into()),
        ("LEGALITY", "LEGAL".into()),
        ("PUUID", BLANK.into()),
        ("SEQ", "0".into()),
        ("TYPE", "SPARSE".into()),
        ("VOLTYPE", "LEAF".into()),
    ] {
        assert_eq!(vmd[k], want, "{k} in {vmd:?}");
    }
    let data = images.join(&img_raw).join(&r1);
    let m = std::fs::metadata(&data).unwrap();
    assert_eq!(m.len(), GIB, "RAW is the capacity long");
    assert!(m.blocks() * 512 < GIB, "sparse: {} blocks", m.blocks());
    let vi = volume_info(&c, &sd, &img_raw, &r1).await;
    for (k, want) in [
        ("uuid", r1.as_str()),
        ("image", img_raw.as_str()),
        ("domain", sd.as_str()),
        ("parent", BLANK),
        ("format", "RAW"),
        ("voltype", "LEAF"),
        ("allocType", "SPARSE"),
        ("disktype", "DATA"),
        ("description", desc),
        ("legality", "LEGAL"),
        ("status", "OK"),
    ] {
        assert_eq!(vi[k], want, "{k} in {vi}");
    }
    assert_eq!(num(&vi["capacity"], "capacity"), GIB);
    assert_eq!(num(&vi["apparentsize"], "apparentsize"), GIB);
    assert_eq!(num(&vi["truesize"], "truesize"), m.blocks() * 512);
    assert_eq!(vi["children"], json!([]));
    assert_eq!(vi["generation"], 0);
    // No sanlock resource behind the empty .lease file: no lease, as VDSM
    // answers for a volume without one.
    assert!(
        vi.get("lease").is_none(),
        "a lease that does not exist: {vi}"
    );

    // RAW PREALLOCATED
    let v = call_ok(
        &c,
        "Volume.create",
        volume_params(
            &sd,
            &img_pre,
            &p1,
            8 * MIB,
            "RAW",
            "PREALLOCATED",
            "pre",
            None,
        ),
    )
    .await;
    assert_task_id(&v, "Volume.create");
    let vmd = check_volume_files(&dom, &img_pre, &p1, sanlock);
    assert_eq!(vmd["TYPE"], "PREALLOCATED");
    let vi = volume_info(&c, &sd, &img_pre, &p1).await;
    assert_eq!(vi["allocType"], "PREALLOCATED");
    let true_size = num(&vi["truesize"], "truesize");
    assert!(true_size >= 8 * MIB, "preallocated: truesize {true_size}");
    let m = std::fs::metadata(images.join(&img_pre).join(&p1)).unwrap();
    assert!(m.blocks() * 512 >= 8 * MIB && m.len() == 8 * MIB, "{m:?}");

    // COW base, then a COW child: the parent becomes INTERNAL.
    call_ok(
        &c,
        "Volume.create",
        volume_params(&sd, &img_cow, &c1, GIB, "COW", "SPARSE", "base", None),
    )
    .await;
    let vmd = check_volume_files(&dom, &img_cow, &c1, sanlock);
    assert_eq!(
        (vmd["FORMAT"].as_str(), vmd["VOLTYPE"].as_str()),
        ("COW", "LEAF")
    );
    let q = qemu_img_info(&images.join(&img_cow).join(&c1));
    assert_eq!(q["format"], "qcow2", "{q}");
    assert_eq!(q["virtual-size"], GIB, "{q}");
    assert!(q.get("backing-filename").is_none(), "{q}");
    call_ok(
        &c,
        "Volume.create",
        volume_params(&sd, &img_cow, &c2, GIB, "COW", "SPARSE", "layer", Some(&c1)),
    )
    .await;
    let vmd = check_volume_files(&dom, &img_cow, &c2, sanlock);
    assert_eq!(vmd["PUUID"], c1);
    assert_eq!(
        volume_md(&images.join(&img_cow).join(format!("{c1}.meta")))["VOLTYPE"],
        "INTERNAL"
    );
    let q = qemu_img_info(&images.join(&img_cow).join(&c2));
    assert_eq!(q["format"], "qcow2", "{q}");
    assert_eq!(
        q["backing-filename"],
        c1.as_str(),
        "relative backing file: {q}"
    );
    assert_eq!(q["backing-filename-format"], "qcow2", "{q}");
    let vi1 = volume_info(&c, &sd, &img_cow, &c1).await;
    assert_eq!(vi1["voltype"], "INTERNAL", "{vi1}");
    assert_eq!(vi1["children"], json!([c2]), "{vi1}");
    let vi2 = volume_info(&c, &sd, &img_cow, &c2).await;
    assert_eq!(vi2["parent"], c1.as_str(), "{vi2}");
    assert_eq!(vi2["voltype"], "LEAF", "{vi2}");
    assert_eq!(vi2["format"], "COW", "{vi2}");
    clock.lap("create volumes");

    // ---- listings ----
    assert_eq!(list_volumes(&c, &sd, &img_raw).await, set(&[&r1]));
    assert_eq!(list_volumes(&c, &sd, &img_cow).await, set(&[&c1, &c2]));
    assert_eq!(
        list_volumes(&c, &sd, BLANK).await,
        set(&[&r1, &p1, &c1, &c2]),
        "the blank image lists the whole domain"
    );
    assert_eq!(list_volumes(&c, &sd2, BLANK).await, set(&[]));
    assert_eq!(
        list_images(&c, &sd).await,
        set(&[&img_raw, &img_pre, &img_cow])
    );

    // ---- getSize ----
    let sz = call_ok(&c, "Volume.getSize", vol_ref(&sd, &img_raw, &r1)).await;
    let m = std::fs::metadata(&data).unwrap();
    assert_eq!(num(&sz["apparentsize"], "apparentsize"), m.len(), "{sz}");
    assert_eq!(num(&sz["truesize"], "truesize"), m.blocks() * 512, "{sz}");

    // ---- Volume.setDescription: 210 bytes fit, 211 do not ----
    let meta_r1 = images.join(&img_raw).join(format!("{r1}.meta"));
    let long = "d".repeat(210);
    let mut p = vol_ref(&sd, &img_raw, &r1);
    p["description"] = json!(long);
    assert_eq!(
        call_ok(&c, "Volume.setDescription", p.clone()).await,
        json!(true)
    );
    assert_eq!(volume_md(&meta_r1)["DESCRIPTION"], long);
    assert_eq!(
        volume_info(&c, &sd, &img_raw, &r1).await["description"],
        long.as_str()
    );
    let bytes = std::fs::read(&meta_r1).unwrap();
    p["description"] = json!("d".repeat(211));
    call_err(&c, "Volume.setDescription", p, 753).await;
    assert_eq!(
        std::fs::read(&meta_r1).unwrap(),
        bytes,
        "211 bytes refused, record unchanged"
    );

    // ---- setLegality: ILLEGAL cannot be prepared (unless allowIllegal) ----
    let mut p = vol_ref(&sd, &img_raw, &r1);
    p["legality"] = json!("ILLEGAL");
    assert_eq!(
        call_ok(&c, "Volume.setLegality", p.clone()).await,
        json!(true)
    );
    assert_eq!(volume_md(&meta_r1)["LEGALITY"], "ILLEGAL");
    let vi = volume_info(&c, &sd, &img_raw, &r1).await;
    assert_eq!(
        (vi["legality"].as_str(), vi["status"].as_str()),
        (Some("ILLEGAL"), Some("ILLEGAL"))
    );
    let prep = |img: &str, vol: &str| json!({"storagepoolID": sp, "storagedomainID": sd, "imageID": img, "volumeID": vol});
    call_err(&c, "Image.prepare", prep(&img_raw, &r1), 227).await;
    let mut pi = prep(&img_raw, &r1);
    pi["allowIllegal"] = json!(true);
    call_ok(&c, "Image.prepare", pi).await;
    call_ok(&c, "Image.teardown", prep(&img_raw, &r1)).await;
    p["legality"] = json!("LEGAL");
    assert_eq!(call_ok(&c, "Volume.setLegality", p).await, json!(true));
    assert_eq!(volume_md(&meta_r1)["LEGALITY"], "LEGAL");

    // ---- extendSize: RAW and COW grow; shrinking is 232 and changes nothing ----
    let extend = |img: &str, vol: &str, size: u64| {
        let mut p = vol_ref(&sd, img, vol);
        p["newSize"] = json!(size.to_string());
        p
    };
    assert_task_id(
        &call_ok(&c, "Volume.extendSize", extend(&img_raw, &r1, 2 * GIB)).await,
        "extendSize",
    );
    assert_eq!(std::fs::metadata(&data).unwrap().len(), 2 * GIB);
    assert_eq!(volume_md(&meta_r1)["CAP"], (2 * GIB).to_string());
    assert_eq!(
        num(
            &volume_info(&c, &sd, &img_raw, &r1).await["capacity"],
            "capacity"
        ),
        2 * GIB
    );
    let tree = snapshot(&images);
    call_err(&c, "Volume.extendSize", extend(&img_raw, &r1, GIB), 232).await;
    call_err(&c, "Volume.extendSize", extend(&img_cow, &c2, GIB / 2), 232).await;
    assert_same_tree(&tree, &snapshot(&images), "a refused shrink");
    call_ok(&c, "Volume.extendSize", extend(&img_cow, &c2, 2 * GIB)).await;
    let q = qemu_img_info(&images.join(&img_cow).join(&c2));
    assert_eq!(q["virtual-size"], 2 * GIB, "{q}");
    assert_eq!(
        volume_md(&images.join(&img_cow).join(format!("{c2}.meta")))["CAP"],
        (2 * GIB).to_string()
    );
    call_ok(&c, "Volume.extendSize", extend(&img_pre, &p1, 16 * MIB)).await;
    let vi = volume_info(&c, &sd, &img_pre, &p1).await;
    assert_eq!(num(&vi["capacity"], "capacity"), 16 * MIB);
    assert!(
        num(&vi["truesize"], "truesize") >= 16 * MIB,
        "still preallocated: {vi}"
    );
    clock.lap("volume verbs");

    // ---- Image.prepare: the path through the run link is the volume ----
    let prepared = call_ok(&c, "Image.prepare", prep(&img_cow, &c2)).await;
    let link = repo.join(&sp).join(&sd);
    let want_path = link.join("images").join(&img_cow).join(&c2);
    assert_eq!(prepared["path"], want_path.to_str().unwrap(), "{prepared}");
    assert_eq!(prepared["info"]["type"], "file", "{prepared}");
    assert_eq!(prepared["info"]["path"], prepared["path"]);
    assert_eq!(
        std::fs::canonicalize(std::fs::read_link(&link).expect("run link")).unwrap(),
        dom.canonicalize().unwrap(),
        "the run link points at the domain"
    );
    let through = std::fs::metadata(&want_path).expect("the prepared path exists");
    let real = std::fs::metadata(images.join(&img_cow).join(&c2)).unwrap();
    assert_eq!(
        (through.dev(), through.ino()),
        (real.dev(), real.ino()),
        "the right file"
    );
    let chain: Vec<&str> = prepared["imgVolumesInfo"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["volumeID"].as_str().unwrap())
        .collect();
    assert_eq!(
        chain,
        [c1.as_str(), c2.as_str()],
        "base to leaf: {prepared}"
    );
    for v in prepared["imgVolumesInfo"].as_array().unwrap() {
        assert!(Path::new(v["path"].as_str().unwrap()).is_file(), "{v}");
    }
    // A prepared image's volume is busy.
    let tree = snapshot(&images);
    call_err(&c, "Volume.delete", vol_ref(&sd, &img_cow, &c2), 203).await;
    assert_same_tree(&tree, &snapshot(&images), "deleting a prepared volume");
    assert_eq!(
        call_ok(&c, "Image.teardown", prep(&img_cow, &c2)).await,
        json!(true)
    );
    clock.lap("prepare");

    // ---- Volume.delete with postZero: the leaf goes, the parent is a leaf again ----
    let mut p = vol_ref(&sd, &img_cow, &c2);
    p["postZero"] = json!(true);
    assert_task_id(&call_ok(&c, "Volume.delete", p).await, "Volume.delete");
    for name in [c2.clone(), format!("{c2}.meta"), format!("{c2}.lease")] {
        assert!(!exists(&images.join(&img_cow).join(name)));
    }
    assert_eq!(
        volume_md(&images.join(&img_cow).join(format!("{c1}.meta")))["VOLTYPE"],
        "LEAF"
    );
    let vi1 = volume_info(&c, &sd, &img_cow, &c1).await;
    assert_eq!(
        (vi1["voltype"].as_str(), &vi1["children"]),
        (Some("LEAF"), &json!([]))
    );
    call_err(&c, "Volume.getInfo", vol_ref(&sd, &img_cow, &c2), 201).await;
    // The last volume of an image: the image directory goes too.
    call_ok(&c, "Volume.delete", vol_ref(&sd, &img_raw, &r1)).await;
    assert!(
        !exists(&images.join(&img_raw)),
        "empty image directory removed"
    );

    // ---- Image.delete with postZero ----
    let del_img = json!({"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img_cow, "postZero": true});
    assert_task_id(
        &call_ok(&c, "Image.delete", del_img.clone()).await,
        "Image.delete",
    );
    let left: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec![img_pre.clone()],
        "only the preallocated image is left"
    );
    call_err(&c, "Image.delete", del_img, 268).await;
    assert_eq!(list_images(&c, &sd).await, set(&[&img_pre]));
    assert_eq!(list_volumes(&c, &sd, BLANK).await, set(&[&p1]));
    clock.lap("deletes");

    // ---- the second domain: attach, activate ----
    let dom_op = |sd_: &str| json!({"storagedomainID": sd_, "storagepoolID": sp, "masterSdUUID": sd, "masterVersion": 1});
    assert_eq!(
        call_ok(&c, "StorageDomain.attach", dom_op(&sd2)).await,
        json!(true)
    );
    let md2 = domain_md(&dom2);
    assert_eq!(
        (md2["POOL_UUID"].as_str(), md2["ROLE"].as_str()),
        (sp.as_str(), "Regular")
    );
    assert_eq!(
        call_ok(&c, "StorageDomain.activate", dom_op(&sd2)).await,
        json!(true)
    );
    let pinfo = call_ok(&c, "StoragePool.getInfo", json!({"storagepoolID": sp})).await;
    assert_eq!(pinfo["dominfo"][&sd2]["status"], "Active", "{pinfo}");
    wait_actual(&c, &sd2).await;

    // ---- disconnect refused while domains on it are active ----
    let tree = snapshot(&mp);
    assert_eq!(
        call_ok(&c, "StoragePool.disconnectStorageServer", cp.clone()).await,
        json!([{"id": conn_id, "status": 452}])
    );
    assert_connected(domain_type, &mp, &conn);
    assert_same_tree(&tree, &snapshot(&mp), "a refused disconnect");

    // ---- deactivate and detach the second; the master cannot be detached ----
    assert_eq!(
        call_ok(&c, "StorageDomain.deactivate", dom_op(&sd2)).await,
        json!(true)
    );
    let pinfo = call_ok(&c, "StoragePool.getInfo", json!({"storagepoolID": sp})).await;
    assert_eq!(pinfo["dominfo"][&sd2]["status"], "Attached", "{pinfo}");
    assert_eq!(
        call_ok(&c, "StorageDomain.detach", dom_op(&sd2)).await,
        json!(true)
    );
    let md2 = domain_md(&dom2);
    assert_eq!(
        (md2["POOL_UUID"].as_str(), md2["ROLE"].as_str()),
        ("", "Regular")
    );
    let pinfo = call_ok(&c, "StoragePool.getInfo", json!({"storagepoolID": sp})).await;
    assert!(pinfo["dominfo"].get(&sd2).is_none(), "{pinfo}");

    assert_eq!(
        call_ok(&c, "StorageDomain.deactivate", dom_op(&sd)).await,
        json!(true)
    );
    let tree = snapshot(&dom);
    call_err(&c, "StorageDomain.detach", dom_op(&sd), 383).await;
    assert_same_tree(&tree, &snapshot(&dom), "detaching the master");
    clock.lap("attach/detach");

    // ---- format: refused while attached unless autoDetach ----
    assert_eq!(
        call_ok(&c, "StorageDomain.format", json!({"storagedomainID": sd2})).await,
        json!(true)
    );
    assert!(!exists(&dom2), "formatted");
    let tree = snapshot(&mp);
    call_err(
        &c,
        "StorageDomain.format",
        json!({"storagedomainID": sd}),
        350,
    )
    .await;
    assert_same_tree(&tree, &snapshot(&mp), "formatting an attached domain");
    assert_eq!(
        call_ok(
            &c,
            "StorageDomain.format",
            json!({"storagedomainID": sd, "autoDetach": true})
        )
        .await,
        json!(true)
    );
    assert!(!exists(&dom), "formatted");
    let left: Vec<_> = std::fs::read_dir(&mp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.ends_with("lost+found"))
        .collect();
    assert!(left.is_empty(), "nothing left on the storage: {left:?}");
    call_err(
        &c,
        "StorageDomain.getInfo",
        json!({"storagedomainID": sd}),
        358,
    )
    .await;
    let v = call_ok(&c, "Host.getStorageDomains", json!({})).await;
    assert!(!found(&v) && !strings(&v).contains(&sd2), "{v}");
    assert_eq!(
        call_ok(
            &c,
            "StoragePool.disconnect",
            json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp})
        )
        .await,
        json!(true)
    );
    clock.lap("format");

    // ---- disconnectStorageServer, twice ----
    assert_eq!(
        call_ok(&c, "StoragePool.disconnectStorageServer", cp.clone()).await,
        ok_status
    );
    assert_disconnected(domain_type, &mp, &conn);
    assert_eq!(
        call_ok(&c, "StoragePool.disconnectStorageServer", cp).await,
        ok_status,
        "disconnect is idempotent"
    );
    assert_disconnected(domain_type, &mp, &conn);
    clock.lap("disconnect");
    clock.report();
}

/// Waits for the monitor's first check of `sd`: code 0, actual true.
pub async fn wait_actual(c: &Client, sd: &str) -> Value {
    eventually(&format!("repoStats of {sd} actual"), WAIT, || async {
        let all = call_ok(c, "Host.getStorageRepoStats", json!({"domains": [sd]})).await;
        all.get(sd)
            .filter(|e| e["actual"] == true && e["code"] == 0)
            .cloned()
    })
    .await
}

/// Lazily unmounts, on drop, every mount under a directory: a failed test
/// must not leave mounts in the daemon's temporary directory (whose removal
/// would then descend into them). Declare it after the daemon, so it drops
/// first.
pub struct UnmountGuard(pub PathBuf);

impl Drop for UnmountGuard {
    fn drop(&mut self) {
        let Ok(dir) = self.0.canonicalize() else {
            return;
        };
        let Ok(table) = depot_os::mount::read_mountinfo() else {
            return;
        };
        for e in table.iter().rev().filter(|e| e.target.starts_with(&dir)) {
            eprintln!("unmounting leftover {}", e.target.display());
            let _ = Command::new("umount")
                .arg("-l")
                .arg("--")
                .arg(&e.target)
                .status();
        }
    }
}

/// Polls a condition on the file system.
pub fn wait_until(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A directory holding one executable fence agent, `fence_<name>`, with
/// `script` as its text (for `[fencing] agents_dir`).
pub fn fence_agents(name: &str, script: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join(format!("fence_{name}"));
    std::fs::write(&agent, script).unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

// ---- the SPM ----

/// `StoragePool.spmStart`'s parameters for pool `sp`.
pub fn spm_start_params(sp: &str) -> Value {
    json!({"storagepoolID": sp, "prevID": -1, "prevLver": "-1", "enableScsiFencing": "false"})
}

/// Makes this host the SPM of pool `sp`, connected here: spmStart, then
/// its task waited for (`timeout`: the host id's acquisition first under
/// sanlock, at once without it); panics unless it succeeded. The verbs
/// VDSM keeps for the SPM need it on a pool's domains (docs/storage.md
/// "Verbs only the SPM runs").
pub async fn start_spm_within(c: &Client, sp: &str, timeout: Duration) {
    let end = spm_start_task(c, sp, timeout).await;
    assert_eq!(end["taskResult"], "success", "spmStart of {sp}: {end}");
}

/// spmStart of pool `sp`, its task waited for (`timeout`): the task's
/// last `Task.getStatus` (`taskResult` success or cleanFailure, `code`).
pub async fn spm_start_task(c: &Client, sp: &str, timeout: Duration) -> Value {
    let task = call_ok(c, "StoragePool.spmStart", spm_start_params(sp)).await;
    let id = task
        .as_str()
        .expect("spmStart answers a task id")
        .to_owned();
    eventually("spmStart's task to end", timeout, || {
        let id = id.clone();
        async move {
            let s = c.call("Task.getStatus", json!({"taskID": id})).await.ok()?;
            (s["taskState"] == "finished").then_some(s)
        }
    })
    .await
}

/// [`start_spm_within`] on a depotd without sanlock (the tests' default,
/// as `--dev`'s): the local role, at once.
pub async fn start_spm(c: &Client, sp: &str) {
    start_spm_within(c, sp, WAIT).await
}

/// Whether depotd `c` formats new domains' lockspaces and volume leases
/// with sanlock: enabled in its config (`--dev` leaves it off unless the
/// config says so), and the `sanlock` program found.
pub async fn formats_with_sanlock(c: &Client) -> bool {
    let caps = call_ok(c, "Host.getCapabilities", json!({})).await;
    let disabled = caps["sanlock"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("sanlock.enabled = false"));
    !disabled && depot_os::sanlock::program_found(Path::new("sanlock"))
}
