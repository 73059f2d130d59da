//! The engine-agnostic part of a worker: its connection slab, its view of the routing
//! table, listener reconciliation, timers, and the dispatch of completions to the proxy
//! state machines. The `uring` and `epoll` loops own only the I/O mechanics and call in
//! here with results.
//!
//! Invariants: the slab is preallocated to [`MAX_CONNS`] and never reallocates; the
//! routing table is loaded once per batch ([`Core::begin_batch`]); a listener socket's
//! `Arc` is released only after the engine confirmed no accept or poll is armed on it;
//! the worker writes only its own counter slot.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam::utils::CachePadded;

use crate::cluster::LbState;
use crate::config::Protocol;
use crate::net::ListenerSockets;
use crate::proxy::l4::udp::{Udp, UdpListener};
use crate::proxy::l4::{BufId, Ctx, Io, Side, Step, Watch};
use crate::proxy::slot::Slot as Conn;
use crate::route::{RouteTable, Routes};
use crate::telemetry::ListenerCounter as L;

/// Connection slots per worker; connections beyond it are refused like an overflow.
pub const MAX_CONNS: usize = 1 << 16;
/// Timer granularity: connect and idle timeouts fire within this much of their time,
/// and a waiting worker wakes at least this often.
pub const TICK_MS: u64 = 10;

/// State the engine handle shares with its workers (control flags and drain counts).
pub(crate) struct Shared {
    pub accepting: AtomicBool,
    pub stop: AtomicBool,
    /// Open TCP connections, per worker (only that worker writes).
    pub open: Box<[CachePadded<AtomicU64>]>,
}

impl Shared {
    pub fn new(workers: usize) -> Shared {
        Shared {
            accepting: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            open: (0..workers)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }
}

// === tokens ===

/// What a completion or readiness event is about, packed in a `u64` (io_uring's
/// `user_data`, epoll's `data`): kind (8 bits) | aux (8) | generation (16) | slot (32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Ignore (cancel requests' own completions).
    Nothing = 0,
    Accept = 1,
    Connect = 2,
    Recv = 3,
    Send = 4,
    UdpListener = 5,
    UdpSession = 6,
    /// A TCP socket's readiness (epoll only): aux is the side.
    Sock = 7,
    /// A multishot receive (io_uring only): aux is the side.
    RecvMulti = 8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: Kind,
    pub aux: u8,
    pub gen: u16,
    pub slot: u32,
}

impl Token {
    pub const NOTHING: u64 = 0;

    #[inline]
    pub fn encode(kind: Kind, aux: u8, gen: u16, slot: u32) -> u64 {
        (kind as u64) << 56 | (aux as u64) << 48 | (gen as u64) << 32 | slot as u64
    }

    #[inline]
    pub fn decode(t: u64) -> Token {
        let kind = match (t >> 56) as u8 {
            1 => Kind::Accept,
            2 => Kind::Connect,
            3 => Kind::Recv,
            4 => Kind::Send,
            5 => Kind::UdpListener,
            6 => Kind::UdpSession,
            7 => Kind::Sock,
            8 => Kind::RecvMulti,
            _ => Kind::Nothing,
        };
        Token {
            kind,
            aux: (t >> 48) as u8,
            gen: (t >> 32) as u16,
            slot: t as u32,
        }
    }
}

/// What an engine adds to [`Io`] for the worker core: listener accepts.
pub(crate) trait Driver: Io {
    /// Start accepting on `fd`, reporting under listener slot `l`.
    fn arm_accept(&mut self, l: u32, fd: RawFd);
    /// Stop accepting on `fd`. `true`: stopped now; `false`: a final accept completion
    /// (without "more") will arrive and the core then lets go of the socket.
    fn disarm_accept(&mut self, l: u32, fd: RawFd) -> bool;
}

/// A listener socket this worker serves.
pub(crate) struct Local {
    pub sockets: Arc<ListenerSockets>,
    /// Index in the current table; `None` once the listener left the table.
    pub entry: Option<usize>,
    /// An accept (TCP) or readiness watch (UDP) is armed in the engine.
    pub armed: bool,
}

