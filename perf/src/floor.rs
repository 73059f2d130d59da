//! The floor: the smallest relay a kernel-socket proxy can be. One thread spinning on
//! `epoll_wait(0)`, non-blocking `recv`/`send`, one upstream connection per client
//! connection (TCP) or per client address (UDP), no features. Every other proxy's cost is
//! read against it.
//!
//! Runs as its own process (`tickmesh bench --internal-floor ...`, spawned by the harness)
//! so it is measured exactly like the other peers. Must never do more work per message
//! than one recv and one send; it allocates only per connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

const LISTENER: u64 = u64::MAX;
const BUF: usize = 64 * 1024;

/// What the floor relays: parsed from `PROTO LISTEN UPSTREAM IDLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloorSpec {
    pub udp: bool,
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    /// Yield the CPU when idle (shared layout) instead of spinning.
    pub yield_when_idle: bool,
}

impl FloorSpec {
    pub fn to_arg(&self) -> String {
        format!(
            "{} {} {} {}",
            if self.udp { "udp" } else { "tcp" },
            self.listen,
            self.upstream,
            if self.yield_when_idle {
                "yield"
            } else {
                "spin"
            }
        )
    }

    pub fn parse(s: &str) -> anyhow::Result<FloorSpec> {
        let p: Vec<&str> = s.split_whitespace().collect();
        let [proto, listen, upstream, idle] = p[..] else {
            anyhow::bail!("floor spec `{s}`: expected `tcp|udp LISTEN UPSTREAM spin|yield`");
        };
        Ok(FloorSpec {
            udp: match proto {
                "tcp" => false,
                "udp" => true,
                _ => anyhow::bail!("floor spec `{s}`: protocol must be tcp or udp"),
            },
            listen: listen
                .parse()
                .with_context(|| format!("floor spec `{s}`: bad listen address"))?,
            upstream: upstream
                .parse()
                .with_context(|| format!("floor spec `{s}`: bad upstream address"))?,
            yield_when_idle: match idle {
                "spin" => false,
                "yield" => true,
                _ => anyhow::bail!("floor spec `{s}`: idle must be spin or yield"),
            },
        })
    }
}

/// Relay until killed (or, in tests, until `stop` is set).
pub fn serve(spec: &FloorSpec, stop: &AtomicBool) -> anyhow::Result<()> {
    if spec.udp {
        serve_udp(spec, stop)
    } else {
        serve_tcp(spec, stop)
    }
}

fn idle(spec: &FloorSpec) {
    if spec.yield_when_idle {
        let _ = nix::sched::sched_yield();
    } else {
        std::hint::spin_loop();
    }
}

struct Pair {
    sides: [TcpStream; 2],
    /// Bytes read from side k not yet written to the other side.
    pending: [Vec<u8>; 2],
}

fn serve_tcp(spec: &FloorSpec, stop: &AtomicBool) -> anyhow::Result<()> {
    let l =
        TcpListener::bind(spec.listen).map_err(|e| crate::backend::bind_error(spec.listen, e))?;
    l.set_nonblocking(true)?;
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    ep.add(l.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))?;
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut events = vec![EpollEvent::empty(); 64];
    let mut buf = vec![0u8; BUF];
    // Pairs with bytes waiting for a full socket to drain (an upper bound).
    let mut stalled = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let n = ep.wait(&mut events, EpollTimeout::ZERO).unwrap_or(0);
        // Retry stalled writes every lap (rare: only when a receiver's buffer is full).
        let mut moved = false;
        if stalled > 0 {
            stalled = 0;
            for slot in pairs.iter_mut() {
                if let Some(p) = slot {
                    if !p.pending[0].is_empty() || !p.pending[1].is_empty() {
                        moved = true;
                        if !flush_pending(p) {
                            *slot = None;
                        } else if !p.pending[0].is_empty() || !p.pending[1].is_empty() {
                            stalled += 1;
                        }
                    }
                }
            }
        }
        if n == 0 {
            if !moved {
                idle(spec);
            }
            continue;
        }
        for ev in &events[..n] {
            let token = ev.data();
            if token == LISTENER {
                accept_all(&l, spec.upstream, &ep, &mut pairs);
                continue;
            }
            let (i, side) = ((token / 2) as usize, (token % 2) as usize);
            let Some(p) = pairs.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            if !relay(p, side, &mut buf) {
                pairs[i] = None;
            } else if !p.pending[0].is_empty() || !p.pending[1].is_empty() {
                stalled += 1;
            }
        }
    }
    Ok(())
}

fn accept_all(l: &TcpListener, upstream: SocketAddr, ep: &Epoll, pairs: &mut Vec<Option<Pair>>) {
    while let Ok((down, _)) = l.accept() {
        // Blocking connect: loopback, once per client connection, off the message path.
        let Ok(up) = TcpStream::connect(upstream) else {
            continue;
        };
        let ok = [&down, &up]
            .iter()
            .all(|s| s.set_nonblocking(true).is_ok() && s.set_nodelay(true).is_ok());
        if !ok {
            continue;
        }
        let i = pairs.iter().position(Option::is_none).unwrap_or_else(|| {
            pairs.push(None);
            pairs.len() - 1
        });
        let t = (i as u64) * 2;
        if ep
            .add(down.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, t))
            .is_err()
            || ep
                .add(up.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, t + 1))
                .is_err()
        {
            continue;
        }
        pairs[i] = Some(Pair {
            sides: [down, up],
            pending: [Vec::new(), Vec::new()],
        });
    }
}

