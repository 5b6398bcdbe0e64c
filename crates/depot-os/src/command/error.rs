//! [`CmdError`]: why a command did not succeed, with enough context to log it
//! as one line.

use std::fmt;
use std::io;
use std::time::Duration;

use nix::sys::signal::Signal;

/// How a finished process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited normally with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitStatus {
    pub(crate) fn from_std(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            // Stopped/continued are not reported by wait() without
            // WUNTRACED; keep a value rather than panic if it ever happens.
            (None, None) => ExitStatus::Code(status.into_raw()),
        }
    }

    /// The exit code, if the process exited rather than being killed.
    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Code(c) => Some(c),
            ExitStatus::Signal(_) => None,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => match Signal::try_from(s) {
                Ok(sig) => write!(f, "killed by signal {s} ({})", sig.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// A command that did not succeed. Every variant carries the printable argv
/// (secrets already replaced by `***`), so the error can be logged alone.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The process could not be started (missing binary, bad working dir,
    /// permission denied, ...).
    #[error("cannot start command: {argv}: {source}")]
    Spawn {
        argv: String,
        #[source]
        source: io::Error,
    },

    /// The process outlived its timeout; its process group was killed.
    #[error("command timed out after {timeout:?}: {argv}{}", summary_suffix(.stderr, ""))]
    Timeout {
        argv: String,
        timeout: Duration,
        /// stderr written before the kill (last [`STDERR_TAIL_LIMIT`](crate::STDERR_TAIL_LIMIT) bytes).
        stderr: String,
    },

    /// The process ended with an exit code not in `ok_codes`, or by a signal.
    #[error("command failed: {argv} ({status}){}", summary_suffix(.stderr, .stdout_tail))]
    Failed {
        argv: String,
        status: ExitStatus,
        /// The last few KiB of stdout: some tools report errors there.
        stdout_tail: String,
        stderr: String,
    },

    /// stdout went over the command's limit; its process group was killed.
    #[error("command output too large: {argv} (stdout over {limit} bytes)")]
    OutputTooLarge {
        argv: String,
        limit: usize,
        stderr: String,
    },

    /// The caller's watcher asked to stop; the process group was killed.
    #[error("command aborted: {argv}")]
    Aborted { argv: String, stderr: String },

    /// Waiting for or talking to the started process failed. Rare: it means
    /// the OS refused a wait or a thread; the process was killed.
    #[error("error while running command: {argv}: {source}")]
    Io {
        argv: String,
        #[source]
        source: io::Error,
    },
}

impl CmdError {
    /// The redacted argv of the command.
    pub fn argv(&self) -> &str {
        match self {
            CmdError::Spawn { argv, .. }
            | CmdError::Timeout { argv, .. }
            | CmdError::Failed { argv, .. }
            | CmdError::OutputTooLarge { argv, .. }
            | CmdError::Aborted { argv, .. }
            | CmdError::Io { argv, .. } => argv,
        }
    }

    /// The exit code, if the command ran to completion with a rejected code.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            CmdError::Failed { status, .. } => status.code(),
            _ => None,
        }
    }

    /// The exit status, if the command ran to completion and was rejected.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match self {
            CmdError::Failed { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The captured stderr (its tail), or `""` when there is none.
    pub fn stderr(&self) -> &str {
        match self {
            CmdError::Timeout { stderr, .. }
            | CmdError::Failed { stderr, .. }
            | CmdError::OutputTooLarge { stderr, .. }
            | CmdError::Aborted { stderr, .. } => stderr,
            CmdError::Spawn { .. } | CmdError::Io { .. } => "",
        }
    }

    /// Whether the watcher aborted the command.
    pub fn is_aborted(&self) -> bool {
        matches!(self, CmdError::Aborted { .. })
    }

    /// Whether this is a [`CmdError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, CmdError::Timeout { .. })
    }
}

/// `": first | ... | last"` from stderr (or, if it is empty, from `fallback`,
/// e.g. stdout), or `""` if both are empty. Keeps the Display on one line.
fn summary_suffix(stderr: &str, fallback: &str) -> String {
    const MAX_LINE: usize = 300;
    let pick = if stderr.trim().is_empty() {
        fallback
    } else {
        stderr
    };
    let lines: Vec<&str> = pick
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let shorten = |l: &str| -> String {
        match l.char_indices().nth(MAX_LINE) {
            Some((i, _)) => format!("{}...", &l[..i]),
            None => l.to_owned(),
        }
    };
    match lines.as_slice() {
        [] => String::new(),
        [one] => format!(": {}", shorten(one)),
        [first, last] => format!(": {} | {}", shorten(first), shorten(last)),
        [first, .., last] => format!(": {} | ... | {}", shorten(first), shorten(last)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_reads_as_one_line() {
        let e = CmdError::Failed {
            argv: "lvs --reportformat json".into(),
            status: ExitStatus::Code(5),
            stdout_tail: String::new(),
            stderr: "  Volume group \"vg0\" not found\n  more\n  Cannot process volume group vg0\n"
                .into(),
        };
        assert_eq!(
            e.to_string(),
            "command failed: lvs --reportformat json (exit code 5): \
             Volume group \"vg0\" not found | ... | Cannot process volume group vg0"
        );
        assert_eq!(e.exit_code(), Some(5));
    }

    #[test]
    fn signal_status_names_the_signal() {
        assert_eq!(
            ExitStatus::Signal(9).to_string(),
            "killed by signal 9 (SIGKILL)"
        );
    }

    #[test]
    fn failed_falls_back_to_stdout() {
        let e = CmdError::Failed {
            argv: "x".into(),
            status: ExitStatus::Code(1),
            stdout_tail: "error on stdout\n".into(),
            stderr: "\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "command failed: x (exit code 1): error on stdout"
        );
    }
}
