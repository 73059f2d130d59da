//! The `tls-handshake` generator: every request is a new TCP connection, a full TLS 1.3
//! handshake (no resumption: the client keeps no tickets), one echo of `size` bytes inside
//! TLS, `close_notify` and close. Latency is connect → echo received; throughput is
//! handshakes per second.
//!
//! One thread, C slots, each a non-blocking connection driven by edge-triggered epoll
//! (both directions drained on every event). Closed loop: a slot opens its next
//! connection the moment the previous one is done; open loop: a slot opens connections
//! on its schedule (latency from the intended start, as `loadgen` does).
//!
//! The client side of a handshake costs about what the server's does; the generator's
//! client (see [`crate::tls::Certs::handshake_client_config`]) skips verifying the
//! server's certificate and signature so the generator is not the bottleneck — the
//! server's work (key share, signature, Finished) is the same.
//!
//! Accounting invariant (as in `loadgen`): every connection whose start (intended start)
//! falls in the measured window is counted once in `sent` and ends as exactly one of
//! `received` or an error. Never panics on peer input: a TLS error is counted as a bad
//! response, a reset or an early close as closed.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use rustls::pki_types::ServerName;
use rustls::ClientConnection;
use socket2::{Domain, Protocol, Socket, Type};

use crate::args::Workload;
use crate::hist::{self, Clock, Schedule};
use crate::loadgen::{Errors, LoadResult, LoadSpec, Tally, Window};
use crate::tls::SERVER_NAME;
use crate::wire::{self, Response};

/// One connection in progress.
struct Live {
    stream: TcpStream,
    tls: ClientConnection,
    echo_sent: bool,
}

struct Slot {
    live: Option<Box<Live>>,
    /// Start of the current connection (open loop: its intended start).
    started_ns: u64,
    measured: bool,
    seq: u64,
    req: Vec<u8>,
    rbuf: Vec<u8>,
    rlen: usize,
    schedule: Option<Schedule>,
}

/// How a connection ended (or that it has not).
enum Step {
    Pending,
    Done,
    Failed(fn(&mut Errors) -> &mut u64, String),
}

/// Start a non-blocking connect and the client's handshake (its ClientHello is queued
/// and goes out once the socket is connected).
fn open(
    target: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    ep: &Epoll,
    token: usize,
) -> std::io::Result<Box<Live>> {
    let sock = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    match sock.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream: TcpStream = sock.into();
    let name = ServerName::try_from(SERVER_NAME).expect("constant DNS name is valid");
    let tls = ClientConnection::new(cfg.clone(), name)
        .map_err(|e| std::io::Error::other(format!("TLS client: {e}")))?;
    ep.add(
        stream.as_fd(),
        EpollEvent::new(
            EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLET,
            token as u64,
        ),
    )?;
    Ok(Box::new(Live {
        stream,
        tls,
        echo_sent: false,
    }))
}

