//! A worker's idle upstream HTTP/1.1 connections, shared by all its client connections
//! (Envoy's per-worker connection pools, HAProxy's `http-reuse`).
//!
//! Owns the idle sockets only: a connection is parked here when an exchange ended with
//! the upstream willing to go on (nothing is in flight on it then), and taken by the
//! next request of any client connection of this worker whose balancer chose the same
//! endpoint — the balancer decides first, so reuse never skews the load split. A client
//! connection gets back the upstream connection it parked itself when that one fits
//! (per-connection affinity): its socket stays registered where it was (no `epoll_ctl`
//! to move it) and warm in cache.
//!
//! Invariants: at most [`MAX_IDLE`] entries (the oldest is evicted when full); every
//! entry belongs to the worker's current routing table (`generation`): a new table
//! re-indexes the connections to endpoints it still has ([`Pool::carry`]) and closes
//! the rest, so cluster and endpoint indices stay meaningful. Counting a closed
//! connection is the caller's business (it has the table). Never allocates after
//! construction, never blocks; the only syscall is the liveness peek on reuse of a
//! connection idle longer than [`CHECK_AFTER_MS`] (see [`alive`]).

use std::os::fd::OwnedFd;

/// Idle connections a worker keeps.
pub const MAX_IDLE: usize = 1024;
/// How many entries past the newest fitting one [`Pool::take`] looks at for the
/// caller's own connection (bounds the scan in a large pool).
pub const AFFINITY_SCAN: usize = 64;
/// A connection idle this long is checked (one non-blocking peek) before reuse: long
/// enough that a busy keep-alive path never pays the syscall, short enough that most
/// upstream keep-alive timeouts (nginx 75 s, Node 5 s) are caught before a request is
/// sent into a closed connection. Closes that race the check are handled by sending an
/// idempotent request again on a fresh connection.
pub const CHECK_AFTER_MS: u64 = 1000;

#[derive(Debug)]
pub struct Idle {
    pub fd: OwnedFd,
    pub cluster: u32,
    pub endpoint: u32,
    /// Requests already sent on it.
    pub requests: u32,
    pub since_ms: u64,
    /// The client connection that parked it (slot and generation), preferred on take.
    pub owner: (u32, u16),
    /// Its TLS session, when the cluster originates TLS (continues on reuse).
    pub tls: Option<crate::tls::conn::Parked>,
}

#[derive(Debug)]
pub struct Pool {
    generation: u64,
    cap: usize,
    /// In parking order (oldest first).
    idle: Vec<Idle>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool::with_capacity(MAX_IDLE)
    }
}

