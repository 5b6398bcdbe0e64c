//! The client side of depot's wire: JSON-RPC 2.0 over HTTP POST
//! ([`Client`]), WebSocket ([`WsClient`]) or STOMP 1.2 as the engine
//! speaks it ([`StompClient`]), on the local admin socket or mutual TLS
//! ([`Endpoint`]). The same connection streams the OVF_STORE
//! bodies: [`Client::put_stream`] and [`Client::get_range`].
//!
//! ```no_run
//! # async fn f() -> Result<(), depot_client::ClientError> {
//! use depot_client::{Client, Endpoint};
//! let c = Client::connect(&Endpoint::Unix("depot-dev/depotd.sock".into())).await?;
//! let jobs = c.call("Host.getJobs", serde_json::json!({})).await?;
//! # Ok(()) }
//! ```

mod endpoint;
mod error;
mod http;
mod jsonrpc;
mod stomp;
mod stream;
pub mod tls;
mod transfer;
mod ws;

pub use depot_api::WireError;
pub use endpoint::{
    host_part, Endpoint, Options, TlsIdentity, DEV_CA, DEV_CLIENT_CERT, DEV_CLIENT_KEY,
};
pub use error::ClientError;
pub use http::{Client, FLOW_ID_HEADER};
pub use stomp::{StompClient, StompOptions};
pub use transfer::{StreamReply, TASK_ID_HEADER};
pub use ws::WsClient;
