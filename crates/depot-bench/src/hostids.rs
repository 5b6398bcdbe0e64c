//! Host id acquisition: how long after `StoragePool.connect(hostID)` a
//! pool of N LOCALFS domains reports every host id held
//! (`Host.getStorageRepoStats`' `acquired`), against the physical floor
//! measured in the same run: sanlock itself acquiring the same number of
//! fresh host ids at once (asynchronous `add_lockspace` through the
//! library, as depotd calls it, each polled until held), which waits
//! sanlock's own delays (a delta lease is written, then re-read after
//! about two `io_timeout`s).
//!
//! Needs root, the Debian package `sanlock` and a daemon it starts itself
//! (depot_testkit::sanlock, as the tests do). Each round alternates the
//! floor and depotd, each on fresh lockspaces, so that both see the same
//! load; the report gives the medians and the ratio of the medians.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use depot_client::Client;
use depot_os::sanlock::{Area, HostIdState, Lockspace, Sanlock};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::daemon::{call, localfs_domain, Daemon};
use crate::stats::median_f64;
use crate::sys::{fs_type, run_cmd};

/// Size of a fresh `ids` file for the floor: a lockspace of 2000 hosts with
/// 512-byte sectors, as depot formats one (docs/formats.md).
const IDS_BYTES: u64 = 1 << 20;
/// How often repoStats is asked while waiting.
const POLL: Duration = Duration::from_millis(50);
/// Longest wait for one round's host ids.
const ROUND_LIMIT: Duration = Duration::from_secs(300);

#[derive(clap::Args)]
pub struct HostIdsArgs {
    /// Domains in the pool (and lockspaces in the floor).
    #[arg(long, default_value_t = 10)]
    domains: usize,
    /// Rounds, each a floor run and a depotd run.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// depotd's `monitor_interval_s` (a domain's host id is looked at once
    /// per monitor round).
    #[arg(long, default_value_t = 10)]
    monitor_interval_s: u64,
    /// Directory for the storage (default: /var/tmp).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
}

pub async fn run(depotd: &Path, args: HostIdsArgs) -> Result<(), String> {
    if args.domains == 0 || args.rounds == 0 {
        return Err("--domains and --rounds must be at least 1".into());
    }
    if !depot_testkit::is_root() {
        return Err("hostids needs root (it runs a sanlock daemon)".into());
    }
    let _sanlock = depot_testkit::sanlock::SanlockDaemon::start()?;
    let mut floor = Vec::new();
    let mut depot = Vec::new();
    for round in 1..=args.rounds {
        let f = floor_round(&args)?;
        println!(
            "round {round}: sanlock add_lockspace x{} (async, polled): all held after {:.2} s (first {:.2} s)",
            args.domains, f.last, f.first
        );
        floor.push(f);
        let d = depot_round(depotd, &args).await?;
        println!(
            "round {round}: depotd pool connect, {} domains: all acquired after {:.2} s (first {:.2} s)",
            args.domains, d.last, d.first
        );
        depot.push(d);
    }
    let med = |v: &[Times], f: fn(&Times) -> f64| median_f64(v.iter().map(f).collect());
    let (fl, dl) = (med(&floor, |t| t.last), med(&depot, |t| t.last));
    let (ff, df) = (med(&floor, |t| t.first), med(&depot, |t| t.first));
    println!(
        "bench: host ids of {} domains at once ({}, {}), {} rounds, depotd monitor_interval_s {}",
        args.domains,
        args.dir.display(),
        fs_type(&args.dir),
        args.rounds,
        args.monitor_interval_s
    );
    println!("{:44} {:>10} {:>10}", "", "first", "all");
    println!(
        "{:44} {:>8.2} s {:>8.2} s",
        "sanlock add_lockspace (the floor)", ff, fl
    );
    println!(
        "{:44} {:>8.2} s {:>8.2} s",
        "depotd: connect -> repoStats acquired", df, dl
    );
    println!(
        "ratio (floor / depotd, 1 = at the floor): first {:.2}, all {:.2}",
        ff / df,
        fl / dl
    );
    Ok(())
}

/// Seconds from the start of a round to the first and the last host id
/// held.
struct Times {
    first: f64,
    last: f64,
}

