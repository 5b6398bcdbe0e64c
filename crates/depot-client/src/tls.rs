//! The rustls client configuration: the daemon's CA as the only root, an
//! optional client certificate, ALPN `http/1.1`, TLS 1.2 and 1.3.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::Arc;

use crate::endpoint::TlsIdentity;
use crate::error::ClientError;

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ClientError::Tls(format!("reading {what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientError::Tls(format!(
            "no certificate in {what} {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// Builds the client configuration from PEM files.
pub fn client_config(
    ca: &Path,
    identity: Option<&TlsIdentity>,
) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca, "CA file")? {
        roots
            .add(cert)
            .map_err(|e| ClientError::Tls(format!("CA file {}: {e}", ca.display())))?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(format!("TLS versions: {e}")))?
            .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = read_certs(&id.cert, "client certificate")?;
            let key = PrivateKeyDer::from_pem_file(&id.key).map_err(|e| {
                ClientError::Tls(format!("reading client key {}: {e}", id.key.display()))
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                ClientError::Tls(format!(
                    "client certificate {} and key {}: {e}",
                    id.cert.display(),
                    id.key.display()
                ))
            })?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name the server certificate is checked against: an IP address when
/// the string is one, else a DNS name.
pub fn server_name(name: &str) -> Result<ServerName<'static>, ClientError> {
    ServerName::try_from(name.to_string())
        .map_err(|e| ClientError::Tls(format!("bad server name {name:?}: {e}")))
}
