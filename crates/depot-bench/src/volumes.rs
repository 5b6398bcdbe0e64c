//! Volumes on a LOCALFS domain: create N volumes (each in its own image),
//! then `StorageDomain.getVolumes` on every image and once on the whole
//! domain, then `Volume.getInfo` on every volume. Prints per verb the
//! client-side latency (median, p99, max, total), the time depotd logged
//! for the same requests (its request log), and depotd's CPU time per call
//! (with its children, qemu-img).
//!
//! One call at a time over one local-socket connection: the figures are
//! service times, not throughput under concurrency.
//!
//! References measured in the same run, on the same file system, directly
//! in this process, interleaved with the creates (one of each per volume,
//! in rotating order) so that all see the same load:
//!
//! * the file-system floor: a 1 GiB sparse data file, a 512-byte file
//!   renamed into place (not itself fsynced) and one fsync of the
//!   directory, the least a volume create does;
//! * depot-storage's own volume create (`FileVolumes::create`, nine
//!   fsyncs) called in this process on a file domain of its own beside the
//!   daemon's, to tell the storage code's share (file system included)
//!   from the daemon's (RPC, locks, worker hand-off, logging). It is the
//!   daemon's code, not a copy of its steps, so it cannot drift from it;
//! * `qemu-img create -f qcow2` alone, the floor for `--cow`.

use depot_api::storage::{
    AllocType, DiskType, DomainClass, DomainType, ImgUuid, SdUuid, VolUuid, VolumeFormat,
};
use depot_client::Client;
use depot_os::{CommandRunner, QemuImg};
use depot_storage::file::volumes::FileVolumes;
use depot_storage::layout::DomainPaths;
use depot_storage::mount_fs::MountFs;
use depot_storage::{CreateDomain, CreateVolume, VolumeStore};
use serde_json::json;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use uuid::Uuid;

use crate::daemon::{call, localfs_domain, Daemon, BLANK};
use crate::stats::percentile;
use crate::sys::fs_type;

const GIB: u64 = 1 << 30;
/// Size of a volume metadata record.
const META_BYTES: usize = 512;
/// Mode of volume files, as depot-storage writes them.
const MODE: u32 = 0o660;

#[derive(clap::Args)]
pub struct VolumesArgs {
    /// Volumes to create, each in its own image.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// qcow2 volumes (COW SPARSE, one qemu-img run each) instead of RAW
    /// SPARSE.
    #[arg(long)]
    cow: bool,
    /// Virtual size of each volume, in bytes.
    #[arg(long, default_value_t = GIB)]
    size: u64,
    /// Runs of `qemu-img create -f qcow2` alone (the floor for --cow).
    #[arg(long, default_value_t = 20)]
    qemu_img_runs: usize,
    /// Directory to put the storage directory in, to measure another file
    /// system (default: the daemon's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// depotd's log level ("info" logs every request, as in production;
    /// the server-side figures come from that log).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Run depotd with `sanlock.enabled = false`: its domain has no
    /// lockspace and a create formats no volume lease (the cost before
    /// volume leases).
    #[arg(long, conflicts_with = "sanlock_daemon")]
    no_sanlock: bool,
    /// Start a sanlock daemon for the run (depot_testkit::sanlock, root
    /// only), so that volume leases are written by the daemon; without
    /// it, and without --no-sanlock, each create runs `sanlock direct
    /// init` in a child.
    #[arg(long)]
    sanlock_daemon: bool,
    /// Write no `[sanlock]` table into depotd's config: for builds from
    /// before sanlock (the before-helpers reference of issue 15, 12b5eb7),
    /// which refuse it and have no volume leases.
    #[arg(long, conflicts_with_all = ["no_sanlock", "sanlock_daemon"])]
    before_sanlock: bool,
}

