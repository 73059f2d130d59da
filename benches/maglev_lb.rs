//! Maglev table build (1,000 backends, 65,537 slots) and lookup, and the packet
//! balancer's per-frame cost (parse + flow table + DNAT rewrite) without DPDK.
//! `cargo bench --bench maglev_lb`. Machines here are shared 2-vCPU VMs: compare medians
//! of several runs.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use tickmesh::cluster::maglev::{hash_flow, Maglev, DEFAULT_TABLE_SIZE};
use tickmesh::config::{parse, Format};
use tickmesh::engine::dpdk::lb::{
    LbAddressing, LbTable, LbWorker, PacketBuf, PortCtx, VecPacket, Verdict,
};
use tickmesh::engine::dpdk::testing::thread_cpu_time;
use tickmesh::telemetry::StatsRegistry;

fn maglev(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("10.{}.{}.1:8080", i / 250, i % 250).into_bytes())
        .collect();
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
    let weights = vec![1u32; 1000];
    c.bench_function("maglev_build_1000_backends_65537", |b| {
        b.iter(|| Maglev::build(black_box(&refs), &weights, DEFAULT_TABLE_SIZE))
    });
    let m = Maglev::build(&refs, &weights, DEFAULT_TABLE_SIZE);
    let mut i = 0u32;
    c.bench_function("maglev_lookup_5tuple", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            m.lookup(hash_flow(0xc000_0207 ^ i, 0x0a00_0064, i as u16, 80, 6))
        })
    });
}

/// A frame buffer reused across iterations: the bench measures the balancer, not malloc.
struct Reused {
    frame: Vec<u8>,
    buf: Vec<u8>,
}
// SAFETY: the data is the heap buffer of `buf`, which nothing changes while the balancer
// holds the frame (prepend and resize refuse).
unsafe impl PacketBuf for Reused {
    fn data(&mut self) -> &mut [u8] {
        &mut self.buf
    }
    fn prepend(&mut self, _: usize) -> bool {
        false
    }
    fn resize(&mut self, _: usize) -> bool {
        false
    }
}

fn syn(src_port: u16) -> Vec<u8> {
    // Ethernet + IPv4 + TCP SYN 192.0.2.7:src_port → 10.0.0.100:80, checksums filled.
    let mut f = vec![0u8; 54];
    f[12] = 0x08;
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 192, 0, 2, 7, 10, 0, 0, 100,
    ]);
    let s = tickmesh::engine::dpdk::wire::ones_sum(ip);
    ip[10..12].copy_from_slice(&(!s).to_be_bytes());
    f[34..36].copy_from_slice(&src_port.to_be_bytes());
    f[36..38].copy_from_slice(&80u16.to_be_bytes());
    f[46] = 0x50;
    f[47] = 0x02;
    let c = tickmesh::engine::dpdk::wire::l4_checksum(
        [192, 0, 2, 7].into(),
        [10, 0, 0, 100].into(),
        6,
        &f[34..],
    );
    f[50..52].copy_from_slice(&c.to_be_bytes());
    f
}

/// The balancer table of `yaml` (one worker, a gateway MAC for the next hop) and the
/// registry its counters live in.
fn lb_table(yaml: &str) -> (StatsRegistry, LbTable) {
    let cfg = parse(yaml, Format::Yaml).expect("the bench's config parses");
    let stats = StatsRegistry::new(1);
    let addressing = LbAddressing {
        gateway: Some([2, 0, 0, 0, 0, 0xfe]),
        ..Default::default()
    };
    let table = LbTable::compile(&cfg, &addressing, 1, &stats).expect("the bench's table compiles");
    (stats, table)
}

