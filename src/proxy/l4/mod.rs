//! L4 proxying: TCP connections relayed byte for byte ([`tcp`]) and UDP datagrams
//! forwarded through per-client sessions ([`udp`]).
//!
//! Owns the proxy logic shared by every engine. The engine owns the sockets' I/O
//! mechanics and reports results in io_uring's convention (`res >= 0` success,
//! `-errno` failure) whether they came from a completion queue or from a readiness loop
//! running the syscall itself. Must never block, never allocate on the per-message path,
//! and never write a counter slot other than its worker's.

pub mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::cluster::LbState;

/// Index of a receive buffer in the worker's buffer pool.
pub type BufId = u16;
/// Bytes of a pool buffer: (buffer, offset, length).
pub type Slice = (BufId, u32, u32);

/// One end of a proxied TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Side {
    /// The client that connected to our listener.
    Down = 0,
    /// The endpoint we connected to.
    Up = 1,
}

impl Side {
    #[inline]
    pub fn other(self) -> Side {
        match self {
            Side::Down => Side::Up,
            Side::Up => Side::Down,
        }
    }

    #[inline]
    pub fn idx(self) -> usize {
        self as usize
    }

    pub fn from_idx(i: usize) -> Side {
        if i == 0 {
            Side::Down
        } else {
            Side::Up
        }
    }
}

/// A connection slot and the generation it had when an operation was issued; a
/// completion whose generation differs belongs to a previous tenant of the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    pub slot: u32,
    pub gen: u16,
}

