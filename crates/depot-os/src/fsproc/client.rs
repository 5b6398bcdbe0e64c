//! [`FsProc`]: one helper process, driven over its pipes with a deadline
//! on every call. The calling thread only ever waits in `poll(2)` on the
//! pipes, never in the storage file system.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::error::{frame_reason, io_error_of, FsProcError};
use super::protocol::{self, Reply, ReplyHeader, Request, RequestHeader, PROTOCOL_VERSION};
use super::server::PARENT_PID_ENV;

/// How long a caller waits for a [brief](Request::brief) request's reply
/// by retrying its read before it sleeps in `poll(2)`. A sleeping caller
/// costs a wake-up when the reply comes, and on a virtual machine with an
/// idle CPU that is 15-20 µs each way: more than the call itself
/// (docs/performance.md, "The round trip's wake-ups"). 100 µs covers a
/// healthy getInfo batch; a slower reply costs that much CPU, once.
const REPLY_SPIN: Duration = Duration::from_micros(100);

/// How a helper is started: a program and its arguments. depotd runs
/// itself (`depotd fsproc`); tests run the `depot-fsproc` binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl HelperCommand {
    pub fn new(program: impl Into<PathBuf>) -> HelperCommand {
        HelperCommand {
            program: program.into(),
            args: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> HelperCommand {
        self.args.push(arg.into());
        self
    }
}

/// One running helper for one root. Not shareable: one call at a time.
#[derive(Debug)]
pub struct FsProc {
    child: Option<Child>,
    stdin: File,
    stdout: File,
    root: PathBuf,
    pid: u32,
    next_id: u64,
}

impl FsProc {
    /// Starts a helper for `root` and checks its version, within `timeout`.
    pub fn start(
        cmd: &HelperCommand,
        root: &Path,
        timeout: Duration,
    ) -> Result<FsProc, FsProcError> {
        let spawn_err = |source| FsProcError::Spawn {
            mount: root.to_owned(),
            source,
        };
        let mut child = spawn_child(cmd).map_err(spawn_err)?;
        let pid = child.id();
        let stdin = nonblocking(child.stdin.take().expect("piped").into()).map_err(spawn_err)?;
        let stdout = nonblocking(child.stdout.take().expect("piped").into()).map_err(spawn_err)?;
        let mut proc = FsProc {
            child: Some(child),
            stdin,
            stdout,
            root: root.to_owned(),
            pid,
            next_id: 1,
        };
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            root: root.to_string_lossy().into_owned(),
        };
        match proc.call(&hello, &[], timeout)? {
            (Reply::Hello { version, .. }, _) if version == PROTOCOL_VERSION => Ok(proc),
            (other, _) => Err(proc.protocol(
                "hello",
                format!(
                    "the helper answered {other:?}; this client speaks version {PROTOCOL_VERSION}"
                ),
            )),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Sends `request` with `data` and waits up to `timeout` for the
    /// reply. After any error but [`FsProcError::Io`] the helper is
    /// unusable (mid-frame, dead or stuck): drop or [`abandon`](Self::abandon) it.
    pub fn call(
        &mut self,
        request: &Request,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(Reply, Vec<u8>), FsProcError> {
        let op = request.op_name();
        let deadline = Instant::now() + timeout;
        let id = self.next_id;
        self.next_id += 1;
        let header = RequestHeader {
            id,
            request: request.clone(),
        };
        // Too much data is the caller's mistake, found before anything is
        // sent: an error the helper survives.
        let head = protocol::encode_head(&header, data.len()).map_err(|e| FsProcError::Io {
            mount: self.root.clone(),
            op,
            path: request.path().to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, frame_reason(&e)),
        })?;
        let mount = self.root.clone();
        let timed_out = || FsProcError::Timeout {
            mount: mount.clone(),
            op,
            path: request.path().to_owned(),
            after: timeout,
        };
        // The data from the caller's buffer, not copied into a frame.
        let sent = write_all_by(&self.stdin, &head, deadline)
            .and_then(|()| write_all_by(&self.stdin, data, deadline));
        match sent {
            Ok(()) => {}
            Err(Wait::TimedOut) => return Err(timed_out()),
            Err(Wait::Closed) | Err(Wait::Io(_)) => return Err(self.died(op)),
        }
        let spin = if request.brief() {
            REPLY_SPIN
        } else {
            Duration::ZERO
        };
        let (reply, bytes) = match self.read_reply(deadline, spin) {
            Ok(r) => r,
            Err(Wait::TimedOut) => return Err(timed_out()),
            Err(Wait::Closed) => return Err(self.died(op)),
            Err(Wait::Io(reason)) => return Err(self.protocol(op, reason)),
        };
        if reply.id != id {
            return Err(self.protocol(
                op,
                format!("reply to request {} while {id} was asked", reply.id),
            ));
        }
        match reply.result {
            Ok(r) => Ok((r, bytes)),
            Err(w) => Err(FsProcError::Io {
                mount: self.root.clone(),
                op,
                path: request.path().to_owned(),
                source: io_error_of(&w, request.path()),
            }),
        }
    }

    fn read_reply(
        &mut self,
        deadline: Instant,
        spin: Duration,
    ) -> Result<(ReplyHeader, Vec<u8>), Wait> {
        let mut prefix = [0u8; 8];
        let got = read_spinning(&self.stdout, &mut prefix, Instant::now() + spin)?;
        read_exact_by(&self.stdout, &mut prefix[got..], deadline)?;
        let (header_len, data_len) =
            protocol::parse_prefix(prefix).map_err(|e| Wait::Io(e.to_string()))?;
        let mut header = vec![0u8; header_len];
        read_exact_by(&self.stdout, &mut header, deadline)?;
        let mut data = vec![0u8; data_len];
        read_exact_by(&self.stdout, &mut data, deadline)?;
        let header = protocol::decode(&header).map_err(|e| Wait::Io(e.to_string()))?;
        Ok((header, data))
    }

    /// Kills the helper (SIGKILL) and hands it to a reaper thread;
    /// `on_exit` runs there once the kernel let it go, which for a helper
    /// stuck in a frozen mount may be much later. Never blocks.
    pub fn abandon(mut self, on_exit: impl FnOnce() + Send + 'static) {
        let child = self.child.take().expect("a live FsProc has its child");
        reap(child, on_exit);
    }

    fn died(&mut self, op: &'static str) -> FsProcError {
        // The pipe closed: the exit is normally a moment away.
        let status = self.child.as_mut().and_then(|c| {
            let end = Instant::now() + Duration::from_millis(200);
            loop {
                match c.try_wait() {
                    Ok(Some(s)) => return Some(s.to_string()),
                    Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(5)),
                    _ => return None,
                }
            }
        });
        FsProcError::HelperDied {
            mount: self.root.clone(),
            op,
            status: status.unwrap_or_else(|| "pipe closed, exit status not known yet".into()),
        }
    }

    fn protocol(&self, op: &'static str, reason: String) -> FsProcError {
        FsProcError::Protocol {
            mount: self.root.clone(),
            op,
            reason,
        }
    }
}

impl Drop for FsProc {
    /// A helper not abandoned explicitly is killed and reaped the same way.
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            reap(child, || {});
        }
    }
}

