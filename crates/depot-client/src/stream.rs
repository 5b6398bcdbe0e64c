//! The byte stream under HTTP and WebSocket: a Unix socket or TLS over TCP.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::endpoint::{Endpoint, Options};
use crate::error::{chain, ClientError};
use crate::tls;

/// An open connection to one of the daemon's listeners.
pub enum Stream {
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Opens the stream (for TLS, including the handshake), within the connect
/// timeout.
pub async fn open(ep: &Endpoint, opts: &Options) -> Result<Stream, ClientError> {
    match tokio::time::timeout(opts.connect_timeout, open_inner(ep)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout {
            what: format!("connecting to {ep}"),
            after: opts.connect_timeout,
        }),
    }
}

async fn open_inner(ep: &Endpoint) -> Result<Stream, ClientError> {
    match ep {
        Endpoint::Unix(path) => UnixStream::connect(path)
            .await
            .map(Stream::Unix)
            .map_err(|e| ClientError::Connect {
                target: path.display().to_string(),
                detail: e.to_string(),
            }),
        Endpoint::Tls {
            addr,
            server_name,
            ca,
            identity,
        } => {
            let config = tls::client_config(ca, identity.as_ref())?;
            let name = tls::server_name(server_name)?;
            let tcp =
                TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| ClientError::Connect {
                        target: addr.clone(),
                        detail: e.to_string(),
                    })?;
            let _ = tcp.set_nodelay(true);
            let tls = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| ClientError::Tls(format!("handshake with {addr}: {}", chain(&e))))?;
            Ok(Stream::Tls(Box::new(tls)))
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}
