//! Replays the committed fuzz corpus (`fuzz/corpus/record_open`) as a regression test. The
//! valid seeds were produced by an independent implementation (pyca/cryptography, i.e.
//! OpenSSL) with the fuzz target's fixed key (0x42…) and IV (0x24…), so opening them is a
//! cross-check of every format; the damaged seeds must fail with the right error.

use std::path::Path;

use tickmesh_offload::*;

const FORMATS: [(TlsVersion, CipherSuite); 6] = [
    (TlsVersion::Tls13, CipherSuite::Aes128Gcm),
    (TlsVersion::Tls13, CipherSuite::Aes256Gcm),
    (TlsVersion::Tls13, CipherSuite::Chacha20Poly1305),
    (TlsVersion::Tls12, CipherSuite::Aes128Gcm),
    (TlsVersion::Tls12, CipherSuite::Aes256Gcm),
    (TlsVersion::Tls12, CipherSuite::Chacha20Poly1305),
];

fn open_seed(data: &[u8]) -> Result<(ContentType, Vec<u8>), JobError> {
    let (version, suite) = FORMATS[(data[0] & 0x7f) as usize % 6];
    let seq = u64::from_be_bytes(data[1..9].try_into().unwrap());
    let keys = TrafficKeys::new(suite, &[0x42; 32][..suite.key_len()], [0x24; 12], seq).unwrap();
    let mut e = Engine::new(EngineConfig {
        backend: BackendChoice::Software,
        slots: 2,
        ..Default::default()
    })
    .unwrap();
    let id = e
        .create_session(&SessionParams {
            suite,
            version,
            tx: keys.clone(),
            rx: keys,
            in_flight_limit: 0,
        })
        .unwrap();
    e.submit_open(id, 0, &data[9..]).unwrap();
    e.poll_until_idle(16);
    let mut out = None;
    e.reap(1, |c| {
        out = Some(c.result.map(|o| (o.content_type, o.data.to_vec())))
    });
    out.expect("one completion")
}

#[test]
fn committed_corpus_seeds_open_as_expected() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/record_open");
    let mut checked = 0;
    for name in [
        "tls13-aes128",
        "tls13-aes256",
        "tls13-chacha",
        "tls12-aes128",
        "tls12-aes256",
        "tls12-chacha",
    ] {
        let data = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(
            open_seed(&data),
            Ok((ContentType::ApplicationData, b"fuzz seed record".to_vec())),
            "{name}"
        );
        checked += 1;
    }
    let data = std::fs::read(dir.join("tls13-aes128-truncated")).unwrap();
    assert_eq!(open_seed(&data), Err(JobError::Truncated));
    let data = std::fs::read(dir.join("tls13-aes128-garbage")).unwrap();
    assert_eq!(open_seed(&data), Err(JobError::BadRecordMac));
    assert_eq!(checked, 6);
}
