//! Running with VDSM's certificate files (issue 13): a host that already
//! has the engine's certificates under `/etc/pki/vdsm` points depotd's
//! `[tls]` at them (docs/install.md). The tree is made here under a
//! temporary root with VDSM's names and modes, as ovirt-engine's
//! `ovirt-host-deploy-vdsm-certificates` role lays it out: `certs/` and
//! `keys/` 0755, `certs/cacert.pem` and `certs/vdsmcert.pem` 0644,
//! `keys/vdsmkey.pem` 0440; an RSA host key in PKCS#1 ("BEGIN RSA PRIVATE
//! KEY") or PKCS#8 ("BEGIN PRIVATE KEY") form, both of which hosts have.

mod common;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::Daemon;
use depot_client::{Client, Endpoint, TlsIdentity};
use depotd::pki;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;

const ORG: &str = "Test";
const ENGINE_CN: &str = "engine.example.com";
const HOST_KEY_PKCS1: &str = include_str!("data/vdsm-pki/host-key.pkcs1.pem");
const HOST_KEY_PKCS8: &str = include_str!("data/vdsm-pki/host-key.pkcs8.pem");
const CA_KEY: &str = include_str!("data/vdsm-pki/ca-key.pkcs8.pem");

/// `<root>/etc/pki/vdsm` with the engine's CA, the host's certificate and
/// key; the CA also signs the test's client certificates.
struct VdsmTree {
    root: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl VdsmTree {
    fn new(host_key_file: &str) -> VdsmTree {
        let root = tempfile::tempdir().unwrap();
        let tree = VdsmTree {
            ca: {
                let ca_key = KeyPair::from_pem(CA_KEY).unwrap();
                let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.distinguished_name.push(DnType::OrganizationName, ORG);
                p.distinguished_name
                    .push(DnType::CommonName, "engine.example.com.12345");
                p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
                p.self_signed(&ca_key).unwrap()
            },
            ca_key: KeyPair::from_pem(CA_KEY).unwrap(),
            root,
        };
        // The host's certificate, as the engine's pki-enroll-request signs
        // it: O=<org>, CN=<host>, the host's names as SANs.
        let host_key = KeyPair::from_pem(HOST_KEY_PKCS8).unwrap();
        let mut p = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        p.distinguished_name.push(DnType::OrganizationName, ORG);
        p.distinguished_name.push(DnType::CommonName, "localhost");
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let host = p.signed_by(&host_key, &tree.ca, &tree.ca_key).unwrap();

        let pki = tree.pki();
        for dir in [pki.join("certs"), pki.join("keys")] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .unwrap();
        }
        pki::write_file(&tree.ca_file(), &tree.ca.pem(), 0o644).unwrap();
        pki::write_file(&tree.cert_file(), &host.pem(), 0o644).unwrap();
        pki::write_file(&tree.key_file(), host_key_file, 0o440).unwrap();
        tree
    }

    fn pki(&self) -> PathBuf {
        self.root.path().join("etc/pki/vdsm")
    }
    fn ca_file(&self) -> PathBuf {
        self.pki().join("certs/cacert.pem")
    }
    fn cert_file(&self) -> PathBuf {
        self.pki().join("certs/vdsmcert.pem")
    }
    fn key_file(&self) -> PathBuf {
        self.pki().join("keys/vdsmkey.pem")
    }

    /// docs/install.md's snippet, with this tree's root.
    fn config(&self, allowed_subjects: &[&str]) -> String {
        format!(
            "[tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\nallowed_subjects = {:?}\n",
            self.ca_file(),
            self.cert_file(),
            self.key_file(),
            allowed_subjects
        )
    }

    /// A client certificate (O=<org>, CN=`cn`) signed by this tree's CA,
    /// written into `dir`.
    fn client(&self, dir: &Path, cn: &str) -> (TlsIdentity, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::OrganizationName, ORG);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let id = TlsIdentity {
            cert: dir.join(format!("{cn}.pem")),
            key: dir.join(format!("{cn}-key.pem")),
        };
        pki::write_file(&id.cert, &cert.pem(), 0o644).unwrap();
        pki::write_file(&id.key, &key.serialize_pem(), 0o600).unwrap();
        (id, pki::subject_of(cert.der()))
    }

    /// Every file and directory under the tree, with its mode.
    fn listing(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        let mut dirs = vec![self.pki()];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                let meta = e.metadata().unwrap();
                let rel = e.path().strip_prefix(self.pki()).unwrap().to_owned();
                out.push((
                    rel.display().to_string(),
                    meta.permissions().mode() & 0o7777,
                ));
                if meta.is_dir() {
                    dirs.push(e.path());
                }
            }
        }
        out.sort();
        out
    }

    fn endpoint(&self, d: &Daemon, identity: Option<TlsIdentity>, ca: PathBuf) -> Endpoint {
        Endpoint::Tls {
            addr: d.tls_addr(),
            server_name: "localhost".into(),
            ca,
            identity,
        }
    }
}

