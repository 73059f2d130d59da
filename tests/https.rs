//! TLS on HTTP listeners, per engine: the HTTP proxy terminates TLS (records through the
//! offload engine) in STRICT, PERMISSIVE and mTLS modes, with SNI, keep-alive and
//! pipelining over one session, chunked bodies, 100-continue and an upgrade tunnel; a
//! client outside `allowed_principals` gets a 403 over its session; the client's
//! certificate identity goes upstream as `x-forwarded-client-cert`. Real clients: `curl`
//! and `openssl s_client` (skipped with a message when absent), and rustls for raw bytes.
//! Bad input: plaintext to a STRICT port, a certificate from another CA, a wrong SPIFFE
//! ID, a truncated record, an oversized record — each counted, the proxy keeps serving.

#[macro_use]
mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::https::*;
use common::pki::*;
use common::*;
use tickmesh::engine::EngineKind;
use tickmesh::telemetry::ListenerCounter as L;

// === tests (each runs per engine, see the bottom) ===

/// curl over https: one TLS connection carries two requests (keep-alive), the upstream
/// hears `x-forwarded-proto: https`, records go through the offload engine; SNI picks
/// the second certificate; chunked upload, 100-continue.
fn curl_keepalive_sni_bodies(kind: EngineKind) {
    let sni = ", sni_certs: [{cert: {dir}/server2.pem, key: {dir}/server2.key}]";
    let Some((pki, _m, p, addr)) = setup(kind, sni) else {
        return;
    };
    let ls = p.stats.listener("l");
    let (code, out, err) = curl(
        &pki,
        addr,
        &["-v"],
        &["https://localhost:PORT/one", "https://localhost:PORT/two"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("GET /one HTTP/1.1") && out.contains("GET /two HTTP/1.1"),
        "{out}"
    );
    assert!(out.contains("x-forwarded-proto: https"), "{out}");
    assert!(err.contains("Re-using existing connection"), "{err}");
    assert_eq!(ls.get(L::CxTotal), 1, "both requests on one connection");
    assert_eq!(ls.get(L::TlsHandshakes), 1);
    assert!(ls.get(L::TlsRecordsOffloaded) >= 4);
    // SNI: billing.internal is only in server2's certificate, which curl verifies.
    let (code, out, err) = curl(&pki, addr, &[], &["https://billing.internal:PORT/b"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("GET /b HTTP/1.1"), "{out}");
    // A chunked upload of 100 KiB, and a 64 KiB body sent after 100-continue.
    let body = pki.path("body");
    std::fs::write(&body, payload(1, 100 * 1024)).unwrap();
    let data = format!("@{}", body.display());
    let (code, out, err) = curl(
        &pki,
        addr,
        &["-H", "Transfer-Encoding: chunked", "--data-binary", &data],
        &["https://localhost:PORT/up"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("body=102400"), "{out}");
    std::fs::write(&body, payload(2, 64 * 1024)).unwrap();
    let (code, out, err) = curl(
        &pki,
        addr,
        &["-v", "-H", "Expect: 100-continue", "--data-binary", &data],
        &["https://localhost:PORT/expect"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("body=65536"), "{out}");
    assert!(err.contains("100 Continue"), "{err}");
    open_zero(&p);
}

/// `openssl s_client` sends two requests in one write: both answered, in order, on
/// the one session.
fn openssl_pipelined(kind: EngineKind) {
    let Some((pki, _m, p, addr)) = setup(kind, "") else {
        return;
    };
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-ign_eof",
            "-CAfile",
            &pki.s("ca.pem"),
        ])
        .args(["-connect", &addr.to_string(), "-servername", "localhost"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (a, b) = (text.find("GET /first"), text.find("GET /second"));
    assert!(a.is_some() && b.is_some() && a < b, "{text}");
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(p.stats.listener("l").get(L::CxTotal), 1);
    open_zero(&p);
}

/// A TLS-terminating http listener with a `cluster` (its TCP fallback): a client whose
/// decrypted bytes are not HTTP/1.x is relayed as opaque TCP inside the same TLS session
/// (counted `sniffed_tcp`), HTTP clients are still served, and the listener's
/// `allowed_principals` hold for the fallback too (a reset, as on a TCP listener).
fn tls_tcp_fallback(kind: EngineKind) {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let m = Mirror::start();
    let echo = Echo::start();
    let cfg = config(&pki, &mtls("STRICT"), m.addr)
        .replace("    tls: {", "    cluster: e\n    tls: {")
        .replace(
            "clusters:\n",
            &format!(
                "clusters:\n  - {{name: e, endpoints: [\"{}\"]}}\n",
                echo.addr
            ),
        );
    let p = Proxy::start(kind, &cfg);
    let addr = p.listener("l");
    let ls = p.stats.listener("l");
    // Not HTTP: echoed through the fallback, in both directions, inside the session.
    let (mut s, mut c) = tls_connect(addr, pki.client(Some("gateway")));
    let mut t = rustls::Stream::new(&mut c, &mut s);
    for msg in [&b"\x00\x01binary hello\n"[..], &[7u8; 50_000][..]] {
        t.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        t.read_exact(&mut got).unwrap();
        assert!(got == msg, "echo differs: {:?}", &got[..got.len().min(40)]);
    }
    t.conn.send_close_notify();
    t.flush().unwrap();
    let mut rest = Vec::new();
    t.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(ls.get(L::SniffedTcp), 1);
    // HTTP on the same listener still reaches the routes.
    let (code, out, err) = curl_as(&pki, addr, "gateway", &[], "/ok");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("GET /ok HTTP/1.1") && out.contains("status=200"),
        "{out}"
    );
    // A principal the listener does not allow is reset, not relayed.
    let accepted = echo.accepted();
    let (mut s, mut c) = tls_connect(addr, pki.client(Some("intruder")));
    let mut t = rustls::Stream::new(&mut c, &mut s);
    let _ = t.write_all(b"\x00sneak\n");
    let mut got = Vec::new();
    assert!(
        t.read_to_end(&mut got).is_err() || got.is_empty(),
        "{got:?}"
    );
    assert_eq!(ls.get(L::TlsPrincipalDenied), 1);
    assert_eq!(echo.accepted(), accepted, "nothing reached the fallback");
}

/// `%XX` back to bytes (test side of XFCC's URL-encoded PEM).
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Envoy's XFCC options with curl --cert: `SANITIZE_SET` with every detail (Subject in
/// RFC 2253 as openssl prints it, Cert/Chain as the client's PEM file URL-encoded, one
/// `DNS=` per DNS SAN, URI), `SANITIZE`, `FORWARD_ONLY` (kept only for mTLS clients),
/// `APPEND_FORWARD`, `ALWAYS_FORWARD_ONLY` (kept for a client without a certificate too).
fn xfcc_modes_and_details(kind: EngineKind) {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    // A client whose subject needs escaping, with two DNS SANs and a SPIFFE ID.
    pki.leaf_with_subject(
        "detailed",
        "ca",
        "/C=US/O=Tick, Mesh/CN=detailed client",
        "subjectAltName=URI:spiffe://example.org/ns/trading/sa/gateway,DNS:a.example,DNS:b.example",
        2,
    );
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl").args(args).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let subject = openssl(&[
        "x509",
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
        "-in",
        &pki.s("detailed.pem"),
    ]);
    let subject = subject.strip_prefix("subject=").unwrap().to_string();
    assert_eq!(subject, "CN=detailed client,O=Tick\\, Mesh,C=US");
    let fp = openssl(&[
        "x509",
        "-noout",
        "-fingerprint",
        "-sha256",
        "-in",
        &pki.s("detailed.pem"),
    ]);
    let hash = fp
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase();
    let pem = std::fs::read_to_string(pki.path("detailed.pem")).unwrap();

    let m = Mirror::start();
    let start = |listener: &str, tls_extra: &str| {
        let cfg = config(&pki, tls_extra, m.addr)
            .replace("    tls: {", &format!("{listener}    tls: {{"));
        let p = Proxy::start(kind, &cfg);
        let addr = p.listener("l");
        (p, addr)
    };
    let forged = "By=spiffe://upstream;URI=spiffe://forged";
    let xfcc_of = |out: &str| -> Option<String> {
        out.lines()
            .find_map(|l| l.strip_prefix("x-forwarded-client-cert: "))
            .map(|v| v.trim_end().to_string())
    };
    let ask = |addr, cert: Option<&str>| {
        let h = format!("x-forwarded-client-cert: {forged}");
        let (code, out, err) = match cert {
            Some(c) => curl_as(&pki, addr, c, &["-H", &h], "/x"),
            None => curl(&pki, addr, &["-H", &h], &["https://localhost:PORT/x"]),
        };
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("status=200") || cert.is_none(), "{out}");
        xfcc_of(&out)
    };
    let mtls = ", client_ca: {dir}/ca.pem";
    let by = "By=spiffe://example.org/ns/mesh/sa/proxy";

    // SANITIZE_SET with every detail: ours only, in Envoy's key order.
    let (_p, addr) = start(
        "    forward_client_cert_details: SANITIZE_SET\n    set_current_client_cert_details: {subject: true, cert: true, chain: true, dns: true, uri: true}\n",
        mtls,
    );
    let got = ask(addr, Some("detailed")).expect("an XFCC header");
    let pairs: Vec<&str> = got.split(';').collect();
    assert_eq!(pairs[0], by, "{got}");
    assert_eq!(pairs[1], format!("Hash={hash}"), "{got}");
    let cert = pairs[2].strip_prefix("Cert=").expect("Cert=");
    assert!(
        !cert.contains(['\n', '/', '+', '=', ' ']),
        "URL-encoded: {cert}"
    );
    assert_eq!(url_decode(cert), pem, "Cert= is the client's PEM");
    let chain = pairs[3].strip_prefix("Chain=").expect("Chain=");
    // curl (OpenSSL) completes the chain from --cacert: leaf, then the CA.
    let ca = std::fs::read_to_string(pki.path("ca.pem")).unwrap();
    assert_eq!(
        url_decode(chain),
        format!("{pem}{ca}"),
        "Chain= is what the client sent"
    );
    assert_eq!(pairs[4], format!("Subject=\"{subject}\""), "{got}");
    assert_eq!(
        &pairs[5..],
        [
            "URI=spiffe://example.org/ns/trading/sa/gateway",
            "DNS=a.example",
            "DNS=b.example"
        ],
        "{got}"
    );
    drop(_p);

    // SANITIZE: nothing goes upstream.
    let (_p, addr) = start("    forward_client_cert_details: SANITIZE\n", mtls);
    assert_eq!(ask(addr, Some("detailed")), None);
    drop(_p);

    // FORWARD_ONLY: the client's header as it came (mTLS).
    let (_p, addr) = start("    forward_client_cert_details: FORWARD_ONLY\n", mtls);
    assert_eq!(ask(addr, Some("gateway")).as_deref(), Some(forged));
    drop(_p);

    // APPEND_FORWARD with Envoy's default details: By and Hash after the client's.
    let (_p, addr) = start("    forward_client_cert_details: APPEND_FORWARD\n", mtls);
    assert_eq!(
        ask(addr, Some("detailed")),
        Some(format!("{forged},{by};Hash={hash}"))
    );
    drop(_p);

    // Without a client certificate (no client_ca): FORWARD_ONLY drops the client's
    // header, ALWAYS_FORWARD_ONLY keeps it.
    let (_p, addr) = start("    forward_client_cert_details: FORWARD_ONLY\n", "");
    assert_eq!(ask(addr, None), None);
    drop(_p);
    let (_p, addr) = start("    forward_client_cert_details: ALWAYS_FORWARD_ONLY\n", "");
    assert_eq!(ask(addr, None).as_deref(), Some(forged));
}

