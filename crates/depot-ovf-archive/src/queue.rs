//! The retry queue of OVF backup records (docs/formats.md, "OVF backup
//! queue"): one file per record and provider, in the provider's
//! directory under the state directory, written before the provider is
//! tried and removed once it has the record. A provider that fails keeps
//! its files; its worker tries them again, oldest first, with a backoff,
//! also after a restart (the files are what survives).
//!
//! A file is written to a temporary name, synced, renamed into place and
//! the directory synced: a crash leaves either no file or a whole one (a
//! leftover temporary is removed at open). A file from a newer depot is
//! left where it is and skipped; one that cannot be read is renamed to
//! `.bad` and skipped.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Provider, UploadRecord};

/// The `format` of a queue file.
pub const FORMAT: &str = "depot-ovf-backup-queue";
/// The version this depot writes and reads.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("OVF backup queue {}: {op}: {source}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("OVF backup queue file {}: version {found} is newer than this depot's ({VERSION}); left as it is", .path.display())]
    Newer { path: PathBuf, found: u32 },
    #[error("OVF backup queue file {}: {reason}", .path.display())]
    Bad { path: PathBuf, reason: String },
}

#[derive(Serialize)]
struct FileOut<'a> {
    format: &'static str,
    version: u32,
    provider: &'a str,
    record: &'a UploadRecord,
}

#[derive(Deserialize)]
struct Header {
    format: String,
    version: u32,
}

#[derive(Deserialize)]
struct FileIn {
    record: UploadRecord,
}

/// The queue's directory (`<state_dir>/ovf-backup/queue`).
pub struct RetryQueue {
    dir: PathBuf,
    next: AtomicU64,
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> QueueError + 'a {
    move |source| QueueError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

impl RetryQueue {
    /// Opens the queue in `dir` (created, mode 0700, when missing), and
    /// removes the temporaries a crash left.
    pub fn open(dir: &Path) -> Result<RetryQueue, QueueError> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir, "create"))?;
        let mut max = 0;
        for sub in read_dir(dir)? {
            if !sub.is_dir() {
                continue;
            }
            for f in read_dir(&sub)? {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.ends_with(".tmp") {
                    let _ = fs::remove_file(&f);
                } else if let Some(seq) = seq_of(&f) {
                    max = max.max(seq);
                }
            }
        }
        Ok(RetryQueue {
            dir: dir.to_path_buf(),
            next: AtomicU64::new(max + 1),
        })
    }

    fn provider_dir(&self, provider: &str) -> PathBuf {
        self.dir.join(provider)
    }

    /// Persists `rec` for `provider`; durable when this returns.
    pub fn push(&self, provider: &str, rec: &UploadRecord) -> Result<PathBuf, QueueError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.provider_dir(provider);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir, "create"))?;
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        let path = dir.join(format!("{seq:016}.json"));
        let tmp = dir.join(format!("{seq:016}.json.tmp"));
        let body = serde_json::to_vec(&FileOut {
            format: FORMAT,
            version: VERSION,
            provider,
            record: rec,
        })
        .map_err(|e| QueueError::Bad {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        {
            let mut f = fs::File::create(&tmp).map_err(io_err(&tmp, "create"))?;
            f.write_all(&body).map_err(io_err(&tmp, "write"))?;
            f.sync_all().map_err(io_err(&tmp, "fsync"))?;
        }
        fs::rename(&tmp, &path).map_err(io_err(&path, "rename"))?;
        sync_dir(&dir)?;
        Ok(path)
    }

    /// The files waiting for `provider`, oldest first.
    pub fn pending(&self, provider: &str) -> Result<Vec<PathBuf>, QueueError> {
        let dir = self.provider_dir(provider);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut files: Vec<(u64, PathBuf)> = read_dir(&dir)?
            .into_iter()
            .filter_map(|p| seq_of(&p).map(|s| (s, p)))
            .collect();
        files.sort();
        Ok(files.into_iter().map(|(_, p)| p).collect())
    }

    /// Reads one queue file.
    pub fn load(path: &Path) -> Result<UploadRecord, QueueError> {
        let bytes = fs::read(path).map_err(io_err(path, "read"))?;
        let bad = |reason: String| QueueError::Bad {
            path: path.to_path_buf(),
            reason,
        };
        let h: Header = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if h.format != FORMAT {
            return Err(bad(format!("format {:?}, not {FORMAT:?}", h.format)));
        }
        if h.version > VERSION {
            return Err(QueueError::Newer {
                path: path.to_path_buf(),
                found: h.version,
            });
        }
        let f: FileIn = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        Ok(f.record)
    }

    /// The provider has the record: its file goes.
    pub fn done(path: &Path) -> Result<(), QueueError> {
        fs::remove_file(path).map_err(io_err(path, "remove"))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// A record the provider will never take (or a file that cannot be
    /// read) is kept, renamed to `<name>.<suffix>`, out of the way.
    pub fn set_aside(path: &Path, suffix: &str) -> Result<(), QueueError> {
        let mut to = path.as_os_str().to_owned();
        to.push(format!(".{suffix}"));
        fs::rename(path, &to).map_err(io_err(path, "rename"))
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, QueueError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir, "read directory"))? {
        out.push(e.map_err(io_err(dir, "read directory"))?.path());
    }
    Ok(out)
}

