//! Helpers of the disk copy and move tests (`tests/copy.rs`): file domains
//! (LOCALFS on a temporary directory, POSIXFS on a loop device, GLUSTERFS
//! through depot-storage's harness), volumes with data written by the
//! test, the host-job verbs (SDM.copy_data, Image.move, Volume.getChecksum,
//! Host.getJobs, Host.abortJob), and independent checks: a blkhash written
//! in Python with hashlib, `qemu-img compare`, byte comparisons and the
//! `.meta` records read from disk.
//!
//! A test file uses it with
//! `mod common; mod storage_common; mod support; mod copy_common;`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use depot_client::Client;
use serde_json::{json, Value};

use crate::common::Daemon;
use crate::storage_common::*;

/// How long a copy job may take on this shared, slow machine (the daemon
/// under test is a debug build).
pub const JOB_WAIT: Duration = Duration::from_secs(300);

/// The copy tests move hundreds of MiB each; run them one at a time so
/// that the timing assertions (abort within 2 s) hold on two CPUs.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// Domains and volumes
// ---------------------------------------------------------------------------

/// A connected file domain.
#[derive(Debug, Clone)]
pub struct Dom {
    pub domain_type: i64,
    pub conn: ConnectionSpec,
    pub conn_id: String,
    pub sd: String,
    /// `<mount point>/<sd>`.
    pub dom: PathBuf,
}

impl Vol {
    pub fn meta(&self) -> PathBuf {
        self.path.with_file_name(format!("{}.meta", self.vol))
    }

    /// The `.meta` record's keys, as on disk.
    pub fn md(&self) -> BTreeMap<String, String> {
        volume_md(&self.meta())
    }

    /// `{endpoint_type: "div", ...}` of SDM.copy_data.
    pub fn endpoint(&self, generation: Option<u32>) -> Value {
        let mut e = json!({"endpoint_type": "div", "sd_id": self.sd, "img_id": self.img, "vol_id": self.vol});
        if let Some(g) = generation {
            e["generation"] = json!(g);
        }
        e
    }

    pub fn size(&self) -> u64 {
        std::fs::metadata(&self.path).unwrap().len()
    }

    /// Bytes allocated on disk (st_blocks * 512).
    pub fn allocated(&self) -> u64 {
        allocated(&self.path)
    }
}

/// Connects `conn` and creates a data domain on it (blockSize 0: detected).
pub async fn create_domain(c: &Client, d: &Daemon, domain_type: i64, conn: ConnectionSpec) -> Dom {
    let conn_id = new_id();
    let st = call_ok(
        c,
        "StoragePool.connectStorageServer",
        connect_params(domain_type, vec![conn.params(&conn_id)]),
    )
    .await;
    assert_eq!(
        st,
        json!([{"id": conn_id, "status": 0}]),
        "connect {conn:?}"
    );
    let sd = new_id();
    call_ok(
        c,
        "StorageDomain.create",
        create_domain_params(&sd, domain_type, &conn.connection, "copy tests", 0),
    )
    .await;
    let dom = mount_point(d, domain_type, &conn.connection).join(&sd);
    assert!(dom.is_dir(), "{}", dom.display());
    Dom {
        domain_type,
        conn,
        conn_id,
        sd,
        dom,
    }
}

/// A LOCALFS domain on `dir`.
pub async fn local_domain(c: &Client, d: &Daemon, dir: &Path) -> Dom {
    let conn = ConnectionSpec::local(&dir.canonicalize().unwrap());
    create_domain(c, d, LOCALFS, conn).await
}

impl Dom {
    pub fn vol(&self, img: &str, vol: &str) -> Vol {
        Vol::in_domain(&self.sd, &self.dom, img, vol)
    }

    /// Creates a volume: `format` RAW or COW, `alloc` SPARSE or
    /// PREALLOCATED, `parent` in the same image.
    pub async fn create_volume(
        &self,
        c: &Client,
        img: &str,
        size: u64,
        format: &str,
        alloc: &str,
        parent: Option<&str>,
    ) -> Vol {
        let vol = new_id();
        let p = volume_params(
            &self.sd,
            img,
            &vol,
            size,
            format,
            alloc,
            "copy test",
            parent,
        );
        call_ok(c, "Volume.create", p).await;
        let v = self.vol(img, &vol);
        assert!(v.path.is_file(), "{}", v.path.display());
        v
    }