impl Pool {
    pub fn with_capacity(cap: usize) -> Pool {
        Pool {
            generation: 0,
            cap,
            idle: Vec::with_capacity(cap),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.idle.len()
    }

    pub fn is_empty(&self) -> bool {
        self.idle.is_empty()
    }

    /// A new routing table: every idle connection is handed to `closed` (indices of
    /// the old table), and the pool serves `generation` from now on.
    pub fn reset(&mut self, generation: u64, mut closed: impl FnMut(Idle)) {
        for i in self.idle.drain(..) {
            closed(i);
        }
        self.generation = generation;
    }

    /// A new routing table: each idle connection that `place` finds a place for in it
    /// (its cluster and endpoint indices there) is kept under them; the others are
    /// handed to `closed` (indices of the old table). The pool serves `generation` from
    /// now on. Order (and so LIFO reuse and expiry) is kept.
    pub fn carry(
        &mut self,
        generation: u64,
        mut place: impl FnMut(u32, u32) -> Option<(u32, u32)>,
        mut closed: impl FnMut(Idle),
    ) {
        let mut kept = 0;
        for i in 0..self.idle.len() {
            let (c, e) = (self.idle[i].cluster, self.idle[i].endpoint);
            if let Some((c, e)) = place(c, e) {
                self.idle[i].cluster = c;
                self.idle[i].endpoint = e;
                self.idle.swap(kept, i);
                kept += 1;
            }
        }
        for i in self.idle.drain(kept..) {
            closed(i);
        }
        self.generation = generation;
    }

    /// Whether an idle connection to `cluster` is parked (any endpoint).
    pub fn has(&self, generation: u64, cluster: u32) -> bool {
        generation == self.generation && self.idle.iter().any(|i| i.cluster == cluster)
    }

    /// Park a connection of table `generation`. `Err`: not kept (another generation),
    /// or `Ok(Some)`: the oldest entry evicted to make room — the caller closes either.
    pub fn park(&mut self, generation: u64, idle: Idle) -> Result<Option<Idle>, Idle> {
        if generation != self.generation {
            return Err(idle);
        }
        let evicted = if self.idle.len() >= self.cap {
            // Rare (a worker with MAX_IDLE idle connections): O(MAX_IDLE) shift.
            Some(self.idle.remove(0))
        } else {
            None
        };
        self.idle.push(idle);
        Ok(evicted)
    }

    /// A parked connection to `endpoint` of `cluster`: the one `owner` parked itself
    /// when it is among the newest fitting ones, else the most recently parked (LIFO
    /// keeps the warm ones busy and lets the rest expire).
    pub fn take(
        &mut self,
        generation: u64,
        cluster: u32,
        endpoint: u32,
        owner: (u32, u16),
    ) -> Option<Idle> {
        if generation != self.generation {
            return None;
        }
        let mut newest = None;
        let mut budget = AFFINITY_SCAN;
        for (i, e) in self.idle.iter().enumerate().rev() {
            if newest.is_some() {
                if budget == 0 {
                    break;
                }
                budget -= 1;
            }
            // A session still judging what its peer sent while it idled is not handed
            // out (its jobs' completions come back to the pool).
            if e.cluster == cluster
                && e.endpoint == endpoint
                && !e.tls.as_ref().is_some_and(|p| p.busy())
            {
                if e.owner == owner {
                    newest = Some(i);
                    break;
                }
                newest.get_or_insert(i);
            }
        }
        Some(self.idle.remove(newest?))
    }

    /// The parked connection on socket `fd` (a linear search: for the rare event of a
    /// parked connection's peer speaking, never per request).
    pub fn find_fd(&mut self, fd: std::os::fd::RawFd) -> Option<&mut Idle> {
        use std::os::fd::AsRawFd;
        self.idle.iter_mut().find(|i| i.fd.as_raw_fd() == fd)
    }

    /// Take the parked connection on socket `fd` out (to close it).
    pub fn remove_fd(&mut self, fd: std::os::fd::RawFd) -> Option<Idle> {
        use std::os::fd::AsRawFd;
        let at = self.idle.iter().position(|i| i.fd.as_raw_fd() == fd)?;
        Some(self.idle.remove(at))
    }

    /// Hand every connection `dead` judges unusable (the engine saw its upstream close
    /// it or send bytes while it idled) to `closed`; both get `ctx` (the engine).
    pub fn sweep<C: ?Sized>(
        &mut self,
        ctx: &mut C,
        dead: impl Fn(&C, &Idle) -> bool,
        mut closed: impl FnMut(&mut C, Idle),
    ) {
        let mut i = 0;
        while i < self.idle.len() {
            if dead(ctx, &self.idle[i]) {
                closed(ctx, self.idle.remove(i));
            } else {
                i += 1;
            }
        }
    }

    /// Hand every connection idle for at least `idle_ms(cluster)` to `closed`.
    pub fn expire(
        &mut self,
        now_ms: u64,
        idle_ms: impl Fn(u32) -> u64,
        mut closed: impl FnMut(Idle),
    ) {
        let mut i = 0;
        while i < self.idle.len() {
            let e = &self.idle[i];
            if now_ms.saturating_sub(e.since_ms) >= idle_ms(e.cluster) {
                closed(self.idle.remove(i));
            } else {
                i += 1;
            }
        }
    }
}

/// An idle connection of table `t` is closed (dropped with `i`): counted on its
/// cluster and endpoint there. The engine lets go of the receive it kept armed on it;
/// its TLS session's engine session is destroyed.
pub fn count_close(
    t: &crate::route::RouteTable,
    worker: usize,
    i: Idle,
    crypto: &mut Option<crate::tls::conn::Crypto>,
    io: &mut impl crate::proxy::l4::Io,
) {
    use crate::telemetry::UpstreamCounter::CxClosed;
    use std::os::fd::AsRawFd;
    io.drop_socket(i.fd.as_raw_fd());
    if let Some(p) = i.tls {
        p.release(crypto.as_mut());
    }
    if let Some(c) = t.clusters.get(i.cluster as usize) {
        c.stats.inc(worker, CxClosed);
        if let Some(e) = c.endpoints.get(i.endpoint as usize) {
            e.stats.inc(worker, CxClosed);
        }
    }
}

/// Whether a connection just taken from the pool may carry a request: an engine that
/// kept its receive armed while it idled has seen nothing arrive on it (no syscall);
/// one idle [`CHECK_AFTER_MS`] or longer also passes [`alive`] (a busy keep-alive path
/// never pays that syscall).
pub fn usable(i: &Idle, now_ms: u64, io: &impl crate::proxy::l4::Io) -> bool {
    use std::os::fd::AsRawFd;
    io.parked_alive(i.fd.as_raw_fd()) != Some(false)
        && (now_ms.saturating_sub(i.since_ms) < CHECK_AFTER_MS || alive(&i.fd))
}

/// Whether an idle connection can carry a request: a non-blocking peek finds nothing
/// to read (`EAGAIN`). End of stream (the upstream closed it), stray bytes or an error
/// mean it cannot.
pub fn alive(fd: &OwnedFd) -> bool {
    let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    // The socket is non-blocking (created so), so this never waits.
    match socket2::SockRef::from(fd).peek(&mut b) {
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        Ok(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn sock() -> (OwnedFd, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        c.set_nonblocking(true).unwrap();
        let (s, _) = l.accept().unwrap();
        (OwnedFd::from(c), s)
    }

    fn idle(fd: OwnedFd, cluster: u32, endpoint: u32, since_ms: u64) -> Idle {
        Idle {
            fd,
            cluster,
            endpoint,
            requests: 1,
            since_ms,
            owner: (u32::MAX, 0),
            tls: None,
        }
    }

    #[test]
    fn take_is_per_endpoint_and_lifo() {
        let mut p = Pool::default();
        p.reset(3, |_| {});
        let mut peers = Vec::new();
        for (c, e, t) in [(0, 0, 1), (0, 1, 2), (0, 0, 3), (1, 0, 4)] {
            let (fd, peer) = sock();
            peers.push(peer);
            assert!(p.park(3, idle(fd, c, e, t)).unwrap().is_none());
        }
        assert!(p.has(3, 1) && !p.has(3, 2) && !p.has(4, 0));
        let any = (9, 9);
        assert_eq!(
            p.take(3, 0, 0, any).unwrap().since_ms,
            3,
            "the newest first"
        );
        assert_eq!(p.take(3, 0, 0, any).unwrap().since_ms, 1);
        assert!(p.take(3, 0, 0, any).is_none());
        assert!(p.take(2, 0, 1, any).is_none(), "another table's indices");
        assert_eq!(p.take(3, 0, 1, any).unwrap().since_ms, 2);
        let (fd, _peer) = sock();
        assert!(p.park(4, idle(fd, 0, 0, 9)).is_err(), "not this table");
        let mut flushed = 0;
        p.reset(4, |_| flushed += 1);
        assert_eq!((flushed, p.len()), (1, 0));
    }

    #[test]
    fn the_owner_gets_its_own_back() {
        let mut p = Pool::default();
        let mut peers = Vec::new();
        for (owner, t) in [((1, 0), 1), ((2, 0), 2), ((3, 0), 3)] {
            let (fd, peer) = sock();
            peers.push(peer);
            let mut i = idle(fd, 0, 0, t);
            i.owner = owner;
            assert!(p.park(0, i).unwrap().is_none());
        }
        assert_eq!(p.take(0, 0, 0, (1, 0)).unwrap().since_ms, 1, "its own");
        assert_eq!(
            p.take(0, 0, 0, (1, 1)).unwrap().since_ms,
            3,
            "another tenant: newest"
        );
        assert_eq!(p.take(0, 0, 0, (2, 0)).unwrap().since_ms, 2);
        assert!(p.take(0, 0, 0, (2, 0)).is_none());
        // Beyond the scan bound the newest fitting one is taken.
        for t in 0..(AFFINITY_SCAN + 2) as u64 {
            let (fd, peer) = sock();
            peers.push(peer);
            let mut i = idle(fd, 0, 0, 100 + t);
            i.owner = (if t == 0 { 7 } else { 8 }, 0);
            assert!(p.park(0, i).unwrap().is_none());
        }
        assert_eq!(
            p.take(0, 0, 0, (7, 0)).unwrap().since_ms,
            100 + AFFINITY_SCAN as u64 + 1
        );
    }

    #[test]
    fn bounded_and_expiring() {
        const CAP: usize = 16;
        let mut p = Pool::with_capacity(CAP);
        let mut peers = Vec::new();
        let mut evicted = 0;
        for t in 0..(CAP + 3) as u64 {
            let (fd, peer) = sock();
            peers.push(peer);
            if let Some(old) = p.park(0, idle(fd, (t % 2) as u32, 0, t)).unwrap() {
                assert_eq!(old.since_ms, evicted);
                evicted += 1;
            }
        }
        assert_eq!((p.len(), evicted), (CAP, 3));
        let mut closed = 0;
        // Cluster 0 keeps for 10 ms, cluster 1 for 10 s.
        p.expire(
            20,
            |c| if c == 0 { 10 } else { 10_000 },
            |i| {
                assert!(i.cluster == 0 && i.since_ms <= 10);
                closed += 1;
            },
        );
        assert_eq!(closed, 4, "cluster 0 entries at 4, 6, 8, 10");
        assert!(p.idle.iter().all(|i| i.cluster == 1 || i.since_ms > 10));
    }

    #[test]
    fn a_new_table_keeps_endpoints_it_still_has() {
        let mut p = Pool::with_capacity(8);
        let mut keep = Vec::new();
        for (c, e) in [(0, 0), (0, 1), (1, 0), (0, 0)] {
            let (fd, peer) = sock();
            keep.push(peer);
            p.park(0, idle(fd, c, e, 0)).unwrap();
        }
        // Cluster 0 moved to index 1 and lost endpoint 1; cluster 1 is gone.
        let mut closed = Vec::new();
        p.carry(
            1,
            |c, e| match (c, e) {
                (0, 0) => Some((1, 0)),
                _ => None,
            },
            |i| closed.push((i.cluster, i.endpoint)),
        );
        closed.sort();
        assert_eq!(
            closed,
            vec![(0, 1), (1, 0)],
            "old indices of the closed ones"
        );
        assert_eq!(p.len(), 2);
        assert!(p.take(0, 1, 0, (0, 0)).is_none(), "old generation");
        assert!(p.take(1, 0, 0, (0, 0)).is_none(), "old indices");
        assert!(p.take(1, 1, 0, (0, 0)).is_some());
        assert!(p.take(1, 1, 0, (0, 0)).is_some());
        assert!(p.is_empty());
    }

    #[test]
    fn a_closed_peer_is_noticed() {
        let (fd, peer) = sock();
        assert!(alive(&fd));
        drop(peer);
        // The FIN arrives at once on loopback; give it a moment anyway.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while alive(&fd) && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!alive(&fd));
        let (fd, mut peer) = sock();
        std::io::Write::write_all(&mut peer, b"stray").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!alive(&fd), "unexpected bytes: not reusable");
    }
}
