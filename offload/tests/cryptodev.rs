//! The DPDK cryptodev backend against the software backend: byte-identical records (seal
//! and open, several sizes, TLS 1.3 and both TLS 1.2 nonce forms), per-job errors, and
//! many jobs in flight in bursts. Runs with `--features dpdk` on a virtual device in
//! `--no-huge` mode (crypto_openssl unless `TICKMESH_CRYPTODEV` names another driver);
//! the EAL starts once for this test process. Skips with a message where DPDK cannot
//! start (no PMD, no memory).

#![cfg(feature = "dpdk")]

mod common;

use common::*;
use tickmesh_offload::*;

/// A cryptodev engine, or `None` (with the reason printed) where this host cannot run one.
fn cryptodev_engine(slots: usize, batch: usize) -> Option<Engine> {
    use_test_driver();
    match Engine::new(EngineConfig {
        backend: BackendChoice::Cryptodev,
        slots,
        batch,
        default_in_flight_limit: slots as u32,
        max_sessions: 64,
    }) {
        Ok(e) => {
            assert_eq!(e.backend(), BackendKind::Cryptodev);
            Some(e)
        }
        Err(e) => {
            eprintln!("SKIP: the cryptodev backend cannot start on this host: {e}");
            None
        }
    }
}

fn software_engine(slots: usize) -> Engine {
    Engine::new(EngineConfig {
        backend: BackendChoice::Software,
        slots,
        batch: 32,
        default_in_flight_limit: slots as u32,
        max_sessions: 64,
    })
    .unwrap()
}

const SIZES: [usize; 7] = [0, 1, 15, 64, 1024, 4000, MAX_PLAINTEXT];

/// Every suite, both versions (TLS 1.2 AES-GCM carries the RFC 5288 explicit nonce,
/// TLS 1.2 ChaCha20 and TLS 1.3 use IV ⊕ seq), starting at a non-zero sequence number.
#[test]
fn seal_and_open_are_byte_identical_to_software() {
    let Some(mut dev) = cryptodev_engine(64, 32) else {
        return;
    };
    let mut sw = software_engine(64);
    for version in [TlsVersion::Tls13, TlsVersion::Tls12] {
        for suite in CipherSuite::ALL {
            let before = backend::cryptodev::device_ops();
            let p = params(version, suite, &test_key(suite), TEST_IV, 1000, 1000);
            let d = dev.create_session(&p).unwrap();
            let s = sw.create_session(&p).unwrap();
            let payloads: Vec<Vec<u8>> = SIZES
                .iter()
                .map(|&n| (0..n).map(|i| (i * 31 + n) as u8).collect())
                .collect();
            let from_dev = seal_records(&mut dev, d, &payloads);
            let from_sw = seal_records(&mut sw, s, &payloads);
            assert_eq!(from_dev.len(), SIZES.len());
            for (i, (a, b)) in from_dev.iter().zip(&from_sw).enumerate() {
                assert_eq!(a, b, "{version} {suite} {} B: records differ", SIZES[i]);
            }
            // Open on the device what software sealed (identical anyway) and vice versa.
            for (i, rec) in from_sw.iter().enumerate() {
                dev.submit_open(d, i as u64, rec).unwrap();
            }
            for (i, done) in complete_all(&mut dev).into_iter().enumerate() {
                let (ct, plain) = done.result.expect("device opens the record");
                assert_eq!(ct, ContentType::ApplicationData);
                assert_eq!(plain, payloads[i], "{version} {suite} {} B", SIZES[i]);
            }
            for rec in &from_dev {
                sw.submit_open(s, 0, rec).unwrap();
            }
            assert!(complete_all(&mut sw).iter().all(|d| d.result.is_ok()));
            let on_device = backend::cryptodev::device_ops() - before;
            eprintln!("{version} {suite}: {on_device} ops on the device");
            if suite != CipherSuite::Chacha20Poly1305 {
                // AES-GCM is offered by every driver here: it must not fall back.
                assert!(
                    on_device >= 2 * SIZES.len() as u64,
                    "{version} {suite}: only {on_device} ops went through the device"
                );
            }
            dev.destroy_session(d).unwrap();
            sw.destroy_session(s).unwrap();
        }
    }
}