/// Why a deadline read or write stopped.
enum Wait {
    TimedOut,
    /// End of file, or the other end closed (EPIPE, POLLHUP/POLLERR).
    Closed,
    Io(String),
}

pub(super) fn nonblocking(fd: OwnedFd) -> io::Result<File> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(File::from(fd))
}

/// Waits until `file` is ready for `events` or the deadline passes.
fn ready_by(file: &File, events: PollFlags, deadline: Instant) -> Result<(), Wait> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Wait::TimedOut);
        }
        // Rounded up, so that a wait never ends just before the deadline.
        let ms = u16::try_from(left.as_millis() + 1).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(file.as_fd(), events)];
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Wait::Io(format!("poll: {e}"))),
        }
    }
}

fn write_all_by(mut file: &File, mut buf: &[u8], deadline: Instant) -> Result<(), Wait> {
    while !buf.is_empty() {
        match file.write(buf) {
            Ok(0) => return Err(Wait::Closed),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready_by(file, PollFlags::POLLOUT, deadline)?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(Wait::Closed),
            Err(e) => return Err(Wait::Io(e.to_string())),
        }
    }
    Ok(())
}

fn read_exact_by(mut file: &File, buf: &mut [u8], deadline: Instant) -> Result<(), Wait> {
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..]) {
            Ok(0) => return Err(Wait::Closed),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready_by(file, PollFlags::POLLIN, deadline)?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Wait::Io(e.to_string())),
        }
    }
    Ok(())
}

