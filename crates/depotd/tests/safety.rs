//! Storage safety (issue 12, section 3) end to end over a real daemon:
//! volume data behind a symlink is never opened, long file-domain work
//! holds its image lock until it has really ended, storage mounts get
//! nosuid and nodev, discovery checks CHAP like connect, and a failed
//! checksum says so.

mod common;
mod copy_common;
mod ovf_common;
mod storage_common;
#[path = "../../depot-storage/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use common::Daemon;
use copy_common::{local_domain, random_bytes, wait_failed, write_random, Dom, HEAVY};
use depot_client::Client;
use ovf_common::{engine_tar, get, put, put_ok, Domain, Entity, LoopFs, Via};
use serde_json::json;
use storage_common::*;

/// A checksum job that fails has its own code and message, not the copy's
/// "Volume copy failed".
#[tokio::test]
async fn failed_checksum_says_checksum() {
    let d = Daemon::start(CONFIG);
    let c = d.client().await;
    let dir = tempfile::tempdir().unwrap();
    let dom = local_domain(&c, &d, dir.path()).await;
    let v = dom.new_volume(&c, 8 * MIB, "RAW", "SPARSE").await;
    // The data file is shorter than the volume: it cannot be read whole.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&v.path)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let id = new_id();
    let r = call_ok(
        &c,
        "Volume.getChecksum",
        json!({"job_id": id, "storagedomainID": v.sd, "imageID": v.img, "volumeID": v.vol}),
    )
    .await;
    assert_eq!(r, json!(true));
    let err = wait_failed(&c, &id).await;
    assert_eq!(err["code"], 9016, "{err}");
    let msg = err["message"].as_str().unwrap_or_default();
    assert!(msg.starts_with("Volume checksum failed: "), "{err}");
    assert!(
        !msg.contains("Volume copy") && !msg.contains("during the copy"),
        "{err}"
    );
}

/// `ISCSIConnection.discoverSendTargets` checks the CHAP user and password
/// as `connectStorageServer` does, with the same code (1000), before
/// iscsiadm sees them, and never quotes the password.
#[tokio::test]
async fn discovery_checks_chap_as_connect_does() {
    const SECRET: &str = "s3cr3t-pw";
    let d = Daemon::start(CONFIG);
    let c = d.client().await;
    let long_user = "u".repeat(256);
    let cases: [(Option<&str>, Option<String>); 6] = [
        (Some("a b"), Some(SECRET.into())),
        (Some("-oexec"), Some(SECRET.into())),
        (Some(&long_user), Some(SECRET.into())),
        (
            Some("depot"),
            Some(format!("{SECRET}\nnode.startup=automatic")),
        ),
        (Some("depot"), None),
        (None, Some(SECRET.into())),
    ];
    for (user, password) in cases {
        let what = format!("user {user:?}");
        let mut conn = json!({"id": new_id(), "connection": "127.0.0.1", "port": 3260,
            "iqn": "iqn.2026-11.org.depot:target1"});
        let mut disc = json!({"host": "127.0.0.1", "port": 3260});
        for p in [&mut conn, &mut disc] {
            if let Some(u) = user {
                p["user"] = json!(u);
            }
            if let Some(pw) = &password {
                p["password"] = json!(pw);
            }
        }
        let st = call_ok(
            &c,
            "StoragePool.connectStorageServer",
            connect_params(3, vec![conn]),
        )
        .await;
        assert_eq!(statuses(&st), [1000], "connect, {what}: {st}");
        let msg = call_err(&c, "ISCSIConnection.discoverSendTargets", disc, 1000).await;
        assert!(!msg.contains(SECRET), "{what}: {msg}");
        let field = if user.is_some() && password.is_some() && password != Some(SECRET.into()) {
            "password"
        } else {
            "user"
        };
        assert!(msg.contains(field), "{what}: {msg}");
    }
}

