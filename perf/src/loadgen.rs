//! The load generator: C connections driven from one thread, closed loop (one request in
//! flight per connection, the next sent the moment the reply is in) or open loop (a fixed
//! total rate, each request charged from its intended send time — wrk2's correction for
//! coordinated omission).
//!
//! Built not to be the bottleneck: non-blocking sockets polled with `epoll_wait(0)`, every
//! buffer allocated before the clock starts, one clock read per event, latency recorded
//! into a pre-sized HdrHistogram (no allocation). When it shares its CPU with the backend
//! or the proxy it yields (`sched_yield`) instead of sleeping, so it never waits on a
//! wake-up itself and never starves its neighbour.
//!
//! `tls-echo`: each connection's TLS handshake completes while connecting, before the
//! clock starts; measured round trips are record round trips (seal, send, open).
//!
//! Accounting invariant: every request whose intended send time falls in the measured
//! window is counted once in `sent` and ends as exactly one of `received` or an error.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use serde::Serialize;

use crate::args::{HttpMethod, Workload};
use crate::hist::{self, Clock, Schedule};
use crate::tls::{self, TlsSock};
use crate::wire::{self, Response};

/// How load is offered in one measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Closed,
    /// Total requests per second across all connections.
    Open {
        rate: f64,
    },
}

/// One measurement's parameters.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub workload: Workload,
    pub size: usize,
    pub method: HttpMethod,
    pub target: SocketAddr,
    pub connections: usize,
    pub mode: Mode,
    pub warmup: Duration,
    pub duration: Duration,
    /// A request not answered within this is an error (TCP: the connection is replaced).
    pub timeout: Duration,
    /// Yield the CPU when idle (the generator shares its CPU with someone).
    pub yield_when_idle: bool,
    /// `tls-echo`: the client configuration every connection handshakes with.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Errors by cause, each one a request lost in the measured window.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Errors {
    /// No reply within the request timeout (or the drain at the end).
    pub timeouts: u64,
    /// The connection was closed or reset with the request in flight.
    pub closed: u64,
    /// A reply that was not the one expected.
    pub bad_responses: u64,
    /// A send the kernel refused.
    pub send_failures: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.timeouts + self.closed + self.bad_responses + self.send_failures
    }
}

/// What one measurement saw.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub hist: Histogram<u64>,
    pub sent: u64,
    pub received: u64,
    pub errors: Errors,
    /// Connections re-opened after a failure.
    pub reconnects: u64,
    /// Replies dropped because they answered an earlier, timed-out request (UDP).
    pub stale_replies: u64,
    /// The measured window (warm-up excluded).
    pub window: Duration,
    /// The first failure seen, in words, for the report.
    pub first_error: Option<String>,
    /// Open loop: how late the generator itself sent measured requests (send time −
    /// the later of the intended time and the previous reply on that connection). Not
    /// the target's doing: large values mean the generator could not keep its schedule
    /// (a busy machine) and the latencies include that delay.
    pub generator_lag: Histogram<u64>,
}

enum Sock {
    Tcp(TcpStream),
    Udp(UdpSocket),
    Tls(Box<TlsSock>),
}

struct Conn {
    sock: Option<Sock>,
    req: Vec<u8>,
    /// Bytes of `req` already written (TCP partial writes).
    written: usize,
    rbuf: Vec<u8>,
    rlen: usize,
    seq: u64,
    in_flight: bool,
    /// The request counts (its intended time is inside the window).
    measured: bool,
    intended_ns: u64,
    sent_ns: u64,
    schedule: Option<Schedule>,
    /// When the previous reply arrived (a send can't be earlier: one request in flight).
    last_done_ns: u64,
}

impl Conn {
    /// Request bytes (or, TLS, records) the socket has not taken yet.
    fn unsent(&self) -> bool {
        self.written < self.req.len() || matches!(&self.sock, Some(Sock::Tls(t)) if t.pending())
    }
}

