//! Streamed bodies on the HTTP connection of a [`Client`]: `PUT /` from a
//! reader and `GET /` of a byte range into a writer, VDSM's OVF_STORE wire
//! (docs/api.md; `depotd`'s `transport::ovf`).
//!
//! Bytes pass in chunks of at most [`CHUNK`] through a small bounded channel,
//! so memory stays bounded whatever the size. The client's call timeout is
//! an idle timeout here: the transfer fails when no byte moves (and no
//! answer comes) for that long, however long the whole transfer takes.
//!
//! A refusal (4xx/5xx with `{"status": {"code": N, "message": "..."}}`)
//! becomes [`ClientError::Rpc`], like a JSON-RPC error.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::Value;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use depot_api::WireError;

use crate::error::ClientError;
use crate::http::{whole, Client, ReqBody};
use crate::jsonrpc::truncate;

/// The header carrying the id of the task the daemon ran for a stream.
pub const TASK_ID_HEADER: &str = "Task-Id";

/// The largest piece read from the reader at once.
pub const CHUNK: usize = 256 * 1024;
/// Pieces in flight between the reader and the socket.
const DEPTH: usize = 4;
/// The most of an error body kept.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The daemon's answer to a streamed PUT or GET that succeeded.
#[derive(Debug, Clone)]
pub struct StreamReply {
    /// The HTTP status (200 for a PUT, 206 for a GET).
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// Bytes sent (PUT) or written to the writer (GET).
    pub bytes: u64,
}

impl StreamReply {
    /// A response header as text (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Task-Id` header.
    pub fn task_id(&self) -> Option<&str> {
        self.header(TASK_ID_HEADER)
    }
}