/// A POSIXFS mount the engine asked nothing special for gets nosuid and
/// nodev all the same, as the kernel's mount table shows.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn storage_mounts_get_nosuid_and_nodev() {
    depot_testkit::require_root();
    let fs = LoopFs::new("ext4", 64 * MIB, None);
    let d = Daemon::start(CONFIG);
    let c = d.client().await;
    let conn = ConnectionSpec {
        vfs_type: Some("ext4".into()),
        ..ConnectionSpec::local(std::path::Path::new(&fs.dev))
    };
    let id = new_id();
    let st = call_ok(
        &c,
        "StoragePool.connectStorageServer",
        connect_params(POSIXFS, vec![conn.params(&id)]),
    )
    .await;
    assert_eq!(statuses(&st), [0], "{st}");
    let mp = mount_point(&d, POSIXFS, &fs.dev);
    let at = mounts_at(&mp);
    assert_eq!(at.len(), 1, "{at:?}");
    for o in ["nosuid", "nodev"] {
        assert!(at[0].options.iter().any(|x| x == o), "{o}: {:?}", at[0]);
    }
    disconnect_ok(&c, &d, POSIXFS, &conn, &id).await;
}

// ---------------------------------------------------------------------------
// Volume data behind a symlink
// ---------------------------------------------------------------------------

/// A file outside every domain whose bytes no verb may change.
struct Outside {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Outside {
    fn new(dir: &Path, name: &str, bytes: Vec<u8>) -> Outside {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        Outside { path, bytes }
    }

    fn random(dir: &Path, name: &str, len: usize) -> Outside {
        Outside::new(dir, name, random_bytes(len, 77))
    }

