//! [`LineChild`]: a helper child of another kind than the file-system
//! helper, that works on its own (given its job in its arguments) and
//! reports in text lines on its stdout. depot-storage's copier runs this
//! way (`copy::child`), so that the threads reading and writing volume
//! data on a mount are the child's, never depotd's: the parent only waits
//! in `poll(2)` on the pipe, and can always give up (abort, shutdown).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::client::{kill_and_reap, nonblocking, spawn_child, HelperCommand};

/// The longest line a child may write: a report is a few hundred bytes;
/// more is a broken child, not a reason to buffer without end.
pub const MAX_LINE: usize = 64 << 10;

/// A running child and what it wrote that is not a whole line yet.
pub struct LineChild {
    child: Option<Child>,
    stdout: File,
    pending: Vec<u8>,
    eof: bool,
}

impl LineChild {
    /// Starts `cmd` (stdin closed at once: the job is in the arguments).
    pub fn start(cmd: &HelperCommand) -> io::Result<LineChild> {
        let mut child = spawn_child(cmd)?;
        drop(child.stdin.take());
        let stdout = match child.stdout.take() {
            Some(out) => nonblocking(OwnedFd::from(out))?,
            None => return Err(io::Error::other("the child has no stdout pipe")),
        };
        Ok(LineChild {
            child: Some(child),
            stdout,
            pending: Vec::new(),
            eof: false,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The next line (without its newline), waiting at most `wait`:
    /// `Ok(None)` if none came in time, `UnexpectedEof` once the child
    /// closed its stdout with nothing left, `InvalidData` for a line over
    /// [`MAX_LINE`] or not UTF-8.
    pub fn next_line(&mut self, wait: Duration) -> io::Result<Option<String>> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=i).collect();
                line.pop();
                return String::from_utf8(line)
                    .map(Some)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if self.pending.len() > MAX_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the child wrote a line over {MAX_LINE} bytes"),
                ));
            }
            if self.eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the child closed its output",
                ));
            }
            let mut chunk = [0u8; 4096];
            match self.stdout.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    let ms = u16::try_from(left.as_millis() + 1).unwrap_or(u16::MAX);
                    let mut fds = [PollFd::new(self.stdout.as_fd(), PollFlags::POLLIN)];
                    match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits up to `wait` for the child to exit (after its output ended);
    /// one that does not is killed and left to a reaper, and `None` is
    /// returned.
    pub fn finish(mut self, wait: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + wait;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => {
                    kill_and_reap(child);
                    return None;
                }
            }
        }
    }
}

/// A child given up on (abort, an error, the parent's shutdown) is killed
/// and reaped on a thread of its own: if the kernel holds it in a hung
/// mount, only that thread waits.
impl Drop for LineChild {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            kill_and_reap(child);
        }
    }
}
