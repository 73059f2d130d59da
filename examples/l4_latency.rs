//! A quick closed-loop latency probe for the L4 proxy (not the benchmark harness, which
//! is the `perf/` crate's job): one connection, a 64-byte message, wait for its echo,
//! repeat; blocking reads, so each round trip wakes the client and the backend (the
//! cost PLATFORM.md measures). Also measures user-space memory per idle connection.
//!
//! Three roles, so that `taskset` can place them (proxy on CPU 1, the rest on CPU 0):
//!
//! ```sh
//! cargo build --release --example l4_latency
//! X=target/release/examples/l4_latency
//! taskset -c 0 $X backend 127.0.0.1:19000 &
//! taskset -c 1 $X proxy uring 127.0.0.1:19001 127.0.0.1:19000 30 spin &  # or epoll; 30 s;
//!                                                    # idle: spin | adaptive | park
//! taskset -c 0 $X client 127.0.0.1:19000 20000      # direct
//! taskset -c 0 $X client 127.0.0.1:19001 20000      # through tickmesh
//! $X idle-mem 127.0.0.1:19001 1000 <proxy pid>      # RSS per idle connection
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tickmesh::config::{parse, Format};
use tickmesh::engine::{Engine, EngineKind, EngineOptions, Idle};
use tickmesh::net::SocketPool;
use tickmesh::route::{compile, Routes};
use tickmesh::telemetry::StatsRegistry;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> anyhow::Result<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| anyhow::anyhow!("missing argument {i}; see the example's header"))
    };
    match arg(0)? {
        "backend" => backend(arg(1)?.parse()?),
        "proxy" => proxy(
            arg(1)?,
            arg(2)?.parse()?,
            arg(3)?.parse()?,
            arg(4)?.parse()?,
            args.get(5).map_or("spin", String::as_str),
        ),
        "client" => client(arg(1)?.parse()?, arg(2)?.parse()?),
        "idle-mem" => idle_mem(arg(1)?.parse()?, arg(2)?.parse()?, arg(3)?.parse()?),
        other => anyhow::bail!("unknown role `{other}`: backend | proxy | client | idle-mem"),
    }
}

fn backend(addr: SocketAddr) -> anyhow::Result<()> {
    let l = TcpListener::bind(addr)?;
    for c in l.incoming() {
        let mut c = c?;
        c.set_nodelay(true)?;
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = c.read(&mut b) {
                if n == 0 || c.write_all(&b[..n]).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

fn proxy(
    engine: &str,
    listen: SocketAddr,
    to: SocketAddr,
    secs: u64,
    idle: &str,
) -> anyhow::Result<()> {
    let idle = match idle {
        "spin" => Idle::Spin,
        "park" => Idle::Park,
        _ => Idle::Adaptive,
    };
    let kind = match engine {
        "uring" => EngineKind::Uring,
        "epoll" => EngineKind::Epoll,
        _ => EngineKind::Auto,
    };
    let yaml = format!(
        "listeners:\n  - {{name: l, address: \"{listen}\", cluster: c}}\nclusters:\n  - {{name: c, endpoints: [\"{to}\"]}}\n"
    );
    let stats = StatsRegistry::new(1);
    let mut pool = SocketPool::new(1);
    let table = compile(&parse(&yaml, Format::Yaml)?, 1, &stats, &mut pool)?;
    let routes = Arc::new(Routes::new(table));
    let e = Engine::start(
        EngineOptions {
            kind,
            workers: 1,
            pin: true,
            idle,
            spin: Duration::from_micros(50),
        },
        routes,
    )?;
    eprintln!(
        "proxy: {:?} on {listen} -> {to} for {secs}s (pid {})",
        e.kind(),
        std::process::id()
    );
    std::thread::sleep(Duration::from_secs(secs));
    e.shutdown(Duration::ZERO);
    Ok(())
}

fn client(addr: SocketAddr, n: usize) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let msg = [0x5au8; 64];
    let mut back = [0u8; 64];
    let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
    for i in 0..n + 1000 {
        let t = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        if i >= 1000 {
            h.record(t.elapsed().as_nanos() as u64)?;
        }
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{addr}: n={n} p50={:.1}us p99={:.1}us p99.9={:.1}us max={:.1}us",
        us(0.5),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0
    );
    Ok(())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

fn idle_mem(addr: SocketAddr, n: usize, pid: u32) -> anyhow::Result<()> {
    let before = rss_kib(pid)?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr)?;
        // One round trip so the connection is fully established upstream.
        s.write_all(b"x")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(pid)?;
    println!(
        "idle connections: {n}; proxy RSS {before} KiB -> {after} KiB = {:.0} bytes per connection",
        (after.saturating_sub(before) * 1024) as f64 / n as f64
    );
    Ok(())
}
