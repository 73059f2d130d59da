//! The TCP relay: one [`Conn`] per proxied connection, an engine-agnostic state machine
//! driven by completions.
//!
//! Owns the connection's two sockets, its upstream choice and the buffers in flight.
//! Invariants:
//! - **Bounded memory.** Each direction holds at most [`QUEUE`] pool buffers of
//!   [`BUF_SIZE`] bytes; a receive is only armed while the queue has room, so a peer that
//!   stops reading stops the other side's reads (TCP flow control does the rest). Per
//!   connection: at most `2 × QUEUE × BUF_SIZE` = 128 KiB of user-space buffer, and none
//!   while idle (buffers come from the worker's shared pool, taken per receive).
//! - **Ordering.** One send in flight per direction; queued buffers go out in order.
//! - **Half-close.** EOF from one side becomes `shutdown(SHUT_WR)` on the other once that
//!   direction's queue is empty; the other direction keeps flowing. The connection closes
//!   when both directions have ended.
//! - **Reset.** A receive or send error on one side closes the other with `SO_LINGER 0`
//!   (an RST), so the peer sees the failure instead of a clean FIN.
//! - A slot is freed only when no operation is in flight on it.
//!
//! - **TLS** ([`crate::tls::conn`]): a listener with `tls` terminates on the downstream
//!   side (phase `Handshaking` before any upstream connect, so a client that fails the
//!   handshake or the principal check never reaches an upstream); a cluster with `tls`
//!   originates on the upstream side after the connect. Queues then carry ciphertext
//!   towards a TLS side, in pool buffers the relay takes and fills itself. After a side's
//!   handshake its records are jobs on the worker's offload engine: the relay submits
//!   (`drive` pumps both sides), the worker reaps once per batch and hands each
//!   completion to its connection ([`Conn::on_crypto`], then [`Conn::crypto_done`]).
//!
//! Never blocks; never allocates on the data path (per connection: three `Arc` clones of
//! counter blocks and the upstream socket; with TLS, the handshake state and then the
//! record layer's fixed buffers, allocated once per side).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;

use super::{ms, BufId, ConnRef, Ctx, Io, Side, Step};
use crate::cluster::health::Outcome;
use crate::route::RouteTable;
use crate::telemetry::{ListenerCounter as L, ListenerStats, UpstreamCounter as U, UpstreamStats};
use crate::tls::conn::{self as tlsconn, FeedError, Plain, Sniff, Tls};
use crate::tls::kernel::Control;

/// Buffers queued per direction before the receive on that side pauses.
pub const QUEUE: usize = 4;
/// Size of one pool buffer (one receive).
pub const BUF_SIZE: usize = 16 * 1024;

const ETIMEDOUT: i32 = libc::ETIMEDOUT;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Free,
    /// Downstream TLS handshake; no upstream yet.
    Handshaking,
    Connecting,
    Proxying,
    Closing,
}

/// A TLS client connection an HTTP listener hands over as opaque TCP: the session (past
/// its handshake, possibly with decrypted bytes still inside) and the operations in
/// flight on the client's socket, which complete into the relay.
#[derive(Debug)]
pub struct TlsCarry {
    pub tls: Box<Tls>,
    /// A receive is armed on the client's socket.
    pub recv_armed: bool,
    /// Ciphertext towards the client (buffer, offset, remaining length) …
    pub tx: Option<(BufId, u32, u32)>,
    /// … and whether its send is in flight.
    pub tx_inflight: bool,
}

/// Bytes read from one side waiting to be written to the other.
#[derive(Debug, Default)]
struct Dir {
    bufs: [BufId; QUEUE],
    lens: [u32; QUEUE],
    head: u8,
    count: u8,
    /// Bytes of the head buffer already sent.
    off: u32,
    recv_armed: bool,
    send_inflight: bool,
    /// The source side sent FIN.
    eof: bool,
    /// We propagated the FIN (`shutdown(SHUT_WR)` on the destination).
    shut: bool,
    starved: bool,
}

impl Dir {
    #[inline]
    fn push(&mut self, b: BufId, len: u32) {
        debug_assert!((self.count as usize) < QUEUE);
        let i = (self.head as usize + self.count as usize) % QUEUE;
        self.bufs[i] = b;
        self.lens[i] = len;
        self.count += 1;
    }

    #[inline]
    fn front(&self) -> (BufId, u32) {
        (self.bufs[self.head as usize], self.lens[self.head as usize])
    }

    #[inline]
    fn pop(&mut self) -> BufId {
        let b = self.bufs[self.head as usize];
        self.head = ((self.head as usize + 1) % QUEUE) as u8;
        self.count -= 1;
        self.off = 0;
        b
    }

    fn busy(&self) -> bool {
        self.recv_armed || self.send_inflight
    }
}