impl Local {
    pub fn fd(&self, worker: usize) -> RawFd {
        self.sockets.fd(worker).as_raw_fd()
    }
}

/// The context a connection callback gets: borrows of the worker's fields other than
/// `conns`, so a connection slot and its context can be held at once.
macro_rules! ctx {
    ($core:ident) => {
        Ctx {
            worker: $core.worker,
            now_ms: $core.now_ms,
            lb: &mut $core.lb,
            cursors: &mut $core.cursors,
            starved: &mut $core.starved,
            open: &mut $core.open,
            scratch: &mut $core.scratch,
            table: &$core.table,
            http: &mut $core.http,
            crypto: &mut $core.crypto,
        }
    };
}

/// A worker's engine-independent state.
pub(crate) struct Core {
    pub worker: usize,
    routes: Arc<Routes>,
    shared: Arc<Shared>,
    pub table: Arc<RouteTable>,
    pub listeners: Vec<Option<Local>>,
    conns: Vec<Conn>,
    free: Vec<u32>,
    /// Free slots whose state is a mirrored request's: reused for mirrors first, so
    /// slots keep their kind (and its box) instead of reallocating on every switch.
    free_shadow: Vec<u32>,
    /// Slots in use, for the timer scan; `Conn::pos` is the index here.
    open_list: Vec<u32>,
    pub lb: LbState,
    pub cursors: Vec<u32>,
    starved: Vec<(u32, Side)>,
    pub open: u64,
    published_open: u64,
    clock: Instant,
    pub now_ms: u64,
    next_tick_ms: u64,
    accepting: bool,
    pub udp: Udp,
    udp_spare: Vec<(u32, u16, bool)>,
    scratch: Vec<u8>,
    http: crate::proxy::http::Worker,
    pending_spare: Vec<(u32, u16, u32)>,
    /// TLS record offload engine, built on the first TLS connection.
    crypto: Option<crate::tls::conn::Crypto>,
    /// Connections that got completions in the current reap (slot, generation).
    touched: Vec<(u32, u16)>,
    /// Parked sessions (by socket) that got completions in the current reap.
    touched_parked: Vec<RawFd>,
    /// The offload counters last published (published again only when they change).
    crypto_published: tickmesh_offload::EngineStats,
    /// The clock (ms) of the last publication of `crypto_published`.
    crypto_published_ms: u64,
    /// The loop's busy time (the engine loop marks its turns).
    pub busy: super::busy::BusyMeter,
}

impl Core {
    pub fn new(worker: usize, routes: Arc<Routes>, shared: Arc<Shared>) -> Core {
        let workers = shared.open.len();
        Core {
            worker,
            routes,
            shared,
            table: Arc::new(RouteTable::empty()),
            listeners: Vec::new(),
            conns: Vec::with_capacity(MAX_CONNS),
            free: Vec::with_capacity(MAX_CONNS),
            free_shadow: Vec::with_capacity(crate::proxy::http::shadow::MAX_SHADOWS),
            open_list: Vec::with_capacity(MAX_CONNS),
            lb: LbState::new(0x5eed ^ worker as u64),
            cursors: Vec::new(),
            starved: Vec::with_capacity(1024),
            open: 0,
            published_open: 0,
            clock: Instant::now(),
            now_ms: 0,
            next_tick_ms: TICK_MS,
            accepting: true,
            udp: Udp::new(),
            udp_spare: Vec::with_capacity(64),
            scratch: Vec::with_capacity(crate::proxy::http::codec::MAX_HEAD + 1024),
            http: crate::proxy::http::Worker::new(worker, workers),
            pending_spare: Vec::with_capacity(crate::proxy::http::shadow::MAX_PENDING),
            crypto: None,
            touched: Vec::with_capacity(1024),
            touched_parked: Vec::with_capacity(64),
            crypto_published: Default::default(),
            crypto_published_ms: u64::MAX,
            busy: super::busy::BusyMeter::new(),
        }
    }