/// mTLS: the allowed principal passes with `x-forwarded-client-cert` set (a forged one
/// from the client is dropped); another principal gets a 403 over its session; a
/// certificate from another CA fails the handshake.
fn mtls_principals_and_xfcc(kind: EngineKind) {
    let Some((pki, m, p, addr)) = setup(kind, &mtls("STRICT")) else {
        return;
    };
    let ls = p.stats.listener("l");
    let forged = ["-H", "x-forwarded-client-cert: URI=spiffe://forged"];
    let (code, out, err) = curl_as(&pki, addr, "gateway", &forged, "/ok");
    assert_eq!(code, 0, "{err}");
    // Hash= is the SHA-256 of the client certificate, as openssl computes it.
    let fp = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            &pki.s("gateway.pem"),
        ])
        .output()
        .unwrap();
    let fp = String::from_utf8_lossy(&fp.stdout);
    let hash = fp
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase();
    assert_eq!(hash.len(), 64, "{fp}");
    let xfcc = format!(
        "x-forwarded-client-cert: By=spiffe://example.org/ns/mesh/sa/proxy;Hash={hash};URI=spiffe://example.org/ns/trading/sa/gateway\r\n"
    );
    assert!(out.contains(&xfcc), "{out}");
    assert!(!out.contains("forged"), "{out}");
    // Another principal of the same CA: 403 with a body, counted; nothing upstream.
    let before = m.heads.lock().unwrap().len();
    let (code, out, err) = curl_as(&pki, addr, "intruder", &[], "/secret");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("RBAC: access denied") && out.contains("status=403"),
        "{out}"
    );
    assert_eq!(ls.get(L::TlsPrincipalDenied), 1);
    assert_eq!(m.heads.lock().unwrap().len(), before);
    // A certificate from another CA: the handshake fails.
    let (code, _, _) = curl_as(&pki, addr, "foreign", &[], "/");
    assert_ne!(code, 0);
    wait_until("cert rejection counted", Duration::from_secs(5), || {
        ls.get(L::TlsCertRejected) == 1
    });
    // Still serving.
    let (code, out, _) = curl_as(&pki, addr, "gateway", &[], "/again");
    assert_eq!(code, 0);
    assert!(
        out.contains("GET /again") && out.contains("status=200"),
        "{out}"
    );
    open_zero(&p);
}

