//! TCP connections that have not finished the TLS handshake: anyone on the
//! network can open them, so they get a pool of their own, apart from the
//! authenticated connections and the local socket.
//!
//! - At most `max_per_source` from one source address (an IPv6 host owns
//!   a whole /64, so IPv6 counts by /64). More are closed at once.
//! - At most `max` in all. When they are all taken, a new connection
//!   pushes out the oldest: a flood from many addresses then costs a
//!   legitimate client nothing unless the flood opens `max` connections in
//!   the milliseconds its handshake takes, whereas refusing the newcomer
//!   would lock every new client out for as long as the flood goes on.
//!
//! The handshake timeout bounds how long any of them lasts.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::oneshot;

/// Where connections come from, as the per-source limit counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(_) => Source(ip),
            // The dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

/// A new connection was refused: its source has too many unfinished
/// handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyFromSource {
    pub source: Source,
    pub limit: usize,
}

pub struct Handshakes {
    max: usize,
    max_per_source: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Oldest first.
    queue: VecDeque<Entry>,
    per_source: HashMap<Source, usize>,
    next_id: u64,
}

struct Entry {
    id: u64,
    source: Source,
    push_out: oneshot::Sender<()>,
}

impl State {
    fn release(&mut self, source: Source) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }
}

/// One unfinished handshake; dropping it frees its place.
pub struct Pending {
    handshakes: Arc<Handshakes>,
    id: u64,
    pushed_out: oneshot::Receiver<()>,
}

impl Pending {
    /// Resolves when a newer connection pushed this one out.
    pub async fn pushed_out(&mut self) {
        let _ = (&mut self.pushed_out).await;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut state = self.handshakes.state();
        // Not in the queue any more when it was pushed out, and then its
        // source was released already.
        if let Some(i) = state.queue.iter().position(|e| e.id == self.id) {
            if let Some(e) = state.queue.remove(i) {
                state.release(e.source);
            }
        }
    }
}

impl Handshakes {
    pub fn new(max: usize, max_per_source: usize) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            max: max.max(1),
            max_per_source: max_per_source.max(1),
            state: Mutex::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for a new connection from `ip`. `Ok` also says
    /// whether an older connection was pushed out to make room.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<(Pending, bool), TooManyFromSource> {
        let source = Source::of(ip);
        let mut state = self.state();
        let from_source = state.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.max_per_source {
            return Err(TooManyFromSource {
                source,
                limit: self.max_per_source,
            });
        }
        let mut pushed = false;
        while state.queue.len() >= self.max {
            let Some(oldest) = state.queue.pop_front() else {
                break;
            };
            state.release(oldest.source);
            let _ = oldest.push_out.send(());
            pushed = true;
        }
        state.next_id += 1;
        let id = state.next_id;
        let (push_out, pushed_out) = oneshot::channel();
        state.queue.push_back(Entry {
            id,
            source,
            push_out,
        });
        *state.per_source.entry(source).or_insert(0) += 1;
        Ok((
            Pending {
                handshakes: self.clone(),
                id,
                pushed_out,
            },
            pushed,
        ))
    }

    /// Unfinished handshakes now.
    pub fn len(&self) -> usize {
        self.state().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn is_pushed_out(p: &mut Pending) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        matches!(pin!(p.pushed_out()).poll(&mut cx), Poll::Ready(()))
    }

    #[test]
    fn sources_group_v4_mapped_and_v6_by_64() {
        assert_eq!(
            Source::of(ip("::ffff:10.1.2.3")),
            Source::of(ip("10.1.2.3"))
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2:aaaa::1")),
            Source::of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_ne!(Source::of(ip("10.0.0.1")), Source::of(ip("10.0.0.2")));
    }

    #[test]
    fn a_source_over_its_limit_is_refused_until_one_finishes() {
        let h = Handshakes::new(10, 2);
        let (a, _) = h.admit(ip("10.0.0.1")).unwrap();
        let (_b, _) = h.admit(ip("10.0.0.1")).unwrap();
        assert!(h.admit(ip("10.0.0.1")).is_err());
        assert!(h.admit(ip("::ffff:10.0.0.1")).is_err());
        // Others are not affected.
        let (_c, _) = h.admit(ip("10.0.0.2")).unwrap();
        drop(a);
        assert!(h.admit(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn a_full_pool_pushes_out_the_oldest() {
        let h = Handshakes::new(2, 2);
        let (mut a, pushed) = h.admit(ip("10.0.0.1")).unwrap();
        assert!(!pushed);
        let (mut b, _) = h.admit(ip("10.0.0.2")).unwrap();
        let (mut c, pushed) = h.admit(ip("10.0.0.3")).unwrap();
        assert!(pushed);
        assert!(is_pushed_out(&mut a));
        assert!(!is_pushed_out(&mut b));
        assert!(!is_pushed_out(&mut c));
        assert_eq!(h.len(), 2);
        // The pushed-out one's source is free again, once only.
        drop(a);
        let (_d, _) = h.admit(ip("10.0.0.1")).unwrap();
        assert!(is_pushed_out(&mut b));
        let (_e, _) = h.admit(ip("10.0.0.1")).unwrap();
        assert!(h.admit(ip("10.0.0.1")).is_err());
        drop((b, c));
        assert_eq!(h.len(), 2);
    }
}
