//! Kernel TLS hand-over through the L4 proxy (`offload.backend: ktls`), per engine.
//!
//! Where the kernel has the `tls` module, each TLS side's keys go to the socket after the
//! handshake and the bytes below cross it in plaintext. Where it has not (this project's
//! VMs), the test binary sets `TICKMESH_KTLS_ASSUME_AVAILABLE=1`, so every connection
//! tries the hand-over for real — rustls's last handshake bytes go out raw, records that
//! came with the client's Finished are opened — until the kernel refuses the ULP, and
//! then continues on the offload engine's ring: the per-connection fallback, end to end.
//! The same for HTTP listeners terminating TLS (curl and `openssl s_client` as clients,
//! mTLS with principals and XFCC, keep-alive) and for an HTTP proxy originating TLS to a
//! cluster (pooled upstream connection reused), whose mirrors to a TLS cluster stay on the
//! engine. Its own binary because the variable is
//! process-wide.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::https::*;
use common::pki::*;
use common::*;
use tickmesh::engine::EngineKind;
use tickmesh::telemetry::{ListenerCounter as L, UpstreamCounter as U};

/// A rustls client for one protocol version, trusting the test CA.
fn client(
    pki: &Pki,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pki.certs("ca") {
        roots.add(c).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// Whether the kernel has the `tls` ULP; without it, sets the test hook so every
/// connection tries the hand-over up to the kernel's refusal (and says so).
fn kernel_tls(test: &str) -> bool {
    // The kernel's own list (the probe would also see the variable another test set).
    let real = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .is_ok_and(|l| l.split_whitespace().any(|u| u == "tls"));
    if !real {
        // SAFETY of the test: every test in this binary sets the same value.
        std::env::set_var(tickmesh_offload::ktls::ASSUME_ENV, "1");
        eprintln!(
            "NOTE {test}: no kernel tls module here; the hand-over runs until the kernel \
             refuses the ULP, then the ring takes over (the kernel path itself is only \
             exercised on hosts with the module)"
        );
    }
    real
}

fn hand_over_or_fall_back(kind: EngineKind) {
    let real = kernel_tls("hand_over_or_fall_back");
    let pki = Pki::new();
    let echo = Echo::start();
    // A terminates TLS in front of the echo server.
    let a = Proxy::start(
        kind,
        &format!(
            "offload: {{backend: ktls}}\n{}",
            pki.listener_yaml("", echo.addr, "")
        ),
    );
    let a_addr = a.listener("l");
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (mut s, mut c) = tls_connect(a_addr, client(&pki, version));
        let mut t = rustls::Stream::new(&mut c, &mut s);
        for len in [1usize, 1000, 100_000] {
            let msg = payload(len, len);
            t.write_all(&msg).unwrap();
            let mut got = vec![0u8; len];
            t.read_exact(&mut got).unwrap();
            assert!(got == msg, "{version:?}: echo of {len} bytes differs");
        }
        // Our close_notify; the echo server's EOF comes back as tickmesh's close_notify
        // (read_to_end fails on an EOF without one).
        t.conn.send_close_notify();
        t.flush().unwrap();
        let mut rest = Vec::new();
        t.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{version:?}");
    }
    // B originates TLS to A for a plaintext client.
    let b = Proxy::start(
        kind,
        &format!(
            "offload: {{backend: ktls}}\nlisteners:\n  - {{name: p, address: \"127.0.0.1:0\", cluster: up}}\nclusters:\n  - {{name: up, endpoints: [\"{a_addr}\"], tls: {{ca: {}, sni: localhost}}}}\n",
            pki.s("ca.pem")
        ),
    );
    let mut s = connect(b.listener("p"));
    round_trip(&mut s, b"through two proxies");
    drop(s);
    let ls = a.stats.listener("l");
    let us = b.stats.cluster("up");
    wait_until(
        "connections to close",
        std::time::Duration::from_secs(5),
        || a.engine().open_connections() == 0 && b.engine().open_connections() == 0,
    );
    let down = ls.get(L::TlsKtlsHandovers) + ls.get(L::TlsKtlsFallbacks);
    let up = us.get(U::TlsKtlsHandovers) + us.get(U::TlsKtlsFallbacks);
    assert_eq!(
        down, 3,
        "every client side tried the kernel (module here: {real})"
    );
    assert_eq!(up, 1, "the originating side tried it too");
    if real {
        // A side may legitimately stay on the ring (bytes in flight at its hand-over),
        // but these quiet clients hand over.
        assert!(ls.get(L::TlsKtlsHandovers) >= 1 && us.get(U::TlsKtlsHandovers) == 1);
    } else {
        assert_eq!(
            ls.get(L::TlsKtlsFallbacks),
            3,
            "the kernel refused every ULP here"
        );
    }
    assert_eq!(ls.get(L::TlsHandshakes), 3);
    assert_eq!(ls.get(L::TlsRecordErrors), 0);
    assert_eq!(ls.get(L::TlsTruncated), 0);
    if !real {
        assert_eq!(ls.get(L::TlsKtlsHandovers), 0);
        assert!(
            ls.get(L::TlsRecordsOffloaded) >= 12,
            "the ring did the records"
        );
    }
}

// === HTTP ===

/// curl over https presenting client certificate `name`, several URLs on one connection:
/// (exit code, stdout with `status=<code>` after each response, stderr).
fn curl_urls(pki: &Pki, addr: SocketAddr, name: &str, paths: &[&str]) -> (i32, String, String) {
    let (cert, key) = (pki.s(&format!("{name}.pem")), pki.s(&format!("{name}.key")));
    let urls: Vec<String> = paths
        .iter()
        .map(|p| format!("https://localhost:PORT{p}"))
        .collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let args = [
        "--cert",
        &cert,
        "--key",
        &key,
        "-w",
        "status=%{http_code}\n",
    ];
    curl(pki, addr, &args, &urls)
}

/// An mTLS HTTP listener with `offload.backend: ktls`: curl (TLS 1.3, two requests on
/// one connection) and `openssl s_client` (TLS 1.2, two pipelined requests) are served
/// over sessions that tried the kernel hand-over; the identity from the handshake still
/// drives XFCC and `allowed_principals` (403); every client side counts one attempt
/// (hand-over or fallback), and without the module the ring did the records.
fn http_listener_hand_over_or_fall_back(kind: EngineKind) {
    if !tools() {
        return;
    }
    let real = kernel_tls("http_listener_hand_over_or_fall_back");
    let pki = Pki::new();
    let m = Mirror::start();
    let yaml = format!(
        "offload: {{backend: ktls}}\n{}",
        config(&pki, &mtls("STRICT"), m.addr)
    );
    let p = Proxy::start(kind, &yaml);
    let addr = p.listener("l");
    let ls = p.stats.listener("l");
    // curl: one TLS 1.3 connection, two requests.
    let (code, out, err) = curl_urls(&pki, addr, "gateway", &["/a", "/b"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("status=200").count(), 2, "{out}");
    assert!(out.contains("GET /a ") && out.contains("GET /b "), "{out}");
    assert!(out.contains("x-forwarded-proto: https\r\n"), "{out}");
    assert!(
        out.contains(";URI=spiffe://example.org/ns/trading/sa/gateway\r\n"),
        "XFCC from the handshake's identity: {out}"
    );
    assert_eq!(ls.get(L::HttpUpstreamReuse), 1, "keep-alive upstream");
    // Another principal of the same CA: 403 over its session, nothing upstream.
    let before = m.heads.lock().unwrap().len();
    let (code, out, err) = curl_as(&pki, addr, "intruder", &[], "/secret");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("status=403"), "{out}");
    assert_eq!(m.heads.lock().unwrap().len(), before);
    assert_eq!(ls.get(L::TlsPrincipalDenied), 1);
    // openssl s_client, TLS 1.2: two pipelined requests, the second closing.
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .args([
            "-CAfile",
            &pki.s("ca.pem"),
            "-verify_return_error",
            "-quiet",
            "-tls1_2",
        ])
        .args([
            "-cert",
            &pki.s("gateway.pem"),
            "-key",
            &pki.s("gateway.key"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    // Bounded: the proxy closes after the second response, which ends s_client.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert!(
        text.contains("GET /one ") && text.contains("GET /two "),
        "{text}"
    );
    wait_until("connections to close", Duration::from_secs(5), || {
        p.engine().open_connections() == 0
    });
    let tried = ls.get(L::TlsKtlsHandovers) + ls.get(L::TlsKtlsFallbacks);
    assert_eq!(
        tried, 3,
        "every client side tried the kernel (module here: {real})"
    );
    assert_eq!(ls.get(L::TlsHandshakes), 3);
    assert_eq!(ls.get(L::TlsRecordErrors), 0);
    assert_eq!(ls.get(L::TlsTruncated), 0);
    if !real {
        assert_eq!(
            ls.get(L::TlsKtlsFallbacks),
            3,
            "the kernel refused every ULP here"
        );
        assert!(
            ls.get(L::TlsRecordsOffloaded) >= 10,
            "the ring did the records"
        );
    }
}

/// An HTTP proxy originating TLS to a cluster with `offload.backend: ktls`: the
/// upstream side tries the hand-over once, its connection parks in the pool and serves
/// the next request (one upstream connection, one handshake, one attempt); a cluster
/// whose certificate does not match the SNI still fails as a connect failure (503).
fn http_origination_hand_over_or_fall_back(kind: EngineKind) {
    if !tools() {
        return;
    }
    let real = kernel_tls("http_origination_hand_over_or_fall_back");
    let pki = Pki::new();
    let server = pki.server("server");
    let m = Mirror::serve(Some(server));
    let yaml = |sni: &str| {
        format!(
            "offload: {{backend: ktls}}\n\
             listeners:\n  - {{name: l, address: \"127.0.0.1:0\", protocol: http}}\n\
             clusters:\n  - {{name: m, endpoints: [\"{}\"], tls: {{ca: {}, sni: {sni}}}}}\n\
             route_configs:\n  - name: rc\n    virtual_hosts:\n      - name: vh\n        domains: [\"*\"]\n        routes:\n          - match: {{prefix: \"/\"}}\n            route: {{cluster: m}}\n",
            m.addr,
            pki.s("ca.pem")
        )
    };
    let mut p = Proxy::start(kind, &yaml("orders.internal"));
    let addr = p.listener("l");
    let cs = p.stats.cluster("m");
    // curl in plaintext: two requests on one client connection.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "status=%{http_code}\n"])
        .arg(format!("http://{addr}/a"))
        .arg(format!("http://{addr}/b"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("status=200").count(), 2, "{text}");
    assert!(
        text.contains("GET /a ") && text.contains("GET /b "),
        "{text}"
    );
    assert_eq!(
        m.conns.load(Ordering::Relaxed),
        1,
        "one pooled TLS connection"
    );
    assert_eq!(p.stats.listener("l").get(L::HttpUpstreamReuse), 1);
    assert_eq!(cs.get(U::TlsHandshakes), 1);
    let tried = cs.get(U::TlsKtlsHandovers) + cs.get(U::TlsKtlsFallbacks);
    assert_eq!(
        tried, 1,
        "the originating side tried the kernel once (module here: {real})"
    );
    if !real {
        assert_eq!(cs.get(U::TlsKtlsFallbacks), 1);
        assert!(
            cs.get(U::TlsRecordsOffloaded) >= 4,
            "the ring did the records"
        );
    }
    // The certificate does not name billing.internal: a failed handshake, 503.
    p.apply(&yaml("billing.internal"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "status=%{http_code}\n"])
        .arg(format!("http://{addr}/c"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("status=503"), "{text}");
    assert!(p.stats.cluster("m").get(U::TlsErrors) >= 1);
    wait_until("connections to close", Duration::from_secs(5), || {
        p.engine().open_connections() == 0
    });
}

/// Mirrors to a TLS cluster with `offload.backend: ktls`: shadows keep their records on
/// the offload engine (no hand-over attempt on their side), serial mirrors share one
/// pooled shadow connection, and the primary (a kTLS-originating cluster, tried once)
/// is untouched.
fn http_mirror_to_tls_cluster_stays_on_engine(kind: EngineKind) {
    if !tools() {
        return;
    }
    let _ = kernel_tls("http_mirror_to_tls_cluster_stays_on_engine");
    let pki = Pki::new();
    let server = pki.server("server");
    let (m, s) = (
        Mirror::serve(Some(server.clone())),
        Mirror::serve(Some(server)),
    );
    let ca = pki.s("ca.pem");
    let yaml = format!(
        "offload: {{backend: ktls}}\n\
         listeners:\n  - {{name: l, address: \"127.0.0.1:0\", protocol: http}}\n\
         clusters:\n  - {{name: m, endpoints: [\"{}\"], tls: {{ca: {ca}, sni: orders.internal}}}}\n\
         \x20 - {{name: s, endpoints: [\"{}\"], tls: {{ca: {ca}, sni: orders.internal}}}}\n\
         route_configs:\n  - name: rc\n    virtual_hosts:\n      - name: vh\n        domains: [\"*\"]\n        routes:\n          - match: {{prefix: \"/\"}}\n            route: {{cluster: m, request_mirror_policies: [{{cluster: s}}]}}\n",
        m.addr, s.addr,
    );
    let p = Proxy::start(kind, &yaml);
    let addr = p.listener("l");
    let (ms, ss) = (p.stats.cluster("m"), p.stats.cluster("s"));
    let mut client = std::io::BufReader::new(connect(addr));
    for i in 0..5u64 {
        let text = get_on(&mut client, &format!("/k/{i}"));
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        wait_until("the shadow", Duration::from_secs(5), || {
            ss.get(U::RqDone) == i + 1
        });
    }
    assert_eq!(s.heads.lock().unwrap().len(), 5);
    assert_eq!(
        s.conns.load(Ordering::Relaxed),
        1,
        "one pooled shadow connection"
    );
    assert_eq!(ss.get(U::TlsHandshakes), 1);
    assert_eq!(
        ss.get(U::TlsKtlsHandovers) + ss.get(U::TlsKtlsFallbacks),
        0,
        "shadows do not try the kernel"
    );
    assert!(
        ss.get(U::TlsRecordsOffloaded) >= 10,
        "the engine sealed and opened"
    );
    assert_eq!(ms.get(U::TlsKtlsHandovers) + ms.get(U::TlsKtlsFallbacks), 1);
    assert_eq!(p.stats.listener("l").get(L::HttpMirrorFailed), 0);
    drop(client);
    wait_until("connections to close", Duration::from_secs(5), || {
        p.engine().open_connections() == 0
    });
}

per_engine!(
    hand_over_or_fall_back,
    http_mirror_to_tls_cluster_stays_on_engine,
    http_listener_hand_over_or_fall_back,
    http_origination_hand_over_or_fall_back,
);
