//! The one backend every target is measured against: TCP echo, UDP echo, or minimal
//! HTTP/1.1 (keep-alive; GET answers `size` bytes, POST echoes its body). For `tls-echo`
//! a second instance terminates TLS itself (rustls, ring) and echoes the plaintext: the
//! `direct` floor, the same echo with TLS at both ends and no proxy between.
//!
//! One thread, non-blocking sockets, epoll. It waits in the kernel when idle (it shares a
//! CPU with the generator, which yields to it), so it costs nothing between requests.
//! Buffers are per connection and reused; the steady path allocates nothing. Never
//! trusts a request: a malformed HTTP request gets `400` and the connection is closed.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use rustls::{ServerConfig, ServerConnection};

use crate::args::Workload;
use crate::wire;

const LISTENER: u64 = u64::MAX;
const BUF: usize = 64 * 1024;

/// A running backend; stops when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Bind `addr` (port 0 = a free port) and serve `workload` on a thread pinned to `cpus`
    /// (`tls-echo`: plain TCP echo, what the proxies relay the plaintext to).
    pub fn start(
        workload: Workload,
        size: usize,
        addr: SocketAddr,
        cpus: &[usize],
    ) -> anyhow::Result<Backend> {
        Backend::spawn(workload, size, addr, cpus, None)
    }

    /// A TCP echo backend that terminates TLS with `tls` on every connection.
    pub fn start_tls(
        size: usize,
        addr: SocketAddr,
        cpus: &[usize],
        tls: Arc<ServerConfig>,
    ) -> anyhow::Result<Backend> {
        Backend::start_with_tls(Workload::TlsEcho, size, addr, cpus, tls)
    }

    /// A `workload` backend terminating TLS with `tls` on every connection: echo, or
    /// HTTP/1.1 as for `http1` (`https1`'s direct target).
    pub fn start_with_tls(
        workload: Workload,
        size: usize,
        addr: SocketAddr,
        cpus: &[usize],
        tls: Arc<ServerConfig>,
    ) -> anyhow::Result<Backend> {
        Backend::spawn(workload, size, addr, cpus, Some(tls))
    }

    fn spawn(
        workload: Workload,
        size: usize,
        addr: SocketAddr,
        cpus: &[usize],
        tls: Option<Arc<ServerConfig>>,
    ) -> anyhow::Result<Backend> {
        let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let (sock, bound) = if workload.is_udp() {
            let s = UdpSocket::bind(addr).map_err(|e| bind_error(addr, e))?;
            s.set_nonblocking(true)?;
            let a = s.local_addr()?;
            ep.add(s.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))?;
            (Listen::Udp(s), a)
        } else {
            let l = TcpListener::bind(addr).map_err(|e| bind_error(addr, e))?;
            l.set_nonblocking(true)?;
            let a = l.local_addr()?;
            ep.add(l.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))?;
            (Listen::Tcp(l), a)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let cpus = cpus.to_vec();
        let thread = std::thread::Builder::new()
            .name("bench-backend".into())
            .spawn(move || {
                if let Err(e) = crate::sys::pin_current_thread(&cpus) {
                    eprintln!("backend: {e:#}");
                }
                serve(workload, size, ep, sock, tls, &st);
            })
            .context("spawning the backend thread")?;
        Ok(Backend {
            addr: bound,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A bind failure in words an operator can act on.
pub fn bind_error(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    if e.kind() == ErrorKind::AddrInUse {
        anyhow::anyhow!("port {addr} is in use by another process: pick another --base-port, or omit it to use free ports")
    } else {
        anyhow::anyhow!("cannot bind {addr}: {e}")
    }
}

enum Listen {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

struct Conn {
    stream: TcpStream,
    /// Received, not yet answered (HTTP) bytes.
    inbuf: Vec<u8>,
    /// Answer bytes the socket has not taken yet.
    out: Vec<u8>,
    out_at: usize,
    close_after_flush: bool,
    /// The server side of TLS (the TLS echo backend only).
    tls: Option<Box<ServerConnection>>,
}

fn serve(
    workload: Workload,
    size: usize,
    ep: Epoll,
    sock: Listen,
    tls: Option<Arc<ServerConfig>>,
    stop: &AtomicBool,
) {
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut events = vec![EpollEvent::empty(); 64];
    let mut scratch = vec![0u8; BUF];
    let get_body = vec![b'x'; size];
    // https1: responses in plaintext before rustls seals them (capacity kept).
    let mut plain = Vec::with_capacity(BUF);
    while !stop.load(Ordering::Relaxed) {
        // Wait in the kernel (20 ms cap so `stop` is seen).
        let n = match ep.wait(&mut events, EpollTimeout::from(20u8)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("backend: epoll_wait failed: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token == LISTENER {
                match &sock {
                    Listen::Udp(s) => udp_echo(s, &mut scratch),
                    Listen::Tcp(l) => accept_all(l, &ep, &mut conns, tls.as_ref()),
                }
                continue;
            }
            let i = token as usize;
            let Some(c) = conns.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            let keep = match workload {
                _ if c.tls.is_some() => {
                    let http = workload
                        .is_http()
                        .then_some((size, &get_body[..], &mut plain));
                    serve_tls(c, &mut scratch, http)
                }
                w if w.is_http() => serve_http(c, size, &get_body, &mut scratch),
                _ => serve_echo(c, &mut scratch),
            };
            let keep = keep && flush(c, &ep, i);
            if !keep {
                // Dropping the stream closes it and removes it from the epoll set.
                conns[i] = None;
            }
        }
    }
}

fn udp_echo(s: &UdpSocket, buf: &mut [u8]) {
    loop {
        match s.recv_from(buf) {
            Ok((n, from)) => {
                let _ = s.send_to(&buf[..n], from);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

fn accept_all(
    l: &TcpListener,
    ep: &Epoll,
    conns: &mut Vec<Option<Conn>>,
    tls: Option<&Arc<ServerConfig>>,
) {
    while let Ok((stream, _)) = l.accept() {
        if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
            continue;
        }
        let tls = match tls.map(|cfg| ServerConnection::new(cfg.clone())) {
            None => None,
            Some(Ok(c)) => Some(Box::new(c)),
            Some(Err(e)) => {
                eprintln!("backend: cannot start a TLS session: {e}");
                continue;
            }
        };
        let i = conns.iter().position(Option::is_none).unwrap_or_else(|| {
            conns.push(None);
            conns.len() - 1
        });
        if ep
            .add(
                stream.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, i as u64),
            )
            .is_err()
        {
            continue;
        }
        conns[i] = Some(Conn {
            stream,
            inbuf: Vec::with_capacity(BUF),
            out: Vec::with_capacity(BUF),
            out_at: 0,
            close_after_flush: false,
            tls,
        });
    }
}

/// Plaintext HTTP answers before sealing: (body size, GET body, scratch output).
type HttpTls<'a> = (usize, &'a [u8], &'a mut Vec<u8>);

/// TLS echo (or, with `http`, TLS HTTP): read records, echo the plaintext (or answer the
/// requests it completes), queue the records (handshake messages, answers, alerts) in
/// `out` for [`flush`]. Returns false when the connection is done. Plaintext is drained
/// after every socket read: rustls refuses to read more while its received-plaintext
/// buffer is full (a request larger than a record or two).
fn serve_tls(c: &mut Conn, scratch: &mut [u8], mut http: Option<HttpTls>) -> bool {
    let Some(tls) = c.tls.as_mut() else {
        return false;
    };
    let mut open = true;
    loop {
        match tls.read_tls(&mut c.stream) {
            Ok(0) => {
                open = false;
                break;
            }
            Ok(_) => {
                if tls.process_new_packets().is_err() {
                    // rustls queued the alert: send it, then close.
                    c.close_after_flush = true;
                    break;
                }
                let drained = match http {
                    Some(_) => {
                        let inbuf = &mut c.inbuf;
                        drain_plaintext(tls, scratch, &mut c.close_after_flush, |_, d| {
                            inbuf.extend_from_slice(d);
                            true
                        })
                    }
                    None => echo_plaintext(tls, scratch, &mut c.out, &mut c.close_after_flush),
                };
                if !drained {
                    return false;
                }
                if c.close_after_flush {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    if let Some((size, get_body, plain)) = http.as_mut() {
        plain.clear();
        answer_all(
            &mut c.inbuf,
            *size,
            get_body,
            plain,
            &mut c.close_after_flush,
        );
        if tls.writer().write_all(plain).is_err() {
            return false;
        }
    }
    while tls.wants_write() {
        // Writing into a Vec cannot fail.
        if tls.write_tls(&mut c.out).is_err() {
            return false;
        }
    }
    open || !c.out.is_empty()
}

/// Hand the plaintext rustls holds to `sink` (false from it: the connection ends
/// without an answer); `close_notify` is answered with ours. Returns false when the
/// sink gave up.
fn drain_plaintext(
    tls: &mut ServerConnection,
    scratch: &mut [u8],
    close: &mut bool,
    mut sink: impl FnMut(&mut ServerConnection, &[u8]) -> bool,
) -> bool {
    loop {
        match tls.reader().read(scratch) {
            Ok(0) => {
                tls.send_close_notify();
                *close = true;
                break;
            }
            Ok(n) => {
                if !sink(tls, &scratch[..n]) {
                    return false;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => {
                *close = true;
                break;
            }
        }
    }
    true
}

/// Move the plaintext rustls holds back into it as records, queued in `out`.
fn echo_plaintext(
    tls: &mut ServerConnection,
    scratch: &mut [u8],
    out: &mut Vec<u8>,
    close: &mut bool,
) -> bool {
    drain_plaintext(tls, scratch, close, |tls, data| {
        // Sealed records go to `out` right away, so rustls's own send buffer never
        // fills; `out` holds at most what one request brought.
        if tls.writer().write_all(data).is_err() {
            return false;
        }
        while tls.wants_write() {
            if tls.write_tls(out).is_err() {
                return false;
            }
        }
        true
    })
}

/// Read what is there and queue it back. Returns false when the connection is done.
fn serve_echo(c: &mut Conn, scratch: &mut [u8]) -> bool {
    loop {
        match c.stream.read(scratch) {
            Ok(0) => return false,
            Ok(n) => c.out.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Read, answer every complete request in the buffer (pipelining is allowed).
fn serve_http(c: &mut Conn, size: usize, get_body: &[u8], scratch: &mut [u8]) -> bool {
    let mut open = true;
    loop {
        match c.stream.read(scratch) {
            Ok(0) => {
                open = false;
                break;
            }
            Ok(n) => c.inbuf.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    answer_all(
        &mut c.inbuf,
        size,
        get_body,
        &mut c.out,
        &mut c.close_after_flush,
    );
    open || !c.out.is_empty()
}

/// Answer every complete request in `inbuf` (pipelining is allowed) into `out`, and
/// drop what was answered.
fn answer_all(
    inbuf: &mut Vec<u8>,
    size: usize,
    get_body: &[u8],
    out: &mut Vec<u8>,
    close_after_flush: &mut bool,
) {
    let mut used = 0;
    loop {
        match answer_http(&inbuf[used..], size, get_body, out) {
            HttpStep::Answered { consumed, close } => {
                used += consumed;
                if close {
                    *close_after_flush = true;
                    break;
                }
            }
            HttpStep::NeedMore => break,
            HttpStep::Rejected => {
                *close_after_flush = true;
                break;
            }
        }
    }
    inbuf.drain(..used);
    if inbuf.len() > BUF {
        // A request that never ends: refuse it.
        out.extend_from_slice(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        *close_after_flush = true;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum HttpStep {
    Answered { consumed: usize, close: bool },
    NeedMore,
    Rejected,
}

/// Answer the first request in `buf`, appending the response to `out`.
fn answer_http(buf: &[u8], size: usize, get_body: &[u8], out: &mut Vec<u8>) -> HttpStep {
    if buf.is_empty() {
        return HttpStep::NeedMore;
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return HttpStep::NeedMore,
        Err(_) => {
            out.extend_from_slice(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return HttpStep::Rejected;
        }
    };
    let chunked = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    if chunked {
        // The generator never sends chunked bodies; proxies forward what they get.
        out.extend_from_slice(
            b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return HttpStep::Rejected;
    }
    let body_len = wire::content_length(req.headers).unwrap_or(0);
    if buf.len() < head + body_len {
        return HttpStep::NeedMore;
    }
    let close = req.version == Some(0)
        || req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close")
        });
    let body: &[u8] = if req.method == Some("POST") || req.method == Some("PUT") {
        &buf[head..head + body_len]
    } else {
        &get_body[..size]
    };
    // No allocation beyond `out`'s reused capacity: the header is written piecewise.
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ",
    );
    let mut num = itoa_buf(body.len());
    out.extend_from_slice(num.as_bytes());
    num.clear();
    out.extend_from_slice(if close {
        b"\r\nConnection: close\r\n\r\n" as &[u8]
    } else {
        b"\r\n\r\n"
    });
    out.extend_from_slice(body);
    HttpStep::Answered {
        consumed: head + body_len,
        close,
    }
}

/// Decimal digits of `n` on the stack.
fn itoa_buf(mut n: usize) -> Digits {
    let mut d = Digits { b: [0; 20], len: 0 };
    if n == 0 {
        d.b[0] = b'0';
        d.len = 1;
        return d;
    }
    let mut tmp = [0u8; 20];
    let mut k = 0;
    while n > 0 {
        tmp[k] = b'0' + (n % 10) as u8;
        n /= 10;
        k += 1;
    }
    for j in 0..k {
        d.b[j] = tmp[k - 1 - j];
    }
    d.len = k;
    d
}

struct Digits {
    b: [u8; 20],
    len: usize,
}

impl Digits {
    fn as_bytes(&self) -> &[u8] {
        &self.b[..self.len]
    }
    fn clear(&mut self) {
        self.len = 0;
    }
}

/// Write queued output; watch for writability only while some is left.
fn flush(c: &mut Conn, ep: &Epoll, token: usize) -> bool {
    while c.out_at < c.out.len() {
        match c.stream.write(&c.out[c.out_at..]) {
            Ok(0) => return false,
            Ok(n) => c.out_at += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let ev = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT, token as u64);
                let mut ev = ev;
                return ep.modify(c.stream.as_fd(), &mut ev).is_ok();
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    let had_out = !c.out.is_empty();
    c.out.clear();
    c.out_at = 0;
    if had_out {
        let mut ev = EpollEvent::new(EpollFlags::EPOLLIN, token as u64);
        let _ = ep.modify(c.stream.as_fd(), &mut ev);
    }
    !c.close_after_flush
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::HttpMethod;
    use std::time::Duration;

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[test]
    fn http_answers_get_post_pipelined_and_rejects_garbage() {
        let body = vec![b'x'; 4];
        let mut out = Vec::new();
        let two =
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        let HttpStep::Answered { consumed, close } = answer_http(two, 4, &body, &mut out) else {
            panic!()
        };
        assert!(!close);
        assert_eq!(
            wire::check(Workload::Http1, &out, 4, 0),
            wire::Response::Done
        );
        out.clear();
        assert_eq!(
            answer_http(&two[consumed..], 3, &body, &mut out),
            HttpStep::Answered {
                consumed: two.len() - consumed,
                close: false
            }
        );
        assert!(out.ends_with(b"\r\n\r\nabc"));
        assert_eq!(
            answer_http(
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\na",
                3,
                &body,
                &mut out
            ),
            HttpStep::NeedMore
        );
        out.clear();
        assert_eq!(
            answer_http(b"\x01\x02 nonsense\r\n\r\n", 4, &body, &mut out),
            HttpStep::Rejected
        );
        assert!(out.starts_with(b"HTTP/1.1 400"));
        let HttpStep::Answered { close, .. } = answer_http(
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            4,
            &body,
            &mut Vec::new(),
        ) else {
            panic!()
        };
        assert!(close);
        assert_eq!(itoa_buf(0).as_bytes(), b"0");
        assert_eq!(itoa_buf(65536).as_bytes(), b"65536");
    }

    #[test]
    fn serves_every_workload_on_loopback() {
        for (w, m) in [
            (Workload::TcpEcho, HttpMethod::Get),
            (Workload::UdpEcho, HttpMethod::Get),
            (Workload::Http1, HttpMethod::Get),
            (Workload::Http1, HttpMethod::Post),
        ] {
            let b = Backend::start(w, 64, local(), &[0]).unwrap();
            crate::loadgen::probe(w, 64, m, b.addr, None, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("{w:?} {m:?}: {e}"));
        }
    }

    #[test]
    fn the_tls_backends_answer_inside_tls_and_refuse_plaintext() {
        if crate::sys::find_binary("openssl").is_none() {
            eprintln!("SKIP: no openssl CLI to make certificates");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let certs = crate::tls::Certs::generate(dir.path()).unwrap();
        let b = Backend::start_tls(64, local(), &[0], certs.server_config().unwrap()).unwrap();
        let client = certs.client_config().unwrap();
        for size in [8, 64, 20_000] {
            crate::loadgen::probe(
                Workload::TlsEcho,
                size,
                HttpMethod::Get,
                b.addr,
                Some(&client),
                Duration::from_secs(2),
            )
            .unwrap_or_else(|e| panic!("{size} B: {e:#}"));
        }
        // Plaintext is not TLS: the backend answers with an alert and closes.
        let e = crate::loadgen::probe(
            Workload::TcpEcho,
            64,
            HttpMethod::Get,
            b.addr,
            None,
            Duration::from_secs(2),
        )
        .unwrap_err();
        assert!(!format!("{e:#}").is_empty());
        // The TLS HTTP backend (https1's direct target) answers inside TLS.
        let server = certs.server_config().unwrap();
        let b = Backend::start_with_tls(Workload::Https1, 64, local(), &[0], server).unwrap();
        for m in [HttpMethod::Get, HttpMethod::Post] {
            let w = Workload::Https1;
            crate::loadgen::probe(w, 64, m, b.addr, Some(&client), Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("{m:?}: {e:#}"));
        }
    }

    #[test]
    fn a_port_in_use_is_named() {
        let b = Backend::start(Workload::TcpEcho, 64, local(), &[0]).unwrap();
        let e = Backend::start(Workload::TcpEcho, 64, b.addr, &[0])
            .err()
            .unwrap();
        assert!(e.to_string().contains("in use"), "{e}");
    }
}
