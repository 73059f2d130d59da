//! Endpoint health end to end: passive outlier detection (HTTP 5xx, L4 connect
//! failures), DestinationRule traffic policies applied to clusters, and active HTTP
//! health checks. Each test runs the real engine (per engine; uring skips with a message
//! where io_uring is unusable) under a real in-process control plane — its socket in a
//! temporary directory, its health tick running — and real backends on loopback. State is
//! read through the control plane's `stats`, as `tickmesh stats` shows it.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{dead_addr, wait_until, Echo};
use tickmesh::config::Format;
use tickmesh::control::protocol::EndpointHealthView;
use tickmesh::control::{ControlPlane, ControlServer};
use tickmesh::engine::{Engine, EngineKind, EngineOptions, Idle};

// === harness ===

/// An HTTP/1.1 backend answering every request with the status currently set (and
/// `Connection: close`); counts requests, by path.
struct Backend {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    requests: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
}

impl Backend {
    fn start(status: u16) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let st = Arc::new(AtomicU16::new(status));
        let requests = Arc::new(AtomicUsize::new(0));
        let checks = Arc::new(AtomicUsize::new(0));
        let (s, r, c) = (st.clone(), requests.clone(), checks.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let (s, r, c) = (s.clone(), r.clone(), c.clone());
                std::thread::spawn(move || answer(conn, &s, &r, &c));
            }
        });
        Backend {
            addr,
            status: st,
            requests,
            checks,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A `Backend::start` status meaning "500 to nine requests in ten, 200 to the tenth".
const FLAKY: u16 = 599;

fn answer(c: TcpStream, status: &AtomicU16, requests: &AtomicUsize, checks: &AtomicUsize) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    let mut first = String::new();
    if r.read_line(&mut first).unwrap_or(0) == 0 {
        return;
    }
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
    }
    if first.starts_with("GET /healthz ") {
        checks.fetch_add(1, Ordering::SeqCst);
    } else {
        requests.fetch_add(1, Ordering::SeqCst);
    }
    let mut s = status.load(Ordering::SeqCst);
    if s == FLAKY {
        // 500 to nine requests in ten.
        s = if requests.load(Ordering::SeqCst) % 10 == 0 {
            200
        } else {
            500
        };
    }
    let _ = write!(
        w,
        "HTTP/1.1 {s} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    );
}

struct Daemon {
    plane: Arc<ControlPlane>,
    engine: Option<Engine>,
    _server: ControlServer,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(kind: EngineKind, yaml: &str) -> Daemon {
        let cfg = tickmesh::config::parse(yaml, Format::Yaml)
            .unwrap_or_else(|e| panic!("test config: {e}"));
        let plane = Arc::new(ControlPlane::new(2, cfg, 1, None, false).expect("config serves"));
        let dir = tempfile::tempdir().unwrap();
        let server = ControlServer::start(&dir.path().join("control.sock"), plane.clone())
            .expect("control socket");
        let engine = Engine::start(
            EngineOptions {
                kind,
                workers: 2,
                pin: false,
                idle: Idle::Adaptive,
                spin: Duration::from_micros(20),
            },
            plane.routes(),
        )
        .expect("engine starts");
        Daemon {
            plane,
            engine: Some(engine),
            _server: server,
            _dir: dir,
        }
    }

    fn listener(&self) -> SocketAddr {
        self.plane.routes().load().listeners[0].sockets.address
    }

    fn health(&self, cluster: &str, ep: SocketAddr) -> EndpointHealthView {
        let s = self.plane.stats();
        let c = s
            .clusters
            .iter()
            .find(|c| c.name == cluster)
            .expect("cluster");
        c.endpoints
            .iter()
            .find(|e| e.address == ep)
            .expect("endpoint")
            .health
            .clone()
    }

    fn counter(&self, cluster: &str, ep: SocketAddr, name: &str) -> u64 {
        let s = self.plane.stats();
        let c = s
            .clusters
            .iter()
            .find(|c| c.name == cluster)
            .expect("cluster");
        let e = c
            .endpoints
            .iter()
            .find(|e| e.address == ep)
            .expect("endpoint");
        e.counters.get(name).copied().unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(e) = self.engine.take() {
            e.shutdown(Duration::from_millis(100));
        }
    }
}

/// One request on a fresh connection; the response status (0: no response).
fn get(addr: SocketAddr, path: &str) -> u16 {
    get_with(addr, path, "")
}

/// As [`get`], with extra header lines (each ending in CRLF).
fn get_with(addr: SocketAddr, path: &str, headers: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: svc\r\n{headers}connection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn http_config(cluster: &str) -> String {
    format!(
        r#"
listeners:
  - {{name: web, address: "127.0.0.1:0", protocol: http}}
clusters:
{cluster}
route_configs:
  - name: rc
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{prefix: /}}
            route: {{cluster: svc}}
"#
    )
}

/// An L4 listener `l` to cluster `svc` of a `dead` endpoint and a `live` one, with
/// `policy` (one line of the cluster's map, e.g. its `outlier_detection`).
fn l4_config(dead: SocketAddr, live: SocketAddr, policy: &str) -> String {
    format!(
        "listeners:\n  - {{name: l, address: \"127.0.0.1:0\", cluster: svc}}\nclusters:\n  - name: svc\n    endpoints: [\"{dead}\", \"{live}\"]\n    {policy}\n"
    )
}

/// An echo backend, a dead address, and a daemon whose L4 listener balances over both
/// with `policy` ([`l4_config`]).
fn dead_and_echo(kind: EngineKind, policy: &str) -> (Echo, SocketAddr, Daemon) {
    let echo = Echo::start();
    let dead = dead_addr();
    let d = Daemon::start(kind, &l4_config(dead, echo.addr, policy));
    (echo, dead, d)
}

/// `ping` through the L4 listener at `addr` on a fresh connection, echoed back.
fn ping(addr: SocketAddr, why: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping", "{why}");
}

/// Three backends answering 200, and their addresses as a YAML flow list's items.
fn three_backends() -> (Vec<Backend>, String) {
    let backends: Vec<Backend> = (0..3).map(|_| Backend::start(200)).collect();
    let eps: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    (backends, eps.join(", "))
}

/// [`http_config`] with cluster `svc` of the endpoints `eps` (a flow list's items).
fn svc_config(eps: &str) -> String {
    http_config(&format!("  - name: svc\n    endpoints: [{eps}]\n"))
}

