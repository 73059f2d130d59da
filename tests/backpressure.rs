//! Backpressure, in a test binary of its own: it measures this process's resident
//! memory, which tests running in parallel threads would disturb. One test runs the
//! uring and epoll engines one after the other.
//!
//! The bound: a proxied connection holds at most 2 directions × 4 buffers × 16 KiB =
//! 128 KiB of user-space buffer (`proxy::l4::tcp::{QUEUE, BUF_SIZE}`), and a worker's
//! whole pool is capped at 2048 × 16 KiB = 32 MiB whatever the connection count. The
//! kernel's socket buffers (autotuned, a few MiB per socket on loopback) sit outside it.

mod common;

use std::io::{Read, Write};
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
    std::thread::sleep(Duration::from_millis(500));
    let rss0 = rss_bytes();
    let w0 = written.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    let w1 = written.load(Ordering::Relaxed);
    let rss1 = rss_bytes();
    // In flight: kernel buffers of three sockets plus the proxy's ≤ 64 KiB queue.
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
    // Resume: everything arrives, in order.
    let chunk = payload(99, 1 << 20);
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        // Compare against the repeating 1 MiB pattern, slice by slice (memcmp).
        let mut done = 0;
        while done < n {
            let off = ((got + done as u64) % chunk.len() as u64) as usize;
            let k = (n - done).min(chunk.len() - off);
            assert!(
                buf[done..done + k] == chunk[off..off + k],
                "bytes differ near offset {}",
                got + done as u64
            );
            done += k;
        }
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

#[test]
fn backpressure_bounds_memory_per_engine() {
    match tickmesh::engine::uring_available() {
        Ok(()) => backpressure_bounds_memory(EngineKind::Uring),
        Err(e) => eprintln!("SKIP uring backpressure: io_uring unavailable here: {e}"),
    }
    backpressure_bounds_memory(EngineKind::Epoll);
}
