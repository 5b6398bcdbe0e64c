//! The job registry: [`JobManager`].
//!
//! State lives in memory behind one std mutex (held only for short,
//! non-blocking updates); every status change and checkpoint is written to
//! the job's file from a blocking thread. Writes of one job are serialised by
//! a per-job async lock and always write the *current* record, so a slow
//! write can never overwrite a newer one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::AtomicU16;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use depot_api::error::{ApiError, Code};
use depot_api::types::{JobId, JobInfo, JobStatus, JobType};
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio::task::{AbortHandle, JoinError};
use tracing::{debug, error, info, warn};

use crate::context::{JobContext, JobReport, NO_PROGRESS};
use crate::error::JobsError;
use crate::kind::JobKind;
use crate::record::{now, JobRecord};
use crate::store::Store;

/// Capacity of the event channel; a subscriber further behind than this gets
/// `RecvError::Lagged` and should re-read the list.
const EVENT_CAPACITY: usize = 1024;

/// How long shutdown waits for cancelled runners' final bookkeeping after
/// the grace period ran out.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// How long an ended job stays listed (VDSM's `autodelete_delay`).
    pub autodelete: Duration,
    /// Jobs running at once; more stay `pending` until a slot frees. 0 is
    /// treated as 1.
    pub max_running: usize,
    /// Jobs pending or running at once; starting one more is refused with
    /// `TooManyJobs` (9020). Each holds a file and memory, and a pending one
    /// waits for a runner, so there must be an end. 0 is treated as 1.
    pub max_active: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            autodelete: Duration::from_secs(3600),
            max_running: 4,
            max_active: 256,
        }
    }
}

/// What [`JobManager::open`] did with the jobs it found, for one log line.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Job files loaded.
    pub loaded: usize,
    /// Interrupted jobs restarted from their last checkpoint.
    pub resumed: Vec<JobId>,
    /// Interrupted jobs marked failed with `JobInterrupted` (9001).
    pub failed: Vec<JobId>,
    /// Where unreadable job files were moved.
    pub corrupt: Vec<PathBuf>,
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = |v: &[JobId]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "{} jobs loaded, {} resumed [{}], {} failed as interrupted [{}], {} corrupt files moved aside",
            self.loaded,
            self.resumed.len(),
            ids(&self.resumed),
            self.failed.len(),
            ids(&self.failed),
            self.corrupt.len()
        )
    }
}

/// The host's jobs. Cheap to clone; all clones share one registry.
#[derive(Clone)]
pub struct JobManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for JobManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobManager")
            .field("dir", &self.inner.store.dir())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: Arc<Store>,
    config: JobsConfig,
    kinds: HashMap<&'static str, Arc<dyn JobKind>>,
    state: Mutex<State>,
    events: broadcast::Sender<JobInfo>,
    stop_tx: watch::Sender<bool>,
    /// Mirrors `State::running`, so shutdown can wait for it to reach 0.
    running_tx: watch::Sender<usize>,
}

#[derive(Default)]
struct State {
    jobs: HashMap<JobId, Job>,
    /// Pending jobs in start order.
    queue: VecDeque<(JobId, u64)>,
    /// Runners started and not yet finished (bookkeeping included).
    running: usize,
    /// Shutdown began: no new jobs, no new runners.
    shutting_down: bool,
    /// Shutdown's grace period ran out: runners are cancelled.
    cancel_runners: bool,
    /// Shutdown finished: nothing is written any more.
    closed: bool,
    next_serial: u64,
}

struct Job {
    /// Tells this job apart from a later job reusing the id after a delete,
    /// so late timers and writes of the old one leave the new one alone.
    serial: u64,
    record: JobRecord,
    /// None for a job whose kind this build does not know (only ended jobs:
    /// active ones are failed at open).
    kind: Option<Arc<dyn JobKind>>,
    abort_tx: watch::Sender<bool>,
    write_lock: Arc<tokio::sync::Mutex<()>>,
    runner: Option<AbortHandle>,
}