/// One request on a fresh connection; the whole response.
fn response(addr: SocketAddr, path: &str, headers: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: svc\r\n{headers}connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The `Set-Cookie` line of a response and the value of its `sticky` cookie.
fn sticky_cookie(response: &str) -> (&str, String) {
    let line = response
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no Set-Cookie: {response}"));
    let value = line
        .split_once("sticky=\"")
        .and_then(|(_, v)| v.split_once('"'))
        .map(|(v, _)| v.to_string())
        .unwrap_or_else(|| panic!("{line}"));
    (line, value)
}

// === passive outlier detection ===

/// A backend that answers 500 is ejected after `consecutive_5xx` of them, takes no
/// traffic while ejected, returns after `base_ejection_time`, and is ejected again for
/// twice as long when it still fails.
fn http_5xx_ejects_and_returns(kind: EngineKind) {
    let good = Backend::start(200);
    let bad = Backend::start(500);
    let d = Daemon::start(
        kind,
        &http_config(&format!(
            "  - name: svc\n    endpoints: [\"{}\", \"{}\"]\n    outlier_detection: {{consecutive_5xx: 3, interval: 1s, base_ejection_time: 1s, max_ejection_percent: 50}}\n",
            good.addr, bad.addr
        )),
    );
    let addr = d.listener();
    // Round robin: the bad endpoint gets every other request until it is ejected.
    wait_until(
        "the 500-answering endpoint is ejected",
        Duration::from_secs(5),
        || {
            get(addr, "/a");
            d.health("svc", bad.addr).state == "ejected"
        },
    );
    let h = d.health("svc", bad.addr);
    assert_eq!(h.times_ejected, 1, "{h:?}");
    assert!(
        h.ejected_remaining_ms > 0 && h.ejected_remaining_ms <= 1000,
        "{h:?}"
    );
    assert_eq!(d.health("svc", good.addr).state, "healthy");
    let before = bad.requests();
    assert!(before >= 3, "it answered at least 3 requests: {before}");
    let t0 = Instant::now();
    for _ in 0..40 {
        assert_eq!(get(addr, "/b"), 200, "only the good endpoint serves");
    }
    if t0.elapsed() < Duration::from_millis(900) {
        assert_eq!(bad.requests(), before, "no traffic while ejected");
    }
    // Back after 1 s (at the next interval tick): it gets traffic again. The interval
    // is 1 s because each interval spent un-ejected lowers the multiplier: the second
    // ejection must come within one (at 100 ms a loaded machine missed it).
    wait_until("the endpoint returns", Duration::from_secs(5), || {
        d.health("svc", bad.addr).state == "healthy"
    });
    wait_until("ejected a second time", Duration::from_secs(5), || {
        get(addr, "/c");
        d.health("svc", bad.addr).state == "ejected"
    });
    let h = d.health("svc", bad.addr);
    assert_eq!((h.times_ejected, h.ejections_total), (2, 2), "{h:?}");
    assert!(h.ejected_remaining_ms > 1000, "twice the base: {h:?}");
    // The human `stats` view shows it.
    let table = tickmesh::control::client::stats_table(&d.plane.stats());
    assert!(table.contains("ejected (x2"), "{table}");
}

fn cluster_counter(
    d: &Daemon,
    field: fn(&tickmesh::control::protocol::ClusterStatsView) -> u64,
) -> u64 {
    let s = d.plane.stats();
    field(s.clusters.iter().find(|c| c.name == "svc").expect("svc"))
}

/// Success-rate detection, evaluated each interval from the per-endpoint volumes the
/// workers count: of three backends, the one answering 500 to nine requests in ten
/// (success rate 10% against 100% and 100%: mean 70, stdev 42, threshold 70 − 1.0 × 42)
/// is ejected, takes no traffic while out, and returns after its ejection time.
fn success_rate_ejects_and_returns(kind: EngineKind) {
    let good = [Backend::start(200), Backend::start(200)];
    let bad = Backend::start(FLAKY);
    let d = Daemon::start(
        kind,
        &http_config(&format!(
            "  - name: svc\n    endpoints: [\"{}\", \"{}\", \"{}\"]\n    outlier_detection: {{consecutive_5xx: 0, interval: 300ms, base_ejection_time: 1s, max_ejection_percent: 50, success_rate_minimum_hosts: 3, success_rate_request_volume: 10, success_rate_stdev_factor: 1000}}\n",
            good[0].addr, good[1].addr, bad.addr
        )),
    );
    let addr = d.listener();
    wait_until(
        "the flaky endpoint is ejected by success rate",
        Duration::from_secs(10),
        || {
            for _ in 0..10 {
                get(addr, "/a");
            }
            d.health("svc", bad.addr).state == "ejected"
        },
    );
    assert_eq!(cluster_counter(&d, |c| c.ejections_success_rate), 1);
    let h = d.health("svc", bad.addr);
    assert!(h.success_rate.is_some_and(|r| r < 50.0), "{h:?}");
    let g = d.health("svc", good[0].addr);
    assert_eq!(g.state, "healthy");
    assert!(g.success_rate.is_some_and(|r| r == 100.0), "{g:?}");
    assert!(d.counter("svc", bad.addr, "rq_error") >= 9);
    let before = bad.requests();
    let t0 = Instant::now();
    for _ in 0..20 {
        assert_eq!(get(addr, "/b"), 200, "only the good endpoints serve");
    }
    if t0.elapsed() < Duration::from_millis(900) {
        assert_eq!(bad.requests(), before, "no traffic while ejected");
    }
    wait_until("the endpoint returns", Duration::from_secs(5), || {
        d.health("svc", bad.addr).state == "healthy"
    });
    wait_until("traffic returns to it", Duration::from_secs(5), || {
        get(addr, "/c");
        bad.requests() > before
    });
}

/// Failure-percentage detection (enforced only when asked, as in Envoy): the endpoint
/// failing 90% of its requests crosses a 50% threshold and is ejected.
fn failure_percentage_ejects(kind: EngineKind) {
    let good = Backend::start(200);
    let bad = Backend::start(FLAKY);
    let d = Daemon::start(
        kind,
        &http_config(&format!(
            "  - name: svc\n    endpoints: [\"{}\", \"{}\"]\n    outlier_detection: {{consecutive_5xx: 0, interval: 200ms, base_ejection_time: 30s, max_ejection_percent: 50, enforcing_success_rate: 0, failure_percentage_threshold: 50, failure_percentage_minimum_hosts: 2, failure_percentage_request_volume: 10, enforcing_failure_percentage: 100}}\n",
            good.addr, bad.addr
        )),
    );
    let addr = d.listener();
    wait_until(
        "the failing endpoint is ejected by failure percentage",
        Duration::from_secs(10),
        || {
            for _ in 0..10 {
                get(addr, "/a");
            }
            d.health("svc", bad.addr).state == "ejected"
        },
    );
    assert_eq!(cluster_counter(&d, |c| c.ejections_failure_percentage), 1);
    assert_eq!(cluster_counter(&d, |c| c.ejections_success_rate), 0);
    assert_eq!(d.health("svc", good.addr).state, "healthy");
    let table = tickmesh::control::client::stats_table(&d.plane.stats());
    assert!(table.contains("1 ejected by failure %"), "{table}");
}

/// L4: connect failures are gateway errors; the dead endpoint is ejected and new
/// connections stop trying it (its connect_fail count stops growing).
fn tcp_connect_failures_eject(kind: EngineKind) {
    let (echo, dead, d) = dead_and_echo(
        kind,
        "outlier_detection: {consecutive_gateway_failure: 2, enforcing_consecutive_gateway_failure: 100, interval: 50ms, base_ejection_time: 30s}",
    );
    let addr = d.listener();
    let round_trip = || ping(addr, "the relay retries the next endpoint");
    wait_until(
        "the dead endpoint is ejected",
        Duration::from_secs(5),
        || {
            round_trip();
            d.health("svc", dead).state == "ejected"
        },
    );
    let fails = d.counter("svc", dead, "connect_fail");
    assert!(fails >= 2, "{fails}");
    for _ in 0..20 {
        round_trip();
    }
    assert_eq!(
        d.counter("svc", dead, "connect_fail"),
        fails,
        "an ejected endpoint is not tried"
    );
    assert_eq!(d.health("svc", echo.addr).state, "healthy");
}

/// Every endpoint failing: the cap keeps one in service (max_ejection_percent), the
/// refused ejection is counted, and traffic still flows (panic mode never kicks in
/// because one endpoint stays usable).
fn max_ejection_percent_caps(kind: EngineKind) {
    let a = Backend::start(503);
    let b = Backend::start(503);
    let d = Daemon::start(
        kind,
        &http_config(&format!(
            "  - name: svc\n    endpoints: [\"{}\", \"{}\"]\n    outlier_detection: {{consecutive_gateway_failure: 2, enforcing_consecutive_gateway_failure: 100, consecutive_5xx: 0, max_ejection_percent: 10, interval: 10s}}\n",
            a.addr, b.addr
        )),
    );
    let addr = d.listener();
    wait_until("one ejection refused", Duration::from_secs(5), || {
        assert_eq!(get(addr, "/"), 503);
        let s = d.plane.stats();
        s.clusters[0].ejections_overflow > 0
    });
    let states = [d.health("svc", a.addr).state, d.health("svc", b.addr).state];
    assert_eq!(
        states.iter().filter(|s| *s == "ejected").count(),
        1,
        "{states:?}"
    );
}

/// Split counting (`split_external_local_origin_errors`): connect failures to a dead
/// endpoint are local-origin failures, not 5xx — with `consecutive_5xx: 1` it would
/// go at the first one otherwise — and it is ejected by its run of 3 of them, counted
/// as a local-origin ejection. The volumes show the two origins apart.
fn split_local_origin_errors_count_apart(kind: EngineKind) {
    let good = Backend::start(200);
    let dead = dead_addr();
    let d = Daemon::start(
        kind,
        &http_config(&format!(
            "  - name: svc\n    endpoints: [\"{}\", \"{dead}\"]\n    outlier_detection: {{consecutive_5xx: 1, split_external_local_origin_errors: true, consecutive_local_origin_failure: 3, interval: 100ms, base_ejection_time: 30s, max_ejection_percent: 50}}\n",
            good.addr
        )),
    );
    let addr = d.listener();
    wait_until(
        "the dead endpoint is ejected by local-origin failures",
        Duration::from_secs(10),
        || {
            assert_eq!(
                get(addr, "/a"),
                200,
                "the connect moves to the next endpoint"
            );
            let h = d.health("svc", dead);
            assert_eq!(h.consecutive_5xx, 0, "a local failure is no 5xx: {h:?}");
            h.state == "ejected"
        },
    );
    assert_eq!(cluster_counter(&d, |c| c.ejections_local_origin), 1);
    assert!(d.counter("svc", dead, "rq_local_origin_error") >= 3);
    assert_eq!(d.counter("svc", dead, "rq_error"), 0, "no status came");
    let served = d.counter("svc", good.addr, "rq_success");
    assert!(served >= 1);
    assert_eq!(
        d.counter("svc", good.addr, "rq_local_origin_success"),
        served,
        "each response is a local-origin success too"
    );
    assert_eq!(d.health("svc", good.addr).state, "healthy");
    let table = tickmesh::control::client::stats_table(&d.plane.stats());
    assert!(
        table.contains("1 ejected by local-origin failures"),
        "{table}"
    );
}

// === DestinationRule traffic policy ===

/// A DestinationRule applied live governs its cluster: round robin before it, sticky
/// source-IP hashing after; its outlier detection ejects; its connection pool sets the
/// breakers. The rule names the cluster by its Istio FQDN, the cluster by short name.
fn destination_rule_policy_applies(kind: EngineKind) {
    let a = Backend::start(200);
    let b = Backend::start(200);
    let d = Daemon::start(
        kind,
        &http_config(&format!(
            "  - name: svc\n    endpoints: [\"{}\", \"{}\"]\n",
            a.addr, b.addr
        )),
    );
    let addr = d.listener();
    for _ in 0..10 {
        assert_eq!(get(addr, "/"), 200);
    }
    // Round robin (one cursor per worker): both endpoints serve.
    assert!(a.requests() >= 2 && b.requests() >= 2, "round robin");
    d.plane
        .apply(
            r#"
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: svc-policy}
spec:
  host: svc.default.svc.cluster.local
  trafficPolicy:
    loadBalancer: {consistentHash: {useSourceIp: true}}
    connectionPool:
      tcp: {maxConnections: 77, connectTimeout: 300ms}
      http: {http1MaxPendingRequests: 5, http2MaxRequests: 66, maxRequestsPerConnection: 4, maxRetries: 2}
    outlierDetection: {consecutive5xxErrors: 2, interval: 100ms, baseEjectionTime: 30s, maxEjectionPercent: 50}
"#,
            Format::Yaml,
            false,
        )
        .expect("the rule applies");
    // The listener is written with port 0: the recompiled table bound a fresh one.
    let addr = d.listener();
    {
        let t = d.plane.routes().load_full();
        let c = &t.cluster("svc").expect("svc").1;
        let br = c.breakers;
        assert_eq!(
            (
                br.max_connections,
                br.max_pending_requests,
                br.max_requests,
                br.max_requests_per_connection,
                br.max_retries
            ),
            (77, 5, 66, 4, 2)
        );
        assert_eq!(c.connect_timeout, Duration::from_millis(300));
        assert!(c.outlier.is_some());
    }
    // `tickmesh get` shows the policy the cluster runs with.
    let g = d.plane.get(None);
    let view = g.clusters.expect("clusters as compiled");
    let policy = &view.iter().find(|c| c.name == "svc").expect("svc").policy;
    assert!(
        policy.contains("ring_hash on source ip")
            && policy.contains("max connections 77, pending 5, requests 66, retries 2")
            && policy.contains("outlier 5xx 2 (100%)")
            // Istio: outlier detection sets the panic threshold to `minHealthPercent`,
            // default 0.
            && policy.contains("panic threshold 0%"),
        "{policy}"
    );
    let (a0, b0) = (a.requests(), b.requests());
    for _ in 0..20 {
        assert_eq!(get(addr, "/"), 200);
    }
    let (da, db) = (a.requests() - a0, b.requests() - b0);
    assert!(
        da == 20 || db == 20,
        "one client address sticks to one endpoint: {da}/{db}"
    );
    // The sticky endpoint starts failing: the rule's outlier detection ejects it and
    // the hash moves the client to the other one.
    let (sticky, other) = if da == 20 { (&a, &b) } else { (&b, &a) };
    sticky.status.store(500, Ordering::SeqCst);
    wait_until(
        "the rule's outlier detection ejects",
        Duration::from_secs(5),
        || {
            get(addr, "/");
            d.health("svc", sticky.addr).state == "ejected"
        },
    );
    let o0 = other.requests();
    for _ in 0..10 {
        assert_eq!(get(addr, "/"), 200);
    }
    assert_eq!(other.requests() - o0, 10);
}

