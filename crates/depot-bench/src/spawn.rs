//! The command runner's own cost: `true` run many times through
//! `depot_os::CommandRunner` (spawn, capture threads, wait, reap) against
//! the floor, `std::process::Command::status()` of the same program.
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

/// Seconds for `count` calls of `f`.
fn timed(count: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    let t = Instant::now();
    for _ in 0..count {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64())
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
    for round in 1..=args.rounds {
        let r = timed(args.count, through_runner)?;
        let f = timed(args.count, floor)?;
        println!(
            "round {round}: runner {r:.3} s, floor {f:.3} s for {} x {}",
            args.count, args.program
        );
        runs.push(r);
        floors.push(f);
    }
    let (r, f) = (median_f64(runs), median_f64(floors));
    println!(
        "median: runner {r:.3} s ({:.0} us per command), floor {f:.3} s ({:.0} us), runner / floor = {:.2}",
        r * 1e6 / args.count as f64,
        f * 1e6 / args.count as f64,
        r / f
    );
    Ok(())
}