/// Latencies of one kind of operation, in microseconds.
struct Series {
    name: String,
    us: Vec<u64>,
    /// depotd's own duration for the same requests, from its log.
    server_us: Vec<u64>,
    /// depotd's CPU time (its own plus its children's) over the phase.
    cpu_s: Option<f64>,
}

impl Series {
    fn new(name: impl Into<String>) -> Series {
        Series {
            name: name.into(),
            us: Vec::new(),
            server_us: Vec::new(),
            cpu_s: None,
        }
    }

    fn sorted(&self) -> Vec<u64> {
        let mut v = self.us.clone();
        v.sort_unstable();
        v
    }

    fn median(&self) -> u64 {
        percentile(&self.sorted(), 50.0)
    }
}

pub async fn run(depotd: &Path, args: VolumesArgs) -> Result<(), String> {
    if args.count == 0 {
        return Err("--count must be at least 1".into());
    }
    // Dropped after depotd (declared first): the daemon outlives it.
    let _sanlock = if args.sanlock_daemon {
        Some(depot_testkit::sanlock::SanlockDaemon::start()?)
    } else {
        None
    };
    let mut config = format!("[log]\nlevel = \"{}\"\n", args.log_level);
    // `--dev` leaves sanlock off unless the config turns it on.
    if !args.before_sanlock {
        let sanlock = !args.no_sanlock;
        config.push_str(&format!("[sanlock]\nenabled = {sanlock}\n"));
    }
    let d = Daemon::start(depotd, &config).await?;
    measure(&d, args).await.map_err(|e| {
        let state = if d.alive() {
            "depotd is still running"
        } else {
            "depotd has exited"
        };
        format!("{e}\n{state}; the end of its log:\n{}", d.log_tail(20))
    })
}

async fn measure(d: &Daemon, args: VolumesArgs) -> Result<(), String> {
    let (holder, storage) = storage_dir(d, &args)?;
    let fs_type = fs_type(&storage);
    let c = Client::connect(&d.unix())
        .await
        .map_err(|e| e.to_string())?;
    let sd = localfs_domain(&c, &storage, "depot-bench volumes").await?;
    // Warm up the path (domain lookup, worker threads) outside the figures.
    call(
        &c,
        "StorageDomain.getVolumes",
        json!({"storagedomainID": sd, "imageID": BLANK}),
    )
    .await?;

    let kind = if args.cow {
        "COW SPARSE (qcow2)"
    } else {
        "RAW SPARSE"
    };
    let n = args.count;
    let run = Run {
        d,
        c,
        sd,
        format: if args.cow { "COW" } else { "RAW" },
        vols: (0..n)
            .map(|_| (Uuid::new_v4().to_string(), Uuid::new_v4().to_string()))
            .collect(),
        args: &args,
    };
    let log_start = log_len(d);
    let mut creates = run.create_all(&storage).await?;
    let mut reads = run.read_all().await?;
    drop(run.c);
    server_durations(d, log_start, n, &mut creates.create, &mut reads);

    println!(
        "bench: {n} {kind} volumes of {} on a LOCALFS domain ({}, {fs_type}), each in its own image, one call at a time on one local-socket connection, depotd log level {}",
        size_text(args.size),
        storage.display(),
        args.log_level
    );
    print_report(&creates, &reads, n, args.cow);
    drop(holder);
    Ok(())
}

/// The storage: a plain directory (LOCALFS refuses a symlink), in
/// `--dir` (then the returned holder removes it when dropped) or in the
/// daemon's temporary directory.
fn storage_dir(
    d: &Daemon,
    args: &VolumesArgs,
) -> Result<(Option<tempfile::TempDir>, PathBuf), String> {
    let holder = match &args.dir {
        Some(parent) => Some(tempfile::tempdir_in(parent).map_err(|e| e.to_string())?),
        None => None,
    };
    let base = holder
        .as_ref()
        .map(|t| t.path().to_path_buf())
        .unwrap_or_else(|| d.dir.path().to_path_buf());
    let storage = base.join("storage");
    fs::create_dir(&storage).map_err(|e| format!("{}: {e}", storage.display()))?;
    let storage = storage
        .canonicalize()
        .map_err(|e| format!("{}: {e}", storage.display()))?;
    Ok((holder, storage))
}