/// sanlock alone: N fresh lockspaces formatted (`sanlock direct init`),
/// then host id 1 added in each at once, asynchronously, through the same
/// library calls depotd makes (`add_lockspace` with `SANLK_ADD_ASYNC`),
/// each polled (`inq_lockspace`) every [`POLL`] until held; then removed.
fn floor_round(args: &HostIdsArgs) -> Result<Times, String> {
    let dir = tempfile::tempdir_in(&args.dir).map_err(|e| e.to_string())?;
    let sanlock = Sanlock::load(None, Duration::from_secs(30));
    let spaces: Vec<Lockspace> = (0..args.domains)
        .map(|i| {
            let ids = dir.path().join(format!("ids-{i}"));
            let file = fs::File::create(&ids).map_err(|e| format!("{}: {e}", ids.display()))?;
            file.set_len(IDS_BYTES).map_err(|e| e.to_string())?;
            let name = Uuid::new_v4().to_string();
            run_cmd(Command::new("sanlock").args([
                "direct",
                "init",
                "-s",
                &format!("{name}:0:{}:0", ids.display()),
            ]))?;
            Ok(Lockspace::new(name, 1, Area::new(ids, 0)))
        })
        .collect::<Result<_, String>>()?;
    let start = Instant::now();
    for ls in &spaces {
        sanlock.add_lockspace(ls).map_err(|e| e.to_string())?;
    }
    let mut held: Vec<Option<f64>> = vec![None; spaces.len()];
    while held.iter().any(Option::is_none) {
        if start.elapsed() > ROUND_LIMIT {
            return Err("sanlock did not acquire every host id in time".into());
        }
        for (ls, h) in spaces.iter().zip(held.iter_mut()) {
            if h.is_none()
                && sanlock.inq_lockspace(ls).map_err(|e| e.to_string())? == HostIdState::Held
            {
                *h = Some(start.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(POLL);
    }
    for ls in &spaces {
        sanlock
            .rem_lockspace(ls, false)
            .map_err(|e| e.to_string())?;
    }
    times(&held.into_iter().flatten().collect::<Vec<_>>())
}

/// depotd: N LOCALFS domains in one pool (the first the master, the others
/// attached by `StoragePool.create`'s domainList), then
/// `StoragePool.connect(hostID 1)` with all of them active; the clock runs
/// from the connect call until repoStats says `acquired` for each.
async fn depot_round(depotd: &Path, args: &HostIdsArgs) -> Result<Times, String> {
    let storage = tempfile::tempdir_in(&args.dir).map_err(|e| e.to_string())?;
    let config = format!(
        "[log]\nlevel = \"info\"\n[storage]\nmonitor_interval_s = {}\n[sanlock]\nenabled = true\n",
        args.monitor_interval_s
    );
    let d = Daemon::start(depotd, &config).await?;
    let result = depot_measure(&d, storage.path(), args).await;
    result.map_err(|e| format!("{e}\nthe end of depotd's log:\n{}", d.log_tail(20)))
}

async fn depot_measure(d: &Daemon, storage: &Path, args: &HostIdsArgs) -> Result<Times, String> {
    let c = Client::connect(&d.unix())
        .await
        .map_err(|e| e.to_string())?;
    let mut sds = Vec::new();
    for i in 0..args.domains {
        let dir = storage.join(format!("sd{i}"));
        fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let dir = dir.canonicalize().map_err(|e| e.to_string())?;
        sds.push(localfs_domain(&c, &dir, &format!("hostids-{i}")).await?);
    }
    let sp = Uuid::new_v4().to_string();
    call(
        &c,
        "StoragePool.create",
        json!({"storagepoolID": sp, "name": "bench", "masterSdUUID": sds[0],
            "masterVersion": 1, "domainList": sds[1..]}),
    )
    .await?;
    let active: serde_json::Map<String, Value> =
        sds.iter().map(|sd| (sd.clone(), json!("active"))).collect();
    let start = Instant::now();
    call(
        &c,
        "StoragePool.connect",
        json!({"storagepoolID": sp, "hostID": 1, "scsiKey": sp, "masterSdUUID": sds[0],
            "masterVersion": 1, "domainDict": active}),
    )
    .await?;
    let mut held: Vec<Option<f64>> = vec![None; sds.len()];
    while held.iter().any(Option::is_none) {
        if start.elapsed() > ROUND_LIMIT {
            return Err(format!(
                "{} of {} host ids not acquired after {} s",
                held.iter().filter(|h| h.is_none()).count(),
                sds.len(),
                ROUND_LIMIT.as_secs()
            ));
        }
        let stats = call(&c, "Host.getStorageRepoStats", json!({"domains": sds})).await?;
        let now = start.elapsed().as_secs_f64();
        for (sd, h) in sds.iter().zip(held.iter_mut()) {
            if h.is_none() && stats[sd]["acquired"] == json!(true) {
                *h = Some(now);
            }
        }
        tokio::time::sleep(POLL).await;
    }
    call(
        &c,
        "StoragePool.disconnect",
        json!({"storagepoolID": sp, "hostID": 1}),
    )
    .await?;
    times(&held.into_iter().flatten().collect::<Vec<_>>())
}

fn times(done: &[f64]) -> Result<Times, String> {
    let first = done.iter().copied().reduce(f64::min).ok_or("no host ids")?;
    let last = done.iter().copied().reduce(f64::max).ok_or("no host ids")?;
    Ok(Times { first, last })
}
