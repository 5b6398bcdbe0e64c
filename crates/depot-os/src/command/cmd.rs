//! [`Cmd`]: the description of one program invocation.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default cap on captured stdout. Large enough for `lvs` JSON on a host with
/// thousands of volumes, small enough that a runaway child cannot eat memory.
pub const DEFAULT_STDOUT_LIMIT: usize = 64 * 1024 * 1024;

/// What redacted values print as.
const REDACTED: &str = "***";

/// One argument, and whether it may be printed.
#[derive(Clone)]
pub(crate) struct Arg {
    pub(crate) value: OsString,
    pub(crate) secret: bool,
}

/// A program invocation: argv (never a shell line), env, stdin, working dir,
/// timeout, accepted exit codes and stdout cap.
///
/// Built by value:
///
/// ```
/// # use std::time::Duration;
/// # use depot_os::Cmd;
/// let cmd = Cmd::new("iscsiadm", Duration::from_secs(30))
///     .args(["-m", "node", "-o", "update", "-n", "node.session.auth.password", "-v"])
///     .secret_arg("s3cret")
///     .ok_codes(&[0, 15]);
/// assert!(!cmd.to_string().contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct Cmd {
    pub(crate) program: OsString,
    pub(crate) args: Vec<Arg>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) stdin: Option<Vec<u8>>,
    pub(crate) current_dir: Option<PathBuf>,
    pub(crate) timeout: Duration,
    pub(crate) ok_codes: Vec<i32>,
    pub(crate) stdout_limit: usize,
}

impl Cmd {
    /// A command running `program` (looked up in `PATH` if it has no `/`).
    ///
    /// The timeout is required on purpose: an OS call without one can hang a
    /// storage operation forever (dead NFS server, stuck multipath device).
    pub fn new(program: impl Into<OsString>, timeout: Duration) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            current_dir: None,
            timeout,
            ok_codes: vec![0],
            stdout_limit: DEFAULT_STDOUT_LIMIT,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(Arg {
            value: arg.into(),
            secret: false,
        });
        self
    }

    /// Appends several arguments.
    pub fn args<I>(mut self, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(|a| Arg {
            value: a.into(),
            secret: false,
        }));
        self
    }

    /// Appends an argument that is passed to the program but shown as `***`
    /// everywhere depot prints the command (passwords, keys).
    pub fn secret_arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(Arg {
            value: arg.into(),
            secret: true,
        });
        self
    }

    /// Sets an environment variable for this command, on top of the
    /// inherited environment and the runner's defaults (this one wins).
    /// Values are never printed, since env is a common way to pass secrets.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Bytes written to the program's stdin, which is then closed.
    /// Without this, stdin is `/dev/null` so a program never waits for input.
    /// The bytes are never printed.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Runs the program in `dir` instead of the caller's working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Exit codes that count as success (default `[0]`). This replaces the
    /// set, so include 0 if it is still wanted: `.ok_codes(&[0, 15])`.
    /// [`Output::code`](crate::Output::code) tells which one happened.
    pub fn ok_codes(mut self, codes: &[i32]) -> Self {
        self.ok_codes = codes.to_vec();
        self
    }

    /// Maximum bytes of stdout accepted (default [`DEFAULT_STDOUT_LIMIT`]).
    /// More than that is an error, not a silent truncation.
    pub fn stdout_limit(mut self, bytes: usize) -> Self {
        self.stdout_limit = bytes;
        self
    }

    /// The program, as given to [`Cmd::new`].
    pub fn program(&self) -> &OsStr {
        &self.program
    }

    /// The timeout, as given to [`Cmd::new`].
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The working directory, if one was set.
    pub fn get_current_dir(&self) -> Option<&Path> {
        self.current_dir.as_deref()
    }

    /// The argv as one printable line, secrets replaced by `***`.
    /// Same as `to_string()`; this is what logs and errors show.
    pub fn redacted(&self) -> String {
        self.to_string()
    }

    /// `text` with every secret argument's value replaced by `***`. Tools
    /// sometimes echo an argument back in a message ("invalid value
    /// 'hunter2'"), so captured stderr and stdout tails go through this
    /// before they reach an error or a log.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for arg in self.args.iter().filter(|a| a.secret) {
            let secret = arg.value.to_string_lossy();
            if !secret.is_empty() && out.contains(secret.as_ref()) {
                out = out.replace(secret.as_ref(), REDACTED);
            }
        }
        out
    }

    /// Whether any argument is secret (then captured output is scrubbed).
    pub(crate) fn has_secrets(&self) -> bool {
        self.args.iter().any(|a| a.secret)
    }
}

impl fmt::Display for Cmd {
    /// Shell-like quoting so the line reads unambiguously; it is for humans
    /// only and is never executed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_quoted(f, &self.program)?;
        for arg in &self.args {
            f.write_str(" ")?;
            if arg.secret {
                f.write_str(REDACTED)?;
            } else {
                write_quoted(f, &arg.value)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Env keys are useful to see, values may be secrets; stdin likewise
        // shows only its size.
        let env_keys: Vec<_> = self.env.iter().map(|(k, _)| k).collect();
        f.debug_struct("Cmd")
            .field("argv", &self.to_string())
            .field("env_keys", &env_keys)
            .field("stdin_len", &self.stdin.as_ref().map(Vec::len))
            .field("current_dir", &self.current_dir)
            .field("timeout", &self.timeout)
            .field("ok_codes", &self.ok_codes)
            .field("stdout_limit", &self.stdout_limit)
            .finish()
    }
}

/// Writes `s` bare if it only has harmless characters, else single-quoted.
fn write_quoted(f: &mut fmt::Formatter<'_>, s: &OsStr) -> fmt::Result {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-+=.,/:@%".contains(c));
    if plain {
        f.write_str(&s)
    } else {
        write!(f, "'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_and_redacts() {
        let cmd = Cmd::new("lvs", Duration::from_secs(1))
            .args(["--reportformat", "json", "a b", "", "it's"])
            .secret_arg("hunter2");
        assert_eq!(
            cmd.to_string(),
            r"lvs --reportformat json 'a b' '' 'it'\''s' ***"
        );
        let dbg = format!("{cmd:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn scrub_replaces_echoed_secrets() {
        let cmd = Cmd::new("iscsiadm", Duration::from_secs(1))
            .args(["-n", "node.session.auth.password", "-v"])
            .secret_arg("hunter2")
            .secret_arg("");
        assert!(cmd.has_secrets());
        assert_eq!(
            cmd.scrub("iscsiadm: bad value hunter2 (hunter2)"),
            "iscsiadm: bad value *** (***)"
        );
        assert_eq!(cmd.scrub("nothing here"), "nothing here");
        let plain = Cmd::new("x", Duration::from_secs(1)).arg("hunter2");
        assert!(!plain.has_secrets());
        assert_eq!(plain.scrub("hunter2"), "hunter2");
    }

    #[test]
    fn debug_hides_env_values_and_stdin() {
        let cmd = Cmd::new("x", Duration::from_secs(1))
            .env("PASSWORD", "hunter2")
            .stdin(b"hunter2".to_vec());
        let dbg = format!("{cmd:?}");
        assert!(dbg.contains("PASSWORD"), "{dbg}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }
}
