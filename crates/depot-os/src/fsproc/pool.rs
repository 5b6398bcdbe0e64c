//! [`FsPool`]: the helpers of one mount, started on demand, with a
//! deadline on every call, and [`WriteStream`] for long writes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use super::client::{FsProc, HelperCommand};
use super::error::{io_error_of, FsProcError};
use super::ops::Confined;
use super::protocol::{
    DirEntry, DirectProbe, OpenWrite, Reply, Request, StatInfo, VfsInfo, MAX_BATCH_ITEMS,
    MAX_DATA_BYTES, MAX_LIST_ENTRIES,
};
use super::shm::SharedMap;

/// A streamed write of at least this many bytes passes through the
/// stream's shared buffer instead of the pipe (smaller ones, a trailer or
/// a metadata block, cost little either way and make no buffer).
pub const SHARED_MIN: usize = 64 << 10;

/// A stream's shared buffer is a multiple of this (an upload's piece).
const SHARED_UNIT: usize = 1 << 20;

/// The answers of [`FsPool::batch`], one per item: its reply and data, or
/// its error.
pub type BatchAnswers = Vec<Result<(Reply, Vec<u8>), FsProcError>>;

/// How a pool runs its helpers.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub command: HelperCommand,
    /// The mount (or directory) every path is beneath.
    pub root: PathBuf,
    /// The most helpers alive at once, stuck ones included (at least 1).
    pub max_helpers: usize,
    /// The deadline of a call made without one of its own.
    pub timeout: Duration,
}

/// A snapshot of a pool, for the domain monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolHealth {
    pub mount: PathBuf,
    pub max_helpers: usize,
    /// Helpers waiting for a call.
    pub idle: usize,
    /// Helpers in a call (or starting).
    pub busy: usize,
    /// Helpers held by open streamed writes ([`FsPool::open_write`]). They
    /// do not count against `max_helpers`: a call never waits for a
    /// stream's helper, so work that holds a stream and makes calls on the
    /// same mount (an OVF upload) cannot starve itself or others.
    pub streams: usize,
    /// Helpers killed after missing a deadline that have not exited yet
    /// (the kernel holds them in the storage file system).
    pub stuck: usize,
    /// Helpers started since the pool was made.
    pub started: u64,
    /// Calls made since the pool was made (round trips to a helper, or
    /// calls in process; a batch is one): what a verb costs in calls.
    pub calls: u64,
    /// When a call last missed its deadline.
    pub last_timeout: Option<SystemTime>,
    /// Since when calls miss their deadline without one succeeding since;
    /// `None` when the mount is fine.
    pub trouble_since: Option<SystemTime>,
}

impl PoolHealth {
    /// Helpers alive: idle, busy, streaming and stuck.
    pub fn alive(&self) -> usize {
        self.idle + self.busy + self.streams + self.stuck
    }
}

struct PoolState {
    idle: Vec<FsProc>,
    busy: usize,
    streams: usize,
    stuck: usize,
    started: u64,
    calls: u64,
    last_timeout: Option<SystemTime>,
    trouble_since: Option<SystemTime>,
}

struct Shared {
    config: PoolConfig,
    state: Mutex<PoolState>,
    /// Signalled when a helper goes idle or a slot frees up.
    freed: Condvar,
    /// Set for a pool made by [`FsPool::in_process`]: calls run here.
    /// (Or why the root cannot be served: every call answers that.)
    local: Option<Mutex<Result<Confined, String>>>,
}

fn lock(m: &Mutex<PoolState>) -> MutexGuard<'_, PoolState> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The helpers of one mount. Cheap to clone (shared). Blocking: async
/// code calls it from `spawn_blocking`.
#[derive(Clone)]
pub struct FsPool {
    shared: Arc<Shared>,
    /// The deadline of a typed call ([`FsPool::with_timeout`]).
    timeout: Duration,
}

impl std::fmt::Debug for FsPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsPool")
            .field("health", &self.health())
            .finish()
    }
}

