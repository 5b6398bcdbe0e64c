//! Host jobs: VDSM's "host jobs", listed by `Host.getJobs`.
//!
//! Long work (disk copies, uploads, checks) runs as a job: the verb that
//! starts it returns at once, and the engine polls the job (or subscribes to
//! its events) until it ends. This crate is the machinery: a registry of jobs
//! keyed by the caller's [`JobId`](depot_api::types::JobId), a bounded number
//! of concurrent runners, abort, auto-delete of ended jobs, status events, and
//! persistence in the state directory so that a daemon restart neither loses
//! a job nor leaves it "running" forever.
//!
//! What a job does is a [`JobKind`]; the built-in [`SleepJob`] exercises the
//! machinery without touching storage.

mod context;
mod error;
mod kind;
mod manager;
mod record;
pub mod sleep;
mod store;

pub use context::JobContext;
pub use error::JobsError;
pub use kind::{JobKind, RunFuture};
pub use manager::{JobManager, JobsConfig, Recovery};
pub use sleep::{SleepJob, SleepSpec, SLEEP_KIND};