    fn assert_intact(&self, what: &str) {
        let now = std::fs::read(&self.path)
            .unwrap_or_else(|e| panic!("{what}: {}: {e}", self.path.display()));
        assert_eq!(
            now.len(),
            self.bytes.len(),
            "{what}: the outside file's size"
        );
        assert!(
            now == self.bytes,
            "{what}: the outside file's bytes changed"
        );
    }
}

/// Puts a symlink to `target` where the volume's data file is.
fn plant_link(v: &Vol, target: &Path) {
    std::fs::remove_file(&v.path).unwrap();
    std::os::unix::fs::symlink(target, &v.path).unwrap();
}

fn is_link_to(p: &Path, target: &Path) -> bool {
    std::fs::read_link(p).is_ok_and(|t| t == target)
}

/// A daemon with one LOCALFS domain, and a directory outside it.
struct Env {
    d: Daemon,
    c: Client,
    dom: Dom,
    _data: tempfile::TempDir,
    outside: tempfile::TempDir,
}

async fn env() -> Env {
    let d = Daemon::start(CONFIG);
    let c = d.client().await;
    let data = tempfile::tempdir().unwrap();
    let dom = local_domain(&c, &d, data.path()).await;
    Env {
        d,
        c,
        dom,
        _data: data,
        outside: tempfile::tempdir().unwrap(),
    }
}

/// A job that must fail with `code`; its error.
async fn job_fails(c: &Client, method: &str, params: serde_json::Value, code: i64) -> String {
    let id = params["job_id"].as_str().unwrap().to_owned();
    assert_eq!(call_ok(c, method, params).await, json!(true));
    let err = wait_failed(c, &id).await;
    assert_eq!(err["code"], code, "{method}: {err}");
    err["message"].as_str().unwrap_or_default().to_owned()
}

fn copy_params(src: &Vol, dst: &Vol) -> serde_json::Value {
    let end =
        |v: &Vol| json!({"endpoint_type": "div", "sd_id": v.sd, "img_id": v.img, "vol_id": v.vol});
    json!({"job_id": new_id(), "source": end(src), "destination": end(dst)})
}

fn assert_names_link(msg: &str, what: &str) {
    assert!(msg.contains("symbolic link"), "{what}: {msg}");
}

/// An OVF_STORE PUT into a volume whose data is a symlink to a file
/// outside the domain is refused (254) and the file keeps its bytes.
#[tokio::test]
async fn ovf_put_through_a_symlink_is_refused() {
    let d = Daemon::start(CONFIG);
    let data = tempfile::tempdir().unwrap();
    let outside_dir = tempfile::tempdir().unwrap();
    let conn = ConnectionSpec::local(&data.path().canonicalize().unwrap());
    let dom = Domain::create(&d, LOCALFS, conn, 512).await;
    let store = dom.create_store().await;
    let outside = Outside::random(outside_dir.path(), "victim", 8 << 20);
    plant_link(&store, &outside.path);

    let tar = engine_tar(&dom.sd, &[Entity::vm("vm1", &[])], &[]);
    let r = put(&Via::unix(&d), &store.ids(), &tar).await;
    assert_ne!(r.status, 200, "PUT through a symlink: {}", r.show());
    assert_eq!(r.code(), 254, "{}", r.show());
    assert_names_link(&r.message(), "PUT");
    outside.assert_intact("PUT");
    assert!(
        is_link_to(&store.path, &outside.path),
        "the link is left alone"
    );
    assert!(!store.staging().exists(), "no staging file left");
}

/// A store whose data was replaced by a symlink to a (valid) store outside
/// the domain is neither served by GET nor used to restore from.
#[tokio::test]
async fn ovf_get_and_restore_through_a_symlink_are_refused() {
    let d = Daemon::start(CONFIG);
    let data = tempfile::tempdir().unwrap();
    let outside_dir = tempfile::tempdir().unwrap();
    let conn = ConnectionSpec::local(&data.path().canonicalize().unwrap());
    let dom = Domain::create(&d, LOCALFS, conn, 512).await;
    let store = dom.create_store().await;
    let via = Via::unix(&d);
    let tar = engine_tar(&dom.sd, &[Entity::vm("vm1", &[])], &[]);
    put_ok(&via, &store, &tar).await;
    // The same valid store, outside the domain, behind a link.
    let outside = Outside::new(outside_dir.path(), "store", store.bytes());
    plant_link(&store, &outside.path);

    let r = get(&via, &store.ids(), 0, tar.len() as u64 - 1).await;
    assert_ne!(r.status, 206, "GET through a symlink: {}", r.show());
    assert_eq!(r.code(), 254, "{}", r.show());
    assert_names_link(&r.message(), "GET");

    let listed = dom.store(&store).await;
    assert_ne!(listed["state"], "valid", "{listed}");
    let msg = call_err(
        &dom.c,
        "StorageDomain.getOvfEntities",
        json!({"storagedomainID": dom.sd}),
        9006,
    )
    .await;
    assert!(msg.contains(&dom.sd), "{msg}");
    outside.assert_intact("GET and restore");
}

/// SDM.copy_data refuses a source or a destination whose data is a
/// symlink (the native copier and qemu-img alike): 254, the outside file
/// unchanged, and nothing read from it into the domain.
#[tokio::test]
async fn copy_through_a_symlink_is_refused() {
    let _heavy = HEAVY.lock().await;
    let e = env().await;
    let size = 8 * MIB;
    let img = new_id();

    // Source: a link to an outside file full of data.
    let src = e
        .dom
        .create_volume(&e.c, &img, size, "RAW", "SPARSE", None)
        .await;
    let secret = Outside::random(e.outside.path(), "secret", size as usize);
    plant_link(&src, &secret.path);
    let dst = e.dom.new_volume(&e.c, size, "RAW", "SPARSE").await;
    let dst_md = std::fs::read(dst.path.with_file_name(format!("{}.meta", dst.vol))).unwrap();
    let msg = job_fails(&e.c, "SDM.copy_data", copy_params(&src, &dst), 254).await;
    assert_names_link(&msg, "copy from a link");
    assert!(
        std::fs::read(&dst.path).unwrap().iter().all(|&b| b == 0),
        "nothing was copied into the destination"
    );
    assert_eq!(
        std::fs::read(dst.path.with_file_name(format!("{}.meta", dst.vol))).unwrap(),
        dst_md,
        "the destination's metadata is as it was"
    );
    secret.assert_intact("copy from a link");

    // Destination: a link to an outside file, raw to raw (native).
    let good = e.dom.new_volume(&e.c, size, "RAW", "SPARSE").await;
    write_random(&good.path, 0, MIB, 5);
    let victim = Outside::random(e.outside.path(), "victim", size as usize);
    let dst = e.dom.new_volume(&e.c, size, "RAW", "SPARSE").await;
    plant_link(&dst, &victim.path);
    let msg = job_fails(&e.c, "SDM.copy_data", copy_params(&good, &dst), 254).await;
    assert_names_link(&msg, "native copy to a link");
    victim.assert_intact("native copy to a link");

    // Destination of a qemu-img copy (COW source).
    let cow = e.dom.new_volume(&e.c, size, "COW", "SPARSE").await;
    let victim2 = Outside::random(e.outside.path(), "victim2", size as usize);
    let dst = e.dom.new_volume(&e.c, size, "RAW", "SPARSE").await;
    plant_link(&dst, &victim2.path);
    let msg = job_fails(&e.c, "SDM.copy_data", copy_params(&cow, &dst), 254).await;
    assert_names_link(&msg, "qemu-img copy to a link");
    victim2.assert_intact("qemu-img copy to a link");
    drop(e.d);
}

/// Volume.getChecksum does not read through a symlink (it would hash, and
/// so reveal, a file outside the domain).
#[tokio::test]
async fn checksum_through_a_symlink_is_refused() {
    let e = env().await;
    let v = e.dom.new_volume(&e.c, 4 * MIB, "RAW", "SPARSE").await;
    let secret = Outside::random(e.outside.path(), "secret", 4 << 20);
    plant_link(&v, &secret.path);
    let params =
        json!({"job_id": new_id(), "storagedomainID": v.sd, "imageID": v.img, "volumeID": v.vol});
    let msg = job_fails(&e.c, "Volume.getChecksum", params, 254).await;
    assert_names_link(&msg, "checksum");
    secret.assert_intact("checksum");
}

/// A postZero delete (of a volume or a whole image) never wipes or
/// removes what a symlinked image directory or data file leads to.
#[tokio::test]
async fn wipe_through_a_symlink_is_refused() {
    let e = env().await;
    let sd = e.dom.sd.clone();
    let img = new_id();
    let v = e
        .dom
        .create_volume(&e.c, &img, 4 * MIB, "RAW", "PREALLOCATED", None)
        .await;
    write_random(&v.path, 0, 4 * MIB, 9);
    // The image directory moved out of the domain, a link left in its place.
    let image_dir = v.path.parent().unwrap().to_path_buf();
    let moved = e.outside.path().join("image");
    std::fs::rename(&image_dir, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &image_dir).unwrap();
    let data = Outside {
        path: moved.join(&v.vol),
        bytes: std::fs::read(moved.join(&v.vol)).unwrap(),
    };
    let before = snapshot(&moved);

    let mut p = vol_ref(&sd, &img, &v.vol);
    p["postZero"] = json!(true);
    let msg = call_err(&e.c, "Volume.delete", p, 254).await;
    assert_names_link(&msg, "Volume.delete postZero");
    data.assert_intact("Volume.delete postZero");
    let p =
        json!({"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img, "postZero": true});
    let msg = call_err(&e.c, "Image.delete", p, 254).await;
    assert_names_link(&msg, "Image.delete postZero");
    data.assert_intact("Image.delete postZero");
    assert_same_tree(&before, &snapshot(&moved), "the outside directory");
    assert!(is_link_to(&image_dir, &moved));

    // The data file itself a link: refused too, nothing changes.
    let w = e.dom.new_volume(&e.c, 4 * MIB, "RAW", "SPARSE").await;
    let victim = Outside::random(e.outside.path(), "victim", 4 << 20);
    plant_link(&w, &victim.path);
    let meta = std::fs::read(w.path.with_file_name(format!("{}.meta", w.vol))).unwrap();
    let mut p = vol_ref(&sd, &w.img, &w.vol);
    p["postZero"] = json!(true);
    call_err(&e.c, "Volume.delete", p, 254).await;
    victim.assert_intact("Volume.delete postZero of a linked file");
    assert!(is_link_to(&w.path, &victim.path));
    assert_eq!(
        std::fs::read(w.path.with_file_name(format!("{}.meta", w.vol))).unwrap(),
        meta,
        "not even marked ILLEGAL"
    );
}

/// Extending a preallocated volume never allocates or grows a file a
/// symlink leads to.
#[tokio::test]
async fn extend_through_a_symlink_is_refused() {
    let e = env().await;
    let v = e.dom.new_volume(&e.c, 4 * MIB, "RAW", "PREALLOCATED").await;
    let victim = Outside::random(e.outside.path(), "victim", 4 << 20);
    plant_link(&v, &victim.path);
    let mut p = vol_ref(&v.sd, &v.img, &v.vol);
    p["newSize"] = json!((8 * MIB).to_string());
    let msg = call_err(&e.c, "Volume.extendSize", p, 254).await;
    assert_names_link(&msg, "extendSize");
    victim.assert_intact("extendSize");
}

/// Image.prepare never hands out a chain with a volume whose data is a
/// symlink.
#[tokio::test]
async fn prepare_of_a_symlinked_chain_is_refused() {
    let e = env().await;
    let img = new_id();
    let base = e
        .dom
        .create_volume(&e.c, &img, 4 * MIB, "COW", "SPARSE", None)
        .await;
    let leaf = e
        .dom
        .create_volume(&e.c, &img, 4 * MIB, "COW", "SPARSE", Some(&base.vol))
        .await;
    let secret = Outside::random(e.outside.path(), "secret", 4 << 20);
    plant_link(&base, &secret.path);
    let p = json!({"storagepoolID": new_id(), "storagedomainID": e.dom.sd, "imageID": img, "volumeID": leaf.vol});
    let msg = call_err(&e.c, "Image.prepare", p, 254).await;
    assert_names_link(&msg, "prepare");
    assert!(msg.contains(&base.vol), "names the volume: {msg}");
    secret.assert_intact("prepare");
}

// ---------------------------------------------------------------------------
// Long work holds its lock until it has really ended
// ---------------------------------------------------------------------------

/// The daemon's block writes to one device, throttled with the blkio
/// controller (cgroup v1) or the io controller (v2), so that a wipe takes
/// seconds on a tiny volume. Undone on drop.
struct Throttle {
    group: PathBuf,
    root_procs: PathBuf,
    pid: i32,
}

impl Throttle {
    fn new(pid: i32, dev: &str, bytes_per_s: u64) -> Throttle {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(dev).unwrap().rdev();
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        let v1 = Path::new("/sys/fs/cgroup/blkio");
        let v2 = Path::new("/sys/fs/cgroup");
        let name = format!("depot-test-{pid}");
        let (group, root_procs) = if v1.join("blkio.throttle.write_bps_device").exists() {
            let g = v1.join(&name);
            std::fs::create_dir(&g).unwrap();
            std::fs::write(
                g.join("blkio.throttle.write_bps_device"),
                format!("{major}:{minor} {bytes_per_s}"),
            )
            .unwrap();
            (g, v1.join("cgroup.procs"))
        } else if std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "io"))
        {
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+io");
            let g = v2.join(&name);
            std::fs::create_dir(&g).unwrap();
            std::fs::write(
                g.join("io.max"),
                format!("{major}:{minor} wbps={bytes_per_s}"),
            )
            .unwrap();
            (g, v2.join("cgroup.procs"))
        } else {
            panic!("this test needs the blkio (cgroup v1) or io (cgroup v2) controller");
        };
        std::fs::write(group.join("cgroup.procs"), pid.to_string()).unwrap();
        Throttle {
            group,
            root_procs,
            pid,
        }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        // Everything in the group (a daemon started from a throttled test
        // too) goes back to the root group, or the group cannot go.
        let procs = std::fs::read_to_string(self.group.join("cgroup.procs")).unwrap_or_default();
        for pid in procs
            .split_whitespace()
            .chain([self.pid.to_string().as_str()])
        {
            let _ = std::fs::write(&self.root_procs, pid);
        }
        if let Err(e) = std::fs::remove_dir(&self.group) {
            eprintln!("cannot remove {}: {e}", self.group.display());
        }
    }
}

/// A `postZero` delete that takes longer than the I/O timeout (its writes
/// throttled on a loop device) keeps the image lock until the wipe has
/// ended: a second delete and a setDescription meanwhile wait for it and
/// then find no volume; the wipe runs once and the first delete succeeds.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn long_wipe_keeps_its_lock_until_it_ends() {
    depot_testkit::require_root();
    let fs = LoopFs::new("ext4", 256 * MIB, None);
    let d = Daemon::start(
        "[storage]\nio_timeout_s = 3\nlock_timeout_s = 120\nmonitor_interval_s = 0.2\n",
    );
    let c = d.client().await;
    let conn = ConnectionSpec {
        vfs_type: Some("ext4".into()),
        ..ConnectionSpec::local(Path::new(&fs.dev))
    };
    let dom = copy_common::create_domain(&c, &d, POSIXFS, conn).await;
    let v = dom.new_volume(&c, 48 * MIB, "RAW", "PREALLOCATED").await;
    let meta = v.path.with_file_name(format!("{}.meta", v.vol));
    // The wipe takes about 8 s, each of its 8 MiB writes about 1.3 s:
    // longer than the I/O timeout in all, well within it per step.
    let _throttle = Throttle::new(d.pid(), &fs.dev, 6 << 20);

