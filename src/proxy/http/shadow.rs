//! Mirrored requests ("shadows"): a copy of a request sent to a route's mirror cluster,
//! fire-and-forget, as Envoy's `request_mirror_policies` and Istio's `mirror` do.
//!
//! Owns the per-worker HTTP state that outlives one client connection ([`Worker`]: the
//! request copies, the queue of shadows to start, the requests waiting for a
//! connection, the rate-limit table, the idle upstream connections) and the shadow
//! connection's state machine ([`Shadow`]), which lives in a slot of the worker's
//! connection slab beside the client connections and is driven by the same completions.
//!
//! What a shadow must never do: delay, change or fail the primary exchange. The primary
//! only copies its request (kept anyway for retries, up to the replay cap) into a
//! [`Worker`] buffer and queues a [`Job`] with its connection (a new socket, or an idle
//! one from the pool); everything else
//! happens in the shadow's own slot. A shadow's response head is parsed (a status line
//! is success, whatever the status) and its body framed and discarded; a connection
//! whose response ended cleanly with keep-alive goes back to the worker's pool of idle
//! upstream connections, which shadows take from like client connections do.
//! (Shadows do not originate TLS: a mirror to a TLS cluster is dropped and counted.)
//!
//! Bounds: at most [`MAX_SHADOWS`] shadows per worker exist at once (queued or running);
//! further mirrors are dropped and counted (`http_mirror_dropped`). Each running shadow
//! holds at most one pool write buffer and one receive buffer; a response head is
//! gathered in the request copy's buffer once the request went out (up to
//! `codec::MAX_HEAD`). Request copies are
//! `Vec`s whose capacity the worker keeps for the next shadow, so the steady state does
//! not allocate; copies above [`KEEP_CAPACITY`] are let go when they come back.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::codec::{parse_response, MAX_HEADERS};
use super::conn::Left;
use super::pool::Idle;
use crate::proxy::l4::tcp::BUF_SIZE;
use crate::proxy::l4::{BufId, ConnRef, Ctx, Io, Side, Step};
use crate::telemetry::{ListenerCounter as L, ListenerStats, UpstreamCounter as U, UpstreamStats};

use super::ratelimit::Limiter;

/// Shadow requests a worker runs (or has queued) at once.
pub const MAX_SHADOWS: usize = 64;
/// Requests a worker keeps waiting for a connection (`max_pending_requests`).
pub const MAX_PENDING: usize = 4096;
/// Request copies larger than this are not kept for reuse.
const KEEP_CAPACITY: usize = 64 * 1024;

/// How a shadow reaches its endpoint.
pub enum Upstream {
    /// A new socket to connect (counted on the cluster and endpoint already).
    Fresh(OwnedFd),
    /// An idle connection taken from the worker's pool (checked usable).
    Pooled(Idle),
}

/// A shadow request ready to start: its connection and its bytes.
pub struct Job {
    pub up: Upstream,
    pub addr: SocketAddr,
    /// The whole request: head with the `-shadow` host, then the body.
    pub data: Vec<u8>,
    pub connect_timeout_ms: u64,
    /// The route timeout, from the mirror's start.
    pub timeout_ms: u64,
    pub lstats: Arc<ListenerStats>,
    pub cstats: Arc<UpstreamStats>,
    pub estats: Arc<UpstreamStats>,
    /// Where the connection is parked afterwards: the pool's table generation, the
    /// cluster and endpoint indices there, the cluster's `max_requests_per_connection`
    /// (0: no limit).
    pub generation: u64,
    pub cluster: u32,
    pub endpoint: u32,
    pub max_requests: u32,
    /// A HEAD request: its response has no body whatever its headers say.
    pub head_request: bool,
}

/// The HTTP state of one worker shared by its connections.
pub struct Worker {
    /// Workers of the engine (local rate limits divide their buckets among them).
    pub workers: usize,
    /// Request copies not in use, capacity kept.
    spare: Vec<Vec<u8>>,
    /// Copies out: in `jobs` or held by a running shadow.
    out: usize,
    /// Shadows to start; the worker drains this after each event.
    pub jobs: Vec<Job>,
    /// Requests waiting for a connection, in arrival order: (slot, generation, the
    /// connection's request number), resumed by the worker's tick.
    pub pending: Vec<(u32, u16, u32)>,
    pub limiter: Limiter,
    /// Idle upstream connections shared by the worker's client connections.
    pub pool: super::pool::Pool,
}