/// One run's time marks on its clock (ns): warm-up until `warm_end`, measurement until
/// `end`, late replies awaited until `drain_end`. Shared by this generator and the
/// handshake generator.
pub(crate) struct Window {
    pub(crate) start: u64,
    pub(crate) warm_end: u64,
    pub(crate) end: u64,
    pub(crate) timeout_ns: u64,
    pub(crate) drain_end: u64,
}

impl Window {
    pub(crate) fn new(spec: &LoadSpec, start: u64) -> Window {
        let warm_end = start + spec.warmup.as_nanos() as u64;
        let end = warm_end + spec.duration.as_nanos() as u64;
        let timeout_ns = spec.timeout.as_nanos() as u64;
        Window {
            start,
            warm_end,
            end,
            timeout_ns,
            drain_end: end + timeout_ns,
        }
    }

    /// Connection `i`'s send schedule in the open loop; none in the closed loop.
    pub(crate) fn schedule(&self, spec: &LoadSpec, i: usize) -> Option<Schedule> {
        match spec.mode {
            Mode::Open { rate } => Some(Schedule::for_connection(
                self.start,
                rate,
                spec.connections,
                i,
            )),
            Mode::Closed => None,
        }
    }
}

/// Per-request bookkeeping shared by all connections of one run (this generator's and
/// the handshake generator's).
pub(crate) struct Tally {
    pub(crate) hist: Histogram<u64>,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) errors: Errors,
    pub(crate) reconnects: u64,
    pub(crate) stale: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) lag: Histogram<u64>,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            hist: hist::new_histogram(),
            sent: 0,
            received: 0,
            errors: Errors::default(),
            reconnects: 0,
            stale: 0,
            first_error: None,
            lag: hist::new_histogram(),
        }
    }

    pub(crate) fn fail(&mut self, measured: bool, kind: fn(&mut Errors) -> &mut u64, what: String) {
        if measured {
            *kind(&mut self.errors) += 1;
        }
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }

    /// Open loop: the slots of `schedule` never started before `end` are requests lost
    /// (timeouts), not requests that never existed; those before `warm_end` are not
    /// measured.
    pub(crate) fn count_unsent(
        &mut self,
        schedule: &mut Schedule,
        end: u64,
        warm_end: u64,
        what: &str,
    ) {
        while schedule.next_intended() < end {
            if schedule.take() >= warm_end {
                self.sent += 1;
                self.fail(true, |e| &mut e.timeouts, what.into());
            }
        }
    }

    pub(crate) fn into_result(self, window: Duration) -> LoadResult {
        LoadResult {
            hist: self.hist,
            sent: self.sent,
            received: self.received,
            errors: self.errors,
            reconnects: self.reconnects,
            stale_replies: self.stale,
            window,
            first_error: self.first_error,
            generator_lag: self.lag,
        }
    }
}

fn connect(spec: &LoadSpec, timeout: Duration) -> std::io::Result<Sock> {
    if spec.workload.is_udp() {
        let s = UdpSocket::bind(if spec.target.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        })?;
        s.connect(spec.target)?;
        s.set_nonblocking(true)?;
        Ok(Sock::Udp(s))
    } else if spec.workload.is_tls() {
        let cfg = spec
            .tls
            .as_ref()
            .ok_or_else(|| std::io::Error::other("tls-echo without a TLS client configuration"))?;
        Ok(Sock::Tls(Box::new(tls::connect(
            spec.target,
            cfg,
            timeout,
            true,
        )?)))
    } else {
        let s = TcpStream::connect_timeout(&spec.target, timeout)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        Ok(Sock::Tcp(s))
    }
}

fn register(ep: &Epoll, sock: &Sock, token: usize) -> std::io::Result<()> {
    let ev = EpollEvent::new(EpollFlags::EPOLLIN, token as u64);
    match sock {
        Sock::Tcp(s) => ep.add(s.as_fd(), ev),
        Sock::Udp(s) => ep.add(s.as_fd(), ev),
        Sock::Tls(t) => ep.add(t.stream.as_fd(), ev),
    }
    .map_err(std::io::Error::from)
}

