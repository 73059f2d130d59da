//! Records per second through the DPDK cryptodev backend (crypto_openssl and
//! crypto_aesni_gcm virtual devices, `--no-huge`) vs the software backend inline, for 64 B
//! and 1 KiB records, seal and open, AES-128-GCM TLS 1.3, batch 32 with up to 64 jobs in
//! flight. Each driver runs on each data path it can take (copy; zero copy: external mbuf
//! buffers, CPU crypto in place). Variants run in alternating short bursts (noisy shared
//! host); medians printed.
//!
//! `cargo bench -p tickmesh-offload --features dpdk --bench cryptodev`
//! (`CRYPTODEV_ROUNDS` sets the rounds; without `--features dpdk` it says so and exits).

#[cfg(not(feature = "dpdk"))]
fn main() {
    eprintln!("the cryptodev bench needs `--features dpdk`");
}

#[cfg(feature = "dpdk")]
fn main() {
    use std::time::Instant;
    use tickmesh_offload::backend::cryptodev::{set_data_path, set_driver, DataPath, Driver};
    use tickmesh_offload::*;

    const BATCH: usize = 32;
    let rounds: usize = std::env::var("CRYPTODEV_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");

    let make = |choice: BackendChoice,
                driver: Option<Driver>,
                path: Option<DataPath>|
     -> Option<(Engine, SessionId)> {
        set_driver(driver);
        set_data_path(path);
        let mut e = match Engine::new(EngineConfig {
            backend: choice,
            slots: BATCH * 2,
            batch: BATCH,
            default_in_flight_limit: (BATCH * 2) as u32,
            max_sessions: 4,
        }) {
            Ok(e) => e,
            Err(err) => {
                eprintln!("skip {choice:?} {driver:?}: {err}");
                return None;
            }
        };
        let keys = TrafficKeys::new(CipherSuite::Aes128Gcm, &[0x11; 16], [0x22; 12], 0).ok()?;
        let id = e
            .create_session(&SessionParams {
                suite: CipherSuite::Aes128Gcm,
                version: TlsVersion::Tls13,
                tx: keys.clone(),
                rx: keys,
                in_flight_limit: 0,
            })
            .ok()?;
        Some((e, id))
    };
    let mut variants: Vec<(&str, Engine, SessionId)> = Vec::new();
    if let Some((e, id)) = make(BackendChoice::Software, None, None) {
        variants.push(("software-inline", e, id));
    }
    // Each driver on each data path it can take: the copy path (what hardware devices
    // get, and what every device got before zero copy) against the zero-copy ones.
    for (name, d, path) in [
        ("openssl/copy", Driver::Openssl, DataPath::Copy),
        ("openssl/extbuf", Driver::Openssl, DataPath::ExternalBuffer),
        ("aesni-gcm/copy", Driver::AesniGcm, DataPath::Copy),
        (
            "aesni-gcm/extbuf",
            Driver::AesniGcm,
            DataPath::ExternalBuffer,
        ),
        ("aesni-gcm/cpu", Driver::AesniGcm, DataPath::CpuCrypto),
    ] {
        if let Some((e, id)) = make(BackendChoice::Cryptodev, Some(d), Some(path)) {
            variants.push((name, e, id));
        }
    }

    // Seal `n` records (or open the given one `n` times: open with a fixed record fails
    // auth after the first, so opens use records sealed under the matching sequence).
    fn run_seal(e: &mut Engine, id: SessionId, payload: &[u8], n: usize) -> f64 {
        let start = Instant::now();
        let (mut sent, mut done) = (0, 0);
        while done < n {
            while sent < n
                && e.submit_seal(id, 0, ContentType::ApplicationData, payload)
                    .is_ok()
            {
                sent += 1;
            }
            e.poll();
            done += e.reap(usize::MAX, |c| {
                std::hint::black_box(c.result.is_ok());
            });
        }
        start.elapsed().as_nanos() as f64 / n as f64
    }
    fn run_open(e: &mut Engine, id: SessionId, records: &[Vec<u8>]) -> f64 {
        let start = Instant::now();
        let (mut sent, mut done) = (0, 0);
        let mut failed = 0;
        while done < records.len() {
            while sent < records.len() && e.submit_open(id, 0, &records[sent]).is_ok() {
                sent += 1;
            }
            e.poll();
            done += e.reap(usize::MAX, |c| failed += usize::from(c.result.is_err()));
        }
        assert_eq!(failed, 0, "open failed");
        start.elapsed().as_nanos() as f64 / records.len() as f64
    }
    let jobs = if quick { 64 } else { 4096 };
    let rounds = if quick { 1 } else { rounds };
    println!("variant              op    size   median ns/rec   records/s");
    for size in [64usize, 1024] {
        let payload = vec![0x5a; size];
        let mut seal: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        let mut open: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for _ in 0..rounds {
            for (k, (_, e, id)) in variants.iter_mut().enumerate() {
                // Seal a batch of records for the open pass with a reference engine of
                // the same variant (same keys): every session's rx seq tracks its tx seq.
                seal[k].push(run_seal(e, *id, &payload, jobs));
            }
        }
        // Opens: records sealed by software at rx sequence numbers 0.. of each variant.
        for (k, (_, e, id)) in variants.iter_mut().enumerate() {
            let mut sw = make(BackendChoice::Software, None, None).unwrap();
            for _ in 0..rounds {
                let (_, rx) = e.sequence_numbers(*id).unwrap();
                // Bring the reference session to the same sequence number.
                let keys =
                    TrafficKeys::new(CipherSuite::Aes128Gcm, &[0x11; 16], [0x22; 12], rx).unwrap();
                sw.0.update_keys(sw.1, Direction::Tx, &keys).unwrap();
                let mut records = Vec::with_capacity(jobs);
                let mut sent = 0;
                while records.len() < jobs {
                    while sent < jobs
                        && sw
                            .0
                            .submit_seal(sw.1, 0, ContentType::ApplicationData, &payload)
                            .is_ok()
                    {
                        sent += 1;
                    }
                    sw.0.poll();
                    sw.0.reap(usize::MAX, |c| {
                        records.push(c.result.unwrap().data.to_vec())
                    });
                }
                open[k].push(run_open(e, *id, &records));
            }
        }
        for (k, (name, _, _)) in variants.iter().enumerate() {
            for (op, v) in [("seal", &mut seal[k]), ("open", &mut open[k])] {
                v.sort_by(|a, b| a.total_cmp(b));
                let m = v[v.len() / 2];
                println!("{name:<20} {op}  {size:>5}  {m:>14.0}  {:>10.0}", 1e9 / m);
            }
        }
    }
}