    let mut del = vol_ref(&v.sd, &v.img, &v.vol);
    del["postZero"] = json!(true);
    let first = {
        let (c, p) = (d.client().await, del.clone());
        tokio::spawn(async move { c.call("Volume.delete", p).await })
    };
    // The wipe has begun once the volume is ILLEGAL.
    common::eventually(
        "the first delete marks the volume ILLEGAL",
        common::WAIT,
        || {
            let meta = meta.clone();
            async move {
                (volume_md(&meta).get("LEGALITY").map(String::as_str) == Some("ILLEGAL"))
                    .then_some(())
            }
        },
    )
    .await;
    let second = {
        let (c, p) = (d.client().await, del.clone());
        tokio::spawn(async move { c.call("Volume.delete", p).await })
    };
    let describe = {
        let c = d.client().await;
        let mut p = vol_ref(&v.sd, &v.img, &v.vol);
        p["description"] = json!("changed meanwhile");
        tokio::spawn(async move { c.call("Volume.setDescription", p).await })
    };

    let first = first.await.unwrap();
    for (what, r) in [
        ("second delete", second.await.unwrap()),
        ("setDescription", describe.await.unwrap()),
    ] {
        let e = r.expect_err(what);
        assert!(
            matches!(e.rpc_code(), Some(201 | 851)),
            "{what} while the wipe ran: {e}"
        );
    }
    let wipes = d.log().matches("volume data wiped").count();
    assert_eq!(wipes, 1, "the volume was wiped {wipes} times");
    assert!(first.is_ok(), "the long delete itself succeeds: {first:?}");
    assert!(!exists(&v.path) && !exists(&meta), "the volume is gone");
}