/// VDSM's tree exactly: names and modes.
fn vdsm_layout() -> Vec<(String, u32)> {
    vec![
        ("certs".into(), 0o755),
        ("certs/cacert.pem".into(), 0o644),
        ("certs/vdsmcert.pem".into(), 0o644),
        ("keys".into(), 0o755),
        ("keys/vdsmkey.pem".into(), 0o440),
    ]
}

async fn refused(ep: &Endpoint) -> bool {
    match Client::connect(ep).await {
        Err(_) => true,
        // TLS 1.3 may finish the client's side of the handshake before the
        // server's verdict arrives; the first call then fails.
        Ok(c) => c.call("Host.ping2", json!({})).await.is_err(),
    }
}

/// The engine's client certificate gets in, over the host certificate and
/// key of VDSM's tree; a client of another CA does not; depotd (here in
/// dev mode, which generates certificates where none are configured)
/// leaves the tree exactly as it was.
async fn engine_connects_with_vdsm_files(host_key_file: &str) {
    let tree = VdsmTree::new(host_key_file);
    let before = tree.listing();
    assert_eq!(before, vdsm_layout());
    let d = Daemon::start(&tree.config(&[]));
    let clients = tempfile::tempdir().unwrap();
    let (engine, _) = tree.client(clients.path(), ENGINE_CN);
    let c = Client::connect(&tree.endpoint(&d, Some(engine), tree.ca_file()))
        .await
        .expect("the engine's certificate is let in");
    let caps = c.call("Host.getCapabilities", json!({})).await.unwrap();
    assert_eq!(caps["version_name"], "depot");
    // The request log names the engine's certificate.
    common::eventually("the engine's subject in the log", common::WAIT, || {
        let found = d.log().contains(ENGINE_CN);
        async move { found.then_some(()) }
    })
    .await;

    // A client whose certificate another CA signed is refused.
    let (rogue_ca, rogue_key) = pki::new_ca("rogue CA").unwrap();
    let (cert, key) = pki::new_client(ENGINE_CN, &rogue_ca, &rogue_key).unwrap();
    let rogue = TlsIdentity {
        cert: clients.path().join("rogue.pem"),
        key: clients.path().join("rogue-key.pem"),
    };
    pki::write_file(&rogue.cert, &cert.pem(), 0o600).unwrap();
    pki::write_file(&rogue.key, &key.serialize_pem(), 0o600).unwrap();
    assert!(
        refused(&tree.endpoint(&d, Some(rogue), tree.ca_file())).await,
        "a client of another CA got in"
    );
    // And one without a certificate.
    assert!(refused(&tree.endpoint(&d, None, tree.ca_file())).await);
    c.call("Host.ping2", json!({})).await.unwrap();

    assert_eq!(tree.listing(), before, "depotd changed VDSM's tree");
}

#[tokio::test]
async fn vdsm_tree_with_a_pkcs1_rsa_key() {
    engine_connects_with_vdsm_files(HOST_KEY_PKCS1).await;
}

#[tokio::test]
async fn vdsm_tree_with_a_pkcs8_rsa_key() {
    engine_connects_with_vdsm_files(HOST_KEY_PKCS8).await;
}

/// docs/install.md's `allowed_subjects`: only the engine's certificate,
/// not every one the engine's CA signed (it signs every host's too).
#[tokio::test]
async fn allowed_subjects_keep_other_hosts_out() {
    let tree = VdsmTree::new(HOST_KEY_PKCS1);
    let clients = tempfile::tempdir().unwrap();
    let (engine, engine_subject) = tree.client(clients.path(), ENGINE_CN);
    let (other_host, _) = tree.client(clients.path(), "host2.example.com");
    // As depotd logs it ("CN=engine.example.com, O=Test" here; an engine
    // certificate from openssl reads "C=US, O=<org>, CN=<engine>").
    assert!(
        engine_subject.contains(&format!("CN={ENGINE_CN}")),
        "{engine_subject}"
    );
    let d = Daemon::start(&tree.config(&[&engine_subject]));
    assert!(
        refused(&tree.endpoint(&d, Some(other_host), tree.ca_file())).await,
        "another host's certificate got in"
    );
    Client::connect(&tree.endpoint(&d, Some(engine), tree.ca_file()))
        .await
        .unwrap()
        .call("Host.ping2", json!({}))
        .await
        .unwrap();
}
