//! Shared helpers for the integration tests: the backend list every test runs over, and
//! bounded drivers that submit, poll and reap.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use tickmesh_offload::*;

/// Every backend choice this build can construct. `ktls` and `auto` resolve to software
/// here (no tls module, no accelerator) but go through their own selection path.
/// With `--features dpdk` the DPDK cryptodev backend joins (a virtual device in
/// `--no-huge` mode; `TICKMESH_CRYPTODEV` picks the driver, default crypto_openssl here).
pub fn backends() -> Vec<BackendChoice> {
    #[allow(unused_mut)]
    let mut v = vec![
        BackendChoice::Software,
        BackendChoice::SoftwareThreaded { cpu: None },
        BackendChoice::Ktls,
        BackendChoice::Auto,
    ];
    #[cfg(feature = "dpdk")]
    {
        use_test_driver();
        v.push(BackendChoice::Cryptodev);
    }
    v
}

/// Tests use crypto_openssl unless `TICKMESH_CRYPTODEV` names another driver.
#[cfg(feature = "dpdk")]
pub fn use_test_driver() {
    if std::env::var_os(backend::cryptodev::DRIVER_ENV).is_none() {
        backend::cryptodev::set_driver(Some(backend::cryptodev::Driver::Openssl));
    }
}

pub fn engine_with(choice: BackendChoice, slots: usize, limit: u32) -> Engine {
    Engine::new(EngineConfig {
        backend: choice,
        slots,
        batch: 8,
        default_in_flight_limit: limit,
        max_sessions: 16,
    })
    .expect("every backend this build has starts here (cryptodev: --no-huge vdev)")
}

pub fn engine(choice: BackendChoice) -> Engine {
    engine_with(choice, 64, 64)
}

pub fn params(
    version: TlsVersion,
    suite: CipherSuite,
    key: &[u8],
    iv: [u8; 12],
    tx_seq: u64,
    rx_seq: u64,
) -> SessionParams {
    SessionParams {
        suite,
        version,
        tx: TrafficKeys::new(suite, key, iv, tx_seq).unwrap(),
        rx: TrafficKeys::new(suite, key, iv, rx_seq).unwrap(),
        in_flight_limit: 0,
    }
}

/// A deterministic key for a suite.
pub fn test_key(suite: CipherSuite) -> Vec<u8> {
    (0..suite.key_len() as u8)
        .map(|i| i.wrapping_mul(7) ^ 0x5a)
        .collect()
}

pub const TEST_IV: [u8; 12] = [
    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab,
];

/// One reaped completion, copied out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub tag: u64,
    pub op: Op,
    pub seq: u64,
    pub result: Result<(ContentType, Vec<u8>), JobError>,
}

/// Poll and reap until nothing is in flight (bounded: 5 s). Sorted by tag.
pub fn complete_all(engine: &mut Engine) -> Vec<Done> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    loop {
        engine.poll();
        engine.reap(usize::MAX, |c| {
            out.push(Done {
                tag: c.tag,
                op: c.op,
                seq: c.seq,
                result: c.result.map(|o| (o.content_type, o.data.to_vec())),
            })
        });
        if engine.in_flight() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "jobs still in flight after 5 s");
        std::thread::yield_now();
    }
    out.sort_by_key(|d| d.tag);
    out
}

/// Seal each payload (application data) in order through `engine`; returns the records.
pub fn seal_records(engine: &mut Engine, id: SessionId, payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
    for (i, p) in payloads.iter().enumerate() {
        engine
            .submit_seal(id, i as u64, ContentType::ApplicationData, p)
            .unwrap();
    }
    complete_all(engine)
        .into_iter()
        .map(|d| d.result.expect("seal succeeds").1)
        .collect()
}

/// Open one record and return its result.
pub fn open_one(
    engine: &mut Engine,
    id: SessionId,
    record: &[u8],
) -> Result<(ContentType, Vec<u8>), JobError> {
    engine.submit_open(id, 0, record).unwrap();
    let mut done = complete_all(engine);
    assert_eq!(done.len(), 1);
    done.remove(0).result
}

pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex is valid"))
        .collect()
}