/// Move what side `from` has to the other side. False when the pair is finished.
fn relay(p: &mut Pair, from: usize, buf: &mut [u8]) -> bool {
    let to = 1 - from;
    if !p.pending[from].is_empty() {
        // Back-pressure: don't read more until the earlier bytes went out.
        return flush_pending(p);
    }
    loop {
        let n = match (&p.sides[from]).read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        let mut at = 0;
        while at < n {
            match (&p.sides[to]).write(&buf[at..n]) {
                Ok(0) => return false,
                Ok(k) => at += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    p.pending[from].extend_from_slice(&buf[at..n]);
                    return true;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }
}

fn flush_pending(p: &mut Pair) -> bool {
    for from in 0..2 {
        let to = 1 - from;
        while !p.pending[from].is_empty() {
            match (&p.sides[to]).write(&p.pending[from]) {
                Ok(0) => return false,
                Ok(k) => {
                    p.pending[from].drain(..k);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }
    true
}

fn serve_udp(spec: &FloorSpec, stop: &AtomicBool) -> anyhow::Result<()> {
    let front =
        UdpSocket::bind(spec.listen).map_err(|e| crate::backend::bind_error(spec.listen, e))?;
    front.set_nonblocking(true)?;
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    ep.add(
        front.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN, LISTENER),
    )?;
    // (client address, its upstream socket); a handful of clients in a benchmark.
    let mut sessions: Vec<(SocketAddr, UdpSocket)> = Vec::new();
    let mut events = vec![EpollEvent::empty(); 64];
    let mut buf = vec![0u8; BUF];
    while !stop.load(Ordering::Relaxed) {
        let n = ep.wait(&mut events, EpollTimeout::ZERO).unwrap_or(0);
        if n == 0 {
            idle(spec);
            continue;
        }
        for ev in &events[..n] {
            let token = ev.data();
            if token == LISTENER {
                while let Ok((len, from)) = front.recv_from(&mut buf) {
                    let k = match sessions.iter().position(|(a, _)| *a == from) {
                        Some(k) => k,
                        None => {
                            let up = UdpSocket::bind("127.0.0.1:0")?;
                            up.connect(spec.upstream)?;
                            up.set_nonblocking(true)?;
                            ep.add(
                                up.as_fd(),
                                EpollEvent::new(EpollFlags::EPOLLIN, sessions.len() as u64),
                            )?;
                            sessions.push((from, up));
                            sessions.len() - 1
                        }
                    };
                    let _ = sessions[k].1.send(&buf[..len]);
                }
                continue;
            }
            let Some((client, up)) = sessions.get(token as usize) else {
                continue;
            };
            while let Ok(len) = up.recv(&mut buf) {
                let _ = front.send_to(&buf[..len], client);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_and_refuses_malformed_input() {
        let s = FloorSpec {
            udp: false,
            listen: "127.0.0.1:1".parse().unwrap(),
            upstream: "127.0.0.1:2".parse().unwrap(),
            yield_when_idle: true,
        };
        assert_eq!(FloorSpec::parse(&s.to_arg()).unwrap(), s);
        for bad in [
            "",
            "tcp 127.0.0.1:1 127.0.0.1:2",
            "sctp 127.0.0.1:1 127.0.0.1:2 spin",
            "tcp nowhere 127.0.0.1:2 spin",
            "tcp 127.0.0.1:1 127.0.0.1:2 nap",
        ] {
            assert!(FloorSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relays_tcp_and_udp_echo() {
        use crate::args::{HttpMethod, Workload};
        use std::time::Duration;
        for w in [Workload::TcpEcho, Workload::UdpEcho, Workload::Http1] {
            let b = crate::backend::Backend::start(w, 64, "127.0.0.1:0".parse().unwrap(), &[0])
                .unwrap();
            // A free port for the relay: bind, read, release.
            let port = if w.is_udp() {
                UdpSocket::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
            } else {
                TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
            };
            let spec = FloorSpec {
                udp: w.is_udp(),
                listen: port,
                upstream: b.addr,
                yield_when_idle: true,
            };
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            let st = stop.clone();
            let relay = std::thread::spawn(move || serve(&spec, &st));
            let mut ok = false;
            for _ in 0..50 {
                if crate::loadgen::probe(
                    w,
                    64,
                    HttpMethod::Get,
                    port,
                    None,
                    Duration::from_millis(200),
                )
                .is_ok()
                {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.store(true, Ordering::Relaxed);
            relay.join().unwrap().unwrap();
            assert!(ok, "{w:?} through the floor");
        }
    }
}