/// PERMISSIVE: plaintext HTTP is served as such (`x-forwarded-proto: http`), TLS too.
fn permissive(kind: EngineKind) {
    let Some((pki, _m, p, addr)) = setup(kind, ", mode: PERMISSIVE") else {
        return;
    };
    let mut s = connect(addr);
    s.write_all(b"GET /plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("x-forwarded-proto: http\r\n"), "{got}");
    let (code, out, err) = curl(&pki, addr, &[], &["https://localhost:PORT/tls"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("x-forwarded-proto: https"), "{out}");
    let ls = p.stats.listener("l");
    assert_eq!(ls.get(L::TlsPlaintextAccepted), 1);
    assert_eq!(ls.get(L::TlsHandshakes), 1);
    open_zero(&p);
}

/// An upgrade (101) over TLS becomes a tunnel of decrypted bytes both ways.
fn upgrade_over_tls(kind: EngineKind) {
    let Some((pki, _m, p, addr)) = setup(kind, "") else {
        return;
    };
    let (mut s, mut c) = tls_connect(addr, pki.client(None));
    c.writer()
        .write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let head = read_until(&mut s, &mut c, "\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in ["ping", "pong pong"] {
        c.writer().write_all(msg.as_bytes()).unwrap();
        assert_eq!(read_until(&mut s, &mut c, msg), msg);
    }
    assert_eq!(p.stats.listener("l").get(L::HttpUpgrades), 1);
    drop((s, c));
    open_zero(&p);
}

/// Bad input: plaintext to a STRICT port (an alert), a truncated record, an oversized
/// record; each counted, and the proxy keeps serving.
fn bad_input(kind: EngineKind) {
    let Some((pki, m, p, addr)) = setup(kind, "") else {
        return;
    };
    let ls = p.stats.listener("l");
    // Plaintext HTTP: a TLS alert record comes back (decode_error), no response.
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(
        read_alert(&mut s),
        Some(50),
        "an alert record, decode_error"
    );
    assert_eq!(ls.get(L::TlsPlaintextRejected), 1);
    // A request cut inside a record, then EOF: counted as truncation, nothing upstream.
    let before = m.heads.lock().unwrap().len();
    truncated_record(addr, pki.client(None));
    wait_until("truncation counted", Duration::from_secs(5), || {
        ls.get(L::TlsTruncated) == 1
    });
    assert_eq!(m.heads.lock().unwrap().len(), before);
    // An oversized record: record_overflow.
    let err = oversized_record(addr, pki.client(None));
    assert!(err.contains("RecordOverflow"), "{err}");
    wait_until("record error counted", Duration::from_secs(5), || {
        ls.get(L::TlsRecordErrors) == 1
    });
    // Still serving.
    let (code, out, err) = curl(&pki, addr, &[], &["https://localhost:PORT/fine"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("GET /fine"), "{out}");
    assert!(m.last().contains("GET /fine"));
    open_zero(&p);
}

/// Per-route `allowed_principals`: `/admin` only for the gateway identity (403 for
/// others, over their session), the rest for every verified client; a route with
/// principals on a listener without client certificates is refused at apply.
fn route_principals(kind: EngineKind) {
    let Some((pki, m, mut p, addr)) = setup(kind, "") else {
        return;
    };
    let admin = "          - match: {prefix: \"/admin\"}\n            route: {cluster: m}\n            allowed_principals: [\"spiffe://example.org/ns/trading/sa/gateway\"]\n";
    let bad = config_with(&pki, "mesh", "", m.addr, admin);
    let cfg = tickmesh::config::parse(&bad, tickmesh::config::Format::Yaml).unwrap();
    let e = tickmesh::route::compile(&cfg, 9, &p.stats, &mut p.pool)
        .map(|_| ())
        .expect_err("refused without client_ca")
        .to_string();
    assert!(e.contains("client_ca"), "{e}");
    p.apply(&config_with(
        &pki,
        "mesh",
        ", client_ca: {dir}/ca.pem",
        m.addr,
        admin,
    ));
    assert_eq!(p.listener("l"), addr, "the port-0 listener keeps its port");
    let ls = p.stats.listener("l");
    let who = |name: &str, path: &str| curl_as(&pki, addr, name, &[], path).1;
    assert!(who("gateway", "/admin/x").contains("status=200"));
    let out = who("intruder", "/admin/x");
    assert!(
        out.contains("status=403") && out.contains("RBAC: access denied"),
        "{out}"
    );
    assert!(who("intruder", "/public").contains("status=200"));
    assert_eq!(ls.get(L::TlsPrincipalDenied), 1);
    assert!(!m
        .heads
        .lock()
        .unwrap()
        .iter()
        .any(|h| h.contains("/admin") && h.contains("intruder")));
    open_zero(&p);
}

/// Certificate rotation by apply: new handshakes get the new certificate, a session
/// opened before keeps serving requests.
fn rotation(kind: EngineKind) {
    let Some((pki, m, mut p, addr)) = setup(kind, "") else {
        return;
    };
    let leaf = |c: &rustls::ClientConnection| c.peer_certificates().unwrap()[0].clone();
    let (mut s1, mut c1) = tls_connect(addr, pki.client(None));
    assert_eq!(leaf(&c1), pki.certs("mesh")[0]);
    let req = b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n";
    c1.writer().write_all(req).unwrap();
    assert!(read_until(&mut s1, &mut c1, "body=0\n").contains("GET /r"));
    p.apply(&config_with(&pki, "server-new", "", m.addr, ""));
    let (_s2, c2) = tls_connect(addr, pki.client(None));
    assert_eq!(leaf(&c2), pki.certs("server-new")[0]);
    c1.writer().write_all(req).unwrap();
    assert!(read_until(&mut s1, &mut c1, "body=0\n").contains("GET /r"));
    drop((s1, c1, _s2, c2));
    open_zero(&p);
}

/// A plain HTTP listener in front of a TLS cluster: requests go upstream inside TLS
/// (SNI and CA checked), pooled connections keep their session (two client connections,
/// one upstream connection and handshake); a certificate that does not match the SNI
/// fails the handshake: 503 to the client, counted on the cluster.
fn originate_to_tls_cluster(kind: EngineKind) {
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let server = pki.server("server");
    let m = Mirror::serve(Some(server));
    // An endpoint that hangs up on every connection (a failed handshake).
    let closer = TcpListener::bind("127.0.0.1:0").unwrap();
    let closer_addr = closer.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in closer.incoming() {
            drop(c);
        }
    });
    let yaml = |sni: &str| {
        format!(
            "listeners:\n  - {{name: l, address: \"127.0.0.1:0\", protocol: http}}\n\
             clusters:\n  - {{name: m, endpoints: [\"{m}\"], tls: {{ca: {ca}, sni: {sni}}}}}\n\
             \x20 - {{name: two, endpoints: [\"{closer_addr}\", \"{m}\"], tls: {{ca: {ca}, sni: {sni}}}}}\n\
             route_configs:\n  - name: rc\n    virtual_hosts:\n      - name: vh\n        domains: [\"*\"]\n        routes:\n\
             \x20         - match: {{prefix: \"/retry\"}}\n            route: {{cluster: two, retry_policy: {{retry_on: connect-failure, num_retries: 2}}}}\n\
             \x20         - match: {{prefix: \"/\"}}\n            route: {{cluster: m}}\n",
            m = m.addr,
            ca = pki.s("ca.pem")
        )
    };
    let mut p = Proxy::start(kind, &yaml("orders.internal"));
    let addr = p.listener("l");
    let cs = p.stats.cluster("m");
    // One client connection, two requests: the second takes the pooled upstream
    // connection (pools are per worker; one client connection stays on one).
    let mut client = BufReader::new(connect(addr));
    for path in ["/a", "/b"] {
        let text = get_on(&mut client, path);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.contains(&format!("GET {path}")),
            "{text}"
        );
    }
    assert_eq!(
        m.conns.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one pooled TLS connection"
    );
    assert_eq!(
        cs.get(tickmesh::telemetry::UpstreamCounter::TlsHandshakes),
        1
    );
    assert!(cs.get(tickmesh::telemetry::UpstreamCounter::TlsRecordsOffloaded) >= 4);
    assert_eq!(p.stats.listener("l").get(L::HttpUpstreamReuse), 1);
    // The upstream's certificate does not name billing.internal: 503.
    // A failed handshake is a connect failure: retried on the next endpoint.
    for i in 0..4 {
        let text = get_on(&mut client, &format!("/retry/{i}"));
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    let two = p.stats.cluster("two");
    assert!(two.get(tickmesh::telemetry::UpstreamCounter::TlsErrors) >= 1);
    assert!(p.stats.listener("l").get(L::HttpRetry) >= 1);
    drop(client);
    p.apply(&yaml("billing.internal"));
    let got = get(addr, "/c");
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(cs.get(tickmesh::telemetry::UpstreamCounter::TlsErrors) >= 1);
    open_zero(&p);
}

/// A TLS upstream (rustls, TLS 1.3) answering `GET PATH` with `PATH` that speaks again
/// 150 ms after some responses, while the proxy's connection idles in its pool:
/// `/keyupdate` sends a KeyUpdate asking for ours (rustls `refresh_traffic_keys`, "to roll
/// keys when it is known a connection will be idle"), `/close` sends `close_notify` and
/// FIN, `/stray` sends a response nobody asked for. `log` says what it did.
struct Talker {
    addr: std::net::SocketAddr,
    conns: Arc<std::sync::atomic::AtomicUsize>,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Talker {
    fn start(cfg: Arc<rustls::ServerConfig>) -> Talker {
        // `/ticket` continues the session outside rustls (see `by_hand`).
        let mut c = (*cfg).clone();
        c.enable_secret_extraction = true;
        let cfg = Arc::new(c);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (n, lg) = (conns.clone(), log.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (cfg, lg) = (cfg.clone(), lg.clone());
                std::thread::spawn(move || {
                    let r = Talker::talk(c, cfg, &lg);
                    lg.lock().unwrap().push(format!("END {r:?}"));
                });
            }
        });
        Talker { addr, conns, log }
    }

    fn talk(
        sock: std::net::TcpStream,
        cfg: Arc<rustls::ServerConfig>,
        log: &std::sync::Mutex<Vec<String>>,
    ) -> std::io::Result<()> {
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let conn = rustls::ServerConnection::new(cfg).map_err(std::io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, sock);
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let end = loop {
                if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Ok(());
                }
                got.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            got.drain(..end);
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            log.lock().unwrap().push(format!("GET {path}"));
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}",
                path.len()
            );
            s.write_all(resp.as_bytes())?;
            s.flush()?;
            if path == "/ticket" {
                return Talker::by_hand(s, log);
            }
            let late = ["/keyupdate", "/close", "/stray"].contains(&path.as_str());
            if late {
                std::thread::sleep(Duration::from_millis(150));
            }
            match path.as_str() {
                "/keyupdate" => s
                    .conn
                    .refresh_traffic_keys()
                    .map_err(std::io::Error::other)?,
                "/close" => s.conn.send_close_notify(),
                "/stray" => s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray")?,
                _ => {}
            }
            while s.conn.wants_write() {
                s.conn.write_tls(&mut s.sock)?;
            }
            if late {
                log.lock().unwrap().push(format!("LATE {path} sent"));
            }
            if path == "/close" {
                s.sock.shutdown(std::net::Shutdown::Write)?;
            }
        }
    }

    /// `/ticket`: rustls cannot send a NewSessionTicket after the handshake, so the
    /// session goes on by hand with its extracted secrets: a ticket 150 ms after the
    /// response (the proxy's connection idles in its pool then), then every request is
    /// answered in records sealed here.
    fn by_hand(
        s: rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>,
        log: &std::sync::Mutex<Vec<String>>,
    ) -> std::io::Result<()> {
        use rustls::crypto::cipher::{InboundOpaqueMessage, OutboundChunks, OutboundPlainMessage};
        use rustls::{ConnectionTrafficSecrets as S, ContentType, ProtocolVersion};
        let other = |m: &str| std::io::Error::other(m.to_string());
        let tls = std::io::Error::other::<rustls::Error>;
        let rustls::StreamOwned { conn, mut sock } = s;
        let Some(rustls::SupportedCipherSuite::Tls13(suite)) = conn.negotiated_cipher_suite()
        else {
            return Err(other("not TLS 1.3"));
        };
        let secrets = conn.dangerous_extract_secrets().map_err(tls)?;
        let key_iv = |s: S| match s {
            S::Aes128Gcm { key, iv }
            | S::Aes256Gcm { key, iv }
            | S::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
            _ => Err(other("unexpected suite")),
        };
        let ((mut tx_seq, tx), (mut rx_seq, rx)) = (secrets.tx, secrets.rx);
        let (k, iv) = key_iv(tx)?;
        let mut enc = suite.aead_alg.encrypter(k, iv);
        let (k, iv) = key_iv(rx)?;
        let mut dec = suite.aead_alg.decrypter(k, iv);
        let mut seal = |typ: ContentType, data: &[u8]| -> std::io::Result<Vec<u8>> {
            let m = OutboundPlainMessage {
                typ,
                version: ProtocolVersion::TLSv1_2,
                payload: OutboundChunks::Single(data),
            };
            let r = enc.encrypt(m, tx_seq).map_err(tls)?;
            tx_seq += 1;
            Ok(r.encode())
        };
        std::thread::sleep(Duration::from_millis(150));
        // NewSessionTicket (RFC 8446 §4.6.1): lifetime, age_add, nonce, ticket, no
        // extensions.
        let ticket = [
            &[4u8, 0, 0, 53][..],
            &3600u32.to_be_bytes(),
            &7u32.to_be_bytes(),
            &[8],
            &[1; 8],
            &[0, 32],
            &[2; 32],
            &[0, 0],
        ]
        .concat();
        sock.write_all(&seal(ContentType::Handshake, &ticket)?)?;
        log.lock().unwrap().push("LATE /ticket sent".into());
        let mut got = Vec::new();
        loop {
            let mut hdr = [0u8; 5];
            if sock.read_exact(&mut hdr).is_err() {
                return Ok(());
            }
            let mut body = vec![0; usize::from(u16::from_be_bytes([hdr[3], hdr[4]]))];
            sock.read_exact(&mut body)?;
            let outer = ContentType::ApplicationData;
            let m = dec
                .decrypt(
                    InboundOpaqueMessage::new(outer, ProtocolVersion::TLSv1_2, &mut body),
                    rx_seq,
                )
                .map_err(tls)?;
            rx_seq += 1;
            match m.typ {
                ContentType::ApplicationData => got.extend_from_slice(m.payload),
                ContentType::Alert => return Ok(()),
                t => log.lock().unwrap().push(format!("UNEXPECTED {t:?}")),
            }
            while let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..i + 4]).to_string();
                got.drain(..i + 4);
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                log.lock().unwrap().push(format!("GET {path}"));
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}",
                    path.len()
                );
                sock.write_all(&seal(ContentType::ApplicationData, resp.as_bytes())?)?;
            }
        }
    }

    fn has(&self, what: &str) -> bool {
        self.log.lock().unwrap().iter().any(|e| e == what)
    }

    fn conns(&self) -> usize {
        self.conns.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Pooled TLS upstream connections stay watched while they idle: a KeyUpdate the upstream
/// sends to the idle connection is taken by its session (uring keeps its multishot receive
/// armed in the pool, epoll its registration; the worker's session opens the record: the
/// connection is reused, our KeyUpdate answer goes first); a `close_notify` + FIN, or a response nobody asked
/// for, closes it while it idles (not taken, not counted stale), and the next request
/// goes on a fresh connection with its own answer; a NewSessionTicket sent to the idle
/// connection is kept by its session and the connection reused.
fn pooled_tls_upstream_hears_its_peer(kind: EngineKind) {
    use tickmesh::telemetry::UpstreamCounter as U;
    if !tools() {
        return;
    }
    let pki = Pki::new();
    let t = Talker::start(pki.server("server"));
    let yaml = format!(
        "listeners:\n  - {{name: l, address: \"127.0.0.1:0\", protocol: http}}\n\
         clusters:\n  - {{name: m, endpoints: [\"{}\"], tls: {{ca: {}, sni: orders.internal}}}}\n\
         route_configs:\n  - name: rc\n    virtual_hosts:\n      - name: vh\n        domains: [\"*\"]\n        routes:\n\
         \x20         - match: {{prefix: \"/\"}}\n            route: {{cluster: m}}\n",
        t.addr,
        pki.s("ca.pem")
    );
    let p = Proxy::start(kind, &yaml);
    let addr = p.listener("l");
    let (cs, ls) = (p.stats.cluster("m"), p.stats.listener("l"));
    let mut client = BufReader::new(connect(addr));
    let mut get = |path: &str| {
        let text = get_on(&mut client, path);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with(path),
            "{path}: {text}"
        );
    };
    let late = |path: &str| {
        wait_until(path, Duration::from_secs(5), || {
            t.has(&format!("LATE {path} sent"))
        });
        // Loopback delivers at once; the worker looks at once (uring) or within a tick.
        std::thread::sleep(Duration::from_millis(100));
    };
    // A KeyUpdate to the idle connection.
    get("/keyupdate");
    late("/keyupdate");
    get("/after-keyupdate");
    get("/again");
    assert_eq!(
        t.conns(),
        1,
        "the connection that heard the KeyUpdate was reused"
    );
    assert_eq!(cs.get(U::CxClosed), 0);
    let conns = t.conns();
    let closed = cs.get(U::CxClosed);
    // close_notify + FIN while idle: closed while parked.
    get("/close");
    late("/close");
    wait_until(
        "the parked connection to close",
        Duration::from_secs(2),
        || cs.get(U::CxClosed) == closed + 1,
    );
    get("/after-close");
    assert_eq!(t.conns(), conns + 1);
    // A response nobody asked for: closed while parked, never read as the next answer.
    get("/stray");
    late("/stray");
    wait_until(
        "the parked connection to close",
        Duration::from_secs(2),
        || cs.get(U::CxClosed) == closed + 2,
    );
    get("/after-stray");
    assert_eq!(t.conns(), conns + 2);
    // A NewSessionTicket to the idle connection: kept, and it carries the next requests.
    get("/ticket");
    late("/ticket");
    get("/after-ticket");
    get("/after-ticket-2");
    assert_eq!(
        t.conns(),
        conns + 2,
        "the connection that heard the ticket was reused"
    );
    assert_eq!(cs.get(U::CxClosed), closed + 2);
    assert!(t.has("GET /after-ticket-2"));
    assert!(!t
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.starts_with("UNEXPECTED")));
    assert_eq!(
        ls.get(L::HttpUpstreamStale),
        0,
        "closed while parked, never taken"
    );
    assert_eq!(ls.get(L::HttpRetry), 0);
    assert_eq!(cs.get(U::TlsErrors), 0);
    drop(client);
    open_zero(&p);
}

