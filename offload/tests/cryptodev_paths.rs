//! Every cryptodev data path on every driver here: CPU crypto in place (crypto_aesni_gcm),
//! ops on external mbuf buffers pointing at the job buffers (both drivers), and the copy
//! fallback (both). Each must give records byte-identical to software, open software's
//! records, report a bad tag and a truncation per job, and be the path that actually ran
//! (per-path op counters). A path a driver cannot take (CPU crypto on crypto_openssl)
//! falls back to the best it can. Its own process: the data path is a process-wide
//! setting, and the test walks through them one after another. Skips with a message where
//! DPDK cannot start.

#![cfg(feature = "dpdk")]

mod common;

use common::*;
use tickmesh_offload::backend::cryptodev::{
    data_path_ops, device_ops, set_data_path, set_driver, DataPath, Driver,
};
use tickmesh_offload::*;

const SIZES: [usize; 7] = [0, 1, 15, 64, 1024, 4000, MAX_PLAINTEXT];

fn software_engine() -> Engine {
    engine_with(BackendChoice::Software, 64, 64)
}

/// The cryptodev engine on `driver` with `path` forced, or `None` (said on stderr) when the
/// device cannot start here.
fn device_engine(driver: Driver, path: DataPath) -> Option<Engine> {
    set_driver(Some(driver));
    set_data_path(Some(path));
    let made: Result<Engine, EngineError> = Engine::new(EngineConfig {
        backend: BackendChoice::Cryptodev,
        slots: 64,
        batch: 32,
        default_in_flight_limit: 64,
        max_sessions: 16,
    });
    made.map_err(|e| {
        eprintln!(
            "SKIP {} {path}: the cryptodev backend cannot start: {e}",
            driver.name()
        )
    })
    .ok()
}

fn path_counts() -> [u64; 3] {
    DataPath::ALL.map(data_path_ops)
}

/// One test: the data path is process-wide, so the cases run one after another.
#[test]
fn data_paths() {
    every_data_path_is_byte_identical_and_reports_bad_records();
    zero_copy_paths_keep_many_jobs_in_flight();
}

fn every_data_path_is_byte_identical_and_reports_bad_records() {
    let mut sw = software_engine();
    let mut ran_zero_copy = 0;
    for driver in [Driver::Openssl, Driver::AesniGcm] {
        for path in DataPath::ALL {
            let Some(mut dev) = device_engine(driver, path) else {
                continue;
            };
            // CPU crypto is offered by crypto_aesni_gcm only; crypto_openssl falls back to
            // the best path it has (external buffers: a software PMD).
            let expected = match (driver, path) {
                (Driver::Openssl, DataPath::CpuCrypto) => DataPath::ExternalBuffer,
                _ => path,
            };
            for version in [TlsVersion::Tls13, TlsVersion::Tls12] {
                for suite in [CipherSuite::Aes128Gcm, CipherSuite::Aes256Gcm] {
                    let what = format!("{} {path} {version} {suite}", driver.name());
                    let before = path_counts();
                    let total_before = device_ops();
                    let p = params(version, suite, &test_key(suite), TEST_IV, 77, 77);
                    let d = dev.create_session(&p).unwrap();
                    let s = sw.create_session(&p).unwrap();
                    let payloads: Vec<Vec<u8>> = SIZES
                        .iter()
                        .map(|&n| (0..n).map(|i| (i * 13 + n) as u8).collect())
                        .collect();
                    let from_dev = seal_records(&mut dev, d, &payloads);
                    let from_sw = seal_records(&mut sw, s, &payloads);
                    assert_eq!(from_dev, from_sw, "{what}: sealed records differ");

                    // Open software's records on the device, one with a flipped tag bit
                    // and one truncated: those two fail alone, the rest open.
                    let mut recs = from_sw.clone();
                    let last = recs[3].len() - 1;
                    recs[3][last] ^= 0x80;
                    let cut = recs[5].len() - 1;
                    recs[5].truncate(cut);
                    for (i, r) in recs.iter().enumerate() {
                        dev.submit_open(d, i as u64, r).unwrap();
                    }
                    let done = complete_all(&mut dev);
                    assert_eq!(done.len(), SIZES.len(), "{what}");
                    for (i, j) in done.iter().enumerate() {
                        match i {
                            3 => assert_eq!(j.result, Err(JobError::BadRecordMac), "{what}"),
                            5 => assert_eq!(j.result, Err(JobError::Truncated), "{what}"),
                            _ => {
                                let (ct, plain) = j.result.as_ref().expect("device opens it");
                                assert_eq!(*ct, ContentType::ApplicationData, "{what}");
                                assert_eq!(plain, &payloads[i], "{what} {} B", SIZES[i]);
                            }
                        }
                    }
                    // The truncated record fails its checks before the device; the other
                    // 7 seals and 6 opens ran on it, through the expected path only.
                    let after = path_counts();
                    let ran = (SIZES.len() * 2 - 1) as u64;
                    for (k, p) in DataPath::ALL.iter().enumerate() {
                        let want = if *p == expected { ran } else { 0 };
                        assert_eq!(after[k] - before[k], want, "{what}: ops through {p}");
                    }
                    assert_eq!(device_ops() - total_before, ran, "{what}");
                    if expected != DataPath::Copy {
                        ran_zero_copy += ran;
                    }
                    dev.destroy_session(d).unwrap();
                    sw.destroy_session(s).unwrap();
                }
            }
        }
    }
    set_data_path(None);
    set_driver(None);
    if ran_zero_copy == 0 {
        eprintln!("SKIP: no cryptodev device started, no data path was tested");
    }
}

