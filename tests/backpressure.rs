//! Backpressure, in a test binary of its own: it measures this process's resident
//! memory, which tests running in parallel threads would disturb. One test runs the
//! uring and epoll engines one after the other.
//!
//! The bound: a proxied connection holds at most 2 directions × 4 buffers × 16 KiB =
//! 128 KiB of user-space buffer (`proxy::l4::tcp::{QUEUE, BUF_SIZE}`), and a worker's
//! whole pool is capped at 2048 × 16 KiB = 32 MiB whatever the connection count. The
//! kernel's socket buffers (autotuned, a few MiB per socket on loopback) sit outside it.
//! The HTTP proxy holds the same bound on a response body: its upstream receive (a
//! multishot one on uring, kept armed across requests and while pooled) is asked for
//! only while the client-bound queue has room.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tickmesh::engine::EngineKind;

/// Resident set size of this process, from /proc/self/status.
fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Bytes the upstream offers (see the test's note on size).
fn offered_bytes() -> u64 {
    std::env::var("TICKMESH_BACKPRESSURE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1024)
        << 20
}

/// `bytes`, which start at stream offset `at`, are the repeating pattern `chunk`
/// (compared slice by slice: memcmp).
fn assert_pattern(bytes: &[u8], at: u64, chunk: &[u8]) {
    let mut done = 0;
    while done < bytes.len() {
        let off = ((at + done as u64) % chunk.len() as u64) as usize;
        let k = (bytes.len() - done).min(chunk.len() - off);
        assert!(
            bytes[done..done + k] == chunk[off..off + k],
            "bytes differ near offset {}",
            at + done as u64
        );
        done += k;
    }
}

/// With a client that reads nothing, after the pipe had half a second to fill: over the
/// next half second the backend writes nothing more (`written` counts its bytes), less
/// than 64 MiB went out in all, and the process's memory stays within 2 MiB. Returns the
/// bytes written and the RSS before and after.
fn assert_stalled(written: &AtomicU64) -> (u64, u64, u64) {
    std::thread::sleep(Duration::from_millis(500));
    let rss0 = rss_bytes();
    let w0 = written.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    let w1 = written.load(Ordering::Relaxed);
    let rss1 = rss_bytes();
    assert!(
        w1 < 64 << 20,
        "backend wrote {w1} bytes into a client that reads nothing"
    );
    assert_eq!(
        w0, w1,
        "the backend kept writing while the client did not read"
    );
    assert!(
        rss1 < rss0 + (2 << 20),
        "memory grew by {} KiB while stalled",
        (rss1 - rss0) >> 10
    );
    (w1, rss0, rss1)
}

/// The upstream sends a large stream while the client stops reading for a second: the
/// proxy must stop reading the upstream (the backend's writes stall) and its memory must
/// not grow with what is offered; when the client resumes, every byte arrives in order.
///
/// Size: 1 GiB, the figure (≈ 5 s per engine in a debug build here);
/// `TICKMESH_BACKPRESSURE_MIB` changes it. The stall's bound does not depend on it.
fn backpressure_bounds_memory(kind: EngineKind) {
    let total = offered_bytes();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let w2 = written.clone();
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let chunk = payload(99, 1 << 20);
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if c.write_all(&chunk[..n]).is_err() {
                return;
            }
            left -= n as u64;
            w2.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    let p = Proxy::start(
        kind,
        &tcp_config(0, "c", &cluster_yaml("c", &[backend], ""), ""),
    );
    let mut s = connect(p.listener("l"));
    // Let the pipe fill, then watch it stay full.
    // In flight: kernel buffers of three sockets plus the proxy's ≤ 64 KiB queue.
    let (w1, rss0, rss1) = assert_stalled(&written);
    // Resume: everything arrives, in order.
    let chunk = payload(99, 1 << 20);
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert_pattern(&buf[..n], got, &chunk);
        got += n as u64;
    }
    server.join().unwrap();
    assert_eq!(got, total);
    eprintln!(
        "backpressure {kind:?}: stalled at {} KiB written by the backend, RSS {} -> {} KiB; {} MiB delivered intact",
        w1 >> 10,
        rss0 >> 10,
        rss1 >> 10,
        total >> 20
    );
}

/// As [`backpressure_bounds_memory`], through the HTTP proxy: a response body of a
/// quarter of the offered size to a client that stops reading; the upstream's writes
/// stall, memory stays flat, the body arrives intact, and the same (pooled) upstream
/// connection then serves the client's next request.
fn http_backpressure_bounds_memory(kind: EngineKind) {
    let total = offered_bytes() / 4;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let w2 = written.clone();
    let server = std::thread::spawn(move || {
        let (c, _) = l.accept().unwrap();
        let _ = c.set_read_timeout(Some(Duration::from_secs(20)));
        let mut w = c.try_clone().unwrap();
        let mut r = BufReader::new(c);
        let head = |r: &mut BufReader<std::net::TcpStream>| {
            let mut path = String::new();
            for i in 0..100 {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return None;
                }
                if i == 0 {
                    path = line.split(' ').nth(1).unwrap_or("").to_string();
                }
                if line == "\r\n" {
                    return Some(path);
                }
            }
            None
        };
        assert_eq!(head(&mut r).as_deref(), Some("/big"));
        let h = format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n\r\n");
        w.write_all(h.as_bytes()).unwrap();
        let chunk = payload(98, 1 << 20);
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if w.write_all(&chunk[..n]).is_err() {
                return false;
            }
            left -= n as u64;
            w2.fetch_add(n as u64, Ordering::Relaxed);
        }
        // The next request comes on the same connection (the proxy pooled it).
        let next = head(&mut r);
        let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext");
        next.as_deref() == Some("/next")
    });
    let yaml = format!(
        "listeners:\n  - {{name: l, address: \"127.0.0.1:0\", protocol: http}}\n\
         clusters:\n{}\
         route_configs:\n  - name: rc\n    virtual_hosts:\n      - name: vh\n        domains: [\"*\"]\n        routes:\n\
         \x20         - match: {{prefix: \"/\"}}\n            route: {{cluster: c}}\n",
        cluster_yaml("c", &[backend], "")
    );
    let p = Proxy::start(kind, &yaml);
    let mut s = connect(p.listener("l"));
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (w1, rss0, rss1) = assert_stalled(&written);
    // Resume: the head, then every body byte in order.
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let chunk = payload(98, 1 << 20);
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    while got < total {
        let want = ((total - got) as usize).min(buf.len());
        let n = r.read(&mut buf[..want]).unwrap();
        assert!(n > 0, "the body ended at {got} of {total}");
        assert_pattern(&buf[..n], got, &chunk);
        got += n as u64;
    }
    s.write_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    for _ in 0..20 {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let mut next = [0u8; 4];
    r.read_exact(&mut next).unwrap();
    assert_eq!(&next, b"next");
    assert!(
        server.join().unwrap(),
        "the next request on the pooled connection"
    );
    eprintln!(
        "http backpressure {kind:?}: stalled at {} KiB written by the backend, RSS {} -> {} KiB; {} MiB delivered intact",
        w1 >> 10,
        rss0 >> 10,
        rss1 >> 10,
        total >> 20
    );
}

#[test]
fn backpressure_bounds_memory_per_engine() {
    match tickmesh::engine::uring_available() {
        Ok(()) => backpressure_bounds_memory(EngineKind::Uring),
        Err(e) => eprintln!("SKIP uring backpressure: io_uring unavailable here: {e}"),
    }
    backpressure_bounds_memory(EngineKind::Epoll);
}

#[test]
fn http_backpressure_bounds_memory_per_engine() {
    match tickmesh::engine::uring_available() {
        Ok(()) => http_backpressure_bounds_memory(EngineKind::Uring),
        Err(e) => eprintln!("SKIP uring http backpressure: io_uring unavailable here: {e}"),
    }
    http_backpressure_bounds_memory(EngineKind::Epoll);
}
