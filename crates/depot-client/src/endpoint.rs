//! Where the daemon listens, and how long to wait for it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File names of a PKI directory as `depotd --dev` writes it
/// (`<dev-dir>/state/pki`).
pub const DEV_CA: &str = "ca.pem";
pub const DEV_CLIENT_CERT: &str = "client.pem";
pub const DEV_CLIENT_KEY: &str = "client-key.pem";

/// The client's certificate and private key (PEM files) for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One of the daemon's listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The local admin socket: plain HTTP, no TLS.
    Unix(PathBuf),
    /// The TLS listener.
    Tls {
        /// `host:port` (`[v6]:port` for IPv6 literals).
        addr: String,
        /// The name the server certificate must carry: a DNS name or an IP
        /// address.
        server_name: String,
        /// The CA that signed the server certificate (PEM).
        ca: PathBuf,
        /// The client certificate. `None` connects without one, which the
        /// daemon refuses; tests use it to prove that.
        identity: Option<TlsIdentity>,
    },
}

impl Endpoint {
    /// A TLS endpoint using the files of a dev PKI directory (`ca.pem`,
    /// `client.pem`, `client-key.pem`), verifying the server against the
    /// host part of `addr`.
    pub fn tls_from_pki_dir(addr: impl Into<String>, dir: impl AsRef<Path>) -> Endpoint {
        let addr = addr.into();
        let dir = dir.as_ref();
        Endpoint::Tls {
            server_name: host_part(&addr).to_string(),
            addr,
            ca: dir.join(DEV_CA),
            identity: Some(TlsIdentity {
                cert: dir.join(DEV_CLIENT_CERT),
                key: dir.join(DEV_CLIENT_KEY),
            }),
        }
    }

    /// The same endpoint with another client identity (or none).
    pub fn with_identity(self, identity: Option<TlsIdentity>) -> Endpoint {
        match self {
            Endpoint::Tls {
                addr,
                server_name,
                ca,
                ..
            } => Endpoint::Tls {
                addr,
                server_name,
                ca,
                identity,
            },
            unix => unix,
        }
    }

    /// The `Host` header value to send.
    pub(crate) fn authority(&self) -> String {
        match self {
            Endpoint::Unix(_) => "localhost".to_string(),
            Endpoint::Tls { addr, .. } => addr.clone(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tls { addr, .. } => write!(f, "tls:{addr}"),
        }
    }
}

/// The host part of `host:port`, `[v6]:port`, `[v6]`, or a bare host
/// (brackets removed).
pub fn host_part(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return match rest.find(']') {
            Some(i) => &rest[..i],
            None => rest,
        };
    }
    match addr.rsplit_once(':') {
        // A bare IPv6 address has more than one colon and no port.
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

/// How long to wait. Both default to 30 s so nothing hangs forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Opening the connection: TCP or socket connect, TLS handshake, HTTP
    /// handshake or WebSocket upgrade together.
    pub connect_timeout: Duration,
    /// One call, from sending the request to having the whole response.
    pub call_timeout: Duration,
}

impl Options {
    /// Both timeouts set to `t`.
    pub fn with_timeout(t: Duration) -> Options {
        Options {
            connect_timeout: t,
            call_timeout: t,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options::with_timeout(Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_part_handles_v4_v6_and_names() {
        assert_eq!(host_part("127.0.0.1:54321"), "127.0.0.1");
        assert_eq!(host_part("localhost:1"), "localhost");
        assert_eq!(host_part("localhost"), "localhost");
        assert_eq!(host_part("[::1]:54321"), "::1");
        assert_eq!(host_part("[::1]"), "::1");
        assert_eq!(host_part("::1"), "::1");
    }

    #[test]
    fn pki_dir_uses_dev_names() {
        let ep = Endpoint::tls_from_pki_dir("127.0.0.1:5", "/d/pki");
        assert_eq!(
            ep,
            Endpoint::Tls {
                addr: "127.0.0.1:5".into(),
                server_name: "127.0.0.1".into(),
                ca: "/d/pki/ca.pem".into(),
                identity: Some(TlsIdentity {
                    cert: "/d/pki/client.pem".into(),
                    key: "/d/pki/client-key.pem".into(),
                }),
            }
        );
        let Endpoint::Tls { identity, .. } = ep.with_identity(None) else {
            panic!()
        };
        assert!(identity.is_none());
    }
}