/// Mirrors to TLS clusters: the shadow originates TLS (SNI and CA of its cluster), the
/// TLS backend hears the copy with the `-shadow` host; serial mirrors share one pooled
/// TLS shadow connection (one handshake); a mirror percentage is still drawn and counted;
/// a shadow cluster whose certificate does not verify, or that hangs up during the
/// handshake, is a counted failure (cluster `tls_errors`, `http_mirror_failed`) while
/// every primary answers.
fn mirror_to_tls_cluster(kind: EngineKind) {
    use tickmesh::telemetry::UpstreamCounter as U;
    let pki = Pki::new();
    let server = pki.server("server");
    let shadow = Mirror::serve(Some(server));
    let primary = Mirror::start();
    let closer = TcpListener::bind("127.0.0.1:0").unwrap();
    let closer_addr = closer.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in closer.incoming() {
            drop(c);
        }
    });
    let ca = pki.s("ca.pem");
    let half = "runtime_fraction: {default_value: {numerator: 50, denominator: HUNDRED}}";
    let yaml = format!(
        "listeners:\n  - {{name: l, address: \"127.0.0.1:0\", protocol: http}}\n\
         clusters:\n  - {{name: a, endpoints: [\"{a}\"]}}\n\
         \x20 - {{name: s, endpoints: [\"{m}\"], tls: {{ca: {ca}, sni: orders.internal}}}}\n\
         \x20 - {{name: bad, endpoints: [\"{m}\"], tls: {{ca: {ca}, sni: billing.internal}}}}\n\
         \x20 - {{name: gone, endpoints: [\"{closer_addr}\"], tls: {{ca: {ca}, sni: orders.internal}}}}\n\
         route_configs:\n  - name: rc\n    virtual_hosts:\n      - name: vh\n        domains: [\"*\"]\n        routes:\n\
         \x20         - match: {{prefix: \"/half\"}}\n            route: {{cluster: a, request_mirror_policies: [{{cluster: s, {half}}}]}}\n\
         \x20         - match: {{prefix: \"/bad\"}}\n            route: {{cluster: a, request_mirror_policies: [{{cluster: bad}}]}}\n\
         \x20         - match: {{prefix: \"/gone\"}}\n            route: {{cluster: a, request_mirror_policies: [{{cluster: gone}}]}}\n\
         \x20         - match: {{prefix: \"/\"}}\n            route: {{cluster: a, request_mirror_policies: [{{cluster: s}}]}}\n",
        a = primary.addr,
        m = shadow.addr,
    );
    let p = Proxy::start(kind, &yaml);
    let addr = p.listener("l");
    let ls = p.stats.listener("l");
    let cs = p.stats.cluster("s");
    let seen = || shadow.heads.lock().unwrap().len() as u64;
    // Serial mirrors: each shadow ends (and parks its TLS connection) before the next.
    let mut client = BufReader::new(connect(addr));
    for i in 0..10u64 {
        let text = get_on(&mut client, &format!("/s/{i}"));
        assert!(
            text.starts_with("HTTP/1.1 200") && text.contains(&format!("GET /s/{i}")),
            "{text}"
        );
        wait_until("the TLS shadow to finish", Duration::from_secs(5), || {
            cs.get(U::RqDone) == i + 1
        });
    }
    let last = shadow.last();
    assert!(last.starts_with("GET /s/9 HTTP/1.1\r\n"), "{last}");
    assert!(last.contains("Host: x-shadow\r\n"), "{last}");
    assert_eq!(seen(), 10);
    assert_eq!(
        shadow.conns.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one pooled TLS shadow connection for 10 mirrors"
    );
    assert_eq!(cs.get(U::TlsHandshakes), 1);
    assert!(
        cs.get(U::TlsRecordsOffloaded) >= 20,
        "records on the engine"
    );
    assert_eq!(ls.get(L::HttpMirrored), 10);
    assert_eq!(ls.get(L::HttpMirrorFailed), 0);
    // 50% of 200 requests: drawn and counted as without TLS; every copy arrives.
    const N: u64 = 200;
    for i in 0..N {
        let text = get_on(&mut client, &format!("/half/{i}"));
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    let chosen = ls.get(L::HttpMirrored) + ls.get(L::HttpMirrorDropped) - 10;
    let share = chosen as f64 / N as f64;
    assert!((0.3..=0.7).contains(&share), "mirrored share {share}");
    wait_until("the shadow copies", Duration::from_secs(10), || {
        seen() == ls.get(L::HttpMirrored)
    });
    assert_eq!(ls.get(L::HttpMirrorFailed), 0);
    // Failing shadows: a certificate that does not name the SNI, a hang-up during the
    // handshake. The primary answers at once each time.
    let bad = p.stats.cluster("bad");
    let gone = p.stats.cluster("gone");
    for i in 0..3 {
        for path in ["/bad", "/gone"] {
            let t = std::time::Instant::now();
            let text = get_on(&mut client, &format!("{path}/{i}"));
            assert!(
                text.starts_with("HTTP/1.1 200") && text.contains(&format!("GET {path}/{i}")),
                "{text}"
            );
            assert!(t.elapsed() < Duration::from_millis(500), "{path} waited");
        }
    }
    wait_until("the failed shadows", Duration::from_secs(5), || {
        ls.get(L::HttpMirrorFailed) == 6
    });
    assert_eq!(bad.get(U::TlsErrors), 3);
    assert_eq!(bad.get(U::TlsHandshakes), 0);
    assert!(gone.get(U::TlsErrors) >= 3);
    assert_eq!(
        seen(),
        ls.get(L::HttpMirrored) - 6,
        "no failed copy arrived"
    );
    // The pooled shadow connection still serves.
    let text = get_on(&mut client, "/s/after");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    wait_until("the last shadow", Duration::from_secs(5), || {
        shadow.last().starts_with("GET /s/after ")
    });
    drop(client);
    open_zero(&p);
}