impl Client {
    /// `PUT /` with `headers` and a body of exactly `length` bytes read from
    /// `reader` (sent as `Content-Length`, with `Content-Type:
    /// application/octet-stream` unless `headers` names another). Returns
    /// when the daemon has answered a 2xx status. A reader that ends before
    /// `length` bytes, or fails, aborts the request with
    /// [`ClientError::Io`]; a refusal is [`ClientError::Rpc`].
    ///
    /// The OVF_STORE upload sends `Storage-Pool-Id`, `Storage-Domain-Id`,
    /// `Image-Id` and `Volume-Id`, and answers 200 with a `Task-Id`.
    pub async fn put_stream<R>(
        &self,
        headers: &[(&str, &str)],
        length: u64,
        mut reader: R,
    ) -> Result<StreamReply, ClientError>
    where
        R: AsyncRead + Unpin,
    {
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(DEPTH);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item.map(Frame::data), rx))
        });
        let body = StreamBody::new(stream).boxed();
        let req = self.stream_request(
            Method::PUT,
            headers,
            &[
                (header::CONTENT_TYPE, "application/octet-stream".into()),
                (header::CONTENT_LENGTH, length.to_string()),
            ],
            body,
        )?;
        let idle = self.opts.call_timeout;
        let moved = AtomicU64::new(0);

        let mut sender = self.ready_sender().await?;
        let send = sender.send_request(req);
        let feed = feed(&mut reader, length, tx, &moved);
        tokio::pin!(send, feed);
        let mut feeding = true;
        let mut watchdog = Watchdog::new(idle);
        let resp = loop {
            tokio::select! {
                r = &mut send => break r,
                r = &mut feed, if feeding => {
                    feeding = false;
                    // A local failure: the request is aborted, nothing to
                    // wait for.
                    r?;
                }
                _ = watchdog.tick() => watchdog.check(moved.load(Ordering::Relaxed),
                    "sending the body of PUT /")?,
            }
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return Err(self.failed("PUT /", &e).await),
        };
        let sent = moved.load(Ordering::Relaxed);
        let (status, headers) = self.finish(resp, "PUT /", idle).await?;
        Ok(StreamReply {
            status,
            headers,
            bytes: sent,
        })
    }

    /// `GET /` with `headers` and `Range: bytes=start-end` (inclusive):
    /// writes exactly those `end - start + 1` bytes to `writer` as they
    /// arrive, then flushes it. The daemon must answer 206; fewer or more
    /// bytes than asked for are a [`ClientError::Protocol`] error, a failing
    /// writer [`ClientError::Io`], a refusal [`ClientError::Rpc`].
    pub async fn get_range<W>(
        &self,
        headers: &[(&str, &str)],
        start: u64,
        end: u64,
        writer: &mut W,
    ) -> Result<StreamReply, ClientError>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        if end < start {
            return Err(ClientError::Protocol(format!(
                "range {start}-{end}: the end is before the start"
            )));
        }
        let expected = end - start + 1;
        let req = self.stream_request(
            Method::GET,
            headers,
            &[(header::RANGE, format!("bytes={start}-{end}"))],
            whole(Bytes::new()),
        )?;
        let idle = self.opts.call_timeout;
        let mut sender = self.ready_sender().await?;
        let resp = match tokio::time::timeout(idle, sender.send_request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(self.failed("GET /", &e).await),
            Err(_) => return Err(self.timeout("waiting for the answer to GET /", idle)),
        };
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            let (status, _) = self.finish(resp, "GET /", idle).await?;
            return Err(ClientError::Protocol(format!(
                "GET /: expected HTTP 206 for a range, got {status}"
            )));
        }
        let (parts, mut body) = resp.into_parts();
        if let Some(v) = parts.headers.get(header::CONTENT_RANGE) {
            let text = v.to_str().unwrap_or_default();
            if !content_range_matches(text, start, end) {
                return Err(ClientError::Protocol(format!(
                    "GET /: asked for bytes {start}-{end}, got Content-Range {text:?}"
                )));
            }
        }
        let mut got = 0u64;
        loop {
            let frame = match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(f))) => f,
                Ok(Some(Err(e))) => return Err(self.failed("GET /: reading the body", &e).await),
                Ok(None) => break,
                Err(_) => return Err(self.timeout("waiting for the body of GET /", idle)),
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            got += data.len() as u64;
            if got > expected {
                return Err(ClientError::Protocol(format!(
                    "GET /: more than the {expected} bytes asked for"
                )));
            }
            match tokio::time::timeout(idle, writer.write_all(&data)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ClientError::Io(format!("writing the download: {e}"))),
                Err(_) => return Err(self.timeout("writing the download", idle)),
            }
        }
        if got != expected {
            return Err(ClientError::Protocol(format!(
                "GET /: the body ended after {got} of {expected} bytes"
            )));
        }
        writer
            .flush()
            .await
            .map_err(|e| ClientError::Io(format!("writing the download: {e}")))?;
        Ok(StreamReply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            bytes: got,
        })
    }

    /// A request to `/` with the connection's Host, `defaults` (replaced by
    /// the caller's headers of the same name) and the caller's headers.
    fn stream_request(
        &self,
        method: Method,
        headers: &[(&str, &str)],
        defaults: &[(HeaderName, String)],
        body: ReqBody,
    ) -> Result<Request<ReqBody>, ClientError> {
        let bad = |what: String| ClientError::Protocol(format!("building request: {what}"));
        let mut map = HeaderMap::new();
        let host = HeaderValue::from_str(&self.authority).map_err(|e| bad(e.to_string()))?;
        map.insert(header::HOST, host);
        for (name, value) in defaults {
            let v = HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?;
            map.insert(name.clone(), v);
        }
        for (name, value) in headers {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| bad(format!("bad header name {name:?}")))?;
            let v = HeaderValue::from_str(value)
                .map_err(|_| bad(format!("bad value for header {name}: {value:?}")))?;
            map.insert(n, v);
        }
        let mut req = Request::builder()
            .method(method)
            .uri("/")
            .body(body)
            .map_err(|e| bad(e.to_string()))?;
        *req.headers_mut() = map;
        Ok(req)
    }

    /// Reads a whole (small) response: a 2xx status and the headers, or
    /// the refusal as an error.
    async fn finish(
        &self,
        resp: Response<Incoming>,
        what: &str,
        idle: Duration,
    ) -> Result<(u16, HeaderMap), ClientError> {
        let (parts, body) = resp.into_parts();
        let limited = http_body_util::Limited::new(body, MAX_ERROR_BODY);
        let bytes = match tokio::time::timeout(idle, limited.collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            // Too long or broken: judge by the status alone.
            Ok(Err(_)) => Bytes::new(),
            Err(_) => return Err(self.timeout(&format!("reading the answer to {what}"), idle)),
        };
        let status = parts.status.as_u16();
        if parts.status.is_success() {
            return Ok((status, parts.headers));
        }
        Err(refusal(what, status, &bytes))
    }

    fn timeout(&self, what: &str, after: Duration) -> ClientError {
        ClientError::Timeout {
            what: format!("{what} from {}", self.endpoint()),
            after,
        }
    }
}