impl State {
    fn job(&self, id: JobId, serial: u64) -> Option<&Job> {
        self.jobs.get(&id).filter(|j| j.serial == serial)
    }

    fn job_mut(&mut self, id: JobId, serial: u64) -> Option<&mut Job> {
        self.jobs.get_mut(&id).filter(|j| j.serial == serial)
    }

    fn insert(&mut self, record: JobRecord, kind: Option<Arc<dyn JobKind>>) -> u64 {
        self.next_serial += 1;
        let serial = self.next_serial;
        let (abort_tx, _) = watch::channel(false);
        self.jobs.insert(
            record.id,
            Job {
                serial,
                record,
                kind,
                abort_tx,
                write_lock: Arc::new(tokio::sync::Mutex::new(())),
                runner: None,
            },
        );
        serial
    }
}

fn general(detail: String) -> ApiError {
    ApiError::new(Code::GeneralException, detail)
}

impl JobManager {
    /// Opens the job store `<state_dir>/jobs/` (created 0700) and recovers
    /// the jobs in it: ended jobs are listed until their auto-delete time;
    /// jobs that were pending or running when the daemon stopped are resumed
    /// if their kind can resume them, and otherwise failed with
    /// `JobInterrupted` (9001), since what they did is unknown. Corrupt files
    /// are moved aside, never fatal.
    pub async fn open(
        state_dir: &Path,
        config: JobsConfig,
        kinds: Vec<Arc<dyn JobKind>>,
    ) -> Result<(JobManager, Recovery), JobsError> {
        let mut kind_map: HashMap<&'static str, Arc<dyn JobKind>> = HashMap::new();
        for kind in kinds {
            let name = kind.name();
            if kind_map.insert(name, kind).is_some() {
                return Err(JobsError::DuplicateKind { name });
            }
        }
        let store = Arc::new(Store::new(state_dir.join("jobs")));
        let loaded = {
            let store = store.clone();
            blocking("load", store.dir().to_path_buf(), move || store.load_all()).await?
        };
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let inner = Arc::new(Inner {
            store,
            config,
            kinds: kind_map,
            state: Mutex::new(State::default()),
            events,
            stop_tx: watch::channel(false).0,
            running_tx: watch::channel(0).0,
        });

        let mut recovery = Recovery {
            loaded: loaded.records.len(),
            corrupt: loaded.corrupt,
            ..Recovery::default()
        };
        let mut records = loaded.records;
        records.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        let mut to_persist = Vec::new();
        let mut ended = Vec::new();
        {
            let mut st = inner.st();
            for record in records {
                let id = record.id;
                let kind = inner.kinds.get(record.kind.as_str()).cloned();
                let status = record.status;
                let serial = st.insert(record, kind.clone());
                let Some(job) = st.job_mut(id, serial) else {
                    continue;
                };
                if status.is_final() {
                    ended.push((id, serial, job.record.ended_at.unwrap_or_else(now)));
                    continue;
                }
                match kind {
                    // A pending job never ran, so starting it now is the
                    // same as starting it then, whatever its kind.
                    Some(k) if status == JobStatus::Pending || k.resumable(&job.record.spec) => {
                        if status != JobStatus::Pending {
                            inner.set_status(job, JobStatus::Pending, None);
                        }
                        st.queue.push_back((id, serial));
                        recovery.resumed.push(id);
                    }
                    _ => {
                        let why = match kind {
                            Some(_) => "its kind cannot resume",
                            None => "its kind is unknown to this depot",
                        };
                        let err = ApiError::new(
                            Code::JobInterrupted,
                            format!("job {id} was {status} when the daemon stopped, and {why}"),
                        );
                        inner.set_status(job, JobStatus::Failed, Some(err));
                        let ended_at = job.record.ended_at.unwrap_or_else(now);
                        to_persist.push(serial);
                        ended.push((id, serial, ended_at));
                        recovery.failed.push(id);
                    }
                }
            }
        }
        for (id, serial) in recovery.failed.iter().copied().zip(to_persist) {
            inner.persist(id, serial).await?;
        }
        for (id, serial, ended_at) in ended {
            inner.schedule_autodelete(id, serial, ended_at);
        }
        inner.schedule();
        Ok((JobManager { inner }, recovery))
    }

