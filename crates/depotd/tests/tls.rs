//! Mutual TLS: only clients with a certificate from the configured CA get in.

mod common;

use common::Daemon;
use depot_client::{Client, Endpoint, TlsIdentity};
use depotd::pki;
use serde_json::json;

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let d = Daemon::start("");
    let ep = d.tls().with_identity(None);
    let refused = match Client::connect(&ep).await {
        Err(_) => true,
        // TLS 1.3 may finish the client's side of the handshake before the
        // server's verdict arrives; the first call then fails.
        Ok(c) => c.call("Host.ping2", json!({})).await.is_err(),
    };
    assert!(refused, "a client without a certificate got in");
    // The server logs the refusal; it may do so just after the client sees it.
    common::eventually("the refusal in the log", common::WAIT, || {
        let found = d.log().contains("TLS handshake refused");
        async move { found.then_some(()) }
    })
    .await;
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
    let refused = match Client::connect(&ep).await {
        Err(_) => true,
        Ok(c) => c.call("Host.ping2", json!({})).await.is_err(),
    };
    assert!(refused, "a client from another CA got in");
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
    // certificate makes the handshake fail.
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
    assert!(Client::connect(&ep).await.is_err());
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