    /// Whether the worker loop should keep running.
    pub fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    /// Start of every event batch: the clock, the routing table, the accept switch,
    /// timers, and receives starved of buffers.
    pub fn begin_batch(&mut self, io: &mut impl Driver) {
        self.update_clock();
        let current = self.routes.load();
        if current.generation != self.table.generation || !Arc::ptr_eq(&current, &self.table) {
            let t = arc_swap::Guard::into_inner(current);
            self.reconcile(t, io);
        }
        let accepting = self.shared.accepting.load(Ordering::Relaxed);
        if accepting != self.accepting {
            self.accepting = accepting;
            self.sync_accepts(io);
        }
        if self.now_ms >= self.next_tick_ms {
            self.next_tick_ms = self.now_ms + TICK_MS;
            self.tick(io);
        }
        if let Some(block) = &self.table.worker_stats {
            self.busy.publish(block, self.worker, self.now_ms);
        }
        // At most the entries present now: a TLS connection whose retry finds no spare
        // buffer pushes itself back at once and waits for the next batch.
        let mut budget = self.starved.len();
        while budget > 0 && !self.starved.is_empty() && io.buffers_available() {
            budget -= 1;
            // Only the last entry: each rearm may starve again and push itself back.
            let Some((slot, side)) = self.starved.pop() else {
                break;
            };
            let gen = self.conns[slot as usize].gen();
            self.with_conn(slot, gen, io, |c, cx, io| c.rearm(slot, side, cx, io));
            if !io.buffers_available() {
                break;
            }
        }
        self.udp_again(io);
    }

    /// Ring the offload engine's doorbell, reap its completions and hand them to their
    /// connections (in order per connection; the engine guarantees it), then let those
    /// connections move the results and submit more. Runs once per event batch, after the
    /// I/O completions, so the jobs of every connection in the batch go out together.
    pub fn poll_crypto(&mut self, io: &mut impl Driver) {
        // Bounded: a round's drives may submit follow-up jobs (a seal after an open, an
        // alert); what is left waits for the next batch (`crypto_busy` keeps the loop hot).
        for _ in 0..4 {
            let Some(cr) = self.crypto.as_mut() else {
                return;
            };
            if cr.engine.in_flight() == 0 && cr.waiters.is_empty() {
                break;
            }
            cr.engine.poll();
            let mut touched = std::mem::take(&mut self.touched);
            touched.clear();
            // Waiters retry first: the reap below frees ring slots for them.
            touched.append(&mut cr.waiters);
            let conns = &mut self.conns;
            let (pool, parked) = (&mut self.http.pool, &mut self.touched_parked);
            cr.engine.reap(usize::MAX, |c| {
                if c.tag & crate::tls::conn::PARKED_TAG != 0 {
                    // A parked session judging what its peer sent while it idled.
                    let fd = c.tag as u32 as RawFd;
                    if let Some(p) = pool.find_fd(fd).and_then(|i| i.tls.as_mut()) {
                        if p.complete(&c) && !parked.contains(&fd) {
                            // Bounded by the pool's size; rare (a peer speaking to an
                            // idle connection).
                            parked.push(fd);
                        }
                    }
                    return;
                }
                let (slot, gen, side) = crate::tls::conn::untag(c.tag);
                if let Some(t) = conns.get_mut(slot as usize) {
                    if t.gen() == gen
                        && !t.is_free()
                        && t.on_crypto(side, &c)
                        && touched.last() != Some(&(slot, gen))
                    {
                        touched.push((slot, gen));
                    }
                }
            });
            for &(slot, gen) in &touched {
                self.with_conn(slot, gen, io, |c, cx, io| c.crypto_done(slot, cx, io));
            }
            self.touched = touched;
            while let Some(fd) = self.touched_parked.pop() {
                self.settle_parked(fd, io);
            }
        }
        self.publish_crypto();
    }