/// Many jobs in flight on a zero-copy path: bursts larger than the device takes at once,
/// several sessions, reaped while more are submitted — same records as software.
fn zero_copy_paths_keep_many_jobs_in_flight() {
    for (driver, path) in [
        (Driver::AesniGcm, DataPath::CpuCrypto),
        (Driver::Openssl, DataPath::ExternalBuffer),
    ] {
        let Some(mut dev) = device_engine(driver, path) else {
            continue;
        };
        let mut sw = software_engine();
        let suite = CipherSuite::Aes128Gcm;
        let sessions: Vec<(SessionId, SessionId)> = (0..4)
            .map(|k| {
                let p = params(
                    TlsVersion::Tls13,
                    suite,
                    &test_key(suite),
                    [k as u8; 12],
                    0,
                    0,
                );
                (
                    dev.create_session(&p).unwrap(),
                    sw.create_session(&p).unwrap(),
                )
            })
            .collect();
        let mut got_dev: Vec<Vec<Vec<u8>>> = vec![Vec::new(); sessions.len()];
        let mut got_sw: Vec<Vec<Vec<u8>>> = vec![Vec::new(); sessions.len()];
        for round in 0..20u8 {
            for (k, (d, s)) in sessions.iter().enumerate() {
                let payload = vec![round ^ k as u8; 50 + 40 * k + round as usize];
                dev.submit_seal(*d, k as u64, ContentType::ApplicationData, &payload)
                    .unwrap();
                sw.submit_seal(*s, k as u64, ContentType::ApplicationData, &payload)
                    .unwrap();
            }
            if round % 3 == 2 {
                for (e, got) in [(&mut dev, &mut got_dev), (&mut sw, &mut got_sw)] {
                    for c in complete_all(e) {
                        got[c.tag as usize].push(c.result.unwrap().1);
                    }
                }
            }
        }
        for (e, got) in [(&mut dev, &mut got_dev), (&mut sw, &mut got_sw)] {
            for c in complete_all(e) {
                got[c.tag as usize].push(c.result.unwrap().1);
            }
        }
        assert_eq!(got_dev, got_sw, "{} {path}", driver.name());
        assert!(got_dev.iter().all(|v| v.len() == 20));
    }
    set_data_path(None);
    set_driver(None);
}
