//! The cost of a round trip through a file-system helper process
//! (`depot_os::fsproc`) against the same call made in-process, and
//! through an `IoWorker` thread (how depot-storage guards calls today):
//!
//! - `stat` of a file;
//! - a 4 KiB metadata update: an `O_DIRECT` read of 4 KiB plus an atomic
//!   replace (temporary file, fsync, rename, fsync of the directory).
//!
//! - getInfo's three reads (the image directory's listing, a 512-byte
//!   record's read, the data file's `lstat`) as three calls against one
//!   `batch` call (the round trips a batch saves).
//!
//! The helper is this binary (`depot-bench fsproc-serve`), as depotd will
//! be (`depotd fsproc`). Calls are made one at a time, in alternating
//! batches, and each kind's median per call is printed with the ratio
//! helper / in-process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use depot_os::fsproc::{FsPool, HelperCommand, PoolConfig, Request};
use depot_os::{direct, IoWorker};

use crate::stats::median_f64;
use crate::sys::fs_type;

#[derive(clap::Args)]
pub struct FsprocArgs {
    /// Calls of each kind per round.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Rounds; the kinds alternate within a round.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Directory to work in (a temporary directory is made in it).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
}

const TIMEOUT: Duration = Duration::from_secs(30);
const META: &str = "metadata";

/// Microseconds per call of `f`, run `calls` times.
fn per_call(calls: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    let t = Instant::now();
    for _ in 0..calls {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / calls as f64)
}

fn read_direct_4k(path: &Path) -> Result<(), String> {
    let f = direct::open_direct(path, false).map_err(|e| e.to_string())?;
    let mut buf = direct::AlignedBuf::new(4096, 4096).map_err(|e| e.to_string())?;
    direct::read_at_direct(&f, 0, &mut buf).map_err(|e| e.to_string())?;
    Ok(())
}

fn update_in_process(path: &Path, block: &[u8]) -> Result<(), String> {
    read_direct_4k(path)?;
    depot_os::write_atomic(path, block, 0o660).map_err(|e| e.to_string())
}

/// The medians (µs per call) of one kind of call: in-process, IoWorker,
/// helper.
struct Row {
    name: &'static str,
    local: Vec<f64>,
    worker: Vec<f64>,
    helper: Vec<f64>,
}

impl Row {
    fn new(name: &'static str) -> Row {
        Row {
            name,
            local: Vec::new(),
            worker: Vec::new(),
            helper: Vec::new(),
        }
    }

    fn print(&self) {
        let (l, w, h) = (
            median_f64(self.local.clone()),
            median_f64(self.worker.clone()),
            median_f64(self.helper.clone()),
        );
        println!(
            "{:<28} {:>10.1} {:>10.1} {:>10.1} {:>9.2}x {:>9.2}x",
            self.name,
            l,
            w,
            h,
            h / l,
            h / w
        );
    }
}

/// An image directory with one volume under `root`, and the three reads
/// `Volume.getInfo` makes there (the listing, the `.meta`, the data's
/// lstat).
fn getinfo_reads(root: &Path) -> Result<[Request; 3], String> {
    std::fs::create_dir(root.join("img")).map_err(|e| e.to_string())?;
    std::fs::write(root.join("img/v.meta"), [b'x'; 512]).map_err(|e| e.to_string())?;
    std::fs::write(root.join("img/v"), b"").map_err(|e| e.to_string())?;
    Ok([
        Request::Listdir {
            path: "img".into(),
            max_entries: 20_000,
        },
        Request::Read {
            path: "img/v.meta".into(),
            offset: 0,
            len: 65_537,
            direct: false,
        },
        Request::Lstat {
            path: "img/v".into(),
        },
    ])
}

pub fn run(args: FsprocArgs) -> Result<(), String> {
    let tmp = tempfile::Builder::new()
        .prefix("depot-bench-fsproc-")
        .tempdir_in(&args.dir)
        .map_err(|e| format!("tempdir in {}: {e}", args.dir.display()))?;
    let root = tmp.path().to_owned();
    let meta_path = root.join(META);
    let block = vec![0x5au8; 4096];
    depot_os::write_atomic(&meta_path, &block, 0o660).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let pool = FsPool::new(PoolConfig {
        command: HelperCommand::new(exe).arg("fsproc-serve"),
        root: root.clone(),
        max_helpers: 1,
        timeout: TIMEOUT,
    });
    let worker = IoWorker::new("bench", 1);
    pool.ping().map_err(|e| e.to_string())?;
    println!(
        "fsproc: {} calls x {} rounds, one at a time, in {} ({})",
        args.calls,
        args.rounds,
        root.display(),
        fs_type(&root)
    );
    let reads = getinfo_reads(&root)?;
    let (mut three, mut one) = (Vec::new(), Vec::new());
    let mut stat = Row::new("stat");
    let mut update = Row::new("4 KiB read_direct+atomic");
    let n = args.calls;
    for _ in 0..args.rounds {
        stat.local.push(per_call(n, || {
            std::fs::symlink_metadata(&meta_path)
                .map(drop)
                .map_err(|e| e.to_string())
        })?);
        stat.worker.push(per_call(n, || {
            let p = meta_path.clone();
            worker
                .run(TIMEOUT, move || std::fs::symlink_metadata(p).map(drop))
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        })?);
        stat.helper.push(per_call(n, || {
            pool.stat(META).map(drop).map_err(|e| e.to_string())
        })?);
        three.push(per_call(n, || {
            for r in &reads {
                pool.call(r, &[], TIMEOUT).map_err(|e| e.to_string())?;
            }
            Ok(())
        })?);
        one.push(per_call(n, || {
            for a in pool.batch(&reads).map_err(|e| e.to_string())? {
                a.map_err(|e| e.to_string())?;
            }
            Ok(())
        })?);
        // Each update fsyncs twice: fewer of them.
        let m = (n / 10).max(1);
        update
            .local
            .push(per_call(m, || update_in_process(&meta_path, &block))?);
        update.worker.push(per_call(m, || {
            let (p, b) = (meta_path.clone(), block.clone());
            worker
                .run(TIMEOUT, move || update_in_process(&p, &b))
                .map_err(|e| e.to_string())?
        })?);
        update.helper.push(per_call(m, || {
            pool.read(META, 0, 4096, true).map_err(|e| e.to_string())?;
            pool.write_atomic(META, &block, 0o660)
                .map_err(|e| e.to_string())
        })?);
    }
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "median us/call", "in-process", "IoWorker", "helper", "helper/in", "helper/IoW"
    );
    stat.print();
    update.print();
    let (t, o) = (median_f64(three), median_f64(one));
    println!(
        "getInfo's 3 reads: 3 calls {t:.1} us, 1 batch {o:.1} us, batch/calls {:.2}",
        o / t
    );
    let h = pool.health();
    println!(
        "helpers started: {}, stuck: {}, load: {}",
        h.started,
        h.stuck,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}
