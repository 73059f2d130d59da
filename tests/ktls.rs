//! Kernel TLS hand-over through the L4 proxy (`offload.backend: ktls`), per engine.
//!
//! Where the kernel has the `tls` module, each TLS side's keys go to the socket after the
//! handshake and the bytes below cross it in plaintext. Where it has not (this project's
//! VMs), the test binary sets `TICKMESH_KTLS_ASSUME_AVAILABLE=1`, so every connection
//! tries the hand-over for real — rustls's last handshake bytes go out raw, records that
//! came with the client's Finished are opened — until the kernel refuses the ULP, and
//! then continues on the offload engine's ring: the per-connection fallback, end to end.
//! Its own binary because the variable is process-wide.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::sync::Arc;

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

fn hand_over_or_fall_back(kind: EngineKind) {
    // The kernel's own list (the probe would also see the variable another test set).
    let real = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .is_ok_and(|l| l.split_whitespace().any(|u| u == "tls"));
    if !real {
        // SAFETY of the test: every test in this binary sets the same value.
        std::env::set_var(tickmesh_offload::ktls::ASSUME_ENV, "1");
        eprintln!(
            "NOTE hand_over_or_fall_back: no kernel tls module here; the hand-over runs until \
             the kernel refuses the ULP, then the ring takes over (the kernel path itself is \
             only exercised on hosts with the module)"
        );
    }
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

per_engine!(hand_over_or_fall_back);