/// Finishing a `postZero` image delete that a crash interrupted (a
/// `_remove_me_ZERO_` directory) is long work too: at start, with the wipe
/// throttled past the I/O timeout, recovery runs to its end once instead
/// of being given up on while it goes on (and started again beside it).
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn long_recovery_wipe_runs_once_to_its_end() {
    depot_testkit::require_root();
    let fs = LoopFs::new("ext4", 256 * MIB, None);
    let mut d = Daemon::start(
        "[storage]\nio_timeout_s = 3\nlock_timeout_s = 120\nmonitor_interval_s = 0.2\n",
    );
    let c = d.client().await;
    let conn = ConnectionSpec {
        vfs_type: Some("ext4".into()),
        ..ConnectionSpec::local(Path::new(&fs.dev))
    };
    let dom = copy_common::create_domain(&c, &d, POSIXFS, conn).await;
    let v = dom.new_volume(&c, 48 * MIB, "RAW", "PREALLOCATED").await;
    drop(c);
    // A crash after the rename of a postZero Image.delete.
    d.crash();
    let image_dir = v.path.parent().unwrap().to_path_buf();
    let removing = image_dir.with_file_name(format!("_remove_me_ZERO_{}", v.img));
    std::fs::rename(&image_dir, &removing).unwrap();
    // The restarted daemon inherits the test's throttled writes.
    let throttle = Throttle::new(std::process::id() as i32, &fs.dev, 6 << 20);
    d.restart();
    common::eventually("the interrupted delete finished", common::WAIT, || {
        let r = removing.clone();
        async move { (!r.exists()).then_some(()) }
    })
    .await;
    let log = d.log();
    assert!(
        !log.contains("crash recovery skipped") && !log.contains("crash recovery did not finish"),
        "recovery was given up on: {log}"
    );
    let wipes = log.matches("volume data wiped").count();
    assert_eq!(wipes, 1, "the volume was wiped {wipes} times");
    drop(d);
    drop(throttle);
}

