//! Command-line arguments.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Connection: the local socket by default (--socket, else $DEPOT_SOCKET, else
./depot-dev/depotd.sock when it exists, else /run/depot/depotd.sock).
--host switches to mutual TLS; certificates come from --ca/--cert/--key, else
from --pki DIR (default ./depot-dev/state/pki when it exists, else
/etc/pki/depot).

Exit codes:
  0  success
  1  the call returned an error (printed as 'error <code>: <message>')
  2  usage error (bad arguments, unreadable parameter file)
  3  cannot connect, or the transport failed (TLS, HTTP, timeout)
  130  interrupted (Ctrl-C)";

/// depot's admin CLI: calls the daemon's JSON-RPC verbs.
#[derive(Debug, Parser)]
#[command(name = "depotctl", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ConnArgs {
    /// The daemon's local socket.
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Connect over TLS to HOST:PORT (port defaults to 54321) instead of the
    /// local socket.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub host: Option<String>,
    /// CA certificate (PEM) that signed the server's certificate [TLS].
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) [TLS].
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) [TLS].
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Directory to take --ca/--cert/--key from: ca.pem, client.pem,
    /// client-key.pem (dev layout) or certs/cacert.pem, certs/client.pem,
    /// keys/client-key.pem (system layout) [TLS].
    #[arg(long, global = true, value_name = "DIR")]
    pub pki: Option<PathBuf>,
    /// Name to verify the server certificate against (default: the host
    /// part of --host) [TLS].
    #[arg(long, global = true, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Seconds to wait for the connection and for each call.
    #[arg(long, global = true, value_name = "SECS", default_value = "30",
          value_parser = positive_secs)]
    pub timeout: f64,
    /// Flow id sent with each call (ovirtCorrelationId), to find the call in
    /// the daemon's log.
    #[arg(long, global = true, value_name = "ID")]
    pub flow_id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Checks that the daemon answers (Host.ping2); prints "ok".
    Ping,
    /// Calls any verb: `depotctl call Host.getJobs job_ids='["<uuid>"]'`.
    ///
    /// Each parameter is KEY=VALUE. VALUE is taken as JSON when it parses
    /// (5, true, null, ["a"], {"k": 1}, "quoted"), else as a string.
    /// KEY=@FILE reads the JSON value from FILE; KEY=@@text is the string
    /// "@text".
    Call {
        /// The verb, such as Host.getJobs.
        method: String,
        /// Named parameters.
        #[arg(value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Print the result as compact JSON, exactly as received.
        #[arg(long)]
        json: bool,
    },
    /// Lists host jobs with status, progress, and error or result.
    Jobs {
        /// Keep redrawing until no job is pending or running.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes when watching (events, when the daemon
        /// sends them, update sooner).
        #[arg(long, value_name = "SECS", default_value = "2", value_parser = positive_secs)]
        interval: f64,
    },
    /// Prints the events the daemon pushes, one line each, until Ctrl-C.
    Events {
        /// Event name prefixes, such as '|jobs|status|' (all when none).
        prefixes: Vec<String>,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1e6 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let c = Cli::try_parse_from([
            "depotctl",
            "call",
            "Host.getJobs",
            "n=1",
            "--json",
            "--timeout",
            "2.5",
        ])
        .unwrap();
        assert_eq!(c.conn.timeout, 2.5);
        let Cmd::Call {
            method,
            params,
            json,
        } = c.cmd
        else {
            panic!()
        };
        assert_eq!(
            (method.as_str(), params, json),
            ("Host.getJobs", vec!["n=1".into()], true)
        );
        assert!(Cli::try_parse_from(["depotctl", "--timeout", "0", "ping"]).is_err());
        assert!(Cli::try_parse_from(["depotctl"]).is_err());
    }
}
