//! The rustls seam end to end: a real in-memory rustls handshake (TLS 1.2 and 1.3, every
//! suite) with secret extraction enabled, then record protection moves to the engine.
//! Checks: a record rustls sealed before the hand-over opens in the engine with the
//! extracted rx keys and sequence number; records the client engine seals open in the
//! server engine and back. Certificates are made by the `openssl` CLI (Debian); without it
//! the test says so and skips.

#![cfg(feature = "rustls")]

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;

use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring::{cipher_suite as cs, default_provider};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, ServerConnection,
    SignatureScheme,
};
use tickmesh_offload::*;

/// Accepts the test's self-signed certificate; signatures are still verified. Record
/// protection, not authentication, is under test here.
#[derive(Debug)]
struct AcceptTestCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptTestCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn test_cert() -> Option<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let dir = std::env::temp_dir().join(format!("tickmesh-offload-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=offload.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    let out = match status {
        Ok(o) if o.status.success() => o,
        other => {
            eprintln!("SKIPPED: the openssl CLI could not make a test certificate ({other:?}); install Debian's openssl");
            return None;
        }
    };
    drop(out);
    let c = CertificateDer::from_pem_file(&cert).ok()?;
    let k = PrivateKeyDer::from_pem_file(&key).ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    Some((c, k))
}

/// Move TLS bytes between the two until neither has anything to say.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) {
    for _ in 0..64 {
        let mut moved = false;
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            moved = true;
            server.read_tls(&mut &buf[..]).unwrap();
            server.process_new_packets().unwrap();
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            moved = true;
            client.read_tls(&mut &buf[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        if !moved && !client.is_handshaking() && !server.is_handshaking() {
            return;
        }
    }
    panic!("handshake did not settle in 64 rounds");
}

#[test]
fn rustls_hands_records_over_to_the_engine() {
    let Some((cert, key)) = test_cert() else {
        return;
    };
    let cases = [
        (
            TlsVersion::Tls13,
            cs::TLS13_AES_128_GCM_SHA256,
            CipherSuite::Aes128Gcm,
        ),
        (
            TlsVersion::Tls13,
            cs::TLS13_AES_256_GCM_SHA384,
            CipherSuite::Aes256Gcm,
        ),
        (
            TlsVersion::Tls13,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            CipherSuite::Chacha20Poly1305,
        ),
        (
            TlsVersion::Tls12,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            CipherSuite::Aes128Gcm,
        ),
        (
            TlsVersion::Tls12,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            CipherSuite::Aes256Gcm,
        ),
        (
            TlsVersion::Tls12,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            CipherSuite::Chacha20Poly1305,
        ),
    ];
    for (version, rustls_suite, suite) in cases {
        let provider = Arc::new(CryptoProvider {
            cipher_suites: vec![rustls_suite],
            ..default_provider()
        });
        let versions: &[&rustls::SupportedProtocolVersion] = match version {
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
            _ => &[&rustls::version::TLS12],
        };
        let mut sc = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key.clone_key())
            .unwrap();
        sc.enable_secret_extraction = true;
        let mut cc = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptTestCert(provider.clone())))
            .with_no_client_auth();
        cc.enable_secret_extraction = true;
        let mut client =
            ClientConnection::new(Arc::new(cc), ServerName::try_from("offload.test").unwrap())
                .unwrap();
        let mut server = ServerConnection::new(Arc::new(sc)).unwrap();
        pump(&mut client, &mut server);
        // One application record through rustls both ways, so sequence numbers are not 0.
        client.writer().write_all(b"ping").unwrap();
        server.writer().write_all(b"pong").unwrap();
        pump(&mut client, &mut server);
        let mut got = [0u8; 4];
        server.reader().read_exact(&mut got).unwrap();
        client.reader().read_exact(&mut got).unwrap();
        // A record rustls seals but the client never sees: the engine must open it.
        server.writer().write_all(b"sealed by rustls").unwrap();
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        let v = client.protocol_version().and_then(rustls_keys::tls_version);
        assert_eq!(v, Some(version));
        let cs_secrets = client.dangerous_extract_secrets().unwrap();
        let ss_secrets = server.dangerous_extract_secrets().unwrap();
        let cp = SessionParams::from_rustls(version, &cs_secrets, 0).unwrap();
        let sp = SessionParams::from_rustls(version, &ss_secrets, 0).unwrap();
        assert_eq!(cp.suite, suite);
        assert!(
            cp.tx.seq >= 1 && cp.rx.seq >= 1,
            "{version} {suite}: rustls records counted"
        );

        for choice in backends() {
            let mut ce = engine(choice);
            let mut se = engine(choice);
            let cid = ce.create_session(&cp).unwrap();
            let sid = se.create_session(&sp).unwrap();
            assert_eq!(
                open_one(&mut ce, cid, &wire),
                Ok((ContentType::ApplicationData, b"sealed by rustls".to_vec())),
                "{choice:?} {version} {suite}: open a rustls record"
            );
            let up = seal_records(&mut ce, cid, &[b"client via engine".to_vec()]).remove(0);
            assert_eq!(
                open_one(&mut se, sid, &up),
                Ok((ContentType::ApplicationData, b"client via engine".to_vec()))
            );
            // The server engine's first record picks up after rustls's last one.
            let down = seal_records(&mut se, sid, &[b"server via engine".to_vec()]).remove(0);
            assert_eq!(
                open_one(&mut ce, cid, &down),
                Ok((ContentType::ApplicationData, b"server via engine".to_vec()))
            );
        }
    }
}
