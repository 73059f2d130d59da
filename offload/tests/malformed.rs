//! Bad input and limits, each reported per job (or per submission for back-pressure),
//! never a panic — run once per backend.

mod common;

use common::*;
use tickmesh_offload::*;

fn session(e: &mut Engine, version: TlsVersion, suite: CipherSuite) -> SessionId {
    e.create_session(&params(version, suite, &test_key(suite), TEST_IV, 0, 0))
        .unwrap()
}

fn each_format(mut f: impl FnMut(BackendChoice, TlsVersion, CipherSuite)) {
    for choice in backends() {
        for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
            for suite in CipherSuite::ALL {
                f(choice, version, suite);
            }
        }
    }
}

/// A sealed record from a fresh session at sequence 0.
fn good_record(e: &mut Engine, id: SessionId, payload: &[u8]) -> Vec<u8> {
    seal_records(e, id, &[payload.to_vec()]).remove(0)
}

#[test]
fn flipped_bits_fail_authentication_per_job() {
    each_format(|choice, version, suite| {
        let mut e = engine(choice);
        let sealer = session(&mut e, version, suite);
        let rec = good_record(&mut e, sealer, b"attack at dawn");
        // Flip one bit in the tag, the ciphertext, and (1.2 GCM) the explicit nonce; submit
        // them as one batch together with the intact record, each on a fresh session.
        let positions = [rec.len() - 1, rec.len() - 17, 5];
        let mut ids = Vec::new();
        for (tag, &pos) in positions.iter().enumerate() {
            let id = session(&mut e, version, suite);
            let mut bad = rec.clone();
            bad[pos] ^= 0x01;
            e.submit_open(id, tag as u64, &bad).unwrap();
            ids.push(id);
        }
        let ok = session(&mut e, version, suite);
        e.submit_open(ok, 99, &rec).unwrap();
        let done = complete_all(&mut e);
        for d in &done[..3] {
            assert_eq!(
                d.result,
                Err(JobError::BadRecordMac),
                "{choice:?} {version} {suite} tag {}",
                d.tag
            );
        }
        assert_eq!(
            done[3].result,
            Ok((ContentType::ApplicationData, b"attack at dawn".to_vec()))
        );
    });
}

#[test]
fn header_tampering_is_caught() {
    for choice in backends() {
        for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
            let suite = CipherSuite::Aes128Gcm;
            let mut e = engine(choice);
            let s = session(&mut e, version, suite);
            let rec = good_record(&mut e, s, b"hello");
            // Version byte.
            let mut bad = rec.clone();
            bad[2] = 0x01;
            let id = session(&mut e, version, suite);
            assert_eq!(open_one(&mut e, id, &bad), Err(JobError::BadVersion));
            // Outer type: 1.3 requires application_data; in 1.2 the type is in the AAD.
            let mut bad = rec.clone();
            bad[0] = 22;
            let id = session(&mut e, version, suite);
            let want = match version {
                TlsVersion::Tls13 => JobError::BadContentType,
                _ => JobError::BadRecordMac,
            };
            assert_eq!(open_one(&mut e, id, &bad), Err(want));
            let mut bad = rec.clone();
            bad[0] = 99;
            let id = session(&mut e, version, suite);
            assert_eq!(open_one(&mut e, id, &bad), Err(JobError::BadContentType));
        }
    }
}

#[test]
fn truncated_and_overlong_records() {
    each_format(|choice, version, suite| {
        let mut e = engine(choice);
        let s = session(&mut e, version, suite);
        let rec = good_record(&mut e, s, b"0123456789");
        for cut in 0..rec.len() {
            let id = session(&mut e, version, suite);
            assert_eq!(
                open_one(&mut e, id, &rec[..cut]),
                Err(JobError::Truncated),
                "cut at {cut}"
            );
            e.destroy_session(id).unwrap();
        }
        // A header whose length is too small to hold even a tag.
        let mut short = rec[..5].to_vec();
        short[3..5].copy_from_slice(&3u16.to_be_bytes());
        short.extend_from_slice(&[0, 0, 0]);
        let id = session(&mut e, version, suite);
        assert_eq!(open_one(&mut e, id, &short), Err(JobError::Truncated));
        // Trailing bytes after the record.
        let mut long = rec.clone();
        long.push(0);
        let id = session(&mut e, version, suite);
        assert_eq!(open_one(&mut e, id, &long), Err(JobError::LengthMismatch));
    });
}