/// `destination.subset` selects the endpoints of the DestinationRule subset's labels;
/// a subset no rule defines is refused at apply, naming it.
fn subsets_select_by_labels(kind: EngineKind) {
    let v1 = Backend::start(200);
    let v2 = Backend::start(200);
    let yaml = format!(
        r#"
listeners:
  - {{name: web, address: "127.0.0.1:0", protocol: http}}
clusters:
  - name: reviews
    endpoints:
      - {{address: "{}", labels: {{version: v1}}}}
      - {{address: "{}", labels: {{version: v2, track: canary}}}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: reviews-route}}
spec:
  hosts: [svc]
  http:
    - route:
        - destination: {{host: reviews, subset: v2}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
    - {{name: v1, labels: {{version: v1}}}}
    - name: v2
      labels: {{version: v2}}
      trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 9}}}}}}
"#,
        v1.addr, v2.addr
    );
    let d = Daemon::start(kind, &yaml);
    let addr = d.listener();
    for _ in 0..10 {
        assert_eq!(get(addr, "/"), 200);
    }
    assert_eq!((v1.requests(), v2.requests()), (0, 10));
    let t = d.plane.routes().load_full();
    let c = t.cluster("reviews|v2").expect("the subset cluster").1;
    assert_eq!(c.endpoints.len(), 1);
    assert_eq!(c.breakers.max_connections, 9, "the subset's own policy");
    let e = d
        .plane
        .apply(
            "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: reviews-route}\nspec:\n  hosts: [svc]\n  http:\n    - route:\n        - destination: {host: reviews, subset: v3}\n",
            Format::Yaml,
            false,
        )
        .expect_err("v3 is not defined");
    assert!(e.to_string().contains("subset `v3` of `reviews`"), "{e}");
}

/// Consistent hashing on a header (a DestinationRule's `httpHeaderName`) and on a cookie
/// (native `hash_policy`): one key always reaches one endpoint, different keys spread.
fn hash_on_header_and_cookie(kind: EngineKind) {
    let (backends, eps) = three_backends();
    let d = Daemon::start(
        kind,
        &format!(
            "{}---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {{name: svc}}\nspec:\n  host: svc\n  trafficPolicy: {{loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}}}\n",
            svc_config(&eps)
        ),
    );
    let addr = d.listener();
    let counts = || backends.iter().map(|b| b.requests()).collect::<Vec<_>>();
    let mut homes = std::collections::HashSet::new();
    for user in 0..12 {
        let before = counts();
        for _ in 0..5 {
            assert_eq!(
                get_with(addr, "/", &format!("x-user: user-{user}\r\n")),
                200
            );
        }
        let after = counts();
        let moved: Vec<usize> = (0..3).filter(|&i| after[i] != before[i]).collect();
        assert_eq!(
            moved.len(),
            1,
            "user-{user} sticks to one endpoint: {before:?} → {after:?}"
        );
        assert_eq!(after[moved[0]] - before[moved[0]], 5);
        homes.insert(moved[0]);
    }
    assert!(
        homes.len() >= 2,
        "12 users spread over the endpoints: {homes:?}"
    );
    // No `x-user`: nothing to hash, so a random endpoint per request as in Envoy (the
    // source address, one for every request here, would pin them all to one).
    let before = counts();
    for _ in 0..30 {
        assert_eq!(get(addr, "/"), 200);
    }
    let after = counts();
    let served = (0..3).filter(|&i| after[i] != before[i]).count();
    assert!(
        served >= 2,
        "key-less requests spread: {before:?} → {after:?}"
    );
    // The same through a cookie, set natively on the cluster.
    let mut d = d;
    let cfg = format!(
        "  - name: svc\n    lb_policy: maglev\n    hash_policy: {{cookie: session}}\n    endpoints: [{}]\n",
        eps
    );
    d.plane
        .apply(&http_config(&cfg), Format::Yaml, true)
        .expect("applies");
    let addr = d.listener();
    let before = counts();
    for _ in 0..6 {
        assert_eq!(
            get_with(addr, "/", "cookie: theme=dark; session=abc123; lang=en\r\n"),
            200
        );
    }
    let after = counts();
    assert_eq!(
        (0..3).filter(|&i| after[i] != before[i]).count(),
        1,
        "{before:?} → {after:?}"
    );
    // And through a query parameter (Istio `httpQueryParameterName`).
    d.plane
        .apply(
            &format!(
                "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc}}\nspec:\n  host: svc\n  trafficPolicy: {{loadBalancer: {{consistentHash: {{httpQueryParameterName: user}}}}}}\n",
                svc_config(&eps)
            ),
            Format::Yaml,
            true,
        )
        .expect("applies");
    let addr = d.listener();
    let mut homes = std::collections::HashSet::new();
    for user in 0..10 {
        let before = counts();
        for i in 0..4 {
            assert_eq!(get(addr, &format!("/q?page={i}&user=u{user}")), 200);
        }
        let after = counts();
        let moved: Vec<usize> = (0..3).filter(|&i| after[i] != before[i]).collect();
        assert_eq!(moved.len(), 1, "u{user}: {before:?} → {after:?}");
        homes.insert(moved[0]);
    }
    assert!(homes.len() >= 2, "10 users spread: {homes:?}");
    d.engine.take();
}