/// Shadows and primaries share the worker's pool of TLS connections (one session type):
/// a shadow's parked TLS connection carries a client connection's request and then the
/// next shadow (one connection, one handshake); a route whose primary and mirror both go
/// to one mTLS cluster makes at most two upstream connections for ten serial requests,
/// each with one handshake; the cluster's client
/// certificate goes with the shadow's handshake (the upstream requires one). A shadow
/// cluster without a client certificate is refused by that upstream after the handshake
/// (its alert ends the session): a counted mirror failure, the primary answers.
fn mirror_tls_pool_shared_mtls(kind: EngineKind) {
    use tickmesh::telemetry::UpstreamCounter as U;
    let pki = Pki::new();
    let m = Mirror::serve(Some(mtls_server(&pki)));
    let primary = Mirror::start();
    let (ca, cert, key) = (pki.s("ca.pem"), pki.s("gateway.pem"), pki.s("gateway.key"));
    let yaml = format!(
        "listeners:\n  - {{name: l, address: \"127.0.0.1:0\", protocol: http}}\n\
         clusters:\n  - {{name: a, endpoints: [\"{a}\"]}}\n\
         \x20 - {{name: s, endpoints: [\"{m}\"], tls: {{ca: {ca}, sni: orders.internal, cert: {cert}, key: {key}}}}}\n\
         \x20 - {{name: anon, endpoints: [\"{m}\"], tls: {{ca: {ca}, sni: orders.internal}}}}\n\
         route_configs:\n  - name: rc\n    virtual_hosts:\n      - name: vh\n        domains: [\"*\"]\n        routes:\n\
         \x20         - match: {{prefix: \"/anon\"}}\n            route: {{cluster: a, request_mirror_policies: [{{cluster: anon}}]}}\n\
         \x20         - match: {{prefix: \"/shadow\"}}\n            route: {{cluster: a, request_mirror_policies: [{{cluster: s}}]}}\n\
         \x20         - match: {{prefix: \"/only\"}}\n            route: {{cluster: s}}\n\
         \x20         - match: {{prefix: \"/\"}}\n            route: {{cluster: s, request_mirror_policies: [{{cluster: s}}]}}\n",
        a = primary.addr,
        m = m.addr,
    );
    let p = Proxy::start(kind, &yaml);
    let addr = p.listener("l");
    let ls = p.stats.listener("l");
    let cs = p.stats.cluster("s");
    let conns = || m.conns.load(std::sync::atomic::Ordering::Relaxed) as u64;
    let mut client = BufReader::new(connect(addr));
    // A shadow's TLS connection serves a client connection's request, and back.
    let text = get_on(&mut client, "/shadow/1");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    wait_until("the shadow", Duration::from_secs(5), || {
        cs.get(U::RqDone) == 1
    });
    let text = get_on(&mut client, "/only/1");
    assert!(text.contains("GET /only/1 "), "{text}");
    wait_until("the exchange", Duration::from_secs(5), || {
        cs.get(U::RqDone) == 2
    });
    let text = get_on(&mut client, "/shadow/2");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    wait_until("the shadow", Duration::from_secs(5), || {
        cs.get(U::RqDone) == 3
    });
    assert_eq!(conns(), 1, "one TLS connection for shadow, primary, shadow");
    assert_eq!(cs.get(U::TlsHandshakes), 1);
    assert_eq!(m.heads.lock().unwrap().len(), 3);
    m.heads.lock().unwrap().clear();
    for i in 0..10u64 {
        let text = get_on(&mut client, &format!("/both/{i}"));
        assert!(
            text.starts_with("HTTP/1.1 200") && text.contains(&format!("GET /both/{i}")),
            "{text}"
        );
        // The primary's request and its shadow are both done (both parked).
        wait_until(
            "the exchange and its shadow",
            Duration::from_secs(5),
            || cs.get(U::RqDone) == 3 + 2 * (i + 1),
        );
    }
    let heads = m.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 20, "{heads:?}");
    assert_eq!(
        heads
            .iter()
            .filter(|h| h.contains("Host: x-shadow\r\n"))
            .count(),
        10
    );
    let n = conns();
    assert!(n <= 2, "{n} upstream connections for 23 requests");
    assert_eq!(cs.get(U::TlsHandshakes), n);
    assert_eq!(ls.get(L::HttpMirrorFailed), 0);
    // No client certificate: the upstream refuses it after the client's Finished.
    let anon = p.stats.cluster("anon");
    for i in 0..2 {
        let text = get_on(&mut client, &format!("/anon/{i}"));
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    wait_until("the refused shadows", Duration::from_secs(5), || {
        ls.get(L::HttpMirrorFailed) == 2
    });
    assert_eq!(anon.get(U::TlsErrors), 2);
    assert_eq!(m.heads.lock().unwrap().len(), 20, "no refused copy arrived");
    drop(client);
    open_zero(&p);
}