/// What one benchmark run works on: the daemon, one connection to it, its
/// domain and the `(image, volume)` pairs to create.
struct Run<'a> {
    d: &'a Daemon,
    c: Client,
    sd: String,
    /// `volFormat` of the creates: "RAW" or "COW".
    format: &'static str,
    vols: Vec<(String, String)>,
    args: &'a VolumesArgs,
}

/// The create phase's figures: the daemon's and the references'.
struct Creates {
    create: Series,
    floor: Series,
    direct: Series,
    qemu: Series,
}

/// The read phase's figures.
struct Reads {
    per_image: Series,
    whole: Series,
    info: Series,
}

/// Runs `f` once, adding its latency to `s` and the CPU time `cpu` counts
/// over it to `s.cpu_s`.
fn timed(
    s: &mut Series,
    cpu: impl Fn() -> f64,
    f: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let cpu_before = cpu();
    let t = Instant::now();
    f()?;
    s.us.push(t.elapsed().as_micros() as u64);
    *s.cpu_s.get_or_insert(0.0) += cpu() - cpu_before;
    Ok(())
}

/// A series whose CPU time is counted from zero (printed even when no call
/// was made).
fn counted(name: impl Into<String>) -> Series {
    let mut s = Series::new(name);
    s.cpu_s = Some(0.0);
    s
}