// === active health checks ===

/// A backend whose health check starts failing is taken out after
/// `unhealthy_threshold` failures and put back after `healthy_threshold` passes; traffic
/// follows.
fn active_checks_follow_the_backend(kind: EngineKind) {
    let a = Backend::start(200);
    let b = Backend::start(200);
    let d = Daemon::start(
        kind,
        &http_config(&format!(
            "  - name: svc\n    endpoints: [\"{}\", \"{}\"]\n    health_checks:\n      - {{timeout: 500ms, interval: 50ms, unhealthy_threshold: 2, healthy_threshold: 2, http_health_check: {{path: /healthz}}}}\n",
            a.addr, b.addr
        )),
    );
    let addr = d.listener();
    wait_until("checks run", Duration::from_secs(5), || {
        b.checks.load(Ordering::SeqCst) >= 2
    });
    assert_eq!(d.health("svc", b.addr).state, "healthy");
    b.status.store(503, Ordering::SeqCst);
    wait_until("b fails its check", Duration::from_secs(5), || {
        d.health("svc", b.addr).state == "unhealthy"
    });
    let before = b.requests();
    for _ in 0..20 {
        assert_eq!(get(addr, "/x"), 200);
    }
    assert_eq!(b.requests(), before, "no traffic to a failing endpoint");
    b.status.store(200, Ordering::SeqCst);
    wait_until("b recovers", Duration::from_secs(5), || {
        d.health("svc", b.addr).state == "healthy"
    });
    wait_until("traffic returns to b", Duration::from_secs(5), || {
        get(addr, "/y");
        b.requests() > before
    });
    let h = d.health("svc", b.addr);
    assert!(
        h.checks_failed >= 2 && h.checks_total > h.checks_failed,
        "{h:?}"
    );
}

/// A TCP health check (Envoy `tcp_health_check: {}`) on an L4 cluster: the endpoint
/// nothing listens on is taken out after `unhealthy_threshold` failed connects, and
/// connections stop trying it; the live one passes its checks.
fn tcp_checks_take_out_a_dead_endpoint(kind: EngineKind) {
    let (echo, dead, d) = dead_and_echo(
        kind,
        "health_checks: [{timeout: 500ms, interval: 50ms, unhealthy_threshold: 2, healthy_threshold: 1, tcp_health_check: {}}]",
    );
    wait_until(
        "the dead endpoint fails its checks",
        Duration::from_secs(5),
        || d.health("svc", dead).state == "unhealthy",
    );
    wait_until("the live one passes", Duration::from_secs(5), || {
        let h = d.health("svc", echo.addr);
        h.checks_total >= 2 && h.checks_failed == 0 && h.state == "healthy"
    });
    let fails = d.counter("svc", dead, "connect_fail");
    let addr = d.listener();
    for _ in 0..10 {
        ping(addr, "the echo answers through the relay");
    }
    assert_eq!(
        d.counter("svc", dead, "connect_fail"),
        fails,
        "a failing endpoint is not tried"
    );
}

/// Envoy's `successful_active_health_check_uneject_host` (default true): an endpoint
/// ejected for its 5xx while its active check passes comes back at the next passing
/// check, long before its 30 s ejection ends (its multiplier kept); with the field
/// false it stays out.
fn passing_check_ends_an_ejection(kind: EngineKind) {
    let a = Backend::start(200);
    let b = Backend::start(500);
    let cfg = |uneject: &str| {
        http_config(&format!(
            "  - name: svc\n    endpoints: [\"{}\", \"{}\"]\n    outlier_detection: {{consecutive_5xx: 2, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 50{uneject}}}\n    health_checks:\n      - {{timeout: 500ms, interval: 100ms, unhealthy_threshold: 2, healthy_threshold: 1, http_health_check: {{path: /healthz, expected_statuses: [{{start: 200, end: 600}}]}}}}\n",
            a.addr, b.addr
        ))
    };
    let mut d = Daemon::start(kind, &cfg(""));
    let addr = d.listener();
    let ejected = |d: &Daemon| d.health("svc", b.addr).ejections_total;
    wait_until("b is ejected for its 5xx", Duration::from_secs(5), || {
        get(addr, "/a");
        ejected(&d) >= 1
    });
    wait_until(
        "a passing check brings b back",
        Duration::from_secs(5),
        || d.health("svc", b.addr).state == "healthy",
    );
    let h = d.health("svc", b.addr);
    assert!(h.times_ejected >= 1, "the multiplier stays: {h:?}");
    assert!(cluster_counter(&d, |c| c.unejections_by_check) >= 1);
    // Off: the ejection runs its 30 s.
    d.plane
        .apply(
            &cfg(", successful_active_health_check_uneject_host: false"),
            Format::Yaml,
            true,
        )
        .expect("applies");
    let addr = d.listener();
    let before = ejected(&d);
    wait_until("b is ejected again", Duration::from_secs(5), || {
        get(addr, "/b");
        ejected(&d) > before
    });
    let checks = b.checks.load(Ordering::SeqCst);
    wait_until("checks keep passing", Duration::from_secs(5), || {
        b.checks.load(Ordering::SeqCst) >= checks + 3
    });
    assert_eq!(d.health("svc", b.addr).state, "ejected");
    d.engine.take();
}

/// Priority failover: the backup (priority 1) takes traffic only while the primary
/// fails its health check, and gives it back when the primary recovers.
fn priority_failover(kind: EngineKind) {
    let primary = Backend::start(200);
    let backup = Backend::start(200);
    let d = Daemon::start(
        kind,
        &http_config(&format!(
            "  - name: svc\n    endpoints: [\"{}\", {{address: \"{}\", priority: 1}}]\n    health_checks: [{{timeout: 500ms, interval: 50ms, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {{path: /healthz}}}}]\n",
            primary.addr, backup.addr
        )),
    );
    let addr = d.listener();
    for _ in 0..10 {
        assert_eq!(get(addr, "/"), 200);
    }
    assert_eq!((primary.requests(), backup.requests()), (10, 0));
    primary.status.store(500, Ordering::SeqCst);
    wait_until(
        "the primary fails its check",
        Duration::from_secs(5),
        || d.health("svc", primary.addr).state == "unhealthy",
    );
    for _ in 0..10 {
        assert_eq!(get(addr, "/"), 200);
    }
    assert_eq!((primary.requests(), backup.requests()), (10, 10));
    primary.status.store(200, Ordering::SeqCst);
    wait_until("the primary recovers", Duration::from_secs(5), || {
        d.health("svc", primary.addr).state == "healthy"
    });
    for _ in 0..10 {
        assert_eq!(get(addr, "/"), 200);
    }
    assert_eq!((primary.requests(), backup.requests()), (20, 10));
    let table = tickmesh::control::client::stats_table(&d.plane.stats());
    assert!(table.contains("(priority 1)"), "{table}");
}