    /// Starts a job, durably recorded before this returns. Idempotent: the
    /// same id with the same kind, type and spec is the same job (Ok, also
    /// when it already ended); with anything different it is `JobExists`.
    pub async fn start(
        &self,
        id: JobId,
        kind: &str,
        job_type: JobType,
        spec: Value,
    ) -> Result<(), ApiError> {
        let inner = &self.inner;
        let Some(k) = inner.kinds.get(kind).cloned() else {
            return Err(ApiError::new(
                Code::InternalError,
                format!("unknown job kind {kind:?}"),
            ));
        };
        k.validate(&spec)?;
        let serial = {
            let mut st = inner.st();
            if st.shutting_down {
                return Err(ApiError::new(
                    Code::ShuttingDown,
                    format!("cannot start job {id}"),
                ));
            }
            if let Some(job) = st.jobs.get(&id) {
                let r = &job.record;
                return if r.kind == kind && r.job_type == job_type && r.spec == spec {
                    Ok(())
                } else {
                    Err(ApiError::new(
                        Code::JobExists,
                        format!("job {id} exists with another kind or spec"),
                    ))
                };
            }
            let max = inner.config.max_active.max(1);
            let active = st
                .jobs
                .values()
                .filter(|j| !j.record.status.is_final())
                .count();
            if active >= max {
                warn!(job_id = %id, kind, active, max, "job refused: too many active jobs");
                return Err(ApiError::new(
                    Code::TooManyJobs,
                    format!(
                        "cannot start job {id}: {active} jobs are pending or running, the limit is {max}"
                    ),
                ));
            }
            let record = JobRecord::new(id, kind, job_type, spec.clone(), k.describe(&spec));
            info!(job_id = %id, kind, from = "new", to = %JobStatus::Pending, "job status changed");
            let _ = inner.events.send(record.info());
            st.insert(record, Some(k))
        };
        if let Err(e) = inner.persist(id, serial).await {
            error!(job_id = %id, error = %e, "cannot record new job; refusing it");
            let mut st = inner.st();
            if st.job(id, serial).is_some() {
                st.jobs.remove(&id);
            }
            return Err(general(format!("cannot record job {id}: {e}")));
        }
        inner.st().queue.push_back((id, serial));
        inner.schedule();
        Ok(())
    }

    /// The jobs of `job_type` (all types if None) among `ids` (all jobs if
    /// empty; unknown ids are left out, as VDSM does), oldest first.
    pub fn list(&self, job_type: Option<JobType>, ids: &[JobId]) -> Vec<JobInfo> {
        let wanted: HashSet<&JobId> = ids.iter().collect();
        let st = self.inner.st();
        let mut jobs: Vec<&Job> = st
            .jobs
            .values()
            .filter(|j| job_type.is_none_or(|t| j.record.job_type == t))
            .filter(|j| wanted.is_empty() || wanted.contains(&j.record.id))
            .collect();
        jobs.sort_by(|a, b| {
            a.record
                .created_at
                .total_cmp(&b.record.created_at)
                .then(a.record.id.cmp(&b.record.id))
        });
        jobs.iter().map(|j| j.record.info()).collect()
    }

    /// One job's info.
    pub fn get(&self, id: JobId) -> Option<JobInfo> {
        self.inner.st().jobs.get(&id).map(|j| j.record.info())
    }