/// Reads `reader` into the body channel, exactly `length` bytes; counts
/// them in `moved`. Returns when all are sent, or when the request ended
/// (the daemon answered before reading everything: the answer tells why).
async fn feed<R: AsyncRead + Unpin>(
    reader: &mut R,
    length: u64,
    tx: mpsc::Sender<io::Result<Bytes>>,
    moved: &AtomicU64,
) -> Result<(), ClientError> {
    let mut sent = 0u64;
    let abort = |tx: &mpsc::Sender<io::Result<Bytes>>, why: String| {
        // Breaking the body makes hyper abort the request; dropping the
        // sender then ends it short of Content-Length, which does too.
        let _ = tx.try_send(Err(io::Error::other(why.clone())));
        ClientError::Io(why)
    };
    while sent < length {
        let want = (length - sent).min(CHUNK as u64);
        // Read into uninitialised capacity: a zeroed buffer per piece cost
        // a memset (and fresh pages) of the whole body.
        let mut buf = BytesMut::with_capacity(want as usize);
        let n = match (&mut *reader).take(want).read_buf(&mut buf).await {
            Ok(0) => {
                return Err(abort(
                    &tx,
                    format!("the upload's source ended after {sent} of {length} bytes"),
                ))
            }
            Ok(n) => n,
            Err(e) => return Err(abort(&tx, format!("reading the upload's source: {e}"))),
        };
        if tx.send(Ok(buf.freeze())).await.is_err() {
            return Ok(());
        }
        sent += n as u64;
        moved.store(sent, Ordering::Relaxed);
    }
    Ok(())
}

/// Fails a transfer when nothing moved for a whole period.
struct Watchdog {
    interval: tokio::time::Interval,
    period: Duration,
    last: Option<u64>,
}