impl Worker {
    pub fn new(worker: usize, workers: usize) -> Worker {
        Worker {
            workers: workers.max(1),
            spare: Vec::with_capacity(MAX_SHADOWS),
            out: 0,
            jobs: Vec::with_capacity(MAX_SHADOWS),
            pending: Vec::with_capacity(MAX_PENDING),
            pool: super::pool::Pool::default(),
            limiter: Limiter::new(worker, workers.max(1)),
        }
    }

    /// An empty buffer for one more shadow request; `None` when [`MAX_SHADOWS`] are out.
    pub fn take_copy(&mut self) -> Option<Vec<u8>> {
        if self.out >= MAX_SHADOWS {
            return None;
        }
        self.out += 1;
        // Allocates only while the worker warms up (at most MAX_SHADOWS buffers).
        Some(self.spare.pop().unwrap_or_default())
    }

    /// A copy comes back (its shadow ended, or it was never started).
    pub fn give_back(&mut self, mut v: Vec<u8>) {
        self.out = self.out.saturating_sub(1);
        if v.capacity() > KEEP_CAPACITY {
            return;
        }
        v.clear();
        self.spare.push(v);
    }

    /// Shadows queued or running.
    pub fn shadows_out(&self) -> usize {
        self.out
    }
}

/// Copy a request head (request line and header lines, each ending in CRLF, without
/// the empty line) into `out`, with `-shadow` added to the host of the `Host` header
/// before its port (`api:8080` → `api-shadow:8080`), as Envoy marks shadow traffic.
pub fn shadow_head(head: &[u8], out: &mut Vec<u8>) {
    let mut first = true;
    for line in head.split_inclusive(|&b| b == b'\n') {
        let is_host = !first
            && line.len() >= 5
            && line[..5].eq_ignore_ascii_case(b"host:")
            && line.ends_with(b"\n");
        first = false;
        if !is_host {
            out.extend_from_slice(line);
            continue;
        }
        let value = trim(&line[5..]);
        let (host, port) = split_port(value);
        out.extend_from_slice(&line[..5]);
        out.push(b' ');
        out.extend_from_slice(host);
        out.extend_from_slice(b"-shadow");
        out.extend_from_slice(port);
        out.extend_from_slice(b"\r\n");
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &v[s..e.max(s)]
}

/// `host:port` → (`host`, `:port`); `[v6]:port` → (`[v6]`, `:port`); no port → (all, "").
fn split_port(v: &[u8]) -> (&[u8], &[u8]) {
    let from = if v.first() == Some(&b'[') {
        v.iter().position(|&b| b == b']').unwrap_or(0)
    } else {
        0
    };
    match v[from..].iter().rposition(|&b| b == b':') {
        Some(i) if v[from + i + 1..].iter().all(u8::is_ascii_digit) => v.split_at(from + i),
        _ => (v, &v[v.len()..]),
    }
}

/// One shadow request in flight. Its socket is the slot's `Up` side; sends go "from
/// `Down`" in the engine's terms.
#[derive(Debug, Default)]
pub struct Shadow {
    pub gen: u16,
    pub pos: u32,
    live: bool,
    closing: bool,
    fd: Option<OwnedFd>,
    data: Vec<u8>,
    /// Bytes of `data` handed to sends that completed.
    sent: usize,
    /// The write buffer being sent: (buffer, offset, length left).
    wbuf: Option<(BufId, u32, u32)>,
    connect_inflight: bool,
    send_inflight: bool,
    recv_armed: bool,
    starved: bool,
    /// The response (or the failure) was counted and the request is done.
    settled: bool,
    /// A response head arrived: the mirror succeeded, whatever follows.
    answered: bool,
    /// What is left of the response body once its head arrived (`None`: waiting for
    /// the head, gathered in `data`).
    resp: Option<Left>,
    /// The connection may be parked when the response ends.
    keep: bool,
    generation: u64,
    cluster: u32,
    endpoint: u32,
    max_requests: u32,
    /// Requests sent on the connection, this one included.
    requests: u32,
    head_request: bool,
    connect_deadline_ms: u64,
    deadline_ms: u64,
    lstats: Option<Arc<ListenerStats>>,
    cstats: Option<Arc<UpstreamStats>>,
    estats: Option<Arc<UpstreamStats>>,
}

impl Shadow {
    pub fn is_free(&self) -> bool {
        !self.live
    }

    fn me(&self, slot: u32) -> ConnRef {
        ConnRef {
            slot,
            gen: self.gen,
        }
    }

    fn raw(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, |f| f.as_raw_fd())
    }

    fn ucount(&self, worker: usize, k: U, n: u64) {
        for s in [&self.cstats, &self.estats].into_iter().flatten() {
            s.add(worker, k, n);
        }
    }

    /// Start a queued shadow in slot `slot`.
    pub fn open(&mut self, slot: u32, job: Job, cx: &mut Ctx, io: &mut impl Io) -> Step {
        debug_assert!(!self.live);
        let requests = match &job.up {
            Upstream::Fresh(_) => 1,
            Upstream::Pooled(i) => i.requests.saturating_add(1),
        };
        *self = Shadow {
            gen: self.gen,
            pos: self.pos,
            live: true,
            data: job.data,
            generation: job.generation,
            cluster: job.cluster,
            endpoint: job.endpoint,
            max_requests: job.max_requests,
            requests,
            head_request: job.head_request,
            connect_deadline_ms: cx.now_ms + job.connect_timeout_ms.max(1),
            deadline_ms: if job.timeout_ms == 0 {
                u64::MAX
            } else {
                cx.now_ms + job.timeout_ms
            },
            lstats: Some(job.lstats),
            cstats: Some(job.cstats),
            estats: Some(job.estats),
            ..Shadow::default()
        };
        *cx.open += 1;
        if let Some(s) = &self.lstats {
            s.inc(cx.worker, L::HttpMirrored);
        }
        self.ucount(cx.worker, U::RqTotal, 1);
        let me = self.me(slot);
        // A shadow has no client socket: this only registers the slot with the engine.
        io.adopt(me, -1);
        match job.up {
            Upstream::Fresh(fd) => {
                io.connect(me, fd.as_raw_fd(), job.addr);
                self.fd = Some(fd);
                self.connect_inflight = true;
                Step::Continue
            }
            Upstream::Pooled(idle) => {
                io.attach(me, Side::Up, idle.fd.as_raw_fd());
                self.fd = Some(idle.fd);
                self.send_more(slot, cx, io)
            }
        }
    }

    pub fn on_connect(&mut self, slot: u32, res: i32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        self.connect_inflight = false;
        if self.closing {
            return self.close(slot, cx, io);
        }
        if res < 0 {
            let k = if res == -libc::ETIMEDOUT {
                U::ConnectTimeout
            } else {
                U::ConnectFail
            };
            self.ucount(cx.worker, k, 1);
            return self.fail(slot, cx, io);
        }
        self.send_more(slot, cx, io)
    }

    /// Send the next piece of the request, or arm the response's receive when all of
    /// it went out.
    fn send_more(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        let fd = self.raw();
        let me = self.me(slot);
        if let Some((b, off, left)) = self.wbuf {
            if left > 0 {
                self.send_inflight = true;
                io.send(me, Side::Down, fd, b, off, left);
                return Step::Continue;
            }
        }
        if self.sent < self.data.len() {
            let b = match self.wbuf {
                Some((b, _, _)) => b,
                None => match io.take() {
                    Some(b) => b,
                    None => return self.fail(slot, cx, io),
                },
            };
            let n = (self.data.len() - self.sent).min(BUF_SIZE);
            io.bytes_mut(b)[..n].copy_from_slice(&self.data[self.sent..self.sent + n]);
            self.sent += n;
            self.wbuf = Some((b, 0, n as u32));
            self.send_inflight = true;
            io.send(me, Side::Down, fd, b, 0, n as u32);
            return Step::Continue;
        }
        if let Some((b, _, _)) = self.wbuf.take() {
            io.release(b);
        }
        // The request went out whole: its copy's buffer gathers the response head.
        self.data.clear();
        self.arm_recv(slot, io);
        Step::Continue
    }

    fn arm_recv(&mut self, slot: u32, io: &mut impl Io) {
        if self.recv_armed || self.starved {
            return;
        }
        self.recv_armed = true;
        // The socket is the shadow's until it parks or closes it (see `close`).
        io.recv_multi(self.me(slot), Side::Up, self.raw());
    }

    pub fn on_send(
        &mut self,
        slot: u32,
        _from: Side,
        res: i32,
        cx: &mut Ctx,
        io: &mut impl Io,
    ) -> Step {
        self.send_inflight = false;
        if self.closing {
            return self.close(slot, cx, io);
        }
        if res < 0 {
            self.ucount(cx.worker, U::UpstreamResets, 1);
            return self.fail(slot, cx, io);
        }
        self.ucount(cx.worker, U::BytesSent, res as u64);
        if let Some((b, off, left)) = self.wbuf {
            let n = (res as u32).min(left);
            self.wbuf = Some((b, off + n, left - n));
        }
        self.send_more(slot, cx, io)
    }

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
        self.recv_armed = false;
        let got = match buf {
            Some(b) if res > 0 && !self.closing => Some((b, res as usize)),
            Some(b) => {
                io.release(b);
                None
            }
            None => None,
        };
        if self.closing {
            return self.close(slot, cx, io);
        }
        if res == -libc::ENOBUFS {
            self.starved = true;
            cx.starved.push((slot, side));
            return Step::Continue;
        }
        let Some((b, n)) = got else {
            // The end of the stream (or an error): the end of a response delimited by
            // closing, or a failure when no response head came.
            if !self.answered {
                self.ucount(cx.worker, U::UpstreamResets, 1);
                return self.fail(slot, cx, io);
            }
            return self.close(slot, cx, io);
        };
        self.ucount(cx.worker, U::BytesReceived, n as u64);
        match self.resp.as_mut() {
            Some(left) => {
                let r = left.feed(&io.bytes(b)[..n], u64::MAX);
                io.release(b);
                if r.map_or(true, |k| k < n) {
                    // Bad framing, or bytes past the response's end: not reused.
                    self.keep = false;
                    return self.close(slot, cx, io);
                }
            }
            None => {
                self.data.extend_from_slice(&io.bytes(b)[..n]);
                io.release(b);
                if let Some(step) = self.on_head_bytes(slot, cx, io) {
                    return step;
                }
            }
        }
        if self.resp.is_some_and(|l| l.done()) {
            return self.finish(slot, cx, io);
        }
        self.arm_recv(slot, io);
        Step::Continue
    }

    /// Bytes of the response head arrived (gathered in `data`): parse it when whole.
    /// `Some`: the shadow is done with (failed, or closing).
    fn on_head_bytes(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Option<Step> {
        // Interim (1xx) responses are skipped; each pass drops one.
        for _ in 0..8 {
            let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let head = match parse_response(&self.data, &mut hs, self.head_request) {
                Err(_) => return Some(self.fail(slot, cx, io)),
                Ok(None) => return None,
                Ok(Some(r)) => (r.status, r.repr),
            };
            let (status, repr) = head;
            if (100..200).contains(&status) && status != 101 {
                self.data.drain(..repr.len);
                continue;
            }
            // The shadow answered: that is all a mirror counts (the request is done
            // for the cluster when its response ended, or the connection closed).
            self.answered = true;
            let mut left = Left::of(repr.body);
            let until_close = matches!(left, Left::UntilClose);
            self.keep = repr.keep_alive && status != 101 && !until_close;
            if !self.keep {
                // Its body is not wanted, and the connection is not kept.
                return Some(self.close(slot, cx, io));
            }
            let rest = &self.data[repr.len..];
            let whole = left.feed(rest, u64::MAX).is_ok_and(|k| k == rest.len());
            self.data.clear();
            self.resp = Some(left);
            if !whole {
                self.keep = false;
                return Some(self.close(slot, cx, io));
            }
            return None;
        }
        Some(self.fail(slot, cx, io))
    }

    /// The response ended: park the connection in the worker's pool when it may carry
    /// another request, then free the slot.
    fn finish(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        let fd = self.raw();
        let reuse = self.keep
            && fd >= 0
            && (self.max_requests == 0 || self.requests < self.max_requests)
            && io.park(self.me(slot), Side::Up, fd);
        if reuse {
            if let Some(fd) = self.fd.take() {
                let idle = Idle {
                    fd,
                    cluster: self.cluster,
                    endpoint: self.endpoint,
                    requests: self.requests,
                    since_ms: cx.now_ms,
                    owner: (u32::MAX, 0),
                    tls: None,
                };
                match cx.http.pool.park(self.generation, idle) {
                    Ok(None) => {}
                    Ok(Some(old)) => {
                        super::pool::count_close(cx.table, cx.worker, old, cx.crypto, io)
                    }
                    Err(idle) => {
                        // Parked for a table the worker no longer serves.
                        io.drop_socket(idle.fd.as_raw_fd());
                        self.ucount(cx.worker, U::CxClosed, 1);
                    }
                }
            }
        }
        self.close(slot, cx, io)
    }

    pub fn rearm(&mut self, slot: u32, _side: Side, cx: &mut Ctx, io: &mut impl Io) -> Step {
        self.starved = false;
        if !self.live {
            return Step::Continue;
        }
        if self.closing {
            return self.close(slot, cx, io);
        }
        self.arm_recv(slot, io);
        Step::Continue
    }

    pub fn on_tick(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        if self.closing {
            return self.close(slot, cx, io);
        }
        let now = cx.now_ms;
        if self.connect_inflight && now >= self.connect_deadline_ms {
            self.ucount(cx.worker, U::ConnectTimeout, 1);
            return self.fail(slot, cx, io);
        }
        if now >= self.deadline_ms {
            return self.fail(slot, cx, io);
        }
        Step::Continue
    }

    pub fn abort(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        if !self.live {
            return Step::Free;
        }
        self.fail(slot, cx, io)
    }

    /// The request is over for the cluster's active count.
    fn settle(&mut self, worker: usize) {
        if !self.settled {
            self.settled = true;
            self.ucount(worker, U::RqDone, 1);
        }
    }

    fn fail(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        if !self.settled && !self.answered {
            if let Some(s) = &self.lstats {
                s.inc(cx.worker, L::HttpMirrorFailed);
            }
            self.settle(cx.worker);
        }
        self.close(slot, cx, io)
    }

    fn inflight(&self) -> bool {
        self.connect_inflight || self.send_inflight || self.recv_armed
    }

    fn close(&mut self, slot: u32, cx: &mut Ctx, io: &mut impl Io) -> Step {
        if !self.closing {
            self.closing = true;
            if self.inflight() && io.cancel_all(self.me(slot), [-1, self.raw()]) {
                self.connect_inflight = false;
                self.send_inflight = false;
                self.recv_armed = false;
            }
        }
        if self.inflight() || self.starved {
            // Completions (or the starved receive's retry) still name this slot.
            return Step::Continue;
        }
        if let Some((b, _, _)) = self.wbuf.take() {
            io.release(b);
        }
        io.drop_socket(self.raw());
        if self.fd.take().is_some() {
            self.ucount(cx.worker, U::CxClosed, 1);
        }
        self.settle(cx.worker);
        cx.http.give_back(std::mem::take(&mut self.data));
        *cx.open -= 1;
        self.lstats = None;
        self.cstats = None;
        self.estats = None;
        self.live = false;
        self.closing = false;
        self.gen = self.gen.wrapping_add(1);
        Step::Free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shadow(head: &str) -> String {
        let mut out = Vec::new();
        shadow_head(head.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn host_gets_the_shadow_suffix_before_its_port() {
        assert_eq!(
            shadow("GET / HTTP/1.1\r\nHost: api.local\r\nx: 1\r\n"),
            "GET / HTTP/1.1\r\nHost: api.local-shadow\r\nx: 1\r\n"
        );
        assert_eq!(
            shadow("GET / HTTP/1.1\r\nhost:  api:8080 \r\n"),
            "GET / HTTP/1.1\r\nhost: api-shadow:8080\r\n"
        );
        assert_eq!(
            shadow("GET / HTTP/1.1\r\nHOST: [::1]:80\r\n"),
            "GET / HTTP/1.1\r\nHOST: [::1]-shadow:80\r\n"
        );
        assert_eq!(
            shadow("GET / HTTP/1.1\r\nHost: [::1]\r\n"),
            "GET / HTTP/1.1\r\nHost: [::1]-shadow\r\n"
        );
        // A request line or another header that mentions host: is left alone.
        assert_eq!(
            shadow("GET /host: HTTP/1.1\r\nx-host: a\r\n"),
            "GET /host: HTTP/1.1\r\nx-host: a\r\n"
        );
        // Odd values are still marked, never dropped.
        assert_eq!(
            shadow("GET / HTTP/1.1\r\nHost: a:b\r\n"),
            "GET / HTTP/1.1\r\nHost: a:b-shadow\r\n"
        );
        assert_eq!(
            shadow("GET / HTTP/1.1\r\nHost:\r\n"),
            "GET / HTTP/1.1\r\nHost: -shadow\r\n"
        );
    }

    #[test]
    fn copies_are_bounded_and_reused() {
        let mut w = Worker::new(0, 1);
        let mut held = Vec::new();
        for _ in 0..MAX_SHADOWS {
            let mut v = w.take_copy().expect("under the cap");
            v.extend_from_slice(b"request");
            held.push(v);
        }
        assert!(w.take_copy().is_none(), "the cap holds");
        for v in held {
            w.give_back(v);
        }
        assert_eq!(w.shadows_out(), 0);
        let v = w.take_copy().unwrap();
        assert!(
            v.is_empty() && v.capacity() >= 7,
            "capacity kept, contents cleared"
        );
        let mut big = Vec::with_capacity(KEEP_CAPACITY + 1);
        big.push(1);
        w.give_back(v);
        let _ = w.take_copy();
        w.give_back(big);
        assert!(w.spare.iter().all(|v| v.capacity() <= KEEP_CAPACITY));
    }
}