/// Envoy's panic threshold: with 1 of 3 endpoints passing its check (33% < 50%), the
/// cluster balances over all three (counted in `lb_healthy_panic`); with the threshold
/// lowered to 30% by a live apply, only the healthy one serves.
fn panic_threshold_spreads_load(kind: EngineKind) {
    let good = Backend::start(200);
    let sick = [Backend::start(503), Backend::start(503)];
    let cluster = |threshold: &str| {
        format!(
            "  - name: svc\n    endpoints: [\"{}\", \"{}\", \"{}\"]\n{threshold}    health_checks: [{{timeout: 500ms, interval: 50ms, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {{path: /healthz}}}}]\n",
            good.addr, sick[0].addr, sick[1].addr
        )
    };
    let d = Daemon::start(kind, &http_config(&cluster("")));
    let addr = d.listener();
    wait_until("both sick endpoints fail", Duration::from_secs(5), || {
        sick.iter()
            .all(|b| d.health("svc", b.addr).state == "unhealthy")
    });
    // The load plan follows the flags at the next health tick (20 ms).
    std::thread::sleep(Duration::from_millis(100));
    let panics = || {
        let s = d.plane.stats();
        let c = s.clusters.iter().find(|c| c.name == "svc").expect("svc");
        c.counters.get("lb_healthy_panic").copied().unwrap_or(0)
    };
    let before = sick[0].requests() + sick[1].requests();
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(get(addr, "/p"));
    }
    let to_sick = sick[0].requests() + sick[1].requests() - before;
    assert!(
        to_sick >= 10,
        "panic mode spreads over all three: {statuses:?}"
    );
    assert!(panics() >= 30, "{}", panics());
    let yaml = http_config(&cluster("    healthy_panic_threshold: 30\n"));
    d.plane
        .apply(&yaml, Format::Yaml, false)
        .unwrap_or_else(|e| panic!("apply: {e:?}"));
    wait_until("the new plan is published", Duration::from_secs(5), || {
        let g = d.plane.get(None);
        g.clusters
            .unwrap_or_default()
            .iter()
            .any(|c| c.policy.contains("panic threshold 30%"))
    });
    std::thread::sleep(Duration::from_millis(100));
    let (before, p0) = (sick[0].requests() + sick[1].requests(), panics());
    for _ in 0..20 {
        assert_eq!(get(addr, "/q"), 200, "only the healthy endpoint serves");
    }
    assert_eq!(sick[0].requests() + sick[1].requests(), before);
    assert_eq!(panics(), p0);
}

/// Istio locality failover relative to the proxy's `node.locality`: the endpoint in the
/// proxy's own locality serves alone; once outlier detection ejects it, the `failover`
/// region takes the traffic (Istio's panic threshold is 0: no spreading to the ejected).
fn istio_locality_failover(kind: EngineKind) {
    let local = Backend::start(200);
    let remote = Backend::start(200);
    let mut yaml = http_config(&format!(
        "  - name: svc\n    endpoints: [{{address: \"{}\", locality: us/a/1}}, {{address: \"{}\", locality: eu/c/1}}]\n",
        local.addr, remote.addr
    ));
    yaml.push_str(
        "node: {locality: us/a/1}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: svc}\nspec:\n  host: svc\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 2, interval: 50ms, baseEjectionTime: 30s, maxEjectionPercent: 100}\n    loadBalancer:\n      localityLbSetting:\n        failover: [{from: us, to: eu}]\n",
    );
    let d = Daemon::start(kind, &yaml);
    let addr = d.listener();
    for _ in 0..10 {
        assert_eq!(get(addr, "/"), 200);
    }
    assert_eq!((local.requests(), remote.requests()), (10, 0));
    let g = d.plane.get(None);
    let view = g.clusters.expect("clusters");
    let svc = view.iter().find(|c| c.name == "svc").expect("svc");
    assert!(
        svc.endpoints.iter().any(|e| e.ends_with("(priority 1)")),
        "{:?}",
        svc.endpoints
    );
    local.status.store(500, Ordering::SeqCst);
    wait_until(
        "the local endpoint is ejected",
        Duration::from_secs(5),
        || {
            get(addr, "/");
            d.health("svc", local.addr).state == "ejected"
        },
    );
    std::thread::sleep(Duration::from_millis(100)); // one health tick: the new plan
    let before = (local.requests(), remote.requests());
    for _ in 0..10 {
        assert_eq!(get(addr, "/"), 200, "the failover region serves");
    }
    assert_eq!(local.requests(), before.0);
    assert_eq!(remote.requests(), before.1 + 10);
}

/// Istio `consistentHash.httpCookie` with `ttl`: a request without the cookie gets one
/// generated (`Set-Cookie` on the response, Envoy's shape), and requests that carry it
/// back stay on the endpoint that answered the first; different clients spread.
fn generated_hash_cookie_sticks(kind: EngineKind) {
    let (backends, eps) = three_backends();
    let d = Daemon::start(
        kind,
        &format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc}}\nspec:\n  host: svc\n  trafficPolicy: {{loadBalancer: {{consistentHash: {{httpCookie: {{name: sticky, ttl: 60s, path: /}}}}}}}}\n",
            svc_config(&eps)
        ),
    );
    let addr = d.listener();
    let counts = || backends.iter().map(|b| b.requests()).collect::<Vec<_>>();
    // One raw request; the whole response.
    let fetch = |headers: &str| response(addr, "/", headers);
    let mut homes = std::collections::HashSet::new();
    for _client in 0..8 {
        let before = counts();
        let first = fetch("");
        let (line, value) = sticky_cookie(&first);
        assert_eq!(value.len(), 16, "{line}");
        assert!(line.ends_with("; Max-Age=60; Path=/; HttpOnly"), "{line}");
        let after = counts();
        let home = (0..3).find(|&i| after[i] != before[i]).expect("served");
        for _ in 0..5 {
            let r = fetch(&format!("cookie: a=1; sticky=\"{value}\"\r\n"));
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            assert!(
                !r.to_ascii_lowercase().contains("set-cookie"),
                "a request with the cookie gets none: {r}"
            );
        }
        let later = counts();
        assert_eq!(later[home] - after[home], 5, "{after:?} → {later:?}");
        homes.insert(home);
    }
    assert!(homes.len() >= 2, "8 clients spread: {homes:?}");
}

/// Envoy route-level `hash_policy` on a Maglev cluster: a `cookie` with `ttl` is made up
/// for a client without it (`Set-Cookie` with the route's path) and sticks; a
/// `query_parameter` keys by its value (spread over the endpoints); the source IP keys
/// every request from one client to one endpoint.
fn route_hash_policies_stick(kind: EngineKind) {
    let (backends, eps) = three_backends();
    let d = Daemon::start(
        kind,
        &format!(
            r#"
listeners:
  - {{name: web, address: "127.0.0.1:0", protocol: http}}
clusters:
  - {{name: svc, lb_policy: maglev, endpoints: [{}]}}
route_configs:
  - name: rc
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{prefix: /c}}
            route:
              cluster: svc
              hash_policy:
                - header: {{header_name: x-absent}}
                  terminal: true
                - cookie: {{name: sticky, ttl: 30s, path: /c}}
          - match: {{prefix: /q}}
            route:
              cluster: svc
              hash_policy: [{{query_parameter: {{name: user}}, terminal: true}}, {{header: {{header_name: x-noise}}}}]
          - match: {{prefix: /ip}}
            route: {{cluster: svc, hash_policy: [{{connection_properties: {{source_ip: true}}}}]}}
"#,
            eps
        ),
    );
    let addr = d.listener();
    let counts = || backends.iter().map(|b| b.requests()).collect::<Vec<_>>();
    let fetch = |path: &str, headers: &str| {
        let out = response(addr, path, headers);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    };
    // Sends `n` requests; the one endpoint that served them all.
    let home = |n: usize, send: &dyn Fn()| {
        let before = counts();
        for _ in 0..n {
            send();
        }
        let after = counts();
        let moved: Vec<usize> = (0..3).filter(|&i| after[i] != before[i]).collect();
        assert_eq!(moved.len(), 1, "one endpoint: {before:?} → {after:?}");
        assert_eq!(after[moved[0]] - before[moved[0]], n);
        moved[0]
    };
    // The cookie: made up once, then carried back.
    for _ in 0..3 {
        let first = fetch("/c/x", "");
        let (line, value) = sticky_cookie(&first);
        assert!(line.ends_with("; Max-Age=30; Path=/c; HttpOnly"), "{line}");
        home(4, &|| {
            let r = fetch("/c/y", &format!("cookie: sticky=\"{value}\"\r\n"));
            assert!(!r.to_ascii_lowercase().contains("set-cookie"), "{r}");
        });
    }
    // The query parameter (terminal: the varying x-noise header does not count).
    let mut homes = std::collections::HashSet::new();
    for user in 0..10 {
        let noise = std::cell::Cell::new(0);
        homes.insert(home(4, &|| {
            noise.set(noise.get() + 1);
            fetch(
                &format!("/q?a=1&user=u{user}"),
                &format!("x-noise: {}\r\n", noise.get()),
            );
        }));
    }
    assert!(homes.len() >= 2, "10 users spread: {homes:?}");
    // The source IP: every request from 127.0.0.1 to one endpoint, no cookie set.
    home(6, &|| {
        let r = fetch("/ip", "");
        assert!(!r.to_ascii_lowercase().contains("set-cookie"), "{r}");
    });
}

