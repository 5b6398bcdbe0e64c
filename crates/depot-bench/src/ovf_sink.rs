//! The transport floor of the OVF benchmark: a separate process (this
//! binary, hidden subcommand `ovf-sink`) that serves `PUT /` over mutual
//! TLS exactly as depotd's listener does (rustls with the ring provider, the
//! daemon's own certificate, key and CA from its dev PKI, client
//! certificates required, ALPN `http/1.1`, TCP_NODELAY, hyper's HTTP/1.1
//! server on a multi-threaded tokio runtime) and throws the body away, frame
//! by frame as hyper hands it over, then answers 200. A PUT to it costs what
//! moving the bytes from the client into a server process costs on this
//! machine: TCP over loopback, TLS encryption and decryption, HTTP framing,
//! and the client's reading of the file. No upload can be faster.
//!
//! The sink prints its address on stdout and serves until stdin closes (the
//! benchmark holds the pipe; the sink ends with it).

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[derive(clap::Args)]
pub struct SinkArgs {
    /// depotd's PKI directory (ca.pem, server.pem, server-key.pem).
    #[arg(long)]
    pki: PathBuf,
    /// The address to listen on (port 0: any).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// depotd's server configuration (crates/depotd/src/pki.rs), rebuilt here:
/// the benchmark does not link the daemon.
fn server_config(pki: &Path) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in certs(&pki.join("ca.pem"))? {
        roots.add(ca).map_err(|e| e.to_string())?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let key_path = pki.join("server-key.pem");
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&pki.join("server.pem"))?, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads the body to its end and drops it; 200 if it had Content-Length
/// bytes, 400 otherwise.
async fn discard(req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    let mut got = 0u64;
    let mut ok = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    got += data.len() as u64;
                }
            }
            Err(_) => {
                ok = false;
                break;
            }
        }
    }
    let status = if ok && Some(got) == declared {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut r = Response::new(Empty::new());
    *r.status_mut() = status;
    Ok(r)
}

/// The sink's main: serves until stdin reaches its end.
pub fn serve(args: SinkArgs) -> Result<(), String> {
    let config = server_config(&args.pki)?;
    // depotd's runtime: multi-threaded, one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&args.listen)
            .await
            .map_err(|e| format!("bind {}: {e}", args.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("{addr}");
        let acceptor = TlsAcceptor::from(config);
        let accept = async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service_fn(discard))
                        .await;
                });
            }
        };
        // The benchmark's end closes our stdin.
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        });
        tokio::select! {
            _ = accept => {}
            _ = stdin_closed => {}
        }
        Ok(())
    })
}

/// A running sink; it ends when this is dropped (its stdin closes).
pub struct Sink {
    child: Child,
    stdin: Option<ChildStdin>,
    pub addr: String,
}

impl Sink {
    /// The sink's CPU time so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        crate::sys::process_cpu_seconds(&self.child.id().to_string())
    }

    pub fn start(pki: &Path, listen: &str) -> Result<Sink, String> {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(me)
            .arg("ovf-sink")
            .arg("--pki")
            .arg(pki)
            .arg("--listen")
            .arg(listen)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the sink: {e}"))?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("no sink stdout")?;
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let addr = line.trim().to_string();
        if addr.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the sink did not say its address".into());
        }
        Ok(Sink { child, stdin, addr })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}
