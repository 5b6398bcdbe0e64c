//! The copy engine's native raw-to-raw copier (`depot_storage::copy::
//! copy_raw`, called directly, no daemon) against the tools the issue names,
//! on two directories of the same disk standing for two domains:
//!
//! - (a) random data, `--size` bytes: depot (checksum on, as the engine
//!   runs it) vs VDSM's `qemu-img convert -p -t none -T none -W -f raw -O
//!   raw -n src dst` vs `dd if=src of=dst bs=8M iflag=direct oflag=direct`;
//! - (c) the same copy with the checksum off (ratio on/off), and the
//!   read-back verification (`verify_raw`) timed on its own;
//! - (b) sparse: `--sparse-size` virtual with 1% data in 1 MiB pieces at
//!   random places, vs copying a dense file of just that data (same
//!   copier, same options); the sparse copy also with the checksum off,
//!   to show what the checksum of the blocks around the data costs.
//!
//! Each row also gives the CPU time (user + system, of depot-bench's
//! threads or of the child process), from /proc/self/stat, so a reader can
//! tell a CPU-bound run from an I/O-bound one.
//!
//! Every destination is a new file truncated to the source's size (sparse,
//! so every tool allocates as it writes), created outside the timing. The
//! runs alternate, in rotating order; medians are printed. Page caches
//! cannot be dropped here: all three tools use O_DIRECT on both ends.

use depot_storage::copy::{copy_raw, verify_raw, CopyOptions};
use depot_testkit::rng::Rng;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::stats::median_f64;
use crate::sys::{fs_type, run_cmd};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[derive(clap::Args)]
pub struct CopyArgs {
    /// Size of the random-data copy (a): bytes, or with K, M, G suffix.
    /// The issue asks for 4G; 1G is the default to fit the time budget.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// Rounds of (a)+(c), each round one copy of each kind.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Virtual size of the sparse source (b).
    #[arg(long, default_value = "64G", value_parser = parse_size)]
    sparse_size: u64,
    /// Percent of the sparse source that is data.
    #[arg(long, default_value_t = 1.0)]
    data_percent: f64,
    /// Skip (b).
    #[arg(long)]
    no_sparse: bool,
    /// Skip (a) and (c): only the sparse case.
    #[arg(long)]
    only_sparse: bool,
    /// Directory to work in (default: a temporary directory under /var/tmp,
    /// on the root disk).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], MIB),
        Some('G' | 'g') => (&s[..s.len() - 1], GIB),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mul)
        .map_err(|e| format!("{s}: {e}"))
}

fn err<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// CPU seconds (user + system) of this process's threads and of its
/// waited-for children, from /proc/self/stat (in USER_HZ = 100 ticks).
fn cpu_times() -> (f64, f64) {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis: state is field 3;
    // utime, stime, cutime, cstime are fields 14 to 17.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|x| x.parse().unwrap_or(0.0) / 100.0)
        .collect();
    if f.len() < 4 {
        return (0.0, 0.0);
    }
    (f[0] + f[1], f[2] + f[3])
}

/// Wall and CPU seconds of one run.
#[derive(Clone, Copy)]
struct Sample {
    wall: f64,
    cpu: f64,
}

/// Times `f`: wall clock, and the CPU of this process (`child` false) or of
/// the child processes it waited for (`child` true).
fn timed<T>(child: bool, f: impl FnOnce() -> Result<T, String>) -> Result<(T, Sample), String> {
    let c0 = cpu_times();
    let t = Instant::now();
    let r = f()?;
    let wall = t.elapsed().as_secs_f64();
    let c1 = cpu_times();
    let cpu = if child { c1.1 - c0.1 } else { c1.0 - c0.0 };
    Ok((r, Sample { wall, cpu }))
}

fn walls(v: &[Sample]) -> Vec<f64> {
    v.iter().map(|s| s.wall).collect()
}