/// The sequence number of a queue file (`<seq>.json`), None for others.
fn seq_of(p: &Path) -> Option<u64> {
    p.file_name()?.to_str()?.strip_suffix(".json")?.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync"))
}

/// How a worker waits between tries of a failing provider.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// One provider's worker thread: hands it the queue's records, oldest
/// first, and waits (with backoff) while it fails. Dropping the worker
/// stops the thread after its current try.
pub struct Worker {
    wake: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn spawn(
        queue: Arc<RetryQueue>,
        provider: Arc<dyn Provider>,
        backoff: Backoff,
    ) -> io::Result<Worker> {
        let (wake, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("ovf-backup-{}", provider.name()))
            .spawn(move || run(&queue, provider.as_ref(), backoff, &rx))?;
        Ok(Worker {
            wake,
            thread: Some(thread),
        })
    }

    /// New records are in the queue.
    pub fn wake(&self) {
        let _ = self.wake.send(());
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread's wait; it is not joined
        // (a provider call in flight is bounded by its own timeouts).
        let (dead, _) = mpsc::channel();
        self.wake = dead;
        self.thread.take();
    }
}

fn run(queue: &RetryQueue, provider: &dyn Provider, backoff: Backoff, wake: &mpsc::Receiver<()>) {
    let name = provider.name().to_string();
    let mut delay = backoff.first;
    let mut last_error: Option<String> = None;
    loop {
        let failed = match drain(queue, provider) {
            Ok(()) => {
                if last_error.take().is_some() {
                    tracing::info!(provider = %name, "OVF backup provider caught up");
                }
                delay = backoff.first;
                false
            }
            Err(e) => {
                // Logged once per change, not at every try.
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(provider = %name, error = %e,
                        "OVF backup provider failed; its records stay queued");
                    last_error = Some(e);
                }
                true
            }
        };
        // A new record wakes an idle worker at once; it does not cut a
        // failing provider's backoff short.
        let wait = if failed { delay } else { backoff.max };
        let deadline = Instant::now() + wait;
        loop {
            match wake.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(()) if !failed => break,
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if failed {
            delay = (delay * 2).min(backoff.max);
        }
    }
}

/// Tries every pending record of the provider, oldest first; stops at the
/// first that fails for a reason that may pass.
fn drain(queue: &RetryQueue, provider: &dyn Provider) -> Result<(), String> {
    let name = provider.name();
    for path in queue.pending(name).map_err(|e| e.to_string())? {
        let rec = match RetryQueue::load(&path) {
            Ok(rec) => rec,
            Err(e @ QueueError::Newer { .. }) => {
                tracing::warn!(provider = name, error = %e, "OVF backup queue file skipped");
                continue;
            }
            Err(e @ QueueError::Bad { .. }) => {
                tracing::error!(provider = name, error = %e, "OVF backup queue file set aside");
                let _ = RetryQueue::set_aside(&path, "bad");
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        match provider.record(&rec) {
            Ok(()) => {
                tracing::debug!(provider = name, sd = %rec.source.sd, generation = rec.generation,
                    entities = rec.entities.len(), "OVF upload recorded");
                RetryQueue::done(&path).map_err(|e| e.to_string())?;
            }
            Err(e) if e.is_permanent() => {
                tracing::error!(provider = name, error = %e, file = %path.display(),
                    "OVF backup provider refused a record; set aside");
                let _ = RetryQueue::set_aside(&path, "refused");
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}