/// Move everything that can move on one connection: records out, records in, the echo
/// once the handshake is done. Drains both directions (edge-triggered epoll).
fn drive(s: &mut Slot, size: usize) -> Step {
    let Some(l) = s.live.as_mut() else {
        return Step::Pending;
    };
    // Bounded: each lap moves bytes or ends; a handshake is a few flights.
    for _ in 0..64 {
        let mut moved = false;
        while l.tls.wants_write() {
            match l.tls.write_tls(&mut l.stream) {
                Ok(0) => break,
                Ok(_) => moved = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Step::Failed(|e| &mut e.closed, format!("send: {e}")),
            }
        }
        match l.tls.read_tls(&mut l.stream) {
            Ok(0) => {
                return Step::Failed(
                    |e| &mut e.closed,
                    if l.tls.is_handshaking() {
                        "closed by the peer during the handshake".into()
                    } else {
                        "closed by the peer before the echo".into()
                    },
                )
            }
            Ok(_) => {
                moved = true;
                if let Err(e) = l.tls.process_new_packets() {
                    return Step::Failed(|e| &mut e.bad_responses, format!("TLS: {e}"));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => moved = true,
            Err(e) => return Step::Failed(|e| &mut e.closed, format!("receive: {e}")),
        }
        if !l.tls.is_handshaking() && !l.echo_sent {
            l.echo_sent = true;
            // rustls buffers plaintext whole; the records go out on the next lap.
            if let Err(e) = l.tls.writer().write_all(&s.req) {
                return Step::Failed(|e| &mut e.send_failures, format!("TLS write: {e}"));
            }
            continue;
        }
        if l.echo_sent {
            loop {
                match l.tls.reader().read(&mut s.rbuf[s.rlen..]) {
                    Ok(0) => {
                        return Step::Failed(
                            |e| &mut e.closed,
                            "close_notify before the echo".into(),
                        )
                    }
                    Ok(n) => s.rlen += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Step::Failed(|e| &mut e.closed, format!("TLS read: {e}")),
                }
                match wire::check(Workload::TcpEcho, &s.rbuf[..s.rlen], size, s.seq) {
                    Response::Partial => {}
                    Response::Done => return Step::Done,
                    other => {
                        return Step::Failed(
                            |e| &mut e.bad_responses,
                            format!("bad echo: {other:?}"),
                        )
                    }
                }
            }
        }
        if !moved {
            return Step::Pending;
        }
    }
    Step::Pending
}

/// End the slot's connection politely (close_notify, then close). Errors do not matter:
/// the exchange is complete.
fn close(s: &mut Slot) {
    if let Some(mut l) = s.live.take() {
        l.tls.send_close_notify();
        let _ = l.tls.write_tls(&mut l.stream);
        // Dropping the stream closes it, which also takes it out of the epoll set.
    }
}

/// Drive one measurement to its end. Fails only when the very first connection cannot be
/// started; everything after that is counted in the result.
pub fn run(spec: &LoadSpec) -> anyhow::Result<LoadResult> {
    let cfg = spec
        .tls
        .clone()
        .ok_or_else(|| anyhow::anyhow!("tls-handshake without a TLS client configuration"))?;
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let template = wire::request(Workload::TcpEcho, spec.size, spec.method);
    let rcap = wire::response_capacity(Workload::TcpEcho, spec.size);
    // Nothing listening is a clear error before the clock starts.
    TcpStream::connect_timeout(&spec.target, spec.timeout)
        .map_err(|e| anyhow::anyhow!("connecting to {} failed: {e}", spec.target))?;
    let mut slots: Vec<Slot> = (0..spec.connections)
        .map(|_| Slot {
            live: None,
            started_ns: 0,
            measured: false,
            seq: 0,
            req: template.clone(),
            rbuf: vec![0; rcap + 1],
            rlen: 0,
            schedule: None,
        })
        .collect();
    let mut t = Tally::new();
    let clock = Clock::new();
    let window = Window::new(spec, clock.now_ns());
    let Window {
        warm_end,
        end,
        timeout_ns,
        drain_end,
        ..
    } = window;
    for (i, s) in slots.iter_mut().enumerate() {
        s.schedule = window.schedule(spec, i);
    }
    let mut events = vec![EpollEvent::empty(); spec.connections.max(1)];
    loop {
        let now = clock.now_ns();
        let owed = |s: &Slot| match &s.schedule {
            None => now < end,
            Some(sc) => sc.next_intended() < end,
        };
        if slots.iter().all(|s| s.live.is_none() && !owed(s)) {
            break;
        }
        if now >= drain_end {
            for s in slots.iter_mut().filter(|s| s.live.is_some()) {
                s.live = None;
                t.fail(
                    s.measured,
                    |e| &mut e.timeouts,
                    "handshakes still unfinished when the run ended".into(),
                );
            }
            break;
        }
        let mut busy = false;
        for (i, s) in slots.iter_mut().enumerate() {
            if s.live.is_some() {
                if now.saturating_sub(s.started_ns) > timeout_ns {
                    s.live = None;
                    t.fail(
                        s.measured,
                        |e| &mut e.timeouts,
                        format!("handshake + echo not done within {:?}", spec.timeout),
                    );
                }
                continue;
            }
            let intended = match &mut s.schedule {
                None if now < end => now,
                Some(sc) if sc.next_intended() <= now && sc.next_intended() < end => sc.take(),
                _ => continue,
            };
            busy = true;
            s.seq += 1;
            wire::stamp(Workload::TcpEcho, &mut s.req, s.seq);
            s.rlen = 0;
            s.started_ns = intended;
            s.measured = intended >= warm_end && intended < end;
            if s.measured {
                t.sent += 1;
                if s.schedule.is_some() {
                    t.lag.saturating_record(now.saturating_sub(intended).max(1));
                }
            }
            match open(spec.target, &cfg, &ep, i) {
                Ok(l) => s.live = Some(l),
                Err(e) => {
                    t.fail(
                        s.measured,
                        |e| &mut e.closed,
                        format!("connecting to {} failed: {e}", spec.target),
                    );
                    continue;
                }
            }
            let step = drive(s, spec.size);
            finish(s, step, &clock, &mut t);
        }
        let n = ep.wait(&mut events, EpollTimeout::ZERO).unwrap_or(0);
        for ev in &events[..n] {
            busy = true;
            let s = &mut slots[ev.data() as usize];
            let step = drive(s, spec.size);
            finish(s, step, &clock, &mut t);
        }
        if !busy {
            if spec.yield_when_idle {
                // The server sharing this CPU (backend, or the proxy in `shared`) needs it.
                let _ = nix::sched::sched_yield();
            } else {
                std::hint::spin_loop();
            }
        }
    }
    // Open loop: slots never started are connections lost, not ones that never existed.
    for s in slots.iter_mut() {
        if let Some(sc) = &mut s.schedule {
            t.count_unsent(
                sc,
                end,
                warm_end,
                "handshakes could not be started before the run ended",
            );
        }
    }
    Ok(t.into_result(Duration::from_nanos(end - warm_end)))
}

fn finish(s: &mut Slot, step: Step, clock: &Clock, t: &mut Tally) {
    match step {
        Step::Pending => {}
        Step::Done => {
            let done = clock.now_ns();
            if s.measured {
                t.hist
                    .saturating_record(hist::latency_ns(s.started_ns, done).max(1));
                t.received += 1;
            }
            close(s);
        }
        Step::Failed(kind, why) => {
            s.live = None;
            t.fail(s.measured, kind, why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::HttpMethod;
    use crate::loadgen::Mode;

    fn spec(target: SocketAddr, cfg: Arc<rustls::ClientConfig>, mode: Mode) -> LoadSpec {
        LoadSpec {
            workload: Workload::TlsHandshake,
            size: 64,
            method: HttpMethod::Get,
            target,
            connections: 4,
            mode,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(300),
            timeout: Duration::from_millis(500),
            yield_when_idle: true,
            tls: Some(cfg),
        }
    }

    fn tls_backend() -> Option<(
        crate::backend::Backend,
        crate::tls::Certs,
        tempfile::TempDir,
    )> {
        if crate::sys::find_binary("openssl").is_none() {
            eprintln!("SKIP: no openssl CLI to make certificates");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let certs = crate::tls::Certs::generate(dir.path()).unwrap();
        let b = crate::backend::Backend::start_tls(
            64,
            "127.0.0.1:0".parse().unwrap(),
            &[0],
            certs.server_config().unwrap(),
        )
        .unwrap();
        Some((b, certs, dir))
    }

    #[test]
    fn every_handshake_is_new_and_accounted() {
        let Some((b, certs, _dir)) = tls_backend() else {
            return;
        };
        let cfg = certs.handshake_client_config().unwrap();
        let r = run(&spec(b.addr, cfg, Mode::Closed)).unwrap();
        assert!(r.received > 10, "{r:?}");
        assert_eq!(r.errors.total(), 0, "{r:?}");
        assert_eq!(r.sent, r.received);
        assert_eq!(r.hist.len(), r.received);
        // Each connection is a full handshake: the backend accepted one per request (and
        // the warm-up ones, and the reachability check).
        let open = run(&spec(
            b.addr,
            certs.handshake_client_config().unwrap(),
            Mode::Open { rate: 200.0 },
        ))
        .unwrap();
        assert!((58..=62).contains(&open.sent), "sent {}", open.sent);
        assert_eq!(open.sent, open.received + open.errors.total(), "{open:?}");
    }

    #[test]
    fn a_plain_tcp_echo_is_not_tls_and_every_attempt_fails() {
        let Some((_b, certs, _dir)) = tls_backend() else {
            return;
        };
        let plain = crate::backend::Backend::start(
            Workload::TcpEcho,
            64,
            "127.0.0.1:0".parse().unwrap(),
            &[0],
        )
        .unwrap();
        let r = run(&spec(
            plain.addr,
            certs.handshake_client_config().unwrap(),
            Mode::Closed,
        ))
        .unwrap();
        assert_eq!(r.received, 0, "{r:?}");
        assert!(r.errors.total() > 0 && r.sent == r.errors.total(), "{r:?}");
        assert!(r.first_error.is_some());
    }

    #[test]
    fn nobody_listening_is_a_clear_error() {
        let Some((_b, certs, _dir)) = tls_backend() else {
            return;
        };
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = run(&spec(
            addr,
            certs.handshake_client_config().unwrap(),
            Mode::Closed,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("connecting to"), "{e}");
    }
}
