//! depotd, the per-host storage agent daemon: listeners, protocol routing,
//! configuration, and the glue between the API layer and the services.
//!
//! The binary (`main.rs`) only parses arguments; everything is here so that
//! integration tests can reuse pieces (the dev PKI generator, the config).

pub mod admission;
pub mod config;
pub mod daemon;
pub mod detect;
pub mod events;
pub mod http;
pub mod logging;
pub mod ovf_http;
pub mod pace;
pub mod pki;
pub mod router;
pub mod rpc;
pub mod server;
pub mod stomp;
pub mod storage_api;
pub mod storage_jobs;
pub mod systemd;
pub mod task_store;
pub mod tasks;
pub mod ws;
