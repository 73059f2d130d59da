//! HTTP(S) test fixtures shared by the HTTP-over-TLS suites (`tests/https.rs`,
//! `tests/ktls.rs`): a mirroring HTTP/1.1 upstream (plaintext or behind rustls), the
//! TLS listener configs, curl over https with the test PKI, plaintext GETs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tickmesh::engine::EngineKind;

use super::pki::*;
use super::*;

// === the upstream: answers every request with what it received ===

/// An HTTP/1.1 upstream that answers each request with its head as it arrived and the
/// length of its body (`Content-Length` or chunked; `Expect: 100-continue` honoured); an
/// `Upgrade` request gets a 101 and then an echo of raw bytes.
pub struct Mirror {
    pub addr: SocketAddr,
    pub heads: Arc<Mutex<Vec<String>>>,
    /// Connections accepted.
    pub conns: Arc<std::sync::atomic::AtomicUsize>,
}

impl Mirror {
    pub fn start() -> Mirror {
        Mirror::serve(None)
    }

    /// The same behind TLS (`tls`: the server's config).
    pub fn serve(tls: Option<Arc<rustls::ServerConfig>>) -> Mirror {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (log, count) = (heads.clone(), conns.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (log, tls) = (log.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = match tls {
                        None => mirror_conn(c, &log),
                        Some(cfg) => rustls::ServerConnection::new(cfg)
                            .map_err(std::io::Error::other)
                            .and_then(|s| mirror_conn(rustls::StreamOwned::new(s, c), &log)),
                    };
                });
            }
        });
        Mirror { addr, heads, conns }
    }

    pub fn last(&self) -> String {
        self.heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

pub fn mirror_conn(c: impl Read + Write, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut r = BufReader::new(c);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let lower = head.to_ascii_lowercase();
        log.lock().unwrap().push(head.clone());
        let value = |name: &str| {
            lower
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let w = r.get_mut();
        if value("upgrade:").is_some() {
            w.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
            )?;
            let mut b = [0u8; 4096];
            loop {
                let n = r.read(&mut b)?;
                if n == 0 {
                    return Ok(());
                }
                r.get_mut().write_all(&b[..n])?;
            }
        }
        if value("expect:").as_deref() == Some("100-continue") {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            w.flush()?;
        }
        let mut body = 0usize;
        if let Some(n) = value("content-length:") {
            let n: usize = n.parse().unwrap_or(0);
            let mut b = vec![0; n];
            r.read_exact(&mut b)?;
            body = n;
        } else if value("transfer-encoding:").as_deref() == Some("chunked") {
            loop {
                let mut size = String::new();
                r.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut b = vec![0; n + 2];
                r.read_exact(&mut b)?;
                body += n;
                if n == 0 {
                    break;
                }
            }
        }
        let text = format!("{head}body={body}\n");
        let w = r.get_mut();
        write!(
            w,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        )?;
        w.flush()?;
        if value("connection:").as_deref() == Some("close") {
            return Ok(());
        }
    }
}

// === config and clients ===

/// An http listener on port 0 terminating TLS with the `mesh` certificate; `tls_extra`
/// goes inside its `tls:` map (`{dir}` names the PKI's folder). Every path goes to the
/// mirror.
pub fn config(pki: &Pki, tls_extra: &str, upstream: SocketAddr) -> String {
    config_with(pki, "mesh", tls_extra, upstream, "")
}

/// As [`config`], serving certificate `cert`, with `routes` (YAML list items) before the
/// catch-all route.
pub fn config_with(
    pki: &Pki,
    cert: &str,
    tls_extra: &str,
    upstream: SocketAddr,
    routes: &str,
) -> String {
    let tls_extra = tls_extra.replace("{dir}", &pki.dir.path().display().to_string());
    format!(
        "listeners:\n  - name: l\n    address: \"127.0.0.1:0\"\n    protocol: http\n    tls: {{cert: {}, key: {}{tls_extra}}}\n\
         clusters:\n  - {{name: m, endpoints: [\"{upstream}\"]}}\n\
         route_configs:\n  - name: rc\n    virtual_hosts:\n      - name: vh\n        domains: [\"*\"]\n        routes:\n{routes}          - match: {{prefix: \"/\"}}\n            route: {{cluster: m}}\n",
        pki.s(&format!("{cert}.pem")),
        pki.s(&format!("{cert}.key")),
    )
}

pub fn mtls(mode: &str) -> String {
    format!(
        ", client_ca: {{dir}}/ca.pem, mode: {mode}, allowed_principals: [\"spiffe://example.org/ns/trading/sa/gateway\"]"
    )
}

/// curl over https to `localhost` (resolved to the proxy): (exit code, stdout, stderr).
pub fn curl(pki: &Pki, addr: SocketAddr, args: &[&str], urls: &[&str]) -> (i32, String, String) {
    let port = addr.port();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert", &pki.s("ca.pem")])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["--resolve", &format!("billing.internal:{port}:127.0.0.1")])
        .args(args);
    for u in urls {
        cmd.arg(u.replace("PORT", &port.to_string()));
    }
    let out = cmd.output().expect("curl runs (scripts/setup installs it)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`curl`] presenting client certificate `name` of the PKI, for `path` on `localhost`;
/// the output ends with `status=<code>`.
pub fn curl_as(
    pki: &Pki,
    addr: SocketAddr,
    name: &str,
    extra: &[&str],
    path: &str,
) -> (i32, String, String) {
    let (cert, key) = (pki.s(&format!("{name}.pem")), pki.s(&format!("{name}.key")));
    let mut args = vec!["--cert", &cert, "--key", &key, "-w", "status=%{http_code}"];
    args.extend_from_slice(extra);
    curl(
        pki,
        addr,
        &args,
        &[&format!("https://localhost:PORT{path}")],
    )
}

pub fn tools() -> bool {
    let ok = have("openssl") && have("curl");
    if !ok {
        eprintln!("SKIP: needs the openssl and curl commands (scripts/setup installs them)");
    }
    ok
}

/// Read from a session until `want` appears in what came (or the stream ends).
pub fn read_until(s: &mut TcpStream, c: &mut rustls::ClientConnection, want: &str) -> String {
    let mut got = Vec::new();
    let mut t = rustls::Stream::new(c, s);
    let mut b = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(want) {
        match t.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The PKI, a mirror upstream, and a proxy terminating TLS in front of it (see
/// [`config`]); `None` (with a message) without the openssl and curl commands.
pub fn setup(kind: EngineKind, tls_extra: &str) -> Option<(Pki, Mirror, Proxy, SocketAddr)> {
    if !tools() {
        return None;
    }
    let pki = Pki::new();
    let m = Mirror::start();
    let p = Proxy::start(kind, &config(&pki, tls_extra, m.addr));
    let addr = p.listener("l");
    Some((pki, m, p, addr))
}

/// One plaintext GET on a new connection: the response, read to the end of its body
/// (`Content-Length`).
pub fn get(addr: SocketAddr, path: &str) -> String {
    get_on(&mut BufReader::new(connect(addr)), path)
}

/// As [`get`], on a kept-alive connection.
pub fn get_on(r: &mut BufReader<TcpStream>, path: &str) -> String {
    write!(r.get_mut(), "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    let mut len = 0;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return text;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        text.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; len];
    let _ = r.read_exact(&mut body);
    text + &String::from_utf8_lossy(&body)
}

pub fn open_zero(p: &Proxy) {
    wait_until("connections to close", Duration::from_secs(5), || {
        p.engine().open_connections() == 0
    });
}