// ---------------------------------------------------------------------------
// OVF streams: the image lock is not held while waiting on a client
// ---------------------------------------------------------------------------

/// A GET whose client stops reading does not hold the store's image lock:
/// an upload meanwhile commits (before, it waited for the lock until
/// `lock_timeout_s` and failed with 851).
#[tokio::test]
async fn a_stalled_get_does_not_block_an_upload() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Daemon::start("[storage]\nlock_timeout_s = 2\nmonitor_interval_s = 0.2\n");
    let data = tempfile::tempdir().unwrap();
    let conn = ConnectionSpec::local(&data.path().canonicalize().unwrap());
    let dom = Domain::create(&d, LOCALFS, conn, 512).await;
    let store = dom.create_store().await;
    let via = Via::unix(&d);
    // Far more than the socket and the daemon's buffers hold.
    let (tar, _) = ovf_common::big_tar(&dom.sd, 48 << 20, &[]);
    put_ok(&via, &store, &tar).await;

    let mut stalled = via.connect().await;
    let head = ovf_common::get_head(&store.ids(), 0, tar.len() as u64 - 1);
    stalled.write_all(head.as_bytes()).await.unwrap();
    // Some of the body arrives, then this client reads no more.
    let mut first = vec![0u8; 64 << 10];
    stalled.read_exact(&mut first).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;

    let (tar2, _) = ovf_common::big_tar(&dom.sd, 1 << 20, &[]);
    let r = put(&via, &store.ids(), &tar2).await;
    assert_eq!(r.status, 200, "PUT while a GET stalls: {}", r.show());
    assert_eq!(
        ovf_common::get_ok(&via, &store, tar2.len()).await,
        tar2,
        "the new store is served"
    );
    drop(stalled);
}