#[test]
fn oversized_records_and_payloads() {
    for choice in backends() {
        for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
            let mut e = engine(choice);
            let id = session(&mut e, version, CipherSuite::Aes256Gcm);
            // Header says 2^14 + 257 bytes: over the RFC 8446 §5.2 limit.
            let body = MAX_PLAINTEXT + 257;
            let mut rec = vec![23, 3, 3, (body >> 8) as u8, body as u8];
            rec.resize(5 + body, 0xee);
            assert_eq!(open_one(&mut e, id, &rec), Err(JobError::RecordOverflow));
            // More bytes than any record may have.
            let huge = vec![23u8; MAX_RECORD + 100];
            assert_eq!(open_one(&mut e, id, &huge), Err(JobError::RecordOverflow));
            // Seal: one byte over 2^14 is refused, exactly 2^14 is fine.
            e.submit_seal(
                id,
                1,
                ContentType::ApplicationData,
                &vec![0; MAX_PLAINTEXT + 1],
            )
            .unwrap();
            e.submit_seal(id, 2, ContentType::ApplicationData, &vec![0; MAX_PLAINTEXT])
                .unwrap();
            let done = complete_all(&mut e);
            assert_eq!(done[0].result, Err(JobError::RecordOverflow));
            assert!(done[1].result.is_ok());
            // The refused job did not consume a sequence number.
            assert_eq!(done[1].seq, 0);
        }
    }
}

/// TLS 1.3 records built by hand with `ring` so the inner plaintext can be anything.
fn raw_tls13_record(inner: &[u8], seq: u64) -> Vec<u8> {
    use ring::aead;
    let suite = CipherSuite::Aes128Gcm;
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_128_GCM, &test_key(suite)).unwrap(),
    );
    let mut nonce = TEST_IV;
    for (b, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    let len = (inner.len() + 16) as u16;
    let header = [23, 3, 3, (len >> 8) as u8, len as u8];
    let mut body = inner.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(header),
        &mut body,
    )
    .unwrap();
    let mut rec = header.to_vec();
    rec.extend_from_slice(&body);
    rec
}

#[test]
fn tls13_inner_content_type_and_padding() {
    for choice in backends() {
        let mut e = engine(choice);
        let v = TlsVersion::Tls13;
        let s = CipherSuite::Aes128Gcm;
        // Padding is stripped.
        let id = session(&mut e, v, s);
        assert_eq!(
            open_one(&mut e, id, &raw_tls13_record(b"hi\x17\0\0\0\0", 0)),
            Ok((ContentType::ApplicationData, b"hi".to_vec()))
        );
        // All zeros: no content type at all.
        let id = session(&mut e, v, s);
        assert_eq!(
            open_one(&mut e, id, &raw_tls13_record(&[0; 8], 0)),
            Err(JobError::BadContentType)
        );
        // change_cipher_spec and unknown types may not be protected.
        for t in [20u8, 24, 0x7f] {
            let id = session(&mut e, v, s);
            assert_eq!(
                open_one(&mut e, id, &raw_tls13_record(&[1, 2, t], 0)),
                Err(JobError::BadContentType)
            );
        }
        // Inner plaintext over 2^14 + 1 bytes (padding included).
        let id = session(&mut e, v, s);
        let mut inner = vec![0u8; MAX_PLAINTEXT + 2];
        inner[0] = 23;
        assert_eq!(
            open_one(&mut e, id, &raw_tls13_record(&inner, 0)),
            Err(JobError::RecordOverflow)
        );
        // Sealing change_cipher_spec is refused.
        let id = session(&mut e, v, s);
        e.submit_seal(id, 0, ContentType::ChangeCipherSpec, b"\x01")
            .unwrap();
        assert_eq!(
            complete_all(&mut e)[0].result,
            Err(JobError::BadContentType)
        );
    }
}

#[test]
fn sequence_numbers_exhaust_instead_of_wrapping() {
    for choice in backends() {
        for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
            let mut e = engine(choice);
            let suite = CipherSuite::Chacha20Poly1305;
            let last = u64::MAX - 1;
            let id = e
                .create_session(&params(
                    version,
                    suite,
                    &test_key(suite),
                    TEST_IV,
                    last,
                    last,
                ))
                .unwrap();
            for tag in 0..3 {
                e.submit_seal(id, tag, ContentType::ApplicationData, b"z")
                    .unwrap();
            }
            let done = complete_all(&mut e);
            assert_eq!(done[0].seq, last);
            let rec = done[0].result.clone().unwrap().1;
            assert_eq!(done[1].result, Err(JobError::SequenceExhausted));
            assert_eq!(done[2].result, Err(JobError::SequenceExhausted));
            assert!(open_one(&mut e, id, &rec).is_ok());
            assert_eq!(open_one(&mut e, id, &rec), Err(JobError::SequenceExhausted));
            // A KeyUpdate resets the counter and the session works again.
            let k = TrafficKeys::new(suite, &[9; 32], [1; 12], 0).unwrap();
            e.update_keys(id, Direction::Tx, &k).unwrap();
            assert!(seal_records(&mut e, id, &[b"again".to_vec()])[0].len() > 5);
        }
    }
}