impl Watchdog {
    fn new(period: Duration) -> Watchdog {
        let start = tokio::time::Instant::now() + period;
        let mut interval = tokio::time::interval_at(start, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Watchdog {
            interval,
            period,
            last: None,
        }
    }

    async fn tick(&mut self) {
        self.interval.tick().await;
    }

    /// After a tick: an error when the count of bytes moved is the same as
    /// at the previous tick.
    fn check(&mut self, moved: u64, what: &str) -> Result<(), ClientError> {
        if self.last == Some(moved) {
            return Err(ClientError::Timeout {
                what: format!("{what}: no progress"),
                after: self.period,
            });
        }
        self.last = Some(moved);
        Ok(())
    }
}

/// `bytes a-b/total` (or `bytes a-b/*`) naming exactly `start`-`end`.
fn content_range_matches(value: &str, start: u64, end: u64) -> bool {
    let Some(spec) = value.trim().strip_prefix("bytes ") else {
        return false;
    };
    let range = spec.split_once('/').map_or(spec, |(r, _)| r);
    let Some((a, b)) = range.split_once('-') else {
        return false;
    };
    a.trim().parse::<u64>().ok() == Some(start) && b.trim().parse::<u64>().ok() == Some(end)
}

/// The error for a refused stream: the daemon's `{"status": {"code",
/// "message"}}` when the body has one, else the HTTP status.
fn refusal(what: &str, status: u16, body: &[u8]) -> ClientError {
    let wire = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("status").cloned())
        .and_then(|s| serde_json::from_value::<WireError>(s).ok());
    match wire {
        Some(w) => ClientError::Rpc(w),
        None => ClientError::Http(format!(
            "{what}: HTTP status {status}: {}",
            truncate(&String::from_utf8_lossy(body), 200)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_the_daemon_code() {
        let body = br#"{"status": {"code": 1000, "message": "Invalid parameter: x"}}"#;
        let e = refusal("PUT /", 400, body);
        assert_eq!(e.rpc_code(), Some(1000), "{e}");
        assert_eq!(e.to_string(), "error 1000: Invalid parameter: x");
        let e = refusal("PUT /", 502, b"bad gateway");
        assert!(
            matches!(&e, ClientError::Http(m) if m.contains("502") && m.contains("bad gateway")),
            "{e}"
        );
        let e = refusal("GET /", 400, br#"{"status": "nope"}"#);
        assert!(matches!(e, ClientError::Http(_)), "{e}");
    }

    #[test]
    fn content_ranges() {
        assert!(content_range_matches("bytes 0-10239/134217728", 0, 10239));
        assert!(content_range_matches("bytes 5-9/*", 5, 9));
        assert!(!content_range_matches("bytes 0-10/20", 0, 9));
        assert!(!content_range_matches("bytes 1-9/20", 0, 9));
        assert!(!content_range_matches("items 0-9/20", 0, 9));
        assert!(!content_range_matches("bytes x", 0, 9));
    }

    #[tokio::test]
    async fn feed_sends_exactly_length_and_aborts_short_sources() {
        let data = vec![7u8; CHUNK + 100];
        let (tx, mut rx) = mpsc::channel(64);
        let moved = AtomicU64::new(0);
        // The source holds more than the length: only `length` is sent.
        feed(&mut &data[..], CHUNK as u64 + 10, tx, &moved)
            .await
            .unwrap();
        let mut sizes = Vec::new();
        while let Some(item) = rx.recv().await {
            sizes.push(item.unwrap().len());
        }
        assert_eq!(sizes, vec![CHUNK, 10]);
        assert_eq!(moved.load(Ordering::Relaxed), CHUNK as u64 + 10);

        let (tx, mut rx) = mpsc::channel(64);
        let e = feed(&mut &data[..100], 512, tx, &AtomicU64::new(0))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::Io(m) if m.contains("after 100 of 512")),
            "{e}"
        );
        assert!(rx.recv().await.unwrap().is_ok());
        assert!(rx.recv().await.unwrap().is_err(), "the body is broken");
    }

    /// Clients are shared between tasks, and transfers spawned.
    #[allow(dead_code)]
    fn clients_and_transfers_are_send(c: &Client, f: tokio::fs::File, w: &mut tokio::fs::File) {
        fn send<T: Send>(_: T) {}
        fn sync<T: Send + Sync>(_: &T) {}
        sync(c);
        send(c.put_stream(&[], 0, f));
        send(c.get_range(&[], 0, 0, w));
    }

    #[tokio::test]
    async fn watchdog_needs_progress_each_period() {
        let mut w = Watchdog::new(Duration::from_millis(20));
        w.tick().await;
        w.check(0, "x").unwrap();
        w.tick().await;
        assert!(matches!(w.check(0, "x"), Err(ClientError::Timeout { .. })));
        w.check(1, "x").unwrap();
        w.tick().await;
        w.check(2, "x").unwrap();
    }
}
