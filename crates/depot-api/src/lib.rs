//! depot's API layer: wire types, the method catalogue and error codes.
//!
//! This crate does no I/O. The daemon maps each incoming request to a typed
//! [`Call`] here and hands it to the storage layer; nothing below the daemon
//! sees JSON.

pub mod catalogue;
pub mod conformance;
pub mod docs;
pub mod error;
pub mod jsonrpc;
pub mod results;
pub mod storage;
pub mod types;

pub use catalogue::{methods, params, Call, MethodSpec, ParamSpec};
pub use error::{ApiError, Code, WireError};

/// Default TCP port, VDSM's.
pub const DEFAULT_PORT: u16 = 54321;

/// The prefix of job status event names: `|jobs|status|<job_id>`.
pub const JOB_STATUS_EVENT: &str = "|jobs|status|";

/// depot's storage events (docs/protocol.md, "Storage events"). VDSM has
/// no event in the `storage` namespace: its engine polls repoStats.
///
/// A monitored domain's state changed: `|storage|domain_state|<sd_uuid>`.
pub const DOMAIN_STATE_EVENT: &str = "|storage|domain_state|";
/// An OVF_STORE was written: `|storage|ovf_store_written|<sd_uuid>`.
pub const OVF_STORE_WRITTEN_EVENT: &str = "|storage|ovf_store_written|";
/// A storage server connection is gone:
/// `|storage|connection_lost|<connection id>`.
pub const CONNECTION_LOST_EVENT: &str = "|storage|connection_lost|";