fn fmt_runs(v: &[Sample]) -> String {
    v.iter()
        .map(|s| format!("{:.3}", s.wall))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `name  median s  MiB/s  cpu s  runs`; returns the median wall time.
fn report(name: &str, v: &[Sample], bytes: Option<u64>) -> f64 {
    let m = median_f64(walls(v));
    let cpu = median_f64(v.iter().map(|s| s.cpu).collect());
    let rate = bytes.map_or(String::new(), |b| {
        format!("{:>6.0} MiB/s", b as f64 / MIB as f64 / m)
    });
    println!(
        "  {name:<56} median {m:>7.3} s {rate}  cpu {cpu:>5.2} s   runs: {}",
        fmt_runs(v)
    );
    m
}

pub async fn run(args: CopyArgs) -> Result<(), String> {
    tokio::task::spawn_blocking(move || measure(args))
        .await
        .map_err(|e| e.to_string())?
}

fn measure(args: CopyArgs) -> Result<(), String> {
    if args.size == 0 || !args.size.is_multiple_of(MIB) {
        return Err("--size must be a positive multiple of 1 MiB".into());
    }
    let tmp = tempfile::Builder::new()
        .prefix("depot-bench-copy.")
        .tempdir_in(&args.dir)
        .map_err(err("temporary directory"))?;
    let dom_a = tmp.path().join("domain-a");
    let dom_b = tmp.path().join("domain-b");
    fs::create_dir(&dom_a).map_err(err("mkdir"))?;
    fs::create_dir(&dom_b).map_err(err("mkdir"))?;
    println!(
        "bench: raw copies on {} ({}), two directories standing for two domains; {} CPUs",
        tmp.path().display(),
        fs_type(tmp.path()),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    if !args.only_sparse {
        raw_copies(&args, &dom_a, &dom_b)?;
    }
    if !args.no_sparse {
        sparse(&args, &dom_a, &dom_b)?;
    }
    Ok(())
}

/// (a) and (c).
fn raw_copies(args: &CopyArgs, dom_a: &Path, dom_b: &Path) -> Result<(), String> {
    let src = dom_a.join("random.raw");
    let dst = dom_b.join("copy.raw");
    let t = Instant::now();
    write_random(&src, args.size, 1)?;
    println!(
        "(a) source: {} MiB of random data written in {:.1?}",
        args.size / MIB,
        t.elapsed()
    );
    let mut depot_on = Vec::new();
    let mut depot_off = Vec::new();
    let mut qemu = Vec::new();
    let mut dd = Vec::new();
    let mut verify = Vec::new();
    let mut checksum = None;
    for i in 0..args.runs {
        for k in 0..4 {
            fresh(&dst, args.size)?;
            match (i + k) % 4 {
                0 => {
                    let (r, t) = timed(false, || {
                        copy_raw(&src, &dst, depot_opts(true, false)).map_err(err("copy_raw"))
                    })?;
                    depot_on.push(t);
                    let sum = r.checksum.ok_or("no checksum")?;
                    if let Some(prev) = &checksum {
                        if prev != &sum {
                            return Err("the checksum changed between runs".into());
                        }
                    }
                    // The read-back verification on its own, right after.
                    let ((), t) = timed(false, || {
                        verify_raw(&dst, args.size, &sum).map_err(err("verify_raw"))
                    })?;
                    verify.push(t);
                    checksum = Some(sum);
                }
                1 => {
                    let (_, t) = timed(false, || {
                        copy_raw(&src, &dst, depot_opts(false, false)).map_err(err("copy_raw"))
                    })?;
                    depot_off.push(t);
                }
                2 => {
                    let ((), t) = timed(true, || {
                        run_cmd(
                            Command::new("qemu-img")
                                .args(["convert", "-p", "-t", "none", "-T", "none", "-W"])
                                .args(["-f", "raw", "-O", "raw", "-n"])
                                .arg(&src)
                                .arg(&dst),
                        )
                    })?;
                    qemu.push(t);
                }
                _ => {
                    let ((), t) = timed(true, || {
                        run_cmd(
                            Command::new("dd")
                                .arg(format!("if={}", src.display()))
                                .arg(format!("of={}", dst.display()))
                                .args(["bs=8M", "iflag=direct", "oflag=direct"]),
                        )
                    })?;
                    dd.push(t);
                }
            }
        }
    }
    report_raw(args, &depot_on, &depot_off, &qemu, &dd, &verify);
    if let Some(c) = &checksum {
        println!("  checksum: {}", c.to_json());
    }
    fs::remove_file(&src).ok();
    fs::remove_file(&dst).ok();
    Ok(())
}

/// The figures of (a) and (c), from the times of each way of copying.
fn report_raw(
    args: &CopyArgs,
    depot_on: &[Sample],
    depot_off: &[Sample],
    qemu: &[Sample],
    dd: &[Sample],
    verify: &[Sample],
) {
    println!(
        "(a) raw to raw, {} MiB random data, {} rounds:",
        args.size / MIB,
        args.runs
    );
    let b = Some(args.size);
    let m_on = report("depot copy_raw (checksum on, verify off)", depot_on, b);
    let m_off = report("depot copy_raw (checksum off)", depot_off, b);
    let m_q = report(
        "qemu-img convert -p -t none -T none -W -f raw -O raw -n",
        qemu,
        b,
    );
    let m_dd = report("dd bs=8M iflag=direct oflag=direct", dd, b);
    let m_v = report("(c) verify_raw (read back, blkhash, compare)", verify, b);
    println!(
        "  depot vs qemu-img: {:.2}x (qemu-img time / depot time, checksum on; target >= 1.2)",
        m_q / m_on
    );
    println!(
        "  depot vs dd:       {:.2}x (dd time / depot time, checksum on; target >= 0.9)",
        m_dd / m_on
    );
    println!(
        "  (same with the checksum off: vs qemu-img {:.2}x, vs dd {:.2}x)",
        m_q / m_off,
        m_dd / m_off
    );
    println!(
        "(c) checksum on vs off: {:.2}x (time off / time on; target >= 0.9); verification alone {:.3} s, copy + verification {:.3} s",
        m_off / m_on,
        m_v,
        m_on + m_v
    );
}

fn sparse(args: &CopyArgs, dom_a: &Path, dom_b: &Path) -> Result<(), String> {
    let slots = args.sparse_size / MIB;
    let pieces = ((slots as f64) * args.data_percent / 100.0)
        .round()
        .max(1.0) as u64;
    let src = dom_a.join("sparse.raw");
    let dense = dom_a.join("dense.raw");
    let dst = dom_b.join("sparse-copy.raw");
    let dst_dense = dom_b.join("dense-copy.raw");
    write_sparse(args, &src, &dense, slots, pieces)?;
    let mut sp = Vec::new();
    let mut sp_off = Vec::new();
    let mut de = Vec::new();
    let mut last = None;
    for i in 0..args.runs {
        for k in 0..3 {
            match (i + k) % 3 {
                0 => {
                    fresh(&dst, args.sparse_size)?;
                    let (r, t) = timed(false, || {
                        copy_raw(&src, &dst, depot_opts(true, true)).map_err(err("copy_raw sparse"))
                    })?;
                    sp.push(t);
                    last = Some(r);
                }
                1 => {
                    fresh(&dst, args.sparse_size)?;
                    let (_, t) = timed(false, || {
                        copy_raw(&src, &dst, depot_opts(false, true))
                            .map_err(err("copy_raw sparse"))
                    })?;
                    sp_off.push(t);
                }
                _ => {
                    fresh(&dst_dense, pieces * MIB)?;
                    let (_, t) = timed(false, || {
                        copy_raw(&dense, &dst_dense, depot_opts(true, true))
                            .map_err(err("copy_raw dense"))
                    })?;
                    de.push(t);
                }
            }
        }
    }
    let allocated = fs::metadata(&dst)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(0);
    let ms = report(
        "depot copy_raw, sparse file (dst_is_zero, sparse, checksum)",
        &sp,
        None,
    );
    report("depot copy_raw, sparse file, checksum off", &sp_off, None);
    let md = report(
        &format!("depot copy_raw, dense {pieces} MiB (dst_is_zero, sparse, checksum)"),
        &de,
        Some(pieces * MIB),
    );
    if let Some(r) = last {
        println!(
            "  last sparse copy: {} bytes copied, {} zeroed, {} skipped; destination allocates {} MiB",
            r.bytes_copied,
            r.bytes_zeroed,
            r.bytes_skipped,
            allocated / MIB
        );
    }
    println!(
        "  sparse time / data-only time = {:.2} (target <= 2)",
        ms / md
    );
    for p in [&src, &dense, &dst, &dst_dense] {
        fs::remove_file(p).ok();
    }
    Ok(())
}

/// The sparse source of (b): `pieces` random 1 MiB slots of `slots`
/// written, holes elsewhere; and a dense file of the same data size.
fn write_sparse(
    args: &CopyArgs,
    src: &Path,
    dense: &Path,
    slots: u64,
    pieces: u64,
) -> Result<(), String> {
    // Distinct random 1 MiB slots, sorted.
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let mut chosen = std::collections::BTreeSet::new();
    while (chosen.len() as u64) < pieces {
        chosen.insert(rng.next_u64() % slots);
    }
    let t = Instant::now();
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(src)
        .map_err(err("sparse source"))?;
    f.set_len(args.sparse_size).map_err(err("set_len"))?;
    let mut buf = vec![0u8; MIB as usize];
    for &slot in &chosen {
        rng.fill(&mut buf);
        f.write_all_at(&buf, slot * MIB).map_err(err("write"))?;
    }
    f.sync_all().map_err(err("fsync"))?;
    drop(f);
    write_random(dense, pieces * MIB, 2)?;
    println!(
        "(b) sparse source: {} GiB virtual, {} pieces of 1 MiB ({} MiB, {:.2}%) at random places; dense file of {} MiB; written in {:.1?}",
        args.sparse_size / GIB,
        pieces,
        pieces,
        pieces as f64 * 100.0 / slots as f64,
        pieces,
        t.elapsed()
    );
    Ok(())
}

/// The engine's options for a new destination (it reads as zeros), without
/// a journal.
fn depot_opts(checksum: bool, sparse: bool) -> CopyOptions<'static> {
    CopyOptions {
        dst_is_zero: true,
        sparse,
        checksum,
        verify: false,
        ..CopyOptions::default()
    }
}

/// A new empty file of `size` bytes (sparse), synced.
fn fresh(path: &Path, size: u64) -> Result<(), String> {
    let _ = fs::remove_file(path);
    let f = File::create(path).map_err(err("create destination"))?;
    f.set_len(size).map_err(err("truncate destination"))?;
    f.sync_all().map_err(err("fsync destination"))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err("fsync dir"))?;
    }
    Ok(())
}

fn write_random(path: &Path, size: u64, seed: u64) -> Result<(), String> {
    let f = File::create(path).map_err(err("create source"))?;
    let mut rng = Rng::new(0x2545_f491_4f6c_dd1d ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut buf = vec![0u8; 8 * MIB as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all_at(&buf[..n], off)
            .map_err(err("write source"))?;
        off += n as u64;
    }
    f.sync_all().map_err(err("fsync source"))?;
    Ok(())
}