/// A TLS upstream answering each request badly, by its path: `/garbage` not HTTP,
/// `/trunc` a body cut short by a socket close without `close_notify`, `/raw` a
/// malformed record (not sealed with the session's keys).
fn bad_tls_upstream(cfg: Arc<rustls::ServerConfig>) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut s = rustls::ServerConnection::new(cfg).unwrap();
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match rustls::Stream::new(&mut s, &mut c).read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut t = rustls::Stream::new(&mut s, &mut c);
                if head.contains(" /garbage") {
                    let _ = t.write_all(b"NOT HTTP AT ALL\r\n\r\n");
                    let _ = t.flush();
                    std::thread::sleep(Duration::from_millis(200));
                } else if head.contains(" /trunc") {
                    let _ = t.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort");
                    let _ = t.flush();
                    let _ = c.shutdown(std::net::Shutdown::Both);
                } else {
                    // An application-data record too short to carry a tag.
                    let _ = c.write_all(b"\x17\x03\x03\x00\x05hello");
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
        }
    });
    addr
}

/// Bad responses from a TLS shadow cluster: not HTTP (a failed mirror), a body cut
/// short without `close_notify` (answered, so not a failed mirror, but a TLS error and
/// the connection is not kept), a malformed record (a failed mirror and a TLS error).
/// A handshake that never ends fails at the cluster's connect timeout. Every primary
/// answers; the proxy keeps mirroring.
fn mirror_tls_bad_responses(kind: EngineKind) {
    use tickmesh::telemetry::UpstreamCounter as U;
    let pki = Pki::new();
    let server = pki.server("server");
    let evil = bad_tls_upstream(server);
    let primary = Mirror::start();
    // Accepts and never answers: the handshake is bounded by the connect timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().take(8) {
            held.push(c);
        }
    });
    let ca = pki.s("ca.pem");
    let yaml = format!(
        "listeners:\n  - {{name: l, address: \"127.0.0.1:0\", protocol: http}}\n\
         clusters:\n  - {{name: a, endpoints: [\"{a}\"]}}\n\
         \x20 - {{name: evil, endpoints: [\"{evil}\"], tls: {{ca: {ca}, sni: orders.internal}}}}\n\
         \x20 - {{name: silent, endpoints: [\"{silent_addr}\"], connect_timeout: 200ms, tls: {{ca: {ca}, sni: orders.internal}}}}\n\
         route_configs:\n  - name: rc\n    virtual_hosts:\n      - name: vh\n        domains: [\"*\"]\n        routes:\n\
         \x20         - match: {{prefix: \"/silent\"}}\n            route: {{cluster: a, timeout: 20s, request_mirror_policies: [{{cluster: silent}}]}}\n\
         \x20         - match: {{prefix: \"/\"}}\n            route: {{cluster: a, request_mirror_policies: [{{cluster: evil}}]}}\n",
        a = primary.addr,
    );
    let p = Proxy::start(kind, &yaml);
    let addr = p.listener("l");
    let ls = p.stats.listener("l");
    let es = p.stats.cluster("evil");
    let mut client = BufReader::new(connect(addr));
    let expect = [
        ("/garbage", 1, 0),
        ("/trunc", 1, 1),
        ("/raw", 2, 2),
        ("/garbage/again", 3, 2),
    ];
    for (n, (path, failed, tls_errors)) in expect.into_iter().enumerate() {
        let text = get_on(&mut client, path);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.contains(&format!("GET {path} ")),
            "{text}"
        );
        wait_until(path, Duration::from_secs(5), || {
            es.get(U::RqDone) == n as u64 + 1
        });
        wait_until(path, Duration::from_secs(5), || {
            ls.get(L::HttpMirrorFailed) == failed && es.get(U::TlsErrors) == tls_errors
        });
    }
    assert_eq!(es.get(U::TlsHandshakes), 4, "no bad connection was kept");
    assert_eq!(ls.get(L::HttpMirrored), 4);
    // A handshake that never ends fails at the cluster's connect timeout (200 ms), not
    // at the route's (20 s).
    let ss = p.stats.cluster("silent");
    let t = std::time::Instant::now();
    let text = get_on(&mut client, "/silent");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    wait_until("the silent shadow", Duration::from_secs(5), || {
        ls.get(L::HttpMirrorFailed) == 4
    });
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!((ss.get(U::ConnectTimeout), ss.get(U::TlsErrors)), (1, 1));
    // No engine session outlives its failed shadow.
    use tickmesh::telemetry::OffloadCounter as O;
    let o = p.stats.offload();
    wait_until("sessions released", Duration::from_secs(5), || {
        o.get(O::Sessions) == 0
    });
    assert!(o.get(O::RecordsOpened) >= 2);
    drop(client);
    open_zero(&p);
}

