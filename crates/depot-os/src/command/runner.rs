//! [`CommandRunner`]: spawns a [`Cmd`], enforces its timeout and limits, and
//! turns the result into [`Output`] or [`CmdError`].

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::str::Utf8Error;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::capture::{Capture, Keep};
use super::cmd::Cmd;
use super::error::{CmdError, ExitStatus};
use super::STDERR_TAIL_LIMIT;

/// Longest sleep between checks of the child. Bounds the latency added to a
/// command's run time; a few ms is nothing next to lvm or iscsiadm.
const MAX_POLL: Duration = Duration::from_millis(20);

/// After a kill, how long to wait for the output threads to see EOF before
/// returning with what they have.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// How much of stdout a [`CmdError::Failed`] keeps.
const STDOUT_TAIL: usize = 4 * 1024;

/// What a successful command produced.
#[derive(Clone)]
pub struct Output {
    /// All of stdout (at most the command's `stdout_limit`).
    pub stdout: Vec<u8>,
    /// The last [`STDERR_TAIL_LIMIT`] bytes of stderr, lossily decoded.
    /// Tools often warn here even on success.
    pub stderr: String,
    /// The exit code, one of the command's `ok_codes`.
    pub code: i32,
    /// Wall time from spawn to reap.
    pub duration: Duration,
}

impl Output {
    /// stdout as UTF-8, for parsers that need exact text.
    pub fn stdout_str(&self) -> Result<&str, Utf8Error> {
        std::str::from_utf8(&self.stdout)
    }

    /// stdout as text, invalid UTF-8 replaced.
    pub fn stdout_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stdout)
    }
}

impl fmt::Debug for Output {
    // Printing a 64 MiB Vec<u8> as numbers helps no one: show its size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output")
            .field("code", &self.code)
            .field("duration", &self.duration)
            .field("stdout_len", &self.stdout.len())
            .field("stderr", &self.stderr)
            .finish()
    }
}

/// Watching a long command while it runs: `progress` sees stdout captured
/// so far (every poll, at most every 20 ms), and `abort` is asked whether to
/// stop; when it says yes the process group is killed and the run ends with
/// [`CmdError::Aborted`].
pub struct Watch<'a> {
    pub progress: &'a dyn Fn(&[u8]),
    pub abort: &'a dyn Fn() -> bool,
}

/// Runs commands. Cheap to clone; holds the environment every command gets.
#[derive(Clone)]
pub struct CommandRunner {
    default_env: Arc<Vec<(OsString, OsString)>>,
}

impl Default for CommandRunner {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CommandRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<_> = self.default_env.iter().map(|(k, _)| k).collect();
        f.debug_struct("CommandRunner")
            .field("default_env_keys", &keys)
            .finish()
    }
}

impl CommandRunner {
    /// A runner whose commands always get `LC_ALL=C` (so messages and number
    /// formats are the parseable English ones) and
    /// `LVM_SUPPRESS_FD_WARNINGS=1` (so lvm does not complain on stderr about
    /// descriptors inherited from the agent).
    pub fn new() -> Self {
        Self::without_default_env()
            .with_env("LC_ALL", "C")
            .with_env("LVM_SUPPRESS_FD_WARNINGS", "1")
    }

    /// A runner that adds nothing to the inherited environment.
    pub fn without_default_env() -> Self {
        CommandRunner {
            default_env: Arc::new(Vec::new()),
        }
    }

