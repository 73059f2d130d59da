use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::config::istio::{MtlsSetting, PeerAuthenticationSpec, WorkloadSelector};

fn pa(
    name: &str,
    selector: &[(&str, &str)],
    mode: MtlsMode,
    ports: &[(u16, MtlsMode)],
) -> PeerAuthentication {
    PeerAuthentication {
        api_version: "security.istio.io/v1beta1".into(),
        kind: "PeerAuthentication".into(),
        metadata: crate::config::istio::ObjectMeta {
            name: name.into(),
            ..Default::default()
        },
        spec: PeerAuthenticationSpec {
            selector: (!selector.is_empty()).then(|| WorkloadSelector {
                match_labels: selector
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            mtls: Some(MtlsSetting { mode }),
            port_level_mtls: ports
                .iter()
                .map(|(p, m)| (*p, MtlsSetting { mode: *m }))
                .collect(),
        },
    }
}

#[test]
fn peer_authentication_precedence() {
    let labels: BTreeMap<String, String> = [("app".to_string(), "orders".to_string())].into();
    // No resource: the listener's own mode, STRICT by default.
    assert_eq!(effective_mode(None, 7443, &labels, &[]).0, MtlsMode::Strict);
    assert_eq!(
        effective_mode(Some(MtlsMode::Permissive), 7443, &labels, &[]).0,
        MtlsMode::Permissive
    );
    let mesh = pa("mesh", &[], MtlsMode::Permissive, &[]);
    let app = pa(
        "orders",
        &[("app", "orders")],
        MtlsMode::Strict,
        &[(9000, MtlsMode::Disable)],
    );
    let other = pa("other", &[("app", "billing")], MtlsMode::Disable, &[]);
    // The workload-specific resource beats the mesh-wide one, whatever the order.
    for pas in [
        vec![mesh.clone(), app.clone(), other.clone()],
        vec![app.clone(), mesh.clone()],
    ] {
        let (m, by) = effective_mode(None, 7443, &labels, &pas);
        assert_eq!(m, MtlsMode::Strict);
        assert_eq!(by.as_deref(), Some("orders"));
        // Port-level override.
        assert_eq!(
            effective_mode(None, 9000, &labels, &pas).0,
            MtlsMode::Disable
        );
    }
    // A selector that does not match leaves the mesh-wide mode.
    let none = BTreeMap::new();
    assert_eq!(
        effective_mode(None, 7443, &none, &[mesh, app, other]).0,
        MtlsMode::Permissive
    );
    // UNSET inherits.
    let unset = pa("unset", &[("app", "orders")], MtlsMode::Unset, &[]);
    assert_eq!(
        effective_mode(Some(MtlsMode::Permissive), 1, &labels, &[unset]).0,
        MtlsMode::Permissive
    );
}

#[test]
fn wildcard_names_cover_one_label() {
    assert!(name_matches("orders.internal", "ORDERS.internal"));
    assert!(name_matches("*.example.org", "a.example.org"));
    assert!(!name_matches("*.example.org", "a.b.example.org"));
    assert!(!name_matches("*.example.org", "example.org"));
    assert!(!name_matches("orders.internal", "billing.internal"));
}

// === loading: each bad file is an error naming its field ===

fn openssl(args: &[&str]) -> bool {
    std::process::Command::new("openssl")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A self-signed certificate and key named `name` in `dir`; `false` without openssl.
fn self_signed(dir: &Path, name: &str) -> bool {
    let p = |ext: &str| dir.join(format!("{name}.{ext}")).display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=t",
        "-addext",
        "subjectAltName=DNS:t.example",
        "-keyout",
        &p("key"),
        "-out",
        &p("pem"),
    ])
}

fn listener_tls(dir: &Path, cert: &str, key: &str) -> ListenerTls {
    ListenerTls {
        cert: dir.join(cert),
        key: dir.join(key),
        sni_certs: vec![],
        client_ca: None,
        mode: None,
        allowed_principals: vec![],
    }
}

fn errors(r: Result<Option<Arc<ServerTls>>, Vec<Problem>>) -> Vec<(String, String)> {
    match r {
        Ok(_) => vec![],
        Err(p) => p.into_iter().map(|p| (p.path, p.message)).collect(),
    }
}

#[test]
fn bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if !self_signed(d, "a") || !self_signed(d, "b") {
        eprintln!("SKIP bad_files_are_named: the openssl CLI is not available");
        return;
    }
    std::fs::write(
        d.join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    )
    .unwrap();
    std::fs::write(d.join("empty.pem"), "hello\n").unwrap();
    let at = "listeners[0].tls";
    let good = build_server(&listener_tls(d, "a.pem", "a.key"), MtlsMode::Strict, at).unwrap();
    let good = good.expect("STRICT builds a config");
    assert_eq!(good.certs[0].dns_names, vec!["t.example".to_string()]);
    assert!(good.certs[0].seconds_remaining() > 86_400);
    assert!(
        build_server(&listener_tls(d, "a.pem", "a.key"), MtlsMode::Disable, at)
            .unwrap()
            .is_none()
    );

    let cases = [
        (
            ("missing.pem", "a.key"),
            "listeners[0].tls.cert",
            "cannot read",
        ),
        (
            ("a.pem", "missing.key"),
            "listeners[0].tls.key",
            "cannot read",
        ),
        (("garbage.pem", "a.key"), "listeners[0].tls.cert", "bad PEM"),
        (
            ("empty.pem", "a.key"),
            "listeners[0].tls.cert",
            "no CERTIFICATE",
        ),
        (
            ("a.pem", "empty.pem"),
            "listeners[0].tls.key",
            "no PRIVATE KEY",
        ),
        (("a.pem", "a.pem"), "listeners[0].tls.key", "no PRIVATE KEY"),
        (("a.pem", "b.key"), "listeners[0].tls.key", "does not match"),
    ];
    for ((cert, key), path, msg) in cases {
        let e = errors(build_server(
            &listener_tls(d, cert, key),
            MtlsMode::Strict,
            at,
        ));
        assert_eq!(e.len(), 1, "{cert}/{key}: {e:?}");
        assert_eq!(e[0].0, path, "{cert}/{key}");
        assert!(e[0].1.contains(msg), "{cert}/{key}: {}", e[0].1);
    }

    let mut t = listener_tls(d, "a.pem", "a.key");
    t.client_ca = Some(d.join("empty.pem"));
    t.allowed_principals = vec!["gateway".into()];
    let e = errors(build_server(&t, MtlsMode::Strict, at));
    let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "listeners[0].tls.allowed_principals[0]",
            "listeners[0].tls.client_ca"
        ]
    );
    t.client_ca = None;
    t.allowed_principals = vec!["spiffe://td/ns/a/sa/b".into()];
    let e = errors(build_server(&t, MtlsMode::Strict, at));
    assert_eq!(e[0].0, "listeners[0].tls.allowed_principals");

    let ct = |ca: &str, sni: &str, cert: Option<&str>, key: Option<&str>| ClusterTls {
        ca: d.join(ca),
        sni: sni.into(),
        cert: cert.map(|c| d.join(c)),
        key: key.map(|k| d.join(k)),
    };
    assert!(build_client(&ct("a.pem", "t.example", Some("b.pem"), Some("b.key")), "c").is_ok());
    for (t, path) in [
        (ct("missing.pem", "t.example", None, None), "c.ca"),
        (ct("a.pem", "not a name!", None, None), "c.sni"),
        (ct("a.pem", "t.example", Some("b.pem"), None), "c.key"),
        (
            ct("a.pem", "t.example", Some("b.pem"), Some("a.key")),
            "c.key",
        ),
    ] {
        let e = build_client(&t, "c").unwrap_err();
        assert_eq!(e[0].path, path, "{:?}", e[0]);
    }
}