/// Handshake and alert records keep their content type through the device (TLS 1.3
/// hides it inside the ciphertext; TLS 1.2 puts it in the header and the AAD).
#[test]
fn content_types_round_trip_through_the_device() {
    let Some(mut dev) = cryptodev_engine(16, 8) else {
        return;
    };
    for version in [TlsVersion::Tls13, TlsVersion::Tls12] {
        let suite = CipherSuite::Aes256Gcm;
        let d = dev
            .create_session(&params(version, suite, &test_key(suite), TEST_IV, 0, 0))
            .unwrap();
        for (tag, ct) in [ContentType::Handshake, ContentType::Alert]
            .into_iter()
            .enumerate()
        {
            dev.submit_seal(d, tag as u64, ct, b"\x01\x00").unwrap();
        }
        let recs: Vec<Vec<u8>> = complete_all(&mut dev)
            .into_iter()
            .map(|d| d.result.unwrap().1)
            .collect();
        for r in &recs {
            dev.submit_open(d, 0, r).unwrap();
        }
        let opened: Vec<ContentType> = complete_all(&mut dev)
            .into_iter()
            .map(|d| d.result.unwrap().0)
            .collect();
        assert_eq!(
            opened,
            [ContentType::Handshake, ContentType::Alert],
            "{version}"
        );
    }
}

/// In one burst, a record with a flipped tag bit fails alone (bad_record_mac) and a
/// truncated one fails alone (Truncated); the others in the burst open.
#[test]
fn bad_tag_and_truncation_are_reported_per_job() {
    let Some(mut dev) = cryptodev_engine(32, 32) else {
        return;
    };
    for version in [TlsVersion::Tls13, TlsVersion::Tls12] {
        let suite = CipherSuite::Aes128Gcm;
        let d = dev
            .create_session(&params(version, suite, &test_key(suite), TEST_IV, 0, 0))
            .unwrap();
        let payloads: Vec<Vec<u8>> = (0..6).map(|i| vec![i as u8; 100 + i]).collect();
        let mut recs = seal_records(&mut dev, d, &payloads);
        let last = recs[2].len() - 1;
        recs[2][last] ^= 0x01; // tag bit
        let cut = recs[4].len() - 3;
        recs[4].truncate(cut);
        for (i, r) in recs.iter().enumerate() {
            dev.submit_open(d, i as u64, r).unwrap();
        }
        let done = complete_all(&mut dev);
        assert_eq!(done.len(), 6);
        for (i, d) in done.iter().enumerate() {
            match i {
                2 => assert_eq!(d.result, Err(JobError::BadRecordMac), "{version}"),
                4 => assert_eq!(d.result, Err(JobError::Truncated), "{version}"),
                _ => assert_eq!(
                    d.result.as_ref().map(|r| &r.1),
                    Ok(&payloads[i]),
                    "{version} job {i}"
                ),
            }
        }
        // The failed job consumed its sequence number, as in software: the next record
        // (seq 6) was sealed by nobody, so a fresh seal/open pair still lines up.
        assert_eq!(dev.sequence_numbers(d), Some((6, 6)));
    }
}