    /// The kind name a job was started with ([`JobKind::name`]).
    pub fn kind_of(&self, id: JobId) -> Option<String> {
        self.inner.st().jobs.get(&id).map(|j| j.record.kind.clone())
    }

    /// Requests an abort. A pending job ends `aborted` at once; a running
    /// one ends when its runner notices (the call does not wait for that).
    pub async fn abort(&self, id: JobId) -> Result<(), ApiError> {
        let inner = &self.inner;
        let ended = {
            let mut st = inner.st();
            let Some(job) = st.jobs.get_mut(&id) else {
                return Err(ApiError::new(Code::NoSuchJob, format!("'{id}'")));
            };
            let status = job.record.status;
            if status.is_final() {
                return Err(ApiError::new(
                    Code::JobNotActive,
                    format!("job {id} is {status}"),
                ));
            }
            if !job.kind.as_ref().is_some_and(|k| k.abortable()) {
                return Err(ApiError::new(
                    Code::AbortNotSupported,
                    format!("job {id} of kind {}", job.record.kind),
                ));
            }
            job.abort_tx.send_replace(true);
            if status == JobStatus::Pending {
                let err = ApiError::new(
                    Code::TaskAborted,
                    format!("job {id} aborted before it started"),
                );
                inner.set_status(job, JobStatus::Aborted, Some(err));
                let (serial, ended_at) = (job.serial, job.record.ended_at.unwrap_or_else(now));
                st.queue.retain(|(q, _)| *q != id);
                Some((serial, ended_at))
            } else {
                None
            }
        };
        if let Some((serial, ended_at)) = ended {
            inner.persist_logged(id, serial).await;
            inner.schedule_autodelete(id, serial, ended_at);
        }
        Ok(())
    }

    /// Removes an ended job before its auto-delete time, from memory and
    /// disk. An active job must be aborted first.
    pub async fn delete(&self, id: JobId) -> Result<(), ApiError> {
        let (serial, lock) = {
            let st = self.inner.st();
            if st.closed {
                return Err(ApiError::new(
                    Code::ShuttingDown,
                    format!("cannot delete job {id}"),
                ));
            }
            let Some(job) = st.jobs.get(&id) else {
                return Err(ApiError::new(Code::NoSuchJob, format!("'{id}'")));
            };
            let status = job.record.status;
            if !status.is_final() {
                return Err(general(format!(
                    "job {id} is still {status}; abort it first"
                )));
            }
            (job.serial, job.write_lock.clone())
        };
        self.inner
            .remove(id, serial, lock)
            .await
            .map(|_| ())
            .map_err(|e| general(format!("cannot delete job {id}: {e}")))
    }

    /// One message per status change and per progress change.
    pub fn subscribe(&self) -> broadcast::Receiver<JobInfo> {
        self.inner.events.subscribe()
    }

    /// Stops the machinery for daemon exit: refuses new jobs, tells runners
    /// to stop, waits up to `grace` for them (then cancels them), and writes
    /// every active job. Jobs stopped this way stay `pending`/`running` on
    /// disk, so the next start resumes or fails them. Nothing is written
    /// after this returns.
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.st().shutting_down = true;
        inner.stop_tx.send_replace(true);
        let mut running = inner.running_tx.subscribe();
        let stopped = tokio::time::timeout(grace, running.wait_for(|n| *n == 0))
            .await
            .is_ok();
        if !stopped {
            let mut st = inner.st();
            warn!(running = st.running, grace = ?grace, "job runners did not stop in time; cancelling them");
            st.cancel_runners = true;
            for job in st.jobs.values() {
                if let Some(runner) = &job.runner {
                    runner.abort();
                }
            }
        }
        if !stopped
            && tokio::time::timeout(CANCEL_WAIT, running.wait_for(|n| *n == 0))
                .await
                .is_err()
        {
            warn!("job bookkeeping still running after cancel; files may lag behind");
        }
        let active: Vec<(JobId, u64)> = inner
            .st()
            .jobs
            .values()
            .filter(|j| !j.record.status.is_final())
            .map(|j| (j.record.id, j.serial))
            .collect();
        for (id, serial) in active {
            inner.persist_logged(id, serial).await;
        }
        inner.st().closed = true;
        info!("job manager shut down");
    }
}

