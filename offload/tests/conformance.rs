//! Record conformance, run once per backend: RFC 8448 test vectors, byte-identical output
//! across backends, and a cross-check against rustls's own record layer.

mod common;

use common::*;
use tickmesh_offload::*;

// RFC 8448 §3 "Simple 1-RTT Handshake" (TLS_AES_128_GCM_SHA256): the server's application
// write key and IV, and the 50-byte application-data payload (bytes 00..31) the server
// sends as its second protected application-traffic record (sequence number 1; record 0 is
// its NewSessionTicket), and the client's first one (sequence number 0). Values are taken
// from the RFC's text, "{server} send application_data record" / "{client} send
// application_data record".
const RFC8448_SERVER_AP_KEY: &str = "9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56";
const RFC8448_SERVER_AP_IV: &str = "cf 78 2b 88 dd 83 54 9a ad f1 e9 84";
const RFC8448_SERVER_APP_RECORD: &str =
    "17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4
    a4 69 32 fc 32 25 d0 5f 82 aa 1b 36 e3 0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8 fc c4
    9c 4b f2 e5 f0 a2 1c 00 47 c2 ab f3 32 54 0d d0 32 e1 67 c2 95 5d";
const RFC8448_CLIENT_AP_KEY: &str = "17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51";
const RFC8448_CLIENT_AP_IV: &str = "5b 78 92 3d ee 08 57 90 33 e5 23 d9";
const RFC8448_CLIENT_APP_RECORD: &str =
    "17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28 ba 55
    cb ef ac ea 42 f9 14 aa 66 bc ab 3f 2b 98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b 62 97
    4e 1f 5a 62 92 a2 97 70 14 bd 1e 3d ea e6 3a ee bb 21 69 49 15 e4";

fn rfc8448_payload() -> Vec<u8> {
    (0u8..0x32).collect()
}

fn rfc8448_case(key: &str, iv: &str, seq: u64, record: &str) {
    let key = hex(key);
    let iv: [u8; 12] = hex(iv).try_into().unwrap();
    let expected = hex(record);
    for choice in backends() {
        let mut e = engine(choice);
        let id = e
            .create_session(&params(
                TlsVersion::Tls13,
                CipherSuite::Aes128Gcm,
                &key,
                iv,
                seq,
                seq,
            ))
            .unwrap();
        let got = seal_records(&mut e, id, &[rfc8448_payload()]);
        assert_eq!(
            got[0],
            expected,
            "seal through {choice:?} ({})",
            e.backend()
        );
        let opened = open_one(&mut e, id, &expected).unwrap();
        assert_eq!(
            opened,
            (ContentType::ApplicationData, rfc8448_payload()),
            "open through {choice:?}"
        );
    }
}

#[test]
fn rfc8448_server_application_record_every_backend() {
    rfc8448_case(
        RFC8448_SERVER_AP_KEY,
        RFC8448_SERVER_AP_IV,
        1,
        RFC8448_SERVER_APP_RECORD,
    );
}

#[test]
fn rfc8448_client_application_record_every_backend() {
    rfc8448_case(
        RFC8448_CLIENT_AP_KEY,
        RFC8448_CLIENT_AP_IV,
        0,
        RFC8448_CLIENT_APP_RECORD,
    );
}

fn payloads() -> Vec<Vec<u8>> {
    [0usize, 1, 64, 1000, 1024, 4096, MAX_PLAINTEXT]
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (j * 31 + i) as u8).collect())
        .collect()
}

#[test]
fn every_backend_produces_identical_records_and_opens_them() {
    let payloads = payloads();
    for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
        for suite in CipherSuite::ALL {
            let key = test_key(suite);
            let mut reference: Option<Vec<Vec<u8>>> = None;
            for choice in backends() {
                let mut e = engine(choice);
                let id = e
                    .create_session(&params(version, suite, &key, TEST_IV, 1000, 1000))
                    .unwrap();
                let records = seal_records(&mut e, id, &payloads);
                for (r, p) in records.iter().zip(&payloads) {
                    let body = r.len() - 5;
                    assert_eq!(u16::from_be_bytes([r[3], r[4]]) as usize, body);
                    assert!(body > p.len(), "ciphertext expands the payload");
                }
                match &reference {
                    None => reference = Some(records.clone()),
                    Some(want) => assert_eq!(&records, want, "{choice:?} {version} {suite}"),
                }
                // Open them back, as a batch, in order.
                for (i, r) in records.iter().enumerate() {
                    e.submit_open(id, i as u64, r).unwrap();
                }
                let done = complete_all(&mut e);
                for (d, p) in done.iter().zip(&payloads) {
                    assert_eq!(d.result, Ok((ContentType::ApplicationData, p.clone())));
                    assert_eq!(d.op, Op::Open);
                }
            }
        }
    }
}

#[test]
fn content_types_survive_the_round_trip() {
    for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
        for choice in backends() {
            let mut e = engine(choice);
            let id = e
                .create_session(&params(
                    version,
                    CipherSuite::Aes256Gcm,
                    &test_key(CipherSuite::Aes256Gcm),
                    TEST_IV,
                    0,
                    0,
                ))
                .unwrap();
            let types = [
                ContentType::Alert,
                ContentType::Handshake,
                ContentType::ApplicationData,
            ];
            for (i, t) in types.iter().enumerate() {
                e.submit_seal(id, i as u64, *t, &[1, 0]).unwrap();
            }
            let sealed = complete_all(&mut e);
            for (i, d) in sealed.iter().enumerate() {
                let (t, rec) = d.result.clone().unwrap();
                assert_eq!(t, types[i]);
                let outer = if version == TlsVersion::Tls13 {
                    23
                } else {
                    types[i] as u8
                };
                assert_eq!(rec[0], outer, "outer type {version}");
                assert_eq!(open_one(&mut e, id, &rec), Ok((types[i], vec![1, 0])));
            }
        }
    }
}

