//! Shared harness for the engine integration tests: a proxy built from a YAML table,
//! echo backends and clients on loopback.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tickmesh::config::{parse, Format};
use tickmesh::engine::{Engine, EngineKind, EngineOptions, Idle};
use tickmesh::net::SocketPool;
use tickmesh::route::{compile, RouteTable, Routes};
use tickmesh::telemetry::StatsRegistry;

pub mod https;
pub mod pki;

pub const WORKERS: usize = 2;

pub struct Proxy {
    pub engine: Option<Engine>,
    pub routes: Arc<Routes>,
    pub stats: StatsRegistry,
    pub pool: SocketPool,
    generation: u64,
}

impl Proxy {
    pub fn start(kind: EngineKind, yaml: &str) -> Proxy {
        Proxy::start_idle(kind, yaml, Idle::Adaptive)
    }

    pub fn start_idle(kind: EngineKind, yaml: &str, idle: Idle) -> Proxy {
        let stats = StatsRegistry::new(WORKERS);
        let mut pool = SocketPool::new(WORKERS);
        let t = table(yaml, 1, &stats, &mut pool);
        let routes = Arc::new(Routes::new(t));
        let engine = Engine::start(
            EngineOptions {
                kind,
                workers: WORKERS,
                pin: false,
                idle,
                spin: Duration::from_micros(20),
            },
            routes.clone(),
        )
        .expect("engine starts");
        assert_eq!(engine.kind(), kind);
        Proxy {
            engine: Some(engine),
            routes,
            stats,
            pool,
            generation: 1,
        }
    }

    pub fn apply(&mut self, yaml: &str) {
        let cfg = parse(yaml, Format::Yaml).unwrap_or_else(|e| panic!("test config: {e}"));
        self.apply_config(&cfg);
    }

    /// Compile and publish an already parsed config (what a control-plane apply does
    /// after parsing).
    pub fn apply_config(&mut self, cfg: &tickmesh::config::Config) {
        self.generation += 1;
        let t = compile(cfg, self.generation, &self.stats, &mut self.pool)
            .unwrap_or_else(|e| panic!("compile: {e}"));
        self.routes.store(t);
        self.pool.prune();
    }

    pub fn listener(&self, name: &str) -> SocketAddr {
        self.routes
            .load()
            .listener(name)
            .expect("listener")
            .1
            .sockets
            .address
    }

    pub fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("running")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(e) = self.engine.take() {
            e.shutdown(Duration::from_millis(100));
        }
    }
}

pub fn table(
    yaml: &str,
    generation: u64,
    stats: &StatsRegistry,
    pool: &mut SocketPool,
) -> RouteTable {
    let cfg = parse(yaml, Format::Yaml).unwrap_or_else(|e| panic!("test config: {e}"));
    compile(&cfg, generation, stats, pool).unwrap_or_else(|e| panic!("compile: {e}"))
}

pub fn tcp_config(port: u16, cluster: &str, clusters: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - {{name: l, address: \"127.0.0.1:{port}\", cluster: {cluster}{extra}}}\nclusters:\n{clusters}"
    )
}

pub fn cluster_yaml(name: &str, eps: &[SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = eps.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "  - {{name: {name}, endpoints: [{}]{extra}}}\n",
        eps.join(", ")
    )
}

/// A thread-per-connection echo server on loopback; counts connections.
pub struct Echo {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Echo {
    pub fn start() -> Echo {
        let l = listen_wide("127.0.0.1:0".parse().unwrap());
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut c) = c else { continue };
                a.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => {
                                let _ = c.shutdown(std::net::Shutdown::Write);
                                return;
                            }
                            Ok(n) => {
                                if c.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Echo {
            addr,
            accepted,
            stop,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Deterministic payload for connection `i`.
pub fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Send `data` through `addr` and read the echo back, concurrently; byte-exact check.
pub async fn echo_once(addr: SocketAddr, data: Vec<u8>) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut r, mut w) = s.into_split();
    let expect = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await
    });
    let mut got = Vec::with_capacity(expect.len());
    r.read_to_end(&mut got)
        .await
        .map_err(|e| format!("read: {e}"))?;
    writer
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("write: {e}"))?;
    if got != expect {
        return Err(format!(
            "echo mismatch: sent {} bytes, got {}",
            expect.len(),
            got.len()
        ));
    }
    Ok(())
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A free loopback port with nothing listening (connects are refused).
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

pub fn round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut got = vec![0; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

/// A listener with a deep accept queue: std's backlog of 128 overflows when a test opens
/// 1,000 connections at once, and an overflowed SYN is retried only after 1 s — as long
/// as the proxy's default connect timeout, which then fails the connection.
pub fn listen_wide(addr: std::net::SocketAddr) -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(4096).unwrap();
    s.into()
}

/// One test per engine: `uring` (skipped with a message where io_uring is unavailable)
/// and `epoll`, each calling the test function with its `EngineKind`.
#[allow(unused_macros)]
macro_rules! per_engine {
    ($($name:ident),* $(,)?) => {
        mod uring {
            use super::*;
            $(
                #[test]
                fn $name() {
                    if let Err(e) = tickmesh::engine::uring_available() {
                        eprintln!("SKIP {}: io_uring unavailable here: {e}", stringify!($name));
                        return;
                    }
                    super::$name(EngineKind::Uring);
                }
            )*
        }
        mod epoll {
            use super::*;
            $(
                #[test]
                fn $name() {
                    super::$name(EngineKind::Epoll);
                }
            )*
        }
    };
}
