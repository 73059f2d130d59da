//! `tickmesh demo`: the product working, in one process, in well under a minute.
//!
//! Starts echo backends on the embedded default config's endpoints (127.0.0.1:9000-9002
//! TCP, :9100-9101 UDP), a daemon with that config (on a private control socket and
//! state directory, so nothing of the operator's is touched), measures a closed-loop
//! 64-byte echo straight to a backend, then through tickmesh while it changes the route
//! live over the control socket, and prints what happened.
//!
//! The client and backends here are plain blocking threads: the demo shows behaviour and
//! gives a first latency comparison; `tickmesh bench` is the measurement tool.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;

use crate::cli::DemoArgs;
use crate::config::{self, Format};
use crate::control::client::{request, stats_table};
use crate::control::protocol::{Request, StatsResult};
use crate::daemon::{ConfigSource, Daemon, DaemonOptions};
use crate::engine::EngineOptions;

const MESSAGE: usize = 64;
/// Each client reconnects after this many requests, so new connections show the route
/// change while established ones keep their upstream.
const REQUESTS_PER_CONNECTION: u64 = 500;

/// The route change applied half-way through: the canary cluster takes half of the new
/// connections.
const CANARY: &str = r#"
listeners:
  - name: orders
    address: 127.0.0.1:7000
    protocol: tcp
    weighted_clusters: [{cluster: gateway, weight: 50}, {cluster: gateway-canary, weight: 50}]