#[test]
fn spiffe_id_from_uri_san() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |ext: &str| d.join(format!("s.{ext}")).display().to_string();
    if !openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=s",
        "-addext",
        "subjectAltName=DNS:x.example,URI:https://not.spiffe/,URI:spiffe://td/ns/n/sa/s",
        "-keyout",
        &p("key"),
        "-out",
        &p("pem"),
    ]) {
        eprintln!("SKIP spiffe_id_from_uri_san: the openssl CLI is not available");
        return;
    }
    let der = certs::load_certs(&d.join("s.pem")).unwrap().remove(0);
    assert_eq!(
        certs::spiffe_id(der.as_ref()).as_deref(),
        Some("spiffe://td/ns/n/sa/s")
    );
    assert_eq!(
        certs::spiffe_id(b"\x30\x03\x02\x01\x00"),
        None,
        "malformed DER"
    );
    assert_eq!(certs::spiffe_id(&[]), None);
}

// === the record layer on the offload engine, against an in-memory rustls client ===

/// Run the engine until nothing of `t`'s downstream side is in flight.
fn settle(t: &mut conn::Tls, cr: &mut conn::Crypto) {
    let tag = conn::tag(0, 0, crate::proxy::l4::Side::Down);
    for _ in 0..64 {
        t.pump(crate::proxy::l4::Side::Down, cr, tag);
        cr.engine.poll();
        cr.engine
            .reap(usize::MAX, |c| t.complete(crate::proxy::l4::Side::Down, &c));
        if cr.engine.in_flight() == 0 {
            t.pump(crate::proxy::l4::Side::Down, cr, tag);
            cr.engine.poll();
            if cr.engine.in_flight() == 0 {
                return;
            }
        }
    }
}

