//! `depot-bench`: benchmarks that run a real depotd and print figures.
//! Not timed tests: they report, docs/performance.md records.
//!
//! Build both binaries first: `cargo build --release -p depotd -p depot-bench`.

mod copy;
mod daemon;
mod fsproc;
mod hostids;
mod ovf;
mod ovf_sink;
mod ping;
mod spawn;
mod stats;
mod sys;
mod volumes;
mod wipe;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "depot-bench")]
struct Args {
    /// The depotd binary (default: next to this one).
    #[arg(long, global = true)]
    depotd: Option<PathBuf>,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Host.ping2 over mutual TLS from many concurrent clients (HTTP POST;
    /// with --stomp also STOMP, for the ratio).
    Ping(ping::PingArgs),
    /// Volume.create, StorageDomain.getVolumes and Volume.getInfo on many
    /// volumes of a LOCALFS domain, one call at a time.
    Volumes(volumes::VolumesArgs),
    /// OVF_STORE upload (PUT over mutual TLS until durable) of an
    /// engine-shaped tar of about 100 MiB vs dd onto the same volume.
    Ovf(ovf::OvfArgs),
    /// depot-storage's native raw copier vs qemu-img convert and dd:
    /// random data, a sparse image, checksum on vs off, verification.
    Copy(copy::CopyArgs),
    /// File-system calls through a helper process (depot_os::fsproc) vs
    /// in-process and through an IoWorker thread: stat, and a 4 KiB
    /// metadata read_direct + write_atomic.
    Fsproc(fsproc::FsprocArgs),
    /// A 1 GiB volume wipe (postZero, dense and sparse) through a mount's
    /// helpers vs the in-thread O_DIRECT loop of before helpers.
    Wipe(wipe::WipeArgs),
    /// Host id acquisition for a pool of many LOCALFS domains (repoStats
    /// `acquired` after StoragePool.connect) vs sanlock's own add_lockspace
    /// of as many lockspaces at once (root; starts a sanlock daemon).
    Hostids(hostids::HostIdsArgs),
    /// The command runner (depot_os::CommandRunner) running `true` many
    /// times, against std::process::Command::status() of the same.
    Spawn(spawn::SpawnArgs),
    /// The helper process of `fsproc` (started by it, not by hand).
    #[command(hide = true)]
    FsprocServe,
    /// The OVF benchmark's transport floor: a TLS `PUT /` sink (started by
    /// `ovf`, not by hand).
    #[command(hide = true)]
    OvfSink(ovf_sink::SinkArgs),
}

fn main() {
    let args = Args::parse();
    match args.bench {
        Bench::FsprocServe => std::process::exit(depot_os::fsproc::serve_stdio()),
        Bench::Fsproc(a) => {
            if let Err(e) = fsproc::run(a) {
                eprintln!("depot-bench fsproc: {e}");
                std::process::exit(1);
            }
            return;
        }
        Bench::Wipe(a) => {
            if let Err(e) = wipe::run(a) {
                eprintln!("depot-bench wipe: {e}");
                std::process::exit(1);
            }
            return;
        }
        Bench::Spawn(a) => {
            if let Err(e) = spawn::run(a) {
                eprintln!("depot-bench spawn: {e}");
                std::process::exit(1);
            }
            return;
        }
        _ => {}
    }
    if let Bench::OvfSink(a) = args.bench {
        if let Err(e) = ovf_sink::serve(a) {
            eprintln!("depot-bench ovf-sink: {e}");
            std::process::exit(1);
        }
        return;
    }
    let depotd = args.depotd.unwrap_or_else(daemon::sibling_depotd);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match args.bench {
            Bench::Ping(a) => ping::run(&depotd, a).await,
            Bench::Volumes(a) => volumes::run(&depotd, a).await,
            Bench::Ovf(a) => ovf::run(&depotd, a).await,
            Bench::Copy(a) => copy::run(a).await,
            Bench::Hostids(a) => hostids::run(&depotd, a).await,
            Bench::OvfSink(_)
            | Bench::Fsproc(_)
            | Bench::FsprocServe
            | Bench::Spawn(_)
            | Bench::Wipe(_) => {
                unreachable!("run above")
            }
        }
    });
    if let Err(e) = result {
        eprintln!("depot-bench: {e}");
        std::process::exit(1);
    }
}
