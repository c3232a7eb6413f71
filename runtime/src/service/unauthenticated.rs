//! The pool of connections that have not authenticated yet.
//!
//! Every accepted connection starts here and leaves when one of its
//! requests authenticates (a valid bearer token, a console session, or a
//! console sign-in), or when it closes. Until then it has cost its client
//! nothing but a TCP handshake, so it gets only what is left over:
//!
//! - at most `max-unauthenticated-per-source` of them per source address
//!   (an IPv4 address, or an IPv6 /64, the block one host usually holds);
//! - at most `max-unauthenticated` of them in all, a share of
//!   `max-connections` that leaves the rest to authenticated clients.
//!
//! Over a cap, the oldest unauthenticated connection (of that source, or
//! of all) that the server is *waiting for* is closed to make room: one
//! whose request head (or sign-in form) has not arrived, and which has
//! nothing unread. A connection whose bytes the server has not read yet,
//! whose request is being handled, or that connected less than
//! [`FIRST_BYTES_GRACE`] ago and has sent nothing yet (its first bytes may
//! be on their way), is never closed for room: a client that sends its
//! request at once is read, authenticated and out of the pool before it
//! could be chosen, however many connections it opens at once. A client
//! that holds a connection open without authenticating (a request head or
//! a sign-in form trickled a byte at a time, a silent socket, an idle
//! keep-alive connection) is what gets closed. So a flood of slow
//! connections, from one address or many, cannot keep an authenticated
//! client from connecting.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a new connection that has sent nothing is spared: a client's
/// first bytes leave right after its side of the handshake, so they come
/// within a round trip of the connection being accepted.
pub const FIRST_BYTES_GRACE: Duration = Duration::from_millis(250);

/// Who a connection counts against: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(u128::from(u32::from(v4))),
                // The upper 64 bits, tagged with a bit no IPv4 key has.
                None => Source((u128::from(v6) & !u128::from(u64::MAX)) | 1 << 32),
            },
        }
    }
}

/// The caps (`[service]` settings), and how long a silent new connection
/// is spared ([`FIRST_BYTES_GRACE`]).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub total: usize,
    pub per_source: usize,
    pub grace: Duration,
}

/// What the server is doing with a connection.
#[derive(Debug)]
struct State {
    accepted: Instant,
    /// Its last read found nothing to read: the server waits for it.
    waiting: AtomicBool,
    /// Some read of it found bytes (or its end).
    heard: AtomicBool,
    /// A request of it is being handled.
    in_request: AtomicBool,
}

impl State {
    fn new() -> State {
        State {
            accepted: Instant::now(),
            waiting: AtomicBool::new(false),
            heard: AtomicBool::new(false),
            in_request: AtomicBool::new(false),
        }
    }

    /// May it be closed to make room?
    fn closable(&self, grace: Duration) -> bool {
        self.waiting.load(Ordering::Acquire)
            && !self.in_request.load(Ordering::Acquire)
            && (self.heard.load(Ordering::Acquire) || self.accepted.elapsed() >= grace)
    }
}

#[derive(Debug)]
struct Entry {
    source: Source,
    state: Arc<State>,
    evict: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// Ids grow with time, so the first entries are the oldest.
    entries: BTreeMap<u64, Entry>,
    by_source: HashMap<Source, VecDeque<u64>>,
    evicted: u64,
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if let Some(ids) = self.by_source.get_mut(&entry.source) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_source.remove(&entry.source);
            }
        }
        Some(entry)
    }

    fn closable(&self, id: u64, grace: Duration) -> bool {
        self.entries.get(&id).is_some_and(|e| e.state.closable(grace))
    }

    /// Close the oldest closable connection of `ids`; false if none is.
    fn evict_first(&mut self, ids: impl IntoIterator<Item = u64>, grace: Duration) -> bool {
        let Some(id) = ids.into_iter().find(|&id| self.closable(id, grace)) else {
            return false;
        };
        if let Some(entry) = self.remove(id) {
            self.evicted += 1;
            entry.evict.notify_one();
        }
        true
    }
}

/// The pool.
#[derive(Debug)]
pub struct Pool {
    caps: Caps,
    inner: Mutex<Inner>,
}

