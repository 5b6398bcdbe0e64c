//! The helper process: reads requests on stdin, answers on stdout, one at
//! a time, until stdin ends.

use std::io::{self, BufReader, BufWriter};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::ops::Confined;
use super::protocol::{
    self, BatchReply, FrameError, Reply, ReplyHeader, Request, RequestHeader, WireError,
    MAX_BATCH_ITEMS, MAX_DATA_BYTES, PROTOCOL_VERSION,
};
use crate::confine::refusal;

/// The environment variable through which the client passes its pid, so
/// that a helper whose parent died before `PR_SET_PDEATHSIG` took effect
/// notices and exits.
pub const PARENT_PID_ENV: &str = "DEPOT_FSPROC_PARENT";

/// Exit codes of the helper.
const EXIT_PROTOCOL: i32 = 2;
const EXIT_ORPHAN: i32 = 3;

/// The helper's main: dies with its parent, closes inherited descriptors,
/// then serves stdin/stdout until stdin ends. Returns the exit code.
///
/// Nothing else may write to stdout in this process: it carries frames.
pub fn serve_stdio() -> i32 {
    if let Err(code) = prepare_helper_process() {
        return code;
    }
    let mut input = BufReader::new(Awake {
        input: io::stdin().lock(),
    });
    let mut output = BufWriter::new(io::stdout().lock());
    // A stream's shared buffer is the parent's (checked to be depotd by
    // prepare_helper_process).
    let parent = nix::unistd::getppid().as_raw().unsigned_abs();
    match serve_for(&mut input, &mut output, parent) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("depot-fsproc[{}]: {e}", std::process::id());
            EXIT_PROTOCOL
        }
    }
}

/// How long a helper stays awake for the next request after it answered
/// one, before it sleeps in `read(2)`. A sleeping helper costs a wake-up
/// when the request comes, 15-20 µs each on a virtual machine with idle
/// CPUs, and so do the wake-ups of the caller's threads while this CPU
/// idles: staying awake made getInfo through a helper faster than it was
/// in-thread before helpers (docs/performance.md, "The round trip's
/// wake-ups"). The CPU is yielded between polls, so a busy host loses
/// nothing but the polls.
const NEXT_REQUEST_SPIN: Duration = Duration::from_micros(200);

/// The helper's stdin, read after polling it (without sleeping) for up to
/// [`NEXT_REQUEST_SPIN`].
struct Awake<R> {
    input: R,
}

impl<R: io::Read + AsFd> io::Read for Awake<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let until = Instant::now() + NEXT_REQUEST_SPIN;
        while Instant::now() < until {
            let mut fds = [PollFd::new(self.input.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => std::thread::yield_now(),
                // Readable, closed or failed: the read says which.
                _ => break,
            }
        }
        self.input.read(buf)
    }
}

/// What every helper child does first (this one, and depot-storage's
/// copier child): die with its parent, close inherited descriptors. On
/// error, the exit code to exit with (the reason is on stderr).
pub fn prepare_helper_process() -> Result<(), i32> {
    die_with_parent()?;
    close_inherited_fds();
    Ok(())
}

/// SIGKILL when the parent goes away, so that no helper outlives depotd
/// (one stuck in the kernel goes when the kernel lets it).
fn die_with_parent() -> Result<(), i32> {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        eprintln!("depot-fsproc: PR_SET_PDEATHSIG: {e}");
        return Err(EXIT_ORPHAN);
    }
    // The parent may have died before the prctl: then we were reparented.
    let expected = std::env::var(PARENT_PID_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    if let Some(pid) = expected {
        if nix::unistd::getppid().as_raw() != pid {
            eprintln!("depot-fsproc: parent {pid} is gone");
            return Err(EXIT_ORPHAN);
        }
    }
    Ok(())
}

/// Closes every descriptor but stdin, stdout and stderr: depotd's
/// sockets, listening ports and files must not live on in a helper that
/// the kernel may keep stuck long after depotd exited.
fn close_inherited_fds() {
    // SAFETY: close_range only closes descriptors; none above 2 is in use
    // by this process yet (nothing has been opened so far).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc == 0 {
        return;
    }
    // Kernels before 5.9: close what /proc lists.
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd > 2)
                .collect()
        })
        .unwrap_or_default();
    for fd in open {
        let _ = nix::unistd::close(fd);
    }
}

/// The request loop over any reader and writer (tests use it in-process:
/// the descriptors a `stream_share` names are this process's).
pub fn serve(input: &mut impl io::Read, output: &mut impl io::Write) -> Result<(), FrameError> {
    serve_for(input, output, std::process::id())
}