"#;

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let cfg = config::parse(config::DEFAULT_CONFIG, Format::Yaml)
        .context("the embedded default config")?;
    let stop = Arc::new(AtomicBool::new(false));

    // Backends: every endpoint of the default config, TCP or UDP as its listener says.
    let mut tcp_backends = Vec::new();
    let mut udp_backends = Vec::new();
    for c in &cfg.clusters {
        let udp = cfg
            .listeners
            .iter()
            .any(|l| l.protocol == config::Protocol::Udp && l.cluster.as_deref() == Some(&c.name));
        for e in &c.endpoints {
            let addr = e
                .address
                .ip()
                .context("the default config has only IP endpoints")?;
            if udp {
                udp_backends.push(UdpEcho::start(addr, stop.clone())?);
            } else {
                tcp_backends.push((c.name.clone(), TcpEcho::start(addr, stop.clone())?));
            }
        }
    }

    let dir = PrivateDir::new()?;
    let mut engine = EngineOptions::from_args(&args.engine);
    if args.engine.workers.is_none() {
        // The client and backends need CPU too: one worker leaves them the other cores.
        engine.workers = 1;
    }
    let daemon = Daemon::start(DaemonOptions {
        engine,
        control: args
            .control
            .control
            .clone()
            .unwrap_or_else(|| dir.path.join("control.sock")),
        state_dir: dir.path.join("state"),
        config: ConfigSource::Text {
            text: config::DEFAULT_CONFIG.to_string(),
            format: Format::Yaml,
            origin: "the embedded default config".into(),
        },
        drain_timeout: Duration::from_secs(2),
    })
    .context(
        "starting the daemon (is another tickmesh, or something else, using 127.0.0.1:7000-7001?)",
    )?;
    let control = daemon.control_path().to_path_buf();
    println!(
        "tickmesh demo: daemon up (engine {}), listener `orders` 127.0.0.1:7000 -> cluster `gateway` {:?}",
        format!("{:?}", daemon.engine_kind()).to_lowercase(),
        endpoints_of(&cfg, "gateway"),
    );

    let orders: SocketAddr = "127.0.0.1:7000".parse().expect("literal address");
    let direct_addr = tcp_backends[0].1.addr;
    let phase = args.duration / 2;

    // 1. Direct, for the floor.
    println!(
        "  [1/3] {} connections straight to a backend for {:.1}s ...",
        args.connections,
        phase.as_secs_f64() / 2.0
    );
    let direct = drive(direct_addr, args.connections, phase / 2)?;

    // 2. Through tickmesh, with the route changed half-way.
    println!(
        "  [2/3] {} connections through tickmesh for {:.1}s; the route changes half-way ...",
        args.connections,
        args.duration.as_secs_f64()
    );
    let before: Vec<u64> = tcp_backends
        .iter()
        .map(|(_, b)| b.accepted.load(Relaxed))
        .collect();
    let change_at = Instant::now() + phase;
    let control2 = control.clone();
    let counters: Vec<Arc<AtomicU64>> = tcp_backends
        .iter()
        .map(|(_, b)| b.accepted.clone())
        .collect();
    // Half-way: note the connections each backend has taken, then change the route.
    let changed = thread::spawn(move || -> anyhow::Result<(Vec<u64>, u64)> {
        thread::sleep(change_at.saturating_duration_since(Instant::now()));
        let mid = counters.iter().map(|a| a.load(Relaxed)).collect();
        let r = request(
            &control2,
            &Request::Apply {
                config: CANARY.into(),
                format: Format::Yaml,
                prune: false,
            },
        )?;
        if !r.ok {
            bail!(
                "the live route change was refused: {}",
                r.error.unwrap_or_default()
            );
        }
        let generation = r
            .result
            .as_ref()
            .and_then(|v| v.get("generation"))
            .and_then(|g| g.as_u64())
            .unwrap_or(0);
        Ok((mid, generation))
    });
    let proxied = drive(orders, args.connections, args.duration)?;
    let (mid, generation) = changed
        .join()
        .map_err(|_| anyhow::anyhow!("the control thread panicked"))??;
    let after: Vec<u64> = tcp_backends
        .iter()
        .map(|(_, b)| b.accepted.load(Relaxed))
        .collect();

    // 3. UDP through the market-data listener.
    println!("  [3/3] 1,000 datagrams through the UDP listener `market-data` 127.0.0.1:7001 ...");
    let udp = udp_round_trips("127.0.0.1:7001".parse().expect("literal address"), 1_000)?;

    // Report.
    println!();
    println!(
        "TCP echo, {MESSAGE} B, closed loop, {} connections",
        args.connections
    );
    println!(
        "  {:<10} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "requests", "errors", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    for (name, r) in [("direct", &direct), ("tickmesh", &proxied)] {
        let h = &r.hist;
        let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
        println!(
            "  {:<10} {:>10} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            name,
            r.requests,
            r.errors,
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            h.max() as f64 / 1000.0
        );
    }
    let added = |p: f64| {
        (proxied.hist.value_at_quantile(p) as f64 - direct.hist.value_at_quantile(p) as f64)
            / 1000.0
    };
    println!("  added by tickmesh: p50 {:+.1} µs, p99 {:+.1} µs (client, backends and proxy share this machine's CPUs; see `tickmesh bench` for placement)", added(0.5), added(0.99));
    println!();
    println!("Live route change (apply over the control socket, generation {generation}): new upstream connections per backend");
    println!(
        "  {:<16} {:<22} {:>14} {:>14}",
        "cluster", "backend", "before change", "after change"
    );
    for (i, (cluster, b)) in tcp_backends.iter().enumerate() {
        let m = mid[i];
        println!(
            "  {:<16} {:<22} {:>14} {:>14}",
            cluster,
            b.addr.to_string(),
            m - before[i],
            after[i] - m
        );
    }
    println!();
    println!(
        "UDP: {} of {} datagrams echoed through tickmesh, {} lost",
        udp.0,
        udp.1,
        udp.1 - udp.0
    );
    println!();
    let stats = request(&control, &Request::Stats {})?;
    if let Some(v) = stats.result {
        let s: StatsResult = serde_json::from_value(v).context("reading the daemon's stats")?;
        println!("{}", stats_table(&s));
    }
    let errors = direct.errors + proxied.errors;
    println!("errors: {errors}");

    stop.store(true, Relaxed);
    let report = daemon.shutdown();
    if report.open_at_deadline > 0 {
        println!(
            "({} connection(s) were still open at shutdown)",
            report.open_at_deadline
        );
    }
    if errors > 0 || udp.0 < udp.1 {
        bail!(
            "the demo saw errors: {errors} TCP, {} UDP datagrams lost",
            udp.1 - udp.0
        );
    }
    Ok(())
}

