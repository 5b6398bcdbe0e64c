//! A volume wipe (`postZero`): depot-storage's `wipe_file` through a
//! mount's helper processes against the loop of before helpers, run in
//! this process (8 MiB `O_DIRECT` writes of zeros; in a sparse file each
//! 8 MiB read with `O_DIRECT` first and only its 1 MiB units that are not
//! zeros written).
//!
//! Two files of `--size-mib`, made afresh before each timed wipe: a dense
//! one (every byte written) and a sparse one (`--data-mib` of data, in 8
//! MiB pieces spread evenly, the rest a hole). The helper is this binary
//! (`depot-bench fsproc-serve`), as depotd runs `depotd fsproc`. The two
//! ways alternate within a round; medians of the rounds are printed with
//! the ratio reference / helpers (1 = as fast as before helpers).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use depot_os::direct::{self, AlignedBuf};
use depot_os::fsproc::{FsPool, HelperCommand, PoolConfig};
use depot_storage::file::volumes::wipe_file;
use depot_storage::mount_fs::MountFs;

use crate::stats::median_f64;
use crate::sys::fs_type;

#[derive(clap::Args)]
pub struct WipeArgs {
    /// Size of the wiped file, MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Data in the sparse file, MiB (a multiple of 8).
    #[arg(long, default_value_t = 64)]
    data_mib: u64,
    /// Rounds; in each, both files are wiped both ways.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Directory to work in (a temporary directory is made in it).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
}

const MIB: u64 = 1 << 20;
/// The chunk of the loop before helpers.
const CHUNK: usize = 8 << 20;
const UNIT: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);

fn e2s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A fresh file: `size` bytes, dense (all 0x55) or with `data` bytes of
/// 0x55 in 8 MiB pieces spread evenly over a hole; fsynced.
fn make(path: &Path, size: u64, data: Option<u64>) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let f = File::create(path).map_err(e2s)?;
    let piece = vec![0x55u8; CHUNK];
    match data {
        None => {
            let mut off = 0;
            while off < size {
                let n = (size - off).min(CHUNK as u64) as usize;
                f.write_all_at(&piece[..n], off).map_err(e2s)?;
                off += n as u64;
            }
        }
        Some(data) => {
            f.set_len(size).map_err(e2s)?;
            let pieces = (data / CHUNK as u64).max(1);
            let stride = size / pieces;
            for i in 0..pieces {
                let off = i * stride / CHUNK as u64 * CHUNK as u64;
                f.write_all_at(&piece, off).map_err(e2s)?;
            }
        }
    }
    f.sync_all().map_err(e2s)
}

/// The wipe of before helpers, in this process: `O_DIRECT` zeros in 8
/// MiB chunks; in a sparse file only the 1 MiB units read as not zero.
fn wipe_in_thread(path: &Path) -> Result<u64, String> {
    let md = std::fs::metadata(path).map_err(e2s)?;
    let sparse = md.blocks() * 512 < md.len();
    let f = direct::open_direct(path, true).map_err(e2s)?;
    let zeros = AlignedBuf::new(CHUNK, 4096).map_err(e2s)?;
    let mut got = AlignedBuf::new(CHUNK, 4096).map_err(e2s)?;
    let len = md.len() - md.len() % 4096;
    let (mut off, mut written) = (0u64, 0u64);
    while off < len {
        let n = (len - off).min(CHUNK as u64) as usize;
        if sparse {
            let r = direct::read_at_direct(&f, off, &mut got).map_err(e2s)?;
            let mut s = 0;
            while s < n {
                let m = (n - s).min(UNIT);
                if r < s + m || got[s..s + m].iter().any(|&b| b != 0) {
                    direct::write_at_direct(&f, off + s as u64, &zeros, m).map_err(e2s)?;
                    written += m as u64;
                }
                s += m;
            }
        } else {
            direct::write_at_direct(&f, off, &zeros, n).map_err(e2s)?;
            written += n as u64;
        }
        off += n as u64;
    }
    direct::sync_and_close(f).map_err(e2s)?;
    Ok(written)
}

fn timed(f: impl FnOnce() -> Result<u64, String>) -> Result<(f64, u64), String> {
    let t = Instant::now();
    let n = f()?;
    Ok((t.elapsed().as_secs_f64(), n))
}

pub fn run(args: WipeArgs) -> Result<(), String> {
    let tmp = tempfile::Builder::new()
        .prefix("depot-bench-wipe-")
        .tempdir_in(&args.dir)
        .map_err(|e| format!("tempdir in {}: {e}", args.dir.display()))?;
    let root = tmp.path().to_owned();
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let fs = MountFs::new(FsPool::new(PoolConfig {
        command: HelperCommand::new(exe).arg("fsproc-serve"),
        root: root.clone(),
        max_helpers: 1,
        timeout: TIMEOUT,
    }));
    fs.pool().ping().map_err(e2s)?;
    let size = args.size_mib * MIB;
    println!(
        "wipe: {} MiB, sparse with {} MiB of data, {} rounds, in {} ({})",
        args.size_mib,
        args.data_mib,
        args.rounds,
        root.display(),
        fs_type(&root)
    );
    let path = root.join("volume");
    for (name, data) in [("dense", None), ("sparse", Some(args.data_mib * MIB))] {
        let (mut before, mut helpers) = (Vec::new(), Vec::new());
        let mut bytes = (0, 0);
        for round in 0..args.rounds {
            // Alternate which goes first.
            for way in [round % 2, 1 - round % 2] {
                make(&path, size, data)?;
                if way == 0 {
                    let (s, n) = timed(|| wipe_in_thread(&path))?;
                    before.push(s);
                    bytes.0 = n;
                } else {
                    let (s, n) = timed(|| wipe_file(&fs, &path).map_err(e2s))?;
                    helpers.push(s);
                    bytes.1 = n;
                }
            }
        }
        let (b, h) = (median_f64(before.clone()), median_f64(helpers.clone()));
        println!(
            "{name:<7} in-thread {b:>7.3} s ({before:.3?}, {} MiB written)  helpers {h:>7.3} s ({helpers:.3?}, {} MiB written)  before/helpers {:.2}",
            bytes.0 / MIB,
            bytes.1 / MIB,
            b / h
        );
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}
