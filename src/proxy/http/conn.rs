//! One HTTP/1.1 client connection: an engine-agnostic state machine driven by
//! completions, like the L4 relay ([`crate::proxy::l4::tcp`]).
//!
//! Owns the client socket, at most one upstream socket during an exchange (afterwards
//! parked in the worker's [`pool`](super::pool) when the upstream allows keep-alive, for
//! any client connection of the worker to reuse), and the pool buffers in flight. Requests are served one at a time in arrival order, so
//! pipelined requests are answered in order: the next head is parsed only once the
//! previous response has been queued whole.
//!
//! Invariants:
//! - **Bounded memory.** Each direction queues at most [`OUTQ`] buffers; a receive is
//!   armed only with room for it, so bodies stream and a slow reader stops the other
//!   side. A head split across receives is gathered in a per-connection buffer capped at
//!   [`MAX_HEAD`] (the only allocation, on that rare path, kept for the connection).
//! - **Zero copy for bodies.** Body bytes are sent from the buffer they were received
//!   in; only a buffer shared by two messages (pipelining) has its first part copied,
//!   and a small body (≤ [`COALESCE_MAX`]) that follows a rewritten head is copied
//!   behind it so both leave in one send; a larger one leaves in the same send
//!   gathered from its own buffer ([`Io::sendv`]: the front two queue entries).
//! - **Framing is ours.** Bodies are delimited by the validated framing of
//!   [`codec`](super::codec): bytes past the end of a response are dropped and the
//!   upstream connection is not reused.
//! - Between exchanges nothing is in flight on the upstream socket, so it can be dropped
//!   or parked at once; a slot is freed only when nothing is in flight at all.
//!
//! Never blocks. Allocates per connection only (counter `Arc`s, the head buffer when a
//! head is split, the replay copy, a rewrite buffer, all with capacity kept). Per
//! request it copies the head (and a body up to the replay cap) when it may be sent
//! again: retries, mirrors, idempotent requests on a pooled connection; the routing
//! table is the worker's, borrowed (no refcount traffic), and the pool hands a client
//! connection back the upstream connection it parked when the balancer picks the same
//! endpoint. Per-request syscalls: the socket I/O, plus one peek when a
//! pooled connection idled over a second.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;

use super::codec::{self, Body, ChunkDecoder, HttpError, MAX_HEAD, MAX_HEADERS};
use super::pool::{usable, Idle};
use super::shadow::{shadow_head, Job, Upstream};
use crate::cluster::health::Outcome;
use crate::proxy::l4::tcp::BUF_SIZE;
use crate::proxy::l4::{cursor, ms, open_upstream, BufId, ConnRef, Ctx, Io, Side, Step};
use crate::route::http::{Action, Append, HeaderOps, HttpRoute, RequestView, Retry, VHost};
use crate::route::RouteTable;
use crate::telemetry::{ListenerCounter as L, ListenerStats, UpstreamCounter as U, UpstreamStats};

/// The pool owner of shadows' connections: no client connection gets them back first.
const NO_OWNER: (u32, u16) = (u32::MAX, 0);

mod tls;

/// Buffers queued per direction.
pub const OUTQ: usize = 8;
/// Free queue entries needed before a receive is armed: the received buffer plus a
/// copied slice.
const RECV_ROOM: usize = 2;
/// Body bytes up to this size that follow a rewritten head are copied behind it in its
/// write buffer, so head and body leave in one send (one TCP segment, one completion):
/// sent apart, the peer wakes for a head it cannot use yet, and the body waits a lap
/// for the head's send to complete. Larger bodies keep zero copy and are gathered into
/// the head's send instead ([`Io::sendv`]).
const COALESCE_MAX: u32 = 4096;
/// Envoy's default route timeout.
const DEFAULT_ROUTE_TIMEOUT_MS: u64 = 15_000;
const ETIMEDOUT: i32 = libc::ETIMEDOUT;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Free,
    /// Waiting for (the rest of) a request head.
    Head,
    /// Forwarding a request and its response.
    Exchange,
    /// Flushing a response (local, or the end of an exchange); then the next request,
    /// or close when the connection does not persist.
    Flush,
    /// `Connection: upgrade` accepted with a 101: bytes relayed both ways.
    Tunnel,
    /// Waiting to send a request again (retry back-off, and cancellations on the
    /// abandoned upstream socket).
    Backoff,
    /// Waiting for operations in flight before freeing the slot.
    Closing,
}

/// Interim (1xx) responses passed on per request before the upstream is a bad gateway
/// (a `100 Continue`, a few `103 Early Hints` or `102 Processing` are what servers send).
const MAX_INTERIM: u8 = 32;

/// What remains of a body.
#[derive(Debug, Clone, Copy)]
pub(super) enum Left {
    Done,
    Len(u64),
    Chunked(ChunkDecoder),
    UntilClose,
}

impl Left {
    pub(super) fn of(b: Body) -> Left {
        match b {
            Body::None => Left::Done,
            Body::Length(n) => Left::Len(n),
            Body::Chunked => Left::Chunked(ChunkDecoder::default()),
            Body::UntilClose => Left::UntilClose,
        }
    }

    pub(super) fn done(&self) -> bool {
        matches!(self, Left::Done)
    }

    /// How many bytes of `data` belong to this body; becomes `Done` at its end.
    pub(super) fn feed(&mut self, data: &[u8], limit: u64) -> Result<usize, HttpError> {
        match self {
            Left::Done => Ok(0),
            Left::Len(n) => {
                let k = (*n).min(data.len() as u64);
                *n -= k;
                if *n == 0 {
                    *self = Left::Done;
                }
                Ok(k as usize)
            }
            Left::Chunked(d) => {
                let k = d.feed(data, limit)?;
                if d.done() {
                    *self = Left::Done;
                }
                Ok(k)
            }
            Left::UntilClose => Ok(data.len()),
        }
    }
}

/// Buffer slices waiting to be sent to one side, in order; one send in flight.
#[derive(Debug, Default)]
struct OutQ {
    bufs: [BufId; OUTQ],
    offs: [u32; OUTQ],
    lens: [u32; OUTQ],
    head: u8,
    count: u8,
    inflight: bool,
    /// Free bytes after the last entry when it is a write buffer filled from its start
    /// and not yet being sent (0 otherwise): room for [`OutQ::append`].
    tail_room: u32,
}

impl OutQ {
    #[inline]
    fn room(&self) -> usize {
        OUTQ - self.count as usize
    }

    #[inline]
    fn push(&mut self, b: BufId, off: u32, len: u32) {
        debug_assert!((self.count as usize) < OUTQ);
        let i = (self.head as usize + self.count as usize) % OUTQ;
        self.bufs[i] = b;
        self.offs[i] = off;
        self.lens[i] = len;
        self.count += 1;
        self.tail_room = 0;
    }

    /// Copy `len` bytes of buffer `src` from `off` behind the last entry, when that is
    /// a write buffer not yet being sent with room for them (see [`COALESCE_MAX`]).
    fn append(&mut self, io: &mut impl Io, src: BufId, off: u32, len: u32) -> bool {
        if self.count == 0 || len > self.tail_room || len > COALESCE_MAX {
            return false;
        }
        let i = (self.head as usize + self.count as usize - 1) % OUTQ;
        let end = (self.offs[i] + self.lens[i]) as usize;
        copy_between(io, src, off as usize, self.bufs[i], end, len as usize);
        self.lens[i] += len;
        self.tail_room -= len;
        true
    }

    #[inline]
    fn front(&self) -> (BufId, u32, u32) {
        let h = self.head as usize;
        (self.bufs[h], self.offs[h], self.lens[h])
    }

    /// `n` bytes of the front went out; returns the buffer when it is done.
    #[inline]
    fn advance(&mut self, n: u32) -> Option<BufId> {
        let h = self.head as usize;
        let n = n.min(self.lens[h]);
        self.offs[h] += n;
        self.lens[h] -= n;
        if self.lens[h] > 0 {
            return None;
        }
        self.head = ((h + 1) % OUTQ) as u8;
        self.count -= 1;
        Some(self.bufs[h])
    }

    /// The second entry, when there is one (gathered behind the front in one send).
    #[inline]
    fn second(&self) -> Option<(BufId, u32, u32)> {
        if self.count < 2 {
            return None;
        }
        let i = (self.head as usize + 1) % OUTQ;
        Some((self.bufs[i], self.offs[i], self.lens[i]))
    }

    /// A send of the front (and maybe the second) entry put out `n` bytes: drop what
    /// is done, giving its buffers back.
    fn sent(&mut self, mut n: u32, io: &mut impl Io) {
        while self.count > 0 {
            let h = self.head as usize;
            let k = n.min(self.lens[h]);
            n -= k;
            if let Some(b) = self.advance(k) {
                io.release(b);
            } else {
                break;
            }
            if n == 0 {
                break;
            }
        }
    }

    #[inline]
    fn idle(&self) -> bool {
        self.count == 0 && !self.inflight
    }

    fn release_all(&mut self, io: &mut impl Io) {
        self.tail_room = 0;
        while self.count > 0 {
            let h = self.head as usize;
            self.lens[h] = 0;
            if let Some(b) = self.advance(0) {
                io.release(b);
            }
        }
    }
}

/// Fills write buffers and queues them; a head spans several buffers if it must.
struct Writer {
    cur: Option<BufId>,
    used: usize,
}

#[derive(Debug, Clone, Copy)]
struct NoRoom;

impl Writer {
    fn new() -> Writer {
        Writer { cur: None, used: 0 }
    }

    fn put(&mut self, q: &mut OutQ, io: &mut impl Io, mut bytes: &[u8]) -> Result<(), NoRoom> {
        while !bytes.is_empty() {
            let b = match self.cur {
                Some(b) => b,
                None => {
                    // Keep one queue entry for the body slice that follows the head.
                    if q.room() <= 1 {
                        return Err(NoRoom);
                    }
                    let b = io.take().ok_or(NoRoom)?;
                    self.cur = Some(b);
                    self.used = 0;
                    b
                }
            };
            let n = (BUF_SIZE - self.used).min(bytes.len());
            io.bytes_mut(b)[self.used..self.used + n].copy_from_slice(&bytes[..n]);
            self.used += n;
            bytes = &bytes[n..];
            if self.used == BUF_SIZE {
                q.push(b, 0, BUF_SIZE as u32);
                self.cur = None;
            }
        }
        Ok(())
    }

