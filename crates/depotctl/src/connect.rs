//! From the connection flags (and the environment) to an [`Endpoint`].

use depot_api::DEFAULT_PORT;
use depot_client::{host_part, Endpoint, Options, TlsIdentity};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::args::ConnArgs;

pub const SOCKET_ENV: &str = "DEPOT_SOCKET";
pub const DEV_SOCKET: &str = "depot-dev/depotd.sock";
pub const SYSTEM_SOCKET: &str = "/run/depot/depotd.sock";
pub const DEV_PKI: &str = "depot-dev/state/pki";
pub const SYSTEM_PKI: &str = "/etc/pki/depot";

/// What resolution may look at besides the flags; tests pass fakes.
pub struct Env<'a> {
    pub var: &'a dyn Fn(&str) -> Option<String>,
    pub exists: &'a dyn Fn(&Path) -> bool,
}

impl Env<'static> {
    pub fn real() -> Env<'static> {
        Env {
            var: &|k| std::env::var(k).ok().filter(|v| !v.is_empty()),
            exists: &|p| p.exists(),
        }
    }
}

/// The endpoint the flags name. Errors are usage errors.
pub fn resolve(a: &ConnArgs, env: &Env) -> Result<Endpoint, String> {
    let Some(host) = &a.host else {
        let tls_only = [
            ("--ca", a.ca.is_some()),
            ("--cert", a.cert.is_some()),
            ("--key", a.key.is_some()),
            ("--pki", a.pki.is_some()),
            ("--server-name", a.server_name.is_some()),
        ];
        if let Some((flag, _)) = tls_only.iter().find(|(_, set)| *set) {
            return Err(format!("{flag} needs --host (TLS)"));
        }
        return Ok(Endpoint::Unix(socket_path(a, env)));
    };
    if a.socket.is_some() {
        return Err("--socket and --host exclude each other".into());
    }
    let addr = with_port(host)?;
    let (ca, cert, key) = pki_files(a.pki.as_deref(), env);
    Ok(Endpoint::Tls {
        server_name: a
            .server_name
            .clone()
            .unwrap_or_else(|| host_part(&addr).to_string()),
        addr,
        ca: a.ca.clone().unwrap_or(ca),
        identity: Some(TlsIdentity {
            cert: a.cert.clone().unwrap_or(cert),
            key: a.key.clone().unwrap_or(key),
        }),
    })
}

fn socket_path(a: &ConnArgs, env: &Env) -> PathBuf {
    if let Some(p) = &a.socket {
        return p.clone();
    }
    if let Some(p) = (env.var)(SOCKET_ENV) {
        return p.into();
    }
    let dev = Path::new(DEV_SOCKET);
    if (env.exists)(dev) {
        return dev.to_path_buf();
    }
    SYSTEM_SOCKET.into()
}

/// CA, client certificate and key in a PKI directory: the system layout when
/// the directory has one, else the dev layout.
fn pki_files(dir: Option<&Path>, env: &Env) -> (PathBuf, PathBuf, PathBuf) {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None if (env.exists)(Path::new(DEV_PKI)) => PathBuf::from(DEV_PKI),
        None => PathBuf::from(SYSTEM_PKI),
    };
    let system_ca = dir.join("certs/cacert.pem");
    if dir == Path::new(SYSTEM_PKI) || (env.exists)(&system_ca) {
        (
            system_ca,
            dir.join("certs/client.pem"),
            dir.join("keys/client-key.pem"),
        )
    } else {
        (
            dir.join(depot_client::DEV_CA),
            dir.join(depot_client::DEV_CLIENT_CERT),
            dir.join(depot_client::DEV_CLIENT_KEY),
        )
    }
}