/// [`serve`], where the descriptors a `stream_share` names are those of
/// process `share_owner`.
fn serve_for(
    input: &mut impl io::Read,
    output: &mut impl io::Write,
    share_owner: u32,
) -> Result<(), FrameError> {
    let mut confined = match handshake(input, output)? {
        Some(c) => c,
        None => return Ok(()),
    };
    confined.share_from(share_owner);
    // Every request's data lands in this one aligned buffer: no fresh
    // zeroed megabyte per streamed piece, and an O_DIRECT write uses it
    // as it is (ops.rs, write_at).
    let mut buf = protocol::DataBuf::default();
    loop {
        let (header, len): (RequestHeader, usize) = match protocol::read_frame_into(input, &mut buf)
        {
            Ok(f) => f,
            Err(FrameError::Eof) => return Ok(()),
            Err(e) => return Err(e),
        };
        let result = dispatch(&mut confined, &header.request, buf.data(len));
        let (reply, out_data) = match result {
            Ok((reply, bytes)) => (Ok(reply), bytes),
            Err(e) => (Err(wire_error(&e)), Vec::new()),
        };
        let frame = ReplyHeader {
            id: header.id,
            result: reply,
        };
        match protocol::write_frame(output, &frame, &out_data) {
            // A listing too large for one frame is an error reply, not a
            // broken helper.
            Err(FrameError::HeaderTooLarge { len }) => {
                let too_large = ReplyHeader {
                    id: header.id,
                    result: Err(invalid(format!(
                        "the reply ({len} bytes) is over the frame limit; ask for fewer entries"
                    ))),
                };
                protocol::write_frame(output, &too_large, &[])?;
            }
            other => other?,
        }
    }
}

/// The first frame must be a hello of our version with the root.
fn handshake(
    input: &mut impl io::Read,
    output: &mut impl io::Write,
) -> Result<Option<Confined>, FrameError> {
    let (header, _): (RequestHeader, Vec<u8>) = match protocol::read_frame(input) {
        Ok(f) => f,
        Err(FrameError::Eof) => return Ok(None),
        Err(e) => return Err(e),
    };
    let answer = |result| ReplyHeader {
        id: header.id,
        result,
    };
    let Request::Hello { version, root } = &header.request else {
        let e = invalid("the first request must be hello".into());
        protocol::write_frame(output, &answer(Err(e)), &[])?;
        return Err(FrameError::Io(io::Error::other("no hello")));
    };
    if *version != PROTOCOL_VERSION {
        let e = invalid(format!(
            "protocol version {version} asked, this helper speaks {PROTOCOL_VERSION}"
        ));
        protocol::write_frame(output, &answer(Err(e)), &[])?;
        return Err(FrameError::Io(io::Error::other("version mismatch")));
    }
    match Confined::new(Path::new(root)) {
        Ok(c) => {
            let hello = Reply::Hello {
                version: PROTOCOL_VERSION,
                pid: std::process::id(),
            };
            protocol::write_frame(output, &answer(Ok(hello)), &[])?;
            Ok(Some(c))
        }
        Err(e) => {
            protocol::write_frame(output, &answer(Err(wire_error(&e))), &[])?;
            Err(FrameError::Io(e))
        }
    }
}

pub(super) type Outcome = io::Result<(Reply, Vec<u8>)>;

fn done(r: io::Result<()>) -> Outcome {
    r.map(|()| (Reply::Done, Vec::new()))
}