/// Drive one measurement to its end. Fails only when no connection can be opened at all;
/// everything after that is counted in the result.
pub fn run(spec: &LoadSpec) -> anyhow::Result<LoadResult> {
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let template = wire::request(spec.workload, spec.size, spec.method);
    let rcap = wire::response_capacity(spec.workload, spec.size);
    let mut conns: Vec<Conn> = Vec::with_capacity(spec.connections);
    for i in 0..spec.connections {
        let sock = connect(spec, spec.timeout).map_err(|e| {
            anyhow::anyhow!(
                "connection {} of {} to {} failed: {e}",
                i + 1,
                spec.connections,
                spec.target
            )
        })?;
        register(&ep, &sock, i)?;
        conns.push(Conn {
            sock: Some(sock),
            req: template.clone(),
            written: 0,
            // One byte of slack so an over-long reply is seen as such.
            rbuf: vec![0; rcap + 1],
            rlen: 0,
            seq: 0,
            in_flight: false,
            measured: false,
            intended_ns: 0,
            sent_ns: 0,
            schedule: None,
            last_done_ns: 0,
        });
    }
    let mut tally = Tally::new();
    let clock = Clock::new();
    let window = Window::new(spec, clock.now_ns());
    let Window {
        warm_end,
        end,
        timeout_ns,
        drain_end,
        ..
    } = window;
    for (i, c) in conns.iter_mut().enumerate() {
        c.schedule = window.schedule(spec, i);
    }
    let mut events = vec![EpollEvent::empty(); spec.connections.max(1)];
    let mut alive = conns.len();

    loop {
        let now = clock.now_ns();
        // Closed loop stops sending at the end; open loop still owes every slot scheduled
        // before the end (skipping them would hide a stall: coordinated omission).
        let owed = |c: &Conn| match &c.schedule {
            None => now < end,
            Some(s) => s.next_intended() < end,
        };
        if conns
            .iter()
            .all(|c| !c.in_flight && (c.sock.is_none() || !owed(c)))
        {
            break;
        }
        if now >= drain_end {
            for c in conns.iter_mut() {
                if c.in_flight {
                    c.in_flight = false;
                    tally.fail(
                        c.measured,
                        |e| &mut e.timeouts,
                        "requests still unanswered when the run ended".into(),
                    );
                }
            }
            break;
        }
        let mut busy = false;

        // Send what is due, retry partial writes, expire stuck requests.
        for (i, c) in conns.iter_mut().enumerate() {
            if c.sock.is_none() {
                continue;
            }
            if c.in_flight {
                if c.unsent() {
                    busy |= write_more(spec, c, &mut tally, &ep, i);
                } else if now.saturating_sub(c.sent_ns) > timeout_ns {
                    c.in_flight = false;
                    tally.fail(
                        c.measured,
                        |e| &mut e.timeouts,
                        format!("no reply within {:?}", spec.timeout),
                    );
                    if !spec.workload.is_udp() {
                        // The stream may still deliver the late reply: start afresh.
                        reconnect(spec, c, &mut tally, &ep, i);
                    }
                }
                continue;
            }
            let intended = match &mut c.schedule {
                None if now < end => now,
                Some(s) if s.next_intended() <= now && s.next_intended() < end => s.take(),
                _ => continue,
            };
            send(spec, c, intended, now, warm_end, end, &mut tally, &ep, i);
            busy = true;
        }

        // Collect replies.
        let n = ep.wait(&mut events, EpollTimeout::ZERO).unwrap_or(0);
        for ev in &events[..n] {
            let i = ev.data() as usize;
            busy = true;
            receive(
                spec,
                &mut conns[i],
                &clock,
                warm_end,
                end,
                &mut tally,
                &ep,
                i,
            );
        }

        let now_alive = conns.iter().filter(|c| c.sock.is_some()).count();
        if now_alive == 0 && alive > 0 {
            tally
                .first_error
                .get_or_insert_with(|| "every connection was lost".into());
            break;
        }
        alive = now_alive;
        if !busy {
            if spec.yield_when_idle && conns.iter().any(|c| c.in_flight) {
                // A reply is awaited: the backend/proxy sharing this CPU needs it now.
                let _ = nix::sched::sched_yield();
            } else {
                // Nothing in flight (open loop between slots): yielding here would hand
                // the CPU to unrelated work for a whole time slice and make the next
                // send late; keep it.
                std::hint::spin_loop();
            }
        }
    }
    // Open loop: slots never sent (the target stalled, or the connection died and could
    // not be replaced) are requests lost, not requests that never existed.
    for c in conns.iter_mut() {
        if let Some(s) = &mut c.schedule {
            tally.count_unsent(
                s,
                end,
                warm_end,
                "requests could not be sent before the run ended",
            );
        }
    }
    Ok(tally.into_result(Duration::from_nanos(end - warm_end)))
}

