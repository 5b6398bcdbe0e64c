//! The command runner: run one external program, argv only, with a timeout.
//!
//! # Blocking
//!
//! [`CommandRunner::run`] blocks the calling thread until the program exits,
//! times out, or overflows its output limit. Async callers must run it on a
//! dedicated thread (e.g. `tokio::task::spawn_blocking`), never on a reactor
//! thread. Each call also uses two short-lived helper threads to drain the
//! child's stdout and stderr (three when stdin bytes are given), so that a
//! child writing to both pipes can never deadlock against us.
//!
//! # Guarantees
//!
//! * **No shell.** The program gets exactly the argv built with [`Cmd`];
//!   `;`, `$(...)` and friends reach it literally.
//! * **Secrets stay secret.** Args added with [`Cmd::secret_arg`] are passed
//!   to the program but printed as `***` in `Display`, `Debug`, logs and
//!   errors, and their values are replaced by `***` in the captured stderr
//!   (and the stdout tail of a failure) in case the program echoes them.
//!   Env values and stdin bytes are never printed at all.
//! * **Always a timeout.** [`Cmd::new`] requires one. The child runs in its
//!   own process group; on timeout the whole group (grandchildren included)
//!   gets `SIGKILL` and the child is reaped before [`CmdError::Timeout`] is
//!   returned.
//! * **Bounded memory.** stdout is capped ([`Cmd::stdout_limit`], default
//!   [`DEFAULT_STDOUT_LIMIT`]); going over it kills the group and returns
//!   [`CmdError::OutputTooLarge`] rather than handing a truncated document to
//!   a parser. Only the last [`STDERR_TAIL_LIMIT`] bytes of stderr are kept.
//! * **One log line per call**, at `debug` level, with the redacted argv, the
//!   duration and the outcome.
//! * **Parseable output.** [`CommandRunner::new`] sets `LC_ALL=C` (and
//!   `LVM_SUPPRESS_FD_WARNINGS=1`) for every command.

mod capture;
mod cmd;
mod error;
mod runner;

pub use cmd::{Cmd, DEFAULT_STDOUT_LIMIT};
pub use error::{CmdError, ExitStatus};
pub use runner::{CommandRunner, Output, Watch};

/// How much of the end of stderr is kept, for success and error alike.
/// Tools put the actual reason at the end; the start is usually noise.
pub const STDERR_TAIL_LIMIT: usize = 64 * 1024;