impl JobReport for Inner {
    fn update_progress(&self, id: JobId, serial: u64, progress: u8) {
        Inner::update_progress(self, id, serial, progress)
    }

    fn save_checkpoint(
        &self,
        id: JobId,
        serial: u64,
        state: Value,
    ) -> Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + '_>> {
        Box::pin(Inner::save_checkpoint(self, id, serial, state))
    }
}

impl Inner {
    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes a job's status: logs it, stamps `ended_at`, emits the event.
    /// The caller persists.
    fn set_status(&self, job: &mut Job, to: JobStatus, err: Option<ApiError>) {
        let from = job.record.status;
        let code = err.as_ref().map(|e| e.code.number());
        job.record.status = to;
        job.record.error = err.as_ref().map(ApiError::to_wire);
        if to.is_final() {
            job.record.ended_at = Some(now());
        }
        info!(job_id = %job.record.id, kind = %job.record.kind, %from, %to, error_code = code,
            "job status changed");
        let _ = self.events.send(job.record.info());
    }

    fn update_progress(&self, id: JobId, serial: u64, progress: u8) {
        let mut st = self.st();
        if let Some(job) = st.job_mut(id, serial) {
            if job.record.status == JobStatus::Running && job.record.progress != Some(progress) {
                job.record.progress = Some(progress);
                let _ = self.events.send(job.record.info());
            }
        }
    }