    /// Bytes arrived on parked socket `fd` (see [`Io::park_session`]): its session
    /// opens their records on the engine; the pool entry is judged when they complete
    /// ([`Core::settle_parked`]). A session that cannot take them is closed now. The
    /// buffer goes back to the engine here.
    pub fn on_parked_bytes(&mut self, fd: RawFd, buf: BufId, len: u32, io: &mut impl Driver) {
        let tag = crate::tls::conn::parked_tag(fd);
        let kept = match (self.http.pool.find_fd(fd), self.crypto.as_mut()) {
            (Some(i), Some(cr)) => i.tls.as_mut().is_some_and(|p| {
                let b = io.bytes(buf);
                p.absorb(&b[..(len as usize).min(b.len())], cr, tag).is_ok()
            }),
            _ => false,
        };
        io.release(buf);
        if !kept {
            self.close_parked(fd, io);
        }
    }

    /// A parked session's jobs completed: keep the connection (tickets, KeyUpdate), or
    /// close it (plaintext nobody asked for, `close_notify`, an alert, a bad record).
    fn settle_parked(&mut self, fd: RawFd, io: &mut impl Driver) {
        use crate::tls::conn::Settled;
        let tag = crate::tls::conn::parked_tag(fd);
        let verdict = match (self.http.pool.find_fd(fd), self.crypto.as_mut()) {
            (Some(i), Some(cr)) => i.tls.as_mut().map_or(Settled::Dead, |p| p.settle(cr, tag)),
            _ => return,
        };
        if verdict == Settled::Dead {
            self.close_parked(fd, io);
        }
    }

    /// Close the parked connection on `fd` (counted on its cluster and endpoint).
    fn close_parked(&mut self, fd: RawFd, io: &mut impl Driver) {
        match self.http.pool.remove_fd(fd) {
            Some(i) => crate::proxy::http::pool::count_close(
                &self.table,
                self.worker,
                i,
                &mut self.crypto,
                io,
            ),
            // Not in the pool (never expected): the engine must not keep watching it.
            None => io.drop_socket(fd),
        }
    }

    /// Copy the engine's counters to the shared block `stats` reads (when they changed:
    /// a handful of relaxed stores). At most once per millisecond of the batch clock —
    /// every TLS batch did it before, ≈ 0.3 µs of a worker's time per TLS echo (profiled)
    /// for counters only people read — except that a session created or ended publishes
    /// at once (so a connection's counts are out when its close is).
    fn publish_crypto(&mut self) {
        use crate::telemetry::OffloadCounter as O;
        let (Some(cr), Some(block)) = (self.crypto.as_ref(), self.table.offload_stats.as_ref())
        else {
            return;
        };
        if self.now_ms == self.crypto_published_ms
            && cr.engine.sessions() == self.crypto_published.sessions
        {
            return;
        }
        let s = cr.engine.stats();
        if s == self.crypto_published || self.worker >= block.workers() {
            return;
        }
        self.crypto_published = s;
        self.crypto_published_ms = self.now_ms;
        let w = self.worker;
        let backend = match cr.engine.backend() {
            tickmesh_offload::BackendKind::SoftwareInline => 1,
            tickmesh_offload::BackendKind::SoftwareThreaded => 2,
            tickmesh_offload::BackendKind::Ktls => 3,
            _ => 4,
        };
        block.set(w, O::Backend, backend);
        block.set(w, O::Sessions, s.sessions);
        block.set(w, O::RecordsSealed, s.records_sealed);
        block.set(w, O::RecordsOpened, s.records_opened);
        block.set(w, O::BytesSealed, s.bytes_sealed);
        block.set(w, O::BytesOpened, s.bytes_opened);
        block.set(w, O::JobsFailed, s.jobs_failed);
        block.set(w, O::SubmitRefused, s.submit_refused);
        block.set(w, O::InFlight, s.in_flight);
    }

    /// Offload jobs are in flight: the engine loop must not sleep.
    #[inline]
    pub fn crypto_busy(&self) -> bool {
        self.crypto
            .as_ref()
            .is_some_and(|c| c.engine.in_flight() > 0 || !c.waiters.is_empty())
    }