// === slow start ===

/// An Envoy cluster whose typed-extension `load_balancing_policy` is round robin with
/// slow start (`window`, aggression 0.25: t^4, floor 10%), over `eps`.
fn slow_start_cluster(eps: &[SocketAddr], window: &str) -> String {
    let eps: Vec<String> = eps
        .iter()
        .map(|a| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: \"{}\", port_value: {}}}}}}}}}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    format!(
        r#"static_resources:
  clusters:
  - name: svc
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: acme.weighted_least_latency
          typed_config: {{"@type": type.googleapis.com/acme.lb.v1.LeastLatency}}
      - typed_extension_config:
          name: envoy.load_balancing_policies.round_robin
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin
            slow_start_config:
              slow_start_window: {window}
              aggression: {{default_value: 0.25}}
              min_weight_percent: {{value: 10}}
    load_assignment: {{endpoints: [{{lb_endpoints: [{}]}}]}}
"#,
        eps.join(", ")
    )
}

/// Up to `n` requests (and at most `within`) through `addr`: the share the last of
/// `b` served, what each served, and how many were sent.
fn last_share(
    addr: SocketAddr,
    b: &[Backend],
    n: usize,
    within: Duration,
) -> (f64, Vec<usize>, usize) {
    let before: Vec<usize> = b.iter().map(Backend::requests).collect();
    let start = Instant::now();
    let mut sent = 0;
    while sent < n && start.elapsed() < within {
        assert_eq!(get(addr, "/s"), 200);
        sent += 1;
    }
    let got: Vec<usize> = b
        .iter()
        .zip(&before)
        .map(|(x, b0)| x.requests() - b0)
        .collect();
    (got[b.len() - 1] as f64 / sent.max(1) as f64, got, sent)
}

/// With active health checks, an endpoint that turns healthy again starts its slow
/// start anew (Envoy re-enters slow start on unhealthy → healthy): it joined with the
/// others, long past its window, yet takes ≈ 5% just after it recovers, its third later.
fn slow_start_again_after_a_failed_check(kind: EngineKind) {
    let b: Vec<Backend> = (0..3).map(|_| Backend::start(200)).collect();
    let d = Daemon::start(
        kind,
        &http_config(&format!(
            "  - name: svc\n    endpoints: [\"{}\", \"{}\", \"{}\"]\n    round_robin_lb_config: {{slow_start_config: {{slow_start_window: 2s, aggression: {{default_value: 0.25}}}}}}\n    health_checks:\n      - {{timeout: 500ms, interval: 50ms, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {{path: /healthz}}}}\n",
            b[0].addr, b[1].addr, b[2].addr
        )),
    );
    let addr = d.listener();
    let started = Instant::now();
    b[2].status.store(503, Ordering::SeqCst);
    wait_until("the third fails its check", Duration::from_secs(5), || {
        d.health("svc", b[2].addr).state == "unhealthy"
    });
    // Everyone's first window passes while it is out.
    std::thread::sleep(Duration::from_millis(2300).saturating_sub(started.elapsed()));
    b[2].status.store(200, Ordering::SeqCst);
    wait_until("the third is healthy again", Duration::from_secs(5), || {
        d.health("svc", b[2].addr).state == "healthy"
    });
    let back = Instant::now();
    // The scales follow at the next health tick (20 ms).
    std::thread::sleep(Duration::from_millis(60));
    let (early, got, sent) = last_share(addr, &b, 150, Duration::from_millis(800));
    assert!(sent >= 30, "too few requests to judge: {sent}");
    assert!(
        early < 0.2,
        "just back from a failed check it ramps up again: {got:?} of {sent}"
    );
    std::thread::sleep(Duration::from_millis(2300).saturating_sub(back.elapsed()));
    let (late, got, sent) = last_share(addr, &b, 150, Duration::from_secs(5));
    assert!(
        (0.25..0.42).contains(&late),
        "past the new window its third: {got:?} of {sent}"
    );
}

/// Slow start end to end: a third endpoint added over the control socket (an Envoy
/// cluster with a typed-extension round-robin policy) gets far less than its third of
/// the requests early in its window — 10% of its weight: 0.1 / 2.1 ≈ 5% — and its full
/// third once the window has passed, counted at the backends.
fn slow_start_ramps_a_new_endpoint(kind: EngineKind) {
    let b: Vec<Backend> = (0..3).map(|_| Backend::start(200)).collect();
    let window = Duration::from_secs(2);
    let routes = http_config("").replace("clusters:\n\n", "");
    let first = format!(
        "{routes}---\n{}",
        slow_start_cluster(&[b[0].addr, b[1].addr], "2s")
    );
    let d = Daemon::start(kind, &first);
    let addr = d.listener();
    // The first two join at start: let their own window pass.
    std::thread::sleep(window + Duration::from_millis(200));
    let sock = d._dir.path().join("control.sock");
    let apply = tickmesh::control::protocol::Request::Apply {
        config: slow_start_cluster(&[b[0].addr, b[1].addr, b[2].addr], "2s"),
        format: Format::Yaml,
        prune: false,
    };
    let r = tickmesh::control::client::request(&sock, &apply).expect("the control socket answers");
    assert!(r.ok, "apply over the control socket: {r:?}");
    let joined = Instant::now();
    let share = |b: &[Backend], n: usize, within: Duration| last_share(addr, b, n, within);
    // Until 1.1 s into the window the scale is the 10% floor ((t / 2 s)^4 below it).
    let (early, got, sent) = share(&b, 150, Duration::from_millis(800));
    assert!(sent >= 30, "too few requests to judge: {sent}");
    assert!(
        early < 0.2,
        "early in its window the new endpoint gets ≈ 5%, not its third: {got:?} of {sent}"
    );
    let view = d.plane.get(None).clusters.unwrap_or_default();
    assert!(
        view.iter().any(|c| c.policy.contains("slow start 2s")),
        "{view:?}"
    );
    let rest = (window + Duration::from_millis(300)).saturating_sub(joined.elapsed());
    std::thread::sleep(rest);
    let (late, got, sent) = share(&b, 150, Duration::from_secs(5));
    assert!(
        (0.25..0.42).contains(&late),
        "past its window the new endpoint gets its third: {got:?} of {sent}"
    );
}

// === bounded loads ===

/// Envoy's `hash_balance_factor` end to end: every connection from 127.0.0.1 hashes to
/// one endpoint of a Maglev cluster keyed on the source address; with the factor, once
/// that endpoint holds 150% of its share of the open connections the next ones go on
/// to the key's next choices, so 12 held connections spread, none holding more than its
/// bound; without it all 12 land on one.
fn bounded_loads_spread_one_source(kind: EngineKind) {
    let run = |factor: &str| -> Vec<usize> {
        let echo: Vec<Echo> = (0..3).map(|_| Echo::start()).collect();
        let eps: Vec<String> = echo.iter().map(|e| format!("\"{}\"", e.addr)).collect();
        let d = Daemon::start(
            kind,
            &format!(
                "listeners:\n  - {{name: l, address: \"127.0.0.1:0\", cluster: svc}}\nclusters:\n  - name: svc\n    lb_policy: maglev\n    endpoints: [{}]\n{factor}",
                eps.join(", ")
            ),
        );
        let addr = d.listener();
        // Held open: each counts as an active connection of its endpoint.
        let held: Vec<TcpStream> = (0..12)
            .map(|i| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"ping").unwrap();
                let mut b = [0u8; 4];
                s.read_exact(&mut b).unwrap();
                assert_eq!(&b, b"ping", "connection {i}");
                s
            })
            .collect();
        let got = echo.iter().map(Echo::accepted).collect();
        drop(held);
        got
    };
    let unbounded = run("");
    assert!(
        unbounded.contains(&12),
        "one source, one key, one endpoint: {unbounded:?}"
    );
    let bounded = run("    consistent_hashing_lb_config: {hash_balance_factor: 150}\n");
    assert_eq!(bounded.iter().sum::<usize>(), 12, "{bounded:?}");
    // Counts are per worker (2, each with about half of the connections): a worker's
    // endpoint is full at ceil(1.5 × (the worker's open + 1) / 3), 3 of 6 — the key's
    // first next choice takes the rest. Whatever the split, no endpoint gets 9.
    assert!(
        bounded.iter().filter(|&&n| n > 0).count() >= 2 && bounded.iter().all(|&n| n <= 8),
        "the load spreads within the bound: {bounded:?}"
    );
}

