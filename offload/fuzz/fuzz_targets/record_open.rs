//! Fuzz record open (and seal → open round trips) on the direct record layer and through
//! the engine. Input: byte 0 picks the format (low bits: version × suite) and the mode
//! (bit 7: round trip), bytes 1..9 the sequence number, the rest the record (or payload).
//! Properties: never a panic; a successful open yields at most 2^14 bytes inside the
//! buffer; the engine and the direct record layer agree; seal → open gives the payload back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickmesh_offload::record::RecordKey;
use tickmesh_offload::*;

const FORMATS: [(TlsVersion, CipherSuite); 6] = [
    (TlsVersion::Tls13, CipherSuite::Aes128Gcm),
    (TlsVersion::Tls13, CipherSuite::Aes256Gcm),
    (TlsVersion::Tls13, CipherSuite::Chacha20Poly1305),
    (TlsVersion::Tls12, CipherSuite::Aes128Gcm),
    (TlsVersion::Tls12, CipherSuite::Aes256Gcm),
    (TlsVersion::Tls12, CipherSuite::Chacha20Poly1305),
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (version, suite) = FORMATS[(data[0] & 0x7f) as usize % FORMATS.len()];
    let round_trip = data[0] & 0x80 != 0;
    let seq = u64::from_be_bytes(data[1..9].try_into().unwrap());
    let body = &data[9..];
    let keys = TrafficKeys::new(suite, &[0x42; 32][..suite.key_len()], [0x24; 12], seq).unwrap();
    let key = RecordKey::new(suite, version, &keys).unwrap();
    let mut engine = Engine::new(EngineConfig {
        backend: BackendChoice::Software,
        slots: 2,
        ..Default::default()
    })
    .unwrap();
    let id = engine
        .create_session(&SessionParams {
            suite,
            version,
            tx: keys.clone(),
            rx: keys,
            in_flight_limit: 0,
        })
        .unwrap();

    let mut buf = vec![0u8; MAX_RECORD];
    if round_trip {
        let n = body.len().min(MAX_PLAINTEXT);
        let off = key.payload_offset();
        buf[off..off + n].copy_from_slice(&body[..n]);
        let Ok(len) = key.seal_in_place(seq, ContentType::Handshake, &mut buf, n) else {
            return;
        };
        let (ct, range) = key
            .open_in_place(seq, &mut buf, len)
            .expect("own record opens");
        assert_eq!(ct, ContentType::Handshake);
        assert_eq!(&buf[range], &body[..n]);
        return;
    }

    let direct = if body.len() <= MAX_RECORD {
        buf[..body.len()].copy_from_slice(body);
        key.open_in_place(seq, &mut buf, body.len()).map(|(ct, r)| {
            assert!(r.len() <= MAX_PLAINTEXT && r.end <= buf.len());
            (ct, buf[r].to_vec())
        })
    } else {
        Err(JobError::RecordOverflow)
    };
    if seq == u64::MAX {
        return; // the engine refuses this sequence number by design
    }
    engine.submit_open(id, 1, body).unwrap();
    engine.poll_until_idle(16);
    let mut via_engine = None;
    engine.reap(4, |c| {
        via_engine = Some(c.result.map(|o| (o.content_type, o.data.to_vec())))
    });
    assert_eq!(via_engine, Some(direct));
});