    /// End of an event batch: publish the open-connection count for drain.
    #[inline]
    pub fn end_batch(&mut self) {
        if self.open != self.published_open {
            self.published_open = self.open;
            self.shared.open[self.worker].store(self.open, Ordering::Relaxed);
        }
    }

    /// Read the clock; engines call this after waiting, before dispatching what the
    /// wait returned (activity must be stamped with the time it happened). The busy
    /// meter's tick counter (read once per turn anyway) stands in for a clock read per
    /// batch once calibrated — a `clock_gettime` per busy turn was ≈ 3% of a worker's
    /// samples at closed:16 (perf, http1). Never goes back.
    #[inline]
    pub fn update_clock(&mut self) {
        let ms = match self.busy.now_ns() {
            Some(ns) => ns / 1_000_000,
            None => self.clock.elapsed().as_millis() as u64,
        };
        self.now_ms = self.now_ms.max(ms);
    }

    /// A new table: keep the listeners it still has, arm the new ones, disarm and
    /// release the ones it dropped. Runs on the control plane's pace, so it may allocate.
    fn reconcile(&mut self, t: Arc<RouteTable>, io: &mut impl Driver) {
        for l in self.listeners.iter_mut().flatten() {
            l.entry = None;
        }
        for (i, le) in t.listeners.iter().enumerate() {
            let found = self
                .listeners
                .iter_mut()
                .flatten()
                .find(|l| Arc::ptr_eq(&l.sockets, &le.sockets));
            match found {
                Some(l) => l.entry = Some(i),
                None => {
                    let local = Local {
                        sockets: le.sockets.clone(),
                        entry: Some(i),
                        armed: false,
                    };
                    match self.listeners.iter().position(Option::is_none) {
                        Some(p) => self.listeners[p] = Some(local),
                        None => self.listeners.push(Some(local)),
                    }
                }
            }
        }
        self.cursors.clear();
        self.cursors.resize(t.clusters.len(), 0);
        // Idle upstream connections are indexed by the old table: those to an endpoint
        // the new one still has (same cluster name, address and TLS settings) are
        // re-indexed and kept, the rest closed.
        let (old, worker, crypto) = (&self.table, self.worker, &mut self.crypto);
        if self.http.pool.is_empty() {
            self.http.pool.reset(t.generation, |_| {});
        } else {
            // Control-plane pace: allocates (a name index, a cache per endpoint seen).
            let by_name: std::collections::HashMap<&str, usize> = t
                .clusters
                .iter()
                .enumerate()
                .map(|(i, c)| (&*c.name, i))
                .collect();
            let mut seen = std::collections::HashMap::new();
            self.http.pool.carry(
                t.generation,
                |c, e| {
                    *seen
                        .entry((c, e))
                        .or_insert_with(|| pool_place(old, &t, &by_name, c, e))
                },
                |i| crate::proxy::http::pool::count_close(old, worker, i, crypto, io),
            );
        }
        self.table = t;
        let worker = self.worker;
        self.udp.set_listeners(
            self.listeners
                .iter()
                .map(|l| {
                    l.as_ref().map(|l| UdpListener {
                        entry: l.entry,
                        fd: l.fd(worker),
                    })
                })
                .collect(),
        );
        self.sync_accepts(io);
    }

    /// Make armed accepts match (listener in table) && accepting.
    fn sync_accepts(&mut self, io: &mut impl Driver) {
        let stopping = self.stopping();
        for i in 0..self.listeners.len() {
            let Some(l) = &mut self.listeners[i] else {
                continue;
            };
            let fd = l.fd(self.worker);
            let udp = l.sockets.protocol == Protocol::Udp;
            // UDP listeners keep being read while draining: sessions still reply
            // through them (new clients are refused in `Udp`).
            let want = l.entry.is_some() && (self.accepting || udp) && !stopping;
            if want && !l.armed {
                l.armed = true;
                if udp {
                    io.watch(Watch::Listener(i as u32), fd);
                } else {
                    io.arm_accept(i as u32, fd);
                }
            } else if !want && l.armed {
                let done = if udp {
                    io.unwatch(Watch::Listener(i as u32), fd);
                    // Sessions of a listener that left the table go with it.
                    self.udp.close_listener(i as u32, self.worker, io);
                    true
                } else {
                    io.disarm_accept(i as u32, fd)
                };
                if done {
                    l.armed = false;
                }
            }
            if let Some(l) = &self.listeners[i] {
                if !l.armed && l.entry.is_none() {
                    self.listeners[i] = None;
                }
            }
        }
    }