    /// A new image with one volume.
    pub async fn new_volume(&self, c: &Client, size: u64, format: &str, alloc: &str) -> Vol {
        self.create_volume(c, &new_id(), size, format, alloc, None)
            .await
    }
}

pub async fn vol_info(c: &Client, v: &Vol) -> Value {
    volume_info(c, &v.sd, &v.img, &v.vol).await
}

// ---------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------

pub async fn job(c: &Client, id: &str) -> Option<Value> {
    let all = call_ok(c, "Host.getJobs", json!({"job_ids": [id]})).await;
    all.get(id).cloned()
}

pub fn is_final(j: &Value) -> bool {
    matches!(j["status"].as_str(), Some("done" | "failed" | "aborted"))
}

/// Polls Host.getJobs until the job ends; the job's info.
pub async fn wait_job(c: &Client, id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(j) = job(c, id).await {
            if is_final(&j) {
                return j;
            }
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not end in {timeout:?}: {:?}",
            job(c, id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the job to end done; its result.
pub async fn wait_done(c: &Client, id: &str) -> Value {
    let j = wait_job(c, id, JOB_WAIT).await;
    assert_eq!(j["status"], "done", "job {id}: {j}");
    j["result"].clone()
}

/// Waits for the job to end failed; its error `{code, message}`.
pub async fn wait_failed(c: &Client, id: &str) -> Value {
    let j = wait_job(c, id, JOB_WAIT).await;
    assert_eq!(j["status"], "failed", "job {id}: {j}");
    j["error"].clone()
}

/// Waits until the job runs with progress >= `min` (it must not end
/// first); its info.
pub async fn wait_progress(c: &Client, id: &str, min: u64, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let j = job(c, id)
            .await
            .unwrap_or_else(|| panic!("job {id} not listed"));
        assert!(!is_final(&j), "job {id} ended before {min}%: {j}");
        if j["status"] == "running" && j["progress"].as_u64().unwrap_or(0) >= min {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} not at {min}% in {timeout:?}: {j}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts SDM.copy_data; the job id.
pub async fn start_copy(c: &Client, src: &Vol, dst: &Vol, generation: Option<u32>) -> String {
    let id = new_id();
    let r = call_ok(
        c,
        "SDM.copy_data",
        json!({"job_id": id, "source": src.endpoint(None), "destination": dst.endpoint(generation)}),
    )
    .await;
    assert_eq!(r, json!(true));
    id
}

/// SDM.copy_data to the end, done; the job's result.
pub async fn copy_ok(c: &Client, src: &Vol, dst: &Vol, generation: Option<u32>) -> Value {
    let id = start_copy(c, src, dst, generation).await;
    wait_done(c, &id).await
}

/// Image.move; the job id it answers with.
pub async fn start_move(c: &Client, src: &Dom, dst: &Dom, img: &str, op: &str) -> String {
    let r = call_ok(
        c,
        "Image.move",
        json!({"storagepoolID": BLANK, "storagedomainID": src.sd, "dstSdUUID": dst.sd,
               "imageID": img, "vmUUID": "", "operation": op, "postZero": false, "force": false}),
    )
    .await;
    let id = r
        .as_str()
        .unwrap_or_else(|| panic!("Image.move answered {r}"))
        .to_owned();
    assert!(id.parse::<depot_api::types::Uuid>().is_ok(), "{id}");
    id
}

/// Volume.getChecksum to the end; the checksum's hex.
pub async fn checksum_job(c: &Client, v: &Vol) -> String {
    let id = new_id();
    let r = call_ok(
        c,
        "Volume.getChecksum",
        json!({"job_id": id, "storagedomainID": v.sd, "imageID": v.img, "volumeID": v.vol}),
    )
    .await;
    assert_eq!(r, json!(true));
    let res = wait_done(c, &id).await;
    assert_eq!(res["algorithm"], "blake2b", "{res}");
    assert_eq!(res["block_size"], 4 * MIB, "{res}");
    res["checksum"].as_str().expect("checksum hex").to_owned()
}

/// The checksum hex of a copy job's result, checking its shape.
pub fn result_checksum(res: &Value) -> String {
    let c = &res["checksum"];
    assert_eq!(c["algorithm"], "blake2b", "{res}");
    assert_eq!(c["block_size"], 4 * MIB, "{res}");
    let hex = c["checksum"]
        .as_str()
        .unwrap_or_else(|| panic!("no checksum: {res}"));
    assert_eq!(hex.len(), 64, "{res}");
    hex.to_owned()
}

// ---------------------------------------------------------------------------
// Data and independent checks
// ---------------------------------------------------------------------------

/// splitmix64: reproducible pseudo-random bytes without a crate.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` at `offset` of `path` (not truncating) and fsyncs.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}

/// Writes `len` random bytes at `offset`, in pieces of at most 8 MiB.
pub fn write_random(path: &Path, offset: u64, len: u64, seed: u64) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut done = 0;
    while done < len {
        let n = (len - done).min(8 * MIB);
        f.write_all_at(
            &random_bytes(n as usize, seed ^ (offset + done)),
            offset + done,
        )
        .unwrap();
        done += n;
    }
    f.sync_all().unwrap();
}

pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Whether the first `len` bytes of `a` and `b` are equal; the first
/// differing offset otherwise.
pub fn first_difference(a: &Path, b: &Path, len: u64) -> Option<u64> {
    let mut fa = File::open(a).unwrap();
    let mut fb = File::open(b).unwrap();
    let (mut ba, mut bb) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(ba.len() as u64) as usize;
        fa.read_exact(&mut ba[..n])
            .unwrap_or_else(|e| panic!("{} at {off}: {e}", a.display()));
        fb.read_exact(&mut bb[..n])
            .unwrap_or_else(|e| panic!("{} at {off}: {e}", b.display()));
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap();
            return Some(off + i as u64);
        }
        off += n as u64;
    }
    None
}

pub fn assert_same_bytes(a: &Path, b: &Path, len: u64) {
    if let Some(off) = first_difference(a, b, len) {
        panic!("{} and {} differ at offset {off}", a.display(), b.display());
    }
}

/// SHA-1 of a whole file (sha1sum), to see that a file did not change.
pub fn file_digest(path: &Path) -> String {
    let out = Command::new("sha1sum").arg(path).output().expect("sha1sum");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)[..40].to_owned()
}