/// Reads what is there into `buf`, retrying while nothing is until
/// `until` (yielding the CPU between tries, never sleeping): the bytes
/// read, 0 if none came by then.
fn read_spinning(mut file: &File, buf: &mut [u8], until: Instant) -> Result<usize, Wait> {
    loop {
        match file.read(buf) {
            Ok(0) => return Err(Wait::Closed),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= until {
                    return Ok(0);
                }
                // Not a busy loop: a helper waiting for this CPU (the
                // others busy) runs now, not after the spin.
                thread::yield_now();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Wait::Io(e.to_string())),
        }
    }
}

type SpawnRequest = (Command, mpsc::SyncSender<io::Result<Child>>);

/// Starts `command` from one long-lived thread. `PR_SET_PDEATHSIG` fires
/// when the *thread* that forked the child exits, not the process: a
/// helper forked from a short-lived thread (a tokio blocking thread that
/// idles out) would be killed with it.
fn spawn(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("fsproc-spawner".into())
            .spawn(move || {
                for (mut command, answer) in rx {
                    let _ = answer.send(command.spawn());
                }
            })
            .expect("cannot start the fsproc spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::sync_channel(1);
    sender
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send((command, tx))
        .map_err(|_| io::Error::other("the fsproc spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the fsproc spawner thread is gone"))?
}

/// Starts `cmd` as a helper child (the file-system helper, and the
/// copier of depot-storage's `copy::child`): stdin and stdout piped,
/// stderr inherited, forked from the same long-lived
/// thread (see [`spawn`]) and told this process's pid, so that the child
/// can [`prepare_helper_process`](super::prepare_helper_process) itself.
pub fn spawn_child(cmd: &HelperCommand) -> io::Result<Child> {
    let mut command = Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .env(PARENT_PID_ENV, std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    spawn(command)
}

/// Abandons a child: SIGKILL now, `waitpid` on a thread of its own (a
/// child stuck in the kernel keeps only that thread waiting).
pub fn kill_and_reap(child: Child) {
    reap(child, || {});
}

/// SIGKILL, then `waitpid` on a thread of its own: a helper stuck in the
/// kernel (D state) keeps only that thread waiting, never a caller.
fn reap(mut child: Child, on_exit: impl FnOnce() + Send + 'static) {
    let pid = child.id();
    let _ = child.kill();
    let spawned = thread::Builder::new()
        .name(format!("fsproc-reap-{pid}"))
        .spawn(move || {
            let _ = child.wait();
            on_exit();
        });
    if let Err(e) = spawned {
        // Left a zombie (or stuck); counted as stuck until the process ends.
        tracing::error!(pid, error = %e, "cannot start a thread to reap a helper");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (nonblocking(r).unwrap(), File::from(w))
    }

    #[test]
    fn a_spinning_read_gives_up_at_its_bound_and_takes_what_is_there() {
        let (r, mut w) = pipe();
        let mut buf = [0u8; 8];
        let until = Instant::now() + Duration::from_millis(20);
        assert!(matches!(read_spinning(&r, &mut buf, until), Ok(0)));
        assert!(Instant::now() >= until, "gave up before its bound");

        w.write_all(b"abc").unwrap();
        let far = Instant::now() + Duration::from_secs(60);
        assert!(matches!(read_spinning(&r, &mut buf, far), Ok(3)));
        assert_eq!(&buf[..3], b"abc");

        drop(w);
        assert!(matches!(
            read_spinning(&r, &mut buf, far),
            Err(Wait::Closed)
        ));
    }
}