per_engine!(
    slow_start_again_after_a_failed_check,
    bounded_loads_spread_one_source,
    slow_start_ramps_a_new_endpoint,
    tcp_checks_take_out_a_dead_endpoint,
    passing_check_ends_an_ejection,
    route_hash_policies_stick,
    split_local_origin_errors_count_apart,
    generated_hash_cookie_sticks,
    istio_locality_failover,
    success_rate_ejects_and_returns,
    failure_percentage_ejects,
    panic_threshold_spreads_load,
    http_5xx_ejects_and_returns,
    destination_rule_policy_applies,
    subsets_select_by_labels,
    hash_on_header_and_cookie,
    priority_failover,
    tcp_connect_failures_eject,
    max_ejection_percent_caps,
    active_checks_follow_the_backend,
);

// === bad input ===

#[test]
fn malformed_health_settings_are_errors_naming_the_field() {
    let cases = [
        (
            "outlier_detection: {max_ejection_percent: 150}",
            "outlier_detection.max_ejection_percent",
        ),
        ("outlier_detection: {interval: 0s}", "outlier_detection.interval"),
        (
            "outlier_detection: {base_ejection_time: soon}",
            "outlier_detection: invalid duration `soon`",
        ),
        ("outlier_detection: {consecutive_5xxx: 3}", "consecutive_5xxx"),
        (
            "outlier_detection: {enforcing_consecutive_5xx: 101}",
            "enforcing_consecutive_5xx",
        ),
        (
            "outlier_detection: {consecutive_local_origin_failure: 3}",
            "outlier_detection.consecutive_local_origin_failure: takes effect only with `split_external_local_origin_errors: true`",
        ),
        (
            "outlier_detection: {split_external_local_origin_errors: false, enforcing_local_origin_success_rate: 0}",
            "outlier_detection.enforcing_local_origin_success_rate",
        ),
        (
            "outlier_detection: {split_external_local_origin_errors: true, enforcing_consecutive_local_origin_failure: 101}",
            "outlier_detection.enforcing_consecutive_local_origin_failure: 101 is over 100",
        ),
        (
            "outlier_detection: {split_external_local_origin_errors: true, enforcing_failure_percentage_local_origin: 200}",
            "outlier_detection.enforcing_failure_percentage_local_origin",
        ),
        (
            "outlier_detection: {max_ejection_time_jitter: soon}",
            "outlier_detection: invalid duration `soon`",
        ),
        (
            "outlier_detection: {always_eject_one_host: 3}",
            "always_eject_one_host",
        ),
        (
            "outlier_detection: {monitors: []}",
            "monitors",
        ),
        (
            "outlier_detection: {successful_active_health_check_uneject_host: maybe}",
            "successful_active_health_check_uneject_host",
        ),
        (
            "outlier_detection: {split_external_local_origin_errors: yes please}",
            "split_external_local_origin_errors",
        ),
        (
            "outlier_detection: {split_external_local_origin_errors: true, consecutive_local_origin_failure: -2}",
            "consecutive_local_origin_failure",
        ),
        (
            "outlier_detection: {split_external_local_origin_errors: true, enforcing_local_origin_failure: 5}",
            "enforcing_local_origin_failure",
        ),
        (
            "outlier_detection: {enforcing_success_rate: 101}",
            "outlier_detection.enforcing_success_rate",
        ),
        (
            "outlier_detection: {enforcing_failure_percentage: 200}",
            "outlier_detection.enforcing_failure_percentage",
        ),
        (
            "outlier_detection: {failure_percentage_threshold: 101}",
            "outlier_detection.failure_percentage_threshold",
        ),
        (
            "outlier_detection: {success_rate_stdev_factor: -1}",
            "success_rate_stdev_factor",
        ),
        (
            "outlier_detection: {success_rate_request_volume: many}",
            "success_rate_request_volume",
        ),
        (
            "health_checks: [{interval: 1s, timeout: 1s, unhealthy_threshold: 0, healthy_threshold: 1, http_health_check: {path: /h}}]",
            "unhealthy_threshold",
        ),
        (
            "health_checks: [{interval: 1s, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: h}}]",
            "path",
        ),
        (
            "health_checks: [{interval: 1s, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}, http_health_check: {path: /h}}]",
            "health_checks[0]: give exactly one of http_health_check, tcp_health_check",
        ),
        (
            "health_checks: [{interval: 1s, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1}]",
            "health_checks[0]: give exactly one of",
        ),
        (
            "health_checks: [{interval: 1s, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {send: {text: \"00\"}}}]",
            "send",
        ),
        (
            "health_checks: [{timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /h}}]",
            "health_checks[0].interval",
        ),
        (
            "hash_policy: {header: x-user}",
            "hashing needs lb_policy maglev or ring_hash",
        ),
        (
            "lb_policy: maglev\n    hash_policy: {header: x-user, cookie: s}",
            "exactly one key",
        ),
        (
            "lb_policy: maglev\n    hash_policy: {header: x-user, cookie_ttl: 1h}",
            "they need `cookie`",
        ),
        (
            "lb_policy: maglev\n    hash_policy: {cookie: s, cookie_path: /}",
            "hash_policy.cookie_path",
        ),
        (
            "lb_policy: maglev\n    hash_policy: {cookie: s, cookie_ttl: 1h, cookie_path: nope}",
            "is not a cookie path",
        ),
        ("healthy_panic_threshold: 101", "healthy_panic_threshold"),
        (
            "lb_policy: maglev\n    hash_policy: {query_parameter: u, header: x}",
            "exactly one key",
        ),

        (
            "health_checks: [{interval: 1s, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /h, expected_statuses: [{start: 300, end: 200}]}}]",
            "expected_statuses",
        ),
    ];
    for (extra, names) in cases {
        let yaml =
            format!("clusters:\n  - name: c\n    endpoints: [\"127.0.0.1:1\"]\n    {extra}\n");
        let e = tickmesh::config::parse(&yaml, Format::Yaml)
            .expect_err(&format!("{extra} must be refused"));
        let text = e.to_string();
        assert!(text.contains(names), "`{extra}`: {text}");
    }
}

#[test]
fn malformed_route_hash_policies_are_errors_naming_the_field() {
    let cases = [
        (
            "[{filter_state: {key: k}}]",
            "hash_policy[0].filter_state: hashing on filter state is not supported",
        ),
        (
            "[{header: {header_name: x}, cookie: {name: s}}]",
            "hash_policy[0]: set exactly one of",
        ),
        ("[{terminal: true}]", "hash_policy[0]: set exactly one of"),
        (
            "[{header: {header_name: \"bad name\"}}]",
            "hash_policy[0].header.header_name",
        ),
        (
            "[{header: {header_name: x, regex_rewrite: {}}}]",
            "regex_rewrite",
        ),
        (
            "[{query_parameter: {name: \"\"}}]",
            "hash_policy[0].query_parameter.name",
        ),
        ("[{query_parameter: {}}]", "name"),
        (
            "[{connection_properties: {source_ip: false}}]",
            "hash_policy[0].connection_properties.source_ip",
        ),
        (
            "[{cookie: {name: s, path: /}}]",
            "hash_policy[0].cookie.path: only a generated cookie",
        ),
        (
            "[{cookie: {name: s, ttl: 1h, path: nope}}]",
            "is not a cookie path",
        ),
        (
            "[{cookie: {name: s, ttl: soon}}]",
            "invalid duration `soon`",
        ),
        (
            "[{cookie: {name: \"a;b\", ttl: 1h}}]",
            "hash_policy[0].cookie.name",
        ),
        (
            "[{cookie: {name: s, ttl: 1h, attributes: [{name: SameSite}]}}]",
            "attributes",
        ),
        (
            "[{cookie: {name: s, ttl: 1h}}, {cookie: {name: t, ttl: 1m}}]",
            "hash_policy[1].cookie.ttl: a route generates at most one hash cookie",
        ),
        ("{header: {header_name: x}}", "hash_policy"),
    ];
    for (policy, names) in cases {
        let yaml = format!(
            "clusters:\n  - {{name: svc, lb_policy: maglev, endpoints: [\"127.0.0.1:1\"]}}\nroute_configs:\n  - name: rc\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          - match: {{prefix: /}}\n            route: {{cluster: svc, hash_policy: {policy}}}\n"
        );
        let e = tickmesh::config::parse(&yaml, Format::Yaml)
            .expect_err(&format!("{policy} must be refused"));
        let text = e.to_string();
        assert!(text.contains(names), "`{policy}`: {text}");
    }
}

