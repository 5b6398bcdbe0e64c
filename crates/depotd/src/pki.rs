//! Certificates: loading the server's TLS identity, requiring client
//! certificates signed by the configured CA, and generating a throwaway PKI
//! for dev mode (so dev mode still runs mutual TLS and depotctl finds its
//! client certificate in a known place).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {what} {path}: {message}")]
    Read {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} holds no certificate")]
    Empty(PathBuf),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// File names of a generated PKI directory (dev mode, tests).
pub struct PkiFiles {
    pub dir: PathBuf,
}

impl PkiFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PkiFiles { dir: dir.into() }
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }
}

/// Creates a CA, a server certificate for localhost and a client
/// certificate (CN `client_cn`) in `dir`, unless the CA is already there.
/// Keys are written owner-only. Returns whether anything was generated.
pub fn ensure_dev_pki(dir: &Path, client_cn: &str) -> Result<bool, PkiError> {
    let files = PkiFiles::new(dir);
    if files.ca().exists() {
        return Ok(false);
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::Write {
            path: dir.to_path_buf(),
            source,
        })?;

    let (ca_cert, ca_key) = new_ca("depot dev CA")?;
    let mut server = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    server.distinguished_name.push(DnType::CommonName, "depotd");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;

    let (client_cert, client_key) = new_client(client_cn, &ca_cert, &ca_key)?;

    // The CA goes last: its presence marks a complete directory.
    write_file(&files.server_key(), &server_key.serialize_pem(), 0o600)?;
    write_file(&files.server_cert(), &server_cert.pem(), 0o644)?;
    write_file(&files.client_key(), &client_key.serialize_pem(), 0o600)?;
    write_file(&files.client_cert(), &client_cert.pem(), 0o644)?;
    write_file(&files.ca_key(), &ca_key.serialize_pem(), 0o600)?;
    write_file(&files.ca(), &ca_cert.pem(), 0o644)?;
    Ok(true)
}

/// A self-signed CA.
pub fn new_ca(cn: &str) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert, key))
}

/// A client certificate signed by the given CA.
pub fn new_client(
    cn: &str,
    ca: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca, ca_key)?;
    Ok((cert, key))
}

pub fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let read_err = |message: String| PkiError::Read {
        what,
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::Empty(path.to_path_buf()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| PkiError::Read {
        what: "private key",
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The TLS server configuration: the server's identity, and a verifier that
/// refuses any client without a certificate signed by `ca_file`.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&tls.ca_file, "CA certificate")? {
        roots.add(ca).map_err(|e| {
            PkiError::Tls(format!("bad CA certificate {}: {e}", tls.ca_file.display()))
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let certs = load_certs(&tls.cert_file, "server certificate")?;
    let key = load_key(&tls.key_file)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The subject of a peer's certificate, for the request log.
pub fn subject_of(cert: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, c)) => c.subject().to_string(),
        Err(_) => "<unparsable certificate>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_pki_is_generated_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        assert!(ensure_dev_pki(&pki, "depotctl").unwrap());
        let before = fs::read(pki.join("ca.pem")).unwrap();
        assert!(!ensure_dev_pki(&pki, "depotctl").unwrap());
        assert_eq!(before, fs::read(pki.join("ca.pem")).unwrap());

        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(pki.join("client-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let files = PkiFiles::new(&pki);
        let tls = TlsConfig {
            ca_file: files.ca(),
            cert_file: files.server_cert(),
            key_file: files.server_key(),
            allowed_subjects: Vec::new(),
        };
        server_config(&tls).unwrap();
        let client = load_certs(&files.client_cert(), "client").unwrap();
        assert_eq!(subject_of(&client[0]), "CN=depotctl");
    }
}