    /// Adds (or replaces) a variable every command of this runner gets.
    /// A [`Cmd::env`] of the same name still wins.
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        let (key, value) = (key.into(), value.into());
        let env = Arc::make_mut(&mut self.default_env);
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
        self
    }

    /// Runs `cmd` to completion, blocking the calling thread (see the
    /// [module docs](super)). Logs one `debug` line per call.
    pub fn run(&self, cmd: &Cmd) -> Result<Output, CmdError> {
        self.run_watched(cmd, None)
    }

    /// Like [`run`](Self::run), reporting stdout to `watch.progress` while
    /// the command runs and killing it when `watch.abort` says so.
    pub fn run_watched(&self, cmd: &Cmd, watch: Option<&Watch<'_>>) -> Result<Output, CmdError> {
        let argv = cmd.redacted();
        let start = Instant::now();
        let result = self.run_inner(cmd, &argv, start, watch);
        let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok(out) => tracing::debug!(cmd = %argv, elapsed_ms, exit_code = out.code, "command ok"),
            Err(e) => {
                tracing::debug!(cmd = %argv, elapsed_ms, outcome = outcome(e), "command failed")
            }
        }
        result
    }

    fn run_inner(
        &self,
        cmd: &Cmd,
        argv: &str,
        start: Instant,
        watch: Option<&Watch<'_>>,
    ) -> Result<Output, CmdError> {
        let io_err = |source: io::Error| CmdError::Io {
            argv: argv.to_owned(),
            source,
        };
        let (mut guard, stdout, stderr) = self.spawn(cmd, argv)?;

        // A timeout too large for Instant means "no deadline in practice".
        let deadline = start.checked_add(cmd.timeout);
        let end = wait_until(&guard, &stdout, &stderr, deadline, watch).map_err(io_err)?;

        if end != End::Done {
            guard.kill();
        }
        let status = guard.reap().map_err(io_err)?;
        if end != End::Done {
            wait_finished(&stdout, &stderr, Instant::now() + DRAIN_GRACE);
        }
        let stderr_text = {
            let mut text = String::from_utf8_lossy(&stderr.take()).into_owned();
            if stderr.overflowed() {
                text.insert_str(0, "[...]\n");
            }
            // A tool that echoes a secret argument must not put it in
            // our errors or logs.
            if cmd.has_secrets() {
                text = cmd.scrub(&text);
            }
            text
        };
        result(cmd, argv, end, status, stdout.take(), stderr_text, start)
    }

    /// Starts `cmd` in a process group of its own, with its stdout and
    /// stderr captured by threads (stdout up to its limit, the tail of
    /// stderr) and its stdin fed by another.
    fn spawn(
        &self,
        cmd: &Cmd,
        argv: &str,
    ) -> Result<(ChildGuard, Arc<Capture>, Arc<Capture>), CmdError> {
        let io_err = |source: io::Error| CmdError::Io {
            argv: argv.to_owned(),
            source,
        };
        let mut command = Command::new(&cmd.program);
        command
            .args(cmd.args.iter().map(|a| &a.value))
            .envs(self.default_env.iter().map(|(k, v)| (k, v)))
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group, so a timeout can kill grandchildren too.
            .process_group(0);
        if let Some(dir) = &cmd.current_dir {
            command.current_dir(dir);
        }
        let child = command.spawn().map_err(|source| CmdError::Spawn {
            argv: argv.to_owned(),
            source,
        })?;
        // From here on, any early return kills and reaps via the guard.
        let mut guard = ChildGuard::new(child);

        let stdout_pipe = guard.child.stdout.take().ok_or_else(|| missing("stdout"));
        let stderr_pipe = guard.child.stderr.take().ok_or_else(|| missing("stderr"));
        let stdout = Capture::start(
            "depot-cmd-stdout",
            stdout_pipe.map_err(io_err)?,
            Keep::Head,
            cmd.stdout_limit,
        )
        .map_err(io_err)?;
        let stderr = Capture::start(
            "depot-cmd-stderr",
            stderr_pipe.map_err(io_err)?,
            Keep::Tail,
            STDERR_TAIL_LIMIT,
        )
        .map_err(io_err)?;
        if let Some(bytes) = &cmd.stdin {
            let pipe = guard.child.stdin.take().ok_or_else(|| missing("stdin"));
            feed_stdin(pipe.map_err(io_err)?, bytes.clone()).map_err(io_err)?;
        }
        Ok((guard, stdout, stderr))
    }
}

/// The outcome of a run that ended as `end` with `status`: [`Output`] for
/// an accepted exit code, the matching [`CmdError`] otherwise.
fn result(
    cmd: &Cmd,
    argv: &str,
    end: End,
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr_text: String,
    start: Instant,
) -> Result<Output, CmdError> {
    match end {
        End::Aborted => Err(CmdError::Aborted {
            argv: argv.to_owned(),
            stderr: stderr_text,
        }),
        End::TimedOut => Err(CmdError::Timeout {
            argv: argv.to_owned(),
            timeout: cmd.timeout,
            stderr: stderr_text,
        }),
        End::TooLarge => Err(CmdError::OutputTooLarge {
            argv: argv.to_owned(),
            limit: cmd.stdout_limit,
            stderr: stderr_text,
        }),
        End::Done => match status {
            ExitStatus::Code(code) if cmd.ok_codes.contains(&code) => Ok(Output {
                stdout,
                stderr: stderr_text,
                code,
                duration: start.elapsed(),
            }),
            _ => Err(CmdError::Failed {
                argv: argv.to_owned(),
                status,
                stdout_tail: cmd.scrub(&tail_lossy(&stdout, STDOUT_TAIL)),
                stderr: stderr_text,
            }),
        },
    }
}

/// How the wait for a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The child exited and both pipes reached EOF.
    Done,
    TimedOut,
    TooLarge,
    /// The watcher asked to stop.
    Aborted,
}