/// What a proxy asks of its engine. Operations complete later, through the worker
/// calling back into the proxy (`on_connect`, `on_recv`, `on_send`), never from inside
/// these calls. At most one operation of a kind is outstanding per connection side.
pub trait Io {
    /// A new connection in slot `c` owns client socket `fd` (already non-blocking);
    /// `fd = -1`: the slot has no client socket (a mirrored request), only an upstream.
    fn adopt(&mut self, c: ConnRef, fd: RawFd);
    /// Start a non-blocking connect of `fd` to `addr`.
    fn connect(&mut self, c: ConnRef, fd: RawFd, addr: SocketAddr);
    /// Connection `c` now uses `fd`, already connected, for `side` (an idle pooled
    /// upstream connection another slot may have used before). Nothing the proxy asked
    /// is in flight on `fd`. A readiness engine re-registers it for `c` unless it
    /// already is; a completion engine moves the receive it kept armed while the
    /// socket was parked (see [`park`](Io::park)) to `c`.
    fn attach(&mut self, c: ConnRef, side: Side, fd: RawFd);
    /// Abandon the connect in flight. `true`: it is gone now (no completion will come);
    /// `false`: its completion (likely `-ECANCELED`) will still arrive.
    fn cancel_connect(&mut self, c: ConnRef, fd: RawFd) -> bool;
    /// Receive once from `side`'s socket into a pool buffer the engine chooses.
    /// Completes with `-ENOBUFS` when the pool is empty.
    fn recv(&mut self, c: ConnRef, side: Side, fd: RawFd);
    /// As [`recv`](Io::recv), on a socket whose peer is still answering what was just
    /// sent to it (an upstream's response, a keep-alive client's next request): its
    /// bytes are not there yet, so the engine may wait for readiness before trying.
    fn recv_reply(&mut self, c: ConnRef, side: Side, fd: RawFd) {
        self.recv(c, side, fd)
    }
    /// As [`recv`](Io::recv), on a socket that stays this connection's `side` until
    /// the connection calls [`forget`](Io::forget), [`park`](Io::park) or
    /// [`drop_socket`](Io::drop_socket): the engine may keep one receive armed in the
    /// kernel across messages (io_uring multishot) and hold what arrives before the
    /// next ask. To the proxy it is still one completion per call.
    fn recv_multi(&mut self, c: ConnRef, side: Side, fd: RawFd) {
        self.recv(c, side, fd)
    }
    /// Connection `c` is about to close its sockets `fds` (`-1` = none) with nothing
    /// of its own in flight: the engine drops what it still holds or has armed for
    /// them (see [`recv_multi`](Io::recv_multi)). No completion for `c` follows.
    fn forget(&mut self, _c: ConnRef, _fds: [RawFd; 2]) {}
    /// Connection `c` hands its `side` socket `fd` (nothing asked of it in flight) to
    /// the worker's pool of idle connections. The engine may keep its receive armed
    /// while it idles: whatever arrives from then on (bytes, end of stream, error)
    /// marks it dead, to be seen by [`parked_alive`](Io::parked_alive); the next
    /// connection to use it calls [`attach`](Io::attach). `false`: it is dead already
    /// (something arrived that `c` never asked for): the caller lets it go with
    /// [`drop_socket`](Io::drop_socket) instead.
    fn park(&mut self, _c: ConnRef, _side: Side, _fd: RawFd) -> bool {
        true
    }
    /// As [`park`](Io::park), for a socket whose session may still hear from its peer
    /// while it idles (a TLS session on the offload engine: a late NewSessionTicket, a
    /// KeyUpdate). Bytes that arrive then do not kill it: the engine hands them to the
    /// worker (`Core::on_parked_bytes`), whose session judges them; an end of stream or
    /// an error still does. An engine that cannot hand bytes over parks it as `park` does.
    fn park_session(&mut self, c: ConnRef, side: Side, fd: RawFd) -> bool {
        self.park(c, side, fd)
    }
    /// Of a parked socket: `Some(alive)` when the engine watches it (no syscall
    /// needed), `None` when it does not (the caller checks the socket itself).
    fn parked_alive(&self, _fd: RawFd) -> Option<bool> {
        None
    }
    /// Socket `fd` (a connection's, with nothing asked of it in flight, or a parked
    /// one) is about to close outside [`forget`](Io::forget): the engine drops what it
    /// holds or has armed on it. No completion for it follows.
    fn drop_socket(&mut self, _fd: RawFd) {}
    /// Send `len` bytes of pool buffer `buf` from `off` on `fd` (the socket opposite
    /// `from`); completes with the count sent, which may be short.
    fn send(&mut self, c: ConnRef, from: Side, fd: RawFd, buf: BufId, off: u32, len: u32);
    /// As [`send`](Io::send), gathering two slices (`(buffer, offset, length)`) into
    /// one send (a rewritten head and the body behind it: one segment, one
    /// completion); completes with the count sent from both, in order, which may be
    /// short. An engine without a gathered send sends `first` only.
    fn sendv(&mut self, c: ConnRef, from: Side, fd: RawFd, first: Slice, second: Slice) {
        let _ = second;
        self.send(c, from, fd, first.0, first.1, first.2)
    }
    /// Give a buffer back to the pool (receive or write buffer alike).
    fn release(&mut self, buf: BufId);
    /// A write buffer for the proxy to fill (rewritten heads, local responses); `None`
    /// when the worker's write buffers are all in use. Sent with [`send`](Io::send)
    /// and given back with [`release`](Io::release) like a received buffer.
    fn take(&mut self) -> Option<BufId>;
    /// The bytes of a buffer the proxy holds (received, or taken): `BUF_SIZE` long.
    fn bytes(&self, buf: BufId) -> &[u8];
    /// As [`bytes`](Io::bytes), writable. Never while a send of `buf` is in flight.
    fn bytes_mut(&mut self, buf: BufId) -> &mut [u8];
    /// Whether a starved receive is worth retrying now.
    fn buffers_available(&self) -> bool;
    /// Cancel every operation on these sockets (`-1` = none). `true`: all gone now;
    /// `false`: each still completes (likely `-ECANCELED`).
    fn cancel_all(&mut self, c: ConnRef, fds: [RawFd; 2]) -> bool;
    /// Report readability of a UDP socket until `unwatch`.
    fn watch(&mut self, w: Watch, fd: RawFd);
    fn unwatch(&mut self, w: Watch, fd: RawFd);
}

/// A UDP socket whose readability a worker wants to hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// A listener socket, by the worker's listener slot.
    Listener(u32),
    /// A session's upstream socket: session slot and generation.
    Session(u32, u16),
}