// ---------------------------------------------------------------------------
// OVF streams on a mount that stops answering
// ---------------------------------------------------------------------------

/// The brick process of the harness's gluster volume, stopped (SIGSTOP)
/// until dropped: the mount's calls hang as on a dead server.
struct StoppedBrick(nix::unistd::Pid);

impl StoppedBrick {
    fn stop(g: &depot_testkit::gluster::Gluster) -> StoppedBrick {
        let xml = g
            .cli(&["volume", "status", g.volume(), "--xml"])
            .expect("volume status");
        let pid: i32 = xml
            .split("<pid>")
            .nth(1)
            .and_then(|rest| rest.split("</pid>").next())
            .and_then(|p| p.trim().parse().ok())
            .filter(|p| *p > 0)
            .unwrap_or_else(|| panic!("no brick pid in {xml}"));
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        StoppedBrick(pid)
    }
}

impl Drop for StoppedBrick {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// An OVF_STORE upload whose GlusterFS mount stops answering mid-body
/// (the brick stopped, the client's ping timeout raised so nothing gives
/// up on its own) is answered with 2002 (a write that got no answer)
/// naming the mount within a few I/O timeouts: the staging file's writes
/// are made by the mount's helpers, not on a thread that then hangs for
/// as long as the server does.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn ovf_upload_on_a_hung_mount_fails_in_time() {
    depot_testkit::require_root();
    use tokio::io::AsyncWriteExt;
    let g = depot_testkit::gluster::Gluster::start().expect("gluster harness");
    g.cli(&["volume", "set", g.volume(), "network.ping-timeout", "600"])
        .unwrap();
    let d = Daemon::start("[storage]\nio_timeout_s = 2\nmonitor_interval_s = 0.2\n");
    let _mounts = UnmountGuard(d.dir.path().to_path_buf());
    let conn = ConnectionSpec {
        connection: g.spec(),
        vfs_type: Some("glusterfs".into()),
        mnt_options: None,
        protocol_version: None,
    };
    let dom = Domain::create(&d, GLUSTERFS, conn, 512).await;
    let store = dom.create_store().await;
    let (tar, _) = ovf_common::big_tar(&dom.sd, 32 << 20, &[]);
    let via = Via::unix(&d);

    let io = via.connect().await;
    let (r, mut w) = tokio::io::split(io);
    let head = ovf_common::put_head(&store.ids(), tar.len() as u64);
    w.write_all(head.as_bytes()).await.unwrap();
    w.write_all(&tar[..4 << 20]).await.unwrap();
    let staging = store.staging();
    common::eventually("the staging file", common::WAIT, || {
        let s = staging.clone();
        async move { s.exists().then_some(()) }
    })
    .await;
    let brick = StoppedBrick::stop(&g);
    let rest = tar[4 << 20..].to_vec();
    let writer = tokio::spawn(async move { w.write_all(&rest).await });
    let t0 = std::time::Instant::now();
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        ovf_common::read_response(r),
    )
    .await
    .expect("an answer while the mount hangs, not a thread stuck with it")
    .expect("a response");
    writer.abort();
    assert_eq!(
        resp.code(),
        2002,
        "{} after {:?}",
        resp.show(),
        t0.elapsed()
    );
    assert!(
        resp.show().contains("mnt/glusterSD/"),
        "names the mount: {}",
        resp.show()
    );
    drop(brick);
}