/// Polls until the child has exited and its pipes are drained, stdout went
/// over its limit, or the deadline passed.
///
/// The child is observed with `WNOWAIT`, i.e. left unreaped: as long as it is
/// a zombie its pid cannot be reused, so a later `killpg(pid)` can only ever
/// hit our own process group.
fn wait_until(
    guard: &ChildGuard,
    stdout: &Capture,
    stderr: &Capture,
    deadline: Option<Instant>,
    watch: Option<&Watch<'_>>,
) -> io::Result<End> {
    let mut exited = false;
    let mut pause = Duration::from_millis(1);
    loop {
        if !exited {
            exited = has_exited(guard.pid)?;
        }
        if let Some(w) = watch {
            stdout.peek(|bytes| (w.progress)(bytes));
            if !exited && (w.abort)() {
                return Ok(End::Aborted);
            }
        }
        if stdout.overflowed() {
            return Ok(End::TooLarge);
        }
        // Pipes can outlive the child (a grandchild holding them), so both
        // conditions are needed; the timeout covers the wait for either.
        if exited && stdout.is_finished() && stderr.is_finished() {
            return Ok(End::Done);
        }
        let left = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => MAX_POLL,
        };
        if left.is_zero() {
            return Ok(End::TimedOut);
        }
        // Sleep until the child exits (a pidfd wakes us at once) or the
        // pause is over, whichever comes first: a command that ends in 10 ms
        // is seen at 10 ms, not at the next backoff tick.
        let nap = pause.min(left);
        if exited || !guard.wait_exit(nap) {
            thread::sleep(nap);
        }
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// Whether `pid` has terminated, without reaping it.
fn has_exited(pid: Pid) -> io::Result<bool> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        match waitid(Id::Pid(pid), flags) {
            Ok(WaitStatus::StillAlive) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits (briefly) for the output threads after a kill. If a pipe is still
/// held open by a process outside our group, we stop waiting and keep what
/// was captured; that thread ends on its own when the pipe closes.
fn wait_finished(stdout: &Capture, stderr: &Capture, until: Instant) {
    while !(stdout.is_finished() && stderr.is_finished()) && Instant::now() < until {
        thread::sleep(Duration::from_millis(5));
    }
}

/// Writes stdin on its own thread: a child that writes output before reading
/// all its input would otherwise deadlock against us. Not joined: it ends
/// when the bytes are written or the child closes the pipe (EPIPE, which
/// is ignored since the child is free not to read everything).
fn feed_stdin(mut pipe: ChildStdin, bytes: Vec<u8>) -> io::Result<()> {
    thread::Builder::new()
        .name("depot-cmd-stdin".into())
        .spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
        .map(drop)
}

fn missing(which: &str) -> io::Error {
    io::Error::other(format!("child {which} pipe was not created"))
}

/// The last `max` bytes of `bytes` as text.
fn tail_lossy(bytes: &[u8], max: usize) -> String {
    let from = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

fn outcome(e: &CmdError) -> String {
    match e {
        CmdError::Spawn { source, .. } => format!("spawn error: {source}"),
        CmdError::Timeout { timeout, .. } => format!("timeout after {timeout:?}"),
        CmdError::Failed { status, .. } => status.to_string(),
        CmdError::OutputTooLarge { limit, .. } => format!("stdout over {limit} bytes"),
        CmdError::Io { source, .. } => format!("io error: {source}"),
        CmdError::Aborted { .. } => "aborted".to_string(),
    }
}

/// Owns a spawned child; kills its group and reaps it if dropped before
/// [`ChildGuard::reap`], so no early return or panic leaves a process behind.
struct ChildGuard {
    child: Child,
    pid: Pid,
    pidfd: Option<std::os::fd::OwnedFd>,
    reaped: bool,
}

impl ChildGuard {
    fn new(child: Child) -> Self {
        // Linux pids fit in i32 (pid_max <= 2^22).
        let pid = Pid::from_raw(child.id() as i32);
        // A pidfd becomes readable when the child exits; without one (an
        // old kernel) the wait falls back to sleeping.
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        let pidfd = (fd >= 0).then(|| {
            // SAFETY: the kernel just gave us this fd; we own it.
            unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
        });
        ChildGuard {
            child,
            pid,
            pidfd,
            reaped: false,
        }
    }

    /// Waits up to `timeout` for the child to exit. Returns false when no
    /// pidfd is available (the caller sleeps instead).
    fn wait_exit(&self, timeout: Duration) -> bool {
        use std::os::fd::AsRawFd;
        let Some(fd) = &self.pidfd else {
            return false;
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd, its count, a timeout.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        true
    }

    /// SIGKILLs the child's whole process group. Only valid before reaping.
    fn kill(&mut self) {
        debug_assert!(!self.reaped);
        // ESRCH: the group is already gone. Anything else is unexpected, but
        // still worth a direct kill of the child itself below.
        if let Err(e) = killpg(self.pid, Signal::SIGKILL) {
            if e != Errno::ESRCH {
                tracing::warn!(pid = self.pid.as_raw(), error = %e, "killpg failed");
            }
        }
        // In case the child moved itself to another group.
        let _ = self.child.kill();
    }

    fn reap(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait()?;
        self.reaped = true;
        Ok(ExitStatus::from_std(status))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let _ = self.child.wait();
        }
    }
}