/// One proxied TCP connection.
#[derive(Debug)]
pub struct Conn {
    phase: Phase,
    pub gen: u16,
    attempt: u8,
    connect_inflight: bool,
    timed_out: bool,
    /// Close this side with an RST.
    reset: [bool; 2],
    /// Indexed by [`Side`]; `None` before the upstream socket exists and after close.
    fds: [Option<OwnedFd>; 2],
    /// Indexed by the source side: `dirs[Down]` carries client → upstream.
    dirs: [Dir; 2],
    cluster: u32,
    first_endpoint: u32,
    deadline_ms: u64,
    last_ms: u64,
    idle_ms: u64,
    /// Position in the worker's list of open connections.
    pub pos: u32,
    peer: Option<SocketAddr>,
    /// Only while connecting: the table the connection was routed with, for retries.
    table: Option<Arc<RouteTable>>,
    lstats: Option<Arc<ListenerStats>>,
    cstats: Option<Arc<UpstreamStats>>,
    estats: Option<Arc<UpstreamStats>>,
    /// Only while connecting: the endpoint's health, told how the connect ended.
    ehealth: Option<Arc<crate::cluster::health::EndpointHealth>>,
    /// TLS sessions, when either side speaks TLS.
    tls: Option<Box<Tls>>,
}

impl Default for Conn {
    fn default() -> Self {
        Conn {
            phase: Phase::Free,
            gen: 0,
            attempt: 0,
            connect_inflight: false,
            timed_out: false,
            reset: [false; 2],
            fds: [None, None],
            dirs: Default::default(),
            cluster: 0,
            first_endpoint: 0,
            deadline_ms: 0,
            last_ms: 0,
            idle_ms: 0,
            pos: 0,
            peer: None,
            table: None,
            lstats: None,
            cstats: None,
            estats: None,
            ehealth: None,
            tls: None,
        }
    }
}

impl Conn {
    pub fn is_free(&self) -> bool {
        self.phase == Phase::Free
    }

    fn me(&self, slot: u32) -> ConnRef {
        ConnRef {
            slot,
            gen: self.gen,
        }
    }

    fn raw(&self, s: Side) -> RawFd {
        self.fds[s.idx()].as_ref().map_or(-1, |f| f.as_raw_fd())
    }