fn endpoints_of(cfg: &config::Config, cluster: &str) -> Vec<String> {
    cfg.clusters
        .iter()
        .filter(|c| c.name == cluster)
        .flat_map(|c| c.endpoints.iter().map(|e| e.address.to_string()))
        .collect()
}

// === load ===

struct Run {
    requests: u64,
    errors: u64,
    hist: Histogram<u64>,
}

/// `connections` client threads, each with one request in flight, for `duration`.
fn drive(addr: SocketAddr, connections: usize, duration: Duration) -> anyhow::Result<Run> {
    let end = Instant::now() + duration;
    let clients: Vec<_> = (0..connections.max(1))
        .map(|i| thread::spawn(move || client(addr, end, i as u8)))
        .collect();
    let mut run = Run {
        requests: 0,
        errors: 0,
        hist: new_hist(),
    };
    for c in clients {
        let (n, e, h) = c
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        run.requests += n;
        run.errors += e;
        run.hist.add(&h).context("merging histograms")?;
    }
    Ok(run)
}

fn new_hist() -> Histogram<u64> {
    // 1 ns to 60 s at 3 significant digits; the bounds are constants that are valid.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// One client: echo `MESSAGE` bytes, check them, record the round trip; reconnect every
/// `REQUESTS_PER_CONNECTION`. Returns (requests, errors, latencies).
fn client(addr: SocketAddr, end: Instant, tag: u8) -> (u64, u64, Histogram<u64>) {
    let mut hist = new_hist();
    let (mut n, mut errors) = (0u64, 0u64);
    let mut msg = [0u8; MESSAGE];
    let mut back = [0u8; MESSAGE];
    'outer: while Instant::now() < end {
        let mut s = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(_) => {
                errors += 1;
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        for i in 0..REQUESTS_PER_CONNECTION {
            if Instant::now() >= end {
                break 'outer;
            }
            msg.iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = tag ^ (i as u8).wrapping_add(j as u8));
            let t = Instant::now();
            if s.write_all(&msg)
                .and_then(|_| s.read_exact(&mut back))
                .is_err()
                || back != msg
            {
                errors += 1;
                continue 'outer;
            }
            let _ = hist.record(t.elapsed().as_nanos() as u64);
            n += 1;
        }
    }
    (n, errors, hist)
}

fn udp_round_trips(to: SocketAddr, count: u32) -> anyhow::Result<(u32, u32)> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.connect(to)?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut ok = 0;
    let mut buf = [0u8; 64];
    for i in 0..count {
        let msg = i.to_be_bytes();
        s.send(&msg)?;
        if matches!(s.recv(&mut buf), Ok(4) if buf[..4] == msg) {
            ok += 1;
        }
    }
    Ok((ok, count))
}

// === backends ===

struct TcpEcho {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
}

impl TcpEcho {
    fn start(addr: SocketAddr, stop: Arc<AtomicBool>) -> anyhow::Result<TcpEcho> {
        let l = TcpListener::bind(addr)
            .with_context(|| format!("starting an echo backend on {addr} (is the port in use?)"))?;
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        thread::spawn(move || {
            for s in l.incoming() {
                if stop.load(Relaxed) {
                    break;
                }
                let Ok(mut s) = s else { continue };
                count.fetch_add(1, Relaxed);
                let _ = s.set_nodelay(true);
                thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(TcpEcho { addr, accepted })
    }
}

struct UdpEcho;

impl UdpEcho {
    fn start(addr: SocketAddr, stop: Arc<AtomicBool>) -> anyhow::Result<UdpEcho> {
        let s = UdpSocket::bind(addr).with_context(|| {
            format!("starting a UDP echo backend on {addr} (is the port in use?)")
        })?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..n], from);
                }
            }
        });
        Ok(UdpEcho)
    }
}

/// A private temporary directory for the demo's control socket and state, removed at the
/// end (owner-only, as the control socket requires).
struct PrivateDir {
    path: std::path::PathBuf,
}

impl PrivateDir {
    fn new() -> anyhow::Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!("tickmesh-demo-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(PrivateDir { path })
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
