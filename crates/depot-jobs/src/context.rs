//! What a runner sees of its job: [`JobContext`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use depot_api::error::{ApiError, Code};
use depot_api::types::JobId;
use serde_json::Value;
use tokio::sync::watch;

/// Where a job's context reports to: the manager implements it. A trait
/// here, so that this module does not import the manager that creates
/// contexts (imports run one way: manager -> context).
pub(crate) trait JobReport: Send + Sync {
    /// Records new progress of job `id` (run `serial`) and announces it.
    fn update_progress(&self, id: JobId, serial: u64, progress: u8);

    /// Saves resume state with the job, durably.
    fn save_checkpoint(
        &self,
        id: JobId,
        serial: u64,
        state: Value,
    ) -> Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + '_>>;
}

/// No progress reported yet (progress itself is 0..=100).
pub(crate) const NO_PROGRESS: u16 = u16::MAX;

/// Handle a runner uses to report progress, save resume state, and learn
/// that it should stop (abort or daemon shutdown). Cheap to clone.
#[derive(Clone)]
pub struct JobContext {
    pub(crate) id: JobId,
    pub(crate) serial: u64,
    pub(crate) inner: Arc<dyn JobReport>,
    /// Last value reported, so unchanged progress costs one atomic swap and
    /// emits nothing.
    pub(crate) progress: Arc<AtomicU16>,
    pub(crate) abort_rx: watch::Receiver<bool>,
    pub(crate) stop_rx: watch::Receiver<bool>,
    pub(crate) resume: Option<Value>,
}

impl JobContext {
    pub fn job_id(&self) -> JobId {
        self.id
    }

    /// Reports progress (clamped to 100). An event is emitted only when the
    /// value changes; progress is not written to disk on every change (only
    /// with the next status change or checkpoint), to keep I/O off the hot
    /// path.
    pub fn set_progress(&self, percent: u8) {
        let p = percent.min(100);
        if self.progress.swap(u16::from(p), Ordering::Relaxed) != u16::from(p) {
            self.inner.update_progress(self.id, self.serial, p);
        }
    }

    /// Whether an abort was requested.
    pub fn is_aborted(&self) -> bool {
        *self.abort_rx.borrow()
    }

    /// Resolves when an abort is requested (at once if it already was).
    pub async fn aborted(&self) {
        wait_true(self.abort_rx.clone()).await
    }

    /// Whether the daemon is shutting down.
    pub fn is_stopping(&self) -> bool {
        *self.stop_rx.borrow()
    }

    /// Resolves when the daemon starts shutting down. The runner should then
    /// save a checkpoint (if resumable) and return
    /// `Err(ctx.stopped_error())` promptly.
    pub async fn stopping(&self) {
        wait_true(self.stop_rx.clone()).await
    }

    /// The error to return when the runner stops because of
    /// [`stopping`](Self::stopping): with it the job stays `running` on
    /// disk, to be resumed or failed by the next start.
    pub fn stopped_error(&self) -> ApiError {
        ApiError::new(
            Code::ShuttingDown,
            format!("job {} stopped for daemon shutdown", self.id),
        )
    }

    /// Saves resume state with the job, durably (the job file is rewritten
    /// and fsynced before this returns). After a restart a resumable job's
    /// runner gets it back from [`resume_state`](Self::resume_state).
    pub async fn checkpoint(&self, state: Value) -> Result<(), ApiError> {
        self.inner
            .save_checkpoint(self.id, self.serial, state)
            .await
    }

    /// The last checkpoint saved before the daemon restarted, if any.
    pub fn resume_state(&self) -> Option<Value> {
        self.resume.clone()
    }
}

/// Waits until the flag is true. If the sender is gone the flag can never
/// become true, so this never resolves (rather than spinning a runner's
/// select loop).
async fn wait_true(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("job_id", &self.id)
            .field("aborted", &self.is_aborted())
            .field("stopping", &self.is_stopping())
            .finish_non_exhaustive()
    }
}