impl FsPool {
    pub fn new(mut config: PoolConfig) -> FsPool {
        config.max_helpers = config.max_helpers.max(1);
        FsPool::with_backend(config, None)
    }

    /// A pool whose calls run on the calling thread, one at a time, with
    /// the helpers' own code (the same confinement, the same errors) but
    /// no process, hence no deadline and no protection from a hung mount:
    /// for unit tests, and for a storage layer configured without a helper
    /// command. `root` must be absolute (else every call fails).
    pub fn in_process(root: PathBuf, timeout: Duration) -> FsPool {
        let local = Confined::new(&root).map_err(|e| e.to_string());
        let config = PoolConfig {
            command: HelperCommand::new("(in process)"),
            root,
            max_helpers: 1,
            timeout,
        };
        FsPool::with_backend(config, Some(Mutex::new(local)))
    }

    fn with_backend(config: PoolConfig, local: Option<Mutex<Result<Confined, String>>>) -> FsPool {
        FsPool {
            timeout: config.timeout,
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(PoolState {
                    idle: Vec::new(),
                    busy: 0,
                    streams: 0,
                    stuck: 0,
                    started: 0,
                    calls: 0,
                    last_timeout: None,
                    trouble_since: None,
                }),
                freed: Condvar::new(),
                local,
            }),
        }
    }

    /// Whether calls run in this process ([`FsPool::in_process`]).
    pub fn is_in_process(&self) -> bool {
        self.shared.local.is_some()
    }

    /// The deadline of the typed calls made through this handle.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The same pool (the same helpers, the same health) whose typed calls
    /// have `timeout` as their deadline: a scan over many mounts gives each
    /// a short one.
    pub fn with_timeout(&self, timeout: Duration) -> FsPool {
        FsPool {
            shared: Arc::clone(&self.shared),
            timeout,
        }
    }

    /// One call on the calling thread, with the error a helper would have
    /// answered (the same errno, the same refusal).
    fn call_local(
        &self,
        local: &Mutex<Result<Confined, String>>,
        request: &Request,
        data: &[u8],
    ) -> Result<(Reply, Vec<u8>), FsProcError> {
        let mut confined = local.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = match confined.as_mut() {
            // The limit a frame would have refused.
            Ok(_) if data.len() > MAX_DATA_BYTES as usize => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} bytes of data is over the frame limit", data.len()),
            )),
            Ok(c) => super::server::dispatch(c, request, data),
            Err(reason) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                reason.clone(),
            )),
        };
        outcome.map_err(|e| {
            let path = request.path();
            FsProcError::Io {
                mount: self.shared.config.root.clone(),
                op: request.op_name(),
                path: path.to_owned(),
                source: io_error_of(&super::server::wire_error(&e), path),
            }
        })
    }

    pub fn root(&self) -> &Path {
        &self.shared.config.root
    }

    pub fn health(&self) -> PoolHealth {
        let st = lock(&self.shared.state);
        PoolHealth {
            mount: self.shared.config.root.clone(),
            max_helpers: self.shared.config.max_helpers,
            idle: st.idle.len(),
            busy: st.busy,
            streams: st.streams,
            stuck: st.stuck,
            started: st.started,
            calls: st.calls,
            last_timeout: st.last_timeout,
            trouble_since: st.trouble_since,
        }
    }

    /// The pids of the idle helpers (for tests and diagnostics).
    pub fn idle_pids(&self) -> Vec<u32> {
        lock(&self.shared.state)
            .idle
            .iter()
            .map(FsProc::pid)
            .collect()
    }

    /// Sends one request to an idle helper (starting one if there is room)
    /// and waits up to `timeout`, counted from now, for its reply.
    pub fn call(
        &self,
        request: &Request,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(Reply, Vec<u8>), FsProcError> {
        lock(&self.shared.state).calls += 1;
        if let Some(local) = &self.shared.local {
            return self.call_local(local, request, data);
        }
        let deadline = Instant::now() + timeout;
        let mut proc = self.checkout(request, timeout, deadline)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let result = proc.call(request, data, left.max(Duration::from_millis(1)));
        let result = result.map_err(|e| retime(e, timeout));
        self.shared.finish(proc, result.as_ref().err());
        result
    }

    /// A helper for one call: an idle one, or a new one if fewer than
    /// `max_helpers` are alive; else waits for one until the deadline.
    fn checkout(
        &self,
        request: &Request,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<FsProc, FsProcError> {
        let sh = &self.shared;
        let max = sh.config.max_helpers;
        let mut st = lock(&sh.state);
        loop {
            if st.stuck >= max {
                return Err(FsProcError::Hung {
                    mount: sh.config.root.clone(),
                    stuck: st.stuck,
                });
            }
            if let Some(p) = st.idle.pop() {
                st.busy += 1;
                return Ok(p);
            }
            if st.busy + st.stuck < max {
                st.busy += 1;
                drop(st);
                return self.start_helper(deadline);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FsProcError::Timeout {
                    mount: sh.config.root.clone(),
                    op: request.op_name(),
                    path: request.path().to_owned(),
                    after: timeout,
                });
            }
            st = sh
                .freed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Starts a helper in a slot already counted busy; frees the slot if
    /// it cannot start. The hello does not touch the storage: a helper
    /// starts even when the mount hangs.
    fn start_helper(&self, deadline: Instant) -> Result<FsProc, FsProcError> {
        let cfg = &self.shared.config;
        let left = deadline.saturating_duration_since(Instant::now());
        match FsProc::start(&cfg.command, &cfg.root, left.max(Duration::from_millis(1))) {
            Ok(p) => {
                lock(&self.shared.state).started += 1;
                tracing::debug!(mount = %cfg.root.display(), pid = p.pid(), "helper started");
                Ok(p)
            }
            Err(e) => {
                lock(&self.shared.state).busy -= 1;
                self.shared.freed.notify_one();
                Err(e)
            }
        }
    }

    fn run(&self, request: Request, data: &[u8]) -> Result<(Reply, Vec<u8>), FsProcError> {
        self.call(&request, data, self.timeout)
    }

    fn unexpected(&self, request: &str, reply: Reply) -> FsProcError {
        FsProcError::Protocol {
            mount: self.shared.config.root.clone(),
            op: "reply",
            reason: format!("unexpected reply to {request}: {reply:?}"),
        }
    }

    fn done(&self, request: Request) -> Result<(), FsProcError> {
        let op = request.op_name();
        match self.run(request, &[])? {
            (Reply::Done, _) => Ok(()),
            (other, _) => Err(self.unexpected(op, other)),
        }
    }

    /// Several reads (requests for which [`Request::batchable`] holds) in
    /// one round trip, with one deadline: each item's reply and data, or
    /// its error as the same request alone would have answered it. The
    /// outer error is the call's (no answer, a helper that died, a batch
    /// refused whole: too many items, an item that is not a read, reads
    /// that could return more than a frame carries).
    pub fn batch(&self, items: &[Request]) -> Result<BatchAnswers, FsProcError> {
        let refused = |why: String| FsProcError::Io {
            mount: self.shared.config.root.clone(),
            op: "batch",
            path: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
        };
        // Found before anything is sent: an error the helper survives.
        if items.len() > MAX_BATCH_ITEMS {
            return Err(refused(format!(
                "a batch of {} requests; at most {MAX_BATCH_ITEMS}",
                items.len()
            )));
        }
        if let Some(bad) = items.iter().find(|r| !r.batchable()) {
            return Err(refused(format!("{} cannot be in a batch", bad.op_name())));
        }
        let request = Request::Batch {
            items: items.to_vec(),
        };
        let (replies, data) = match self.run(request, &[])? {
            (Reply::Batch { items }, data) => (items, data),
            (other, _) => return Err(self.unexpected("batch", other)),
        };
        let total: u64 = replies.iter().map(|r| u64::from(r.data_len)).sum();
        if replies.len() != items.len() || total != data.len() as u64 {
            return Err(FsProcError::Protocol {
                mount: self.shared.config.root.clone(),
                op: "batch",
                reason: format!(
                    "{} answers with {total} bytes of data for {} requests with {} bytes",
                    replies.len(),
                    items.len(),
                    data.len()
                ),
            });
        }
        let mut at = 0;
        let answers = items
            .iter()
            .zip(replies)
            .map(|(item, reply)| {
                let end = at + reply.data_len as usize;
                let bytes = data[at..end].to_vec();
                at = end;
                reply
                    .result
                    .map(|r| (r, bytes))
                    .map_err(|w| FsProcError::Io {
                        mount: self.shared.config.root.clone(),
                        op: item.op_name(),
                        path: item.path().to_owned(),
                        source: io_error_of(&w, item.path()),
                    })
            })
            .collect();
        Ok(answers)
    }

    pub fn ping(&self) -> Result<(), FsProcError> {
        match self.run(Request::Ping, &[])? {
            (Reply::Pong, _) => Ok(()),
            (other, _) => Err(self.unexpected("ping", other)),
        }
    }

    /// Metadata of a file or directory (a symlink is refused, never
    /// followed); `""` is the root.
    pub fn stat(&self, path: &str) -> Result<StatInfo, FsProcError> {
        self.stat_request(Request::Stat { path: path.into() })
    }

    /// Metadata of the entry itself, a symlink included.
    pub fn lstat(&self, path: &str) -> Result<StatInfo, FsProcError> {
        self.stat_request(Request::Lstat { path: path.into() })
    }

    fn stat_request(&self, request: Request) -> Result<StatInfo, FsProcError> {
        match self.run(request, &[])? {
            (Reply::Stat { stat }, _) => Ok(stat),
            (other, _) => Err(self.unexpected("stat", other)),
        }
    }

    pub fn statvfs(&self, path: &str) -> Result<VfsInfo, FsProcError> {
        match self.run(Request::Statvfs { path: path.into() }, &[])? {
            (Reply::Statvfs { vfs }, _) => Ok(vfs),
            (other, _) => Err(self.unexpected("statvfs", other)),
        }
    }

    pub fn exists(&self, path: &str) -> Result<bool, FsProcError> {
        match self.run(Request::Exists { path: path.into() }, &[])? {
            (Reply::Exists { exists }, _) => Ok(exists),
            (other, _) => Err(self.unexpected("exists", other)),
        }
    }

    /// The entries of a directory (at most [`MAX_LIST_ENTRIES`]) and
    /// whether there were more.
    pub fn listdir(&self, path: &str) -> Result<(Vec<DirEntry>, bool), FsProcError> {
        let request = Request::Listdir {
            path: path.into(),
            max_entries: MAX_LIST_ENTRIES,
        };
        match self.run(request, &[])? {
            (Reply::Listing { entries, truncated }, _) => Ok((entries, truncated)),
            (other, _) => Err(self.unexpected("listdir", other)),
        }
    }

    /// Up to `len` bytes at `offset` (fewer at end of file).
    pub fn read(
        &self,
        path: &str,
        offset: u64,
        len: u32,
        direct: bool,
    ) -> Result<Vec<u8>, FsProcError> {
        let request = Request::Read {
            path: path.into(),
            offset,
            len,
            direct,
        };
        match self.run(request, &[])? {
            (Reply::Data, bytes) => Ok(bytes),
            (other, _) => Err(self.unexpected("read", other)),
        }
    }

    pub fn write(
        &self,
        path: &str,
        offset: u64,
        data: &[u8],
        open: OpenWrite,
        fsync: bool,
    ) -> Result<u64, FsProcError> {
        let request = Request::Write {
            path: path.into(),
            offset,
            open,
            fsync,
        };
        match self.run(request, data)? {
            (Reply::Written { len }, _) => Ok(len),
            (other, _) => Err(self.unexpected("write", other)),
        }
    }

    pub fn write_atomic(&self, path: &str, data: &[u8], mode: u32) -> Result<(), FsProcError> {
        match self.run(
            Request::WriteAtomic {
                path: path.into(),
                mode,
            },
            data,
        )? {
            (Reply::Done, _) => Ok(()),
            (other, _) => Err(self.unexpected("write_atomic", other)),
        }
    }

    pub fn rename(&self, from: &str, to: &str) -> Result<(), FsProcError> {
        self.done(Request::Rename {
            from: from.into(),
            to: to.into(),
        })
    }

    pub fn link(&self, from: &str, to: &str) -> Result<(), FsProcError> {
        self.done(Request::Link {
            from: from.into(),
            to: to.into(),
        })
    }

    pub fn unlink(&self, path: &str) -> Result<(), FsProcError> {
        self.done(Request::Unlink {
            path: path.into(),
            sync_dir: false,
        })
    }

    /// [`unlink`](Self::unlink), then an fsync of the directory it was in,
    /// in one round trip: the removal is durable when this returns.
    pub fn unlink_synced(&self, path: &str) -> Result<(), FsProcError> {
        self.done(Request::Unlink {
            path: path.into(),
            sync_dir: true,
        })
    }

    pub fn mkdir(&self, path: &str, mode: u32) -> Result<(), FsProcError> {
        self.done(Request::Mkdir {
            path: path.into(),
            mode,
            sync_dir: false,
        })
    }

    /// [`mkdir`](Self::mkdir), then an fsync of the directory it is in,
    /// in one round trip: the new name is durable when this returns.
    pub fn mkdir_synced(&self, path: &str, mode: u32) -> Result<(), FsProcError> {
        self.done(Request::Mkdir {
            path: path.into(),
            mode,
            sync_dir: true,
        })
    }

    pub fn rmdir(&self, path: &str) -> Result<(), FsProcError> {
        self.done(Request::Rmdir { path: path.into() })
    }

    /// Removes a file, or a directory and everything beneath it.
    pub fn rmtree(&self, path: &str) -> Result<(), FsProcError> {
        self.done(Request::Rmtree { path: path.into() })
    }

    /// Zeros a range: deallocated with `punch`, else kept allocated.
    pub fn zero_range(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        punch: bool,
    ) -> Result<(), FsProcError> {
        self.done(Request::ZeroRange {
            path: path.into(),
            offset,
            len,
            punch,
        })
    }

    /// Overwrites `len` bytes at `offset` with zeros written by the
    /// helper with `O_DIRECT` (no data on the pipe); with `only_nonzero`,
    /// 1 MiB units that read as zeros are left alone. `offset` and `len`
    /// aligned, `len` at most [`MAX_WIPE_BYTES`](super::protocol::MAX_WIPE_BYTES).
    /// Returns the bytes written.
    pub fn wipe(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        only_nonzero: bool,
    ) -> Result<u64, FsProcError> {
        let request = Request::Wipe {
            path: path.into(),
            offset,
            len,
            only_nonzero,
        };
        match self.run(request, &[])? {
            (Reply::Written { len }, _) => Ok(len),
            (other, _) => Err(self.unexpected("wipe", other)),
        }
    }

    pub fn truncate(&self, path: &str, len: u64) -> Result<(), FsProcError> {
        self.done(Request::Truncate {
            path: path.into(),
            len,
        })
    }

    pub fn fallocate(&self, path: &str, offset: u64, len: u64) -> Result<(), FsProcError> {
        self.done(Request::Fallocate {
            path: path.into(),
            offset,
            len,
        })
    }

    pub fn chmod(&self, path: &str, mode: u32) -> Result<(), FsProcError> {
        self.done(Request::Chmod {
            path: path.into(),
            mode,
        })
    }

    pub fn chown(&self, path: &str, uid: u32, gid: u32) -> Result<(), FsProcError> {
        self.done(Request::Chown {
            path: path.into(),
            uid,
            gid,
        })
    }

    pub fn fsync(&self, path: &str) -> Result<(), FsProcError> {
        self.done(Request::Fsync { path: path.into() })
    }

    pub fn fsync_dir(&self, path: &str) -> Result<(), FsProcError> {
        self.done(Request::FsyncDir { path: path.into() })
    }

    pub fn direct_probe(&self, path: &str) -> Result<DirectProbe, FsProcError> {
        match self.run(Request::DirectProbe { path: path.into() }, &[])? {
            (Reply::Probe { probe }, _) => Ok(probe),
            (other, _) => Err(self.unexpected("direct_probe", other)),
        }
    }

    /// Opens `path` for a streamed write on a helper of its own, which the
    /// stream holds until it is closed. Each step (open, every chunk,
    /// close) has `step_timeout`: work that keeps making progress runs as
    /// long as it needs, and a step that hangs is noticed after one.
    pub fn open_write(
        &self,
        path: &str,
        open: OpenWrite,
        step_timeout: Duration,
    ) -> Result<WriteStream, FsProcError> {
        let request = Request::StreamOpen {
            path: path.into(),
            open,
        };
        if let Some(local) = &self.shared.local {
            return match self.call_local(local, &request, &[])? {
                (Reply::Handle { handle }, _) => Ok(WriteStream {
                    pool: self.clone(),
                    proc: None,
                    local_open: true,
                    handle,
                    path: path.into(),
                    step_timeout,
                    shared: StreamBuf::None,
                }),
                (other, _) => Err(self.unexpected("stream_open", other)),
            };
        }
        let deadline = Instant::now() + step_timeout;
        let mut proc = self.checkout(&request, step_timeout, deadline)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let result = proc
            .call(&request, &[], left.max(Duration::from_millis(1)))
            .map_err(|e| retime(e, step_timeout));
        match result {
            Ok((Reply::Handle { handle }, _)) => {
                // From a call's slot to a stream's: calls may use it.
                let mut st = lock(&self.shared.state);
                st.busy -= 1;
                st.streams += 1;
                drop(st);
                self.shared.freed.notify_one();
                Ok(WriteStream {
                    pool: self.clone(),
                    proc: Some(proc),
                    local_open: false,
                    handle,
                    path: path.into(),
                    step_timeout,
                    shared: StreamBuf::None,
                })
            }
            Ok((other, _)) => {
                self.shared.finish(proc, None);
                Err(self.unexpected("stream_open", other))
            }
            Err(e) => {
                self.shared.finish(proc, Some(&e));
                Err(e)
            }
        }
    }

    /// [`open_write`](Self::open_write) if a helper is free now (idle, or
    /// room to start one), else `None` at once: for a second stream that
    /// only speeds work up, which must not wait for (or take) the helper
    /// another call needs. (Another caller may take the free helper first;
    /// then this waits as `open_write` does.)
    pub fn try_open_write(
        &self,
        path: &str,
        open: OpenWrite,
        step_timeout: Duration,
    ) -> Result<Option<WriteStream>, FsProcError> {
        if self.shared.local.is_none() {
            let st = lock(&self.shared.state);
            let max = self.shared.config.max_helpers;
            if st.idle.is_empty() && st.busy + st.stuck >= max {
                return Ok(None);
            }
        }
        self.open_write(path, open, step_timeout).map(Some)
    }
}

/// A timeout reports the whole call's deadline, not what was left of it.
fn retime(e: FsProcError, timeout: Duration) -> FsProcError {
    match e {
        FsProcError::Timeout {
            mount, op, path, ..
        } => FsProcError::Timeout {
            mount,
            op,
            path,
            after: timeout,
        },
        other => other,
    }
}

impl Shared {
    /// Takes a stream's helper back: as [`finish`](Self::finish), from the
    /// stream's count.
    fn finish_stream(self: &Arc<Self>, proc: FsProc, error: Option<&FsProcError>) {
        {
            let mut st = lock(&self.state);
            st.streams -= 1;
            st.busy += 1;
        }
        self.finish(proc, error);
    }

    /// Takes a helper back after a call: idle again if it answered,
    /// abandoned (killed, counted stuck until it exits) if it missed its
    /// deadline, dropped if it died or broke the protocol.
    fn finish(self: &Arc<Self>, proc: FsProc, error: Option<&FsProcError>) {
        let mut st = lock(&self.state);
        st.busy -= 1;
        match error {
            None => {
                st.trouble_since = None;
                st.idle.push(proc);
            }
            Some(e) if e.helper_reusable() => st.idle.push(proc),
            Some(FsProcError::Timeout {
                op, path, after, ..
            }) => {
                let now = SystemTime::now();
                st.stuck += 1;
                st.last_timeout = Some(now);
                st.trouble_since.get_or_insert(now);
                tracing::warn!(mount = %self.config.root.display(), op, path, ?after,
                    pid = proc.pid(), stuck = st.stuck, max = self.config.max_helpers,
                    "helper missed its deadline; killed and abandoned");
                drop(st);
                let me = Arc::clone(self);
                proc.abandon(move || {
                    lock(&me.state).stuck -= 1;
                    me.freed.notify_one();
                    tracing::info!(mount = %me.config.root.display(), "an abandoned helper exited");
                });
                return;
            }
            Some(e) => {
                tracing::warn!(mount = %self.config.root.display(), error = %e, "helper dropped");
                drop(st);
                drop(proc);
                self.freed.notify_one();
                return;
            }
        }
        drop(st);
        self.freed.notify_one();
    }
}

/// A streamed write on a helper it holds (see [`FsPool::open_write`]).
/// [`close`](Self::close) reports the errors of `fsync()` and `close()`;
/// dropping it without closing closes without those checks.
///
/// A write of [`SHARED_MIN`] bytes or more is copied into a buffer that
/// the stream shares with its helper (made at the first such write, grown
/// for a larger one) and the request only names it: no data on the pipe
/// (docs/formats.md, `stream_write_shared`). One write is in flight at a
/// time, so the buffer is one piece: it is filled again only after the
/// helper answered for the piece before. A helper that cannot map it
/// (`/proc` closed to it) leaves the stream on the pipe.
pub struct WriteStream {
    pool: FsPool,
    proc: Option<FsProc>,
    /// An in-process pool's stream that is still open.
    local_open: bool,
    handle: u64,
    path: String,
    step_timeout: Duration,
    shared: StreamBuf,
}

/// A stream's shared buffer.
enum StreamBuf {
    /// None made yet.
    None,
    /// Mapped by the helper too.
    Mapped(SharedMap),
    /// The helper could not map one: the pipe it is.
    Refused,
}

impl WriteStream {
    pub fn path(&self) -> &str {
        &self.path
    }

    /// One request of the stream; an error names the stream's file.
    fn step(&mut self, request: Request, data: &[u8]) -> Result<Reply, FsProcError> {
        let path = self.path.clone();
        self.step_on_handle(request, data)
            .map_err(|e| e.naming(&path))
    }

    fn step_on_handle(&mut self, request: Request, data: &[u8]) -> Result<Reply, FsProcError> {
        let op = request.op_name();
        if let Some(local) = &self.pool.shared.local {
            if op == "stream_close" {
                self.local_open = false;
            }
            return self.pool.call_local(local, &request, data).map(|(r, _)| r);
        }
        let Some(mut proc) = self.proc.take() else {
            return Err(FsProcError::Protocol {
                mount: self.pool.root().to_owned(),
                op,
                reason: format!("the streamed write of {} already failed", self.path),
            });
        };
        let result = proc
            .call(&request, data, self.step_timeout)
            .map_err(|e| retime(e, self.step_timeout));
        match result {
            Ok((reply, _)) => {
                self.proc = Some(proc);
                Ok(reply)
            }
            Err(e) if e.helper_reusable() && op != "stream_close" => {
                self.proc = Some(proc);
                Err(e)
            }
            Err(e) => {
                self.pool.shared.finish_stream(proc, Some(&e));
                Err(e)
            }
        }
    }

    /// Writes `data` at `offset` (aligned if the stream is direct).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<u64, FsProcError> {
        let (request, data) = match self.shared_for(data.len())? {
            Some(map) => {
                map.bytes_mut()[..data.len()].copy_from_slice(data);
                let request = Request::StreamWriteShared {
                    handle: self.handle,
                    offset,
                    at: 0,
                    len: u32::try_from(data.len()).expect("within MAX_DATA_BYTES"),
                };
                (request, &[][..])
            }
            None => {
                let request = Request::StreamWrite {
                    handle: self.handle,
                    offset,
                };
                (request, data)
            }
        };
        let op = request.op_name();
        match self.step(request, data)? {
            Reply::Written { len } => Ok(len),
            other => Err(self.pool.unexpected(op, other)),
        }
    }

    /// The shared buffer a write of `len` bytes goes through, made or
    /// grown (and given to the helper) if need be; `None` for the pipe: a
    /// small write, one over the frame limit (refused as it always was),
    /// or a helper that could not map a buffer.
    fn shared_for(&mut self, len: usize) -> Result<Option<&mut SharedMap>, FsProcError> {
        if len < SHARED_MIN || len > MAX_DATA_BYTES as usize {
            return Ok(None);
        }
        let fits = match &self.shared {
            StreamBuf::Refused => return Ok(None),
            StreamBuf::Mapped(m) => m.len() >= len,
            StreamBuf::None => false,
        };
        if !fits {
            let size = (len.div_ceil(SHARED_UNIT) * SHARED_UNIT).min(MAX_DATA_BYTES as usize);
            self.shared = match self.share(size)? {
                Some(map) => StreamBuf::Mapped(map),
                None => StreamBuf::Refused,
            };
        }
        Ok(match &mut self.shared {
            StreamBuf::Mapped(m) => Some(m),
            _ => None,
        })
    }

    /// A new buffer of `size` bytes, mapped by the helper; `None` if it
    /// cannot be made or the helper refused it (the stream goes on, on the
    /// pipe). A helper that does not answer fails the stream.
    fn share(&mut self, size: usize) -> Result<Option<SharedMap>, FsProcError> {
        // The old one goes first (the helper replaces its mapping too).
        self.shared = StreamBuf::None;
        let mut map = match SharedMap::create(size) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(path = %self.path, error = %e,
                    "no shared buffer for a streamed write; its data goes on the pipe");
                return Ok(None);
            }
        };
        let request = Request::StreamShare {
            handle: self.handle,
            fd: map.raw_fd().expect("a new map has its descriptor"),
            len: size as u64,
        };
        match self.step(request, &[]) {
            Ok(Reply::Done) => {
                map.close_fd();
                Ok(Some(map))
            }
            Ok(other) => Err(self.pool.unexpected("stream_share", other)),
            // The helper answered: it cannot open or map it.
            Err(e) if self.proc.is_some() || self.local_open => {
                tracing::debug!(path = %self.path, error = %e,
                    "the helper did not map a shared buffer; the stream's data goes on the pipe");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// fsync (if asked) and close, with the errors of both.
    pub fn close(mut self, fsync: bool) -> Result<(), FsProcError> {
        self.finish(fsync)
    }

    fn finish(&mut self, fsync: bool) -> Result<(), FsProcError> {
        let request = Request::StreamClose {
            handle: self.handle,
            fsync,
        };
        let reply = self.step(request, &[]);
        if let Some(proc) = self.proc.take() {
            self.pool.shared.finish_stream(proc, None);
        }
        match reply? {
            Reply::Done => Ok(()),
            other => Err(self.pool.unexpected("stream_close", other)),
        }
    }
}

impl Drop for WriteStream {
    fn drop(&mut self) {
        if self.proc.is_some() || self.local_open {
            if let Err(e) = self.finish(false) {
                tracing::warn!(path = %self.path, error = %e, "closing a dropped streamed write");
            }
        }
    }
}