/// ovirt-imageio's blkhash of the first `size` bytes of `path`, by an
/// independent implementation: Python's hashlib with the construction of
/// `ovirt_imageio/_internal/blkhash.py` written out (4 MiB blocks, the last
/// one short and unpadded; blake2b(digest_size=32) of each block; the block
/// digests, and nothing else, fed in order into an outer
/// blake2b(digest_size=32); its hex digest).
pub fn python_blkhash(path: &Path, size: u64) -> String {
    let script = r#"
import hashlib, sys
path, size, bs = sys.argv[1], int(sys.argv[2]), 4 * 1024 * 1024
outer = hashlib.blake2b(digest_size=32)
with open(path, "rb") as f:
    while size > 0:
        block = f.read(min(bs, size))
        assert block, "short file"
        size -= len(block)
        outer.update(hashlib.blake2b(block, digest_size=32).digest())
print(outer.hexdigest())
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .arg(size.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python3 blkhash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `qemu-img compare -f fa -F fb a b`: Ok, or the reason they differ.
pub fn qemu_img_compare(a: &Path, fa: &str, b: &Path, fb: &str) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(["compare", "-U", "-f", fa, "-F", fb])
        .arg(a)
        .arg(b)
        .output()
        .expect("qemu-img");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "qemu-img compare {} {}: {}{}",
            a.display(),
            b.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn assert_compare(a: &Path, fa: &str, b: &Path, fb: &str) {
    if let Err(e) = qemu_img_compare(a, fa, b, fb) {
        panic!("{e}");
    }
}

/// `qemu-io -f fmt -c CMD path`. qemu-utils is a requirement of every
/// tier (depotd runs qemu-img): a missing qemu-io fails the test.
pub fn qemu_io(path: &Path, fmt: &str, cmd: &str) {
    depot_testkit::require_program("qemu-io");
    let out = Command::new("qemu-io")
        .args(["-f", fmt, "-c", cmd])
        .arg(path)
        .output()
        .expect("qemu-io");
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("error"),
        "qemu-io {cmd} {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Root tier: a loop device with a file system
// ---------------------------------------------------------------------------

const T: Duration = Duration::from_secs(120);

pub use crate::support::loopfs::LoopFs;

/// The POSIXFS connection of a loop device's file system.
pub fn posix_conn(fs: &LoopFs, fstype: &str) -> ConnectionSpec {
    ConnectionSpec {
        connection: fs.dev.clone(),
        vfs_type: Some(fstype.into()),
        mnt_options: None,
        protocol_version: None,
    }
}
