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

/// A self-signed certificate and key named `name` in `dir` (`name.pem`, `name.key`); `false`
/// without openssl. Other modules' tests use it for a CA file.
pub(crate) fn self_signed(dir: &Path, name: &str) -> bool {
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
        session_tickets: None,
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

/// A server side (our TLS layer on a software engine) and an in-memory rustls client,
/// handshake done; `None` (with a message) without the openssl CLI.
fn handshaken(d: &Path) -> Option<(Box<conn::Tls>, conn::Crypto, rustls::ClientConnection)> {
    use crate::proxy::l4::Side::Down;
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
        eprintln!("SKIP: no openssl CLI for the test certificate");
        return None;
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
    let mut cfg = cfg;
    // Lets a test take the client's keys and forge records a real client would not send.
    cfg.enable_secret_extraction = true;
    let mut c =
        rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("t.example").unwrap())
            .unwrap();
    let mut t = conn::Tls::server(st);
    let mut cr = conn::Crypto::new(crate::config::tls::OffloadBackend::Software);
    exchange(&mut t, &mut cr, &mut c);
    assert!(!c.is_handshaking() && !t.handshaking(Down));
    Some((t, cr, c))
}

#[test]
fn records_go_through_the_engine_with_our_own_key_updates() {
    use crate::proxy::l4::Side::Down;
    let dir = tempfile::tempdir().unwrap();
    let Some((mut t, mut cr, mut c)) = handshaken(dir.path()) else {
        return;
    };
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

/// Malformed or forbidden messages after the handshake, forged with the client's own keys:
/// each ends the connection with the right alert (or none, for the peer's own fatal
/// alert), never a panic; harmless ones are ignored.
#[test]
fn post_handshake_messages_are_checked() {
    use super::records::{alert, JobErrorKind, RecordError};
    use crate::proxy::l4::Side::Down;
    use tickmesh_offload::{
        BackendChoice, ContentType as T, EngineConfig, SessionParams, TlsVersion,
    };
    let bad = |d: u8| Some(RecordError::Sent(d, JobErrorKind::BadMessage));
    // (case, records the client sends, the failure expected)
    type Case = (&'static str, Vec<(T, Vec<u8>)>, Option<RecordError>);
    let cases: Vec<Case> = vec![
        (
            "ticket from a client",
            vec![(T::Handshake, vec![4, 0, 0, 1, 0])],
            bad(alert::UNEXPECTED_MESSAGE),
        ),
        (
            "KeyUpdate not ending its record",
            vec![(T::Handshake, vec![24, 0, 0, 1, 0, 24, 0, 0, 1, 0])],
            bad(alert::UNEXPECTED_MESSAGE),
        ),
        (
            "KeyUpdate with a bad request value",
            vec![(T::Handshake, vec![24, 0, 0, 1, 7])],
            bad(alert::DECODE_ERROR),
        ),
        (
            "KeyUpdate with a bad length",
            vec![(T::Handshake, vec![24, 0, 0, 2, 0, 0])],
            bad(alert::DECODE_ERROR),
        ),
        (
            "a second Finished",
            vec![(T::Handshake, vec![20, 0, 0, 1, 0])],
            bad(alert::UNEXPECTED_MESSAGE),
        ),
        (
            "absurd handshake length",
            vec![(T::Handshake, vec![4, 0xff, 0xff, 0xff])],
            bad(alert::DECODE_ERROR),
        ),
        (
            "one-byte alert",
            vec![(T::Alert, vec![2])],
            bad(alert::DECODE_ERROR),
        ),
        (
            "three-byte alert",
            vec![(T::Alert, vec![2, 40, 0])],
            bad(alert::DECODE_ERROR),
        ),
        (
            "the peer's fatal alert",
            vec![(T::Alert, vec![2, 40])],
            Some(RecordError::Received(40)),
        ),
        (
            "user_canceled is not fatal",
            vec![(T::Alert, vec![1, alert::USER_CANCELED])],
            None,
        ),
        (
            "a handshake message split over records",
            vec![(T::Handshake, vec![24, 0]), (T::Handshake, vec![0, 1, 0])],
            None,
        ),
        (
            "data after close_notify is ignored",
            vec![(T::Alert, vec![1, 0]), (T::ApplicationData, vec![1, 2, 3])],
            None,
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, records, want) in cases {
        let Some((mut t, mut cr, c)) = handshaken(dir.path()) else {
            return;
        };
        let secrets = c.dangerous_extract_secrets().unwrap();
        let mut forger = tickmesh_offload::Engine::new(EngineConfig {
            backend: BackendChoice::Software,
            ..Default::default()
        })
        .unwrap();
        let id = forger
            .create_session(&SessionParams::from_rustls(TlsVersion::Tls13, &secrets, 0).unwrap())
            .unwrap();
        let mut wire = Vec::new();
        for (ct, payload) in &records {
            forger.submit_seal(id, 0, *ct, payload).unwrap();
            forger.poll_until_idle(100);
            forger.reap(1, |r| wire.extend_from_slice(r.result.unwrap().data));
        }
        let tag = conn::tag(0, 0, Down);
        t.feed(Down, &wire, &mut cr, tag).unwrap();
        settle(&mut t, &mut cr);
        let got = match t.take_error() {
            Some((_, conn::FeedError::Record(e))) => Some(e),
            Some((_, other)) => panic!("{name}: unexpected {other:?}"),
            None => None,
        };
        assert_eq!(got, want, "{name}");
        if let Some(RecordError::Sent(..)) = want {
            // Our alert was sealed for the client.
            let mut out = vec![0u8; 1024];
            assert!(t.write_tls(Down, &mut out) > 0, "{name}: no alert sealed");
        }
        if name.starts_with("data after close_notify") {
            let mut out = vec![0u8; 64];
            assert_eq!(t.read_plain(Down, &mut out), conn::Plain::Closed, "{name}");
        }
        t.release(Some(&mut cr));
    }
}

/// `session_tickets`: the count reaches rustls, 0 turns tickets off, too many is an
/// apply error naming the field, and a value that is not a count does not parse.
#[test]
fn session_tickets_knob() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if !self_signed(d, "a") {
        eprintln!("SKIP session_tickets_knob: the openssl CLI is not available");
        return;
    }
    let at = "listeners[0].tls";
    let mut t = listener_tls(d, "a.pem", "a.key");
    let built = |t: &ListenerTls| build_server(t, MtlsMode::Strict, at).unwrap().unwrap();
    let s = built(&t);
    assert_eq!(s.config.send_tls13_tickets, 2, "rustls's default");
    assert!(s.config.ticketer.enabled());
    t.session_tickets = Some(5);
    assert_eq!(built(&t).config.send_tls13_tickets, 5);
    t.session_tickets = Some(0);
    let s = built(&t);
    assert_eq!(s.config.send_tls13_tickets, 0);
    assert!(!s.config.ticketer.enabled(), "no TLS 1.2 tickets either");
    t.session_tickets = Some(17);
    let e = errors(build_server(&t, MtlsMode::Strict, at));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].0, "listeners[0].tls.session_tickets");
    assert!(e[0].1.contains("more than the 16 allowed"), "{}", e[0].1);

    let yaml = |v: &str| {
        format!(
            "listeners:\n  - name: l\n    address: 127.0.0.1:7443\n    cluster: c\n    tls: {{cert: /a, key: /b, session_tickets: {v}}}\nclusters:\n  - {{name: c, endpoints: [\"127.0.0.1:9\"]}}\n"
        )
    };
    let cfg = crate::config::parse(&yaml("3"), crate::config::Format::Yaml).unwrap();
    assert_eq!(
        cfg.listeners[0].tls.as_ref().unwrap().session_tickets,
        Some(3)
    );
    for bad in ["-1", "two", "1.5", "[2]", "4294967296"] {
        let e = crate::config::parse(&yaml(bad), crate::config::Format::Yaml).expect_err(bad);
        let text = format!("{e}");
        assert!(
            text.contains("line 5: listeners[0].tls.session_tickets:"),
            "{bad}: {text}"
        );
    }
}