impl Run<'_> {
    /// Volume.create, one at a time, interleaved with the references so
    /// that they see the same load on the file system (other work on the
    /// machine makes fsync times drift by several times during a run).
    async fn create_all(&self, storage: &Path) -> Result<Creates, String> {
        let floor_dir = storage.join("bench-floor");
        let direct_dir = storage.join("bench-direct");
        let qemu_dir = storage.join("bench-qemu-img");
        for dir in [&floor_dir, &direct_dir, &qemu_dir] {
            fs::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let creator = DirectCreate::new(&direct_dir, self.args.size, self.args.cow)?;
        let mut s = Creates {
            create: counted("Volume.create"),
            floor: counted("floor: sparse file, 512 B, rename, fsync"),
            direct: counted(format!("{} FileVolumes::create, no daemon", self.format)),
            qemu: counted("qemu-img create -f qcow2"),
        };
        let runs = self.args.qemu_img_runs;
        let qemu_stride = (self.vols.len() / runs.max(1)).max(1);
        for (i, (img, vol)) in self.vols.iter().enumerate() {
            // Rotate the order, so that none of the three always follows
            // the same one.
            for k in 0..3 {
                match (i + k) % 3 {
                    0 => self.create_one(&mut s.create, img, vol).await?,
                    1 => timed(&mut s.floor, own_cpu_seconds, || {
                        floor_create(&floor_dir, i, self.args.size)
                            .map_err(|e| format!("floor: {e}"))
                    })?,
                    _ => timed(&mut s.direct, own_cpu_seconds, || {
                        creator
                            .create(img, vol)
                            .map_err(|e| format!("direct create: {e}"))
                    })?,
                }
            }
            if i % qemu_stride == 0 && s.qemu.us.len() < runs {
                let path = qemu_dir.join(i.to_string());
                timed(&mut s.qemu, own_cpu_seconds, || {
                    qemu_img_create(&path, self.args.size)
                })?;
            }
        }
        while s.qemu.us.len() < runs {
            let path = qemu_dir.join(format!("extra-{}", s.qemu.us.len()));
            timed(&mut s.qemu, own_cpu_seconds, || {
                qemu_img_create(&path, self.args.size)
            })?;
        }
        Ok(s)
    }

    /// One Volume.create through the daemon, timed into `s` with depotd's
    /// CPU time (its own and its children's).
    async fn create_one(&self, s: &mut Series, img: &str, vol: &str) -> Result<(), String> {
        let cpu = self.d.cpu_seconds_with_children();
        let t = Instant::now();
        call(
            &self.c,
            "Volume.create",
            json!({
                "volumeID": vol,
                "storagedomainID": self.sd,
                "imageID": img,
                "size": self.args.size.to_string(),
                "volFormat": self.format,
                "preallocate": "SPARSE",
                "diskType": "DATA",
                "desc": "depot-bench",
                "srcImgUUID": BLANK,
                "srcVolUUID": BLANK,
            }),
        )
        .await?;
        s.us.push(t.elapsed().as_micros() as u64);
        *s.cpu_s.get_or_insert(0.0) += self.d.cpu_seconds_with_children() - cpu;
        Ok(())
    }

    /// StorageDomain.getVolumes on every image and once on the whole
    /// domain, then Volume.getInfo on every volume, each checked.
    async fn read_all(&self) -> Result<Reads, String> {
        Ok(Reads {
            per_image: self.list_images().await?,
            whole: self.list_domain().await?,
            info: self.info_all().await?,
        })
    }

    async fn list_images(&self) -> Result<Series, String> {
        let mut s = Series::new("StorageDomain.getVolumes (image)");
        let cpu = self.d.cpu_seconds_with_children();
        for (img, vol) in &self.vols {
            let t = Instant::now();
            let r = call(
                &self.c,
                "StorageDomain.getVolumes",
                json!({"storagedomainID": self.sd, "imageID": img}),
            )
            .await?;
            s.us.push(t.elapsed().as_micros() as u64);
            if r != json!([vol]) {
                return Err(format!("getVolumes of image {img}: {r}, expected [{vol}]"));
            }
        }
        s.cpu_s = Some(self.d.cpu_seconds_with_children() - cpu);
        Ok(s)
    }

    async fn list_domain(&self) -> Result<Series, String> {
        let mut s = Series::new("StorageDomain.getVolumes (domain)");
        let cpu = self.d.cpu_seconds_with_children();
        let t = Instant::now();
        let r = call(
            &self.c,
            "StorageDomain.getVolumes",
            json!({"storagedomainID": self.sd, "imageID": BLANK}),
        )
        .await?;
        s.us.push(t.elapsed().as_micros() as u64);
        s.cpu_s = Some(self.d.cpu_seconds_with_children() - cpu);
        let (listed, n) = (r.as_array().map(Vec::len).unwrap_or(0), self.vols.len());
        if listed != n {
            return Err(format!(
                "getVolumes of the domain listed {listed} volumes, expected {n}"
            ));
        }
        Ok(s)
    }

    async fn info_all(&self) -> Result<Series, String> {
        let mut s = Series::new("Volume.getInfo");
        let cpu = self.d.cpu_seconds_with_children();
        for (img, vol) in &self.vols {
            let t = Instant::now();
            let r = call(
                &self.c,
                "Volume.getInfo",
                json!({"storagedomainID": self.sd, "imageID": img, "volumeID": vol}),
            )
            .await?;
            s.us.push(t.elapsed().as_micros() as u64);
            if r["format"] != json!(self.format)
                || r["legality"] != json!("LEGAL")
                || r["capacity"] != json!(self.args.size.to_string())
            {
                return Err(format!("getInfo of volume {vol}: unexpected {r}"));
            }
        }
        s.cpu_s = Some(self.d.cpu_seconds_with_children() - cpu);
        Ok(s)
    }
}

