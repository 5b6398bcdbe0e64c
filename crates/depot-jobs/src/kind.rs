//! What a job does: the [`JobKind`] trait.

use std::future::Future;
use std::pin::Pin;

use depot_api::error::ApiError;
use serde_json::Value;

use crate::context::JobContext;

/// The future a runner returns. Boxed so that `JobKind` stays object safe
/// without an async-trait crate.
pub type RunFuture = Pin<Box<dyn Future<Output = Result<Option<Value>, ApiError>> + Send>>;

/// A kind of job. The manager stores the kind's [`name`](JobKind::name) and
/// the job's `spec` (its parameters, as JSON) in the job file, and finds the
/// kind again by name after a restart.
///
/// How `run`'s outcome becomes the job's status:
/// - `Ok(result)`: `done`, with `result` shown in the job's info;
/// - `Err(e)`: `failed`, with `e` as the job's error;
/// - either, after an abort was requested: `aborted` (code 411);
/// - `Err` with code `ShuttingDown` after the daemon asked runners to stop
///   (see [`JobContext::stopped_error`]): the job stays `running` on disk,
///   and the next start resumes it or fails it with `JobInterrupted`.
pub trait JobKind: Send + Sync + 'static {
    /// Stable name, stored in job files: never rename a kind.
    fn name(&self) -> &'static str;

    /// Whether [`JobContext::aborted`] is honoured by this kind's runner.
    fn abortable(&self) -> bool;

    /// Whether a job with this spec can continue after a daemon restart from
    /// its last [`JobContext::checkpoint`] (or from the start if it saved
    /// none). A job that is not resumable is failed with `JobInterrupted`,
    /// because its partial effects are unknown.
    fn resumable(&self, spec: &Value) -> bool;

    /// The job's description in `Host.getJobs`.
    fn describe(&self, spec: &Value) -> String;

    /// Checks the spec before the job is created, so that a bad request is
    /// refused by the verb instead of producing a failed job.
    fn validate(&self, _spec: &Value) -> Result<(), ApiError> {
        Ok(())
    }

    /// Runs the job. Called on the runtime: do blocking work in
    /// `spawn_blocking`, and return quickly from this call itself (build the
    /// future, do the work inside it).
    fn run(&self, ctx: JobContext, spec: Value) -> RunFuture;
}
