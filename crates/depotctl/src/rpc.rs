//! The transport of this invocation: JSON-RPC over HTTP POST with events
//! over a WebSocket (the default), or everything over one STOMP
//! connection as the engine does (`--stomp`). OVF uploads and downloads
//! are HTTP streams either way.

use depot_client::{Client, ClientError, Endpoint, Options, StompClient, StompOptions, WsClient};
use serde_json::Value;
use std::sync::OnceLock;
use std::time::Duration;

/// Set once by `main` from `--stomp`; one invocation, one transport.
static STOMP: OnceLock<bool> = OnceLock::new();

pub fn use_stomp(on: bool) {
    let _ = STOMP.set(on);
}

fn stomp() -> bool {
    STOMP.get().copied().unwrap_or(false)
}

/// Calls to the daemon.
pub enum Rpc {
    Http(Box<Client>, Option<String>),
    Stomp(StompClient),
}

impl Rpc {
    pub async fn connect(
        ep: &Endpoint,
        opts: Options,
        flow_id: Option<&str>,
    ) -> Result<Rpc, ClientError> {
        let flow_id = flow_id.map(str::to_owned);
        if stomp() {
            let s = StompOptions {
                flow_id,
                ..StompOptions::default()
            };
            Ok(Rpc::Stomp(StompClient::connect_with(ep, opts, s).await?))
        } else {
            Ok(Rpc::Http(
                Box::new(Client::connect_with(ep, opts).await?),
                flow_id,
            ))
        }
    }

    /// One call, with the flow id when one was given.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        match self {
            Rpc::Http(c, Some(f)) => c.call_with_flow_id(method, params, f).await,
            Rpc::Http(c, None) => c.call(method, params).await,
            Rpc::Stomp(c) => c.call(method, params).await,
        }
    }
}

/// Events pushed by the daemon.
pub enum Events {
    Ws(WsClient),
    Stomp(StompClient),
}

impl Events {
    /// Subscribes to the events whose names start with one of `prefixes`
    /// (all when empty).
    pub async fn connect(
        ep: &Endpoint,
        opts: Options,
        flow_id: Option<&str>,
        prefixes: &[&str],
    ) -> Result<Events, ClientError> {
        if stomp() {
            let s = StompOptions {
                flow_id: flow_id.map(str::to_owned),
                ..StompOptions::default()
            };
            let c = StompClient::connect_with(ep, opts, s).await?;
            c.subscribe(prefixes).await?;
            Ok(Events::Stomp(c))
        } else {
            let c = WsClient::connect_with_flow_id(ep, opts, flow_id).await?;
            c.subscribe(prefixes).await?;
            Ok(Events::Ws(c))
        }
    }

    pub async fn next_event(&self, timeout: Duration) -> Option<(String, Value)> {
        match self {
            Events::Ws(c) => c.next_event(timeout).await,
            Events::Stomp(c) => c.next_event(timeout).await,
        }
    }

    pub fn closed_reason(&self) -> Option<String> {
        match self {
            Events::Ws(c) => c.closed_reason(),
            Events::Stomp(c) => c.closed_reason(),
        }
    }
}
