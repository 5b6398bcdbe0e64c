//! depot's API layer: wire types, the method catalogue and error codes.
//!
//! This crate does no I/O. The daemon maps each incoming request to a typed
//! [`Call`] here and hands it to the storage layer; nothing below the daemon
//! sees JSON.

pub mod catalogue;
pub mod conformance;
pub mod docs;
pub mod error;
pub mod storage;
pub mod types;

pub use catalogue::{methods, params, Call, MethodSpec, ParamSpec};
pub use error::{ApiError, Code, WireError};

/// Default TCP port, VDSM's.
pub const DEFAULT_PORT: u16 = 54321;

/// The prefix of job status event names: `|jobs|status|<job_id>`.
pub const JOB_STATUS_EVENT: &str = "|jobs|status|";
