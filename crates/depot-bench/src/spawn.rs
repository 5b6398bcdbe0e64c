//! The command runner's own cost: `true` run many times through
//! `depot_os::CommandRunner` (spawn, capture threads, wait, reap) against
//! the floor, `std::process::Command::status()` of the same program.
//!
//! Wall time and CPU time (this process's and its reaped children's,
//! user + system): on a machine shared with other work the CPU time moves
//! less than the wall time.
//!
//! No depotd: this measures depot-os alone, so two builds of the runner
//! (before and after a change) can be compared by running two builds of
//! this benchmark one after the other, interleaved.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use depot_os::{Cmd, CommandRunner};

use crate::stats::median_f64;

#[derive(clap::Args)]
pub struct SpawnArgs {
    /// Commands per round.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Rounds; the runner and the floor alternate within a round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The program to run (without arguments).
    #[arg(long, default_value = "true")]
    program: String,
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Wall and CPU seconds for `count` calls of `f`.
fn timed(count: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<(f64, f64), String> {
    let cpu = cpu_seconds();
    let t = Instant::now();
    for _ in 0..count {
        f()?;
    }
    Ok((t.elapsed().as_secs_f64(), cpu_seconds() - cpu))
}

/// CPU time (user + system) of this process and of the children it
/// reaped, in seconds (clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12) + ticks(13) + ticks(14)) / 100.0
}

pub fn run(args: SpawnArgs) -> Result<(), String> {
    let runner = CommandRunner::new();
    let cmd = Cmd::new(&args.program, TIMEOUT);
    let through_runner = || runner.run(&cmd).map(drop).map_err(|e| e.to_string());
    let floor = || {
        let status = Command::new(&args.program)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        status.success().then_some(()).ok_or(status.to_string())
    };
    let (mut runs, mut floors) = (Vec::new(), Vec::new());
    let (mut run_cpu, mut floor_cpu) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let (r, rc) = timed(args.count, through_runner)?;
        let (f, fc) = timed(args.count, floor)?;
        println!(
            "round {round}: runner {r:.3} s (CPU {rc:.2} s), floor {f:.3} s (CPU {fc:.2} s) for {} x {}",
            args.count, args.program
        );
        runs.push(r);
        floors.push(f);
        run_cpu.push(rc);
        floor_cpu.push(fc);
    }
    let (r, f) = (median_f64(runs), median_f64(floors));
    let (rc, fc) = (median_f64(run_cpu), median_f64(floor_cpu));
    let per = |s: f64| s * 1e6 / args.count as f64;
    println!(
        "median: runner {r:.3} s ({:.0} us per command), floor {f:.3} s ({:.0} us), runner / floor = {:.2}",
        per(r),
        per(f),
        r / f
    );
    println!(
        "median CPU: runner {:.0} us per command, floor {:.0} us, runner / floor = {:.2}",
        per(rc),
        per(fc),
        rc / fc.max(0.01)
    );
    Ok(())
}