/// Move bytes between the client and the server side until neither has any.
fn exchange(t: &mut conn::Tls, cr: &mut conn::Crypto, c: &mut rustls::ClientConnection) {
    use crate::proxy::l4::Side::Down;
    let tag = conn::tag(0, 0, Down);
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..64 {
        let mut moved = false;
        while c.wants_write() {
            let mut w: &mut [u8] = &mut buf;
            let n = c.write_tls(&mut w).unwrap();
            if n == 0 {
                break;
            }
            if t.sniffing() {
                assert_eq!(t.sniff(buf[0]), conn::Sniff::Tls);
            }
            t.feed(Down, &buf[..n], cr, tag).unwrap();
            moved = true;
        }
        settle(t, cr);
        loop {
            let n = t.write_tls(Down, &mut buf);
            if n == 0 {
                break;
            }
            let mut r: &[u8] = &buf[..n];
            while !r.is_empty() {
                c.read_tls(&mut r).unwrap();
                c.process_new_packets().unwrap();
            }
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn records_go_through_the_engine_with_our_own_key_updates() {
    use crate::proxy::l4::Side::Down;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A self-signed leaf (not a CA), so the client can trust it directly.
    let p = |ext: &str| d.join(format!("s.{ext}")).display().to_string();
    if !openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=t",
        "-addext",
        "subjectAltName=DNS:t.example",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-keyout",
        &p("key"),
        "-out",
        &p("pem"),
    ]) {
        eprintln!("SKIP records_go_through_the_engine: no openssl CLI");
        return;
    }
    let st = build_server(&listener_tls(d, "s.pem", "s.key"), MtlsMode::Strict, "t")
        .unwrap()
        .unwrap();
    let mut roots = RootCertStore::empty();
    for c in certs::load_certs(&d.join("s.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut c =
        rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("t.example").unwrap())
            .unwrap();
    let mut t = conn::Tls::server(st);
    let mut cr = conn::Crypto::new(crate::config::tls::OffloadBackend::Software);
    exchange(&mut t, &mut cr, &mut c);
    assert!(!c.is_handshaking() && !t.handshaking(Down));
    // We update our sending key every 3 records; the client must follow each time.
    t.set_key_update_after(Down, 3);
    let mut out = vec![0u8; 64 * 1024];
    let mut got = Vec::new();
    let mut want = Vec::new();
    for i in 0..20u8 {
        let chunk = vec![i; 1000 + usize::from(i) * 500];
        assert!(t.can_take_plain(Down, chunk.len()));
        t.write_plain(Down, &chunk);
        want.extend_from_slice(&chunk);
        exchange(&mut t, &mut cr, &mut c);
        let mut b = [0u8; 65536];
        while let Ok(n) = std::io::Read::read(&mut c.reader(), &mut b) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        // And the other way, through our receive path.
        std::io::Write::write_all(&mut c.writer(), &[i; 300]).unwrap();
        exchange(&mut t, &mut cr, &mut c);
        match t.read_plain(Down, &mut out) {
            conn::Plain::Data(n) => assert_eq!(&out[..n], &[i; 300][..]),
            other => panic!("expected data, got {other:?}"),
        }
    }
    assert!(got == want, "the client read different bytes");
    // close_notify from the client ends the stream cleanly.
    c.send_close_notify();
    exchange(&mut t, &mut cr, &mut c);
    assert_eq!(t.read_plain(Down, &mut out), conn::Plain::Closed);
    assert_eq!(t.take_counts()[0], 20 * 2 + 20 / 3 + 1);
    t.release(Some(&mut cr));
    assert_eq!(cr.engine.stats().sessions, 0);
}
