//! Who holds the daemon's HTTP connections: admission against `max_connections` and the per-peer
//! cap, eviction of the oldest idle connection when a new one needs its place, and the
//! `/events` stream slots (`max_streams`, below `max_connections`). A client that opens
//! connections and sends nothing can therefore never lock `/healthz` and `/metrics` out: a
//! connection that has not sent a whole request is the first to go.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicI32, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Instant,
};

use tokio::sync::Notify;

use super::metrics::Metrics;

/// The bounds, changed by a config reload (they apply to the next admission).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub max_per_peer: usize,
    pub max_streams: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a request (TLS handshake, headers, keep-alive, basic auth check): evictable.
    Idle,
    /// A request is being answered.
    Busy,
    /// An `/events` stream: holds a stream slot, ended by the client or the write timeout.
    Stream,
}

struct Entry {
    peer: IpAddr,
    state: State,
    /// When the connection last changed state: the oldest idle one is evicted first.
    since: Instant,
    evict: Arc<Notify>,
}

struct Table {
    limits: ConnLimits,
    next_id: u64,
    open: HashMap<u64, Entry>,
    per_peer: HashMap<IpAddr, usize>,
    streams: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` open, none of them idle.
    Full,
    /// The peer holds `max_connections_per_peer`, none of them idle.
    PeerFull,
}

/// The connection table, shared by the accept loop and every connection.
pub struct Conns {
    table: Mutex<Table>,
    metrics: Metrics,
}

impl Conns {
    pub fn new(limits: ConnLimits, metrics: Metrics) -> Arc<Conns> {
        Arc::new(Conns {
            table: Mutex::new(Table {
                limits,
                next_id: 0,
                open: HashMap::new(),
                per_peer: HashMap::new(),
                streams: 0,
            }),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_limits(&self, limits: ConnLimits) {
        self.lock().limits = limits;
    }

    /// A place for a new connection from `peer`: free, or made by evicting the oldest idle
    /// connection (of that peer when the peer is at its cap).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Conn, Refused> {
        let mut t = self.lock();
        let peer_open = t.per_peer.get(&peer).copied().unwrap_or(0);
        let victim = if peer_open >= t.limits.max_per_peer {
            Some(t.oldest_idle(Some(peer)).ok_or(Refused::PeerFull)?)
        } else if t.open.len() >= t.limits.max_connections {
            Some(t.oldest_idle(None).ok_or(Refused::Full)?)
        } else {
            None
        };
        if let Some(id) = victim {
            if let Some(e) = t.remove(id) {
                e.evict.notify_one();
                self.metrics.connection_evicted();
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        let evict = Arc::new(Notify::new());
        t.open.insert(
            id,
            Entry {
                peer,
                state: State::Idle,
                since: Instant::now(),
                evict: evict.clone(),
            },
        );
        *t.per_peer.entry(peer).or_default() += 1;
        self.metrics.set_open(t.open.len(), t.streams);
        Ok(Conn {
            conns: self.clone(),
            id,
            evict,
            fd: AtomicI32::new(-1),
        })
    }

    fn set_state(&self, id: u64, state: State) {
        let mut t = self.lock();
        if let Some(e) = t.open.get_mut(&id) {
            if e.state != State::Stream {
                e.state = state;
                e.since = Instant::now();
            }
        }
    }
}

impl Table {
    fn oldest_idle(&self, peer: Option<IpAddr>) -> Option<u64> {
        self.open
            .iter()
            .filter(|(_, e)| e.state == State::Idle && peer.is_none_or(|p| e.peer == p))
            .min_by_key(|(_, e)| e.since)
            .map(|(id, _)| *id)
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.open.remove(&id)?;
        if let Some(n) = self.per_peer.get_mut(&e.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&e.peer);
            }
        }
        if e.state == State::Stream {
            self.streams -= 1;
        }
        Some(e)
    }
}

/// One admitted connection; dropping it gives its place back.
pub struct Conn {
    conns: Arc<Conns>,
    id: u64,
    evict: Arc<Notify>,
    /// The client's socket, for a stream to see the client leave (-1 until set).
    fd: AtomicI32,
}

impl Conn {
    /// The connection's socket: a stream polls it for the client's hang-up.
    pub fn set_fd(&self, fd: i32) {
        self.fd.store(fd, Ordering::Relaxed);
    }

    /// Resolves when the connection must close: evicted for a newer one, or its stream stalled.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// A request is being answered: not evictable until [`Conn::idle`].
    pub fn busy(&self) {
        self.conns.set_state(self.id, State::Busy);
    }

    /// The answer is out of the handler: idle again, unless it is a stream (which holds its
    /// slot and the connection until it ends).
    pub fn idle_unless_streaming(&self) {
        let mut t = self.conns.lock();
        if let Some(e) = t.open.get_mut(&self.id) {
            if e.state == State::Busy {
                e.state = State::Idle;
                e.since = Instant::now();
            }
        }
    }

    /// A stream slot, if fewer than `max_streams` are taken.
    pub fn start_stream(&self) -> Option<StreamSlot> {
        let mut t = self.conns.lock();
        if t.streams >= t.limits.max_streams {
            return None;
        }
        let e = t.open.get_mut(&self.id)?;
        e.state = State::Stream;
        e.since = Instant::now();
        t.streams += 1;
        self.conns.metrics.set_open(t.open.len(), t.streams);
        Some(StreamSlot {
            conns: self.conns.clone(),
            id: self.id,
            evict: self.evict.clone(),
            fd: self.fd.load(Ordering::Relaxed),
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let mut t = self.conns.lock();
        t.remove(self.id);
        self.conns.metrics.set_open(t.open.len(), t.streams);
    }
}

/// An `/events` stream's slot; dropping it makes the connection idle again (it may send
/// another request once the response has ended).
pub struct StreamSlot {
    conns: Arc<Conns>,
    id: u64,
    evict: Arc<Notify>,
    fd: i32,
}

impl StreamSlot {
    /// The client has gone: its connection is over, or its socket shows a hang-up, an error
    /// or the end of what it sends (HTTP/1 clients do not half-close while they read; hyper
    /// itself closes on that end by default). A stream blocked on a quiet node would otherwise
    /// hold its slot until the next event makes a write fail.
    pub fn peer_gone(&self) -> bool {
        if !self.conns.lock().open.contains_key(&self.id) {
            return true;
        }
        if self.fd < 0 {
            return false;
        }
        let mut p = libc::pollfd {
            fd: self.fd,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own, no timeout; the fd is the connection's socket,
        // open while its entry is (checked above; at worst a just-closed connection's fd).
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// Closes the connection at once: a stalled client would otherwise keep it (and its
    /// unsent bytes) until the kernel gives up on it.
    pub fn drop_client(self) {
        self.evict.notify_one();
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut t = self.conns.lock();
        if let Some(e) = t.open.get_mut(&self.id) {
            if e.state == State::Stream {
                e.state = State::Idle;
                e.since = Instant::now();
                t.streams -= 1;
            }
        }
        self.conns.metrics.set_open(t.open.len(), t.streams);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_per_peer: usize, max_streams: usize) -> ConnLimits {
        ConnLimits {
            max_connections,
            max_per_peer,
            max_streams,
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn the_oldest_idle_connection_makes_room() {
        let conns = Conns::new(limits(3, 10, 1), Metrics::new("k"));
        let first = conns.admit(A).expect("room");
        let second = conns.admit(A).expect("room");
        second.busy();
        let third = conns.admit(A).expect("room");
        // Full: the first (oldest idle) goes, not the busy second.
        let fourth = conns.admit(A).expect("evicts an idle one");
        assert_eq!(conns.lock().open.len(), 3);
        assert!(!conns.lock().open.contains_key(&first.id));
        third.busy();
        fourth.busy();
        assert_eq!(conns.admit(A).err(), Some(Refused::Full), "nothing idle");
        drop(first); // an evicted connection's drop changes nothing
        assert_eq!(conns.lock().open.len(), 3);
        drop(second);
        conns.admit(A).expect("a place was given back");
    }

    #[test]
    fn a_peer_at_its_cap_loses_its_own_idle_connection() {
        let conns = Conns::new(limits(10, 2, 1), Metrics::new("k"));
        let a1 = conns.admit(A).expect("room");
        let b1 = conns.admit(B).expect("room");
        let _a2 = conns.admit(A).expect("room");
        let _a3 = conns.admit(A).expect("evicts a1, not b1");
        let t = conns.lock();
        assert!(!t.open.contains_key(&a1.id) && t.open.contains_key(&b1.id));
        assert_eq!(t.per_peer[&A], 2);
    }

    #[test]
    fn streams_have_their_own_cap_and_are_never_evicted() {
        let conns = Conns::new(limits(3, 3, 1), Metrics::new("k"));
        let s = conns.admit(A).expect("room");
        let slot = s.start_stream().expect("a stream slot");
        let other = conns.admit(A).expect("room");
        assert!(other.start_stream().is_none(), "max_streams = 1");
        let _c = conns.admit(A).expect("room");
        let _d = conns.admit(A).expect("evicts `other`, not the stream");
        assert!(conns.lock().open.contains_key(&s.id));
        drop(slot);
        assert_eq!(conns.lock().streams, 0);
        assert!(other.start_stream().is_none(), "evicted: no slot");
    }
}