/// `host`, `host:port`, `v6`, `[v6]` or `[v6]:port`, with the default port
/// added when missing.
pub fn with_port(host: &str) -> Result<String, String> {
    let bad = || format!("--host {host:?}: expected HOST or HOST:PORT");
    if host.is_empty() {
        return Err(bad());
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (name, None),
            p => (name, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else if host.matches(':').count() == 1 {
        let (n, p) = host.split_once(':').expect("one colon");
        (n, Some(p))
    } else {
        (host, None)
    };
    if name.is_empty() {
        return Err(bad());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse::<u16>().map_err(|_| bad())?,
    };
    Ok(if name.contains(':') {
        format!("[{name}]:{port}")
    } else {
        format!("{name}:{port}")
    })
}

pub fn options(a: &ConnArgs) -> Options {
    Options::with_timeout(Duration::from_secs_f64(a.timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_with(
        a: &ConnArgs,
        vars: &[(&str, &str)],
        existing: &[&str],
    ) -> Result<Endpoint, String> {
        let var = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let exists = |p: &Path| existing.iter().any(|e| Path::new(e) == p);
        resolve(
            a,
            &Env {
                var: &var,
                exists: &exists,
            },
        )
    }

    fn args() -> ConnArgs {
        ConnArgs {
            timeout: 30.0,
            ..ConnArgs::default()
        }
    }

    #[test]
    fn socket_precedence() {
        let unix = |p: &str| Ok(Endpoint::Unix(p.into()));
        let a = args();
        assert_eq!(resolve_with(&a, &[], &[]), unix(SYSTEM_SOCKET));
        assert_eq!(resolve_with(&a, &[], &[DEV_SOCKET]), unix(DEV_SOCKET));
        assert_eq!(
            resolve_with(&a, &[(SOCKET_ENV, "/e.sock")], &[DEV_SOCKET]),
            unix("/e.sock")
        );
        let a = ConnArgs {
            socket: Some("/s.sock".into()),
            ..args()
        };
        assert_eq!(
            resolve_with(&a, &[(SOCKET_ENV, "/e.sock")], &[]),
            unix("/s.sock")
        );
    }

    #[test]
    fn tls_defaults() {
        let a = ConnArgs {
            host: Some("127.0.0.1:4000".into()),
            ..args()
        };
        // No dev directory: the system layout.
        assert_eq!(
            resolve_with(&a, &[], &[]).unwrap(),
            Endpoint::Tls {
                addr: "127.0.0.1:4000".into(),
                server_name: "127.0.0.1".into(),
                ca: "/etc/pki/depot/certs/cacert.pem".into(),
                identity: Some(TlsIdentity {
                    cert: "/etc/pki/depot/certs/client.pem".into(),
                    key: "/etc/pki/depot/keys/client-key.pem".into(),
                }),
            }
        );
        // A dev directory here: its files.
        assert_eq!(
            resolve_with(&a, &[], &[DEV_PKI]).unwrap(),
            Endpoint::tls_from_pki_dir("127.0.0.1:4000", DEV_PKI)
        );
        // --pki, then single files and the server name override.
        let a = ConnArgs {
            host: Some("localhost".into()),
            pki: Some("/p".into()),
            key: Some("/k.pem".into()),
            server_name: Some("depot.example".into()),
            ..args()
        };
        let Endpoint::Tls {
            addr,
            server_name,
            ca,
            identity,
        } = resolve_with(&a, &[], &[DEV_PKI]).unwrap()
        else {
            panic!()
        };
        assert_eq!(addr, "localhost:54321");
        assert_eq!(server_name, "depot.example");
        assert_eq!(ca, PathBuf::from("/p/ca.pem"));
        let id = identity.unwrap();
        assert_eq!((id.cert, id.key), ("/p/client.pem".into(), "/k.pem".into()));
        // A --pki directory in the system layout.
        let a = ConnArgs {
            host: Some("h".into()),
            pki: Some("/q".into()),
            ..args()
        };
        let Endpoint::Tls { ca, .. } = resolve_with(&a, &[], &["/q/certs/cacert.pem"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(ca, PathBuf::from("/q/certs/cacert.pem"));
    }

    #[test]
    fn tls_flags_need_host() {
        let a = ConnArgs {
            ca: Some("/ca.pem".into()),
            ..args()
        };
        assert!(resolve_with(&a, &[], &[]).unwrap_err().contains("--ca"));
        let a = ConnArgs {
            host: Some("h:1".into()),
            socket: Some("/s".into()),
            ..args()
        };
        assert!(resolve_with(&a, &[], &[]).is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(with_port("h").unwrap(), "h:54321");
        assert_eq!(with_port("h:1").unwrap(), "h:1");
        assert_eq!(with_port("::1").unwrap(), "[::1]:54321");
        assert_eq!(with_port("[::1]").unwrap(), "[::1]:54321");
        assert_eq!(with_port("[::1]:7").unwrap(), "[::1]:7");
        for bad in ["", "h:", "h:x", "h:70000", "[::1", "[::1]7", ":5"] {
            assert!(with_port(bad).is_err(), "{bad:?}");
        }
    }
}
