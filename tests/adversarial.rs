//! Adversarial peers against the real HTTP proxy, for what a fuzzer cannot reach
//! because it takes time or many messages: a client trickling its head (slowloris),
//! 10,000 headers either way, a response that never ends, an upstream flooding interim
//! (1xx) responses, a client pipelining 1,000 requests without reading. Each test runs
//! once per engine (`uring`, `epoll`), on loopback, bounded in time; after each the
//! proxy still serves another client and frees every connection.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tickmesh::engine::EngineKind;
use tickmesh::telemetry::ListenerCounter as L;

// === upstreams ===

/// An upstream on loopback running `serve` on each connection in its own thread. Every
/// `serve` must return within a few seconds by itself (the tests are bounded).
struct Upstream {
    addr: SocketAddr,
}

impl Upstream {
    fn start(serve: fn(TcpStream)) -> Upstream {
        let l = listen_wide("127.0.0.1:0".parse().unwrap());
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                std::thread::spawn(move || serve(c));
            }
        });
        Upstream { addr }
    }
}

/// Read one request head (up to its empty line); its path, `None` at EOF.
fn read_head(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split(' ').nth(1)?.to_string();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        if h == "\r\n" {
            return Some(path);
        }
    }
}

/// A well-behaved keep-alive upstream: `200` with the path as its body.
fn serve_ok(c: TcpStream) {
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    while let Some(path) = read_head(&mut r) {
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}",
            path.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A `200` with a gigabyte `Content-Length`, then 16 KiB every 10 ms until the proxy
/// stops reading or 5 s passed.
fn serve_endless(c: TcpStream) {
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    if read_head(&mut r).is_none() {
        return;
    }
    let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n");
    let chunk = vec![b'x'; 16 * 1024];
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) && w.write_all(&chunk).is_ok() {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `100 Continue` after `100 Continue`, in batches of 100, until the proxy stops
/// reading or 5 s passed; never a final response.
fn serve_1xx_flood(c: TcpStream) {
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    if read_head(&mut r).is_none() {
        return;
    }
    let batch = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(100);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) && w.write_all(&batch).is_ok() {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A `200` whose head has 10,000 header lines.
fn serve_10k_headers(c: TcpStream) {
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    if read_head(&mut r).is_none() {
        return;
    }
    let mut resp = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..10_000 {
        resp.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    resp.extend_from_slice(b"content-length: 0\r\n\r\n");
    let _ = w.write_all(&resp);
    // Hold the connection until the proxy drops it.
    let mut sink = [0u8; 1024];
    let _ = r.get_mut().set_read_timeout(Some(Duration::from_secs(5)));
    while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
}

// === the proxy and its clients ===

/// A proxy whose listener sends `/ok` to a well-behaved upstream and everything else to
/// `bad`; `listener_extra` and `route_extra` go into the listener's and the catch-all
/// route's maps.
fn proxy(
    kind: EngineKind,
    bad: SocketAddr,
    listener_extra: &str,
    route_extra: &str,
) -> (Upstream, Proxy) {
    let good = Upstream::start(serve_ok);
    let clusters = cluster_yaml("good", &[good.addr], "") + &cluster_yaml("bad", &[bad], "");
    let yaml = format!(
        "listeners:\n  - {{name: l, address: \"127.0.0.1:0\", protocol: http{listener_extra}}}\n\
         clusters:\n{clusters}\
         route_configs:\n  - name: rc\n    virtual_hosts:\n      - name: vh\n        domains: [\"*\"]\n        routes:\n\
         \x20         - match: {{prefix: \"/ok\"}}\n            route: {{cluster: good}}\n\
         \x20         - match: {{prefix: \"/\"}}\n            route: {{cluster: bad{route_extra}}}\n"
    );
    (good, Proxy::start(kind, &yaml))
}

fn client(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

/// One response's status line and headers; its status (0 when none came).
fn read_status(r: &mut BufReader<TcpStream>) -> u16 {
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return 0;
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            return status;
        }
    }
}

/// Another client is served while (or after) the adversary does its worst.
fn still_serves(addr: SocketAddr) {
    let (mut s, mut r) = client(addr);
    s.write_all(b"GET /ok/other HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_status(&mut r), 200, "another client is not served");
    let mut body = [0u8; 9];
    r.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"/ok/other");
}

fn all_freed(p: &Proxy) {
    wait_until(
        "every connection to be freed",
        Duration::from_secs(5),
        || p.engine().open_connections() == 0,
    );
}

/// Read until EOF or a reset, at most `limit`; how long it took and how many bytes came.
fn drain(r: &mut BufReader<TcpStream>, limit: Duration) -> (Duration, usize) {
    let t = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    while t.elapsed() < limit {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    (t.elapsed(), n)
}

// === tests (each runs per engine, see the bottom) ===

/// Slowloris: a head trickled one byte each 20 ms gets 408 at the header timeout
/// (counted from its first byte, not reset by each byte); meanwhile another client is
/// served, and afterwards the connection is freed.
fn slowloris(kind: EngineKind) {
    let (_good, p) = proxy(kind, dead_addr(), ", request_header_timeout: 300ms", "");
    let addr = p.listener("l");
    let (s, mut r) = client(addr);
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let (mut s, stop) = (s.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            let head = b"GET /ok/slow HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
            for b in head.iter() {
                if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let t = Instant::now();
    still_serves(addr);
    assert_eq!(read_status(&mut r), 408);
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "408 after {took:?}"
    );
    trickle.join().unwrap();
    assert_eq!(p.stats.listener("l").get(L::HttpHeaderTimeout), 1);
    drop((s, r));
    still_serves(addr);
    all_freed(&p);
}

/// 10,000 headers from a client: 431 once the hundred-and-first arrives, without
/// waiting for the rest. From an upstream: 502.
fn ten_thousand_headers(kind: EngineKind) {
    let bad = Upstream::start(serve_10k_headers);
    let (_good, p) = proxy(kind, bad.addr, "", "");
    let addr = p.listener("l");
    let mut head = b"GET /ok/h HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..10_000 {
        head.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let (mut s, mut r) = client(addr);
    let _ = s.write_all(&head); // the proxy may answer and close first
    assert_eq!(read_status(&mut r), 431);
    drop((s, r));
    let (mut s, mut r) = client(addr);
    s.write_all(b"GET /many HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_status(&mut r), 502, "10,000 response headers");
    drop((s, r));
    let ls = p.stats.listener("l");
    assert_eq!(ls.get(L::HttpBadRequest), 1);
    assert_eq!(ls.get(L::HttpBadGateway), 1);
    still_serves(addr);
    all_freed(&p);
}

/// A response that never ends: the client gets the head and a stream of body, and the
/// route timeout (which covers the whole response) resets it; the upstream is let go.
/// A client that gives up on such a response frees both sides at once.
fn endless_response(kind: EngineKind) {
    let bad = Upstream::start(serve_endless);
    let (_good, p) = proxy(kind, bad.addr, "", ", timeout: 500ms");
    let addr = p.listener("l");
    let (mut s, mut r) = client(addr);
    let t = Instant::now();
    s.write_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_status(&mut r), 200);
    let (_, n) = drain(&mut r, Duration::from_secs(4));
    let took = t.elapsed();
    assert!(n > 0, "no body bytes came");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "the endless response ended after {took:?}"
    );
    assert_eq!(p.stats.listener("l").get(L::HttpUpstreamTimeout), 1);
    drop((s, r));
    // The client leaves first: nothing stays open.
    let (mut s, mut r) = client(addr);
    s.write_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_status(&mut r), 200);
    drop((s, r));
    still_serves(addr);
    all_freed(&p);
}

/// An upstream that sends interim responses and never a final one: the client gets a
/// bounded number of them (32), then a 502, long before the default route timeout.
fn interim_flood(kind: EngineKind) {
    let bad = Upstream::start(serve_1xx_flood);
    let (_good, p) = proxy(kind, bad.addr, "", "");
    let addr = p.listener("l");
    let (mut s, mut r) = client(addr);
    let t = Instant::now();
    s.write_all(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut interim = 0;
    let last = loop {
        match read_status(&mut r) {
            100 if interim < 1_000 => interim += 1,
            other => break other,
        }
    };
    assert_eq!(
        last,
        502,
        "after {interim} interim responses, in {:?}",
        t.elapsed()
    );
    assert_eq!(interim, 32);
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(p.stats.listener("l").get(L::HttpBadGateway), 1);
    drop((s, r));
    still_serves(addr);
    all_freed(&p);
}

/// 1,000 pipelined requests written before any response is read: the proxy reads them
/// as it can answer (its buffers stay bounded), then every response comes, in order.
fn pipeline_without_reading(kind: EngineKind) {
    let (_good, p) = proxy(kind, dead_addr(), "", "");
    let addr = p.listener("l");
    let (s, mut r) = client(addr);
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for i in 0..1_000 {
                let req = format!("GET /ok/{i:04} HTTP/1.1\r\nHost: x\r\n\r\n");
                s.write_all(req.as_bytes()).unwrap();
            }
        })
    };
    // Not reading for a while: the responses pile up in the proxy and the sockets.
    std::thread::sleep(Duration::from_millis(300));
    still_serves(addr);
    for i in 0..1_000 {
        assert_eq!(read_status(&mut r), 200, "response {i}");
        let mut body = [0u8; 8];
        r.read_exact(&mut body).unwrap();
        assert_eq!(
            body,
            *format!("/ok/{i:04}").as_bytes(),
            "response {i} out of order"
        );
    }
    writer.join().unwrap();
    assert_eq!(p.stats.listener("l").get(L::HttpRqTotal), 1_001);
    drop((s, r));
    all_freed(&p);
}

per_engine!(
    slowloris,
    ten_thousand_headers,
    endless_response,
    interim_flood,
    pipeline_without_reading,
);