    async fn save_checkpoint(&self, id: JobId, serial: u64, state: Value) -> Result<(), ApiError> {
        {
            let mut st = self.st();
            let Some(job) = st.job_mut(id, serial) else {
                return Err(ApiError::new(Code::NoSuchJob, format!("'{id}'")));
            };
            job.record.checkpoint = Some(state);
        }
        match self.persist(id, serial).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::new(
                Code::ShuttingDown,
                format!("checkpoint of job {id} not saved: the job store is closed"),
            )),
            Err(e) => Err(general(format!("cannot save checkpoint of job {id}: {e}"))),
        }
    }

    /// Writes the job's current record. Ok(false): nothing written, because
    /// the job is gone or the store is closed.
    async fn persist(&self, id: JobId, serial: u64) -> Result<bool, JobsError> {
        let Some(lock) = self.st().job(id, serial).map(|j| j.write_lock.clone()) else {
            return Ok(false);
        };
        let _guard = lock.lock().await;
        let path = self.store.path(id);
        let bytes = {
            let st = self.st();
            let Some(job) = st.job(id, serial).filter(|_| !st.closed) else {
                return Ok(false);
            };
            job.record.encode().map_err(|source| JobsError::Encode {
                path: path.clone(),
                source,
            })?
        };
        let store = self.store.clone();
        blocking("write", path, move || store.write(id, &bytes)).await?;
        Ok(true)
    }

    /// Writes `record` as the job's file (a record about to become the
    /// job's state). Ok(false): nothing written (job gone, store closed).
    async fn persist_record(
        &self,
        id: JobId,
        serial: u64,
        record: &JobRecord,
    ) -> Result<bool, JobsError> {
        let Some(lock) = self.st().job(id, serial).map(|j| j.write_lock.clone()) else {
            return Ok(false);
        };
        let _guard = lock.lock().await;
        if self.st().closed {
            return Ok(false);
        }
        let path = self.store.path(id);
        let bytes = record.encode().map_err(|source| JobsError::Encode {
            path: path.clone(),
            source,
        })?;
        let store = self.store.clone();
        blocking("write", path, move || store.write(id, &bytes)).await?;
        Ok(true)
    }

    async fn persist_logged(&self, id: JobId, serial: u64) {
        match self.persist(id, serial).await {
            Ok(_) => {}
            Err(e) => error!(job_id = %id, error = %e, "cannot persist job"),
        }
    }

    /// Removes an ended job's file, then the job. Ok(false): nothing to do.
    async fn remove(
        &self,
        id: JobId,
        serial: u64,
        lock: Arc<tokio::sync::Mutex<()>>,
    ) -> Result<bool, JobsError> {
        let _guard = lock.lock().await;
        {
            let st = self.st();
            let gone = st
                .job(id, serial)
                .is_none_or(|j| !j.record.status.is_final());
            if gone || st.closed {
                return Ok(false);
            }
        }
        // File first: while the job is still in memory its id cannot be
        // reused, so this cannot remove a newer job's file.
        let store = self.store.clone();
        blocking("remove", store.path(id), move || store.remove(id)).await?;
        let mut st = self.st();
        if st.job(id, serial).is_some() {
            st.jobs.remove(&id);
        }
        Ok(true)
    }

    fn schedule_autodelete(self: &Arc<Self>, id: JobId, serial: u64, ended_at: f64) {
        let total = self.config.autodelete;
        let left = ended_at + total.as_secs_f64() - now();
        // Clamped to `total`: a clock set back must not keep a job forever.
        let delay = Duration::try_from_secs_f64(left.max(0.0))
            .unwrap_or(total)
            .min(total);
        let weak: Weak<Inner> = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(inner) = weak.upgrade() else { return };
            let Some(lock) = inner.st().job(id, serial).map(|j| j.write_lock.clone()) else {
                return;
            };
            match inner.remove(id, serial, lock).await {
                Ok(true) => info!(job_id = %id, "ended job auto-deleted"),
                Ok(false) => {}
                Err(e) => warn!(job_id = %id, error = %e, "cannot auto-delete job"),
            }
        });
    }

    /// Starts pending jobs while slots are free.
    fn schedule(self: &Arc<Self>) {
        let mut st = self.st();
        while !st.shutting_down && st.running < self.config.max_running.max(1) {
            let Some((id, serial)) = st.queue.pop_front() else {
                break;
            };
            let stop_rx = self.stop_tx.subscribe();
            let Some(job) = st
                .job_mut(id, serial)
                .filter(|j| j.record.status == JobStatus::Pending)
            else {
                continue;
            };
            let Some(kind) = job.kind.clone() else {
                continue;
            };
            self.set_status(job, JobStatus::Running, None);
            let ctx = JobContext {
                id,
                serial,
                inner: self.clone(),
                progress: Arc::new(AtomicU16::new(
                    job.record.progress.map_or(NO_PROGRESS, u16::from),
                )),
                abort_rx: job.abort_tx.subscribe(),
                stop_rx,
                resume: job.record.checkpoint.clone(),
            };
            let spec = job.record.spec.clone();
            st.running += 1;
            self.running_tx.send_replace(st.running);
            tokio::spawn(drive(self.clone(), id, serial, kind, ctx, spec));
        }
    }

    /// Records a runner's outcome (see [`JobKind`] for the rules), then frees
    /// its slot.
    async fn finish(
        self: &Arc<Self>,
        id: JobId,
        serial: u64,
        outcome: Result<Result<Option<Value>, ApiError>, JoinError>,
    ) {
        // Decide the outcome without publishing it yet.
        let decided = {
            let mut st = self.st();
            let stopping = st.shutting_down;
            match st.job_mut(id, serial) {
                None => None,
                Some(job) => {
                    job.runner = None;
                    let aborted = *job.abort_tx.borrow();
                    let (to, err, result) = match outcome {
                        _ if aborted => (
                            Some(JobStatus::Aborted),
                            Some(ApiError::new(
                                Code::TaskAborted,
                                format!("job {id} aborted"),
                            )),
                            None,
                        ),
                        Ok(Ok(result)) => (Some(JobStatus::Done), None, result),
                        Ok(Err(e)) if stopping && e.code == Code::ShuttingDown => {
                            (None, None, None)
                        }
                        Ok(Err(e)) => {
                            log_cause(id, &job.record.kind, &e);
                            (Some(JobStatus::Failed), Some(e), None)
                        }
                        Err(e) if e.is_cancelled() => (None, None, None),
                        Err(e) => (
                            Some(JobStatus::Failed),
                            Some(ApiError::new(
                                Code::InternalError,
                                format!("runner of job {id} panicked: {e}"),
                            )),
                            None,
                        ),
                    };
                    match to {
                        Some(to) => Some((to, err, result)),
                        None => {
                            info!(job_id = %id, kind = %job.record.kind, status = %job.record.status,
                                "job stopped for shutdown; the next start resumes or fails it");
                            None
                        }
                    }
                }
            }
        };
        // The file first, then what clients see: a client that saw `done`
        // never finds the job `running` again after a crash.
        let mut ended = None;
        if let Some((to, err, result)) = decided {
            let record = self.st().job(id, serial).map(|job| {
                let mut r = job.record.clone();
                r.status = to;
                r.error = err.as_ref().map(ApiError::to_wire);
                if to == JobStatus::Done {
                    r.result = result.clone();
                    r.progress = Some(100);
                }
                r.ended_at = Some(now());
                r
            });
            if let Some(record) = record {
                if let Err(e) = self.persist_record(id, serial, &record).await {
                    error!(job_id = %id, error = %e, "cannot persist job");
                }
                let mut st = self.st();
                if let Some(job) = st.job_mut(id, serial) {
                    if to == JobStatus::Done {
                        job.record.result = result;
                        job.record.progress = Some(100);
                    }
                    self.set_status(job, to, err);
                    job.record.ended_at = record.ended_at;
                    ended = job.record.ended_at;
                }
            }
        } else {
            self.persist_logged(id, serial).await;
        }
        if let Some(ended_at) = ended {
            self.schedule_autodelete(id, serial, ended_at);
        }
        {
            let mut st = self.st();
            st.running = st.running.saturating_sub(1);
            self.running_tx.send_replace(st.running);
        }
        self.schedule();
    }
}

