//! `depotd`: parse the command line, load the config, run the daemon.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

use depot_storage::copy::child::{child_main as copy_child_main, CHILD_ARG as COPY_CHILD_ARG};
use depotd::config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Parser)]
#[command(name = "depotd", version, about = "depot storage agent daemon")]
struct Args {
    /// Config file. Default: /etc/depot/depot.toml (optional in --dev mode).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run without root: state, repository, certificates and the local
    /// socket under --dev-dir, TLS on 127.0.0.1.
    #[arg(long)]
    dev: bool,
    /// The directory dev mode uses.
    #[arg(long, default_value = "depot-dev", requires = "dev")]
    dev_dir: PathBuf,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

/// The argument that makes depotd a file-system helper (see
/// `depot_os::fsproc`): depotd re-executes itself for each helper.
const FSPROC_ARG: &str = "fsproc";

fn main() -> ExitCode {
    // First of all: a helper's stdout is its protocol pipe, so nothing
    // (clap, logging) may write there before the helper serves it.
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(FSPROC_ARG)) {
        std::process::exit(depot_os::fsproc::serve_stdio());
    }
    // The copier child (depot_storage::copy::child): its report is on
    // stdout, so the same rule.
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(COPY_CHILD_ARG)) {
        std::process::exit(copy_child_main(std::env::args_os().skip(2).collect()));
    }
    let args = Args::parse();
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("depotd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        match toml::to_string_pretty(&config) {
            Ok(text) => {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("depotd: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    depotd::logging::init(&config.log);
    one_malloc_arena();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("depotd")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("depotd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(depotd::daemon::run(config));
    // Dropping a runtime waits for every blocking call still running, for
    // ever if one waits on storage that does not answer: after the grace,
    // what has not returned is left behind (issue 15: SIGTERM exits within
    // the grace).
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "depotd failed to start");
            eprintln!("depotd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One malloc arena for the whole daemon, set before any thread starts.
/// glibc gives each thread that allocates its own arena (up to 8 per CPU),
/// and an arena keeps much of what a big request freed: requests answered
/// on different threads then add up, and a peak no longer follows from the
/// request limits. With 8 MiB requests of tiny values (hardening.rs), one
/// arena held depotd's peak growth at 39 MiB in every run; the default
/// ranged from 39 to 57 MiB, and two arenas from 39 to 56 MiB
/// (docs/architecture.md, "Memory"). depotd allocates little per call, so
/// the one lock costs nothing measurable.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; no thread runs yet.
    if unsafe { nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1) } != 1 {
        tracing::warn!("cannot limit malloc to one arena");
    }
}

fn load(args: &Args) -> Result<Config, Box<dyn std::error::Error>> {
    let base = if args.dev {
        let dir = std::path::absolute(&args.dev_dir)?;
        Config::dev(&dir)
    } else {
        Config::production()
    };
    match (&args.config, args.dev) {
        (Some(path), _) => Ok(Config::load(&base, path)?),
        (None, true) => Ok(base),
        (None, false) => Ok(Config::load(&base, DEFAULT_CONFIG_PATH.as_ref())?),
    }
}