/// Many jobs over several sessions in flight at once, submitted in bursts and reaped
/// while more are submitted: every record matches software's, in order per session.
#[test]
fn many_jobs_in_flight_in_bursts() {
    let slots = 256;
    let Some(mut dev) = cryptodev_engine(slots, 32) else {
        return;
    };
    let mut sw = software_engine(slots);
    let sessions = 8;
    let per_session = 200;
    let suites = [CipherSuite::Aes128Gcm, CipherSuite::Aes256Gcm];
    let mut ids = Vec::new();
    for k in 0..sessions {
        let suite = suites[k % 2];
        let version = if k % 3 == 0 {
            TlsVersion::Tls12
        } else {
            TlsVersion::Tls13
        };
        let key: Vec<u8> = test_key(suite).iter().map(|b| b ^ k as u8).collect();
        let p = params(version, suite, &key, TEST_IV, k as u64, 0);
        ids.push((
            dev.create_session(&p).unwrap(),
            sw.create_session(&p).unwrap(),
        ));
    }
    let payload = |k: usize, j: usize| -> Vec<u8> { vec![(k * 7 + j) as u8; 1 + (j * 37) % 1500] };
    let mut got: Vec<Vec<(u64, Vec<u8>)>> = vec![Vec::new(); sessions];
    let mut next = vec![0usize; sessions];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut max_in_flight = 0;
    while got.iter().map(Vec::len).sum::<usize>() < sessions * per_session {
        // A burst across sessions until the ring refuses.
        'fill: for _ in 0..64 {
            for k in 0..sessions {
                if next[k] == per_session {
                    continue;
                }
                let tag = (k * per_session + next[k]) as u64;
                match dev.submit_seal(
                    ids[k].0,
                    tag,
                    ContentType::ApplicationData,
                    &payload(k, next[k]),
                ) {
                    Ok(()) => next[k] += 1,
                    Err(SubmitError::RingFull | SubmitError::InFlightLimit) => break 'fill,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        max_in_flight = max_in_flight.max(dev.in_flight());
        dev.poll();
        dev.reap(usize::MAX, |c| {
            let k = c.tag as usize / per_session;
            got[k].push((c.tag, c.result.expect("seal succeeds").data.to_vec()));
        });
        assert!(
            std::time::Instant::now() < deadline,
            "jobs stuck in the device"
        );
    }
    assert!(
        max_in_flight > 64,
        "only {max_in_flight} jobs were in flight at once"
    );
    for k in 0..sessions {
        let tags: Vec<u64> = got[k].iter().map(|g| g.0).collect();
        let want: Vec<u64> = (0..per_session)
            .map(|j| (k * per_session + j) as u64)
            .collect();
        assert_eq!(
            tags, want,
            "session {k}: completions out of submission order"
        );
        let payloads: Vec<Vec<u8>> = (0..per_session).map(|j| payload(k, j)).collect();
        let mut expected = Vec::new();
        for chunk in payloads.chunks(slots / 2) {
            expected.extend(seal_records(&mut sw, ids[k].1, chunk));
        }
        for (j, (a, b)) in got[k].iter().zip(&expected).enumerate() {
            assert_eq!(&a.1, b, "session {k} record {j} differs from software");
        }
    }
}

/// `auto` with a driver named: the device is measured against software and the faster
/// kept, with both numbers in the reason.
#[test]
fn auto_measures_the_device_against_software() {
    use_test_driver();
    if cryptodev_engine(8, 8).is_none() {
        return;
    }
    let e = Engine::new(EngineConfig::default()).unwrap();
    let reason = e.backend_reason();
    assert!(reason.starts_with("auto:"), "{reason}");
    assert!(reason.contains("ns/record"), "{reason}");
    assert!(
        reason.contains("Cryptodev") || e.backend() == BackendKind::Cryptodev,
        "the device was not measured: {reason}"
    );
    eprintln!("auto picked {}: {reason}", e.backend());
}

/// Driver names: the two PMDs (with or without the `crypto_` prefix); anything else is an
/// error naming the input and the choices.
#[test]
fn driver_names_parse_and_bad_ones_are_explained() {
    use backend::cryptodev::Driver;
    assert_eq!("crypto_openssl".parse(), Ok(Driver::Openssl));
    assert_eq!("aesni_gcm".parse(), Ok(Driver::AesniGcm));
    for bad in [
        "",
        "crypto_qat",
        "CRYPTO_OPENSSL",
        "crypto_openssl ",
        "openssl\0",
    ] {
        let err = bad.parse::<Driver>().unwrap_err();
        assert!(
            err.contains("crypto_openssl or crypto_aesni_gcm"),
            "{bad:?}: {err}"
        );
    }
}
