//! Round-trip latency of a small echo through the proxy: direct (no proxy), direct TLS
//! (the same client to a rustls echo server: TLS at both ends, no proxy), plain L4,
//! TLS-terminating (TLS 1.3, AES-128-GCM; rustls handshake, records on the worker's
//! offload engine), and HAProxy terminating TLS the same way (OpenSSL; when `haproxy` is
//! installed) — one connection, closed loop, targets interleaved in rounds so a noisy host
//! hits them alike.
//!
//! `cargo bench --bench tls_latency` (env `ROUNDS`, `ITERS`, `SIZE`, `ENGINE=uring|epoll`,
//! `HAPROXY_BUSY=1` to give HAProxy `busy-polling`: only with a spare CPU).
//! Needs the `openssl` CLI for the test certificate. Prints the median over rounds of
//! each round's p50/p90/p99 in µs, and what TLS adds at p50: over plain L4 (client's and
//! proxy's record work), and the proxy's share estimated by taking off half of what TLS
//! adds between two rustls ends (the client's seal + open).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tickmesh::config::{parse, Format};
use tickmesh::engine::{Engine, EngineKind, EngineOptions, Idle};
use tickmesh::net::SocketPool;
use tickmesh::route::{compile, Routes};
use tickmesh::telemetry::StatsRegistry;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let _ = c.set_nodelay(true);
            std::thread::spawn(move || {
                let mut b = [0u8; 16384];
                while let Ok(n) = c.read(&mut b) {
                    if n == 0 || c.write_all(&b[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A rustls server echoing plaintext (TLS 1.3 at both ends, no proxy).
fn tls_echo_backend(cert: &str, key: &str) -> SocketAddr {
    use rustls::pki_types::PrivateKeyDer;
    let certs: Vec<_> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            let _ = c.set_nodelay(true);
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                    return;
                };
                let mut s = rustls::StreamOwned::new(conn, c);
                let mut b = [0u8; 16384];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() || s.flush().is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

trait Rt {
    fn rt(&mut self, msg: &[u8], buf: &mut [u8]);
}

impl Rt for TcpStream {
    fn rt(&mut self, msg: &[u8], buf: &mut [u8]) {
        self.write_all(msg).unwrap();
        self.read_exact(buf).unwrap();
    }
}

impl Rt for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn rt(&mut self, msg: &[u8], buf: &mut [u8]) {
        self.write_all(msg).unwrap();
        self.flush().unwrap();
        self.read_exact(buf).unwrap();
    }
}

/// (p50, p90, p99) in µs of `iters` round trips.
fn measure(c: &mut dyn Rt, iters: usize, size: usize) -> (f64, f64, f64) {
    let msg = vec![7u8; size];
    let mut buf = vec![0u8; size];
    for _ in 0..iters / 10 {
        c.rt(&msg, &mut buf);
    }
    let mut v: Vec<u64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            c.rt(&msg, &mut buf);
            t.elapsed().as_nanos() as u64
        })
        .collect();
    v.sort_unstable();
    let q = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1000.0;
    (q(0.50), q(0.90), q(0.99))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rounds = env("ROUNDS", 5);
    let iters = env("ITERS", 5000);
    let size = env("SIZE", 64);
    let kind = match std::env::var("ENGINE").as_deref() {
        Ok("epoll") => EngineKind::Epoll,
        _ if tickmesh::engine::uring_available().is_ok() => EngineKind::Uring,
        _ => EngineKind::Epoll,
    };
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    // A CA and a leaf signed by it (webpki refuses a CA certificate as the server's).
    std::fs::write(p("ext"), "subjectAltName=DNS:localhost\n").unwrap();
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ok = openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=ca",
                "-keyout",
                &p("ca.key"),
                "-out",
                &p("ca.pem"),
            ],
        ]
        .concat(),
    ) && openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=bench",
                "-keyout",
                &p("k.pem"),
                "-out",
                &p("c.csr"),
            ],
        ]
        .concat(),
    ) && openssl(&[
        "x509",
        "-req",
        "-in",
        &p("c.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p("ext"),
        "-out",
        &p("c.pem"),
    ]);
    if !ok {
        eprintln!("SKIP tls_latency: the openssl CLI is needed for the test certificate");
        return;
    }
    let backend = echo_backend();
    // Two free loopback ports (one listener each).
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let yaml = format!(
        "listeners:\n  - {{name: plain, address: \"{}\", cluster: c}}\n  - {{name: tls, address: \"{}\", cluster: c, tls: {{cert: {}, key: {}}}}}\nclusters:\n  - {{name: c, endpoints: [\"{backend}\"]}}\n",
        free(),
        free(),
        p("c.pem"),
        p("k.pem")
    );
    let stats = StatsRegistry::new(1);
    let mut pool = SocketPool::new(1);
    let table = compile(&parse(&yaml, Format::Yaml).unwrap(), 1, &stats, &mut pool).unwrap();
    let routes = Arc::new(Routes::new(table));
    let engine = Engine::start(
        EngineOptions {
            kind,
            workers: 1,
            pin: false,
            idle: Idle::Adaptive,
            spin: Duration::from_micros(50),
        },
        routes.clone(),
    )
    .unwrap();
    let addr = |n: &str| routes.load().listener(n).unwrap().1.sockets.address;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(p("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = rustls::crypto::ring::default_provider();
    let cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let plain = |a: SocketAddr| {
        let s = TcpStream::connect(a).unwrap();
        s.set_nodelay(true).unwrap();
        s
    };
    let mut direct = plain(backend);
    let mut direct_tls = rustls::StreamOwned::new(
        rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
            .unwrap(),
        plain(tls_echo_backend(&p("c.pem"), &p("k.pem"))),
    );
    let mut l4 = plain(addr("plain"));
    let mut tls = rustls::StreamOwned::new(
        rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
            .unwrap(),
        plain(addr("tls")),
    );
    // HAProxy terminating TLS in front of the same backend, if installed.
    let haproxy_port = free().port();
    let mut haproxy = None;
    if Command::new("haproxy").arg("-v").output().is_ok() {
        let pem = format!(
            "{}{}",
            std::fs::read_to_string(p("c.pem")).unwrap(),
            std::fs::read_to_string(p("k.pem")).unwrap()
        );
        std::fs::write(p("haproxy.pem"), pem).unwrap();
        let busy = std::env::var("HAPROXY_BUSY").is_ok_and(|v| v == "1");
        let cfg = format!(
            "global\n    nbthread 1\n{}\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\nfrontend f\n    bind 127.0.0.1:{haproxy_port} ssl crt {}\n    default_backend b\n\nbackend b\n    server s {backend}\n",
            if busy { "    busy-polling\n" } else { "" },
            p("haproxy.pem")
        );
        std::fs::write(p("haproxy.cfg"), cfg).unwrap();
        if let Ok(child) = Command::new("haproxy")
            .args(["-db", "-f", &p("haproxy.cfg")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            haproxy = Some(child);
            let t = Instant::now();
            while TcpStream::connect(("127.0.0.1", haproxy_port)).is_err()
                && t.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let mut hap = haproxy.as_ref().map(|_| {
        rustls::StreamOwned::new(
            rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
                .unwrap(),
            plain(SocketAddr::from(([127, 0, 0, 1], haproxy_port))),
        )
    });
    let mut names = vec![
        "direct",
        "direct TLS (rustls both ends)",
        "tickmesh L4",
        "tickmesh TLS-terminating",
    ];
    if hap.is_some() {
        names.push("HAProxy TLS-terminating");
    }
    let mut res: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); names.len()];
    for _ in 0..rounds {
        res[0].push(measure(&mut direct, iters, size));
        res[1].push(measure(&mut direct_tls, iters, size));
        res[2].push(measure(&mut l4, iters, size));
        res[3].push(measure(&mut tls, iters, size));
        if let Some(h) = hap.as_mut() {
            res[4].push(measure(h, iters, size));
        }
    }
    if let Some(mut h) = haproxy {
        let _ = h.kill();
        let _ = h.wait();
    }
    println!(
        "engine {kind:?}, {size} B echo, 1 connection, {rounds} rounds × {iters} round trips (median of rounds)"
    );
    println!("| target | p50 µs | p90 µs | p99 µs |\n|---|---|---|---|");
    for (i, n) in names.iter().enumerate() {
        let m = |f: fn(&(f64, f64, f64)) -> f64| median(res[i].iter().map(f).collect());
        println!(
            "| {n} | {:.1} | {:.1} | {:.1} |",
            m(|r| r.0),
            m(|r| r.1),
            m(|r| r.2)
        );
    }
    // Per round (the targets of a round ran back to back), then the median.
    let added: Vec<(f64, f64)> = (0..rounds)
        .map(|r| {
            let over_l4 = res[3][r].0 - res[2][r].0;
            (over_l4, over_l4 - (res[1][r].0 - res[0][r].0) / 2.0)
        })
        .collect();
    println!(
        "TLS over plain L4 at p50 (median of rounds): {:.1} µs; the proxy's share (minus half of direct TLS − direct): {:.1} µs",
        median(added.iter().map(|a| a.0).collect()),
        median(added.iter().map(|a| a.1).collect())
    );
    engine.shutdown(Duration::from_millis(100));
}