pub(super) fn dispatch(c: &mut Confined, request: &Request, data: &[u8]) -> Outcome {
    let none = Vec::new;
    match request {
        Request::Hello { .. } => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "hello was already done",
        )),
        Request::Ping => Ok((Reply::Pong, none())),
        Request::Stat { path } => c
            .stat(path, false)
            .map(|stat| (Reply::Stat { stat }, none())),
        Request::Lstat { path } => c
            .stat(path, true)
            .map(|stat| (Reply::Stat { stat }, none())),
        Request::Statvfs { path } => c.statvfs(path).map(|vfs| (Reply::Statvfs { vfs }, none())),
        Request::Exists { path } => c
            .exists(path)
            .map(|exists| (Reply::Exists { exists }, none())),
        Request::Listdir { path, max_entries } => c
            .listdir(path, *max_entries)
            .map(|(entries, truncated)| (Reply::Listing { entries, truncated }, none())),
        Request::Read {
            path,
            offset,
            len,
            direct,
        } => c
            .read(path, *offset, *len, *direct)
            .map(|bytes| (Reply::Data, bytes)),
        Request::Write {
            path,
            offset,
            open,
            fsync,
        } => c
            .write(path, *offset, open, data, *fsync)
            .map(|len| (Reply::Written { len }, none())),
        Request::WriteAtomic { path, mode } => done(c.write_atomic(path, data, *mode)),
        Request::Rename { from, to } => done(c.rename(from, to)),
        Request::Link { from, to } => done(c.link(from, to)),
        Request::Unlink { path, sync_dir } => done(c.unlink(path, false, *sync_dir)),
        Request::Mkdir {
            path,
            mode,
            sync_dir,
        } => done(c.mkdir(path, *mode, *sync_dir)),
        Request::Rmdir { path } => done(c.unlink(path, true, false)),
        Request::Rmtree { path } => done(c.rmtree(path)),
        Request::ZeroRange {
            path,
            offset,
            len,
            punch,
        } => done(c.zero_range(path, *offset, *len, *punch)),
        Request::Wipe {
            path,
            offset,
            len,
            only_nonzero,
        } => c
            .wipe(path, *offset, *len, *only_nonzero)
            .map(|len| (Reply::Written { len }, none())),
        Request::Truncate { path, len } => done(c.truncate(path, *len)),
        Request::Fallocate { path, offset, len } => done(c.fallocate(path, *offset, *len)),
        Request::Chmod { path, mode } => done(c.chmod(path, *mode)),
        Request::Chown { path, uid, gid } => done(c.chown(path, *uid, *gid)),
        Request::Fsync { path } => done(c.fsync(path)),
        Request::FsyncDir { path } => done(c.fsync_dir(path)),
        Request::DirectProbe { path } => c
            .direct_probe(path)
            .map(|probe| (Reply::Probe { probe }, none())),
        Request::StreamOpen { path, open } => c
            .stream_open(path, open)
            .map(|handle| (Reply::Handle { handle }, none())),
        Request::StreamWrite { handle, offset } => c
            .stream_write(*handle, *offset, data)
            .map(|len| (Reply::Written { len }, none())),
        Request::StreamShare { handle, fd, len } => done(c.stream_share(*handle, *fd, *len)),
        Request::StreamWriteShared {
            handle,
            offset,
            at,
            len,
        } => c
            .stream_write_shared(*handle, *offset, *at, *len)
            .map(|len| (Reply::Written { len }, none())),
        Request::StreamClose { handle, fsync } => done(c.stream_close(*handle, *fsync)),
        Request::Batch { items } => batch(c, items),
    }
}

/// The items of a batch in turn, each answered with its reply or its
/// error; refused whole (nothing made) if one may not be in a batch or
/// the reads could return more than a frame carries.
fn batch(c: &mut Confined, items: &[Request]) -> Outcome {
    let refuse = |why: String| Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    if items.len() > MAX_BATCH_ITEMS {
        return refuse(format!(
            "a batch of {} requests; at most {MAX_BATCH_ITEMS}",
            items.len()
        ));
    }
    if let Some(bad) = items.iter().find(|r| !r.batchable()) {
        return refuse(format!("{} cannot be in a batch", bad.op_name()));
    }
    let data_max: u64 = items.iter().map(Request::reply_data_max).sum();
    if data_max > u64::from(MAX_DATA_BYTES) {
        return refuse(format!(
            "the batch's reads could return {data_max} bytes; a frame carries {MAX_DATA_BYTES}"
        ));
    }
    // The items' paths share directories: each is walked once.
    c.with_walks_kept(|c| batch_items(c, items))
}

fn batch_items(c: &mut Confined, items: &[Request]) -> Outcome {
    let mut replies = Vec::with_capacity(items.len());
    let mut data = Vec::new();
    for item in items {
        let reply = match dispatch(c, item, &[]) {
            Ok((reply, bytes)) => {
                // A read returns at most its len: within the check above.
                let data_len = u32::try_from(bytes.len()).expect("checked above");
                data.extend_from_slice(&bytes);
                BatchReply {
                    result: Ok(reply),
                    data_len,
                }
            }
            Err(e) => BatchReply {
                result: Err(wire_error(&e)),
                data_len: 0,
            },
        };
        replies.push(reply);
    }
    Ok((Reply::Batch { items: replies }, data))
}

fn invalid(message: String) -> WireError {
    WireError {
        errno: None,
        refused: false,
        invalid: true,
        message,
    }
}

pub(super) fn wire_error(e: &io::Error) -> WireError {
    match refusal(e) {
        Some(r) => WireError {
            errno: None,
            refused: true,
            invalid: false,
            message: r.reason.clone(),
        },
        None => WireError {
            errno: e.raw_os_error(),
            refused: false,
            invalid: e.kind() == io::ErrorKind::InvalidInput && e.raw_os_error().is_none(),
            message: e.to_string(),
        },
    }
}
