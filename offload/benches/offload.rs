//! Seal/open throughput of the offload ring vs calling `ring` inline directly.
//!
//! For 64 B, 1 KiB and 16 KiB records, per batch of 32 records:
//! - `ring-direct`: the baseline — build the TLS 1.3 header and nonce and call `ring`'s
//!   AES-128-GCM in place, 32 times, no ring, no copies;
//! - `engine-inline`: 32 jobs submitted to the engine, one `poll`, reap — the software
//!   backend in the caller's poll loop;
//! - `engine-threaded`: the same through the dedicated crypto thread.
//!
//! Per-job overhead = (engine − direct) / 32. Run: `cargo bench -p tickmesh-offload`.
//! Noise: the machine is shared (2 vCPUs); the threaded backend needs the second vCPU
//! free. Quote medians of several runs; `taskset`/idle machines tighten the spread.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ring::aead;
use std::time::Duration;
use tickmesh_offload::*;

const BATCH: usize = 32;
const SIZES: [usize; 3] = [64, 1024, 16 * 1024];
const KEY: [u8; 16] = [0x11; 16];
const IV: [u8; 12] = [0x22; 12];

fn engine(choice: BackendChoice) -> (Engine, SessionId) {
    let mut e = Engine::new(EngineConfig {
        backend: choice,
        slots: BATCH * 2,
        batch: BATCH,
        default_in_flight_limit: (BATCH * 2) as u32,
        max_sessions: 4,
    })
    .unwrap();
    let keys = TrafficKeys::new(CipherSuite::Aes128Gcm, &KEY, IV, 0).unwrap();
    let id = e
        .create_session(&SessionParams {
            suite: CipherSuite::Aes128Gcm,
            version: TlsVersion::Tls13,
            tx: keys.clone(),
            rx: keys,
            in_flight_limit: 0,
        })
        .unwrap();
    (e, id)
}

/// Submit a batch, then poll and reap until all of it is back.
fn run_batch(e: &mut Engine, mut submit: impl FnMut(&mut Engine, u64)) {
    for tag in 0..BATCH as u64 {
        submit(e, tag);
    }
    let mut got = 0;
    while got < BATCH {
        e.poll();
        got += e.reap(BATCH, |c| {
            assert!(c.result.is_ok(), "benchmark job failed: {:?}", c.result);
        });
    }
}

struct Direct {
    key: aead::LessSafeKey,
    seq: u64,
}

impl Direct {
    fn new() -> Self {
        Direct {
            key: aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, &KEY).unwrap()),
            seq: 0,
        }
    }
    fn nonce(&self, seq: u64) -> aead::Nonce {
        let mut n = IV;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        aead::Nonce::assume_unique_for_key(n)
    }
    /// Seal `n` payload bytes already in `buf[5..]` as a TLS 1.3 record.
    fn seal(&mut self, buf: &mut [u8], n: usize) -> usize {
        let len = (n + 1 + 16) as u16;
        let header = [23, 3, 3, (len >> 8) as u8, len as u8];
        buf[..5].copy_from_slice(&header);
        buf[5 + n] = 23;
        let (body, tag) = buf[5..].split_at_mut(n + 1);
        let t = self
            .key
            .seal_in_place_separate_tag(self.nonce(self.seq), aead::Aad::from(header), body)
            .unwrap();
        tag[..16].copy_from_slice(t.as_ref());
        self.seq += 1;
        5 + n + 17
    }
    /// Header checks, decrypt, inner content type: what any TLS 1.3 receiver (and the
    /// engine) does with a record (RFC 8446 §5.1-5.2).
    fn open(&mut self, buf: &mut [u8], len: usize, seq: u64) -> usize {
        let mut header = [0u8; 5];
        header.copy_from_slice(&buf[..5]);
        let body = u16::from_be_bytes([header[3], header[4]]) as usize;
        assert!(header[..3] == [23, 3, 3] && body == len - 5 && body <= (1 << 14) + 256);
        let plain = self
            .key
            .open_in_place(self.nonce(seq), aead::Aad::from(header), &mut buf[5..len])
            .unwrap();
        plain.iter().rposition(|&b| b != 0).unwrap()
    }
}

fn seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for &size in &SIZES {
        let payload = vec![0x5au8; size];
        g.throughput(Throughput::Bytes((size * BATCH) as u64));
        g.bench_with_input(BenchmarkId::new("ring-direct", size), &size, |b, &size| {
            let mut d = Direct::new();
            let mut buf = vec![0u8; MAX_RECORD];
            b.iter(|| {
                for _ in 0..BATCH {
                    buf[5..5 + size].copy_from_slice(&payload);
                    std::hint::black_box(d.seal(&mut buf, size));
                }
            })
        });
        for (name, choice) in [
            ("engine-inline", BackendChoice::Software),
            (
                "engine-threaded",
                BackendChoice::SoftwareThreaded { cpu: None },
            ),
        ] {
            let (mut e, id) = engine(choice);
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| {
                    run_batch(&mut e, |e, tag| {
                        e.submit_seal(id, tag, ContentType::ApplicationData, &payload)
                            .unwrap()
                    })
                })
            });
        }
    }
    g.finish();
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for &size in &SIZES {
        // Records sealed at sequence numbers 0..n (n a multiple of the batch, ~4 MiB in
        // all), opened in a cycle. The engine's rx key is reset to sequence 0 when the
        // cycle wraps (a control-side rekey every n/32 batches, amortised to noise).
        let n = ((4 << 20) / (size + 22)).clamp(BATCH * 4, 8192) / BATCH * BATCH;
        let mut d = Direct::new();
        let records: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                let mut buf = vec![0u8; MAX_RECORD];
                let len = d.seal(&mut buf, size);
                buf.truncate(len);
                buf
            })
            .collect();
        g.throughput(Throughput::Bytes((size * BATCH) as u64));
        g.bench_with_input(BenchmarkId::new("ring-direct", size), &size, |b, _| {
            let mut buf = vec![0u8; MAX_RECORD];
            let mut next = 0usize;
            b.iter(|| {
                for _ in 0..BATCH {
                    let r = &records[next];
                    buf[..r.len()].copy_from_slice(r);
                    std::hint::black_box(d.open(&mut buf, r.len(), next as u64));
                    next = (next + 1) % n;
                }
            })
        });
        let rx = TrafficKeys::new(CipherSuite::Aes128Gcm, &KEY, IV, 0).unwrap();
        for (name, choice) in [
            ("engine-inline", BackendChoice::Software),
            (
                "engine-threaded",
                BackendChoice::SoftwareThreaded { cpu: None },
            ),
        ] {
            let (mut e, id) = engine(choice);
            let mut next = 0usize;
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| {
                    if next == 0 {
                        e.update_keys(id, Direction::Rx, &rx).unwrap();
                    }
                    run_batch(&mut e, |e, tag| {
                        e.submit_open(id, tag, &records[next + tag as usize])
                            .unwrap()
                    });
                    next = (next + BATCH) % n;
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, seal, open);
criterion_main!(benches);