#[test]
fn sequence_numbers_follow_submission_order_and_key_updates() {
    for choice in backends() {
        let mut e = engine(choice);
        let key = test_key(CipherSuite::Chacha20Poly1305);
        let p = params(
            TlsVersion::Tls13,
            CipherSuite::Chacha20Poly1305,
            &key,
            TEST_IV,
            7,
            7,
        );
        let id = e.create_session(&p).unwrap();
        for i in 0..3 {
            e.submit_seal(id, i, ContentType::ApplicationData, b"x")
                .unwrap();
        }
        // KeyUpdate while those are in flight: they keep the old key.
        let new_key = vec![0x33; 32];
        let new_tx =
            TrafficKeys::new(CipherSuite::Chacha20Poly1305, &new_key, [0x44; 12], 0).unwrap();
        e.update_keys(id, Direction::Tx, &new_tx).unwrap();
        e.submit_seal(id, 3, ContentType::ApplicationData, b"y")
            .unwrap();
        let done = complete_all(&mut e);
        let seqs: Vec<u64> = done.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, vec![7, 8, 9, 0]);
        // Old-key records open under the old rx keys at 7..9; the new one under new keys.
        for d in &done[..3] {
            assert!(open_one(&mut e, id, &d.result.clone().unwrap().1).is_ok());
        }
        e.update_keys(id, Direction::Rx, &new_tx).unwrap();
        assert_eq!(
            open_one(&mut e, id, &done[3].result.clone().unwrap().1),
            Ok((ContentType::ApplicationData, b"y".to_vec()))
        );
        assert_eq!(e.sequence_numbers(id), Some((1, 1)));
    }
}

// === cross-check against rustls's record layer ===
//
// rustls's public `AeadKey` constructor takes 32 bytes, so the 256-bit suites are checked
// here (AES-128-GCM is pinned by the RFC 8448 vectors above).

mod rustls_xcheck {
    use super::*;
    use rustls::crypto::cipher::{
        AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, MessageEncrypter, OutboundChunks,
        OutboundPlainMessage,
    };
    use rustls::crypto::ring::cipher_suite as cs;
    use rustls::{ContentType as RContentType, ProtocolVersion, SupportedCipherSuite};

    fn rustls_pair(
        version: TlsVersion,
        suite: CipherSuite,
        key: &[u8],
        iv: [u8; 12],
    ) -> (Box<dyn MessageEncrypter>, Box<dyn MessageDecrypter>) {
        let k = || AeadKey::from(<[u8; 32]>::try_from(key).unwrap());
        let scs = match (version, suite) {
            (TlsVersion::Tls13, CipherSuite::Aes256Gcm) => cs::TLS13_AES_256_GCM_SHA384,
            (TlsVersion::Tls13, CipherSuite::Chacha20Poly1305) => {
                cs::TLS13_CHACHA20_POLY1305_SHA256
            }
            (TlsVersion::Tls12, CipherSuite::Aes256Gcm) => {
                cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
            }
            (TlsVersion::Tls12, CipherSuite::Chacha20Poly1305) => {
                cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            }
            _ => unreachable!("only 256-bit suites are cross-checked"),
        };
        match scs {
            SupportedCipherSuite::Tls13(s) => (
                s.aead_alg.encrypter(k(), Iv::from(iv)),
                s.aead_alg.decrypter(k(), Iv::from(iv)),
            ),
            SupportedCipherSuite::Tls12(s) => {
                // GCM: implicit salt (4) + explicit part (8); ChaCha: the whole 12-byte IV.
                let (fixed, extra) = if suite == CipherSuite::Chacha20Poly1305 {
                    (&iv[..], &[][..])
                } else {
                    (&iv[..4], &iv[4..])
                };
                (
                    s.aead_alg.encrypter(k(), fixed, extra),
                    s.aead_alg.decrypter(k(), fixed),
                )
            }
        }
    }

    #[test]
    fn records_match_rustls_both_ways() {
        for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
            for suite in [CipherSuite::Aes256Gcm, CipherSuite::Chacha20Poly1305] {
                let key = test_key(suite);
                let (mut enc, mut dec) = rustls_pair(version, suite, &key, TEST_IV);
                let start_seq = 0xfffe_0000_0000_0010u64;
                let payloads = payloads();
                let want: Vec<Vec<u8>> = payloads
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let msg = OutboundPlainMessage {
                            typ: RContentType::ApplicationData,
                            version: ProtocolVersion::TLSv1_2,
                            payload: OutboundChunks::Single(p),
                        };
                        enc.encrypt(msg, start_seq + i as u64).unwrap().encode()
                    })
                    .collect();
                for choice in backends() {
                    let mut e = engine(choice);
                    let id = e
                        .create_session(&params(
                            version, suite, &key, TEST_IV, start_seq, start_seq,
                        ))
                        .unwrap();
                    let ours = seal_records(&mut e, id, &payloads);
                    assert_eq!(ours, want, "{choice:?} {version} {suite} vs rustls");
                }
                // rustls opens ours (they are equal, but check the decrypt side too).
                for (i, (rec, p)) in want.iter().zip(&payloads).enumerate() {
                    let mut buf = rec[5..].to_vec();
                    let typ = RContentType::from(rec[0]);
                    let msg = InboundOpaqueMessage::new(typ, ProtocolVersion::TLSv1_2, &mut buf);
                    let plain = dec.decrypt(msg, start_seq + i as u64).unwrap();
                    assert_eq!(plain.payload, &p[..]);
                }
            }
        }
    }
}