/// Logs what failed underneath a failed job (an OS error, a command's
/// exit), if its error carries that: the job's error, which clients see,
/// has only code and message.
fn log_cause(id: JobId, kind: &str, e: &ApiError) {
    if let Some(cause) = e.cause() {
        warn!(job_id = %id, kind = %kind, code = e.code.number(), error = %e.detail,
            cause = %cause, "job failed underneath");
    }
}

/// One job's life on the runtime: record `running`, run the kind's future in
/// its own task (so a panic or a cancel is observed, not propagated), record
/// the outcome.
async fn drive(
    inner: Arc<Inner>,
    id: JobId,
    serial: u64,
    kind: Arc<dyn JobKind>,
    ctx: JobContext,
    spec: Value,
) {
    inner.persist_logged(id, serial).await;
    debug!(job_id = %id, "runner starting");
    let run = tokio::spawn(kind.run(ctx, spec));
    {
        let mut st = inner.st();
        let cancel = st.cancel_runners;
        if let Some(job) = st.job_mut(id, serial) {
            job.runner = Some(run.abort_handle());
        }
        if cancel {
            run.abort();
        }
    }
    let outcome = run.await;
    inner.finish(id, serial, outcome).await;
}

/// Runs file I/O on the blocking pool, never on a runtime thread.
async fn blocking<T, F>(op: &'static str, path: PathBuf, f: F) -> Result<T, JobsError>
where
    F: FnOnce() -> Result<T, JobsError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(JobsError::Blocking {
            op,
            path,
            detail: e.to_string(),
        }),
    }
}
