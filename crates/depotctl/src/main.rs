//! depotctl: depot's admin CLI. See `depotctl --help` for commands and exit
//! codes.

mod args;
mod backup;
mod call;
mod connect;
mod copy;
mod dr;
mod events;
mod jobs;
mod ovf;
mod rpc;

use clap::Parser;
use depot_client::ClientError;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use args::{Cli, Cmd};

/// Why a command failed, which decides the exit code.
pub enum Failure {
    /// Bad arguments, or an input or output file that cannot be used:
    /// exit 2.
    Usage(String),
    /// The request cannot be done as asked (the daemon answered, but not
    /// with an error code): exit 1.
    Failed(String),
    /// The call returned an error (exit 1) or the transport failed (exit 3).
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

impl Failure {
    fn report(&self) -> u8 {
        match self {
            Failure::Usage(m) => {
                eprintln!("depotctl: {m}");
                2
            }
            Failure::Failed(m) => {
                eprintln!("depotctl: {m}");
                1
            }
            Failure::Client(e @ ClientError::Io(_)) => {
                eprintln!("depotctl: {e}");
                2
            }
            Failure::Client(ClientError::Rpc(e)) => {
                eprintln!("error {}: {}", e.code, e.message);
                1
            }
            Failure::Client(e @ ClientError::Connect { .. }) => {
                eprintln!("depotctl: {e} (is depotd running?)");
                3
            }
            Failure::Client(e) => {
                eprintln!("depotctl: {e}");
                3
            }
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let ep = connect::resolve(&cli.conn, &connect::Env::real()).map_err(Failure::Usage)?;
    let opts = connect::options(&cli.conn);
    let flow_id = cli.conn.flow_id.as_deref();
    rpc::use_stomp(cli.conn.stomp);
    match cli.cmd {
        Cmd::Ping => call::ping(&ep, opts, flow_id).await,
        Cmd::Call {
            method,
            params,
            json,
        } => call::run(&ep, opts, flow_id, &method, &params, json).await,
        Cmd::Jobs { watch, interval } => {
            let tty = std::io::stdout().is_terminal();
            let interval = Duration::from_secs_f64(interval);
            jobs::run(&ep, opts, flow_id, watch, interval, tty).await
        }
        Cmd::Events { prefixes, count } => events::run(&ep, opts, flow_id, &prefixes, count).await,
        Cmd::Copy {
            src,
            dst,
            generation,
            no_wait,
        } => {
            let tty = std::io::stdout().is_terminal();
            copy::copy(&ep, opts, flow_id, &src, &dst, generation, no_wait, tty).await
        }
        Cmd::Move {
            domain,
            to,
            image,
            copy,
            post_zero,
            force,
            no_wait,
        } => {
            let tty = std::io::stdout().is_terminal();
            copy::move_image(
                &ep, opts, flow_id, domain, to, image, copy, post_zero, force, no_wait, tty,
            )
            .await
        }
        Cmd::Ovf(cmd) => ovf::run(&ep, opts, flow_id, cmd).await,
        Cmd::Backup(cmd) => backup::run(&ep, opts, flow_id, cmd).await,
        Cmd::Dr(cmd) => dr::run(&ep, opts, flow_id, cmd).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("depotctl: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let code = rt.block_on(async {
        tokio::select! {
            r = run(cli) => match r {
                Ok(()) => 0,
                Err(f) => f.report(),
            },
            _ = tokio::signal::ctrl_c() => {
                if let Some(m) = copy::interrupted_message() {
                    eprintln!("\n{m}");
                }
                130
            }
        }
    });
    ExitCode::from(code)
}
