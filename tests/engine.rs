//! The engine integration suite: real sockets on 127.0.0.1, the real engine threads,
//! routing tables built with `route::compile`. Every test runs once per engine
//! (`uring`, `epoll`); the uring run skips with a message where io_uring is unusable.
//!
//! Peers (echo backends, clients) run on a small tokio runtime in the test process.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tickmesh::config::{parse, Format};
use tickmesh::engine::{Engine, EngineKind, EngineOptions, Idle};
use tickmesh::net::SocketPool;
use tickmesh::route::{compile, RouteTable, Routes};
use tickmesh::telemetry::{ListenerCounter, StatsRegistry, UpstreamCounter};

const WORKERS: usize = 2;

// === harness ===

struct Proxy {
    engine: Option<Engine>,
    routes: Arc<Routes>,
    stats: StatsRegistry,
    pool: SocketPool,
    generation: u64,
}

impl Proxy {
    fn start(kind: EngineKind, yaml: &str) -> Proxy {
        let stats = StatsRegistry::new(WORKERS);
        let mut pool = SocketPool::new(WORKERS);
        let t = table(yaml, 1, &stats, &mut pool);
        let routes = Arc::new(Routes::new(t));
        let engine = Engine::start(
            EngineOptions {
                kind,
                workers: WORKERS,
                pin: false,
                idle: Idle::Adaptive,
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

    fn apply(&mut self, yaml: &str) {
        self.generation += 1;
        let t = table(yaml, self.generation, &self.stats, &mut self.pool);
        self.routes.store(t);
        self.pool.prune();
    }

    fn listener(&self, name: &str) -> SocketAddr {
        self.routes
            .load()
            .listener(name)
            .expect("listener")
            .1
            .sockets
            .address
    }

    fn engine(&self) -> &Engine {
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

fn table(yaml: &str, generation: u64, stats: &StatsRegistry, pool: &mut SocketPool) -> RouteTable {
    let cfg = parse(yaml, Format::Yaml).unwrap_or_else(|e| panic!("test config: {e}"));
    compile(&cfg, generation, stats, pool).unwrap_or_else(|e| panic!("compile: {e}"))
}

fn tcp_config(port: u16, cluster: &str, clusters: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - {{name: l, address: \"127.0.0.1:{port}\", cluster: {cluster}{extra}}}\nclusters:\n{clusters}"
    )
}

fn cluster_yaml(name: &str, eps: &[SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = eps.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "  - {{name: {name}, endpoints: [{}]{extra}}}\n",
        eps.join(", ")
    )
}

/// A thread-per-connection echo server on loopback; counts connections.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Echo {
    fn start() -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
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

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Deterministic payload for connection `i`.
fn payload(i: usize, len: usize) -> Vec<u8> {
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
async fn echo_once(addr: SocketAddr, data: Vec<u8>) -> Result<(), String> {
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

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// === tests (each runs per engine, see the bottom) ===

fn echo_concurrent(kind: EngineKind, conns: usize, bytes: usize) {
    let echo = Echo::start();
    let p = Proxy::start(
        kind,
        &tcp_config(0, "c", &cluster_yaml("c", &[echo.addr], ""), ""),
    );
    let addr = p.listener("l");
    let rt = runtime();
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..conns)
            .map(|i| tokio::spawn(echo_once(addr, payload(i, bytes))))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {conns} failed, first: {}",
        failed.len(),
        failed[0]
    );
    let ls = p.stats.listener("l");
    wait_until("connections to close", Duration::from_secs(5), || {
        ls.get(ListenerCounter::CxClosed) == conns as u64
    });
    assert_eq!(ls.get(ListenerCounter::CxTotal), conns as u64);
    assert_eq!(
        ls.get(ListenerCounter::BytesFromDownstream),
        (conns * bytes) as u64
    );
    assert_eq!(
        ls.get(ListenerCounter::BytesToDownstream),
        (conns * bytes) as u64
    );
    let cs = p.stats.cluster("c");
    assert_eq!(cs.get(UpstreamCounter::BytesSent), (conns * bytes) as u64);
    assert_eq!(p.engine().open_connections(), 0);
}

fn echo_1(kind: EngineKind) {
    echo_concurrent(kind, 1, 1 << 20);
}

fn echo_100(kind: EngineKind) {
    echo_concurrent(kind, 100, 64 * 1024);
}

fn echo_1000(kind: EngineKind) {
    echo_concurrent(kind, 1000, 4 * 1024);
}

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

per_engine!(echo_1, echo_100, echo_1000);

#[allow(dead_code)]
fn unused_imports_guard(_: UdpSocket, _: AtomicU64) {}