    /// Take over an accepted client socket and start connecting upstream. `listener`
    /// indexes `table.listeners`; the caller has already checked `max_connections`.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &mut self,
        slot: u32,
        down: OwnedFd,
        table: &Arc<RouteTable>,
        listener: usize,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        debug_assert!(self.phase == Phase::Free);
        let l = &table.listeners[listener];
        let gen = self.gen;
        *self = Conn {
            gen,
            phase: Phase::Connecting,
            idle_ms: ms(l.idle_timeout),
            last_ms: cx.now_ms,
            pos: self.pos,
            ..Conn::default()
        };
        // A failure here is not fatal: the connection works, only with Nagle on.
        let _ = crate::net::set_nodelay(&down);
        l.stats.inc(cx.worker, L::CxTotal);
        self.lstats = Some(l.stats.clone());
        io.adopt(self.me(slot), down.as_raw_fd());
        self.fds[Side::Down.idx()] = Some(down);
        *cx.open += 1;
        let Some(target) = l.target.as_ref() else {
            // An http listener with no TCP fallback: nothing to send opaque TCP to.
            l.stats.inc(cx.worker, L::NoUpstream);
            return self.close(slot, cx, io);
        };
        self.cluster = target.pick(cx.lb.next_u32()) as u32;
        let cl = &table.clusters[self.cluster as usize];
        self.cstats = Some(cl.stats.clone());
        if cl.balancer.is_hashing() {
            // Maglev hashes the client address; only then is getpeername worth a syscall.
            self.peer = self.fds[0]
                .as_ref()
                .and_then(|f| crate::net::peer_addr(f).ok());
        }
        self.table = Some(table.clone());
        if let Some(t) = &l.tls {
            let mut tls = Tls::server(t.clone());
            tls.want_kernel(cx.crypto().engine.ktls_enabled());
            self.tls = Some(tls);
            self.phase = Phase::Handshaking;
            self.arm_recv(slot, Side::Down, io);
            return Step::Continue;
        }
        self.connect_next(slot, cx, io)
    }

    /// Continue a connection an HTTP listener sniffed as not HTTP/1.x: the client
    /// socket is already adopted and counted; `data` (buffer, offset, length) is what was
    /// read from it (decrypted, with TLS), sent upstream first; `tls` the client's session
    /// when the listener terminates TLS.
    #[allow(clippy::too_many_arguments)]
    pub fn open_fallback(
        &mut self,
        slot: u32,
        down: OwnedFd,
        data: Option<(BufId, u32, u32)>,
        tls: Option<TlsCarry>,
        table: &Arc<RouteTable>,
        listener: usize,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        let l = &table.listeners[listener];
        let gen = self.gen;
        *self = Conn {
            gen,
            phase: Phase::Connecting,
            idle_ms: ms(l.idle_timeout),
            last_ms: cx.now_ms,
            pos: self.pos,
            ..Conn::default()
        };
        self.lstats = Some(l.stats.clone());
        self.fds[Side::Down.idx()] = Some(down);
        if let Some((b, off, len)) = data {
            let d = &mut self.dirs[Side::Down.idx()];
            d.push(b, off + len);
            d.off = off;
        }
        if let Some(c) = tls {
            // The HTTP side's operations complete here: its receive on the client, and
            // its ciphertext send (bytes towards the client live in `dirs[Up]`).
            let allowed = c.tls.client_allowed();
            self.tls = Some(c.tls);
            self.dirs[Side::Down.idx()].recv_armed = c.recv_armed;
            if let Some((b, off, len)) = c.tx {
                let d = &mut self.dirs[Side::Up.idx()];
                d.push(b, off + len);
                d.off = off;
                d.send_inflight = c.tx_inflight;
            }
            if !allowed {
                // The listener's principals hold for opaque TCP too (HTTP would 403).
                return self.deny(slot, cx, io);
            }
        }
        let Some(target) = l.target.as_ref() else {
            l.stats.inc(cx.worker, L::NoUpstream);
            return self.close(slot, cx, io);
        };
        self.cluster = target.pick(cx.lb.next_u32()) as u32;
        let cl = &table.clusters[self.cluster as usize];
        self.cstats = Some(cl.stats.clone());
        if cl.balancer.is_hashing() {
            self.peer = self.fds[0]
                .as_ref()
                .and_then(|f| crate::net::peer_addr(f).ok());
        }
        self.table = Some(table.clone());
        self.connect_next(slot, cx, io)
    }

    /// Connect attempt `self.attempt` (0 first): the balancer's choice, then the
    /// endpoints after it in order, so a retry never repeats the endpoint that failed.
    fn connect_next(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        let Some(table) = self.table.clone() else {
            return self.close(slot, cx, io);
        };
        let cl = &table.clusters[self.cluster as usize];
        if let Some((e, fd)) = super::open_upstream(
            cl,
            self.cluster,
            &mut self.attempt,
            &mut self.first_endpoint,
            self.peer,
            cx,
        ) {
            self.estats = Some(e.stats.clone());
            self.ehealth = Some(e.health.clone());
            io.connect(self.me(slot), fd.as_raw_fd(), e.address);
            self.fds[Side::Up.idx()] = Some(fd);
            self.connect_inflight = true;
            self.timed_out = false;
            self.deadline_ms = cx.now_ms + ms(cl.connect_timeout);
            return Step::Continue;
        }
        if let Some(s) = &self.lstats {
            s.inc(cx.worker, L::NoUpstream);
        }
        self.close(slot, cx, io)
    }

    pub fn on_connect(&mut self, slot: u32, res: i32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        self.connect_inflight = false;
        if self.phase == Phase::Closing {
            return self.close(slot, cx, io);
        }
        // Outlier detection: a connect failure is a gateway error; success ends the
        // exchange as far as endpoint health goes.
        if let (Some(h), Some(s)) = (self.ehealth.take(), &self.estats) {
            let o = if res < 0 {
                Outcome::LocalFailure
            } else {
                Outcome::ConnectedFinal
            };
            crate::cluster::health::record(&h, s, cx.worker, o);
        }
        if res < 0 {
            let what = if self.timed_out || res == -ETIMEDOUT {
                U::ConnectTimeout
            } else {
                U::ConnectFail
            };
            self.upstream_count(cx.worker, what, 1);
            self.upstream_count(cx.worker, U::CxClosed, 1);
            self.estats = None;
            self.fds[Side::Up.idx()] = None;
            self.attempt = self.attempt.saturating_add(1);
            return self.connect_next(slot, cx, io);
        }
        self.phase = Phase::Proxying;
        let origin = self
            .table
            .take()
            .and_then(|t| t.clusters.get(self.cluster as usize)?.tls.clone());
        self.last_ms = cx.now_ms;
        if let Some(ct) = origin {
            let ktls = cx.crypto().engine.ktls_enabled();
            let t = self.tls.get_or_insert_with(Tls::empty);
            t.want_kernel(ktls);
            if t.start_client(&ct).is_err() {
                self.upstream_count(cx.worker, U::TlsErrors, 1);
                return self.close(slot, cx, io);
            }
        }
        if self.tls.is_some() {
            return self.drive(slot, cx, io);
        }
        // Bytes an HTTP listener read while sniffing go first.
        self.send_head(slot, Side::Down, io);
        self.arm_recv(slot, Side::Down, io);
        self.arm_recv(slot, Side::Up, io);
        Step::Continue
    }

    #[inline]
    fn upstream_count(&self, worker: usize, k: U, n: u64) {
        if let Some(s) = &self.estats {
            s.add(worker, k, n);
        }
        if let Some(s) = &self.cstats {
            s.add(worker, k, n);
        }
    }

    #[inline]
    fn listener_count(&self, worker: usize, k: L, n: u64) {
        if let Some(s) = &self.lstats {
            s.add(worker, k, n);
        }
    }

    #[inline]
    fn arm_recv(&mut self, slot: u32, side: Side, io: &mut impl Io) {
        let fd = self.raw(side);
        let d = &mut self.dirs[side.idx()];
        if d.recv_armed || d.eof || d.starved || d.count as usize >= QUEUE {
            return;
        }
        match &self.tls {
            None if self.phase == Phase::Proxying => {}
            None => return,
            Some(t) => {
                if !tls_may_read(t, side, self.phase) {
                    return;
                }
            }
        }
        d.recv_armed = true;
        if self.tls.as_deref().is_some_and(|t| t.handshaking(side)) {
            // Single-shot during the handshake: it may end in a kTLS hand-over, which
            // needs nothing armed on the socket (a multishot receive could take records
            // raw). The hand-over runs in the receive that ended the handshake.
            io.recv(self.me(slot), side, fd);
        } else {
            // Both sockets stay this connection's until it closes: one multishot
            // receive each serves every message (past the handshake, TLS sides too:
            // records on the ring, or plaintext from the kernel).
            io.recv_multi(self.me(slot), side, fd);
        }
    }

    #[inline]
    fn send_head(&mut self, slot: u32, from: Side, io: &mut impl Io) {
        let fd = self.raw(from.other());
        let me = self.me(slot);
        let d = &mut self.dirs[from.idx()];
        if d.send_inflight || d.count == 0 || fd < 0 {
            return;
        }
        if from == Side::Down && self.phase != Phase::Proxying {
            return; // the upstream socket is not connected yet
        }
        let (b, len) = d.front();
        d.send_inflight = true;
        io.send(me, from, fd, b, d.off, len - d.off);
    }

    /// A receive on `side` finished: `res` bytes in `buf`, 0 at EOF, or `-errno`.
    pub fn on_recv(
        &mut self,
        slot: u32,
        side: Side,
        res: i32,
        buf: Option<BufId>,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        self.dirs[side.idx()].recv_armed = false;
        let live = match self.phase {
            Phase::Proxying => true,
            // The client's handshake bytes; its EOF or error ends the connection.
            Phase::Handshaking | Phase::Connecting => self.tls.is_some() && res > 0,
            _ => false,
        };
        if !live {
            if let Some(b) = buf {
                io.release(b);
            }
            return self.close(slot, cx, io);
        }
        if res > 0 {
            let Some(b) = buf else {
                // An engine bug, not a peer's: never report data without its buffer.
                debug_assert!(false, "receive completed without a buffer");
                return self.close(slot, cx, io);
            };
            let n = res as u32;
            self.last_ms = cx.now_ms;
            match side {
                Side::Down => self.listener_count(cx.worker, L::BytesFromDownstream, n.into()),
                Side::Up => self.upstream_count(cx.worker, U::BytesReceived, n.into()),
            }
            if self.tls.is_some() {
                return self.tls_recv(slot, side, b, n, cx, io);
            }
            self.dirs[side.idx()].push(b, n);
            self.send_head(slot, side, io);
            self.arm_recv(slot, side, io);
            return Step::Continue;
        }
        if let Some(b) = buf {
            io.release(b);
        }
        if res == 0 {
            self.dirs[side.idx()].eof = true;
            if let Some(t) = self.tls.as_deref_mut() {
                if t.is_kernel(side) && !t.kernel_peer_closed(side) {
                    // The kernel side ended without close_notify: possibly truncated.
                    self.reset[side.other().idx()] = true;
                    match side {
                        Side::Down => self.listener_count(cx.worker, L::TlsTruncated, 1),
                        Side::Up => self.upstream_count(cx.worker, U::TlsErrors, 1),
                    }
                    return self.drive(slot, cx, io);
                }
                if t.has(side) {
                    // Decrypted bytes before the EOF still go out; the reader then
                    // tells a clean close from a truncation.
                    t.eof(side);
                }
                return self.drive(slot, cx, io);
            }
            return self.maybe_shut(slot, side, cx, io);
        }
        if res == -libc::ENOBUFS {
            self.dirs[side.idx()].starved = true;
            cx.starved.push((slot, side));
            return Step::Continue;
        }
        if self.tls.as_deref().is_some_and(|t| t.is_kernel(side)) {
            return self.kernel_recv_error(slot, side, -res, cx, io);
        }
        // The source failed (typically ECONNRESET): pass the reset on.
        match side {
            Side::Down => self.listener_count(cx.worker, L::DownstreamResets, 1),
            Side::Up => self.upstream_count(cx.worker, U::UpstreamResets, 1),
        }
        self.reset[side.other().idx()] = true;
        self.close(slot, cx, io)
    }

    /// A send of data that came from `from` finished: `res` bytes or `-errno`.
    pub fn on_send(
        &mut self,
        slot: u32,
        from: Side,
        res: i32,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        self.dirs[from.idx()].send_inflight = false;
        let live = match self.phase {
            Phase::Proxying => true,
            Phase::Handshaking | Phase::Connecting => self.tls.is_some(),
            _ => false,
        };
        if !live {
            return self.close(slot, cx, io);
        }
        if res < 0 {
            // The destination failed: reset the source so it learns.
            match from.other() {
                Side::Down => self.listener_count(cx.worker, L::DownstreamResets, 1),
                Side::Up => self.upstream_count(cx.worker, U::UpstreamResets, 1),
            }
            self.reset[from.idx()] = true;
            return self.close(slot, cx, io);
        }
        let n = res as u32;
        self.last_ms = cx.now_ms;
        match from {
            Side::Down => self.upstream_count(cx.worker, U::BytesSent, n.into()),
            Side::Up => self.listener_count(cx.worker, L::BytesToDownstream, n.into()),
        }
        let d = &mut self.dirs[from.idx()];
        d.off += n;
        if d.off >= d.front().1 {
            let b = d.pop();
            io.release(b);
        }
        if self.tls.is_some() {
            return self.drive(slot, cx, io);
        }
        if self.dirs[from.idx()].count > 0 {
            self.send_head(slot, from, io);
        } else if self.dirs[from.idx()].eof {
            return self.maybe_shut(slot, from, cx, io);
        }
        self.arm_recv(slot, from, io);
        Step::Continue
    }

    /// Propagate `from`'s EOF once its queue is flushed; close when both ways ended.
    fn maybe_shut(&mut self, slot: u32, from: Side, cx: &mut Ctx, io: &mut impl Io) -> Step {
        let dst = from.other();
        if let Some(t) = self.tls.as_deref() {
            let d = &self.dirs[from.idx()];
            if !d.eof || d.shut || t.pending(from) || t.rx_busy(from) {
                return Step::Continue;
            }
            if !t.close_sent(dst) {
                // The end of `from`'s stream becomes close_notify towards `dst`.
                if let Some(t) = self.tls.as_deref_mut() {
                    t.close(dst);
                }
                self.pump_tls(slot, cx);
                self.fill(slot, from, cx, io);
                self.send_head(slot, from, io);
            }
            if self.tls.as_deref().is_some_and(|t| t.tx_pending(dst)) {
                return Step::Continue;
            }
        }
        let d = &self.dirs[from.idx()];
        if d.eof && !d.shut && d.count == 0 && !d.send_inflight {
            if let (Some(t), Some(fd)) = (self.tls.as_deref_mut(), &self.fds[dst.idx()]) {
                // A kernel side's stream ends with close_notify, sealed by the kernel.
                t.kernel_close(dst, fd.as_raw_fd());
            }
            if let Some(fd) = &self.fds[from.other().idx()] {
                // ENOTCONN if the peer already went away; the close below covers it.
                let _ = SockRef::from(fd).shutdown(std::net::Shutdown::Write);
            }
            self.dirs[from.idx()].shut = true;
        }
        if self.dirs[0].shut && self.dirs[1].shut {
            return self.close(slot, cx, io);
        }
        Step::Continue
    }

    /// Retry a receive that found the pool empty.
    pub fn rearm(&mut self, slot: u32, side: Side, cx: &mut Ctx, io: &mut impl Io) -> Step {
        self.dirs[side.idx()].starved = false;
        if self.tls.is_some() && matches!(self.phase, Phase::Handshaking | Phase::Proxying) {
            return self.drive(slot, cx, io);
        }
        if self.phase == Phase::Proxying {
            self.arm_recv(slot, side, io);
        }
        Step::Continue
    }

    /// Timeouts: connect (per attempt) and idle (no byte either way).
    pub fn on_tick(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        match self.phase {
            Phase::Connecting
                if self.connect_inflight && !self.timed_out && cx.now_ms >= self.deadline_ms =>
            {
                self.timed_out = true;
                let fd = self.raw(Side::Up);
                if io.cancel_connect(self.me(slot), fd) {
                    return self.on_connect(slot, -ETIMEDOUT, cx, io);
                }
                Step::Continue
            }
            Phase::Proxying | Phase::Handshaking
                if cx.now_ms.saturating_sub(self.last_ms) >= self.idle_ms =>
            {
                self.listener_count(cx.worker, L::IdleTimeouts, 1);
                self.close(slot, cx, io)
            }
            _ => Step::Continue,
        }
    }

    /// Close now (shutdown deadline); in-flight operations are cancelled.
    pub fn abort(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        if self.phase == Phase::Free {
            return Step::Free;
        }
        self.close(slot, cx, io)
    }

    // === TLS ===

    /// Bytes arrived on `side` of a connection with a TLS layer.
    fn tls_recv(
        &mut self,
        slot: u32,
        side: Side,
        b: BufId,
        n: u32,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        let Some(t) = self.tls.as_deref_mut() else {
            io.release(b);
            return self.close(slot, cx, io);
        };
        let dst = side.other();
        if t.failed.is_some() {
            io.release(b); // nothing more is read from a failed connection
            return Step::Continue;
        }
        if side == Side::Down && t.sniffing() {
            let verdict = t.sniff(io.bytes_mut(b)[0]);
            if let (Some(k), Some(s)) = (verdict.counter(), &self.lstats) {
                s.inc(cx.worker, k);
            }
            match verdict {
                // Rejected: rustls answers the bytes below with its alert.
                Sniff::Tls | Sniff::Rejected => {}
                Sniff::Plain => {
                    if !t.client_allowed() {
                        // Principals are only known from certificates.
                        io.release(b);
                        return self.deny(slot, cx, io);
                    }
                    self.dirs[side.idx()].push(b, n);
                    self.phase = Phase::Connecting;
                    return self.connect_next(slot, cx, io);
                }
            }
        }
        if t.has(side) {
            let tag = tlsconn::tag(slot, self.gen, side);
            let r = t.feed(side, &io.bytes_mut(b)[..n as usize], cx.crypto(), tag);
            io.release(b);
            match r {
                Ok(false) => {}
                Ok(true) => {
                    if let Some(step) = self.kernel_hand_over(slot, side, cx, io) {
                        return step;
                    }
                    if let Step::Free = self.handshake_done(slot, side, cx, io) {
                        return Step::Free;
                    }
                }
                Err(e) => return self.tls_failed(slot, side, e, cx, io),
            }
        } else if t.has(dst) {
            t.write_plain(dst, &io.bytes_mut(b)[..n as usize]);
            io.release(b);
        } else {
            self.dirs[side.idx()].push(b, n);
        }
        self.drive(slot, cx, io)
    }

    /// Nothing is queued or being sent towards `side`'s socket.
    fn tx_idle(&self, side: Side) -> bool {
        let d = &self.dirs[side.other().idx()];
        d.count == 0 && !d.send_inflight
    }

    /// `side`'s handshake just ended (no receive armed on it): with kTLS on, hand its keys
    /// to the kernel, or count why it stays on the engine. `Some` when the connection
    /// ended.
    fn kernel_hand_over(
        &mut self,
        slot: u32,
        side: Side,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Option<Step> {
        let (fd, idle) = (self.raw(side), self.tx_idle(side));
        let t = self.tls.as_deref_mut()?;
        if !t.kernel_ready(side) {
            return None;
        }
        let tag = tlsconn::tag(slot, self.gen, side);
        let (l, u) = match t.hand_over_kernel(side, fd, idle, cx.crypto(), tag) {
            Ok(h) => h.and_then(tlsconn::HandOver::counters)?,
            Err(e) => return Some(self.tls_failed(slot, side, e, cx, io)),
        };
        match side {
            Side::Down => self.listener_count(cx.worker, l, 1),
            Side::Up => self.upstream_count(cx.worker, u, 1),
        }
        None
    }

    /// A receive on kernel side `side` failed with `errno`: `EIO` is a control record
    /// (alert, ticket, KeyUpdate), `EBADMSG`/`EMSGSIZE`/`EINVAL` a bad record, the rest
    /// a socket error (reset passed on).
    fn kernel_recv_error(
        &mut self,
        slot: u32,
        side: Side,
        errno: i32,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        let (fd, idle) = (self.raw(side), self.tx_idle(side));
        let Some(t) = self.tls.as_deref_mut() else {
            return self.close(slot, cx, io);
        };
        match t.kernel_recv_failed(side, fd, errno, idle) {
            tlsconn::KernelRecv::Control(c) => {
                return match self.kernel_outcome(slot, side, c, cx, io) {
                    Some(step) => step,
                    None => self.drive(slot, cx, io),
                };
            }
            tlsconn::KernelRecv::Record(e) => return self.tls_failed(slot, side, e, cx, io),
            tlsconn::KernelRecv::Socket => {}
        }
        match side {
            Side::Down => self.listener_count(cx.worker, L::DownstreamResets, 1),
            Side::Up => self.upstream_count(cx.worker, U::UpstreamResets, 1),
        }
        self.reset[side.other().idx()] = true;
        self.close(slot, cx, io)
    }

    /// Act on what a kernel side's control record meant. `None`: carry on.
    fn kernel_outcome(
        &mut self,
        slot: u32,
        side: Side,
        c: Control,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Option<Step> {
        match c {
            Control::Again | Control::Empty => None,
            Control::Closed => {
                // close_notify: the stream ends here, cleanly; what follows is not read.
                self.dirs[side.idx()].eof = true;
                Some(self.drive(slot, cx, io))
            }
            Control::Failed(e) => Some(self.tls_failed(slot, side, FeedError::Record(e), cx, io)),
            Control::RekeyUnsupported => {
                match side {
                    Side::Down => self.listener_count(cx.worker, L::TlsKtlsRekeyUnsupported, 1),
                    Side::Up => self.upstream_count(cx.worker, U::TlsKtlsRekeyUnsupported, 1),
                }
                tracing::info!(
                    side = ?side,
                    "peer sent a TLS 1.3 KeyUpdate; this kernel cannot take new kTLS keys (needs Linux 6.14): closing"
                );
                let fd = self.raw(side);
                if let Some(t) = self.tls.as_deref_mut() {
                    t.kernel_close(side, fd);
                }
                self.reset[side.other().idx()] = true;
                Some(self.close(slot, cx, io))
            }
        }
    }

    fn handshake_done(&mut self, slot: u32, side: Side, cx: &mut Ctx, io: &mut impl Io) -> Step {
        if side == Side::Up {
            self.upstream_count(cx.worker, U::TlsHandshakes, 1);
            return Step::Continue;
        }
        self.listener_count(cx.worker, L::TlsHandshakes, 1);
        if !self.tls.as_deref().is_some_and(Tls::client_allowed) {
            return self.deny(slot, cx, io);
        }
        if self.phase == Phase::Handshaking {
            self.phase = Phase::Connecting;
            return self.connect_next(slot, cx, io);
        }
        Step::Continue
    }

    /// A client outside `allowed_principals`: reset, as an authorization deny on TCP.
    fn deny(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        self.listener_count(cx.worker, L::TlsPrincipalDenied, 1);
        self.reset[Side::Down.idx()] = true;
        self.reset[Side::Up.idx()] = true;
        self.close(slot, cx, io)
    }

    /// Count TLS records the offload engine completed, per side.
    fn count_records(&self, worker: usize, [down, up]: [u32; 2]) {
        if down > 0 {
            self.listener_count(worker, L::TlsRecordsOffloaded, down.into());
        }
        if up > 0 {
            self.upstream_count(worker, U::TlsRecordsOffloaded, up.into());
        }
    }

    /// `side`'s peer broke TLS: count it, flush the alert rustls queued, then close
    /// (the other side with a reset: its stream did not end cleanly).
    fn tls_failed(
        &mut self,
        slot: u32,
        side: Side,
        e: FeedError,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        let handshaking = self.tls.as_deref().is_some_and(|t| t.handshaking(side));
        match side {
            Side::Down => self.listener_count(cx.worker, e.down_counter(handshaking), 1),
            Side::Up => self.upstream_count(cx.worker, U::TlsErrors, 1),
        }
        tracing::debug!(side = ?side, error = ?e, "TLS failure");
        if let Some(t) = self.tls.as_deref_mut() {
            t.failed = Some(side);
        }
        self.reset[side.other().idx()] = true;
        if matches!(e, FeedError::Overrun) {
            return self.close(slot, cx, io);
        }
        self.drive(slot, cx, io)
    }

    /// Move bytes through the TLS layer as far as queues allow, send, propagate ends,
    /// and re-arm receives.
    fn drive(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        for side in [Side::Down, Side::Up] {
            if self.tls.as_deref().is_some_and(|t| t.kernel_owes(side)) && self.tx_idle(side) {
                let fd = self.raw(side);
                let c = self
                    .tls
                    .as_deref_mut()
                    .map_or(Control::Again, |t| t.kernel_settle(side, fd));
                if let Some(step) = self.kernel_outcome(slot, side, c, cx, io) {
                    return step;
                }
            }
        }
        self.pump_tls(slot, cx);
        if let Some(t) = self.tls.as_deref_mut() {
            let tlsconn::Activity {
                records: [down, up],
                error: err,
            } = t.activity();
            self.count_records(cx.worker, [down, up]);
            if let Some((side, e)) = err {
                return self.tls_failed(slot, side, e, cx, io);
            }
        }
        for from in [Side::Down, Side::Up] {
            let truncated = self.fill(slot, from, cx, io);
            if truncated {
                match from {
                    Side::Down => self.listener_count(cx.worker, L::TlsTruncated, 1),
                    Side::Up => self.upstream_count(cx.worker, U::TlsErrors, 1),
                }
            }
            self.send_head(slot, from, io);
        }
        // Plaintext the fill handed over and room it made: submit now, in this batch.
        self.pump_tls(slot, cx);
        if let Some(f) = self.tls.as_deref().and_then(|t| t.failed) {
            let d = &self.dirs[f.other().idx()];
            let sealing = self.tls.as_deref().is_some_and(|t| t.tx_pending(f));
            if (d.count == 0 && !d.send_inflight && !sealing) || self.fds[f.idx()].is_none() {
                return self.close(slot, cx, io);
            }
            return Step::Continue;
        }
        for from in [Side::Down, Side::Up] {
            if let Step::Free = self.maybe_shut(slot, from, cx, io) {
                return Step::Free;
            }
        }
        self.arm_recv(slot, Side::Down, io);
        self.arm_recv(slot, Side::Up, io);
        Step::Continue
    }

    /// Fill `dirs[from]` (bytes for `from.other()`'s socket) from the TLS layer: first
    /// ciphertext the destination's session has waiting, then plaintext decrypted from
    /// `from`. Returns whether `from` ended without `close_notify`.
    fn fill(&mut self, slot: u32, from: Side, cx: &mut Ctx, io: &mut impl Io) -> bool {
        let dst = from.other();
        if dst == Side::Up && self.phase != Phase::Proxying {
            return false; // no upstream socket to write to yet
        }
        let Some(t) = self.tls.as_deref_mut() else {
            return false;
        };
        let d = &mut self.dirs[from.idx()];
        let mut truncated = false;
        while (d.count as usize) < QUEUE {
            if t.wants_write(dst) {
                let Some(b) = io.take() else {
                    starve(d, cx, slot, from);
                    break;
                };
                let n = t.write_tls(dst, io.bytes_mut(b));
                if n == 0 {
                    io.release(b);
                    break;
                }
                d.push(b, n as u32);
                continue;
            }
            if t.failed.is_some()
                || !t.pending(from)
                || t.handshaking(dst)
                || !t.can_take_plain(dst, BUF_SIZE)
            {
                break;
            }
            let Some(b) = io.take() else {
                starve(d, cx, slot, from);
                break;
            };
            match t.read_plain(from, io.bytes_mut(b)) {
                Plain::Data(n) if t.has(dst) => {
                    t.write_plain(dst, &io.bytes_mut(b)[..n]);
                    io.release(b);
                }
                Plain::Data(n) => d.push(b, n as u32),
                Plain::Empty => {
                    io.release(b);
                    break;
                }
                Plain::Closed => {
                    io.release(b);
                    d.eof = true;
                }
                Plain::Truncated => {
                    io.release(b);
                    d.eof = true;
                    truncated = true;
                    // A stream cut short must not look complete downstream of us.
                    self.reset[dst.idx()] = true;
                }
            }
        }
        truncated
    }

    /// Let both TLS sides submit what they can to the worker's offload engine.
    fn pump_tls(&mut self, slot: u32, cx: &mut Ctx) {
        if let Some(t) = self.tls.as_deref_mut() {
            t.pump_all(slot, self.gen, cx.crypto());
        }
    }

    /// A record job of `side` completed (the worker reaps and calls this; it may not
    /// submit from here: the engine is busy reaping). [`Conn::crypto_done`] follows.
    pub fn on_crypto(&mut self, side: Side, c: &tickmesh_offload::Completion<'_>) {
        if let Some(t) = self.tls.as_deref_mut() {
            t.complete(side, c);
        }
    }

    /// After reaping: move what the completions produced, submit more.
    pub fn crypto_done(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        if self.tls.is_none() || matches!(self.phase, Phase::Free | Phase::Closing) {
            return Step::Continue;
        }
        self.drive(slot, cx, io)
    }

    fn inflight(&self) -> bool {
        self.connect_inflight || self.dirs.iter().any(Dir::busy)
    }

    fn close(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        if self.phase != Phase::Closing {
            self.phase = Phase::Closing;
            if self.inflight()
                && io.cancel_all(self.me(slot), [self.raw(Side::Down), self.raw(Side::Up)])
            {
                self.connect_inflight = false;
                for d in &mut self.dirs {
                    d.recv_armed = false;
                    d.send_inflight = false;
                }
            }
        }
        if self.inflight() {
            return Step::Continue;
        }
        for d in &mut self.dirs {
            while d.count > 0 {
                io.release(d.pop());
            }
        }
        io.forget(self.me(slot), [self.raw(Side::Down), self.raw(Side::Up)]);
        for s in [Side::Down, Side::Up] {
            if let Some(fd) = self.fds[s.idx()].take() {
                if self.reset[s.idx()] {
                    // Best effort: without it the peer gets a FIN instead of an RST.
                    let _ = SockRef::from(&fd).set_linger(Some(Duration::ZERO));
                }
                drop(fd);
            }
        }
        self.listener_count(cx.worker, L::CxClosed, 1);
        if self.estats.is_some() {
            self.upstream_count(cx.worker, U::CxClosed, 1);
        }
        if let Some(mut t) = self.tls.take() {
            // Records completed since the last turn (the closing turn's own) still
            // count, before the connection is seen gone.
            let [down, up] = t.take_counts();
            self.count_records(cx.worker, [down, up]);
            t.release(cx.crypto.as_mut());
        }
        *cx.open -= 1;
        self.tls = None;
        self.table = None;
        self.lstats = None;
        self.cstats = None;
        self.estats = None;
        self.ehealth = None;
        self.phase = Phase::Free;
        self.gen = self.gen.wrapping_add(1);
        Step::Free
    }
}

/// No spare pool buffer for `from`'s queue: wait on the worker's starved list (retried
/// as buffers come back), reading from `from` paused meanwhile.
fn starve(d: &mut Dir, cx: &mut Ctx, slot: u32, from: Side) {
    if !d.starved {
        d.starved = true;
        cx.starved.push((slot, from));
    }
}

/// Whether `side`'s socket may be read now, with a TLS layer: during its own handshake,
/// or once its bytes have somewhere to go (upstream connected, the other side's
/// handshake done, nothing decrypted or encrypted still waiting).
fn tls_may_read(t: &Tls, side: Side, phase: Phase) -> bool {
    if t.failed.is_some() || t.pending(side) || t.peer_closed(side) {
        return false;
    }
    let up_connected = phase == Phase::Proxying;
    if side == Side::Up && !up_connected {
        return false;
    }
    if t.handshaking(side) {
        return matches!(
            phase,
            Phase::Handshaking | Phase::Connecting | Phase::Proxying
        );
    }
    up_connected && !t.handshaking(side.other()) && t.may_read(side, BUF_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-connection state must not creep: it sits in every worker's slab.
    #[test]
    fn connection_state_stays_small() {
        // 208 bytes on x86_64 today (192 + the pointer to the TLS layer, which is boxed
        // so plaintext connections pay 8 bytes for it, + the endpoint's health while
        // connecting, for outlier detection); raise deliberately, with a reason.
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 208, "Conn grew to {size} bytes");
    }
}