#[test]
fn ring_full_is_backpressure_not_loss() {
    for choice in backends() {
        let mut e = engine_with(choice, 4, 100);
        let id = session(&mut e, TlsVersion::Tls13, CipherSuite::Aes128Gcm);
        for tag in 0..4 {
            e.submit_seal(id, tag, ContentType::ApplicationData, b"a")
                .unwrap();
        }
        assert_eq!(
            e.submit_seal(id, 4, ContentType::ApplicationData, b"a"),
            Err(SubmitError::RingFull)
        );
        assert_eq!(e.submit_open(id, 4, b"x"), Err(SubmitError::RingFull));
        assert_eq!(e.stats().submit_refused, 2);
        let done = complete_all(&mut e);
        assert_eq!(done.len(), 4);
        assert!(done.iter().all(|d| d.result.is_ok()));
        // The refused submissions consumed no sequence numbers.
        assert_eq!(
            done.iter().map(|d| d.seq).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        e.submit_seal(id, 5, ContentType::ApplicationData, b"a")
            .unwrap();
        assert_eq!(complete_all(&mut e)[0].seq, 4);
    }
}

#[test]
fn per_session_in_flight_limit() {
    for choice in backends() {
        let mut e = engine_with(choice, 16, 2);
        let slow = session(&mut e, TlsVersion::Tls13, CipherSuite::Aes128Gcm);
        let other = session(&mut e, TlsVersion::Tls13, CipherSuite::Aes128Gcm);
        e.submit_seal(slow, 0, ContentType::ApplicationData, b"1")
            .unwrap();
        e.submit_seal(slow, 1, ContentType::ApplicationData, b"2")
            .unwrap();
        assert_eq!(
            e.submit_seal(slow, 2, ContentType::ApplicationData, b"3"),
            Err(SubmitError::InFlightLimit)
        );
        // Other sessions are unaffected.
        e.submit_seal(other, 3, ContentType::ApplicationData, b"4")
            .unwrap();
        assert_eq!(complete_all(&mut e).len(), 3);
        // Reaping frees the session's budget.
        e.submit_seal(slow, 4, ContentType::ApplicationData, b"5")
            .unwrap();
        assert_eq!(complete_all(&mut e)[0].seq, 2);
    }
}

#[test]
fn unknown_stale_and_destroyed_sessions() {
    for choice in backends() {
        let mut e = engine(choice);
        let id = session(&mut e, TlsVersion::Tls13, CipherSuite::Aes128Gcm);
        e.submit_seal(id, 0, ContentType::ApplicationData, b"in flight")
            .unwrap();
        e.destroy_session(id).unwrap();
        assert_eq!(e.destroy_session(id), Err(SessionError::UnknownSession));
        assert_eq!(
            e.submit_seal(id, 1, ContentType::ApplicationData, b"x"),
            Err(SubmitError::UnknownSession)
        );
        // The slot is reused; the old id must not reach the new session.
        let new = session(&mut e, TlsVersion::Tls13, CipherSuite::Aes128Gcm);
        assert_ne!(new, id);
        assert_eq!(e.submit_open(id, 2, b"x"), Err(SubmitError::UnknownSession));
        // The in-flight job still completes, under the keys it was submitted with.
        let done = complete_all(&mut e);
        assert_eq!(done.len(), 1);
        assert!(done[0].result.is_ok());
        assert_eq!(e.stats().sessions, 1);
    }
}

#[test]
fn bad_session_parameters_are_control_errors() {
    assert!(matches!(
        TrafficKeys::new(CipherSuite::Aes128Gcm, &[0; 32], [0; 12], 0),
        Err(SessionError::KeyLength {
            expected: 16,
            got: 32,
            ..
        })
    ));
    let mut e = engine_with(BackendChoice::Software, 4, 4);
    for _ in 0..16 {
        session(&mut e, TlsVersion::Tls13, CipherSuite::Aes128Gcm);
    }
    assert!(matches!(
        e.create_session(&params(
            TlsVersion::Tls13,
            CipherSuite::Aes128Gcm,
            &[0; 16],
            [0; 12],
            0,
            0
        )),
        Err(SessionError::TableFull(16))
    ));
}

#[test]
fn backend_selection_is_explained() {
    let e = engine(BackendChoice::Auto);
    assert!(
        e.backend_reason().starts_with("auto:"),
        "{}",
        e.backend_reason()
    );
    let e = engine(BackendChoice::Ktls);
    if ktls::probe().available {
        assert_eq!(e.backend(), BackendKind::Ktls);
        assert!(e.ktls_enabled());
    } else {
        assert_eq!(e.backend(), BackendKind::SoftwareInline);
        assert!(
            e.backend_reason().contains("lacks the tls module"),
            "{}",
            e.backend_reason()
        );
    }
    let err = Engine::new(EngineConfig {
        backend: BackendChoice::Cryptodev,
        ..Default::default()
    });
    if cfg!(feature = "dpdk") {
        // tests/cryptodev.rs covers the backend itself.
        drop(err);
    } else {
        assert!(matches!(
            err,
            Err(EngineError::Backend(BackendError::CryptodevNotBuilt))
        ));
    }
    assert_eq!(
        "software-threaded".parse(),
        Ok(BackendChoice::SoftwareThreaded { cpu: None })
    );
    assert!("dpu"
        .parse::<BackendChoice>()
        .unwrap_err()
        .contains("expected auto"));
}

#[test]
fn calibration_measures_software_backends() {
    for choice in [
        BackendChoice::Software,
        BackendChoice::SoftwareThreaded { cpu: None },
    ] {
        let ns = calibrate(choice, 1024, 256).unwrap();
        assert!(ns.is_finite() && ns > 0.0, "{choice:?}: {ns}");
    }
}
