//! The slowest a client may move a body: a request body it sends, or a
//! response body (and any other bytes) it must take.
//!
//! A client that trickles a POST at 1 byte/s, stalls an OVF upload, or
//! stops reading a download would otherwise hold its connection, and what
//! the request holds (an upload slot, an image lock, a storage thread),
//! forever. The rule: while depotd waits on the client, the client must
//! move at least `min_rate` bytes per second, measured over `window`. Bytes
//! earn waiting time (1/min_rate s each) up to one window; waiting spends
//! it. A transfer that stalls completely therefore ends after one window,
//! one at r < min_rate after window / (1 - r/min_rate), and one at
//! min_rate or faster never does. Time depotd itself is busy (a slow disk
//! behind an upload) is not waiting on the client and costs nothing.
//!
//! [`PacedBody`] applies the rule to request bodies; [`PacedIo`] applies it
//! to everything written to a connection's socket.

use bytes::Buf;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The configured rule (`limits.min_body_rate`, `limits.body_window_s`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaceLimits {
    /// Bytes per second; at least 1.
    pub min_rate: u64,
    pub window: Duration,
}

impl PaceLimits {
    fn describe(&self) -> String {
        format!(
            "the client moved fewer than {} bytes/s over {:.1} s of waiting",
            self.min_rate,
            self.window.as_secs_f64()
        )
    }
}

/// One direction of one transfer.
pub struct Pace {
    limits: PaceLimits,
    /// Waiting time left before more bytes are due.
    budget: Duration,
    /// When the current wait on the client began.
    waiting_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
}

impl Pace {
    pub fn new(limits: PaceLimits) -> Pace {
        Pace {
            limits,
            budget: limits.window,
            waiting_since: None,
            timer: Box::pin(tokio::time::sleep(limits.window)),
        }
    }

    /// `n` bytes moved: the wait (if any) ends, the bytes earn time.
    pub fn progress(&mut self, n: usize) {
        if let Some(since) = self.waiting_since.take() {
            self.budget = self.budget.saturating_sub(since.elapsed());
        }
        let earned = Duration::from_secs_f64(n as f64 / self.limits.min_rate.max(1) as f64);
        self.budget = (self.budget + earned).min(self.limits.window);
    }

    /// The transfer waits on the client. `Ready` when it has waited longer
    /// than the bytes it moved allow: the client is too slow. Otherwise the
    /// task is woken when that time comes.
    pub fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let deadline = since + self.budget;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx)
    }

    pub fn limits(&self) -> PaceLimits {
        self.limits
    }
}

/// The error of a transfer that was too slow.
#[derive(Debug, thiserror::Error)]
#[error("too slow: {detail}")]
pub struct TooSlow {
    pub detail: String,
}

impl TooSlow {
    fn new(limits: PaceLimits) -> TooSlow {
        TooSlow {
            detail: limits.describe(),
        }
    }
}

/// The error of a [`PacedBody`]: the inner body's, or too slow.
#[derive(Debug, thiserror::Error)]
pub enum BodyError<E> {
    #[error(transparent)]
    Inner(E),
    #[error(transparent)]
    TooSlow(TooSlow),
}

/// A request body that fails with [`BodyError::TooSlow`] when the client
/// sends it too slowly. Only time spent in `poll_frame` waiting for the
/// client counts: a consumer that stops polling (back-pressure) costs the
/// client nothing.
pub struct PacedBody<B> {
    inner: B,
    pace: Pace,
}

impl<B> PacedBody<B> {
    pub fn new(inner: B, limits: PaceLimits) -> Self {
        PacedBody {
            inner,
            pace: Pace::new(limits),
        }
    }
}

impl<B> Body for PacedBody<B>
where
    B: Body + Unpin,
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = BodyError<B::Error>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.pace
                    .progress(frame.data_ref().map_or(0, |d| d.remaining()));
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Inner(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.pace.poll_wait(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::TooSlow(TooSlow::new(
                    this.pace.limits(),
                ))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's socket whose writes fail (`TimedOut`) when the client
/// takes the bytes too slowly: a stalled download, a WebSocket client that
/// stopped reading. Reads pass through: waiting for the next request is
/// the header and idle timeouts' business.
pub struct PacedIo<S> {
    inner: S,
    pace: Pace,
}

impl<S> PacedIo<S> {
    pub fn new(inner: S, limits: PaceLimits) -> Self {
        PacedIo {
            inner,
            pace: Pace::new(limits),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn paced(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                self.pace.progress(n);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => match self.pace.poll_wait(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    TooSlow::new(self.pace.limits()),
                ))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PacedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PacedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.paced(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.paced(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn limits() -> PaceLimits {
        PaceLimits {
            min_rate: 100,
            window: Duration::from_secs(10),
        }
    }

    async fn waits_out(p: &mut Pace, d: Duration) -> bool {
        tokio::time::timeout(d, poll_fn(|cx| p.poll_wait(cx)))
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_stall_ends_after_one_window() {
        let mut p = Pace::new(limits());
        assert!(!waits_out(&mut p, Duration::from_secs(9)).await);
        assert!(waits_out(&mut p, Duration::from_secs(2)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_ends_and_a_steady_client_does_not() {
        // 1 byte/s against 100 bytes/s: each second costs 0.99 s.
        let mut p = Pace::new(limits());
        let mut seconds = 0;
        while !waits_out(&mut p, Duration::from_secs(1)).await {
            p.progress(1);
            seconds += 1;
            assert!(seconds < 20, "a trickle was never cut off");
        }
        assert!((10..=11).contains(&seconds), "{seconds}");

        // Exactly the minimum rate, for longer than many windows.
        let mut p = Pace::new(limits());
        for _ in 0..100 {
            assert!(!waits_out(&mut p, Duration::from_secs(1)).await);
            p.progress(100);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_start_buys_no_more_than_one_window() {
        let mut p = Pace::new(limits());
        p.progress(1 << 30);
        assert!(waits_out(&mut p, Duration::from_secs(11)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn time_not_spent_waiting_is_free() {
        let mut p = Pace::new(limits());
        assert!(!waits_out(&mut p, Duration::from_secs(6)).await);
        p.progress(0);
        // depotd busy elsewhere: no wait is running.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waits_out(&mut p, Duration::from_secs(3)).await);
        assert!(waits_out(&mut p, Duration::from_secs(2)).await);
    }
}
