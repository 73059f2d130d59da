//! The HTTP/1.1 proxy suite: each test runs once per engine (`uring`, `epoll`; uring
//! skips with a message where io_uring is unusable). The proxy is the real engine in
//! process (its counters are asserted) or the real `tickmesh` binary; clients are `curl`
//! and raw sockets (for bytes curl would never send); backends are small HTTP/1.1
//! servers on loopback that log what they received.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tickmesh::engine::EngineKind;
use tickmesh::telemetry::ListenerCounter as L;

// === a backend ===

/// What a backend received: one entry per request (request line and headers, then the
/// body length).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A thread-per-connection HTTP/1.1 server. Paths choose its behaviour:
/// `/garbage` answers bytes that are not HTTP, `/shadow-close` (backend `shadow` only)
/// a body delimited by closing, `/slow` waits 3 s, `/chunked` answers a
/// chunked body, `/upgrade` switches protocols and echoes, `/close` answers a body
/// delimited by closing; anything else answers `<name> <path>` with a length.
struct Backend {
    addr: SocketAddr,
    log: Log,
    accepted: Arc<AtomicUsize>,
}

impl Backend {
    fn start(name: &'static str) -> Backend {
        Backend::start_delayed(name, Duration::ZERO)
    }

    /// A backend that waits `delay` before each answer (after logging the request).
    fn start_delayed(name: &'static str, delay: Duration) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let log = Log::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (lg, acc) = (log.clone(), accepted.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                acc.fetch_add(1, Ordering::Relaxed);
                let lg = lg.clone();
                std::thread::spawn(move || serve(c, name, lg, delay));
            }
        });
        Backend {
            addr,
            log,
            accepted,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

fn serve(c: TcpStream, name: &str, log: Log, delay: Duration) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    // Bounded: a test connection carries at most a few thousand requests.
    for _ in 0..100_000 {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let lower = head.to_ascii_lowercase();
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        if lower.contains("expect: 100-continue") {
            let _ = w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let mut body = Vec::new();
        if let Some(i) = lower.find("content-length: ") {
            let n: usize = lower[i + 16..]
                .lines()
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            body.resize(n, 0);
            if r.read_exact(&mut body).is_err() {
                return;
            }
        } else if lower.contains("transfer-encoding: chunked") {
            loop {
                let mut size = String::new();
                if r.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                if r.read_exact(&mut chunk).is_err() {
                    return;
                }
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        log.0
            .lock()
            .unwrap()
            .push(format!("{head}body-len: {}\n", body.len()));
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let first_attempt = lower.contains("x-tickmesh-attempt-count: 1\r\n");
        let reply = match path.as_str() {
            "/retry" | "/retry-post" if first_attempt => {
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nfail".to_string()
            }
            "/retry-slow" if first_attempt => {
                std::thread::sleep(Duration::from_secs(2));
                ok(name, &path)
            }
            "/always-503" => {
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nfail".to_string()
            }
            "/garbage" => {
                let _ = w.write_all(b"SSH-2.0-NotHttp\r\n\r\n");
                return;
            }
            "/slow" => {
                std::thread::sleep(Duration::from_secs(3));
                ok(name, &path)
            }
            "/chunked" => {
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                    .to_string()
            }
            "/shadow-close" if name == "shadow" => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil close");
                return;
            }
            "/close" => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil close");
                return;
            }
            "/upgrade" => {
                let _ = w.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
                );
                let mut buf = [0u8; 1024];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if w.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            p if p.starts_with("/big") => {
                // A body over the proxy's copy threshold, written with its head at once.
                let b = "z".repeat(8192);
                format!(
                    "HTTP/1.1 200 OK\r\nx-backend: {name}\r\ncontent-length: {}\r\n\r\n{b}",
                    b.len()
                )
            }
            _ if !body.is_empty() => {
                let b = format!("{name} {path} {}", body.len());
                format!(
                    "HTTP/1.1 200 OK\r\nx-backend: {name}\r\nkeep-alive: timeout=5\r\ncontent-length: {}\r\n\r\n{b}",
                    b.len()
                )
            }
            _ => ok(name, &path),
        };
        if w.write_all(reply.as_bytes()).is_err() {
            return;
        }
        if path == "/stray-after" {
            // A keep-alive answer, then bytes nobody asked for while the connection
            // idles — shaped like a response, so a proxy that reused the connection
            // would hand them to the next client. Then: who ends the connection?
            std::thread::sleep(Duration::from_millis(50));
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray");
            log.0.lock().unwrap().push("STRAY sent\n".into());
            let mut line = String::new();
            let what = match r.read_line(&mut line) {
                Ok(0) => "STRAY closed by the proxy (FIN)\n".to_string(),
                Ok(_) => format!("STRAY connection reused: {line}"),
                // Closed with the stray bytes unread: the kernel sends a reset.
                Err(e) => format!("STRAY closed by the proxy ({e})\n"),
            };
            log.0.lock().unwrap().push(what);
            return;
        }
        if path == "/close-after" {
            // A keep-alive answer, then the upstream closes the idle connection (as
            // a keep-alive timeout does).
            std::thread::sleep(Duration::from_millis(50));
            let _ = w.shutdown(std::net::Shutdown::Both);
            log.0
                .lock()
                .unwrap()
                .push("CLOSED after /close-after\n".into());
            return;
        }
    }
}

fn ok(name: &str, path: &str) -> String {
    let b = format!("{name} {path}");
    format!(
        "HTTP/1.1 200 OK\r\nx-backend: {name}\r\nconnection: keep-alive\r\ncontent-length: {}\r\n\r\n{b}",
        b.len()
    )
}

// === config ===

fn http_config(port: u16, clusters: &str, routes: &str, listener_extra: &str) -> String {
    format!(
        "listeners:\n  - {{name: l, address: \"127.0.0.1:{port}\", protocol: http{listener_extra}}}\n\
         clusters:\n{clusters}\
         route_configs:\n  - name: rc\n    virtual_hosts:\n      - name: vh\n        domains: [\"*\"]\n        routes:\n{routes}"
    )
}

fn route(prefix: &str, action: &str) -> String {
    format!("          - match: {{prefix: \"{prefix}\"}}\n            {action}\n")
}

// === a raw client ===

/// One response read off a stream: status, headers (lowercased names), body.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, n: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    }
}

/// Read one response (Content-Length, chunked, or until close).
fn read_resp(r: &mut BufReader<TcpStream>) -> Option<Resp> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(n) = resp.header("content-length") {
        let mut b = vec![0; n.parse().ok()?];
        r.read_exact(&mut b).ok()?;
        resp.body = b;
    } else if resp.header("transfer-encoding") == Some("chunked") {
        loop {
            let mut s = String::new();
            r.read_line(&mut s).ok()?;
            let n = usize::from_str_radix(s.trim(), 16).ok()?;
            let mut c = vec![0; n + 2];
            r.read_exact(&mut c).ok()?;
            if n == 0 {
                break;
            }
            resp.body.extend_from_slice(&c[..n]);
        }
    } else if status >= 200 && status != 204 && status != 304 {
        r.read_to_end(&mut resp.body).ok()?;
    }
    Some(resp)
}