    /// An accept completed on listener slot `l` (`res`: the new fd or `-errno`); `more`
    /// is false when the engine's accept on it has ended.
    pub fn on_accept(&mut self, l: u32, res: i32, more: bool, io: &mut impl Driver) {
        if !more {
            if let Some(local) = self.listeners.get_mut(l as usize).and_then(Option::as_mut) {
                local.armed = false;
            }
            // Re-arms if still wanted (a multishot accept can end on an error), or
            // releases a listener that left the table.
            self.sync_accepts(io);
        }
        if res < 0 {
            return;
        }
        // SAFETY: a non-negative accept result is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        self.admit(l, fd, io);
    }

    fn admit(&mut self, l: u32, fd: OwnedFd, io: &mut impl Driver) {
        let Some(entry) = self
            .listeners
            .get(l as usize)
            .and_then(Option::as_ref)
            .and_then(|l| l.entry)
        else {
            return; // listener left the table: the connection is closed (fd dropped)
        };
        if !self.accepting {
            return;
        }
        let table = self.table.clone();
        let le = &table.listeners[entry];
        if le.max_connections > 0 {
            // All workers' slots: relaxed reads of other workers' counters, approximate
            // under concurrent accepts by at most (workers - 1).
            let open = le
                .stats
                .get(L::CxTotal)
                .saturating_sub(le.stats.get(L::CxClosed));
            if open >= u64::from(le.max_connections) {
                le.stats.inc(self.worker, L::CxOverflow);
                return;
            }
        }
        let Some(slot) = self.alloc(false) else {
            le.stats.inc(self.worker, L::CxOverflow);
            return;
        };
        let mut cx = ctx!(self);
        let step = self.conns[slot as usize].open(slot, fd, &table, entry, &mut cx, io);
        self.after(slot, step);
        if !self.http.jobs.is_empty() {
            self.start_shadows(io);
        }
    }

    fn alloc(&mut self, shadow: bool) -> Option<u32> {
        let kept = if shadow {
            self.free_shadow.pop().or_else(|| self.free.pop())
        } else {
            self.free.pop()
        };
        let slot = match kept {
            Some(s) => s,
            None if self.conns.len() < MAX_CONNS => {
                // Within the reserved capacity: no reallocation.
                self.conns.push(Conn::default());
                (self.conns.len() - 1) as u32
            }
            None => self.free_shadow.pop()?,
        };
        self.conns[slot as usize].set_pos(self.open_list.len() as u32);
        self.open_list.push(slot);
        Some(slot)
    }

    #[inline]
    fn after(&mut self, slot: u32, step: Step) {
        if step == Step::Free {
            let pos = self.conns[slot as usize].pos() as usize;
            self.open_list.swap_remove(pos);
            if let Some(&moved) = self.open_list.get(pos) {
                self.conns[moved as usize].set_pos(pos as u32);
            }
            if self.conns[slot as usize].is_shadow() {
                self.free_shadow.push(slot);
            } else {
                self.free.push(slot);
            }
        }
    }

    /// Run `f` on connection `slot` if `gen` still names its tenant.
    #[inline]
    fn with_conn<D: Driver>(
        &mut self,
        slot: u32,
        gen: u16,
        io: &mut D,
        f: impl FnOnce(&mut Conn, &mut Ctx, &mut D) -> Step,
    ) -> bool {
        let Some(c) = self.conns.get_mut(slot as usize) else {
            return false;
        };
        if c.gen() != gen || c.is_free() {
            return false;
        }
        let mut cx = ctx!(self);
        let step = f(c, &mut cx, io);
        self.after(slot, step);
        if !self.http.jobs.is_empty() {
            self.start_shadows(io);
        }
        true
    }

