//! The one error type of the client.

use depot_api::WireError;
use std::time::Duration;

/// What went wrong with a call. [`ClientError::Rpc`] means the server
/// answered with a JSON-RPC error; every other variant means no answer was
/// had (or it could not be understood).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error object.
    #[error("error {}: {}", .0.code, .0.message)]
    Rpc(WireError),
    /// The socket or TCP connection could not be opened.
    #[error("cannot connect to {target}: {detail}")]
    Connect { target: String, detail: String },
    /// TLS setup (certificates, keys) or the handshake failed, or the server
    /// refused the client's certificate.
    #[error("TLS error: {0}")]
    Tls(String),
    /// HTTP or WebSocket transport failed: the connection broke, or the
    /// server answered with an unexpected status.
    #[error("HTTP error: {0}")]
    Http(String),
    /// The STOMP transport failed: the connection broke, the server went
    /// silent past its heart-beats, or it sent an ERROR frame.
    #[error("STOMP error: {0}")]
    Stomp(String),
    /// The server answered something that is not the JSON-RPC response
    /// expected.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Local I/O failed: reading what a streamed upload sends, or writing
    /// what a streamed download receives.
    #[error("I/O error: {0}")]
    Io(String),
    /// No answer within the configured time.
    #[error("timed out after {after:?} {what}")]
    Timeout { what: String, after: Duration },
}

impl ClientError {
    /// The JSON-RPC error code when the server answered with an error.
    pub fn rpc_code(&self) -> Option<i32> {
        match self {
            ClientError::Rpc(e) => Some(e.code),
            _ => None,
        }
    }

    /// True when the server answered (with an error), false when the
    /// transport failed.
    pub fn is_rpc(&self) -> bool {
        matches!(self, ClientError::Rpc(_))
    }
}

/// The error and all its sources, joined by ": ".
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let t = src.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = src.source();
    }
    s
}

/// True when a TLS error is somewhere in the chain: the server refusing our
/// certificate shows up as an alert on the first read after the handshake
/// (TLS 1.3), wrapped in I/O and HTTP errors.
pub(crate) fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if inner.downcast_ref::<rustls::Error>().is_some() {
                    return true;
                }
            }
        }
        cur = err.source();
    }
    false
}

/// Classifies a transport failure: a TLS error anywhere in the chain makes it
/// [`ClientError::Tls`], anything else [`ClientError::Http`].
pub(crate) fn transport(context: &str, e: &(dyn std::error::Error + 'static)) -> ClientError {
    let msg = format!("{context}: {}", chain(e));
    if is_tls(e) {
        ClientError::Tls(msg)
    } else {
        ClientError::Http(msg)
    }
}