fn client(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

/// Send `bytes` on a new connection; the first response's status (0: none came).
fn status_of(addr: SocketAddr, bytes: &[u8]) -> u16 {
    let (mut s, mut r) = client(addr);
    // The proxy may answer and close before all of it is written.
    let _ = s.write_all(bytes);
    read_resp(&mut r).map_or(0, |x| x.status)
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs (scripts/setup installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn open_zero(p: &Proxy) {
    wait_until(
        "HTTP connections to be freed",
        Duration::from_secs(5),
        || p.engine().open_connections() == 0,
    );
}

/// Backend `a` and a proxy whose one route sends everything to it; `listener_extra`
/// goes into the listener's map.
fn proxy_to_a(kind: EngineKind, listener_extra: &str) -> (Backend, Proxy) {
    let a = Backend::start("a");
    let p = Proxy::start(
        kind,
        &http_config(
            0,
            &cluster_yaml("a", &[a.addr], ""),
            &route("/", "route: {cluster: a}"),
            listener_extra,
        ),
    );
    (a, p)
}

// === tests (each runs per engine, see the bottom) ===

/// The real binary, curl as the client: forward with rewritten headers, bodies both
/// ways, direct response, redirect, prefix rewrite, no route.
fn binary_with_curl(kind: EngineKind) {
    let a = Backend::start("a");
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let routes = [
        route(
            "/direct",
            "direct_response: {status: 200, body: {inline_string: \"hi\\n\"}}",
        ),
        route(
            "/old",
            "redirect: {host_redirect: \"example.com\", path_redirect: \"/new\"}",
        ),
        route("/api/", "route: {cluster: a, prefix_rewrite: \"/v2/\"}"),
        route("/", "route: {cluster: a}"),
    ]
    .concat();
    let cfg = http_config(port, &cluster_yaml("a", &[a.addr], ""), &routes, "");
    let cfg = cfg.replace(
        "domains: [\"*\"]",
        "domains: [\"svc.local\", \"127.0.0.1\"]",
    );
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, cfg).unwrap();
    let engine = match kind {
        EngineKind::Uring => "uring",
        _ => "epoll",
    };
    let child = Command::new(env!("CARGO_BIN_EXE_tickmesh"))
        .arg("run")
        .arg("-c")
        .arg(&path)
        .args(["--engine", engine, "-w", "1", "--control"])
        .arg(dir.path().join("ctl.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _k = Kill(child);
    let base = format!("http://127.0.0.1:{port}");
    wait_until("the daemon to listen", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    // GET with hop-by-hop headers that must not reach the backend.
    let out = curl(&[
        "-H",
        "Connection: keep-alive, x-secret",
        "-H",
        "X-Secret: 1",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "X-Forwarded-For: 10.0.0.1",
        &format!("{base}/hello?q=1"),
    ]);
    assert_eq!(out, "a /hello?q=1");
    let seen = a.log.all().pop().unwrap().to_ascii_lowercase();
    assert!(seen.starts_with("get /hello?q=1 http/1.1\r\n"), "{seen}");
    assert!(
        seen.contains("x-forwarded-for: 10.0.0.1, 127.0.0.1\r\n"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: http\r\n"), "{seen}");
    assert!(seen.contains("x-request-id: "), "{seen}");
    for hop in ["x-secret", "keep-alive", "connection"] {
        assert!(
            !seen.contains(&format!("{hop}:")),
            "{hop} forwarded: {seen}"
        );
    }
    // A request id the client set is kept.
    curl(&["-H", "x-request-id: abc", &format!("{base}/id")]);
    assert!(a.log.all().pop().unwrap().contains("x-request-id: abc\r\n"));
    // Bodies: Content-Length and chunked uploads, a chunked download.
    let big = "x".repeat(200_000);
    let f = dir.path().join("body");
    std::fs::write(&f, &big).unwrap();
    let fa = format!("@{}", f.display());
    assert_eq!(
        curl(&["--data-binary", &fa, &format!("{base}/up")]),
        "a /up 200000"
    );
    assert_eq!(
        curl(&[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &fa,
            &format!("{base}/up")
        ]),
        "a /up 200000"
    );
    assert_eq!(curl(&[&format!("{base}/chunked")]), "hello world");
    assert_eq!(curl(&[&format!("{base}/close")]), "until close");
    // Expect: 100-continue passes through.
    assert_eq!(
        curl(&[
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            "abc",
            &format!("{base}/exp")
        ]),
        "a /exp 3"
    );
    // Local answers and rewriting.
    assert_eq!(curl(&[&format!("{base}/direct")]), "hi\n");
    let redirect = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &format!("{base}/old"),
    ]);
    assert_eq!(redirect, "301 http://example.com/new");
    assert_eq!(curl(&[&format!("{base}/api/items")]), "a /v2/items");
    let code = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: other.example",
        &format!("{base}/"),
    ]);
    assert_eq!(code, "404");
    // Keep-alive: curl reuses its connection, the proxy reuses the upstream one.
    let before = a.accepted();
    let out = curl(&[
        "-w",
        " %{num_connects}\n",
        &format!("{base}/k1"),
        &format!("{base}/k2"),
        &format!("{base}/k3"),
    ]);
    assert_eq!(out, "a /k1 1\na /k2 0\na /k3 0\n");
    assert!(
        a.accepted() - before <= 1,
        "one upstream connection for three requests (or none: the worker's pool had one)"
    );
}

/// Pipelined requests on one connection are answered in order; the upstream
/// connection is reused.
fn pipelining(kind: EngineKind) {
    let (a, p) = proxy_to_a(kind, "");
    let addr = p.listener("l");
    let (mut s, mut r) = client(addr);
    let mut batch = Vec::new();
    for i in 0..20 {
        if i % 3 == 0 {
            batch.extend_from_slice(
                format!("POST /p{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
                    .as_bytes(),
            );
        } else if i % 3 == 1 {
            batch.extend_from_slice(
                format!("POST /p{i} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
                    .as_bytes(),
            );
        } else {
            batch.extend_from_slice(format!("GET /p{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        }
    }
    s.write_all(&batch).unwrap();
    for i in 0..20 {
        let resp = read_resp(&mut r).unwrap_or_else(|| panic!("response {i}"));
        let want = match i % 3 {
            0 => format!("a /p{i} 5"),
            1 => format!("a /p{i} 3"),
            _ => format!("a /p{i}"),
        };
        assert_eq!(String::from_utf8_lossy(&resp.body), want);
    }
    assert_eq!(a.accepted(), 1);
    let ls = p.stats.listener("l");
    assert_eq!(ls.get(L::HttpRqTotal), 20);
    assert_eq!(ls.get(L::HttpUpstreamReuse), 19);
    drop((s, r));
    open_zero(&p);
}

/// Data segments the kernel received on the established TCP sockets bound to local
/// port `port` (`ss`'s `data_segs_in`), summed; `None` when `ss` cannot tell.
fn data_segs_in(port: u16) -> Option<u64> {
    let filter = format!("( sport = :{port} )");
    let out = Command::new("ss")
        .args(["-tinH", "state", "established", &filter])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut sum = None;
    for w in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Some(v) = w.strip_prefix("data_segs_in:") {
            *sum.get_or_insert(0) += v.parse::<u64>().ok()?;
        }
    }
    sum
}

/// A small message leaves the proxy in one TCP segment: the rewritten head and the
/// body behind it go out in one send, both ways (sent apart, the peer is woken for a
/// head it cannot use yet and the body follows a completion later). Counted by the
/// kernel on the client's socket and on the backend's.
fn one_segment_per_message(kind: EngineKind) {
    let Some((a, p, mut s, mut r)) = segment_counted(kind) else {
        return;
    };
    const N: u64 = 20;
    let body = "b".repeat(64);
    for i in 0..N {
        let req = format!("POST /seg{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 64\r\n\r\n{body}");
        s.write_all(req.as_bytes()).unwrap();
        let resp = read_resp(&mut r).unwrap_or_else(|| panic!("response {i}"));
        assert_eq!(resp.body, format!("a /seg{i} 64").as_bytes());
    }
    assert_one_segment_each(&s, &a, N);
    assert!(a.log.all().iter().all(|e| e.contains("body-len: 64")));
    drop((s, r));
    open_zero(&p);
}

/// A body too large to copy behind its rewritten head (8 KiB, over the 4 KiB copy
/// threshold) still leaves with it: one gathered send (sendmsg with two iovecs), one
/// segment per message both ways.
fn large_body_leaves_with_its_head(kind: EngineKind) {
    let Some((a, p, mut s, mut r)) = segment_counted(kind) else {
        return;
    };
    const N: u64 = 20;
    let body = "b".repeat(8192);
    for i in 0..N {
        let req = format!("POST /big{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 8192\r\n\r\n{body}");
        s.write_all(req.as_bytes()).unwrap();
        let resp = read_resp(&mut r).unwrap_or_else(|| panic!("response {i}"));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.len(), 8192);
        assert!(resp.body.iter().all(|&c| c == b'z'));
    }
    assert_one_segment_each(&s, &a, N);
    assert!(a.log.all().iter().all(|e| e.contains("body-len: 8192")));
    drop((s, r));
    open_zero(&p);
}

/// A routing-table swap keeps the pooled upstream connections to endpoints the new
/// table still has (same cluster, same address), and closes the others.
fn pool_survives_table_swap(kind: EngineKind) {
    use tickmesh::telemetry::UpstreamCounter as U;
    let a = Backend::start("a");
    let a2 = Backend::start("a2");
    let b = Backend::start("b");
    let cfg = |a_addr: SocketAddr, with_b: bool| {
        // With b, cluster b comes first: a's index in the table changes.
        let mut clusters = String::new();
        let mut routes = String::new();
        if with_b {
            clusters += &cluster_yaml("b", &[b.addr], "");
            routes += &route("/b/", "route: {cluster: b}");
        }
        clusters += &cluster_yaml("a", &[a_addr], "");
        routes += &route("/", "route: {cluster: a}");
        http_config(0, &clusters, &routes, "")
    };
    let mut p = Proxy::start(kind, &cfg(a.addr, false));
    let (mut s, mut r) = client(p.listener("l"));
    let mut get = |path: &str| {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let resp = read_resp(&mut r).unwrap();
        assert_eq!(resp.status, 200, "{path}");
        String::from_utf8(resp.body).unwrap()
    };
    assert_eq!(get("/1"), "a /1");
    // A new table that adds a cluster before a (a keeps its name and endpoint, not its
    // index): the pooled connection to a is reused.
    p.apply(&cfg(a.addr, true));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(get("/2"), "a /2");
    assert_eq!(get("/b/3"), "b /b/3");
    assert_eq!(a.accepted(), 1, "the upstream connection survived the swap");
    let ca = p.stats.cluster("a");
    assert_eq!(ca.get(U::CxClosed), 0);
    // Cluster a's endpoint changes: its pooled connection is closed, a2 serves.
    p.apply(&cfg(a2.addr, true));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(get("/4"), "a2 /4");
    assert_eq!((a.accepted(), a2.accepted()), (1, 1));
    wait_until(
        "the old connection's close to be counted",
        Duration::from_secs(2),
        || ca.get(U::CxClosed) == 1,
    );
    drop((s, r));
    open_zero(&p);
}

/// Does `ss` report per-connection segment counts here? (Asked about a connection of
/// our own that received one byte: `ss` leaves a zero count out.)
fn ss_reports_segments() -> bool {
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut a, _) = probe.accept().unwrap();
    c.write_all(b"x").unwrap();
    a.read_exact(&mut [0u8; 1]).unwrap();
    data_segs_in(port).is_some()
}

/// For the one-segment tests: backend `a`, a proxy routing to it and a `TCP_NODELAY`
/// client connection; `None` (with a message) where `ss` cannot count segments.
fn segment_counted(kind: EngineKind) -> Option<(Backend, Proxy, TcpStream, BufReader<TcpStream>)> {
    if !ss_reports_segments() {
        eprintln!("skipped: `ss -ti` (iproute2) does not report data_segs_in here");
        return None;
    }
    let (a, p) = proxy_to_a(kind, "");
    let (s, r) = client(p.listener("l"));
    s.set_nodelay(true).unwrap();
    Some((a, p, s, r))
}

/// `n` messages each way went as `n` data segments: the responses to the client
/// (counted on its socket `s`) and the requests to backend `a`.
fn assert_one_segment_each(s: &TcpStream, a: &Backend, n: u64) {
    let client_port = s.local_addr().unwrap().port();
    assert_eq!(
        data_segs_in(client_port),
        Some(n),
        "segments carrying the {n} responses to the client"
    );
    assert_eq!(
        data_segs_in(a.addr.port()),
        Some(n),
        "segments carrying the {n} requests to the backend"
    );
}

/// Each bad input gets its status, and the proxy keeps serving with nothing leaked.
fn bad_input(kind: EngineKind) {
    let (_a, p) = proxy_to_a(kind, ", max_request_body: 100");
    let addr = p.listener("l");
    let mut big_head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big_head.resize(70 * 1024, b'a');
    big_head.extend_from_slice(b"\r\n\r\n");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed request line", b"GET\r\n\r\n".to_vec(), 400),
        ("HTTP/0.9", b"GET /\r\n".to_vec(), 400),
        ("bad version", b"GET / HTTP/3.0\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("invalid header name", b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n".to_vec(), 400),
        ("control byte in a value", b"GET / HTTP/1.1\r\nHost: x\x01y\r\n\r\n".to_vec(), 400),
        ("missing Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("header section over 64 KiB", big_head, 431),
        (
            "Content-Length with Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            400,
        ),
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
        ),
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            400,
        ),
        (
            "body over the limit (Content-Length)",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n".to_vec(),
            413,
        ),
        (
            "body over the limit (chunked)",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n".to_vec(),
            413,
        ),
    ];
    for (what, bytes, want) in &cases {
        assert_eq!(status_of(addr, bytes), *want, "{what}");
    }
    let ls = p.stats.listener("l");
    assert_eq!(ls.get(L::HttpBadRequest), cases.len() as u64);
    // Still serving.
    assert_eq!(
        status_of(addr, b"GET /fine HTTP/1.1\r\nHost: x\r\n\r\n"),
        200
    );
    open_zero(&p);
}

/// Upstream failures: garbage → 502, timeout → 504, refused → 503, no endpoints → 503.
fn upstream_errors(kind: EngineKind) {
    let a = Backend::start("a");
    let routes = [
        route("/slow", "route: {cluster: a, timeout: 300ms}"),
        route("/dead", "route: {cluster: dead}"),
        route("/", "route: {cluster: a}"),
    ]
    .concat();
    let clusters = cluster_yaml("a", &[a.addr], "") + &cluster_yaml("dead", &[dead_addr()], "");
    let p = Proxy::start(kind, &http_config(0, &clusters, &routes, ""));
    let addr = p.listener("l");
    assert_eq!(
        status_of(addr, b"GET /garbage HTTP/1.1\r\nHost: x\r\n\r\n"),
        502
    );
    let t = Instant::now();
    assert_eq!(
        status_of(addr, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"),
        504
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "504 after {:?}",
        t.elapsed()
    );
    assert_eq!(
        status_of(addr, b"GET /dead HTTP/1.1\r\nHost: x\r\n\r\n"),
        503
    );
    let ls = p.stats.listener("l");
    assert_eq!(ls.get(L::HttpBadGateway), 1);
    assert_eq!(ls.get(L::HttpUpstreamTimeout), 1);
    assert_eq!(ls.get(L::HttpNoHealthyUpstream), 1);
    assert_eq!(status_of(addr, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
    open_zero(&p);
}

/// A weighted route splits 10,000 requests within ±2% of its weights.
fn weighted_split(kind: EngineKind) {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let clusters = cluster_yaml("a", &[a.addr], "") + &cluster_yaml("b", &[b.addr], "");
    let action =
        "route: {weighted_clusters: {clusters: [{name: a, weight: 30}, {name: b, weight: 70}]}}";
    let p = Proxy::start(kind, &http_config(0, &clusters, &route("/", action), ""));
    let addr = p.listener("l");
    const N: usize = 10_000;
    let mut hits_a = 0;
    // Four keep-alive connections, 100 pipelined requests per batch.
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                sc.spawn(move || {
                    let (mut s, mut r) = client(addr);
                    let mut na = 0;
                    for _ in 0..N / 4 / 100 {
                        let mut batch = Vec::new();
                        for _ in 0..100 {
                            batch.extend_from_slice(b"GET /w HTTP/1.1\r\nHost: x\r\n\r\n");
                        }
                        s.write_all(&batch).unwrap();
                        for _ in 0..100 {
                            let resp = read_resp(&mut r).expect("response");
                            assert_eq!(resp.status, 200);
                            if resp.header("x-backend") == Some("a") {
                                na += 1;
                            }
                        }
                    }
                    na
                })
            })
            .collect();
        for h in hs {
            hits_a += h.join().unwrap();
        }
    });
    let share = hits_a as f64 / N as f64;
    assert!(
        (share - 0.30).abs() <= 0.02,
        "cluster a got {share:.4} of requests, want 0.30 ± 0.02"
    );
    assert_eq!(a.log.all().len() + b.log.all().len(), N);
    open_zero(&p);
}

/// Sniffing: TLS-looking and other non-HTTP bytes go to the listener's TCP fallback
/// cluster (an echo server here); HTTP still routes.
fn sniff_fallback(kind: EngineKind) {
    let a = Backend::start("a");
    let echo = Echo::start();
    let clusters = cluster_yaml("a", &[a.addr], "") + &cluster_yaml("tcp", &[echo.addr], "");
    let p = Proxy::start(
        kind,
        &http_config(
            0,
            &clusters,
            &route("/", "route: {cluster: a}"),
            ", cluster: tcp",
        ),
    );
    let addr = p.listener("l");
    for first in [
        &b"\x16\x03\x01\x00\x05hello"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
    ] {
        let mut s = connect(addr);
        round_trip(&mut s, first);
        round_trip(&mut s, b"more bytes after the first");
    }
    assert_eq!(p.stats.listener("l").get(L::SniffedTcp), 3);
    assert_eq!(status_of(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
    open_zero(&p);
}

/// `Connection: upgrade` answered with 101 becomes a tunnel both ways.
fn upgrade_tunnel(kind: EngineKind) {
    let (a, p) = proxy_to_a(kind, "");
    let addr = p.listener("l");
    let (mut s, mut r) = client(addr);
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .unwrap();
    let resp = read_resp(&mut r).unwrap();
    assert_eq!(resp.status, 101);
    assert_eq!(resp.header("upgrade"), Some("echo"));
    let seen = a.log.all().pop().unwrap().to_ascii_lowercase();
    assert!(
        seen.contains("upgrade: echo") && seen.contains("connection: upgrade"),
        "{seen}"
    );
    for msg in [&b"ping"[..], b"pong pong"] {
        s.write_all(msg).unwrap();
        let mut got = vec![0; msg.len()];
        r.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }
    assert_eq!(p.stats.listener("l").get(L::HttpUpgrades), 1);
    drop((s, r));
    open_zero(&p);
}

/// A client that never finishes its head gets 408 after the header timeout.
fn header_timeout(kind: EngineKind) {
    let (_a, p) = proxy_to_a(kind, ", request_header_timeout: 200ms");
    let addr = p.listener("l");
    let (mut s, mut r) = client(addr);
    let t = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let resp = read_resp(&mut r).expect("a 408");
    assert_eq!(resp.status, 408);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(p.stats.listener("l").get(L::HttpHeaderTimeout), 1);
    open_zero(&p);
}

/// Route and virtual-host header edits on requests and responses.
fn header_edits(kind: EngineKind) {
    let a = Backend::start("a");
    let routes = "          - match: {prefix: \"/service/\"}\n            route: {cluster: a, \
        regex_rewrite: {pattern: {google_re2: {}, regex: \"^/service/([^/]+)(/.*)$\"}, substitution: \"\\\\2/instance/\\\\1\"}}\n          \
        - match: {prefix: \"/\"}\n            route: {cluster: a}\n            \
        request_headers_to_add: [{header: {key: x-added, value: r1}}, \
        {header: {key: x-keep, value: new}, append_action: ADD_IF_ABSENT}, \
        {header: {key: x-over, value: new}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]\n            \
        request_headers_to_remove: [x-drop]\n            \
        response_headers_to_add: [{header: {key: x-resp, value: yes}}]\n            \
        response_headers_to_remove: [x-backend]\n";
    let cfg = http_config(0, &cluster_yaml("a", &[a.addr], ""), routes, "")
        .replace(
            "        domains: [\"*\"]\n",
            "        domains: [\"*\"]\n        request_headers_to_add: [{header: {key: x-vh, value: v}}]\n",
        )
        // Route-configuration level: after the virtual host's edits.
        .replace(
            "  - name: rc\n",
            "  - name: rc\n    request_headers_to_add: [{header: {key: x-rc, value: c}}]\n    \
             response_headers_to_add: [{header: {key: x-rc-resp, value: c}}]\n",
        );
    let p = Proxy::start(kind, &cfg);
    let addr = p.listener("l");
    let (mut s, mut r) = client(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Drop: 1\r\nX-Keep: old\r\nX-Over: old\r\n\r\n")
        .unwrap();
    let resp = read_resp(&mut r).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-resp"), Some("yes"));
    assert_eq!(resp.header("x-backend"), None);
    assert_eq!(resp.header("x-rc-resp"), Some("c"));
    let seen = a.log.all().pop().unwrap().to_ascii_lowercase();
    for want in [
        "x-added: r1\r\n",
        "x-keep: old\r\n",
        "x-over: new\r\n",
        "x-vh: v\r\n",
        "x-rc: c\r\n",
    ] {
        assert!(seen.contains(want), "{want:?} missing: {seen}");
    }
    for gone in ["x-drop", "x-keep: new", "x-over: old"] {
        assert!(!seen.contains(gone), "{gone:?} present: {seen}");
    }
    // regex_rewrite: groups moved, the query string kept.
    s.write_all(b"GET /service/foo/v1/api?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let resp = read_resp(&mut r).unwrap();
    assert_eq!(resp.body, b"a /v1/api/instance/foo?q=1");
    drop((s, r));
    open_zero(&p);
}

/// Retries: a 5xx, a per-try timeout and a refused connect are retried (visible in the
/// backend's log with their attempt counts), bodies are replayed, attempts are bounded.
fn retries(kind: EngineKind) {
    let a = Backend::start("a");
    let policy = "retry_policy: {retry_on: \"5xx,connect-failure\", num_retries: 2, \
                  per_try_timeout: 800ms, retry_back_off: {base_interval: 10ms, max_interval: 50ms}}";
    let routes = [
        route("/dead", &format!("route: {{cluster: dead, {policy}}}")),
        route("/", &format!("route: {{cluster: a, {policy}}}")),
    ]
    .concat();
    let clusters = cluster_yaml("a", &[a.addr], "") + &cluster_yaml("dead", &[dead_addr()], "");
    let p = Proxy::start(kind, &http_config(0, &clusters, &routes, ""));
    let addr = p.listener("l");
    let ls = p.stats.listener("l");
    let attempts = |path: &str| -> Vec<String> {
        a.log
            .all()
            .iter()
            .filter(|e| e.contains(&format!(" {path} ")))
            .map(|e| {
                let l = e.to_ascii_lowercase();
                let i = l
                    .find("x-tickmesh-attempt-count: ")
                    .expect("attempt header")
                    + 26;
                l[i..].lines().next().unwrap().trim().to_string()
            })
            .collect()
    };
    // 503 on the first attempt, 200 on the second.
    let (mut s, mut r) = client(addr);
    s.write_all(b"GET /retry HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let resp = read_resp(&mut r).unwrap();
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"a /retry"[..]));
    assert_eq!(attempts("/retry"), ["1", "2"]);
    // The body goes again too.
    s.write_all(b"POST /retry-post HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let resp = read_resp(&mut r).unwrap();
    assert_eq!(
        (resp.status, resp.body.as_slice()),
        (200, &b"a /retry-post 5"[..])
    );
    assert!(a
        .log
        .all()
        .iter()
        .filter(|e| e.contains("/retry-post"))
        .all(|e| e.contains("body-len: 5")));
    // A per-try timeout: the slow first attempt (2 s) is abandoned. The timeout leaves a
    // loaded 2-core CI box room for the quick attempts: at 300 ms one of them
    // could time out too (suspected cause of one failed count below, not reproduced).
    let t = Instant::now();
    s.write_all(b"GET /retry-slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let resp = read_resp(&mut r).unwrap();
    assert_eq!(resp.status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(1900),
        "took {:?}",
        t.elapsed()
    );
    // Bounded: 1 + num_retries attempts, then the upstream's own 503 goes out.
    s.write_all(b"GET /always-503 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let resp = read_resp(&mut r).unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(attempts("/always-503"), ["1", "2", "3"]);
    drop((s, r));
    // connect-failure: every attempt refused, then 503.
    assert_eq!(
        status_of(addr, b"GET /dead HTTP/1.1\r\nHost: x\r\n\r\n"),
        503
    );
    assert_eq!(ls.get(L::HttpRetry), 1 + 1 + 1 + 2 + 2);
    open_zero(&p);
}

/// Circuit breaking: over `max_requests` active → 503 with `x-tickmesh-overloaded`
/// at once; `max_requests_per_connection` caps upstream connection reuse.
fn circuit_breaking(kind: EngineKind) {
    let a = Backend::start("a");
    let extra = ", circuit_breakers: {max_requests: 1, max_requests_per_connection: 2}";
    let p = Proxy::start(
        kind,
        &http_config(
            0,
            &cluster_yaml("a", &[a.addr], extra),
            &route("/", "route: {cluster: a, timeout: 1s}"),
            "",
        ),
    );
    let addr = p.listener("l");
    let (mut slow, mut slow_r) = client(addr);
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    wait_until(
        "the slow request to reach the backend",
        Duration::from_secs(5),
        || a.log.all().iter().any(|e| e.contains("/slow")),
    );
    let t = Instant::now();
    let (mut s, mut r) = client(addr);
    s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let resp = read_resp(&mut r).unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("x-tickmesh-overloaded"), Some("true"));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "overflow took {:?}",
        t.elapsed()
    );
    assert_eq!(
        p.stats
            .cluster("a")
            .get(tickmesh::telemetry::UpstreamCounter::RqOverflow),
        1
    );
    // The slow one ends (route timeout); then requests flow again, two per upstream
    // connection.
    assert_eq!(read_resp(&mut slow_r).unwrap().status, 504);
    drop((slow, slow_r, s, r));
    let before = a.accepted();
    let (mut s, mut r) = client(addr);
    for i in 0..4 {
        s.write_all(format!("GET /n{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(read_resp(&mut r).unwrap().status, 200);
    }
    assert_eq!(a.accepted() - before, 2);
    drop((s, r));
    open_zero(&p);
}

/// Mirroring: the share of requests copied to the shadow cluster is the configured
/// percentage (±3% over 3,000), the shadow sees the `-shadow` host and the body, and a
/// body over the copy cap is not mirrored (counted) while the primary gets it whole.
fn mirror_percentage(kind: EngineKind) {
    let a = Backend::start("a");
    let shadow = Backend::start("shadow");
    let mirror = "request_mirror_policies: [{cluster: shadow, runtime_fraction: \
                  {default_value: {numerator: 30, denominator: HUNDRED}}}]";
    let routes = [
        route(
            "/all",
            "route: {cluster: a, request_mirror_policies: [{cluster: shadow}]}",
        ),
        route("/", &format!("route: {{cluster: a, {mirror}}}")),
    ]
    .concat();
    let clusters = cluster_yaml("a", &[a.addr], "") + &cluster_yaml("shadow", &[shadow.addr], "");
    let p = Proxy::start(kind, &http_config(0, &clusters, &routes, ""));
    let addr = p.listener("l");
    let ls = p.stats.listener("l");
    let shadow_seen = || shadow.log.all().len() as u64;
    // 100%: a POST with its body, the host marked.
    let (mut s, mut r) = client(addr);
    s.write_all(b"POST /all/x HTTP/1.1\r\nHost: pay.local:8080\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let resp = read_resp(&mut r).unwrap();
    assert_eq!(
        (resp.status, resp.body.as_slice()),
        (200, &b"a /all/x 5"[..])
    );
    wait_until("the shadow copy", Duration::from_secs(5), || {
        shadow_seen() == 1
    });
    let seen = shadow.log.all().pop().unwrap();
    assert!(seen.starts_with("POST /all/x HTTP/1.1\r\n"), "{seen}");
    assert!(seen.contains("Host: pay.local-shadow:8080\r\n"), "{seen}");
    assert!(seen.contains("body-len: 5"), "{seen}");
    let primary = a.log.all().pop().unwrap();
    assert!(primary.contains("Host: pay.local:8080\r\n"), "{primary}");
    // A body over the copy cap: the primary gets all of it, the mirror is dropped.
    let big = vec![b'x'; 100_000];
    s.write_all(b"POST /all/big HTTP/1.1\r\nHost: pay.local\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    s.write_all(&big).unwrap();
    let resp = read_resp(&mut r).unwrap();
    assert_eq!(resp.body, b"a /all/big 100000");
    assert_eq!(ls.get(L::HttpMirrorDropped), 1);
    // 30% of 10,000 (the count), within ±3 points.
    const N: u64 = 10_000;
    for i in 0..N {
        s.write_all(format!("GET /p{i} HTTP/1.1\r\nHost: pay.local\r\n\r\n").as_bytes())
            .unwrap();
        let resp = read_resp(&mut r).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-backend"), Some("a"), "the primary answers");
    }
    drop((s, r));
    let chosen = ls.get(L::HttpMirrored) + ls.get(L::HttpMirrorDropped) - 1 - 1;
    let share = chosen as f64 / N as f64;
    assert!((0.27..=0.33).contains(&share), "mirrored share {share}");
    wait_until("the shadow copies", Duration::from_secs(10), || {
        shadow_seen() == ls.get(L::HttpMirrored)
    });
    assert_eq!(ls.get(L::HttpMirrorFailed), 0);
    // Shadows frame their responses and park their connections: a few carry them all.
    assert!(
        shadow.accepted() <= 16,
        "{} shadow connections for {} mirrors",
        shadow.accepted(),
        ls.get(L::HttpMirrored)
    );
    assert!(
        ls.get(L::HttpMirrorDropped) <= 1 + N / 100,
        "in-flight cap hit {} times",
        ls.get(L::HttpMirrorDropped)
    );
    open_zero(&p);
}

/// A slow, timing-out or unreachable shadow never delays or changes the primary
/// response; shadows in flight are capped per worker and the overflow is counted.
fn mirror_never_delays(kind: EngineKind) {
    let a = Backend::start("a");
    let slow = Backend::start_delayed("slow", Duration::from_secs(2));
    let routes = [
        route(
            "/slow",
            "route: {cluster: a, timeout: 1s, request_mirror_policies: [{cluster: slow}]}",
        ),
        route(
            "/dead",
            "route: {cluster: a, request_mirror_policies: [{cluster: dead}]}",
        ),
    ]
    .concat();
    let clusters = cluster_yaml("a", &[a.addr], "")
        + &cluster_yaml("slow", &[slow.addr], "")
        + &cluster_yaml("dead", &[dead_addr()], "");
    let p = Proxy::start(kind, &http_config(0, &clusters, &routes, ""));
    let addr = p.listener("l");
    let ls = p.stats.listener("l");
    let base = format!("http://{addr}");
    // curl, as a user would: every answer is the primary's, at once.
    for path in ["/slow/1", "/dead/1"] {
        let out = curl(&[
            "-w",
            " %{http_code} %{time_total}",
            &format!("{base}{path}"),
        ]);
        let parts: Vec<&str> = out.rsplitn(3, ' ').collect();
        assert_eq!(parts[2], format!("a {path}"));
        assert_eq!(parts[1], "200");
        let t: f64 = parts[0].parse().unwrap();
        assert!(t < 0.5, "{path} took {t} s");
    }
    wait_until(
        "the unreachable shadow to fail",
        Duration::from_secs(5),
        || ls.get(L::HttpMirrorFailed) >= 1,
    );
    // 80 requests on one connection (one worker) while each shadow takes 2 s and times
    // out after 1 s: at most MAX_SHADOWS (64) run, the rest are dropped; none waits.
    let (mut s, mut r) = client(addr);
    let t = Instant::now();
    for i in 0..80 {
        let sent = Instant::now();
        s.write_all(format!("GET /slow/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let resp = read_resp(&mut r).unwrap();
        assert_eq!((resp.status, resp.header("x-backend")), (200, Some("a")));
        assert!(
            sent.elapsed() < Duration::from_millis(500),
            "request {i} waited"
        );
    }
    let quick = t.elapsed() < Duration::from_millis(900);
    for i in 0..20 {
        s.write_all(format!("GET /dead/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(read_resp(&mut r).unwrap().status, 200);
    }
    drop((s, r));
    let (mirrored, dropped) = (ls.get(L::HttpMirrored), ls.get(L::HttpMirrorDropped));
    assert_eq!(mirrored + dropped, 1 + 1 + 80 + 20);
    if quick {
        assert!(
            dropped >= 80 - 64,
            "dropped {dropped}: the in-flight cap did not hold"
        );
    } else {
        eprintln!(
            "slow machine: 80 requests took {:?}, cap not asserted",
            t.elapsed()
        );
    }
    // Every shadow ends: the slow ones by the route timeout, the dead ones refused.
    wait_until("the shadows to end", Duration::from_secs(10), || {
        ls.get(L::HttpMirrorFailed) == mirrored && p.engine().open_connections() == 0
    });
    assert!(slow
        .log
        .all()
        .iter()
        .all(|e| e.contains("Host: x-shadow\r\n") || e.contains("-shadow")));
    open_zero(&p);
}

/// Local rate limits: exact counts of 200/429 across workers (the configured bucket is
/// the instance's), 429 headers, a bucket per descriptor value, the seed's
/// `header_value_match` with a token bucket, and unmatched requests never limited.
fn rate_limits(kind: EngineKind) {
    let a = Backend::start("a");
    let routes = [
        route(
            "/ip",
            "route: {cluster: a, rate_limits: [{actions: [{remote_address: {}}], \
             token_bucket: {max_tokens: 10, fill_interval: 1h}}]}",
        ),
        route(
            "/user",
            "route: {cluster: a, rate_limits: [{actions: [{request_headers: \
             {header_name: x-user, descriptor_key: user}}], token_bucket: {max_tokens: 2, fill_interval: 1h}}]}",
        ),
        route(
            "/canary",
            "route: {cluster: a, rate_limits: [{actions: [{header_value_match: \
             {descriptor_key: canary_user, headers: [{name: x-user-id, safe_regex_match: \
             {google_re2: {}, regex: \"^admin.*\"}}]}}], token_bucket: {max_tokens: 2, fill_interval: 1h}}]}",
        ),
    ]
    .concat();
    let p = Proxy::start(
        kind,
        &http_config(0, &cluster_yaml("a", &[a.addr], ""), &routes, ""),
    );
    let addr = p.listener("l");
    let ls = p.stats.listener("l");
    // New connections spread over both workers; each holds half the bucket.
    let count = |req: &str, n: usize| -> (usize, usize) {
        let codes: Vec<u16> = (0..n).map(|_| status_of(addr, req.as_bytes())).collect();
        assert!(codes.iter().all(|&c| c == 200 || c == 429), "{codes:?}");
        let ok = codes.iter().filter(|&&c| c == 200).count();
        (ok, n - ok)
    };
    assert_eq!(count("GET /ip HTTP/1.1\r\nHost: x\r\n\r\n", 40), (10, 30));
    assert_eq!(ls.get(L::HttpRateLimited), 30);
    // The headers of a 429, through curl.
    let out = curl(&["-D", "-", "-o", "/dev/null", &format!("http://{addr}/ip")]);
    let lower = out.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 429"), "{out}");
    assert!(lower.contains("x-ratelimit-limit: 10\r\n"), "{out}");
    assert!(lower.contains("x-ratelimit-remaining: 0\r\n"), "{out}");
    let reset: u64 = lower
        .split("x-ratelimit-reset: ")
        .nth(1)
        .and_then(|v| v.lines().next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no reset header: {out}"));
    // Each of the 2 workers refills its share of one token per hour every 2 h.
    assert!((3000..=7200).contains(&reset), "{reset}");
    // One bucket per header value; no header: no descriptor, no limit.
    for user in ["alice", "bob"] {
        let req = format!("GET /user HTTP/1.1\r\nHost: x\r\nx-user: {user}\r\n\r\n");
        assert_eq!(count(&req, 20), (2, 18), "{user}");
    }
    assert_eq!(count("GET /user HTTP/1.1\r\nHost: x\r\n\r\n", 10), (10, 0));
    // The seed's canary descriptor: admins share one bucket, others are not limited.
    assert_eq!(
        count(
            "GET /canary HTTP/1.1\r\nHost: x\r\nx-user-id: admin-1\r\n\r\n",
            20
        ),
        (2, 18)
    );
    assert_eq!(
        count(
            "GET /canary HTTP/1.1\r\nHost: x\r\nx-user-id: bob\r\n\r\n",
            10
        ),
        (10, 0)
    );
    // The limited requests never reached the backend.
    let reached = a.log.all().len();
    assert_eq!(reached, 10 + 2 + 2 + 10 + 2 + 10);
    open_zero(&p);
}

/// `max_retries` and the retry budget: a retry over the cluster's limit is not made
/// (counted), and the upstream's answer goes to the client as it was.
fn retry_breakers(kind: EngineKind) {
    let a = Backend::start("a");
    let policy = "retry_policy: {retry_on: \"5xx\", num_retries: 3, per_try_timeout: 300ms, \
                  retry_back_off: {base_interval: 10ms, max_interval: 20ms}}";
    let routes = [
        route(
            "/none/",
            &format!("route: {{cluster: none, prefix_rewrite: \"/\", {policy}}}"),
        ),
        route(
            "/",
            &format!("route: {{cluster: budget, timeout: 3s, {policy}}}"),
        ),
    ]
    .concat();
    let clusters = cluster_yaml("none", &[a.addr], ", circuit_breakers: {max_retries: 0}")
        + &cluster_yaml(
            "budget",
            &[a.addr],
            ", circuit_breakers: {retry_budget: {budget_percent: {value: 0.0}, min_retry_concurrency: 1}}",
        );
    let p = Proxy::start(kind, &http_config(0, &clusters, &routes, ""));
    let addr = p.listener("l");
    use tickmesh::telemetry::UpstreamCounter as U;
    // max_retries: 0 — the first 503 is the answer, one attempt only.
    let (mut s, mut r) = client(addr);
    s.write_all(b"GET /none/retry HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_resp(&mut r).unwrap().status, 503);
    assert_eq!(p.stats.cluster("none").get(U::RqRetryOverflow), 1);
    assert_eq!(
        a.log
            .all()
            .iter()
            .filter(|e| e.contains(" /retry "))
            .count(),
        1
    );
    // Budget of one concurrent retry: a request retrying a slow upstream holds it, so
    // a second request's retry is refused at once.
    let (mut slow, mut slow_r) = client(addr);
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let budget = p.stats.cluster("budget");
    wait_until("the slow request to retry", Duration::from_secs(5), || {
        budget.get(U::RqRetryTotal) >= 1
    });
    s.write_all(b"GET /retry HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let resp = read_resp(&mut r).unwrap();
    assert_eq!(
        resp.status, 503,
        "the retry was refused, the upstream's 503 went out"
    );
    assert_eq!(budget.get(U::RqRetryOverflow), 1);
    let slow_status = read_resp(&mut slow_r).unwrap().status;
    assert!(slow_status == 504 || slow_status == 200, "{slow_status}");
    // With the slow one done, retries are admitted again.
    s.write_all(b"GET /retry HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_resp(&mut r).unwrap().status, 200);
    drop((s, r, slow, slow_r));
    assert_eq!(
        budget.get(U::RqRetryTotal),
        budget.get(U::RqRetryDone),
        "every retry counted done"
    );
    open_zero(&p);
}

/// `max_pending_requests`: at `max_connections`, a request waits for a connection; over
/// the pending limit it gets 503 + `x-tickmesh-overloaded` at once.
fn pending_queue(kind: EngineKind) {
    let a = Backend::start_delayed("a", Duration::from_millis(600));
    let p = Proxy::start(
        kind,
        &http_config(
            0,
            &cluster_yaml(
                "a",
                &[a.addr],
                ", circuit_breakers: {max_connections: 1, max_pending_requests: 1}",
            ),
            &route("/", "route: {cluster: a, timeout: 5s}"),
            "",
        ),
    );
    let addr = p.listener("l");
    let cs = p.stats.cluster("a");
    use tickmesh::telemetry::UpstreamCounter as U;
    let (mut c1, mut r1) = client(addr);
    c1.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    wait_until("the first request upstream", Duration::from_secs(5), || {
        a.log.all().len() == 1
    });
    let (mut c2, mut r2) = client(addr);
    c2.write_all(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    wait_until("the second request to wait", Duration::from_secs(5), || {
        cs.get(U::RqPendingTotal) == 1
    });
    let t = Instant::now();
    let (mut c3, mut r3) = client(addr);
    c3.write_all(b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let resp = read_resp(&mut r3).unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("x-tickmesh-overloaded"), Some("true"));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(cs.get(U::RqPendingOverflow), 1);
    assert_eq!(read_resp(&mut r1).unwrap().body, b"a /1");
    assert_eq!(
        read_resp(&mut r2).unwrap().body,
        b"a /2",
        "the waiting request went on"
    );
    assert_eq!(cs.get(U::RqPendingDone), 1);
    let paths: Vec<String> = a
        .log
        .all()
        .iter()
        .map(|e| e.split(' ').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(paths, ["/1", "/2"]);
    drop((c1, r1, c2, r2, c3, r3));
    open_zero(&p);
}

/// The worker's upstream pool: client connections that each send one request share
/// upstream connections; idle ones expire; a pooled connection the upstream closed is
/// noticed while it idles (whatever the idle time; the next request, idempotent or
/// not, goes on a fresh connection and is sent once).
fn upstream_pool(kind: EngineKind) {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let routes = [
        route("/b/", "route: {cluster: b}"),
        route("/c/", "route: {cluster: c, prefix_rewrite: \"/\"}"),
        route("/", "route: {cluster: a}"),
    ]
    .concat();
    let clusters = cluster_yaml("a", &[a.addr], "")
        + &cluster_yaml("b", &[b.addr], ", idle_timeout: 300ms")
        + &cluster_yaml("c", &[c.addr], "");
    let p = Proxy::start(kind, &http_config(0, &clusters, &routes, ""));
    let addr = p.listener("l");
    let ls = p.stats.listener("l");
    use tickmesh::telemetry::UpstreamCounter as U;
    // 20 client connections, one request each: at most one upstream connection per
    // worker.
    for i in 0..20 {
        let req = format!("GET /one/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (mut s, mut r) = client(addr);
        s.write_all(req.as_bytes()).unwrap();
        let resp = read_resp(&mut r).unwrap();
        assert_eq!(resp.body, format!("a /one/{i}").as_bytes());
    }
    assert!(
        a.accepted() <= WORKERS,
        "{} upstream connections",
        a.accepted()
    );
    assert!(ls.get(L::HttpUpstreamReuse) >= 20 - WORKERS as u64);
    // Idle expiry (cluster b keeps idle connections 300 ms).
    let (mut s, mut r) = client(addr);
    s.write_all(b"GET /b/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_resp(&mut r).unwrap().status, 200);
    let cb = p.stats.cluster("b");
    assert_eq!(cb.get(U::CxTotal), 1);
    wait_until(
        "the idle connection to expire",
        Duration::from_secs(3),
        || cb.get(U::CxClosed) == 1,
    );
    s.write_all(b"GET /b/2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_resp(&mut r).unwrap().status, 200);
    assert_eq!(b.accepted(), 2, "a new connection after the expiry");
    // Stale pooled connections (one client connection: one worker, one pool).
    let get = |s: &mut TcpStream, r: &mut BufReader<TcpStream>, path: &str| {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        read_resp(r).unwrap()
    };
    // Waits for the backend's close (a fixed sleep raced a loaded backend thread),
    // then a little for its FIN to land.
    let closes = || {
        c.log
            .all()
            .iter()
            .filter(|e| e.starts_with("CLOSED"))
            .count()
    };
    let closed = |n: usize| {
        wait_until("the backend to close", Duration::from_secs(5), || {
            closes() == n
        });
        std::thread::sleep(Duration::from_millis(100));
    };
    // Both engines watch a parked connection (uring keeps its receive armed, epoll its
    // registration): the upstream's close is seen while the connection idles and it is
    // closed then (by the worker's next sweep, or by the next take, which counts it
    // stale) — the next request, POST or not, goes on a fresh connection, however
    // short the idle.
    assert_eq!(get(&mut s, &mut r, "/c/close-after").status, 200);
    closed(1);
    let resp = get(&mut s, &mut r, "/c/x");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"c /x"[..]));
    assert!(ls.get(L::HttpUpstreamStale) <= 1);
    assert_eq!(c.accepted(), 2);
    assert_eq!(ls.get(L::HttpRetry), 0, "not a retry");
    assert_eq!(get(&mut s, &mut r, "/c/close-after").status, 200);
    closed(2);
    let resp = get(&mut s, &mut r, "/c/y");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"c /y"[..]));
    assert_eq!(c.accepted(), 3);
    // A POST is not idempotent: never sent twice. The close was seen while parked:
    // the POST goes on a fresh connection, once.
    assert_eq!(get(&mut s, &mut r, "/c/close-after").status, 200);
    closed(3);
    s.write_all(b"POST /c/z HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        .unwrap();
    assert_eq!(read_resp(&mut r).unwrap().status, 200);
    assert_eq!(c.accepted(), 4);
    let posted = c
        .log
        .all()
        .iter()
        .filter(|e| e.starts_with("POST /z"))
        .count();
    assert_eq!(posted, 1, "sent once");
    drop((s, r));
    open_zero(&p);
    let ca = p.stats.cluster("c");
    wait_until("the counts to settle", Duration::from_secs(2), || {
        ca.get(U::RqTotal) == ca.get(U::RqDone)
    });
}

/// A pooled connection on which the upstream sends bytes while it idles (shaped like a
/// response nobody asked for) is closed and never reused: both engines see them at once
/// (uring's receive stays armed in the pool, epoll's registration does) and the worker
/// closes the connection without waiting for a request; the next request goes on a
/// fresh connection and its client gets its own answer.
fn parked_stray_bytes(kind: EngineKind) {
    let c = Backend::start("c");
    let clusters = cluster_yaml("c", &[c.addr], "");
    let p = Proxy::start(
        kind,
        &http_config(0, &clusters, &route("/", "route: {cluster: c}"), ""),
    );
    let addr = p.listener("l");
    let ls = p.stats.listener("l");
    let (mut s, mut r) = client(addr);
    let mut get = |path: &str| {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        read_resp(&mut r).unwrap()
    };
    let has = |what: &str| c.log.all().iter().any(|e| e.starts_with(what));
    assert_eq!(get("/stray-after").body, b"c /stray-after");
    wait_until("the stray bytes", Duration::from_secs(5), || {
        has("STRAY sent")
    });
    wait_until(
        "the proxy to close the connection that got stray bytes",
        Duration::from_secs(2),
        || has("STRAY closed by the proxy"),
    );
    let resp = get("/next");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"c /next"[..]));
    assert_eq!(c.accepted(), 2, "a fresh connection");
    wait_until("the backend's verdict", Duration::from_secs(3), || {
        has("STRAY closed") || has("STRAY connection reused")
    });
    assert!(has("STRAY closed by the proxy"), "{:?}", c.log.all());
    assert_eq!(
        ls.get(L::HttpUpstreamStale),
        0,
        "closed while parked, never taken"
    );
    assert_eq!(ls.get(L::HttpRetry), 0);
    // The pool still works: the fresh connection carries the next requests.
    for i in 0..5 {
        assert_eq!(get(&format!("/again/{i}")).status, 200);
    }
    assert_eq!(c.accepted(), 2);
}

/// Shadows frame their responses (length, chunked, interim-free) and park their
/// connections in the worker's pool: serial mirrors share one shadow connection; a
/// response delimited by closing is not pooled; a shadow connection the upstream
/// closes while parked is never handed to the next mirror.
fn mirror_pooled(kind: EngineKind) {
    let a = Backend::start("a");
    let shadow = Backend::start("shadow");
    let routes = route(
        "/",
        "route: {cluster: a, request_mirror_policies: [{cluster: shadow}]}",
    );
    let clusters = cluster_yaml("a", &[a.addr], "") + &cluster_yaml("shadow", &[shadow.addr], "");
    let p = Proxy::start(kind, &http_config(0, &clusters, &routes, ""));
    let addr = p.listener("l");
    let ls = p.stats.listener("l");
    let cs = p.stats.cluster("shadow");
    use tickmesh::telemetry::UpstreamCounter as U;
    let (mut s, mut r) = client(addr);
    let mut n = 0u64;
    let mut get = |path: &str| {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(read_resp(&mut r).unwrap().status, 200);
        n += 1;
        // The shadow ends (and parks its connection) before the next one starts.
        wait_until("the shadow to finish", Duration::from_secs(5), || {
            cs.get(U::RqDone) == n
        });
    };
    for i in 0..10 {
        get(if i % 2 == 0 { "/chunked" } else { "/len" });
    }
    assert_eq!(shadow.accepted(), 1, "one shadow connection for 10 mirrors");
    assert_eq!(ls.get(L::HttpMirrored), 10);
    assert_eq!(ls.get(L::HttpMirrorFailed), 0);
    // Delimited by closing: read to its end by nobody, the connection is not kept.
    get("/shadow-close");
    get("/after-close");
    assert_eq!(shadow.accepted(), 2);
    get("/close-after");
    wait_until("the backend to close", Duration::from_secs(5), || {
        shadow.log.all().iter().any(|e| e.starts_with("CLOSED"))
    });
    std::thread::sleep(Duration::from_millis(100));
    get("/fresh");
    assert_eq!(shadow.accepted(), 3, "a fresh connection after the close");
    assert_eq!(ls.get(L::HttpMirrorFailed), 0);
    let seen = shadow.log.all();
    assert_eq!(
        seen.iter().filter(|e| e.starts_with("GET ")).count() as u64,
        n
    );
    drop((s, r));
    open_zero(&p);
}

per_engine!(
    mirror_pooled,
    parked_stray_bytes,
    binary_with_curl,
    pipelining,
    one_segment_per_message,
    large_body_leaves_with_its_head,
    bad_input,
    upstream_errors,
    weighted_split,
    sniff_fallback,
    upgrade_tunnel,
    header_timeout,
    header_edits,
    retries,
    circuit_breaking,
    mirror_percentage,
    mirror_never_delays,
    rate_limits,
    retry_breakers,
    pending_queue,
    upstream_pool,
    pool_survives_table_swap,
);