fn packet(c: &mut Criterion) {
    let eps: Vec<String> = (1..=16).map(|i| format!("\"10.1.0.{i}:8080\"")).collect();
    let (stats, table) = lb_table(&format!(
        "listeners:\n  - {{name: web, address: \"10.0.0.100:80\", cluster: pool}}\nclusters:\n  - {{name: pool, endpoints: [{}]}}\n",
        eps.join(", ")
    ));
    let port = stats.port("bench");
    let ctx = PortCtx {
        mac: [2, 0, 0, 0, 0, 1],
        stats: &port,
    };
    let mut w = LbWorker::new(0, 1 << 16);
    let frames: Vec<Vec<u8>> = (0..1024).map(|i| syn(10_000 + i)).collect();
    let mut p = Reused {
        frame: Vec::new(),
        buf: Vec::with_capacity(64),
    };
    let mut i = 0usize;
    c.bench_function("lb_dnat_established_flow_per_packet", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            p.frame.clone_from(&frames[i]);
            p.buf.clear();
            p.buf.extend_from_slice(&p.frame);
            w.process(&table, &ctx, &mut p, 1)
        })
    });
}

/// A TCP ACK from `src:sport` to 10.0.0.100:80, 60 bytes (the minimum Ethernet frame).
fn ack(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[12] = 0x08;
    let total = 46u16.to_be_bytes();
    f[14..34].copy_from_slice(&[
        0x45, 0, total[0], total[1], 0, 0, 0x40, 0, 64, 6, 0, 0, src[0], src[1], src[2], src[3],
        10, 0, 0, 100,
    ]);
    let s = tickmesh::engine::dpdk::wire::ones_sum(&f[14..34]);
    f[24..26].copy_from_slice(&(!s).to_be_bytes());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&80u16.to_be_bytes());
    f[46] = 0x50;
    f[47] = 0x10;
    let c =
        tickmesh::engine::dpdk::wire::l4_checksum(src.into(), [10, 0, 0, 100].into(), 6, &f[34..]);
    f[50..52].copy_from_slice(&c.to_be_bytes());
    f
}

/// The burst path as the DPDK worker runs it (bursts of 32), over 32, 1,000 and 100,000
/// flows: the VIP's backend is the VIP itself, so every frame stays valid and is
/// forwarded again on the next lap without being rebuilt (as in `scripts/bench-dpdk`).
/// Frames are walked in order, 32 at a time; the flow table has the engine's default
/// size. Reported per burst, in CPU time ([`thread_cpu_time`]): divide by 32 for the
/// cost per packet.
fn burst(c: &mut Criterion) {
    let (stats, table) = lb_table(
        "listeners:\n  - {name: loop, address: \"10.0.0.100:80\", cluster: self}\nclusters:\n  - {name: self, endpoints: [\"10.0.0.100:80\"]}\n",
    );
    let port = stats.port("bench");
    let ctx = PortCtx {
        mac: [2, 0, 0, 0, 0, 1],
        stats: &port,
    };
    for flows in [32usize, 1000, 100_000] {
        let mut w = LbWorker::new(0, 1 << 18);
        let mut pkts: Vec<VecPacket> = (0..flows)
            .map(|i| {
                let f = ack([198, 18, (i >> 8) as u8, i as u8], 1024 + (i >> 16) as u16);
                VecPacket::new(&f, 64)
            })
            .collect();
        let mut verdicts = [Verdict::Drop; 32];
        let mut at = 0usize;
        let mut ran = false;
        c.bench_function(&format!("lb_burst32_{flows}_flows"), |b| {
            b.iter_custom(|iters| {
                ran = true;
                let t0 = thread_cpu_time();
                for _ in 0..iters {
                    let end = (at + 32).min(flows);
                    let n = end - at;
                    black_box(w.process_burst(
                        &table,
                        &ctx,
                        &mut pkts[at..end],
                        &mut verdicts[..n],
                        1,
                    ));
                    at = if end == flows { 0 } else { end };
                }
                thread_cpu_time() - t0
            })
        });
        // (A bench the command line filtered out never ran.)
        assert!(!ran || verdicts.iter().all(|v| *v == Verdict::Forward));
    }
}

criterion_group!(benches, maglev, packet, burst);
criterion_main!(benches);