/// A kernel-TLS side's control records (what `recvmsg` returns with a record type), on a
/// real rustls half after a real handshake; alerts we answer with go out through a plain
/// loopback socket (TCP ignores the record-type cmsg, so the peer reads them raw).
#[test]
fn kernel_side_control_records() {
    use super::kernel::{Control, KernelSide};
    use super::records::{alert, JobErrorKind, RecordError};
    use crate::proxy::l4::Side::Down;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let Some((mut t, _cr, c)) = handshaken(dir.path()) else {
        return;
    };
    let version = match c.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => tickmesh_offload::TlsVersion::Tls13,
        _ => tickmesh_offload::TlsVersion::Tls12,
    };
    assert_eq!(version, tickmesh_offload::TlsVersion::Tls13);
    let kernel = t.take_kernel(Down).expect("a record layer");
    let mut k = KernelSide::for_test(kernel, tickmesh_offload::CipherSuite::Aes256Gcm, version);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ours = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut peer, _) = l.accept().unwrap();
    peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let fd = ours.as_raw_fd();
    let mut sent = |k: &mut KernelSide| -> [u8; 2] {
        assert!(k.close_sent);
        k.close_sent = false;
        let mut a = [0u8; 2];
        peer.read_exact(&mut a).unwrap();
        a
    };
    const ALERT: u8 = 21;
    const HANDSHAKE: u8 = 22;
    // close_notify ends the stream; user_canceled is ignored; a fatal alert fails
    // without an answer.
    assert_eq!(k.handle(fd, ALERT, &[1, 0], true), Control::Closed);
    assert!(k.peer_closed);
    assert_eq!(k.handle(fd, ALERT, &[1, 90], true), Control::Again);
    assert_eq!(
        k.handle(fd, ALERT, &[2, 42], true),
        Control::Failed(RecordError::Received(42))
    );
    assert!(!k.close_sent);
    // A malformed alert, a malformed handshake message, a ticket from a client, a
    // HelloRequest on TLS 1.3 and an unknown record type: each answered with its alert.
    for (typ, body, desc) in [
        (ALERT, &[1u8][..], alert::DECODE_ERROR),
        (HANDSHAKE, &[24, 0, 0, 1, 5][..], alert::DECODE_ERROR),
        (HANDSHAKE, &[24, 0][..], alert::DECODE_ERROR),
        (HANDSHAKE, &[4, 0, 0, 0][..], alert::UNEXPECTED_MESSAGE),
        (HANDSHAKE, &[0, 0, 0, 0][..], alert::UNEXPECTED_MESSAGE),
        (99, &[1, 2][..], alert::UNEXPECTED_MESSAGE),
    ] {
        match k.handle(fd, typ, body, true) {
            Control::Failed(RecordError::Sent(d, _)) => assert_eq!(d, desc, "{typ} {body:?}"),
            other => panic!("{typ} {body:?}: {other:?}"),
        }
        assert_eq!(sent(&mut k), [2, desc], "{typ} {body:?}");
    }
    // Data returned by the control read is kept for the relay.
    assert_eq!(k.handle(fd, 23, b"late data", true), Control::Again);
    assert!(k.pending());
    let mut out = [0u8; 4];
    assert_eq!(k.read_plain(&mut out), Some(4));
    let mut rest = [0u8; 16];
    assert_eq!(k.read_plain(&mut rest), Some(5));
    assert_eq!(&rest[..5], b" data");
    assert!(!k.pending() && k.read_plain(&mut rest).is_none());
    // A KeyUpdate takes rustls's next key; a socket that cannot take it (here: no ULP)
    // fails the connection rather than reading on under the old key.
    let r = k.handle(fd, HANDSHAKE, &[24, 0, 0, 1, 1], false);
    assert_eq!(
        r,
        Control::Failed(RecordError::Sent(
            alert::INTERNAL_ERROR,
            JobErrorKind::Internal
        ))
    );
}