/// depotd's own durations from its log, in request order: the `n`
/// creates, the `n` per-image listings, the domain listing, the `n`
/// getInfo calls.
fn server_durations(d: &Daemon, log_start: u64, n: usize, create: &mut Series, reads: &mut Reads) {
    let logged = logged_durations(d, log_start);
    let take = |method: &str| -> Vec<u64> {
        logged
            .iter()
            .filter(|(m, _)| m == method)
            .map(|&(_, us)| us)
            .collect()
    };
    create.server_us = take("Volume.create");
    let mut listings = take("StorageDomain.getVolumes");
    if listings.len() == n + 1 {
        reads.whole.server_us = listings.split_off(n);
        reads.per_image.server_us = listings;
    }
    reads.info.server_us = take("Volume.getInfo");
}

/// The table of every series and the ratios of Volume.create to its
/// references.
fn print_report(creates: &Creates, reads: &Reads, n: usize, cow: bool) {
    println!(
        "{:<44} {:>6} {:>10} {:>10} {:>10} {:>10}   {:>12} {:>12} {:>13}",
        "client-side latency (CPU: depotd's)",
        "calls",
        "median",
        "p99",
        "max",
        "total",
        "depotd med.",
        "depotd p99",
        "CPU"
    );
    for s in [&creates.create, &reads.per_image, &reads.whole, &reads.info] {
        print_row(s);
    }
    println!("references, done directly by depot-bench on the same file system (CPU: depot-bench's and its qemu-img's):");
    for s in [&creates.floor, &creates.direct, &creates.qemu] {
        print_row(s);
    }
    let (create, floor, direct) = (&creates.create, &creates.floor, &creates.direct);
    let ratio = |a: &Series, b: &Series| a.median() as f64 / b.median().max(1) as f64;
    println!(
        "Volume.create median = {:.1} times the raw file-system floor ({} against {})",
        ratio(create, floor),
        ms(create.median()),
        ms(floor.median())
    );
    println!(
        "Volume.create median = {:.2} times depot-storage's own create called directly ({}); the rest is RPC, locks, worker hand-off and logging",
        ratio(create, direct),
        ms(direct.median())
    );
    if cow {
        println!(
            "Volume.create median = {:.2} times qemu-img create -f qcow2 alone ({})",
            ratio(create, &creates.qemu),
            ms(creates.qemu.median())
        );
    }
    println!(
        "StorageDomain.getVolumes of the whole domain: {n} volumes in {}",
        ms(reads.whole.us[0])
    );
}

fn print_row(s: &Series) {
    let v = s.sorted();
    let total: u64 = v.iter().sum();
    let mut server = s.server_us.clone();
    server.sort_unstable();
    let (smed, sp99) = if server.is_empty() {
        ("-".to_string(), "-".to_string())
    } else {
        (ms(percentile(&server, 50.0)), ms(percentile(&server, 99.0)))
    };
    let cpu = match s.cpu_s {
        Some(c) => format!("{:.0} us/call", c * 1e6 / v.len().max(1) as f64),
        None => "-".to_string(),
    };
    println!(
        "{:<44} {:>6} {:>10} {:>10} {:>10} {:>10}   {:>12} {:>12} {:>13}",
        s.name,
        v.len(),
        ms(percentile(&v, 50.0)),
        ms(percentile(&v, 99.0)),
        ms(v.last().copied().unwrap_or(0)),
        ms(total),
        smed,
        sp99,
        cpu
    );
}

fn ms(us: u64) -> String {
    if us >= 10_000_000 {
        format!("{:.1} s", us as f64 / 1e6)
    } else {
        format!("{:.3} ms", us as f64 / 1e3)
    }
}

fn size_text(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// CPU time (user + system) of this process and of the children it
/// waited for (qemu-img), in seconds.
fn own_cpu_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12) + ticks(13) + ticks(14)) / 100.0
}

fn log_len(d: &Daemon) -> u64 {
    fs::metadata(d.log_path()).map(|m| m.len()).unwrap_or(0)
}