    fn num(&mut self, q: &mut OutQ, io: &mut impl Io, n: u64) -> Result<(), NoRoom> {
        let mut d = [0u8; 20];
        let mut i = d.len();
        let mut n = n;
        loop {
            i -= 1;
            d[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.put(q, io, &d[i..])
    }

    fn header(
        &mut self,
        q: &mut OutQ,
        io: &mut impl Io,
        name: &[u8],
        value: &[u8],
    ) -> Result<(), NoRoom> {
        self.put(q, io, name)?;
        self.put(q, io, b": ")?;
        self.put(q, io, value)?;
        self.put(q, io, b"\r\n")
    }

    /// Queue the partly filled buffer.
    fn finish(self, q: &mut OutQ, io: &mut impl Io) {
        if let Some(b) = self.cur {
            if self.used > 0 {
                q.push(b, 0, self.used as u32);
                q.tail_room = (BUF_SIZE - self.used) as u32;
            } else {
                io.release(b);
            }
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that a proxy never forwards. `Transfer-Encoding`
/// is not among them here: bodies are forwarded with their framing unchanged.
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a `Connection` header of `headers` names `name` (those are hop-by-hop too).
fn connection_listed(headers: &[httparse::Header], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| codec::has_token(h.value, name))
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Whether the first bytes of a connection look like an HTTP/1.x request (sniffing):
/// empty lines, then a method shaped like the IANA registry's (an uppercase letter, then
/// up to 19 more uppercase letters or `-`: `VERSION-CONTROL`, `UPDATEREDIRECTREF`) and a
/// space. A TLS ClientHello (0x16 …), the HTTP/2 preface (`PRI * HTTP/2.0`) and other
/// protocols (`SSH-2.0-…`) do not. Bytes that end inside a plausible method, or before
/// one, count as HTTP.
pub fn looks_like_http1(data: &[u8]) -> bool {
    const H2: &[u8] = b"PRI * HTTP/2.0\r\n";
    let n = data.len().min(H2.len());
    if n >= 3 && data[..n] == H2[..n] {
        return false;
    }
    let rest = &data[codec::skip_empty_lines(data)..];
    if rest.is_empty() || rest == b"\r" {
        return true;
    }
    if !rest[0].is_ascii_uppercase() {
        return false;
    }
    let len = rest
        .iter()
        .take_while(|&&b| b.is_ascii_uppercase() || b == b'-')
        .count();
    if len > 20 {
        return false;
    }
    match rest.get(len) {
        None => true,
        Some(&b) => b == b' ',
    }
}

/// What sniffing decided for a connection's first bytes: relay them as opaque TCP.
pub struct Fallback {
    pub fd: OwnedFd,
    pub data: Option<(BufId, u32, u32)>,
    pub listener: usize,
    pub table: Arc<RouteTable>,
    /// A TLS listener: the client's session and its socket operations in flight.
    pub tls: Option<crate::proxy::l4::tcp::TlsCarry>,
}

/// One HTTP client connection.
#[derive(Debug)]
pub struct Conn {
    phase: Phase,
    pub gen: u16,
    /// Position in the worker's list of open connections.
    pub pos: u32,
    fds: [Option<OwnedFd>; 2],
    recv_armed: [bool; 2],
    starved: [bool; 2],
    eof: [bool; 2],
    shut: [bool; 2],
    /// Close this side with an RST.
    reset: [bool; 2],
    /// By source side: `out[Down]` goes to the upstream, `out[Up]` to the client.
    out: [OutQ; 2],
    /// Received bytes not yet processed, by side: (buffer, offset, length).
    pend: [Option<(BufId, u32, u32)>; 2],
    /// A head split across receives (rare; see the module doc).
    acc: Vec<u8>,
    req: Left,
    resp: Left,
    connect_inflight: bool,
    connected: bool,
    timed_out: bool,
    /// Waiting for the upstream's response head.
    awaiting_head: bool,
    /// Interim (1xx) responses forwarded for this request (bounded: [`MAX_INTERIM`]).
    interim: u8,
    /// The client connection persists after this exchange.
    keep_alive: bool,
    client_minor: u8,
    head_req: bool,
    upgrade_req: bool,
    /// Bytes of the current request head have arrived.
    got_bytes: bool,
    up_reusable: bool,
    /// Sniffing decided opaque TCP; the worker hands the socket to the L4 relay.
    fallback: bool,
    attempt: u8,
    served: u32,
    /// The route of the current exchange: (virtual host, route) indices in the
    /// listener's table, for its response header edits.
    route_ref: Option<(u32, u32)>,
    /// The route's retry policy for the current request.
    retry: Option<Retry>,
    /// The upstream request kept for retries: head (without the attempt header) then
    /// body; capacity kept for the connection.
    replay: Vec<u8>,
    replay_head: usize,
    replayable: bool,
    /// Attempts made for the current request (1 = the first).
    tries: u32,
    try_deadline_ms: u64,
    retry_at_ms: u64,
    /// The current request is counted active on its cluster (`rq_total` − `rq_done`).
    rq_open: bool,
    /// The current attempt is a retry counted on the cluster (`max_retries`, budget).
    retry_open: bool,
    /// Waiting in the worker's pending queue for the cluster to have a connection free.
    pending: bool,
    /// The upstream connection came from the worker's pool (it served requests before).
    up_reused: bool,
    /// The request's balancer hash key, set before each first-attempt pick.
    lb_key: Option<u64>,
    /// Endpoint index (in the cluster) of the upstream connection.
    up_endpoint: u32,
    /// The request may be sent again on a fresh connection if a reused one turns out
    /// closed (RFC 9112 §9.3.1.1: idempotent methods only).
    idempotent: bool,
    /// This request was already sent again after a stale pooled connection: no pool.
    fresh_only: bool,
    /// The attempt being started re-sends the same try (no new attempt number).
    resend: bool,
    /// Requests sent on the current upstream connection.
    up_requests: u32,
    /// Mirror clusters chosen for the current request (first `mirror_n`), started once
    /// its body is complete (see [`super::shadow`]).
    mirror_to: [u32; MAX_MIRRORS],
    mirror_n: u8,
    /// The route timeout, for the shadows' deadline.
    mirror_ms: u64,
    /// A `regex_rewrite` result (capacity kept for the connection).
    path_buf: Vec<u8>,
    /// Match state for the last rewrite regex used (by its address in the table).
    rewrite_locs: Option<(usize, regex::bytes::CaptureLocations)>,
    listener: u32,
    cluster: u32,
    first_endpoint: u32,
    /// Table generation the upstream socket's cluster index belongs to.
    up_generation: u64,
    head_deadline_ms: u64,
    route_deadline_ms: u64,
    connect_deadline_ms: u64,
    last_ms: u64,
    idle_ms: u64,
    header_ms: u64,
    max_body: u64,
    peer: Option<SocketAddr>,
    /// `peer`'s address as `X-Forwarded-For` text, formatted once per connection
    /// (formatting it per request was ≈ 0.4% of a worker's samples).
    peer_text: [u8; 48],
    peer_len: u8,
    table: Option<Arc<RouteTable>>,
    lstats: Option<Arc<ListenerStats>>,
    cstats: Option<Arc<UpstreamStats>>,
    estats: Option<Arc<UpstreamStats>>,
    /// The current upstream endpoint's health (outlier detection), like `estats`.
    ehealth: Option<Arc<crate::cluster::health::EndpointHealth>>,
    /// The hash cookie generated for the current request (sent in `Set-Cookie`).
    set_cookie: Option<[u8; 16]>,
    /// TLS sessions, when a side speaks TLS (see [`tls`]).
    tls: Option<Box<tls::Layer>>,
}

impl Default for Conn {
    fn default() -> Self {
        Conn {
            phase: Phase::Free,
            gen: 0,
            pos: 0,
            fds: [None, None],
            recv_armed: [false; 2],
            starved: [false; 2],
            eof: [false; 2],
            shut: [false; 2],
            reset: [false; 2],
            out: Default::default(),
            pend: [None; 2],
            acc: Vec::new(),
            req: Left::Done,
            resp: Left::Done,
            connect_inflight: false,
            connected: false,
            timed_out: false,
            awaiting_head: false,
            interim: 0,
            keep_alive: true,
            client_minor: 1,
            head_req: false,
            upgrade_req: false,
            got_bytes: false,
            up_reusable: false,
            fallback: false,
            attempt: 0,
            served: 0,
            route_ref: None,
            retry: None,
            replay: Vec::new(),
            replay_head: 0,
            replayable: false,
            tries: 0,
            try_deadline_ms: 0,
            retry_at_ms: 0,
            rq_open: false,
            retry_open: false,
            pending: false,
            up_reused: false,
            lb_key: None,
            set_cookie: None,
            up_endpoint: 0,
            idempotent: false,
            fresh_only: false,
            resend: false,
            up_requests: 0,
            mirror_to: [0; MAX_MIRRORS],
            mirror_n: 0,
            mirror_ms: 0,
            path_buf: Vec::new(),
            rewrite_locs: None,
            listener: 0,
            cluster: 0,
            first_endpoint: 0,
            up_generation: 0,
            head_deadline_ms: 0,
            route_deadline_ms: 0,
            connect_deadline_ms: 0,
            last_ms: 0,
            idle_ms: 0,
            header_ms: 0,
            max_body: 0,
            peer: None,
            peer_text: [0; 48],
            peer_len: 0,
            table: None,
            lstats: None,
            cstats: None,
            estats: None,
            ehealth: None,
            tls: None,
        }
    }
}

/// How an exchange failed, and what the client gets.
#[derive(Debug, Clone, Copy)]
enum Fail {
    /// Answer with this status (when no response byte went out yet, and no retry
    /// applies), then close.
    Status(u16, L, &'static str, Cause),
    /// The response's status asks for a retry and one is allowed.
    Retry,
    /// Close now, with an RST to the client.
    Reset,
}

/// Which `retry_on` condition a failure falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    None,
    Connect,
    Reset,
    Gateway,
    PerTry,
}

/// Largest request (head and body) kept to be sent again by a retry or copied to a
/// mirror; a request whose body runs past it is not retried, and not mirrored at all
/// (a head without its body would be a different request).
const REPLAY_CAP: usize = 48 * 1024;
/// Mirror policies honoured per route (further ones are ignored at compile time).
const MAX_MIRRORS: usize = 4;

/// What a local response carries besides its status and body.
#[derive(Debug, Clone, Copy)]
enum Extra {
    None,
    /// `x-tickmesh-overloaded: true` (circuit breaking).
    Overloaded,
    /// A local rate limit refused the request: the configured bucket size and the
    /// seconds until this worker's bucket refills.
    RateLimited {
        limit: u32,
        reset_s: u64,
    },
}
/// The attempt header, written last in a head; a replay re-renders it.
const ATTEMPT_HEADER: &[u8] = b"x-tickmesh-attempt-count: ";

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

    #[inline]
    fn lcount(&self, worker: usize, k: L, n: u64) {
        if let Some(s) = &self.lstats {
            s.add(worker, k, n);
        }
    }

    #[inline]
    fn ucount(&self, worker: usize, k: U, n: u64) {
        if let Some(s) = &self.estats {
            s.add(worker, k, n);
        }
        if let Some(s) = &self.cstats {
            s.add(worker, k, n);
        }
    }

    /// Take over an accepted client socket on `http` listener `listener`.
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
        let acc = std::mem::take(&mut self.acc);
        let replay = std::mem::take(&mut self.replay);
        let path_buf = std::mem::take(&mut self.path_buf);
        *self = Conn {
            gen,
            pos: self.pos,
            acc,
            replay,
            path_buf,
            phase: Phase::Head,
            idle_ms: ms(l.idle_timeout),
            header_ms: ms(l.request_header_timeout),
            max_body: l.max_request_body,
            last_ms: cx.now_ms,
            listener: listener as u32,
            ..Conn::default()
        };
        self.acc.clear();
        self.head_deadline_ms = cx.now_ms + self.header_ms;
        // A failure here is not fatal: the connection works, only with Nagle on.
        let _ = crate::net::set_nodelay(&down);
        // One getpeername per connection, for X-Forwarded-For.
        self.peer = crate::net::peer_addr(&down).ok();
        let mut text = [0u8; 48];
        let n = ip_text(self.peer, &mut text).len();
        self.peer_text = text;
        // ≤ 48: `ip_text` writes into the 48-byte buffer.
        self.peer_len = n as u8;
        l.stats.inc(cx.worker, L::CxTotal);
        self.lstats = Some(l.stats.clone());
        self.table = Some(table.clone());
        if let Some(t) = &l.tls {
            let ktls = cx.crypto().engine.ktls_enabled();
            self.tls = Some(tls::Layer::server(t.clone(), l.xfcc, ktls));
        }
        io.adopt(self.me(slot), down.as_raw_fd());
        self.fds[Side::Down.idx()] = Some(down);
        *cx.open += 1;
        self.drive(slot, cx, io)
    }

    /// After sniffing chose opaque TCP: the client socket, the bytes read so far and
    /// the listener, for the L4 relay; this connection is then free (same generation:
    /// the slot's tenant continues as a TCP relay). Counts stay with the listener.
    pub fn take_fallback(&mut self, cx: &mut Ctx) -> Option<Fallback> {
        if !self.fallback {
            return None;
        }
        let fd = self.fds[Side::Down.idx()].take()?;
        let table = self.table.take()?;
        let data = self.pend[Side::Down.idx()].take();
        let tls = self.tls.take().map(|l| {
            let d = Side::Down.idx();
            let tx_inflight = self.out[Side::Up.idx()].inflight;
            (*l).into_carry(self.recv_armed[d], tx_inflight)
        });
        self.recv_armed = [false; 2];
        self.out[Side::Up.idx()].inflight = false;
        self.lcount(cx.worker, L::SniffedTcp, 1);
        // The worker's open count stays: the relay closes (and uncounts) it.
        let listener = self.listener as usize;
        self.lstats = None;
        self.phase = Phase::Free;
        self.fallback = false;
        Some(Fallback {
            fd,
            data,
            listener,
            table,
            tls,
        })
    }

    // === events ===

    /// A receive on `side` finished: `res` bytes in `buf`, 0 at EOF, or `-errno`.
    #[allow(clippy::too_many_arguments)]
    pub fn on_recv(
        &mut self,
        slot: u32,
        side: Side,
        res: i32,
        buf: Option<BufId>,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        let s = side.idx();
        self.recv_armed[s] = false;
        if self.phase == Phase::Closing {
            if let Some(b) = buf {
                io.release(b);
            }
            return self.close(slot, cx, io);
        }
        if res > 0 {
            let Some(b) = buf else {
                debug_assert!(false, "receive completed without a buffer");
                return self.close(slot, cx, io);
            };
            let n = res as u32;
            match side {
                Side::Down => self.lcount(cx.worker, L::BytesFromDownstream, n.into()),
                Side::Up => self.ucount(cx.worker, U::BytesReceived, n.into()),
            }
            self.last_ms = cx.now_ms;
            if self.tls_on(side) {
                if let Some(step) = self.tls_recv(slot, side, (b, n), cx, io) {
                    return step;
                }
            }
            if !self.wants(side) || self.pend[s].is_some() {
                // Late data for a finished exchange (a response failed over to a local
                // one): dropped, and the connection does not persist.
                io.release(b);
                if side == Side::Up {
                    self.up_reusable = false;
                }
                return self.drive(slot, cx, io);
            }
            self.land(side, b, n, cx.now_ms, io);
            return self.drive(slot, cx, io);
        }
        if let Some(b) = buf {
            io.release(b);
        }
        if res == -libc::ENOBUFS {
            self.starved[s] = true;
            cx.starved.push((slot, side));
            return Step::Continue;
        }
        if let Some(step) = self.tls_kernel_end(slot, side, res, cx, io) {
            return step; // a control record, a bad record or a truncation under kTLS
        }
        if res < 0 {
            match side {
                Side::Down => self.lcount(cx.worker, L::DownstreamResets, 1),
                Side::Up => self.ucount(cx.worker, U::UpstreamResets, 1),
            }
        }
        if self.tls_on(side) {
            if let Some(step) = self.tls_eof(slot, side, res, cx, io) {
                return step;
            }
        }
        self.on_eof(slot, side, res, cx, io)
    }

    /// Whether bytes from `side` are expected in the current phase.
    fn wants(&self, side: Side) -> bool {
        matches!(
            (self.phase, side),
            (Phase::Head | Phase::Exchange | Phase::Tunnel, Side::Down)
                | (Phase::Exchange | Phase::Tunnel, Side::Up)
        ) || (self.phase == Phase::Flush && side == Side::Down && self.keep_alive)
    }

    /// `n` received bytes in `b` from `side` (expected, nothing pending): pending now.
    fn land(&mut self, side: Side, b: BufId, n: u32, now_ms: u64, io: &mut impl Io) {
        if side == Side::Down && self.phase == Phase::Head && !self.got_bytes {
            self.got_bytes = true;
            self.head_deadline_ms = now_ms + self.header_ms;
        }
        if !self.acc.is_empty() {
            // Appending to a split head (rare path).
            let data = &io.bytes(b)[..n as usize];
            self.acc.extend_from_slice(data);
            io.release(b);
        } else {
            self.pend[side.idx()] = Some((b, 0, n));
        }
    }

    /// `side` ended: `res` 0 for a clean end, `-errno` for a failure.
    fn on_eof(&mut self, slot: u32, side: Side, res: i32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        let s = side.idx();
        self.eof[s] = true;
        match (self.phase, side) {
            (Phase::Tunnel, _) => {
                if res < 0 {
                    self.reset[side.other().idx()] = true;
                    return self.close(slot, cx, io);
                }
                self.drive(slot, cx, io)
            }
            (Phase::Exchange, Side::Up) => {
                if matches!(self.resp, Left::UntilClose) && res == 0 {
                    // RFC 9112 §6.3 item 8: the close ends the body.
                    self.resp = Left::Done;
                    self.up_reusable = false;
                    return self.drive(slot, cx, io);
                }
                let f = if self.awaiting_head {
                    Fail::Status(
                        502,
                        L::HttpBadGateway,
                        "upstream closed before responding\n",
                        Cause::Reset,
                    )
                } else {
                    Fail::Reset
                };
                self.fail(slot, f, cx, io)
            }
            (_, Side::Up) => {
                self.up_reusable = false;
                self.drive(slot, cx, io)
            }
            (Phase::Exchange, Side::Down) if !self.req.done() || res < 0 => {
                // The client went away mid-request.
                self.reset[Side::Up.idx()] = true;
                self.close(slot, cx, io)
            }
            (_, Side::Down) => {
                // A client's FIN after a whole request: finish it, then close.
                self.keep_alive = false;
                if self.phase == Phase::Head || res < 0 {
                    return self.close(slot, cx, io);
                }
                self.drive(slot, cx, io)
            }
        }
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
        let q = &mut self.out[from.idx()];
        q.inflight = false;
        if self.phase == Phase::Closing {
            return self.close(slot, cx, io);
        }
        if self.phase == Phase::Backoff && from == Side::Down {
            // The abandoned attempt's request: its queue is rebuilt by the retry.
            return Step::Continue;
        }
        if res < 0 {
            if self.tls_on(from.other()) {
                // Its socket failed: no close_notify is waited for there.
                self.reset[from.other().idx()] = true;
            }
            match from.other() {
                Side::Down => {
                    self.lcount(cx.worker, L::DownstreamResets, 1);
                    self.reset[Side::Up.idx()] = true;
                    return self.close(slot, cx, io);
                }
                Side::Up => {
                    self.ucount(cx.worker, U::UpstreamResets, 1);
                    if self.phase == Phase::Exchange {
                        let f = if self.awaiting_head {
                            Fail::Status(
                                502,
                                L::HttpBadGateway,
                                "upstream reset the request\n",
                                Cause::Reset,
                            )
                        } else {
                            Fail::Reset
                        };
                        return self.fail(slot, f, cx, io);
                    }
                    self.reset[Side::Down.idx()] = true;
                    return self.close(slot, cx, io);
                }
            }
        }
        let n = res as u32;
        match from {
            Side::Down => self.ucount(cx.worker, U::BytesSent, n.into()),
            Side::Up => self.lcount(cx.worker, L::BytesToDownstream, n.into()),
        }
        self.last_ms = cx.now_ms;
        if self.tls_on(from.other()) {
            self.tls_sent(from.other(), n, io);
        } else {
            self.out[from.idx()].sent(n, io);
        }
        self.drive(slot, cx, io)
    }

    pub fn on_connect(&mut self, slot: u32, res: i32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        self.connect_inflight = false;
        if self.phase == Phase::Closing {
            return self.close(slot, cx, io);
        }
        if self.phase != Phase::Exchange {
            // The exchange already failed over to a local response.
            io.drop_socket(self.raw(Side::Up));
            self.fds[Side::Up.idx()] = None;
            return self.drive(slot, cx, io);
        }
        if res < 0 {
            io.drop_socket(self.raw(Side::Up));
            self.outlier(cx.worker, Outcome::LocalFailure);
            let what = if self.timed_out || res == -ETIMEDOUT {
                U::ConnectTimeout
            } else {
                U::ConnectFail
            };
            self.ucount(cx.worker, what, 1);
            self.ucount(cx.worker, U::CxClosed, 1);
            self.estats = None;
            self.ehealth = None;
            self.fds[Side::Up.idx()] = None;
            self.attempt = self.attempt.saturating_add(1);
            return self.connect_next(slot, cx, io);
        }
        self.connected = true;
        self.last_ms = cx.now_ms;
        if let Some(step) = self.tls_start_up(slot, cx, io) {
            return step; // the cluster's TLS could not start
        }
        self.drive(slot, cx, io)
    }

    /// Retry a receive that found the pool empty.
    pub fn rearm(&mut self, slot: u32, side: Side, cx: &mut Ctx, io: &mut impl Io) -> Step {
        self.starved[side.idx()] = false;
        if self.phase == Phase::Free {
            return Step::Continue;
        }
        self.drive(slot, cx, io)
    }

    /// Timeouts: request head, connect, route, idle.
    pub fn on_tick(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        let now = cx.now_ms;
        if self.tls_lingering() {
            return self.close(slot, cx, io); // ends the flush at its deadline
        }
        match self.phase {
            Phase::Head => {
                let has_bytes = self.got_bytes || self.pend[0].is_some() || !self.acc.is_empty();
                if has_bytes && now >= self.head_deadline_ms {
                    self.lcount(cx.worker, L::HttpHeaderTimeout, 1);
                    self.keep_alive = false;
                    return self.respond(slot, 408, b"request header timeout\n", cx, io);
                }
                let idle_deadline = if self.served == 0 {
                    self.head_deadline_ms
                } else {
                    self.last_ms + self.idle_ms
                };
                if !has_bytes && now >= idle_deadline {
                    self.lcount(cx.worker, L::IdleTimeouts, 1);
                    return self.close(slot, cx, io);
                }
                Step::Continue
            }
            Phase::Exchange => {
                if self.connect_inflight && !self.timed_out && now >= self.connect_deadline_ms {
                    self.timed_out = true;
                    let fd = self.raw(Side::Up);
                    if io.cancel_connect(self.me(slot), fd) {
                        return self.on_connect(slot, -ETIMEDOUT, cx, io);
                    }
                    return Step::Continue;
                }
                if self.try_deadline_ms > 0 && now >= self.try_deadline_ms && self.awaiting_head {
                    self.try_deadline_ms = 0;
                    let f = Fail::Status(
                        504,
                        L::HttpUpstreamTimeout,
                        "upstream per-try timeout\n",
                        Cause::PerTry,
                    );
                    return self.fail(slot, f, cx, io);
                }
                if self.route_deadline_ms > 0 && now >= self.route_deadline_ms {
                    let f = if self.awaiting_head {
                        Fail::Status(
                            504,
                            L::HttpUpstreamTimeout,
                            "upstream request timeout\n",
                            Cause::None,
                        )
                    } else {
                        self.lcount(cx.worker, L::HttpUpstreamTimeout, 1);
                        Fail::Reset
                    };
                    return self.fail(slot, f, cx, io);
                }
                if now.saturating_sub(self.last_ms) >= self.idle_ms {
                    self.lcount(cx.worker, L::IdleTimeouts, 1);
                    return self.close(slot, cx, io);
                }
                Step::Continue
            }
            Phase::Backoff => {
                if self.route_deadline_ms > 0 && now >= self.route_deadline_ms {
                    self.lcount(cx.worker, L::HttpUpstreamTimeout, 1);
                    self.keep_alive = false;
                    self.awaiting_head = false;
                    return self.respond(slot, 504, b"upstream request timeout\n", cx, io);
                }
                let up_busy = self.recv_armed[1] || self.out[0].inflight || self.connect_inflight;
                if now >= self.retry_at_ms && !up_busy {
                    return self.start_retry(slot, cx, io);
                }
                Step::Continue
            }
            Phase::Flush | Phase::Tunnel if now.saturating_sub(self.last_ms) >= self.idle_ms => {
                self.lcount(cx.worker, L::IdleTimeouts, 1);
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

    // === progress ===

    /// Make every step the current state allows: process received bytes, start sends,
    /// arm receives, move between phases.
    fn drive(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        if self.tls_lingering() {
            return self.close(slot, cx, io);
        }
        // Bounded: each turn either changes phase or stops; pipelined requests already
        // received are served one per exchange, and an exchange waits for I/O.
        for _ in 0..64 {
            let before = self.phase;
            let step = match self.phase {
                Phase::Head => self.drive_head(slot, cx, io),
                Phase::Exchange => self.drive_exchange(slot, cx, io),
                Phase::Flush => self.drive_flush(slot, cx, io),
                Phase::Tunnel => self.drive_tunnel(slot, cx, io),
                Phase::Backoff => Step::Continue,
                Phase::Closing => return self.close(slot, cx, io),
                Phase::Free => return Step::Free,
            };
            if step == Step::Free || self.phase == Phase::Free {
                return Step::Free;
            }
            // Under TLS: bytes to seal and send, records to read, plaintext to hand up.
            match self.tls_turn(slot, cx, io) {
                tls::Turn::Done(step) => return step,
                tls::Turn::Delivered => continue,
                tls::Turn::Idle => {}
            }
            if self.phase == before || self.fallback {
                return Step::Continue;
            }
        }
        Step::Continue
    }

    fn arm_recv(&mut self, slot: u32, side: Side, io: &mut impl Io) {
        let s = side.idx();
        if self.tls_reads(side) {
            // The TLS layer reads the socket and hands decrypted bytes up.
            return self.tls_want(side);
        }
        if self.recv_armed[s] || self.eof[s] || self.starved[s] || self.pend[s].is_some() {
            return;
        }
        let fd = self.raw(side);
        if fd < 0 {
            return;
        }
        self.recv_armed[s] = true;
        // The client socket is this connection's until it closes (or it becomes a
        // TCP relay in the same slot), a plain upstream socket until it is parked (its
        // receive stays armed in the pool, where anything arriving kills it — see
        // `park_up`), dropped or closed: one multishot receive serves every message.
        io.recv_multi(self.me(slot), side, fd);
    }

    fn send_front(&mut self, slot: u32, from: Side, io: &mut impl Io) {
        let to = from.other();
        if to == Side::Up && !self.connected {
            return;
        }
        if self.tls_on(to) {
            // Sealed and sent by the TLS layer (`tls_turn`).
            return self.tls_take_plain(from, io);
        }
        if self.tls_holds(to) {
            return; // a kernel side owes a KeyUpdate first (`tls_turn` sends it)
        }
        let fd = self.raw(to);
        let me = self.me(slot);
        let q = &mut self.out[from.idx()];
        if q.inflight || q.count == 0 || fd < 0 {
            return;
        }
        let (b, off, len) = q.front();
        q.inflight = true;
        if q.count <= 2 {
            // The last entry goes out now: nothing may be appended to it any more.
            q.tail_room = 0;
        }
        match q.second() {
            // A head and the body behind it (larger than COALESCE_MAX, so not copied
            // into the head's buffer) leave together: one segment, one completion.
            Some(second) => io.sendv(me, from, fd, (b, off, len), second),
            None => io.send(me, from, fd, b, off, len),
        }
    }

    fn drive_head(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        if !self.out[Side::Up.idx()].idle() {
            // The previous response is still going out; its queue is ours to reuse only
            // once empty (keeps local responses and heads from interleaving).
            self.send_front(slot, Side::Up, io);
            return Step::Continue;
        }
        match self.take_head(Side::Down, cx, io) {
            Ok(true) => {
                let scratch = std::mem::take(cx.scratch);
                let step = self.start_request(slot, &scratch, cx, io);
                *cx.scratch = scratch;
                step
            }
            Ok(false) => {
                if !self.fallback {
                    self.arm_recv(slot, Side::Down, io);
                }
                Step::Continue
            }
            Err(e) => self.bad_request(slot, e, cx, io),
        }
    }

    /// A client whose identity the listener or route does not allow: 403 (counted).
    fn deny(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        self.lcount(cx.worker, L::TlsPrincipalDenied, 1);
        self.respond(slot, 403, b"RBAC: access denied\n", cx, io)
    }

    fn bad_request(&mut self, slot: u32, e: HttpError, cx: &mut Ctx, io: &mut impl Io) -> Step {
        self.lcount(cx.worker, L::HttpBadRequest, 1);
        self.keep_alive = false;
        self.req = Left::Done;
        let body: &[u8] = match e {
            HttpError::BadRequestLine => b"malformed request line\n",
            HttpError::BadHeader => b"invalid header bytes\n",
            HttpError::HeadTooLarge => b"header section too large\n",
            HttpError::LengthAndChunked => b"both Content-Length and Transfer-Encoding\n",
            HttpError::BadContentLength => b"invalid or conflicting Content-Length\n",
            HttpError::BadTransferEncoding => b"unsupported Transfer-Encoding\n",
            HttpError::BadChunk => b"invalid chunk size\n",
            HttpError::BodyTooLarge => b"request body over the limit\n",
            _ => b"bad request\n",
        };
        self.respond(slot, e.status(), body, cx, io)
    }

    /// Find a complete head at the start of `side`'s pending bytes and copy it into the
    /// worker scratch. `Ok(false)`: need more bytes.
    fn take_head(&mut self, side: Side, cx: &mut Ctx, io: &mut impl Io) -> Result<bool, HttpError> {
        let s = side.idx();
        if !self.acc.is_empty() {
            return self.take_head_acc(side, cx, io);
        }
        let Some((b, off, len)) = self.pend[s] else {
            return Ok(false);
        };
        let data = &io.bytes(b)[off as usize..(off + len) as usize];
        if side == Side::Down && self.served == 0 && off == 0 && !looks_like_http1(data) {
            // Not HTTP/1.x: the listener's `cluster` takes it as opaque TCP (a TLS
            // session moves to the relay with its socket); without one, 400.
            let has_fallback = self
                .table
                .as_ref()
                .is_some_and(|t| t.listeners[self.listener as usize].target.is_some());
            if has_fallback {
                self.fallback = true;
                return Ok(false);
            }
            return Err(HttpError::BadRequestLine);
        }
        match head_end(data) {
            Some(end) => {
                cx.scratch.clear();
                cx.scratch.extend_from_slice(&data[..end]);
                self.consume(side, end as u32, io);
                Ok(true)
            }
            None => {
                // Refuse what is already wrong (HTTP/0.9, garbage) without waiting.
                check_partial(side, data)?;
                // Rare path: gather the head across receives.
                self.acc.reserve(BUF_SIZE);
                self.acc.extend_from_slice(data);
                io.release(b);
                self.pend[s] = None;
                Ok(false)
            }
        }
    }

    fn take_head_acc(
        &mut self,
        side: Side,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Result<bool, HttpError> {
        match head_end(&self.acc) {
            Some(end) => {
                cx.scratch.clear();
                cx.scratch.extend_from_slice(&self.acc[..end]);
                let rest = self.acc.len() - end;
                if rest > 0 {
                    // At most one receive's worth follows the head: it fits a buffer.
                    let Some(b) = io.take() else {
                        return Err(HttpError::HeadTooLarge);
                    };
                    let n = rest.min(BUF_SIZE);
                    io.bytes_mut(b)[..n].copy_from_slice(&self.acc[end..end + n]);
                    self.pend[side.idx()] = Some((b, 0, n as u32));
                }
                self.acc.clear();
                Ok(true)
            }
            None => {
                if self.acc.len() >= MAX_HEAD {
                    return Err(if side == Side::Down {
                        HttpError::HeadTooLarge
                    } else {
                        HttpError::BadResponse
                    });
                }
                check_partial(side, &self.acc)?;
                Ok(false)
            }
        }
    }

    /// Drop the first `n` pending bytes of `side`.
    fn consume(&mut self, side: Side, n: u32, io: &mut impl Io) {
        let s = side.idx();
        if let Some((b, off, len)) = self.pend[s] {
            if n >= len {
                io.release(b);
                self.pend[s] = None;
            } else {
                self.pend[s] = Some((b, off + n, len - n));
            }
        }
    }

    /// A complete request head is in `head`: route it and act.
    fn start_request<'a>(
        &mut self,
        slot: u32,
        head: &[u8],
        cx: &mut Ctx<'a>,
        io: &mut impl Io,
    ) -> Step {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let req = match codec::parse_request(head, &mut hs) {
            Ok(Some(r)) => r,
            Ok(None) => return self.bad_request(slot, HttpError::BadRequestLine, cx, io),
            Err(e) => return self.bad_request(slot, e, cx, io),
        };
        self.lcount(cx.worker, L::HttpRqTotal, 1);
        self.got_bytes = false;
        self.served = self.served.saturating_add(1);
        self.client_minor = req.repr.minor;
        self.keep_alive = req.repr.keep_alive;
        self.head_req = req.method == "HEAD";
        self.upgrade_req = req.repr.upgrade;
        self.req = Left::of(req.repr.body);
        if let Body::Length(n) = req.repr.body {
            if n > self.max_body {
                return self.bad_request(slot, HttpError::BodyTooLarge, cx, io);
            }
        }
        if self.tls.as_deref().is_some_and(|l| !l.t.client_allowed()) {
            // The listener's `allowed_principals`: an HTTP deny is a 403 (Envoy RBAC's).
            return self.deny(slot, cx, io);
        }
        self.pick_up_table(cx);
        // Request target: origin form, or absolute form (RFC 9112 §3.2.2).
        let target = req.target.as_bytes();
        let (authority, path_query): (Option<&[u8]>, &[u8]) = if target.starts_with(b"/") {
            (None, target)
        } else if let Some(rest) = target
            .strip_prefix(b"http://")
            .or_else(|| target.strip_prefix(b"https://"))
        {
            let i = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            (
                Some(&rest[..i]),
                if i < rest.len() { &rest[i..] } else { b"/" },
            )
        } else if target == b"*" {
            (None, target)
        } else {
            return self.bad_request(slot, HttpError::BadRequestLine, cx, io);
        };
        let host = match (authority, req.header("host")) {
            (Some(a), _) => a,
            (None, Some(h)) => h,
            // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400.
            (None, None) if req.repr.minor == 1 => {
                return self.bad_request(slot, HttpError::BadHeader, cx, io)
            }
            (None, None) => b"",
        };
        let (path, query) = match path_query.iter().position(|&b| b == b'?') {
            Some(i) => (&path_query[..i], &path_query[i + 1..]),
            None => (path_query, &path_query[path_query.len()..]),
        };
        let view = RequestView {
            method: req.method.as_bytes(),
            path,
            query,
            host,
            headers: req.headers,
        };
        // The worker's table, borrowed for this batch (no refcount traffic on the shared
        // table per request); a connection whose listener left the newest table keeps
        // its own (an `Arc` clone then, on that rare path).
        let cur: &'a Arc<RouteTable> = cx.table;
        let kept;
        let table: &RouteTable = match &self.table {
            Some(t) if Arc::ptr_eq(t, cur) => cur,
            Some(t) => {
                kept = t.clone();
                &kept
            }
            None => return self.close(slot, cx, io),
        };
        let le = &table.listeners[self.listener as usize];
        let routed = le.http.as_ref().and_then(|h| h.route(&view));
        let Some((vh, route)) = routed else {
            self.lcount(cx.worker, L::HttpNoRoute, 1);
            return self.respond(slot, 404, b"no route\n", cx, io);
        };
        if !route.allows(self.tls.as_deref().and_then(tls::Layer::identity)) {
            return self.deny(slot, cx, io);
        }
        match &route.action {
            Action::Direct { status, body } => self.respond(slot, *status, body, cx, io),
            Action::Redirect {
                status,
                host: h,
                path: p,
            } => {
                let host = h.as_deref().map_or(host, str::as_bytes);
                let path = p.as_deref().map_or(path_query, str::as_bytes);
                self.redirect(slot, *status, host, path, cx, io)
            }
            Action::Forward {
                target,
                timeout,
                prefix_rewrite,
                regex_rewrite,
                retry,
                mirrors,
            } => {
                if let Some((limit, reset_ms)) = self.rate_limited(vh, route, &view, cx) {
                    self.lcount(cx.worker, L::HttpRateLimited, 1);
                    let extra = Extra::RateLimited {
                        limit,
                        reset_s: reset_ms.div_ceil(1000),
                    };
                    return self.local(slot, 429, b"rate limited\n", None, extra, cx, io);
                }
                let cluster = target.pick(cx.lb.next_u32());
                let cl = &table.clusters[cluster as usize];
                // Consistent hashing (the route's or the cluster's `hash_policy`); a
                // generating hash cookie the request lacks is made up (Set-Cookie).
                let (hash_key, set_cookie) = cl.hash_key(route.hash.as_deref(), &view, self.peer);
                if cl.endpoints.is_empty() {
                    self.lcount(cx.worker, L::HttpNoHealthyUpstream, 1);
                    return self.respond(slot, 503, b"no healthy upstream\n", cx, io);
                }
                let mut rewritten = std::mem::take(&mut self.path_buf);
                if let Some(rw) = regex_rewrite {
                    // The match state is kept per connection, made once per regex.
                    let mine = self.rewrite_locs.as_ref().is_some_and(|(id, _)| {
                        *id == rw as *const crate::route::http::RegexRewrite as usize
                    });
                    if !mine {
                        self.rewrite_locs = Some((
                            rw as *const crate::route::http::RegexRewrite as usize,
                            rw.re.capture_locations(),
                        ));
                    }
                    if let Some((_, locs)) = self.rewrite_locs.as_mut() {
                        rewritten.clear();
                        rw.apply(path, locs, &mut rewritten);
                    }
                }
                let path_out: (&[u8], &[u8]) = match (prefix_rewrite, route.path_prefix()) {
                    _ if regex_rewrite.is_some() => (&rewritten, &path_query[path.len()..]),
                    (Some(rw), Some(pre)) if path_query.len() >= pre.len() => {
                        (rw, &path_query[pre.len()..])
                    }
                    _ => (path_query, b""),
                };
                let request_id = if req.header("x-request-id").is_none() {
                    Some(new_request_id(cx))
                } else {
                    None
                };
                self.route_ref = Some((vh.index, route.index));
                self.retry = retry.clone();
                self.tries = 1;
                self.try_deadline_ms = retry
                    .as_ref()
                    .and_then(|r| r.per_try_timeout)
                    .map_or(0, |t| cx.now_ms + ms(t));
                let written = self.write_request_head(
                    &req,
                    path_out,
                    request_id.as_ref().map(|x| &x[..]),
                    [&route.request_headers, &vh.request_headers],
                    retry.is_some().then_some(1),
                    io,
                );
                self.path_buf = rewritten;
                if written.is_err() {
                    return self.bad_request(slot, HttpError::HeadTooLarge, cx, io);
                }
                // Mirrors: each policy rolls its own share (parts per million).
                self.mirror_n = 0;
                for m in mirrors.iter().take(MAX_MIRRORS) {
                    let hit =
                        m.per_million >= 1_000_000 || cx.lb.next_u32() % 1_000_000 < m.per_million;
                    if hit {
                        self.mirror_to[self.mirror_n as usize] = m.cluster;
                        self.mirror_n += 1;
                    }
                }
                self.idempotent = matches!(
                    req.method,
                    "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
                );
                // Kept for retries, mirrors, and an idempotent request's second send
                // should its pooled connection turn out closed (a copy of the head, and
                // of the body up to the replay cap).
                if retry.is_some() || self.mirror_n > 0 || self.idempotent {
                    self.keep_for_replay(retry.is_some(), io);
                }
                let route_ms = timeout.map_or(DEFAULT_ROUTE_TIMEOUT_MS, ms);
                self.mirror_ms = if route_ms == 0 {
                    DEFAULT_ROUTE_TIMEOUT_MS
                } else {
                    route_ms
                };
                self.route_deadline_ms = if route_ms == 0 {
                    0
                } else {
                    cx.now_ms + route_ms
                };
                self.awaiting_head = true;
                self.interim = 0;
                self.resp = Left::Done;
                self.phase = Phase::Exchange;
                // Circuit breaking (see `Breakers`): active requests, and connections
                // when this request needs a new one.
                let active = cl.active_requests();
                let open_cx = cl.open_connections();
                // At max_connections a request may wait (max_pending_requests, counted
                // over workers; each worker's queue is bounded too).
                // An idle pooled connection to the cluster adds no connection (the
                // pool is scanned only at the limit).
                let must_wait = open_cx >= u64::from(cl.breakers.max_connections)
                    && !cx.http.pool.has(table.generation, cluster);
                // Summed over workers only when this request would wait.
                let can_wait = || {
                    let waiting = cl
                        .stats
                        .get(U::RqPendingTotal)
                        .saturating_sub(cl.stats.get(U::RqPendingDone));
                    waiting < u64::from(cl.breakers.max_pending_requests)
                        && cx.http.pending.len() < super::shadow::MAX_PENDING
                };
                if active >= u64::from(cl.breakers.max_requests) || (must_wait && !can_wait()) {
                    if must_wait && active < u64::from(cl.breakers.max_requests) {
                        cl.stats.inc(cx.worker, U::RqPendingOverflow);
                    }
                    cl.stats.inc(cx.worker, U::RqOverflow);
                    self.out[Side::Down.idx()].release_all(io);
                    self.phase = Phase::Head;
                    self.keep_alive &= self.req.done();
                    return self.local(
                        slot,
                        503,
                        b"upstream overloaded\n",
                        None,
                        Extra::Overloaded,
                        cx,
                        io,
                    );
                }
                // A connection a failed exchange left behind goes (counted on its
                // cluster), before the counters switch to this request's cluster.
                self.drop_up(cx, io);
                if !self
                    .cstats
                    .as_ref()
                    .is_some_and(|s| Arc::ptr_eq(s, &cl.stats))
                {
                    self.cstats = Some(cl.stats.clone());
                }
                cl.stats.inc(cx.worker, U::RqTotal);
                self.rq_open = true;
                self.cluster = cluster;
                self.up_generation = table.generation;
                self.attempt = 0;
                self.up_requests = 1;
                self.fresh_only = false;
                self.resend = false;
                // The balancer's hash key (ring hash / Maglev by header or cookie), kept
                // for a pending request's later connect and for retries.
                self.lb_key = hash_key;
                self.set_cookie = set_cookie;
                if must_wait {
                    // Resumed by the worker's tick (`resume_pending`) once the cluster
                    // has a connection free, or ended by the route timeout.
                    cl.stats.inc(cx.worker, U::RqPendingTotal);
                    self.pending = true;
                    // The per-try timeout starts with the attempt, not the wait.
                    self.try_deadline_ms = 0;
                    cx.http.pending.push((slot, self.gen, self.served));
                    return Step::Continue;
                }
                self.connect_next(slot, cx, io)
            }
        }
    }

    /// A pending request (see `start_request`) gets its turn: connect when the cluster
    /// is under `max_connections`, else queue again (order kept by the worker).
    pub fn resume_pending(&mut self, slot: u32, seq: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        if !self.pending || self.served != seq || self.phase != Phase::Exchange {
            return Step::Continue; // a stale entry
        }
        // An idle pooled connection of the cluster is free for it too (with several
        // endpoints the balancer may still choose one without: then a connection
        // over the limit is opened — the limit is approximate, as across workers).
        let pooled = cx.http.pool.has(self.up_generation, self.cluster);
        let full = !pooled
            && self
                .table
                .as_ref()
                .and_then(|t| t.clusters.get(self.cluster as usize))
                .is_none_or(|cl| {
                    let open = cl.open_connections();
                    open >= u64::from(cl.breakers.max_connections)
                });
        if full {
            cx.http.pending.push((slot, self.gen, seq));
            return Step::Continue;
        }
        self.unpend(cx.worker);
        self.try_deadline_ms = self
            .retry
            .as_ref()
            .and_then(|r| r.per_try_timeout)
            .map_or(0, |t| cx.now_ms + ms(t));
        self.connect_next(slot, cx, io)
    }

    fn unpend(&mut self, worker: usize) {
        if self.pending {
            self.pending = false;
            if let Some(s) = &self.cstats {
                s.inc(worker, U::RqPendingDone);
            }
        }
    }

    /// Serve requests with the worker's newest table (the listener found by name).
    fn pick_up_table(&mut self, cx: &mut Ctx) {
        let Some(cur) = &self.table else { return };
        if Arc::ptr_eq(cur, cx.table) {
            return;
        }
        let name = &cur.listeners[self.listener as usize].name;
        if let Some(i) = cx.table.listeners.iter().position(|l| &l.name == name) {
            self.listener = i as u32;
            self.table = Some(cx.table.clone());
        }
    }

    fn write_request_head(
        &mut self,
        req: &codec::Request,
        path: (&[u8], &[u8]),
        request_id: Option<&[u8]>,
        edits: [&HeaderOps; 2],
        attempt: Option<u32>,
        io: &mut impl Io,
    ) -> Result<(), NoRoom> {
        let tl = self.tls.as_deref();
        let q = &mut self.out[Side::Down.idx()];
        let mut w = Writer::new();
        let r = (|| {
            w.put(q, io, req.method.as_bytes())?;
            w.put(q, io, b" ")?;
            w.put(q, io, path.0)?;
            w.put(q, io, path.1)?;
            w.put(q, io, b" HTTP/1.1\r\n")?;
            let mut xff: Option<&[u8]> = None;
            for h in req.headers {
                let n = h.name;
                if n.eq_ignore_ascii_case("x-forwarded-for") {
                    xff = Some(h.value);
                    continue;
                }
                let keep_upgrade = self.upgrade_req && n.eq_ignore_ascii_case("upgrade");
                if (hop_by_hop(n) || connection_listed(req.headers, n)) && !keep_upgrade
                    || n.eq_ignore_ascii_case("x-forwarded-proto")
                    // Written below, as the listener's XFCC policy says.
                    || n.eq_ignore_ascii_case("x-forwarded-client-cert")
                    || edits.iter().any(|e| e.drops(n))
                {
                    continue;
                }
                w.header(q, io, n.as_bytes(), h.value)?;
            }
            add_headers(&mut w, q, io, edits, req.headers)?;
            w.put(q, io, b"x-forwarded-for: ")?;
            if let Some(v) = xff {
                w.put(q, io, v)?;
                w.put(q, io, b", ")?;
            }
            w.put(q, io, &self.peer_text[..self.peer_len as usize])?;
            if tl.is_some_and(tls::Layer::client_tls) {
                w.put(q, io, b"\r\nx-forwarded-proto: https\r\n")?;
            } else {
                w.put(q, io, b"\r\nx-forwarded-proto: http\r\n")?;
            }
            // x-forwarded-client-cert (Envoy's forward_client_cert_details): the client's
            // elements when the policy keeps them, then ours (built at its handshake).
            let xfcc = self.table.as_deref().map_or_else(Default::default, |t| {
                t.listeners[self.listener as usize].xfcc
            });
            let mtls = tl.is_some_and(|l| l.cert_hash().is_some());
            let mut sep: &[u8] = b"x-forwarded-client-cert: ";
            if xfcc.keeps_client_header(mtls) {
                for h in req.headers {
                    if h.name.eq_ignore_ascii_case("x-forwarded-client-cert") {
                        w.put(q, io, sep)?;
                        w.put(q, io, h.value)?;
                        sep = b",";
                    }
                }
            }
            if let Some(e) = tl
                .and_then(tls::Layer::xfcc_element)
                .filter(|_| xfcc.sets_own(mtls))
            {
                w.put(q, io, sep)?;
                w.put(q, io, e.as_bytes())?;
                sep = b",";
            }
            if sep == b"," {
                w.put(q, io, b"\r\n")?;
            }
            if let Some(id) = request_id {
                w.header(q, io, b"x-request-id", id)?;
            }
            if self.upgrade_req {
                w.put(q, io, b"connection: upgrade\r\n")?;
            }
            if let Some(n) = attempt {
                // Last, so a replay can re-render it (see `keep_for_replay`).
                w.put(q, io, ATTEMPT_HEADER)?;
                w.num(q, io, n.into())?;
                w.put(q, io, b"\r\n")?;
            }
            w.put(q, io, b"\r\n")
        })();
        w.finish(q, io);
        r
    }

    /// Start (or continue) connecting upstream: attempt `self.attempt`, the balancer's
    /// choice first, then the endpoints after it.
    fn connect_next(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        // The first attempt: the balancer's endpoint, through the pool when it holds an
        // idle connection to it (without touching the table's refcount: this is every
        // keep-alive request's path). Later attempts go to the endpoints after it.
        let mut picked = None;
        if self.attempt == 0 {
            let (cluster, key, peer) = (self.cluster as usize, self.lb_key, self.peer);
            picked = self
                .table
                .as_ref()
                .and_then(|t| t.clusters.get(cluster))
                .and_then(|cl| {
                    let mut scratch = 0;
                    let cur = cursor(cx.cursors, &mut scratch, cluster);
                    cx.lb.set_key(key);
                    cl.pick(cx.lb, cur, peer, 0, cx.worker)
                });
            if let Some(ep) = picked {
                self.first_endpoint = ep as u32;
                if !self.fresh_only {
                    if let Some(idle) = self.take_pooled(slot, ep, cx, io) {
                        return self.attach_pooled(slot, idle, cx, io);
                    }
                }
            }
        }
        let Some(table) = self.table.clone() else {
            return self.close(slot, cx, io);
        };
        let cl = &table.clusters[self.cluster as usize];
        let mut opened = None;
        if self.attempt == 0 {
            if let Some(ep) = picked {
                let e = &cl.endpoints[ep];
                match crate::net::upstream_tcp_socket(&e.address) {
                    Ok(fd) => {
                        e.stats.inc(cx.worker, U::CxTotal);
                        cl.stats.inc(cx.worker, U::CxTotal);
                        opened = Some((e, fd));
                    }
                    Err(_) => {
                        e.stats.inc(cx.worker, U::Errors);
                        cl.stats.inc(cx.worker, U::Errors);
                        self.attempt = 1;
                    }
                }
            }
        }
        if opened.is_none() && self.attempt > 0 {
            opened = open_upstream(
                cl,
                self.cluster,
                &mut self.attempt,
                &mut self.first_endpoint,
                self.peer,
                cx,
            );
        }
        if let Some((e, fd)) = opened {
            self.up_endpoint = cl
                .endpoints
                .iter()
                .position(|x| std::ptr::eq(x, e))
                .unwrap_or(0) as u32;
            self.up_reused = false;
            self.estats = Some(e.stats.clone());
            self.ehealth = Some(e.health.clone());
            io.connect(self.me(slot), fd.as_raw_fd(), e.address);
            self.fds[Side::Up.idx()] = Some(fd);
            self.connect_inflight = true;
            self.connected = false;
            self.timed_out = false;
            self.eof[Side::Up.idx()] = false;
            self.shut[Side::Up.idx()] = false;
            self.connect_deadline_ms = cx.now_ms + ms(cl.connect_timeout);
            return Step::Continue;
        }
        self.fail(
            slot,
            Fail::Status(
                503,
                L::HttpNoHealthyUpstream,
                "upstream connect error\n",
                Cause::Connect,
            ),
            cx,
            io,
        )
    }

    /// An idle pooled connection to endpoint `ep` of the current cluster that is still
    /// open; ones found closed are dropped (counted) on the way.
    fn take_pooled(
        &mut self,
        slot: u32,
        ep: usize,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Option<Idle> {
        let gen = self.up_generation;
        let owner = (slot, self.gen);
        while let Some(idle) = cx.http.pool.take(gen, self.cluster, ep as u32, owner) {
            // An engine that kept the socket's receive armed while it idled knows of a
            // close or stray bytes without a syscall. Otherwise (and as a second look
            // for one idle a while) only a connection idle a while costs the check (a
            // syscall): a busy keep-alive path never pays it.
            if usable(&idle, cx.now_ms, io) {
                return Some(idle);
            }
            self.lcount(cx.worker, L::HttpUpstreamStale, 1);
            if let Some(t) = &self.table {
                super::pool::count_close(t, cx.worker, idle, cx.crypto, io);
            }
        }
        None
    }

    /// Use a pooled connection for the current request.
    fn attach_pooled(&mut self, slot: u32, idle: Idle, cx: &mut Ctx, io: &mut impl Io) -> Step {
        if let Some(e) = self
            .table
            .as_ref()
            .and_then(|t| t.clusters.get(self.cluster as usize))
            .and_then(|c| c.endpoints.get(idle.endpoint as usize))
        {
            // Usually the same endpoint as this connection's last request: no refcount
            // traffic on the shared counters.
            if !self
                .estats
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, &e.stats))
            {
                self.estats = Some(e.stats.clone());
            }
            // The endpoint's outlier detection hears how this exchange goes.
            if !self
                .ehealth
                .as_ref()
                .is_some_and(|h| Arc::ptr_eq(h, &e.health))
            {
                self.ehealth = Some(e.health.clone());
            }
        }
        io.attach(self.me(slot), Side::Up, idle.fd.as_raw_fd());
        if let Some(p) = idle.tls {
            self.tls_unpark_up(p);
        }
        self.fds[Side::Up.idx()] = Some(idle.fd);
        self.up_endpoint = idle.endpoint;
        self.up_requests = idle.requests + 1;
        self.up_reused = true;
        self.connect_inflight = false;
        self.connected = true;
        self.timed_out = false;
        self.eof[Side::Up.idx()] = false;
        self.shut[Side::Up.idx()] = false;
        self.last_ms = cx.now_ms;
        self.lcount(cx.worker, L::HttpUpstreamReuse, 1);
        self.drive(slot, cx, io)
    }

    /// The exchange ended with the upstream willing to go on: park its connection in
    /// the worker's pool (nothing is in flight on it).
    fn park_up(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) {
        let Ok(tls) = self.tls_park_up() else {
            // Its TLS session is not quiet: the connection cannot be handed on.
            return self.drop_up(cx, io);
        };
        let up = self.raw(Side::Up);
        // A session on the offload engine stays watched while parked and may hear its
        // peer's tickets or KeyUpdates there (the worker's session judges them); a plain
        // socket (or a kernel-TLS one, whose control records the pool cannot read) dies
        // on anything that arrives.
        let parked = up < 0
            || if tls.as_ref().is_some_and(|p| !p.is_kernel()) {
                io.park_session(self.me(slot), Side::Up, up)
            } else {
                io.park(self.me(slot), Side::Up, up)
            };
        if !parked {
            // The upstream already closed it or sent bytes past the response: the
            // next request must not find it in the pool.
            self.lcount(cx.worker, L::HttpUpstreamStale, 1);
            if let Some(p) = tls {
                p.release(cx.crypto.as_mut());
            }
            return self.drop_up(cx, io);
        }
        let Some(fd) = self.fds[Side::Up.idx()].take() else {
            return;
        };
        self.connected = false;
        self.up_reusable = false;
        let idle = Idle {
            fd,
            cluster: self.cluster,
            endpoint: self.up_endpoint,
            requests: self.up_requests,
            since_ms: cx.now_ms,
            owner: (slot, self.gen),
            tls,
        };
        match cx.http.pool.park(self.up_generation, idle) {
            Ok(None) => {}
            // The pool serves the worker's table: count with it.
            Ok(Some(old)) => super::pool::count_close(cx.table, cx.worker, old, cx.crypto, io),
            // A table older than the worker's: closed, counted here.
            Err(idle) => {
                io.drop_socket(idle.fd.as_raw_fd());
                if let Some(p) = idle.tls {
                    p.release(cx.crypto.as_mut());
                }
                self.ucount(cx.worker, U::CxClosed, 1);
            }
        }
    }

    /// Let go of the upstream connection (nothing is in flight on it between
    /// exchanges).
    fn drop_up(&mut self, cx: &mut Ctx, io: &mut impl Io) {
        self.tls_drop_up(cx, io);
        io.drop_socket(self.raw(Side::Up));
        if self.fds[Side::Up.idx()].take().is_some() {
            self.ucount(cx.worker, U::CxClosed, 1);
        }
        self.connected = false;
        self.up_reusable = false;
        self.estats = None;
        self.ehealth = None;
    }

    fn drive_exchange(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        // Request body: from the client's pending bytes into the upstream queue.
        if !self.req.done() && self.pend[0].is_some() && self.out[0].room() >= RECV_ROOM {
            if let Err(e) = self.pump(Side::Down, io) {
                let f = if self.awaiting_head {
                    self.keep_alive = false;
                    self.lcount(cx.worker, L::HttpBadRequest, 1);
                    Fail::Status(e.status(), L::Errors, e.as_str(), Cause::None)
                } else {
                    Fail::Reset
                };
                return self.fail(slot, f, cx, io);
            }
        }
        if self.mirror_n > 0 && self.req.done() {
            self.start_mirrors(cx, io);
        }
        if !self.req.done() && self.out[0].room() >= RECV_ROOM {
            self.arm_recv(slot, Side::Down, io);
        }
        self.send_front(slot, Side::Down, io);
        if self.connected {
            // Response: head first, then its body.
            if self.awaiting_head {
                match self.take_head(Side::Up, cx, io) {
                    Ok(true) => {
                        let scratch = std::mem::take(cx.scratch);
                        let r = self.start_response(&scratch, cx, io);
                        *cx.scratch = scratch;
                        if let Err(f) = r {
                            return self.fail(slot, f, cx, io);
                        }
                        if self.phase != Phase::Exchange {
                            return Step::Continue;
                        }
                    }
                    Ok(false) => {}
                    Err(_) => {
                        return self.fail(
                            slot,
                            Fail::Status(
                                502,
                                L::HttpBadGateway,
                                "upstream sent garbage\n",
                                Cause::Gateway,
                            ),
                            cx,
                            io,
                        )
                    }
                }
            }
            if !self.awaiting_head && self.pend[1].is_some() && self.out[1].room() >= RECV_ROOM {
                if self.resp.done() {
                    // Bytes past the response's end: not reused.
                    self.up_reusable = false;
                    self.consume(Side::Up, u32::MAX, io);
                } else if self.pump(Side::Up, io).is_err() {
                    return self.fail(slot, Fail::Reset, cx, io);
                }
            }
            let want_resp = self.awaiting_head || !self.resp.done();
            if want_resp && self.out[1].room() >= RECV_ROOM {
                self.arm_recv(slot, Side::Up, io);
            }
        }
        self.send_front(slot, Side::Up, io);
        // The exchange ends when the response is queued whole and the request was sent.
        if !self.awaiting_head && self.resp.done() {
            if !self.req.done() {
                // The upstream answered before the request body ended: finish the
                // response, then close (the rest of the body is not read).
                self.rq_end(cx.worker);
                self.keep_alive = false;
                self.phase = Phase::Flush;
                return Step::Continue;
            }
            if !self.out[0].idle() {
                return Step::Continue;
            }
            // Nothing is in flight on the upstream now (its receive is armed only
            // while the response is incomplete): keep it or let it go.
            self.rq_end(cx.worker);
            let limit = self
                .table
                .as_ref()
                .and_then(|t| t.clusters.get(self.cluster as usize))
                .map_or(0, |c| c.breakers.max_requests_per_connection);
            if limit > 0 && self.up_requests >= limit {
                self.up_reusable = false;
            }
            if self.up_reusable {
                self.park_up(slot, cx, io);
            } else {
                self.drop_up(cx, io);
            }
            self.route_deadline_ms = 0;
            self.phase = Phase::Flush;
        }
        Step::Continue
    }

    /// Move body bytes of `side`'s pending buffer into the opposite queue, zero-copy
    /// when the body takes the rest of the buffer.
    fn pump(&mut self, side: Side, io: &mut impl Io) -> Result<(), HttpError> {
        let s = side.idx();
        let Some((b, off, len)) = self.pend[s] else {
            return Ok(());
        };
        let limit = if side == Side::Down {
            self.max_body
        } else {
            u64::MAX
        };
        let data = &io.bytes(b)[off as usize..(off + len) as usize];
        let body = if side == Side::Down {
            &mut self.req
        } else {
            &mut self.resp
        };
        let n = body.feed(data, limit)? as u32;
        if n == 0 {
            return Ok(());
        }
        if side == Side::Down && self.replayable {
            if self.replay.len() + n as usize > REPLAY_CAP {
                // Streamed past the cap: this request is not retried.
                self.replayable = false;
            } else {
                self.replay.extend_from_slice(&data[..n as usize]);
            }
        }
        if self.out[s].append(io, b, off, n) {
            // Copied behind the head: one send for both.
            if n == len {
                io.release(b);
                self.pend[s] = None;
            } else {
                self.pend[s] = Some((b, off + n, len - n));
            }
        } else if n == len {
            self.out[s].push(b, off, len);
            self.pend[s] = None;
        } else {
            // The buffer holds the next message too: copy this body's part.
            let Some(w) = io.take() else {
                return Err(HttpError::BodyTooLarge);
            };
            copy_between(io, b, off as usize, w, 0, n as usize);
            self.out[s].push(w, 0, n);
            self.pend[s] = Some((b, off + n, len - n));
        }
        Ok(())
    }

    /// A complete response head is in `head`: forward it rewritten.
    fn start_response(&mut self, head: &[u8], cx: &mut Ctx, io: &mut impl Io) -> Result<(), Fail> {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let res = match codec::parse_response(head, &mut hs, self.head_req) {
            Ok(Some(r)) => r,
            _ => {
                return Err(Fail::Status(
                    502,
                    L::HttpBadGateway,
                    "upstream sent a malformed response\n",
                    Cause::Gateway,
                ))
            }
        };
        let informational = (100..200).contains(&res.status);
        if informational && res.status != 101 {
            // An upstream that sends interim responses without end would hold the
            // client (and a route without timeout) for ever.
            self.interim = self.interim.saturating_add(1);
            if self.interim > MAX_INTERIM {
                return Err(Fail::Status(
                    502,
                    L::HttpBadGateway,
                    "upstream sent too many interim responses\n",
                    Cause::Gateway,
                ));
            }
        }
        let tunnel = res.status == 101 && self.upgrade_req && res.repr.upgrade;
        if res.status == 101 && !tunnel {
            return Err(Fail::Status(
                502,
                L::HttpBadGateway,
                "upstream switched protocols unasked\n",
                Cause::Gateway,
            ));
        }
        if !informational {
            self.outlier(cx.worker, Outcome::Status(res.status));
        }
        if !informational && self.retry_on_status(res.status) && self.retry_admitted(cx) {
            return Err(Fail::Retry);
        }
        if !informational {
            self.awaiting_head = false;
            self.resp = Left::of(res.repr.body);
            self.up_reusable = res.repr.keep_alive && !matches!(res.repr.body, Body::UntilClose);
            if matches!(res.repr.body, Body::UntilClose) {
                // Only the close can end this body for the client too.
                self.keep_alive = false;
            }
        }
        self.count_status(cx.worker, res.status);
        let keep_alive = self.keep_alive;
        let minor = self.client_minor;
        let no_edits = HeaderOps::default();
        let (route_edits, vh_edits) = match (&self.table, self.route_ref) {
            (Some(t), Some((vi, ri))) => t.listeners[self.listener as usize]
                .http
                .as_ref()
                .and_then(|h| h.vhosts.get(vi as usize))
                .and_then(|vh| {
                    vh.routes
                        .get(ri as usize)
                        .map(|r| (&r.response_headers, &vh.response_headers))
                })
                .unwrap_or((&no_edits, &no_edits)),
            _ => (&no_edits, &no_edits),
        };
        let edits = [route_edits, vh_edits];
        let cookie = match (&self.table, self.set_cookie) {
            (Some(t), Some(v)) if !informational => t
                .hash_cookie(self.listener, self.route_ref, self.cluster)
                .map(|(name, attrs)| (name, v, attrs)),
            _ => None,
        };
        let q = &mut self.out[Side::Up.idx()];
        let mut w = Writer::new();
        let r = (|| {
            w.put(q, io, b"HTTP/1.1 ")?;
            w.num(q, io, res.status.into())?;
            w.put(q, io, b" ")?;
            w.put(q, io, reason(res.status).as_bytes())?;
            w.put(q, io, b"\r\n")?;
            for h in res.headers {
                let n = h.name;
                let keep_upgrade = tunnel && n.eq_ignore_ascii_case("upgrade");
                if (hop_by_hop(n) || connection_listed(res.headers, n)) && !keep_upgrade
                    || (!informational && edits.iter().any(|e| e.drops(n)))
                {
                    continue;
                }
                w.header(q, io, n.as_bytes(), h.value)?;
            }
            if !informational {
                add_headers(&mut w, q, io, edits, res.headers)?;
            }
            if let Some((name, value, attrs)) = cookie {
                w.put(q, io, b"set-cookie: ")?;
                w.put(q, io, name)?;
                w.put(q, io, b"=\"")?;
                w.put(q, io, &value)?;
                w.put(q, io, b"\"")?;
                w.put(q, io, attrs)?;
            }
            if tunnel {
                w.put(q, io, b"connection: upgrade\r\n")?;
            } else if !informational && !keep_alive {
                w.put(q, io, b"connection: close\r\n")?;
            } else if !informational && minor == 0 {
                w.put(q, io, b"connection: keep-alive\r\n")?;
            }
            w.put(q, io, b"\r\n")
        })();
        w.finish(q, io);
        if r.is_err() {
            return Err(Fail::Status(
                502,
                L::HttpBadGateway,
                "upstream response head too large\n",
                Cause::Gateway,
            ));
        }
        if tunnel {
            self.lcount(cx.worker, L::HttpUpgrades, 1);
            self.route_deadline_ms = 0;
            self.phase = Phase::Tunnel;
        }
        Ok(())
    }

    // === rate limits and mirrors ===

    /// The route's local rate limits (or its virtual host's when it has none): the
    /// configured bucket size and the time to the next fill of the first bucket that
    /// refused this request.
    fn rate_limited(
        &self,
        vh: &VHost,
        route: &HttpRoute,
        view: &RequestView,
        cx: &mut Ctx,
    ) -> Option<(u32, u64)> {
        let rules = if route.rate_limits.is_empty() {
            &vh.rate_limits
        } else {
            &route.rate_limits
        };
        for r in rules.iter() {
            let Some(spec) = r.bucket else { continue };
            let mut h = cx.http.limiter.hasher();
            if !r.descriptor(view, self.peer.map(|p| p.ip()), &mut h) {
                continue;
            }
            let v = cx
                .http
                .limiter
                .take(std::hash::Hasher::finish(&h), spec, cx.now_ms);
            if v.evicted {
                self.lcount(cx.worker, L::HttpRateLimitEvictions, 1);
            }
            if !v.allowed {
                return Some((spec.max_tokens, v.reset_ms));
            }
        }
        None
    }

    /// The request is whole: queue a shadow copy for each mirror chosen. Never fails
    /// the primary; what cannot be mirrored is counted.
    fn start_mirrors(&mut self, cx: &mut Ctx, io: &mut impl Io) {
        let n = std::mem::take(&mut self.mirror_n) as usize;
        if !self.replayable {
            self.lcount(cx.worker, L::HttpMirrorDropped, n as u64);
            return;
        }
        let Some(table) = self.table.as_ref() else {
            return;
        };
        let Some(lstats) = self.lstats.as_ref() else {
            return;
        };
        for &c in &self.mirror_to[..n] {
            let Some(cl) = table.clusters.get(c as usize) else {
                continue;
            };
            let active = cl.active_requests();
            let open_cx = cl.open_connections();
            let overloaded = active >= u64::from(cl.breakers.max_requests)
                || open_cx >= u64::from(cl.breakers.max_connections);
            let copy = if overloaded || cl.endpoints.is_empty() {
                None
            } else {
                cx.http.take_copy()
            };
            let Some(mut data) = copy else {
                lstats.inc(cx.worker, L::HttpMirrorDropped);
                continue;
            };
            shadow_head(&self.replay[..self.replay_head], &mut data);
            data.extend_from_slice(b"\r\n");
            data.extend_from_slice(&self.replay[self.replay_head..]);
            // The balancer picks the endpoint; an idle connection to it in the
            // worker's pool carries the shadow when there is one (shadows park theirs
            // there too), else a new socket.
            let mut scratch = 0;
            let cur = cursor(cx.cursors, &mut scratch, c as usize);
            let picked = cl.pick(cx.lb, cur, self.peer, 0, cx.worker);
            let mut up = None;
            if let Some(ep) = picked {
                while let Some(idle) = cx.http.pool.take(table.generation, c, ep as u32, NO_OWNER) {
                    if idle.tls.as_ref().is_some_and(|p| p.is_kernel()) {
                        // Shadows keep TLS records on the offload engine: a kernel-TLS
                        // connection goes back for client connections; a new one is made.
                        if let Err(i) | Ok(Some(i)) = cx.http.pool.park(table.generation, idle) {
                            super::pool::count_close(table, cx.worker, i, cx.crypto, io);
                        }
                        break;
                    }
                    if usable(&idle, cx.now_ms, io) {
                        lstats.inc(cx.worker, L::HttpUpstreamReuse);
                        up = Some(Upstream::Pooled(idle));
                        break;
                    }
                    lstats.inc(cx.worker, L::HttpUpstreamStale);
                    super::pool::count_close(table, cx.worker, idle, cx.crypto, io);
                }
                if up.is_none() {
                    let e = &cl.endpoints[ep];
                    match crate::net::upstream_tcp_socket(&e.address) {
                        Ok(fd) => {
                            e.stats.inc(cx.worker, U::CxTotal);
                            cl.stats.inc(cx.worker, U::CxTotal);
                            up = Some(Upstream::Fresh(fd));
                        }
                        Err(_) => {
                            e.stats.inc(cx.worker, U::Errors);
                            cl.stats.inc(cx.worker, U::Errors);
                        }
                    }
                }
            }
            match (picked, up) {
                // Two `Arc` clones per mirrored request (the shadow counts on the
                // cluster and endpoint it uses); mirrors are not the common path.
                (Some(ep), Some(up)) => {
                    let e = &cl.endpoints[ep];
                    let head_request = self.replay.starts_with(b"HEAD ");
                    cx.http.jobs.push(Job {
                        up,
                        addr: e.address,
                        data,
                        connect_timeout_ms: ms(cl.connect_timeout),
                        timeout_ms: self.mirror_ms,
                        lstats: lstats.clone(),
                        cstats: cl.stats.clone(),
                        estats: e.stats.clone(),
                        generation: table.generation,
                        cluster: c,
                        endpoint: ep as u32,
                        max_requests: cl.breakers.max_requests_per_connection,
                        head_request,
                        // An `Arc` clone per mirrored request to a TLS cluster.
                        tls: cl.tls.clone(),
                    })
                }
                _ => {
                    cx.http.give_back(data);
                    lstats.inc(cx.worker, L::HttpMirrorFailed);
                }
            }
        }
    }

    // === retries ===

    /// Copy the request head just queued upstream, minus its attempt header (when it
    /// has one) and its empty line, so a retry can send it again and a mirror can copy
    /// it; body bytes are added as they are forwarded.
    fn keep_for_replay(&mut self, attempt_header: bool, io: &mut impl Io) {
        self.replay.clear();
        let q = &self.out[Side::Down.idx()];
        for i in 0..q.count as usize {
            let k = (q.head as usize + i) % OUTQ;
            let (b, off, len) = (q.bufs[k], q.offs[k] as usize, q.lens[k] as usize);
            self.replay.extend_from_slice(&io.bytes(b)[off..off + len]);
        }
        // `…attempt-count: 1\r\n` and the empty line end the head.
        let tail = if attempt_header {
            ATTEMPT_HEADER.len() + 1 + 4
        } else {
            2
        };
        self.replayable = self.replay.len() >= tail;
        self.replay.truncate(self.replay.len().saturating_sub(tail));
        self.replay_head = self.replay.len();
    }

    /// Whether another attempt is allowed at all (policy, budget, request kept whole).
    fn can_retry(&self) -> bool {
        self.retry
            .as_ref()
            .is_some_and(|r| self.tries <= r.num_retries)
            && self.replayable
            && self.req.done()
    }

    fn retry_on_status(&self, status: u16) -> bool {
        let Some(r) = &self.retry else { return false };
        self.can_retry()
            && ((r.on_5xx && status >= 500)
                || (r.on_gateway_error && (502..=504).contains(&status))
                || (r.on_retriable_4xx && status == 409))
    }

    fn retry_on_cause(&self, cause: Cause) -> bool {
        let Some(r) = &self.retry else { return false };
        self.can_retry()
            && match cause {
                Cause::None => false,
                Cause::Connect => r.on_connect_failure,
                Cause::Reset => r.on_reset,
                Cause::Gateway => r.on_gateway_error,
                Cause::PerTry => r.on_5xx || r.on_gateway_error,
            }
    }

    /// Abandon the current attempt and wait a jittered exponential back-off (Envoy's:
    /// uniform in `[0, min(max, base × 2^(tries-1))]`), then send the request again.
    fn schedule_retry(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        self.lcount(cx.worker, L::HttpRetry, 1);
        self.abandon_attempt(slot, io);
        let (base, max) = self
            .retry
            .as_ref()
            .map_or((0, 0), |r| (ms(r.base_interval), ms(r.max_interval)));
        let upper = base
            .saturating_mul(1u64 << (self.tries - 1).min(20))
            .min(max.max(base));
        let delay = if upper > 0 {
            u64::from(cx.lb.next_u32()) % (upper + 1)
        } else {
            0
        };
        self.retry_at_ms = cx.now_ms + delay;
        self.phase = Phase::Backoff;
        Step::Continue
    }

    /// Stop the current attempt's upstream operations (the client's stay armed) and
    /// forget what of its response arrived.
    fn abandon_attempt(&mut self, slot: u32, io: &mut impl Io) {
        let up = self.raw(Side::Up);
        let busy = self.recv_armed[1] || self.out[0].inflight || self.connect_inflight;
        if busy && up >= 0 && io.cancel_all(self.me(slot), [-1, up]) {
            self.recv_armed[1] = false;
            self.out[0].inflight = false;
            self.connect_inflight = false;
        }
        self.up_reusable = false;
        self.acc.clear();
        self.resp = Left::Done;
        self.awaiting_head = true;
    }

    /// The back-off passed and the old upstream socket is quiet: send again.
    fn start_retry(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        self.drop_up(cx, io);
        self.out[Side::Down.idx()].release_all(io);
        for p in [Side::Up] {
            if let Some((b, _, _)) = self.pend[p.idx()].take() {
                io.release(b);
            }
        }
        if !std::mem::take(&mut self.resend) {
            self.tries += 1;
        }
        let q = &mut self.out[Side::Down.idx()];
        let mut w = Writer::new();
        let (head, body) = self.replay.split_at(self.replay_head);
        let tries = self.tries;
        // The replay head has the attempt header cut only when the route retries.
        let attempt_header = self.retry.is_some();
        let r = (|| {
            w.put(q, io, head)?;
            if attempt_header {
                w.put(q, io, ATTEMPT_HEADER)?;
                w.num(q, io, tries.into())?;
                w.put(q, io, b"\r\n")?;
            }
            w.put(q, io, b"\r\n")?;
            w.put(q, io, body)
        })();
        w.finish(q, io);
        if r.is_err() {
            self.lcount(cx.worker, L::HttpNoHealthyUpstream, 1);
            self.keep_alive = false;
            self.awaiting_head = false;
            self.phase = Phase::Exchange;
            return self.respond(slot, 503, b"no buffer to retry\n", cx, io);
        }
        self.try_deadline_ms = self
            .retry
            .as_ref()
            .and_then(|r| r.per_try_timeout)
            .map_or(0, |t| cx.now_ms + ms(t));
        self.phase = Phase::Exchange;
        self.attempt = 0;
        self.connect_next(slot, cx, io)
    }

    /// A retry may start only while the cluster's concurrent retries are under its
    /// retry budget (`budget_percent` of active requests, at least
    /// `min_retry_concurrency`) or, without one, `max_retries` (Envoy's default 3). A
    /// refused retry is counted; the failure then goes to the client as it is.
    fn retry_admitted(&mut self, cx: &mut Ctx) -> bool {
        if self.retry_open {
            return true; // this request's retry already holds its place
        }
        let Some(cl) = self
            .table
            .as_ref()
            .and_then(|t| t.clusters.get(self.cluster as usize))
        else {
            return false;
        };
        let s = &cl.stats;
        let retrying = s.get(U::RqRetryTotal).saturating_sub(s.get(U::RqRetryDone));
        let limit = match cl.breakers.retry_budget {
            Some((per_million, floor)) => {
                let active = cl.active_requests();
                (active.saturating_mul(u64::from(per_million)) / 1_000_000).max(u64::from(floor))
            }
            None => u64::from(cl.breakers.max_retries),
        };
        if retrying >= limit {
            s.inc(cx.worker, U::RqRetryOverflow);
            return false;
        }
        s.inc(cx.worker, U::RqRetryTotal);
        self.retry_open = true;
        true
    }

    /// The request goes upstream again after `rq_end` counted it done.
    fn rq_reopen(&mut self, worker: usize) {
        if !self.rq_open {
            self.rq_open = true;
            if let Some(s) = &self.cstats {
                s.inc(worker, U::RqTotal);
            }
        }
    }

    /// Whether a failure before the response is a pooled connection's stale close that
    /// may be answered by sending the request again (once, idempotent, kept whole,
    /// nothing of a response received).
    fn stale_resend_ok(&self) -> bool {
        self.awaiting_head
            && self.up_reused
            && !self.fresh_only
            && self.idempotent
            && self.replayable
            && self.req.done()
            && self.acc.is_empty()
            && self.pend[Side::Up.idx()].is_none()
    }

    /// Tell the current endpoint's outlier detection how an exchange went.
    #[inline]
    fn outlier(&self, worker: usize, o: Outcome) {
        if let (Some(h), Some(s)) = (&self.ehealth, &self.estats) {
            crate::cluster::health::record(h, s, worker, o);
        }
    }

    /// The current request stops counting as active on its cluster.
    fn rq_end(&mut self, worker: usize) {
        self.unpend(worker);
        if self.retry_open {
            self.retry_open = false;
            if let Some(s) = &self.cstats {
                s.inc(worker, U::RqRetryDone);
            }
        }
        if self.rq_open {
            self.rq_open = false;
            if let Some(s) = &self.cstats {
                s.inc(worker, U::RqDone);
            }
        }
    }

    fn count_status(&self, worker: usize, status: u16) {
        let k = match status {
            100..=199 => L::HttpRs1xx,
            200..=299 => L::HttpRs2xx,
            300..=399 => L::HttpRs3xx,
            400..=499 => L::HttpRs4xx,
            _ => L::HttpRs5xx,
        };
        self.lcount(worker, k, 1);
    }

    /// An exchange failed: a local status if nothing of the response went out yet,
    /// else a reset. The connection closes after it either way.
    fn fail(&mut self, slot: u32, f: Fail, cx: &mut Ctx, io: &mut impl Io) -> Step {
        // Reset, garbage or timeout before the response head: a gateway error for the
        // endpoint's outlier detection (a connect failure was counted in `on_connect`).
        // A pooled connection's stale close is no fault of the endpoint.
        if let Fail::Status(status, _, _, cause) = f {
            if self.awaiting_head
                && !self.stale_resend_ok()
                && (matches!(cause, Cause::Reset | Cause::Gateway | Cause::PerTry)
                    || (matches!(cause, Cause::None) && status == 504))
            {
                self.outlier(cx.worker, Outcome::LocalFailure);
            }
        }
        if !matches!(f, Fail::Retry) {
            self.rq_end(cx.worker);
        }
        match f {
            Fail::Retry => self.schedule_retry(slot, cx, io),
            Fail::Status(_, _, _, Cause::Reset) if self.stale_resend_ok() => {
                // A pooled connection the upstream had closed: not the request's fault,
                // not a retry; the same attempt goes again on a fresh connection.
                self.rq_reopen(cx.worker);
                self.lcount(cx.worker, L::HttpUpstreamStale, 1);
                self.fresh_only = true;
                self.resend = true;
                self.abandon_attempt(slot, io);
                self.retry_at_ms = cx.now_ms;
                self.phase = Phase::Backoff;
                let up_busy = self.recv_armed[1] || self.out[0].inflight || self.connect_inflight;
                if up_busy {
                    return Step::Continue; // the tick starts it once the socket is quiet
                }
                self.start_retry(slot, cx, io)
            }
            Fail::Status(_, _, _, cause)
                if self.awaiting_head && self.retry_on_cause(cause) && self.retry_admitted(cx) =>
            {
                // Another attempt: counted as an upstream request again (Envoy does).
                self.rq_reopen(cx.worker);
                self.schedule_retry(slot, cx, io)
            }
            Fail::Status(status, counter, text, _) if self.awaiting_head => {
                self.lcount(cx.worker, counter, 1);
                self.keep_alive = false;
                self.awaiting_head = false;
                self.respond(slot, status, text.as_bytes(), cx, io)
            }
            _ => {
                self.reset[Side::Down.idx()] = true;
                self.close(slot, cx, io)
            }
        }
    }

    /// Queue a local response and move to flushing it.
    fn respond(
        &mut self,
        slot: u32,
        status: u16,
        body: &[u8],
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        self.local(slot, status, body, None, Extra::None, cx, io)
    }

    fn redirect(
        &mut self,
        slot: u32,
        status: u16,
        host: &[u8],
        path: &[u8],
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        self.local(slot, status, b"", Some((host, path)), Extra::None, cx, io)
    }

    #[allow(clippy::too_many_arguments)]
    fn local(
        &mut self,
        slot: u32,
        status: u16,
        body: &[u8],
        location: Option<(&[u8], &[u8])>,
        extra: Extra,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        if !self.req.done() {
            // The request body is not read: the connection cannot carry another request.
            self.keep_alive = false;
        }
        self.count_status(cx.worker, status);
        let keep_alive = self.keep_alive;
        let minor = self.client_minor;
        let head_req = self.head_req;
        let q = &mut self.out[Side::Up.idx()];
        let mut w = Writer::new();
        let r = (|| {
            w.put(q, io, b"HTTP/1.1 ")?;
            w.num(q, io, status.into())?;
            w.put(q, io, b" ")?;
            w.put(q, io, reason(status).as_bytes())?;
            w.put(q, io, b"\r\ncontent-length: ")?;
            w.num(q, io, body.len() as u64)?;
            w.put(q, io, b"\r\n")?;
            if !body.is_empty() {
                w.put(q, io, b"content-type: text/plain\r\n")?;
            }
            match extra {
                Extra::None => {}
                Extra::Overloaded => w.put(q, io, b"x-tickmesh-overloaded: true\r\n")?,
                Extra::RateLimited { limit, reset_s } => {
                    w.put(q, io, b"x-ratelimit-limit: ")?;
                    w.num(q, io, limit.into())?;
                    w.put(
                        q,
                        io,
                        b"\r\nx-ratelimit-remaining: 0\r\nx-ratelimit-reset: ",
                    )?;
                    w.num(q, io, reset_s)?;
                    w.put(q, io, b"\r\n")?;
                }
            }
            if let Some((host, path)) = location {
                w.put(q, io, b"location: http://")?;
                w.put(q, io, host)?;
                w.put(q, io, path)?;
                w.put(q, io, b"\r\n")?;
            }
            if !keep_alive {
                w.put(q, io, b"connection: close\r\n")?;
            } else if minor == 0 {
                w.put(q, io, b"connection: keep-alive\r\n")?;
            }
            w.put(q, io, b"\r\n")?;
            if !head_req {
                w.put(q, io, body)?;
            }
            Ok::<(), NoRoom>(())
        })();
        w.finish(q, io);
        if r.is_err() {
            self.reset[Side::Down.idx()] = true;
            return self.close(slot, cx, io);
        }
        self.route_deadline_ms = 0;
        self.phase = Phase::Flush;
        self.drive(slot, cx, io)
    }

    fn drive_flush(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        self.send_front(slot, Side::Up, io);
        if !self.out[Side::Up.idx()].idle() {
            // A keep-alive connection's next request is received while its response
            // goes out: the receive rides the same submission as the send (io_uring),
            // instead of one more lap after the send completes. It is parsed only once
            // the response is out (`pend`, then `drive_head`), so order is kept.
            if self.keep_alive && !self.fallback {
                self.arm_recv(slot, Side::Down, io);
            }
            return Step::Continue;
        }
        let up_busy = self.recv_armed[1] || self.connect_inflight || !self.out[0].idle();
        if !self.keep_alive || up_busy || self.eof[0] {
            return self.close(slot, cx, io);
        }
        // Next request on this connection.
        self.phase = Phase::Head;
        self.req = Left::Done;
        self.awaiting_head = false;
        self.got_bytes = self.pend[0].is_some();
        self.head_deadline_ms = cx.now_ms + self.header_ms;
        self.last_ms = cx.now_ms;
        Step::Continue
    }

    fn drive_tunnel(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        for side in [Side::Down, Side::Up] {
            let s = side.idx();
            if let Some((b, off, len)) = self.pend[s] {
                if self.out[s].room() >= 1 {
                    self.out[s].push(b, off, len);
                    self.pend[s] = None;
                }
            }
            if self.out[s].room() >= RECV_ROOM {
                self.arm_recv(slot, side, io);
            }
            self.send_front(slot, side, io);
            // Half-close: pass a FIN on once everything before it went out.
            if self.eof[s] && !self.shut[s] && self.pend[s].is_none() && self.out[s].idle() {
                if let Some(fd) = &self.fds[side.other().idx()] {
                    // ENOTCONN if the peer already left; the close covers it.
                    let _ = SockRef::from(fd).shutdown(std::net::Shutdown::Write);
                }
                self.shut[s] = true;
            }
        }
        if self.shut[0] && self.shut[1] {
            return self.close(slot, cx, io);
        }
        Step::Continue
    }

    fn inflight(&self) -> bool {
        self.connect_inflight
            || self.recv_armed.iter().any(|&r| r)
            || self.out.iter().any(|q| q.inflight)
    }

    fn close(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        if self.phase != Phase::Closing && self.tls_linger(slot, cx, io) {
            return Step::Continue; // close_notify and the last records go out first
        }
        if self.phase != Phase::Closing {
            self.phase = Phase::Closing;
            if self.inflight()
                && io.cancel_all(self.me(slot), [self.raw(Side::Down), self.raw(Side::Up)])
            {
                self.connect_inflight = false;
                self.recv_armed = [false; 2];
                for q in &mut self.out {
                    q.inflight = false;
                }
            }
        }
        if self.inflight() {
            return Step::Continue;
        }
        for q in &mut self.out {
            q.release_all(io);
        }
        for p in &mut self.pend {
            if let Some((b, _, _)) = p.take() {
                io.release(b);
            }
        }
        io.forget(self.me(slot), [self.raw(Side::Down), self.raw(Side::Up)]);
        for s in [Side::Down, Side::Up] {
            if let Some(fd) = self.fds[s.idx()].take() {
                if self.reset[s.idx()] {
                    // Best effort: without it the peer gets a FIN instead of an RST.
                    let _ = SockRef::from(&fd).set_linger(Some(Duration::ZERO));
                }
                if s == Side::Up {
                    self.ucount(cx.worker, U::CxClosed, 1);
                }
                drop(fd);
            }
        }
        self.rq_end(cx.worker);
        self.lcount(cx.worker, L::CxClosed, 1);
        // Counts first: whoever sees the connection gone sees its records counted.
        self.tls_release(cx, io);
        *cx.open -= 1;
        self.acc.clear();
        if self.acc.capacity() > 2 * BUF_SIZE {
            // A huge head once should not pin 64 KiB to the slot forever.
            self.acc = Vec::new();
        }
        if self.path_buf.capacity() > BUF_SIZE {
            self.path_buf = Vec::new();
        }
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

/// Write the headers `edits` add (route level first), honouring `ADD_IF_ABSENT`
/// against the message's own `headers`.
fn add_headers(
    w: &mut Writer,
    q: &mut OutQ,
    io: &mut impl Io,
    edits: [&HeaderOps; 2],
    headers: &[httparse::Header],
) -> Result<(), NoRoom> {
    for e in edits {
        for (name, value, how) in e.add.iter() {
            if *how == Append::IfAbsent && codec::header(headers, name).is_some() {
                continue;
            }
            w.header(q, io, name.as_bytes(), value)?;
        }
    }
    Ok(())
}

/// Copy `len` bytes from buffer `src` (from `off`) to buffer `dst` (from `at`).
fn copy_between(io: &mut impl Io, src: BufId, off: usize, dst: BufId, at: usize, len: usize) {
    // Two buffers of the pool cannot be borrowed at once through `Io`; go through a
    // stack block (small bodies behind their head, and bodies split by pipelining).
    let mut tmp = [0u8; 1024];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(tmp.len());
        tmp[..n].copy_from_slice(&io.bytes(src)[off + done..off + done + n]);
        io.bytes_mut(dst)[at + done..at + done + n].copy_from_slice(&tmp[..n]);
        done += n;
    }
}

/// The end of a head (after its empty line) at the start of `data`, if complete.
pub(crate) fn head_end(data: &[u8]) -> Option<usize> {
    // Empty lines before the start line are not the end of a head (the codec skips them).
    let mut i = codec::skip_empty_lines(data);
    while i < data.len() {
        let nl = data[i..].iter().position(|&b| b == b'\n')? + i;
        match data.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if data.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// Refuse an incomplete head that is already wrong.
fn check_partial(side: Side, data: &[u8]) -> Result<(), HttpError> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match side {
        Side::Down => codec::parse_request(data, &mut hs).map(|_| ()),
        Side::Up => codec::parse_response(data, &mut hs, false).map(|_| ()),
    }
}

/// A random version-4 UUID for `x-request-id`, from the worker's generator.
fn new_request_id(cx: &mut Ctx) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    thread_local! {
        // Per worker thread, once: the balancer's generator is seeded the same in every
        // run, request ids must not repeat across restarts.
        static SALT: u64 = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x7469_636b);
            h.finish()
        };
    }
    let salt = SALT.with(|s| *s);
    let mut r = [0u8; 16];
    for (i, c) in r.chunks_mut(4).enumerate() {
        let x = cx.lb.next_u32() ^ (salt >> ((i & 1) * 32)) as u32;
        c.copy_from_slice(&x.to_le_bytes());
    }
    r[6] = (r[6] & 0x0f) | 0x40;
    r[8] = (r[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    let mut j = 0;
    for (i, b) in r.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            j += 1;
        }
        out[j] = HEX[(b >> 4) as usize];
        out[j + 1] = HEX[(b & 0xf) as usize];
        j += 2;
    }
    out
}

/// The client's address as text (no port), for `X-Forwarded-For`.
/// Written into `buf` (also "unknown" without an address).
fn ip_text(peer: Option<SocketAddr>, buf: &mut [u8; 48]) -> &[u8] {
    use std::io::Write;
    let mut c = std::io::Cursor::new(&mut buf[..]);
    // 48 bytes hold any IPv4 or IPv6 text form (at most 45).
    let _ = match peer {
        Some(p) => write!(c, "{}", p.ip()),
        None => c.write_all(b"unknown"),
    };
    let n = c.position() as usize;
    &buf[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_finds_the_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nx"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nx"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn sniffing() {
        assert!(looks_like_http1(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http1(b"\r\nPOST"));
        assert!(!looks_like_http1(b"\x16\x03\x01\x00"));
        assert!(!looks_like_http1(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!looks_like_http1(b"SSH-2.0-OpenSSH_9.2"));
        assert!(looks_like_http1(b"DELE"));
        assert!(!looks_like_http1(b"\x00\x01binary"));
    }

    #[test]
    fn client_addresses_as_forwarded_text() {
        let mut b = [0u8; 48];
        assert_eq!(ip_text("10.1.2.3:80".parse().ok(), &mut b), b"10.1.2.3");
        assert_eq!(ip_text("[::1]:80".parse().ok(), &mut b), b"::1");
        let long: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:1"
            .parse()
            .unwrap();
        assert_eq!(ip_text(Some(long), &mut b).len(), 39);
        assert_eq!(ip_text(None, &mut b), b"unknown");
        assert_eq!(&b[..7], b"unknown");
    }

    #[test]
    fn request_ids_are_uuid_shaped() {
        let mut lb = crate::cluster::LbState::new(7);
        let mut cursors = [];
        let mut starved = Vec::new();
        let mut open = 0;
        let mut scratch = Vec::new();
        let table = Arc::new(RouteTable::empty());
        let mut http = crate::proxy::http::Worker::new(0, 1);
        let mut cx = Ctx {
            http: &mut http,
            worker: 0,
            now_ms: 0,
            lb: &mut lb,
            cursors: &mut cursors,
            starved: &mut starved,
            open: &mut open,
            scratch: &mut scratch,
            table: &table,
            crypto: &mut None,
        };
        let a = new_request_id(&mut cx);
        let b = new_request_id(&mut cx);
        assert_ne!(a, b);
        let s = std::str::from_utf8(&a).unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_eq!(s.matches('-').count(), 4);
    }
}