/// The worker state a proxy needs besides its connection.
pub struct Ctx<'a> {
    pub worker: usize,
    /// Milliseconds since the worker started, read once per batch.
    pub now_ms: u64,
    pub lb: &'a mut LbState,
    /// Round-robin cursor per cluster index of the worker's current table.
    pub cursors: &'a mut [u32],
    /// Receives that found the pool empty, retried when buffers come back.
    pub starved: &'a mut Vec<(u32, Side)>,
    /// Open connections and sessions of this worker (for drain).
    pub open: &'a mut u64,
    /// The worker's current routing table (HTTP connections pick it up per request).
    pub table: &'a std::sync::Arc<crate::route::RouteTable>,
    /// Worker scratch for HTTP heads being parsed and rewritten (capacity kept).
    pub scratch: &'a mut Vec<u8>,
    /// The worker's HTTP state beyond one connection (mirrors to start, rate limits).
    pub http: &'a mut crate::proxy::http::Worker,
    /// The worker's TLS record offload engine, built on its first TLS connection.
    pub crypto: &'a mut Option<crate::tls::conn::Crypto>,
}

impl Ctx<'_> {
    /// The worker's offload engine (built now if this is its first TLS connection).
    pub fn crypto(&mut self) -> &mut crate::tls::conn::Crypto {
        let (choice, driver) = (self.table.offload, self.table.offload_driver);
        self.crypto
            .get_or_insert_with(|| crate::tls::conn::Crypto::with_driver(choice, driver))
    }
}

/// What the worker must do with a connection slot after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Step {
    Continue,
    /// Everything is closed and no operation is in flight: the slot may be reused.
    Free,
}

/// A cursor for cluster `i`, or a scratch one when `i` is beyond the worker's table
/// (a connection still connecting against an older table).
#[inline]
/// The socket for the next upstream connect attempt of a connection: attempt
/// `*attempt` (0 first) goes to the balancer's choice, later ones to the endpoints after
/// it in order, so a retry never repeats the endpoint that failed. The balancer is asked
/// once and its choice pinned in `*first_endpoint` (round robin moves on between calls).
/// A socket that cannot be created (out of fds, …) is counted as an error and the next
/// endpoint tried. Counts the connection on the endpoint and cluster. `None` when the
/// attempts are used up or the cluster has no endpoints.
pub(crate) fn open_upstream<'t>(
    cl: &'t crate::route::ClusterEntry,
    cluster: u32,
    attempt: &mut u8,
    first_endpoint: &mut u32,
    peer: Option<SocketAddr>,
    cx: &mut Ctx,
) -> Option<(&'t crate::route::EndpointEntry, std::os::fd::OwnedFd)> {
    use crate::telemetry::UpstreamCounter as U;
    let n = cl.endpoints.len() as u32;
    let max = cl.max_connect_attempts.max(1);
    while n > 0 && u32::from(*attempt) < max {
        let ep = if *attempt == 0 {
            let mut scratch = 0;
            let cur = cursor(cx.cursors, &mut scratch, cluster as usize);
            // `None` only when nothing is usable and panic mode is off
            // (`healthy_panic_threshold: 0`): no upstream.
            *first_endpoint = cl.pick(cx.lb, cur, peer, 0, cx.worker)? as u32;
            *first_endpoint
        } else {
            cl.endpoint_for_attempt(*first_endpoint as usize, u32::from(*attempt)) as u32
        };
        let e = &cl.endpoints[ep as usize];
        match crate::net::upstream_tcp_socket(&e.address) {
            Ok(fd) => {
                e.stats.inc(cx.worker, U::CxTotal);
                cl.stats.inc(cx.worker, U::CxTotal);
                return Some((e, fd));
            }
            Err(_) => {
                e.stats.inc(cx.worker, U::Errors);
                cl.stats.inc(cx.worker, U::Errors);
                *attempt = attempt.saturating_add(1);
            }
        }
    }
    None
}

/// A duration in the worker clock's unit (milliseconds), saturating.
#[inline]
pub(crate) fn ms(d: std::time::Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

pub(crate) fn cursor<'a>(cursors: &'a mut [u32], scratch: &'a mut u32, i: usize) -> &'a mut u32 {
    match cursors.get_mut(i) {
        Some(c) => c,
        None => scratch,
    }
}