    /// Start the mirrored requests the last event queued, each in a slot of its own.
    fn start_shadows<D: Driver>(&mut self, io: &mut D) {
        while let Some(job) = self.http.jobs.pop() {
            let Some(slot) = self.alloc(true) else {
                job.lstats.inc(self.worker, L::HttpMirrorDropped);
                job.cstats
                    .inc(self.worker, crate::telemetry::UpstreamCounter::CxClosed);
                job.estats
                    .inc(self.worker, crate::telemetry::UpstreamCounter::CxClosed);
                if let crate::proxy::http::shadow::Upstream::Pooled(i) = job.up {
                    // The engine may still watch it from its time in the pool.
                    io.drop_socket(i.fd.as_raw_fd());
                    if let Some(p) = i.tls {
                        p.release(self.crypto.as_mut());
                    }
                }
                self.http.give_back(job.data);
                continue;
            };
            let mut cx = ctx!(self);
            let step = self.conns[slot as usize].open_shadow(slot, job, &mut cx, io);
            self.after(slot, step);
        }
    }

    pub fn on_connect(&mut self, slot: u32, gen: u16, res: i32, io: &mut impl Driver) {
        self.with_conn(slot, gen, io, |c, cx, io| c.on_connect(slot, res, cx, io));
    }

    pub fn on_recv(
        &mut self,
        slot: u32,
        gen: u16,
        side: Side,
        res: i32,
        buf: Option<BufId>,
        io: &mut impl Driver,
    ) {
        let handled = self.with_conn(slot, gen, io, |c, cx, io| {
            c.on_recv(slot, side, res, buf, cx, io)
        });
        if !handled {
            if let Some(b) = buf {
                io.release(b);
            }
        }
    }

    pub fn on_send(&mut self, slot: u32, gen: u16, from: Side, res: i32, io: &mut impl Driver) {
        self.with_conn(slot, gen, io, |c, cx, io| {
            c.on_send(slot, from, res, cx, io)
        });
    }

    /// Timeouts for every open connection and UDP session; requests waiting for an
    /// upstream connection get their turn first, in arrival order.
    fn tick(&mut self, io: &mut impl Driver) {
        if !self.http.pending.is_empty() {
            // Swap in the spare list: entries still waiting push themselves back.
            std::mem::swap(&mut self.http.pending, &mut self.pending_spare);
            for i in 0..self.pending_spare.len() {
                let (slot, gen, seq) = self.pending_spare[i];
                self.with_conn(slot, gen, io, |c, cx, io| {
                    c.resume_pending(slot, seq, cx, io)
                });
            }
            self.pending_spare.clear();
        }
        let mut i = 0;
        while i < self.open_list.len() {
            let slot = self.open_list[i];
            let gen = self.conns[slot as usize].gen();
            self.with_conn(slot, gen, io, |c, cx, io| c.on_tick(slot, cx, io));
            // A freed slot was swapped out: look at index i again.
            if self.open_list.get(i) == Some(&slot) {
                i += 1;
            }
        }
        self.udp.expire(self.now_ms, self.worker, io);
        if !self.http.pool.is_empty() {
            let (t, worker, crypto) = (&self.table, self.worker, &mut self.crypto);
            // Connections the engine saw die while parked (their upstream closed them,
            // or sent bytes nobody asked for) are closed now, not at their next take.
            self.http.pool.sweep(
                io,
                |io, i| io.parked_alive(i.fd.as_raw_fd()) == Some(false),
                |io, i| crate::proxy::http::pool::count_close(t, worker, i, crypto, io),
            );
            self.http.pool.expire(
                self.now_ms,
                |c| {
                    use crate::telemetry::UpstreamCounter::{RqPendingDone, RqPendingTotal};
                    t.clusters.get(c as usize).map_or(0, |c| {
                        // Requests wait for a connection of this cluster (on another
                        // worker: this one's waiters took their turn above): an idle
                        // one here only holds a place under max_connections. Closed.
                        let waiting = c
                            .stats
                            .get(RqPendingTotal)
                            .saturating_sub(c.stats.get(RqPendingDone));
                        if waiting > 0 {
                            0
                        } else {
                            crate::proxy::l4::ms(c.idle_timeout)
                        }
                    })
                },
                |i| crate::proxy::http::pool::count_close(t, worker, i, crypto, io),
            );
        }
    }

