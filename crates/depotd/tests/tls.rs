//! Mutual TLS: only clients with a certificate from the configured CA get in.

mod common;

use common::Daemon;
use depot_client::{Client, ClientError, Endpoint, TlsIdentity};
use depotd::pki;
use serde_json::json;

/// The error of a client that the handshake refuses: at connect, or (TLS
/// 1.3 finishes the client's side of the handshake before the server's
/// verdict arrives) at the first call. Anything that is not a TLS error,
/// or a call that succeeds, fails the test.
async fn refusal(ep: &Endpoint) -> String {
    let err = match Client::connect(ep).await {
        Err(e) => e,
        Ok(c) => match c.call("Host.ping2", json!({})).await {
            Ok(v) => panic!("the refused client got an answer: {v}"),
            Err(e) => e,
        },
    };
    match err {
        ClientError::Tls(msg) => msg,
        other => panic!("not a TLS refusal: {other:?}"),
    }
}

/// Waits for the daemon's log line of a refused handshake with `reason`.
async fn refusal_logged(d: &Daemon, reason: &str) {
    // The server logs the refusal; it may do so just after the client sees it.
    common::eventually(
        &format!("the refusal ({reason}) in the log"),
        common::WAIT,
        || {
            let found = d
                .log()
                .lines()
                .any(|l| l.contains("TLS handshake refused") && l.contains(reason));
            async move { found.then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let d = Daemon::start("");
    let msg = refusal(&d.tls().with_identity(None)).await;
    assert!(msg.contains("CertificateRequired"), "{msg}");
    refusal_logged(&d, "peer sent no certificates").await;
    // The server keeps serving good clients.
    d.tls_client()
        .await
        .call("Host.ping2", json!({}))
        .await
        .unwrap();
}

#[tokio::test]
async fn client_signed_by_another_ca_is_refused() {
    let d = Daemon::start("");
    let other = tempfile::tempdir().unwrap();
    // The same subject as the real client's: only the issuer is wrong.
    let (ca, ca_key) = pki::new_ca("rogue CA").unwrap();
    let (cert, key) = pki::new_client("depotctl", &ca, &ca_key).unwrap();
    let cert_path = other.path().join("c.pem");
    let key_path = other.path().join("k.pem");
    pki::write_file(&cert_path, &cert.pem(), 0o600).unwrap();
    pki::write_file(&key_path, &key.serialize_pem(), 0o600).unwrap();
    let ep = d.tls().with_identity(Some(TlsIdentity {
        cert: cert_path,
        key: key_path,
    }));
    let msg = refusal(&ep).await;
    assert!(msg.contains("UnknownCA"), "{msg}");
    refusal_logged(&d, "invalid peer certificate: UnknownIssuer").await;
    d.tls_client()
        .await
        .call("Host.ping2", json!({}))
        .await
        .unwrap();
}

#[tokio::test]
async fn good_client_works_and_server_is_verified() {
    let d = Daemon::start("");
    let c = d.tls_client().await;
    let caps = c.call("Host.getCapabilities", json!({})).await.unwrap();
    assert_eq!(caps["version_name"], "depot");
    assert_eq!(caps["software_version"], env!("CARGO_PKG_VERSION"));

    // The client checks the server too: a CA that did not sign the server
    // certificate makes the handshake fail, on the client's side.
    let other = tempfile::tempdir().unwrap();
    let (ca, _) = pki::new_ca("another CA").unwrap();
    let ca_path = other.path().join("ca.pem");
    pki::write_file(&ca_path, &ca.pem(), 0o644).unwrap();
    let ep = match d.tls() {
        Endpoint::Tls {
            addr,
            server_name,
            identity,
            ..
        } => Endpoint::Tls {
            addr,
            server_name,
            ca: ca_path,
            identity,
        },
        u => u,
    };
    match Client::connect(&ep).await {
        Err(ClientError::Tls(msg)) => {
            assert!(
                msg.contains("invalid peer certificate: UnknownIssuer"),
                "{msg}"
            )
        }
        Err(other) => panic!("not a TLS refusal: {other:?}"),
        Ok(_) => panic!("a client that does not trust the server's CA connected"),
    }
    // The client's alert reaches the daemon.
    refusal_logged(&d, "received fatal alert: UnknownCA").await;
}

#[tokio::test]
async fn local_socket_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start("");
    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let key = std::fs::metadata(d.pki().join("server-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key & 0o777, 0o600);
}