/// What the proxies share about kernel sides: the counters a hand-over attempt lands on,
/// what a failed receive means (`EIO` a control record, `EBADMSG` a bad record answered
/// with `bad_record_mac`, a reset a socket error), a clean end only after
/// `close_notify`, and parking with the socket only when quiet.
#[test]
fn kernel_sides_in_the_proxies() {
    use super::conn::{HandOver, KernelRecv, Tls};
    use super::kernel::{Control, Fallback, KernelSide};
    use super::records::{alert, JobErrorKind, RecordError};
    use crate::proxy::l4::Side::{Down, Up};
    use crate::telemetry::{ListenerCounter as L, UpstreamCounter as U};
    use std::io::Read;
    use std::os::fd::AsRawFd;

    assert_eq!(
        HandOver::Kernel.counters(),
        Some((L::TlsKtlsHandovers, U::TlsKtlsHandovers))
    );
    for why in [Fallback::Busy, Fallback::Ulp, Fallback::PartialRecord] {
        assert_eq!(
            HandOver::Fallback(why).counters(),
            Some((L::TlsKtlsFallbacks, U::TlsKtlsFallbacks))
        );
    }
    assert_eq!(
        HandOver::Engine.counters(),
        None,
        "nothing tried, nothing counted"
    );

    let dir = tempfile::tempdir().unwrap();
    let Some((mut hs, _cr, _c)) = handshaken(dir.path()) else {
        return;
    };
    let kernel = hs.take_kernel(Down).expect("a record layer");
    let side = KernelSide::for_test(
        kernel,
        tickmesh_offload::CipherSuite::Aes256Gcm,
        tickmesh_offload::TlsVersion::Tls13,
    );
    let mut t = Tls::empty();
    t.put_kernel(Up, side);
    assert!(t.is_kernel(Up) && t.protected(Up) && !t.has(Up));
    assert!(!t.protected(Down) && t.kernel_eof(Down).is_none());
    assert_eq!(t.kernel_eof(Up), Some(false), "an EOF without close_notify");

    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ours = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    ours.set_nonblocking(true).unwrap();
    let (mut peer, _) = l.accept().unwrap();
    peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let fd = ours.as_raw_fd();
    // EIO with no record to read (TCP here): nothing ready, nothing sent.
    assert!(matches!(
        t.kernel_recv_failed(Up, fd, libc::EIO, true),
        KernelRecv::Control(Control::Empty)
    ));
    assert!(matches!(
        t.kernel_recv_failed(Up, fd, libc::ECONNRESET, true),
        KernelRecv::Socket
    ));
    // Quiet: parks with its socket, and comes back as the same kernel side.
    let parked = t.park(Up).expect("quiet").expect("a session");
    assert!(!t.is_kernel(Up));
    t.unpark(Up, parked);
    assert!(t.is_kernel(Up));
    // EBADMSG: the kernel could not open a record; bad_record_mac goes to the peer.
    match t.kernel_recv_failed(Up, fd, libc::EBADMSG, true) {
        KernelRecv::Record(super::conn::FeedError::Record(RecordError::Sent(d, k))) => {
            assert_eq!(d, alert::BAD_RECORD_MAC);
            assert!(matches!(k, JobErrorKind::Job(_)));
        }
        other => panic!("{other:?}"),
    }
    let mut a = [0u8; 2];
    peer.read_exact(&mut a).unwrap();
    assert_eq!(
        a,
        [2, alert::BAD_RECORD_MAC],
        "TCP ignores the record type: raw"
    );
    assert!(t.park(Up).is_err(), "our alert went out: not reusable");
}