    /// Close every connection and session (shutdown past its drain deadline).
    pub fn abort_all(&mut self, io: &mut impl Driver) {
        let slots: Vec<u32> = self.open_list.clone();
        for slot in slots {
            let gen = self.conns[slot as usize].gen();
            self.with_conn(slot, gen, io, |c, cx, io| c.abort(slot, cx, io));
        }
        self.udp.close_all(self.worker, io);
        let (t, worker, crypto) = (&self.table, self.worker, &mut self.crypto);
        let generation = t.generation;
        self.http.pool.reset(generation, |i| {
            crate::proxy::http::pool::count_close(t, worker, i, crypto, io)
        });
        self.sync_accepts(io);
    }

    /// No connection or session is open and no accept is armed.
    pub fn idle(&self) -> bool {
        self.open == 0 && self.listeners.iter().flatten().all(|l| !l.armed)
    }

    /// A watched UDP socket is readable (`more` false: the engine's watch ended).
    pub fn on_udp_ready(&mut self, w: Watch, more: bool, io: &mut impl Driver) {
        match w {
            Watch::Listener(l) => {
                if !more {
                    if let Some(local) = self.listeners.get_mut(l as usize).and_then(Option::as_mut)
                    {
                        local.armed = false;
                    }
                    self.sync_accepts(io);
                }
                self.udp_listener(l, io);
            }
            Watch::Session(slot, gen) => {
                if !more {
                    self.udp.rewatch(slot, gen, io);
                }
                self.udp
                    .on_session_readable(slot, gen, self.worker, self.now_ms);
            }
        }
    }

    fn udp_listener(&mut self, l: u32, io: &mut impl Driver) {
        let accepting = self.accepting && !self.stopping();
        self.udp.on_listener_readable(
            l,
            &self.table,
            accepting,
            self.worker,
            self.now_ms,
            &mut self.lb,
            &mut self.cursors,
            io,
        );
    }

    /// UDP sockets whose burst ran out last batch.
    fn udp_again(&mut self, io: &mut impl Driver) {
        if self.udp.again.is_empty() {
            return;
        }
        // Swap in the spare list so new bursts queue without allocating.
        std::mem::swap(&mut self.udp.again, &mut self.udp_spare);
        for i in 0..self.udp_spare.len() {
            let (slot, gen, listener) = self.udp_spare[i];
            if listener {
                self.udp_listener(slot, io);
            } else {
                self.udp
                    .on_session_readable(slot, gen, self.worker, self.now_ms);
            }
        }
        self.udp_spare.clear();
    }
}

/// Where endpoint `e` of cluster `c` of `old` sits in `new` (cluster, endpoint
/// indices): `None` when the cluster (by name) or the endpoint (by address) is gone, or
/// the cluster's TLS origination changed (a pooled connection carries its old session).
fn pool_place(
    old: &RouteTable,
    new: &RouteTable,
    by_name: &std::collections::HashMap<&str, usize>,
    c: u32,
    e: u32,
) -> Option<(u32, u32)> {
    let oc = old.clusters.get(c as usize)?;
    let addr = oc.endpoints.get(e as usize)?.address;
    let i = *by_name.get(&*oc.name)?;
    let nc = &new.clusters[i];
    let same_tls = match (&oc.tls, &nc.tls) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    };
    if !same_tls {
        return None;
    }
    let j = nc.endpoints.iter().position(|x| x.address == addr)?;
    Some((i as u32, j as u32))
}

/// Count of open connections/sessions across workers.
pub(crate) fn open_total(shared: &Shared) -> u64 {
    shared.open.iter().map(|a| a.load(Ordering::Relaxed)).sum()
}