#[test]
fn malformed_endpoint_labels_are_errors() {
    let e = tickmesh::config::parse(
        "clusters:\n  - {name: c, endpoints: [{address: \"127.0.0.1:2\", labels: [v1]}]}\n",
        Format::Yaml,
    )
    .expect_err("labels are a map");
    assert!(e.to_string().contains("clusters[0].endpoints"), "{e}");
}

#[test]
fn malformed_destination_rule_policies_are_errors() {
    let dr = |policy: &str| {
        format!(
            "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {{name: d}}\nspec:\n  host: svc\n  trafficPolicy:\n    {policy}\n"
        )
    };
    let cases = [
        (
            "outlierDetection: {maxEjectionPercent: 101}",
            "maxEjectionPercent",
        ),
        ("outlierDetection: {interval: 0s}", "interval"),
        (
            "loadBalancer: {consistentHash: {httpCookie: {name: s, path: /}}}",
            "httpCookie.path",
        ),
        (
            "loadBalancer: {consistentHash: {httpCookie: {name: s, ttl: 1m, path: \"/a;b\"}}}",
            "is not a cookie path",
        ),
        (
            "loadBalancer: {consistentHash: {httpCookie: {name: s, ttl: forever}}}",
            "invalid duration `forever`",
        ),
        (
            "outlierDetection: {minHealthPercent: 101}",
            "outlierDetection.minHealthPercent",
        ),
        (
            "outlierDetection: {consecutiveLocalOriginFailures: 3}",
            "outlierDetection.consecutiveLocalOriginFailures: takes effect only with `splitExternalLocalOriginErrors: true`",
        ),
        (
            "outlierDetection: {splitExternalLocalOriginErrors: 1}",
            "splitExternalLocalOriginErrors",
        ),
        (
            "outlierDetection: {splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailure: 3}",
            "consecutiveLocalOriginFailure",
        ),
        ("loadBalancer: {simple: PASSTHROUGH}", "PASSTHROUGH"),
        ("tls: {mode: ISTIO_MUTUAL}", "tls.mode: ISTIO_MUTUAL needs Istio's workload certificates"),
        ("tls: {mode: STRICT}", "`STRICT` is not a TLS mode"),
        ("tls: {mode: SIMPLE, sni: a}", "tls.caCertificates: give the CA bundle"),
        ("tls: {mode: SIMPLE, caCertificates: /ca.pem}", "tls.sni: give the upstream's name"),
        (
            "tls: {mode: MUTUAL, caCertificates: /ca.pem, sni: a, clientCertificate: /c.pem}",
            "MUTUAL needs both clientCertificate and privateKey",
        ),
        (
            "tls: {mode: SIMPLE, caCertificates: /ca.pem, sni: a, privateKey: /c.key}",
            "clientCertificate/privateKey are for mode MUTUAL",
        ),
        (
            "tls: {mode: SIMPLE, caCertificates: /ca.pem, sni: a, subjectAltNames: [b]}",
            "tls.subjectAltNames: `b` is not the sni name",
        ),
        (
            "tls: {mode: SIMPLE, caCertificates: /ca.pem, sni: a, insecureSkipVerify: true}",
            "tls.insecureSkipVerify",
        ),
        ("tls: {mode: DISABLE, sni: a}", "mode DISABLE takes no certificates or sni"),
        ("tls: {mode: SIMPLE, credentialName: secret}", "credentialName"),
        (
            "loadBalancer: {consistentHash: {httpQueryParameterName: \"\"}}",
            "consistentHash.httpQueryParameterName: is empty",
        ),
        (
            "loadBalancer: {consistentHash: {httpQueryParameterName: u, useSourceIp: true}}",
            "give exactly one key",
        ),
        (
            "loadBalancer: {consistentHash: {httpQueryParameterName: [u]}}",
            "httpQueryParameterName",
        ),
        (
            "loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}",
            "loadBalancer",
        ),
        (
            "connectionPool: {tcp: {maxConnections: 0}}",
            "maxConnections",
        ),
        (
            "loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 0}}}",
            "consistentHash.ringHash.minimumRingSize: 0 is not a ring size",
        ),
        (
            "loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 9000000}}",
            "consistentHash.minimumRingSize: 9000000 is not a ring size",
        ),
        (
            "loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}",
            "consistentHash.maglev.tableSize: 1000 is not a prime",
        ),
        (
            "loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {}, maglev: {}}}",
            "give one hash algorithm",
        ),
        (
            "loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 64, ringHash: {minimumRingSize: 64}}}",
            "consistentHash.minimumRingSize: deprecated spelling",
        ),
        (
            "loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {maximumRingSize: 64}}}",
            "unknown field `maximumRingSize`",
        ),
        (
            "loadBalancer: {simple: RANDOM, warmupDurationSecs: 10s}",
            "loadBalancer.warmupDurationSecs: slow start applies to ROUND_ROBIN and LEAST_REQUEST only",
        ),
        (
            "loadBalancer: {simple: LEAST_REQUEST, warmup: {duration: 10s, aggression: -1}}",
            "loadBalancer.warmup.aggression: -1 is not a finite number > 0",
        ),
        (
            "connectionPool: {http: {h2UpgradePolicy: UPGRADE}}",
            "h2UpgradePolicy",
        ),
    ];
    for (policy, names) in cases {
        let e = tickmesh::config::parse(&dr(policy), Format::Yaml)
            .expect_err(&format!("{policy} must be refused"));
        let text = e.to_string();
        assert!(text.contains(names), "`{policy}`: {text}");
    }
}

// === the real binary ===

/// `tickmesh run` ejects a dead TCP endpoint, and `tickmesh stats` (table and JSON)
/// shows it, as an operator sees it.
#[test]
fn tickmesh_stats_shows_an_ejection() {
    const BIN: &str = env!("CARGO_BIN_EXE_tickmesh");
    let echo = Echo::start();
    let dead = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let cfg = dir.path().join("tickmesh.yaml");
    std::fs::write(
        &cfg,
        l4_config(
            dead,
            echo.addr,
            "outlier_detection: {consecutive_gateway_failure: 1, enforcing_consecutive_gateway_failure: 100, base_ejection_time: 1m}",
        ),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let mut child = std::process::Command::new(BIN)
        .args(["run", "--workers", "2", "--engine", "epoll"])
        .arg("--control")
        .arg(&sock)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--config")
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stats = |json: bool| {
        let mut c = std::process::Command::new(BIN);
        c.arg("stats").arg("--control").arg(&sock);
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The listener is on port 0 (a probe-picked port could join another test's
    // SO_REUSEPORT group): read back the port the kernel chose.
    let deadline = Instant::now() + Duration::from_secs(20);
    let port = loop {
        let out = std::process::Command::new(BIN)
            .args(["get", "-o", "json", "--control"])
            .arg(&sock)
            .output()
            .unwrap();
        let bound = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| {
                v["routes"][0]["address"]
                    .as_str()?
                    .parse::<SocketAddr>()
                    .ok()
            });
        if let Some(a) = bound {
            break a.port();
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never served `get`: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut table = String::new();
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"hi");
            let mut b = [0u8; 2];
            let _ = s.read_exact(&mut b);
        }
        table = stats(false);
        if table.contains("ejected") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let json = stats(true);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        table.contains("HEALTH") && table.contains("ejected (x1"),
        "{table}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let v: serde_json::Value = serde_json::from_str(&json).expect("stats --json is JSON");
    let eps = v["clusters"][0]["endpoints"].as_array().expect("endpoints");
    let dead_ep = eps
        .iter()
        .find(|e| e["address"] == dead.to_string())
        .expect("the dead endpoint");
    assert_eq!(dead_ep["health"]["state"], "ejected", "{json}");
    assert!(dead_ep["health"]["ejected_remaining_ms"].as_u64().unwrap() > 50_000);
}