/// A TLS server config requiring a client certificate from the test CA (`server` cert).
fn mtls_server(pki: &Pki) -> Arc<rustls::ServerConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pki.certs("ca") {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(pki.certs("server"), pki.key("server"))
            .unwrap(),
    )
}

/// The mirror cluster's TLS from an Istio `DestinationRule` (`trafficPolicy.tls` MUTUAL,
/// as a mesh sets it): the shadow presents the client certificate the upstream requires.
fn mirror_tls_from_istio_destination_rule(kind: EngineKind) {
    use tickmesh::telemetry::UpstreamCounter as U;
    let pki = Pki::new();
    let m = Mirror::serve(Some(mtls_server(&pki)));
    let primary = Mirror::start();
    let yaml = format!(
        "listeners:\n  - {{name: l, address: \"127.0.0.1:0\", protocol: http}}\n\
         clusters:\n  - {{name: a, endpoints: [\"{a}\"]}}\n  - {{name: s, endpoints: [\"{m}\"]}}\n\
         route_configs:\n  - name: rc\n    virtual_hosts:\n      - name: vh\n        domains: [\"*\"]\n        routes:\n\
         \x20         - match: {{prefix: \"/\"}}\n            route: {{cluster: a, request_mirror_policies: [{{cluster: s}}]}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: s}}\nspec:\n  host: s\n  trafficPolicy:\n\
         \x20   tls: {{mode: MUTUAL, sni: orders.internal, caCertificates: {ca}, clientCertificate: {cert}, privateKey: {key}}}\n",
        a = primary.addr,
        m = m.addr,
        ca = pki.s("ca.pem"),
        cert = pki.s("gateway.pem"),
        key = pki.s("gateway.key"),
    );
    let p = Proxy::start(kind, &yaml);
    let cs = p.stats.cluster("s");
    let text = get(p.listener("l"), "/istio");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    wait_until("the shadow", Duration::from_secs(5), || {
        cs.get(U::RqDone) == 1
    });
    assert!(
        m.last().starts_with("GET /istio HTTP/1.1\r\n"),
        "{}",
        m.last()
    );
    assert_eq!(cs.get(U::TlsHandshakes), 1);
    assert_eq!(p.stats.listener("l").get(L::HttpMirrorFailed), 0);
    open_zero(&p);
}

per_engine!(
    mirror_to_tls_cluster,
    mirror_tls_from_istio_destination_rule,
    mirror_tls_bad_responses,
    mirror_tls_pool_shared_mtls,
    originate_to_tls_cluster,
    pooled_tls_upstream_hears_its_peer,
    route_principals,
    rotation,
    curl_keepalive_sni_bodies,
    openssl_pipelined,
    mtls_principals_and_xfcc,
    xfcc_modes_and_details,
    tls_tcp_fallback,
    permissive,
    upgrade_over_tls,
    bad_input,
);