#[allow(clippy::too_many_arguments)]
fn send(
    spec: &LoadSpec,
    c: &mut Conn,
    intended: u64,
    now: u64,
    warm_end: u64,
    end: u64,
    tally: &mut Tally,
    ep: &Epoll,
    i: usize,
) {
    c.seq += 1;
    wire::stamp(spec.workload, &mut c.req, c.seq);
    c.in_flight = true;
    c.measured = intended >= warm_end && intended < end;
    c.intended_ns = intended;
    c.sent_ns = now;
    c.written = 0;
    c.rlen = 0;
    if c.measured {
        tally.sent += 1;
        if c.schedule.is_some() {
            tally
                .lag
                .saturating_record(now.saturating_sub(intended.max(c.last_done_ns)).max(1));
        }
    }
    write_more(spec, c, tally, ep, i);
}

/// Push unwritten request bytes; returns whether anything moved.
fn write_more(spec: &LoadSpec, c: &mut Conn, tally: &mut Tally, ep: &Epoll, i: usize) -> bool {
    let res = match c.sock.as_mut() {
        Some(Sock::Tcp(s)) => s.write(&c.req[c.written..]),
        Some(Sock::Udp(s)) => s.send(&c.req),
        // Plaintext goes into rustls whole; records the socket refused stay queued and
        // `unsent` brings us back for them.
        Some(Sock::Tls(t)) => match t.send(&c.req[c.written..]) {
            Ok(n) => {
                c.written += n;
                return true;
            }
            Err(e) => Err(e),
        },
        None => return false,
    };
    match res {
        Ok(n) if n > 0 => {
            c.written += n;
            true
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Ok(_) | Err(_) => {
            let why = match res {
                Err(e) => format!("send to {} failed: {e}", spec.target),
                Ok(_) => format!("send to {} wrote nothing", spec.target),
            };
            c.in_flight = false;
            tally.fail(c.measured, |e| &mut e.send_failures, why);
            reconnect(spec, c, tally, ep, i);
            true
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn receive(
    spec: &LoadSpec,
    c: &mut Conn,
    clock: &Clock,
    warm_end: u64,
    end: u64,
    tally: &mut Tally,
    ep: &Epoll,
    i: usize,
) {
    loop {
        let res = match c.sock.as_mut() {
            Some(Sock::Tcp(s)) => s.read(&mut c.rbuf[c.rlen..]),
            Some(Sock::Tls(t)) => t.recv(&mut c.rbuf[c.rlen..]),
            Some(Sock::Udp(s)) => {
                c.rlen = 0;
                s.recv(&mut c.rbuf)
            }
            None => return,
        };
        match res {
            Ok(0) if !spec.workload.is_udp() => {
                lost(spec, c, tally, ep, i, "closed by the peer".into());
                return;
            }
            Ok(n) => c.rlen += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                // UDP: ECONNREFUSED when nobody listens: the request is lost, the socket fine.
                if spec.workload.is_udp() {
                    if c.in_flight {
                        c.in_flight = false;
                        tally.fail(
                            c.measured,
                            |e| &mut e.closed,
                            format!("UDP to {}: {e}", spec.target),
                        );
                    }
                    continue;
                }
                lost(spec, c, tally, ep, i, format!("{e}"));
                return;
            }
        }
        if !c.in_flight {
            // Bytes nobody asked for: UDP late replies are expected, TCP ones are not.
            if spec.workload.is_udp() {
                tally.stale += 1;
                continue;
            }
            lost(spec, c, tally, ep, i, "unsolicited bytes".into());
            return;
        }
        match wire::check(spec.workload, &c.rbuf[..c.rlen], spec.size, c.seq) {
            Response::Partial => continue,
            Response::Stale => {
                tally.stale += 1;
                continue;
            }
            Response::Done => {
                let done = clock.now_ns();
                c.in_flight = false;
                c.last_done_ns = done;
                if c.measured {
                    tally
                        .hist
                        .saturating_record(hist::latency_ns(c.intended_ns, done).max(1));
                    tally.received += 1;
                }
                // Closed loop: the next request goes out now, not on the next lap.
                if c.schedule.is_none() && done < end {
                    send(spec, c, done, done, warm_end, end, tally, ep, i);
                }
                if spec.workload.is_udp() {
                    continue;
                }
                return;
            }
            Response::Bad(why) => {
                c.in_flight = false;
                tally.fail(
                    c.measured,
                    |e| &mut e.bad_responses,
                    format!("bad reply from {}: {why}", spec.target),
                );
                reconnect(spec, c, tally, ep, i);
                return;
            }
        }
    }
}

/// The connection failed with a request possibly in flight.
fn lost(spec: &LoadSpec, c: &mut Conn, tally: &mut Tally, ep: &Epoll, i: usize, why: String) {
    let what = format!("connection to {} lost: {why}", spec.target);
    if c.in_flight {
        c.in_flight = false;
        tally.fail(c.measured, |e| &mut e.closed, what);
    } else if tally.first_error.is_none() {
        tally.first_error = Some(what);
    }
    reconnect(spec, c, tally, ep, i);
}

/// Replace a failed TCP connection (a dead one stays `None`).
fn reconnect(spec: &LoadSpec, c: &mut Conn, tally: &mut Tally, ep: &Epoll, i: usize) {
    if spec.workload.is_udp() {
        return;
    }
    // Dropping the socket closes it, which also removes it from the epoll set.
    c.sock = None;
    c.rlen = 0;
    c.written = 0;
    match connect(spec, Duration::from_millis(200)).and_then(|s| {
        register(ep, &s, i)?;
        Ok(s)
    }) {
        Ok(s) => {
            c.sock = Some(s);
            tally.reconnects += 1;
        }
        Err(e) => {
            tally
                .first_error
                .get_or_insert_with(|| format!("reconnecting to {} failed: {e}", spec.target));
        }
    }
}

/// One request/response through `target`, blocking, for readiness checks (`tls-echo`:
/// after a handshake with `tls`).
pub fn probe(
    workload: Workload,
    size: usize,
    method: HttpMethod,
    target: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut req = wire::request(workload, size, method);
    wire::stamp(workload, &mut req, 1);
    let mut buf = vec![0u8; wire::response_capacity(workload, size) + 1];
    let mut len = 0;
    if workload.is_udp() {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.connect(target)?;
        s.set_read_timeout(Some(timeout))?;
        s.send(&req)?;
        len = s.recv(&mut buf)?;
    } else if workload.is_tls() {
        let cfg = tls.ok_or_else(|| anyhow::anyhow!("tls-echo probe without a TLS client"))?;
        let mut t = tls::connect(target, cfg, timeout, false)?;
        let mut s = rustls::Stream::new(&mut t.conn, &mut t.stream);
        s.write_all(&req)?;
        s.flush()?;
        loop {
            let n = s.read(&mut buf[len..])?;
            if n == 0 {
                anyhow::bail!("connection closed before the reply was complete");
            }
            len += n;
            if wire::check(workload, &buf[..len], size, 1) != Response::Partial {
                break;
            }
        }
    } else {
        let mut s = TcpStream::connect_timeout(&target, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        s.write_all(&req)?;
        loop {
            let n = s.read(&mut buf[len..])?;
            if n == 0 {
                anyhow::bail!("connection closed before the reply was complete");
            }
            len += n;
            if wire::check(workload, &buf[..len], size, 1) != Response::Partial {
                break;
            }
        }
    }
    match wire::check(workload, &buf[..len], size, 1) {
        Response::Done => Ok(()),
        other => anyhow::bail!("unexpected reply: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn spec(target: SocketAddr, connections: usize, mode: Mode) -> LoadSpec {
        LoadSpec {
            workload: Workload::TcpEcho,
            size: 64,
            method: HttpMethod::Get,
            target,
            connections,
            mode,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(300),
            timeout: Duration::from_millis(200),
            yield_when_idle: true,
            tls: None,
        }
    }

    /// An echo server that answers `per_conn` requests per connection, then reads the next
    /// one and closes without answering: a proxy dropping connections mid-run.
    fn dropping_server(per_conn: usize) -> (SocketAddr, Arc<AtomicBool>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let st = st.clone();
                std::thread::spawn(move || {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(100)))
                        .unwrap();
                    let mut buf = [0u8; 64];
                    let mut served = 0;
                    while !st.load(Ordering::Relaxed) {
                        match s.read_exact(&mut buf) {
                            Ok(()) if served < per_conn => {
                                s.write_all(&buf).unwrap();
                                served += 1;
                            }
                            Ok(()) => return, // drop with the request unanswered
                            Err(e)
                                if e.kind() == ErrorKind::WouldBlock
                                    || e.kind() == ErrorKind::TimedOut =>
                            {
                                continue
                            }
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        (addr, stop)
    }

    #[test]
    fn closed_loop_against_a_healthy_backend_accounts_every_request() {
        let b = crate::backend::Backend::start(
            Workload::TcpEcho,
            64,
            "127.0.0.1:0".parse().unwrap(),
            &[0],
        )
        .unwrap();
        let r = run(&spec(b.addr, 2, Mode::Closed)).unwrap();
        assert!(r.received > 10, "{r:?}");
        assert_eq!(r.errors.total(), 0, "{r:?}");
        assert_eq!(r.sent, r.received);
        assert_eq!(r.hist.len(), r.received);
        assert!(
            r.generator_lag.is_empty(),
            "closed loop has no schedule to lag"
        );
    }

    #[test]
    fn open_loop_offers_the_rate_it_was_given() {
        let b = crate::backend::Backend::start(
            Workload::UdpEcho,
            64,
            "127.0.0.1:0".parse().unwrap(),
            &[0],
        )
        .unwrap();
        let mut s = spec(b.addr, 2, Mode::Open { rate: 2_000.0 });
        s.workload = Workload::UdpEcho;
        let r = run(&s).unwrap();
        // 2000/s over 300 ms = 600 requests intended in the window, ± one per connection
        // at the edges.
        assert!((598..=602).contains(&r.sent), "sent {}", r.sent);
        assert_eq!(r.sent, r.received + r.errors.total());
        // Every request actually sent has its own send delay recorded (open loop only);
        // slots a stalled run never sent are counted lost, without one.
        assert!(
            r.received <= r.generator_lag.len() && r.generator_lag.len() <= r.sent,
            "{} {} {}",
            r.received,
            r.generator_lag.len(),
            r.sent
        );
    }

    #[test]
    fn dropped_connections_are_counted_and_replaced() {
        let (addr, stop) = dropping_server(20);
        let r = run(&spec(addr, 2, Mode::Closed)).unwrap();
        stop.store(true, Ordering::Relaxed);
        assert!(r.errors.closed > 0, "{r:?}");
        assert!(r.reconnects > 0, "{r:?}");
        assert!(r.received > 0);
        assert_eq!(r.sent, r.received + r.errors.total(), "{r:?}");
        assert!(
            r.first_error.as_deref().unwrap().contains("lost"),
            "{:?}",
            r.first_error
        );
    }

    #[test]
    fn nobody_listening_is_a_clear_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = run(&spec(port, 1, Mode::Closed)).unwrap_err();
        assert!(e.to_string().contains("connection 1 of 1"), "{e}");
    }
}
