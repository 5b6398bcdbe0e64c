//! depotd, the per-host storage agent daemon: listeners, protocol routing,
//! configuration, and the glue between the API layer and the services.
//!
//! The binary (`main.rs`) only parses arguments; everything is here so that
//! integration tests can reuse pieces (the dev PKI generator, the config).

pub mod call;
pub mod config;
pub mod conn;
pub mod daemon;
pub mod dr_api;
pub mod dr_plan;
pub mod events;
pub mod fencing;
pub mod jsonrpc;
pub mod listen;
pub mod logging;
pub mod master_tasks;
pub mod ovf_backup;
pub mod pace;
pub mod pki;
pub mod router;
pub mod storage_api;
pub mod storage_jobs;
pub mod systemd;
pub mod task_store;
pub mod tasks;
pub mod transport;
