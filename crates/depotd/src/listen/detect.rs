//! Protocol detection by a connection's first bytes, as VDSM's
//! `protocoldetector` does: one port carries HTTP (JSON-RPC POST, WebSocket,
//! the OVF PUT/GET streams) and STOMP frames. The bytes read to decide are
//! replayed to the protocol's handler.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Stomp,
}

const HTTP_METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
];
/// A STOMP session starts with CONNECT (or STOMP), except that the
/// engine's client may send its SUBSCRIBEs first (its outbox is a stack).
const STOMP_COMMANDS: &[&[u8]] = &[
    b"CONNECT\n",
    b"CONNECT\r\n",
    b"STOMP\n",
    b"STOMP\r\n",
    b"SUBSCRIBE\n",
    b"SUBSCRIBE\r\n",
];
/// Longer than any prefix above.
const SNIFF_MAX: usize = 16;

/// Decides from a prefix: `Some(Ok(p))` when it matches, `Some(Err(()))`
/// when no protocol can match any more, `None` when more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Result<Protocol, ()>> {
    let mut possible = false;
    for (list, proto) in [
        (HTTP_METHODS, Protocol::Http),
        (STOMP_COMMANDS, Protocol::Stomp),
    ] {
        for p in list {
            if buf.starts_with(p) {
                return Some(Ok(proto));
            }
            if p.starts_with(buf) {
                possible = true;
            }
        }
    }
    (!possible).then_some(Err(()))
}

/// Reads until the protocol is known. Returns it with the bytes read.
pub async fn sniff<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(Protocol, Vec<u8>)> {
    let mut buf = Vec::with_capacity(SNIFF_MAX);
    loop {
        let mut chunk = [0u8; SNIFF_MAX];
        let want = SNIFF_MAX - buf.len();
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a request",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        match classify(&buf) {
            Some(Ok(p)) => return Ok((p, buf)),
            Some(Err(())) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "unknown protocol, first bytes {:?}",
                        String::from_utf8_lossy(&buf)
                    ),
                ))
            }
            None if buf.len() >= SNIFF_MAX => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unknown protocol",
                ))
            }
            None => {}
        }
    }
}

/// A stream that first yields `prefix`, then reads from `inner`.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(classify(b"POST / HTTP/1.1"), Some(Ok(Protocol::Http)));
        assert_eq!(classify(b"PUT "), Some(Ok(Protocol::Http)));
        assert_eq!(classify(b"GET /"), Some(Ok(Protocol::Http)));
        assert_eq!(
            classify(b"CONNECT\naccept-version:1.2"),
            Some(Ok(Protocol::Stomp))
        );
        assert_eq!(classify(b"SUBSCRIBE\r\nid:1"), Some(Ok(Protocol::Stomp)));
        assert_eq!(classify(b"SEND\n"), Some(Err(())));
        assert_eq!(classify(b"PO"), None);
        assert_eq!(classify(b"CONN"), None);
        assert_eq!(classify(b"CONNECT "), Some(Err(())));
        assert_eq!(classify(b"\x16\x03\x01"), Some(Err(())));
        assert_eq!(classify(b"{\"jsonrpc\""), Some(Err(())));
    }

    #[tokio::test]
    async fn sniff_replays_bytes() {
        let data = b"POST / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let mut reader = &data[..];
        let (p, head) = sniff(&mut reader).await.unwrap();
        assert_eq!(p, Protocol::Http);
        let mut s = Prefixed::new(head, reader);
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, data);
    }
}