/// `(method, duration in µs)` of every request depotd logged after byte
/// `from` of its log, in order.
fn logged_durations(d: &Daemon, from: u64) -> Vec<(String, u64)> {
    let text = fs::read(d.log_path()).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
    text.lines()
        .filter_map(|line| {
            let mut method = None;
            let mut duration = None;
            for word in line.split_whitespace() {
                if let Some(m) = word.strip_prefix("method=") {
                    method = Some(m.to_string());
                } else if let Some(v) = word.strip_prefix("duration_ms=") {
                    duration = v.parse::<f64>().ok();
                }
            }
            Some((method?, (duration? * 1e3).round() as u64))
        })
        .collect()
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn new_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MODE)
        .open(path)
}

/// The least one volume create does: an empty sparse data file, a
/// 512-byte metadata file renamed into place, the directory fsynced.
fn floor_create(dir: &Path, i: usize, size: u64) -> std::io::Result<()> {
    new_file(&dir.join(i.to_string()))?.set_len(size)?;
    let tmp = dir.join(format!("{i}.meta.tmp"));
    new_file(&tmp)?.write_all(&[b'x'; META_BYTES])?;
    fs::rename(&tmp, dir.join(format!("{i}.meta")))?;
    fsync_dir(dir)
}

/// depot-storage's volume create without the daemon: a LOCALFS domain of
/// its own in `mount_dir`, made and filled by the same functions the
/// daemon's verbs run on their I/O worker.
struct DirectCreate {
    paths: DomainPaths,
    /// The calls of depot-storage's code on its domain: in this process
    /// (no helper), the reference without the helpers' round trips.
    fs: MountFs,
    sd: SdUuid,
    qemu: QemuImg,
    req: CreateVolume,
}

/// Limit of one qemu-img run (depotd's default `storage.qemu_img_timeout_s`).
const QEMU_IMG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

impl DirectCreate {
    fn new(mount_dir: &Path, size: u64, cow: bool) -> Result<DirectCreate, String> {
        let sd = SdUuid(depot_api::types::Uuid::new_v4());
        let domain = CreateDomain {
            sd,
            domain_type: DomainType::LocalFs,
            class: DomainClass::Data,
            description: "depot-bench direct".into(),
            remote_path: mount_dir.display().to_string(),
            block_size: None,
            max_hosts: 250,
            backup: false,
        };
        // Direct: the calls on this thread, as the daemon's helpers make them.
        let fs = depot_storage::mount_fs::MountFs::in_process(mount_dir, QEMU_IMG_TIMEOUT);
        let paths = depot_storage::file::domain::create(&fs, mount_dir, &domain)
            .map_err(|e| format!("direct create: {e}"))?;
        // What the daemon's Volume.create is asked for, above.
        let req = CreateVolume {
            capacity: size,
            format: if cow {
                VolumeFormat::Cow
            } else {
                VolumeFormat::Raw
            },
            alloc: AllocType::Sparse,
            disk_type: DiskType::Data,
            description: "depot-bench".into(),
            parent: VolUuid::BLANK,
            legal: true,
            sequence: 0,
        };
        Ok(DirectCreate {
            fs: MountFs::in_process(mount_dir, QEMU_IMG_TIMEOUT),
            paths,
            sd,
            qemu: QemuImg::new(CommandRunner::new()),
            req,
        })
    }

    fn create(&self, img: &str, vol: &str) -> Result<(), String> {
        let img: ImgUuid = img.parse().map_err(|e| format!("{img}: {e}"))?;
        let vol: VolUuid = vol.parse().map_err(|e| format!("{vol}: {e}"))?;
        FileVolumes::new(&self.paths, &self.fs, self.sd, &self.qemu, QEMU_IMG_TIMEOUT)
            .create(img, vol, &self.req)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// `qemu-img create -f qcow2 -o compat=1.1 PATH SIZE`, as depot-os runs it.
fn qemu_img_create(path: &Path, size: u64) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(["create", "-f", "qcow2", "-o", "compat=1.1"])
        .arg(path)
        .arg(size.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img create {}: {}: {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