impl Pool {
    pub fn new(caps: Caps) -> Arc<Pool> {
        Arc::new(Pool {
            caps: Caps {
                total: caps.total.max(1),
                per_source: caps.per_source.max(1),
                grace: caps.grace,
            },
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enter a new connection from `ip`, closing the oldest ones over the
    /// caps that may be closed (see [`Pool::trim`]).
    pub fn admit(self: &Arc<Pool>, ip: IpAddr) -> Ticket {
        let source = Source::of(ip);
        let evict = Arc::new(Notify::new());
        let state = Arc::new(State::new());
        let id = {
            let mut inner = self.lock();
            let id = inner.next;
            inner.next += 1;
            inner.entries.insert(
                id,
                Entry {
                    source,
                    state: state.clone(),
                    evict: evict.clone(),
                },
            );
            inner.by_source.entry(source).or_default().push_back(id);
            id
        };
        self.trim(source);
        Ticket {
            id,
            source,
            pool: self.clone(),
            state,
            evict,
        }
    }

    /// While `source`, or the pool, holds more connections than its cap,
    /// close its oldest closable one. Called when a connection enters, and
    /// when the server starts waiting for one, so a connection over a cap
    /// is closed as soon as it may be.
    pub fn trim(&self, source: Source) {
        let grace = self.caps.grace;
        let mut inner = self.lock();
        loop {
            let ids: Vec<u64> = match inner.by_source.get(&source) {
                Some(ids) if ids.len() > self.caps.per_source => ids.iter().copied().collect(),
                _ => break,
            };
            if !inner.evict_first(ids, grace) {
                break;
            }
        }
        while inner.entries.len() > self.caps.total {
            let ids: Vec<u64> = inner.entries.keys().copied().collect();
            if !inner.evict_first(ids, grace) {
                break;
            }
        }
    }

    /// Close the oldest closable unauthenticated connection, if there is
    /// one: room for a new connection when every slot is taken.
    pub fn evict_oldest(&self) -> bool {
        let mut inner = self.lock();
        let ids: Vec<u64> = inner.entries.keys().copied().collect();
        inner.evict_first(ids, self.caps.grace)
    }

    /// Connections in the pool now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections closed to make room so far.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }
}

/// One connection's place in the pool; it leaves when the ticket is
/// dropped or [`Ticket::authenticated`] is called.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    source: Source,
    pool: Arc<Pool>,
    state: Arc<State>,
    evict: Arc<Notify>,
}

impl Ticket {
    /// A request of this connection authenticated: it leaves the pool for
    /// good (its later requests are each authenticated again).
    pub fn authenticated(&self) {
        self.pool.lock().remove(self.id);
    }

    /// Resolves when the pool closes this connection to make room.
    pub async fn evicted(&self) {
        self.evict.notified().await
    }

    /// A read of the connection found nothing (`waiting`), or something:
    /// the server waits for the client, or has input to handle.
    pub fn read(&self, waiting: bool) {
        if !waiting {
            self.state.heard.store(true, Ordering::Release);
        }
        let was = self.state.waiting.swap(waiting, Ordering::AcqRel);
        if waiting && !was && !self.state.in_request.load(Ordering::Acquire) {
            self.pool.trim(self.source);
        }
    }

    /// Once the grace of a silent new connection is over, apply the caps
    /// again (and never resolve): a connection that has sent nothing by
    /// then is closed if it is over a cap, not only when the next one
    /// arrives.
    pub async fn enforce_caps(&self) {
        let left = self.pool.caps.grace.saturating_sub(self.state.accepted.elapsed());
        tokio::time::sleep(left).await;
        self.pool.trim(self.source);
        std::future::pending::<()>().await
    }

    /// A request of this connection is being handled (`true`), or is done.
    pub fn in_request(&self, handling: bool) {
        self.state.in_request.store(handling, Ordering::Release);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pool.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    /// A connection the server waits for (nothing to read, no request).
    fn waiting(pool: &Arc<Pool>, ip: IpAddr) -> Ticket {
        let t = pool.admit(ip);
        t.read(true);
        t
    }

    async fn is_evicted(t: &Ticket) -> bool {
        tokio::time::timeout(Duration::from_millis(20), t.evicted())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_source_over_its_cap_loses_its_oldest_connection_only() {
        let pool = Pool::new(Caps {
            total: 100,
            per_source: 2,
            grace: Duration::ZERO,
        });
        let a1 = waiting(&pool, v4(1));
        let b1 = waiting(&pool, v4(2));
        let a2 = waiting(&pool, v4(1));
        let a3 = waiting(&pool, v4(1));
        assert!(is_evicted(&a1).await, "the oldest of the source goes");
        assert!(!is_evicted(&a2).await && !is_evicted(&a3).await);
        assert!(!is_evicted(&b1).await, "another source is untouched");
        assert_eq!(pool.len(), 3);
        assert_eq!(pool.evicted(), 1);
    }

    #[tokio::test]
    async fn the_global_cap_closes_the_oldest_of_all() {
        let pool = Pool::new(Caps {
            total: 2,
            per_source: 10,
            grace: Duration::ZERO,
        });
        let a = waiting(&pool, v4(1));
        let b = waiting(&pool, v4(2));
        let c = waiting(&pool, v4(3));
        assert!(is_evicted(&a).await);
        assert!(!is_evicted(&b).await && !is_evicted(&c).await);
        assert_eq!(pool.len(), 2);
    }

    #[tokio::test]
    async fn connections_not_yet_read_or_in_a_request_are_never_closed_for_room() {
        let pool = Pool::new(Caps {
            total: 100,
            per_source: 2,
            grace: Duration::ZERO,
        });
        // A burst of five from one source, none read yet: all kept.
        let burst: Vec<Ticket> = (0..5).map(|_| pool.admit(v4(1))).collect();
        assert_eq!(pool.len(), 5);
        assert!(!pool.evict_oldest());
        // Three are read, handled and authenticated, as real clients are;
        // two turn out silent, within the cap.
        for t in &burst[2..] {
            t.read(false);
            t.in_request(true);
            t.authenticated();
        }
        burst[0].read(true);
        burst[1].read(true);
        assert_eq!(pool.len(), 2);
        for t in &burst {
            assert!(!is_evicted(t).await);
        }
        // Newcomers over the cap push out the oldest silent ones.
        let late = pool.admit(v4(1));
        assert!(is_evicted(&burst[0]).await);
        let later = pool.admit(v4(1));
        assert!(is_evicted(&burst[1]).await);
        // None of these has been read: over the cap, but all kept...
        let latest = pool.admit(v4(1));
        assert_eq!(pool.len(), 3);
        assert!(!is_evicted(&late).await && !is_evicted(&later).await && !is_evicted(&latest).await);
        // ...until the server waits for one: then the cap holds.
        late.read(true);
        assert!(is_evicted(&late).await);
        assert_eq!(pool.len(), 2);
        // A request being handled is never cut; a silent one is.
        later.read(false);
        later.in_request(true);
        latest.read(true);
        assert!(pool.evict_oldest());
        assert!(is_evicted(&latest).await);
        assert!(!pool.evict_oldest());
        assert!(!is_evicted(&later).await);
    }

    #[tokio::test]
    async fn a_silent_new_connection_is_spared_for_its_grace_then_capped() {
        // Long enough that a loaded machine cannot run past it between two
        // lines of this test (with 100 ms it did, and evicted the wrong one).
        let grace = Duration::from_secs(1);
        let pool = Pool::new(Caps {
            total: 100,
            per_source: 1,
            grace,
        });
        // Two silent connections: the server waits for both, neither has
        // sent a byte. Within the grace both are kept, over the cap.
        let first = waiting(&pool, v4(1));
        let second = waiting(&pool, v4(1));
        assert!(!pool.evict_oldest());
        assert!(!is_evicted(&first).await);
        // One that has sent something (a head that stopped) is not spared.
        let talker = pool.admit(v4(2));
        talker.read(false);
        talker.read(true);
        assert!(pool.evict_oldest(), "a connection that has spoken is closable at once");
        assert!(is_evicted(&talker).await);
        // After the grace the cap holds, without another arrival.
        let _ = tokio::time::timeout(grace * 3, first.enforce_caps()).await;
        assert!(is_evicted(&first).await);
        assert!(!is_evicted(&second).await);
        assert_eq!(pool.len(), 1);
    }

    #[tokio::test]
    async fn authenticated_and_closed_connections_leave_and_are_never_evicted() {
        let pool = Pool::new(Caps {
            total: 1,
            per_source: 1,
            grace: Duration::ZERO,
        });
        let a = waiting(&pool, v4(1));
        a.authenticated();
        assert_eq!(pool.len(), 0);
        let b = waiting(&pool, v4(1));
        assert!(!is_evicted(&a).await, "an authenticated connection stays");
        drop(b);
        assert!(pool.is_empty());
        assert!(!pool.evict_oldest());
        let c = waiting(&pool, v4(1));
        assert!(pool.evict_oldest());
        assert!(is_evicted(&c).await);
    }

    #[test]
    fn ipv6_sources_are_64_bit_prefixes_and_mapped_ipv4_is_ipv4() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(IpAddr::V6(a)), Source::of(IpAddr::V6(b)));
        assert_ne!(Source::of(IpAddr::V6(a)), Source::of(IpAddr::V6(c)));
        let mapped: Ipv6Addr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(Source::of(IpAddr::V6(mapped)), Source::of(v4(1)));
        let loopback: Ipv6Addr = "::1".parse().unwrap();
        assert_ne!(Source::of(IpAddr::V6(loopback)), Source::of(v4(1)));
    }
}
