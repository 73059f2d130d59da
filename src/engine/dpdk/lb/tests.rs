use super::*;
use crate::config::{parse, Format};

const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// An independent checksum (plain RFC 1071 loop, not `wire`'s), so rewrites are not
/// checked with the code that made them.
use crate::engine::dpdk::testing::rfc1071;

pub(crate) fn frame(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    protocol: u8,
    payload: &[u8],
) -> Vec<u8> {
    let l4_len = if protocol == PROTO_TCP { 20 } else { 8 } + payload.len();
    let total = 20 + l4_len;
    let mut f = vec![0u8; 14 + total];
    f[0..6].copy_from_slice(&LB_MAC);
    f[6..12].copy_from_slice(&CLIENT_MAC);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    emit_ipv4_header(&mut f[14..], 0, total as u16, protocol, src.0, dst.0);
    let l4 = &mut f[34..];
    l4[0..2].copy_from_slice(&src.1.to_be_bytes());
    l4[2..4].copy_from_slice(&dst.1.to_be_bytes());
    if protocol == PROTO_TCP {
        l4[12] = 5 << 4;
        l4[13] = 0x02; // SYN
        l4[20..].copy_from_slice(payload);
    } else {
        l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        l4[8..].copy_from_slice(payload);
    }
    let c = l4_checksum(src.0, dst.0, protocol, &f[34..]);
    let at = if protocol == PROTO_TCP {
        34 + 16
    } else {
        34 + 6
    };
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
    f
}

/// IPv4 header and TCP/UDP checksums of `ip` (starting at the IPv4 header) verify.
fn checksums_ok(ip: &[u8]) -> bool {
    let hlen = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if rfc1071(&[&ip[..hlen]]) != 0 {
        return false;
    }
    let seg = &ip[hlen..total];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    rfc1071(&[&pseudo, seg]) == 0
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn config(backends: usize, forwarding: &str) -> Config {
    let eps: Vec<String> = (0..backends)
        .map(|i| format!("\"10.1.{}.{}:8080\"", i / 250, i % 250 + 1))
        .collect();
    parse(
        &format!(
            r#"
listeners:
  - {{name: web, address: "10.0.0.100:80", cluster: pool, forwarding: {forwarding}}}
  - {{name: dns, address: "10.0.0.100:53", protocol: udp, cluster: dnspool}}
clusters:
  - {{name: pool, endpoints: [{}]}}
  - {{name: dnspool, endpoints: ["10.2.0.1:5353"]}}
"#,
            eps.join(", ")
        ),
        Format::Yaml,
    )
    .unwrap()
}

fn addressing() -> LbAddressing {
    LbAddressing {
        local_ips: vec![ip("10.0.0.1").into(), ip6("2001:db8::1").into()],
        tunnel_src: Some(ip("10.0.0.1")),
        tunnel_src6: Some(ip6("2001:db8::1")),
        neighbors: vec![
            (ip("10.1.0.1").into(), [0x02, 0, 0, 0, 1, 1]),
            (ip6("2001:db8:1::1").into(), [0x02, 0, 0, 0, 6, 1]),
        ],
        gateway: Some(GW_MAC),
    }
}

struct Rig {
    table: LbTable,
    worker: LbWorker,
    port: Arc<PortStats>,
    stats: StatsRegistry,
}

impl Rig {
    fn new(cfg: &Config) -> Rig {
        Rig::with_flows(cfg, 1 << 16)
    }
    fn with_flows(cfg: &Config, flows: usize) -> Rig {
        let stats = StatsRegistry::new(1);
        Rig {
            table: LbTable::compile(cfg, &addressing(), 1, &stats).unwrap(),
            worker: LbWorker::new(0, flows),
            port: stats.port("p0"),
            stats,
        }
    }
    fn run(&mut self, f: &[u8]) -> (Verdict, Vec<u8>) {
        let mut p = VecPacket::new(f, 64);
        let ctx = PortCtx {
            mac: LB_MAC,
            stats: &self.port,
        };
        let v = self.worker.process(&self.table, &ctx, &mut p, 1);
        (v, p.frame().to_vec())
    }
    fn count(&self, c: C) -> u64 {
        self.port.get(c)
    }
}

#[test]
fn dnat_rewrites_destination_and_keeps_checksums_valid() {
    let mut r = Rig::new(&config(1, "dnat"));
    let f = frame(
        (ip("192.0.2.7"), 40000),
        (ip("10.0.0.100"), 80),
        PROTO_TCP,
        b"hello",
    );
    let (v, out) = r.run(&f);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(
        &out[0..6],
        &[0x02, 0, 0, 0, 1, 1],
        "next hop from the neighbor table"
    );
    assert_eq!(&out[6..12], &LB_MAC);
    assert_eq!(&out[14 + 16..14 + 20], &[10, 1, 0, 1]);
    assert_eq!(&out[14 + 12..14 + 16], &[192, 0, 2, 7], "source untouched");
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 8080);
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), 40000);
    assert!(checksums_ok(&out[14..]));
    assert_eq!(&out[54..], b"hello");

    // The backend's reply is rewritten back to come from the VIP.
    let back = frame(
        (ip("10.1.0.1"), 8080),
        (ip("192.0.2.7"), 40000),
        PROTO_TCP,
        b"hi",
    );
    let (v, out) = r.run(&back);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(&out[14 + 12..14 + 16], &[10, 0, 0, 100]);
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), 80);
    assert_eq!(&out[0..6], &GW_MAC, "client reached through the gateway");
    assert!(checksums_ok(&out[14..]));
    let vip = r.stats.packets("vip/web");
    assert_eq!(vip.get(P::Packets), 1);
    assert_eq!(vip.get(P::ReplyPackets), 1);
    assert_eq!(vip.get(P::FlowsNew), 1);
}

#[test]
fn udp_dnat_and_zero_udp_checksum() {
    let mut r = Rig::new(&config(1, "dnat"));
    let f = frame(
        (ip("192.0.2.7"), 999),
        (ip("10.0.0.100"), 53),
        PROTO_UDP,
        b"q",
    );
    let (v, out) = r.run(&f);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(&out[30..34], &[10, 2, 0, 1]);
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 5353);
    assert!(checksums_ok(&out[14..]));
    let mut nocsum = f.clone();
    nocsum[40] = 0;
    nocsum[41] = 0;
    let (_, out) = r.run(&nocsum);
    assert_eq!(
        &out[40..42],
        &[0, 0],
        "UDP checksum 0 means none and stays none"
    );
}

#[test]
fn ipip_encapsulates_to_the_backend_and_leaves_the_inner_packet_alone() {
    let mut r = Rig::new(&config(3, "ipip"));
    let f = frame(
        (ip("192.0.2.7"), 40000),
        (ip("10.0.0.100"), 80),
        PROTO_TCP,
        b"x",
    );
    let (v, out) = r.run(&f);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(out.len(), f.len() + 20);
    assert_eq!(&out[12..14], &ETHERTYPE_IPV4.to_be_bytes());
    let outer = &out[14..34];
    assert_eq!(outer[0], 0x45);
    assert_eq!(outer[9], PROTO_IPIP);
    assert_eq!(&outer[12..16], &[10, 0, 0, 1]);
    assert_eq!(&outer[16..18], &[10, 1]);
    assert_eq!(
        usize::from(u16::from_be_bytes([outer[2], outer[3]])),
        f.len() - 14 + 20
    );
    assert_eq!(rfc1071(&[outer]), 0);
    assert_eq!(&out[34..], &f[14..], "inner packet unchanged");
    // Without headroom the packet is dropped and counted, never written out of bounds.
    let mut p = VecPacket::new(&f, 0);
    let ctx = PortCtx {
        mac: LB_MAC,
        stats: &r.port,
    };
    assert_eq!(r.worker.process(&r.table, &ctx, &mut p, 1), Verdict::Drop);
    assert_eq!(r.count(C::DropNoHeadroom), 1);
}

#[test]
fn arp_and_icmp_echo_are_answered_for_vips() {
    let mut r = Rig::new(&config(1, "dnat"));
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[192, 0, 2, 7]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 0, 0, 100]);
    let (v, out) = r.run(&arp);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(&out[0..6], &CLIENT_MAC);
    assert_eq!(u16::from_be_bytes([out[20], out[21]]), ARP_REPLY);
    assert_eq!(&out[22..28], &LB_MAC);
    assert_eq!(&out[28..32], &[10, 0, 0, 100]);
    assert_eq!(&out[38..42], &[192, 0, 2, 7]);
    // ARP for someone else goes to the kernel.
    let mut other = arp.clone();
    other[38..42].copy_from_slice(&[10, 0, 0, 55]);
    assert_eq!(r.run(&other).0, Verdict::Exception);

    // ICMP echo request to the VIP.
    let mut icmp = frame((ip("192.0.2.7"), 0), (ip("10.0.0.100"), 0), PROTO_UDP, b"");
    icmp[14 + 9] = PROTO_ICMP;
    // Re-emit the header with protocol ICMP and an echo body.
    let body = [8u8, 0, 0, 0, 0, 7, 0, 1, b'p', b'i', b'n', b'g'];
    icmp.truncate(34);
    icmp.extend_from_slice(&body);
    emit_ipv4_header(
        &mut icmp[14..],
        0,
        32,
        PROTO_ICMP,
        ip("192.0.2.7"),
        ip("10.0.0.100"),
    );
    let c = rfc1071(&[&icmp[34..]]);
    icmp[36..38].copy_from_slice(&c.to_be_bytes());
    let (v, out) = r.run(&icmp);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(out[34], ICMP_ECHO_REPLY);
    assert_eq!(&out[26..30], &[10, 0, 0, 100]);
    assert_eq!(&out[30..34], &[192, 0, 2, 7]);
    assert_eq!(rfc1071(&[&out[14..34]]), 0);
    assert_eq!(rfc1071(&[&out[34..]]), 0);
    assert_eq!(r.count(C::ArpReplies), 1);
    assert_eq!(r.count(C::IcmpEchoReplies), 1);
}

#[test]
fn malformed_frames_are_counted_never_forwarded() {
    let mut r = Rig::new(&config(2, "dnat"));
    let good = frame(
        (ip("192.0.2.7"), 40000),
        (ip("10.0.0.100"), 80),
        PROTO_TCP,
        b"abc",
    );
    // Every truncation of a good frame: dropped or excepted, never forwarded, no panic.
    for n in 0..good.len() {
        assert_ne!(r.run(&good[..n]).0, Verdict::Forward, "truncated to {n}");
    }
    assert!(r.count(C::DropTruncated) >= 14);

    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x43;
    assert_eq!(r.run(&bad_ihl).0, Verdict::Drop);
    assert_eq!(r.count(C::DropBadIpHeader), 1);

    let mut bad_csum = good.clone();
    bad_csum[14 + 10] ^= 0x55;
    assert_eq!(r.run(&bad_csum).0, Verdict::Drop);
    assert_eq!(r.count(C::DropBadChecksum), 1);

    let mut frag = good.clone();
    frag[14 + 6] = 0x20; // MF
    let c = {
        frag[24] = 0;
        frag[25] = 0;
        rfc1071(&[&frag[14..34]])
    };
    frag[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(r.run(&frag).0, Verdict::Exception);
    assert_eq!(r.count(C::ExceptionFragment), 1);

    let mut vlan = good.clone();
    vlan[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
    assert_eq!(r.run(&vlan).0, Verdict::Exception);
    assert_eq!(r.count(C::ExceptionNonIp), 1);
    // An IPv4 packet behind the IPv6 ethertype is a bad IPv6 header.
    let mut v6_type = good.clone();
    v6_type[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    assert_eq!(r.run(&v6_type).0, Verdict::Drop);
    assert_eq!(r.count(C::DropBadIpHeader), 2);

    let unknown_port = frame((ip("192.0.2.7"), 1), (ip("10.0.0.100"), 81), PROTO_TCP, b"");
    assert_eq!(r.run(&unknown_port).0, Verdict::Drop);
    assert_eq!(r.count(C::DropUnknownVip), 1);

    let host = frame((ip("192.0.2.7"), 1), (ip("10.0.0.1"), 22), PROTO_TCP, b"");
    assert_eq!(r.run(&host).0, Verdict::Exception);
    assert_eq!(r.count(C::ExceptionOther), 1);
}

fn flow(i: u32) -> Vec<u8> {
    let src = Ipv4Addr::from(0xc000_0000u32 + i / 50_000);
    frame(
        (src, (i % 50_000) as u16 + 1024),
        (ip("10.0.0.100"), 80),
        PROTO_TCP,
        b"",
    )
}

fn backend_of(out: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(out[30], out[31], out[32], out[33])
}

#[test]
fn maglev_balances_100k_flows_within_5_percent() {
    let n = 8;
    let mut r = Rig::new(&config(n, "dnat"));
    let mut counts = HashMap::new();
    for i in 0..100_000 {
        let (v, out) = r.run(&flow(i));
        assert_eq!(v, Verdict::Forward);
        *counts.entry(backend_of(&out)).or_insert(0u32) += 1;
    }
    assert_eq!(counts.len(), n);
    let ideal = 100_000.0 / n as f64;
    for (b, c) in &counts {
        let dev = (f64::from(*c) - ideal).abs() / ideal;
        assert!(
            dev <= 0.05,
            "backend {b}: {c} flows, {:.1}% off",
            dev * 100.0
        );
    }
}

#[test]
fn removing_a_backend_moves_only_its_flows_and_flows_stay_pinned() {
    let n = 10;
    let mut before = Rig::new(&config(n, "dnat"));
    let first: Vec<Ipv4Addr> = (0..100_000)
        .map(|i| backend_of(&before.run(&flow(i)).1))
        .collect();
    let removed = ip("10.1.0.10");

    // A fresh balancer (no flow state) over N-1 backends: Maglev alone.
    let mut cfg = config(n, "dnat");
    cfg.clusters[0]
        .endpoints
        .retain(|e| e.address.ip().map(|a| a.ip()) != Some(std::net::IpAddr::V4(removed)));
    let mut after = Rig::new(&cfg);
    let moved = (0..100_000u32)
        .filter(|&i| {
            let b = backend_of(&after.run(&flow(i)).1);
            first[i as usize] != removed && b != first[i as usize]
        })
        .count();
    let limit = 100_000 / n + 1_000;
    let lost = first.iter().filter(|b| **b == removed).count();
    assert!(moved + lost <= limit, "moved {moved} + {lost} of 100000");

    // The same worker after a table swap that adds a backend: established flows stay.
    let mut cfg2 = config(n, "dnat");
    let mut extra = cfg2.clusters[0].endpoints[0].clone();
    extra.address = crate::config::EndpointAddress::Ip("10.1.9.9:8080".parse().unwrap());
    cfg2.clusters[0].endpoints.push(extra);
    // (10,000 flows in a 262,144-entry table: deterministic hashing, no eviction.)
    let mut sticky = Rig::with_flows(&config(n, "dnat"), 1 << 18);
    for i in 0..10_000 {
        sticky.run(&flow(i));
    }
    assert_eq!(sticky.count(C::FlowEvictions), 0);
    sticky.table = LbTable::compile(&cfg2, &addressing(), 2, &sticky.stats).unwrap();
    let mut fresh = Rig::new(&cfg2);
    let mut would_move = 0;
    for i in 0..10_000 {
        assert_eq!(backend_of(&sticky.run(&flow(i)).1), first[i as usize]);
        would_move += usize::from(backend_of(&fresh.run(&flow(i)).1) != first[i as usize]);
    }
    assert!(would_move > 0, "the new backend takes some new flows");
    // And flows of a removed backend are re-balanced rather than black-holed.
    sticky.table = LbTable::compile(&cfg, &addressing(), 3, &sticky.stats).unwrap();
    for i in 0..10_000 {
        let b = backend_of(&sticky.run(&flow(i)).1);
        assert_ne!(b, removed);
        if first[i as usize] != removed {
            assert_eq!(b, first[i as usize]);
        }
    }
}

#[test]
fn flow_table_evicts_when_full_and_counts_occupancy() {
    let stats = StatsRegistry::new(1);
    let t = LbTable::compile(&config(3, "dnat"), &addressing(), 1, &stats).unwrap();
    let mut w = LbWorker::new(0, 64);
    let port = stats.port("p0");
    let ctx = PortCtx {
        mac: LB_MAC,
        stats: &port,
    };
    for i in 0..1000 {
        let mut p = VecPacket::new(&flow(i), 0);
        assert_eq!(w.process(&t, &ctx, &mut p, u64::from(i)), Verdict::Forward);
    }
    assert_eq!(w.flows.live(), 64);
    assert_eq!(port.get(C::FlowTableEntries), 64);
    assert!(port.get(C::FlowEvictions) > 0);
}

#[test]
fn dnat_backend_shared_by_two_vips_is_rejected() {
    let cfg = parse(
        r#"
listeners:
  - {name: a, address: "10.0.0.100:80", cluster: p}
  - {name: b, address: "10.0.0.101:80", cluster: p}
clusters:
  - {name: p, endpoints: ["10.1.0.1:8080"]}
"#,
        Format::Yaml,
    )
    .unwrap();
    let e = LbTable::compile(&cfg, &addressing(), 1, &StatsRegistry::new(1)).unwrap_err();
    assert!(e.to_string().contains("one VIP"), "{e}");
    let mut no_tunnel = addressing();
    no_tunnel.tunnel_src = None;
    let e =
        LbTable::compile(&config(1, "ipip"), &no_tunnel, 1, &StatsRegistry::new(1)).unwrap_err();
    assert!(e.to_string().contains("--dpdk-tunnel-src"), "{e}");
}

#[test]
fn fuzz_corpus_replays_without_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/packet");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("the committed fuzz corpus") {
        let frame = std::fs::read(e.unwrap().path()).unwrap();
        fuzz_one(&frame);
        // Every truncation and every single-byte corruption of it, too.
        for cut in 0..frame.len() {
            fuzz_one(&frame[..cut]);
        }
        for i in 0..frame.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut f = frame.clone();
                f[i] ^= x;
                fuzz_one(&f);
            }
        }
        n += 1;
    }
    assert!(n >= 10, "corpus has {n} files");
}

/// A bounded property test standing in for the fuzzer where cargo-fuzz (nightly) is not
/// at hand: 30,000 frames built around the fuzz fixture's VIPs and backends (requests,
/// replies, ARP, ICMP, fragments, IPv4 options, odd lengths), each then corrupted at a
/// few random bytes or cut at a random length. `fuzz_one` holds every output to the
/// target's oracle: no panic, forwarded IPv4 verifies, the TCP/UDP checksum survives the
/// rewrite exactly as right or wrong as it came in.
#[test]
fn random_structured_frames_keep_the_fuzz_oracle() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let ips = [
        Ipv4Addr::new(10, 0, 0, 100),
        Ipv4Addr::new(10, 0, 0, 101),
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 1, 0, 1),
        Ipv4Addr::new(10, 2, 0, 1),
        Ipv4Addr::new(198, 51, 100, 7),
    ];
    let ports = [80u16, 53, 443, 8080, 5353, 40000];
    let (mut forwarded, mut total) = (0, 0);
    for i in 0..30_000u32 {
        let r = rnd();
        let pick_ip = |x: u64| ips[(x % ips.len() as u64) as usize];
        let pick_port = |x: u64| ports[(x % ports.len() as u64) as usize];
        let proto = [PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_IPIP][(r % 4) as usize];
        let payload = vec![(r >> 8) as u8; (r >> 16) as usize % 40];
        let mut f = if proto == PROTO_TCP || proto == PROTO_UDP {
            frame(
                (pick_ip(r >> 20), pick_port(r >> 24)),
                (pick_ip(r >> 28), pick_port(r >> 32)),
                proto,
                &payload,
            )
        } else {
            // ICMP echo request or IPIP: build as UDP, then retag and fix the header.
            let mut f = frame(
                (pick_ip(r >> 20), 1),
                (pick_ip(r >> 28), 2),
                PROTO_UDP,
                &payload,
            );
            f[14 + 9] = proto;
            if proto == PROTO_ICMP {
                f[34] = 8;
                f[35] = 0;
            }
            let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
            ip.fill_checksum();
            f
        };
        match (r >> 36) % 8 {
            // An ARP request for one of the addresses.
            0 => {
                f.truncate(14);
                f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
                f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
                f.extend_from_slice(&CLIENT_MAC);
                f.extend_from_slice(&[198, 51, 100, 7, 0, 0, 0, 0, 0, 0]);
                f.extend_from_slice(&pick_ip(r >> 40).octets());
            }
            // A fragment.
            1 => {
                f[14 + 6] = 0x20;
                Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
            }
            // Ethernet padding after the IPv4 total length.
            2 => f.extend_from_slice(&[0; 7]),
            _ => {}
        }
        // Corrupt a few bytes, or cut, or leave it valid.
        match (r >> 44) % 4 {
            0 => {
                for _ in 0..1 + (r >> 48) % 3 {
                    let x = rnd();
                    let at = (x % f.len() as u64) as usize;
                    f[at] ^= (x >> 32) as u8 | 1;
                }
            }
            1 => {
                let cut = (rnd() % f.len() as u64) as usize;
                f.truncate(cut);
            }
            _ => {}
        }
        if i % 1000 == 0 {
            f.clear();
        }
        let mut pkt = VecPacket::new(&f, 64);
        total += 1;
        if fuzz_verdict(&f, &mut pkt) == Verdict::Forward {
            forwarded += 1;
        }
        fuzz_one(&f);
    }
    // The generator reaches the forwarding paths, not just the drop counters.
    assert!(forwarded > total / 10, "{forwarded} of {total} forwarded");
}

/// The fuzz fixture's verdict for `f` (a fresh worker; only to measure coverage).
fn fuzz_verdict(_f: &[u8], pkt: &mut VecPacket) -> Verdict {
    use std::sync::OnceLock;
    static T: OnceLock<(LbTable, Arc<PortStats>)> = OnceLock::new();
    let (t, port) = T.get_or_init(|| {
        let cfg = parse(FUZZ_CONFIG, Format::Yaml).unwrap();
        let stats = StatsRegistry::new(1);
        let a = LbAddressing {
            local_ips: vec![Ipv4Addr::new(10, 0, 0, 1).into()],
            tunnel_src: Some(Ipv4Addr::new(10, 0, 0, 1)),
            tunnel_src6: Some(ip6("2001:db8::1")),
            neighbors: vec![],
            gateway: Some(GW_MAC),
        };
        (
            LbTable::compile(&cfg, &a, 1, &stats).unwrap(),
            stats.port("p"),
        )
    });
    let ctx = PortCtx {
        mac: LB_MAC,
        stats: port,
    };
    LbWorker::new(0, 64).process(t, &ctx, pkt, 1)
}

/// The burst path (hash peeked and bucket prefetched first, counters added per run)
/// decides, rewrites and counts exactly like frame-by-frame `process`, on the fuzz
/// corpus and every single-byte corruption of it (IHL changes move the L4 offset).
#[test]
fn burst_path_matches_frame_by_frame() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/packet");
    let mut frames = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let f = std::fs::read(e.unwrap().path()).unwrap();
        for i in 0..f.len().min(60) {
            let mut g = f.clone();
            g[i] ^= 0x41;
            frames.push(g);
        }
        frames.push(f);
    }
    let cfg = parse(FUZZ_CONFIG, Format::Yaml).unwrap();
    let a = LbAddressing {
        local_ips: vec![Ipv4Addr::new(10, 0, 0, 1).into()],
        tunnel_src: Some(Ipv4Addr::new(10, 0, 0, 1)),
        tunnel_src6: Some(ip6("2001:db8::1")),
        neighbors: vec![],
        gateway: Some(GW_MAC),
    };
    let run = |burst: bool| {
        let stats = StatsRegistry::new(1);
        let t = LbTable::compile(&cfg, &a, 1, &stats).unwrap();
        let port = stats.port("p");
        let ctx = PortCtx {
            mac: LB_MAC,
            stats: &port,
        };
        let mut w = LbWorker::new(0, 1024);
        let mut out = Vec::new();
        for chunk in frames.chunks(MAX_BURST) {
            let mut pkts: Vec<VecPacket> = chunk.iter().map(|f| VecPacket::new(f, 64)).collect();
            let mut verdicts = vec![Verdict::Drop; pkts.len()];
            if burst {
                w.process_burst(&t, &ctx, &mut pkts, &mut verdicts, 1);
            } else {
                for (p, v) in pkts.iter_mut().zip(verdicts.iter_mut()) {
                    *v = w.process(&t, &ctx, p, 1);
                }
            }
            out.extend(pkts.iter().map(|p| p.frame().to_vec()).zip(verdicts));
        }
        let reports: Vec<(String, Vec<(String, u64)>)> = stats
            .packet_reports()
            .into_iter()
            .map(|(n, r)| (n, r.totals))
            .collect();
        (out, reports)
    };
    let (one, one_stats) = run(false);
    let (burst, burst_stats) = run(true);
    assert!(one.iter().any(|(_, v)| *v == Verdict::Forward));
    assert_eq!(one, burst);
    assert_eq!(one_stats, burst_stats);
}

/// A packet the "NIC" flagged: RTE_MBUF_F_RX_IP_CKSUM_GOOD when `good`.
struct Flagged {
    pkt: VecPacket,
    good: bool,
}

// SAFETY: the data is the inner VecPacket's (a heap buffer only prepend/resize change).
unsafe impl PacketBuf for Flagged {
    fn data(&mut self) -> &mut [u8] {
        self.pkt.data()
    }
    fn prepend(&mut self, n: usize) -> bool {
        self.pkt.prepend(n)
    }
    fn resize(&mut self, len: usize) -> bool {
        self.pkt.resize(len)
    }
    fn ip_checksum_good(&self) -> bool {
        self.good
    }
}

/// The burst path trusts a NIC that verified the IPv4 header checksum (no second check
/// in software); without that flag a bad header is still caught and counted.
#[test]
fn burst_skips_the_header_check_the_nic_did() {
    let mut r = Rig::new(&config(1, "dnat"));
    let mut f = frame(
        (ip("192.0.2.7"), 40000),
        (ip("10.0.0.100"), 80),
        PROTO_TCP,
        b"x",
    );
    f[24] ^= 0x10; // header checksum now wrong
    let ctx = PortCtx {
        mac: LB_MAC,
        stats: &r.port,
    };
    let mut pkts = [
        Flagged {
            pkt: VecPacket::new(&f, 64),
            good: true,
        },
        Flagged {
            pkt: VecPacket::new(&f, 64),
            good: false,
        },
    ];
    let mut verdicts = [Verdict::Drop; 2];
    r.worker
        .process_burst(&r.table, &ctx, &mut pkts, &mut verdicts, 1);
    assert_eq!(verdicts, [Verdict::Forward, Verdict::Drop]);
    assert_eq!(r.count(C::DropBadChecksum), 1);
    // Rewritten as any other frame: to the backend, the header checksum updated in
    // step (exactly as wrong as it came in), the TCP checksum valid.
    let out = pkts[0].pkt.frame();
    assert_eq!(&out[30..34], &[10, 1, 0, 1]);
    assert_ne!(rfc1071(&[&f[14..34]]), 0);
    assert_eq!(rfc1071(&[&out[14..34]]), rfc1071(&[&f[14..34]]));
    assert_eq!(l4_checksum_ok(out), Some(true));
}

// === IPv6 ===

const V6_CONFIG: &str = r#"
listeners:
  - {name: web6, address: "[2001:db8::100]:80", cluster: pool6}
  - {name: dns6, address: "[2001:db8::100]:53", protocol: udp, cluster: dnspool6}
  - {name: dsr6, address: "[2001:db8::101]:443", cluster: tunnel6, forwarding: ipip}
clusters:
  - {name: pool6, endpoints: ["[2001:db8:1::1]:8080"]}
  - {name: dnspool6, endpoints: ["[2001:db8:2::1]:5353"]}
  - {name: tunnel6, endpoints: ["[2001:db8:3::1]:443", "[2001:db8:3::2]:443"]}
"#;

/// The IPv6 pseudo-header sum check (RFC 8200 §8.1) with the independent RFC 1071 loop.
use crate::engine::dpdk::testing::checksum6_valid as upper_ok6;

/// Ethernet (to us, from the client) + IPv6 + `next` header `body` (its checksum at
/// `csum_at` filled, if any): the shared builder with this file's MACs.
fn frame6_raw(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    hop: u8,
    body: Vec<u8>,
    csum_at: Option<usize>,
) -> Vec<u8> {
    crate::engine::dpdk::testing::frame6_raw(
        (LB_MAC, CLIENT_MAC),
        src,
        dst,
        next,
        hop,
        body,
        csum_at,
    )
}

fn frame6(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), protocol: u8, payload: &[u8]) -> Vec<u8> {
    crate::engine::dpdk::testing::frame6((LB_MAC, CLIENT_MAC), src, dst, protocol, payload)
}

fn v6_rig() -> Rig {
    Rig::new(&parse(V6_CONFIG, Format::Yaml).unwrap())
}

#[test]
fn ipv6_dnat_rewrites_destination_replies_come_back_from_the_vip() {
    let mut r = v6_rig();
    let client = (ip6("2001:db8:ff::7"), 40000);
    let (v, out) = r.run(&frame6(
        client,
        (ip6("2001:db8::100"), 80),
        PROTO_TCP,
        b"GET /",
    ));
    assert_eq!(v, Verdict::Forward);
    assert_eq!(
        &out[0..6],
        &[2, 0, 0, 0, 6, 1],
        "the backend's neighbor entry"
    );
    assert_eq!(&out[6..12], &LB_MAC);
    assert_eq!(&out[38..54], &ip6("2001:db8:1::1").octets());
    assert_eq!(&out[22..38], &client.0.octets());
    assert_eq!(u16::from_be_bytes([out[56], out[57]]), 8080);
    assert!(upper_ok6(&out[14..]));
    // The backend's reply leaves as the VIP, towards the gateway.
    let (v, out) = r.run(&frame6(
        (ip6("2001:db8:1::1"), 8080),
        client,
        PROTO_TCP,
        b"200 OK",
    ));
    assert_eq!(v, Verdict::Forward);
    assert_eq!(&out[0..6], &GW_MAC);
    assert_eq!(&out[22..38], &ip6("2001:db8::100").octets());
    assert_eq!(u16::from_be_bytes([out[54], out[55]]), 80);
    assert!(upper_ok6(&out[14..]));
    // UDP.
    let (v, out) = r.run(&frame6(
        client,
        (ip6("2001:db8::100"), 53),
        PROTO_UDP,
        b"query",
    ));
    assert_eq!(v, Verdict::Forward);
    assert_eq!(&out[38..54], &ip6("2001:db8:2::1").octets());
    assert_eq!(u16::from_be_bytes([out[56], out[57]]), 5353);
    assert!(upper_ok6(&out[14..]));
    assert_eq!(r.stats.packets("vip/web6").get(P::Packets), 1);
    assert_eq!(r.stats.packets("vip/web6").get(P::ReplyPackets), 1);
    // The flow is pinned: a second packet of it takes the flow table.
    let (_, out2) = r.run(&frame6(
        client,
        (ip6("2001:db8::100"), 80),
        PROTO_TCP,
        b"more",
    ));
    assert_eq!(&out2[38..54], &ip6("2001:db8:1::1").octets());
    assert_eq!(r.stats.packets("vip/web6").get(P::FlowsNew), 1);
}

#[test]
fn ipv6_in_ipv6_encapsulates_to_the_backend_and_leaves_the_inner_packet_alone() {
    let mut r = v6_rig();
    let f = frame6(
        (ip6("2001:db8:ff::7"), 40000),
        (ip6("2001:db8::101"), 443),
        PROTO_TCP,
        b"hello",
    );
    let (v, out) = r.run(&f);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(out.len(), f.len() + 40);
    assert_eq!(&out[0..6], &GW_MAC);
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    assert_eq!(out[14] >> 4, 6);
    assert_eq!(
        usize::from(u16::from_be_bytes([out[18], out[19]])),
        f.len() - 14
    );
    assert_eq!(out[20], 41, "next header: IPv6");
    assert_eq!(&out[22..38], &ip6("2001:db8::1").octets());
    let dst = &out[38..54];
    assert!(dst == ip6("2001:db8:3::1").octets() || dst == ip6("2001:db8:3::2").octets());
    assert_eq!(&out[54..], &f[14..], "inner packet unchanged");
}

/// A Neighbor Solicitation for `target` from `src` (with a source link-layer address
/// option unless `src` is unspecified), hop limit `hop`.
fn solicit(src: Ipv6Addr, target: Ipv6Addr, hop: u8) -> Vec<u8> {
    let mut body = vec![ND_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&target.octets());
    if !src.is_unspecified() {
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&CLIENT_MAC);
    }
    let t = target.octets();
    let snm = Ipv6Addr::from([
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    ]);
    frame6_raw(src, snm, PROTO_ICMPV6, hop, body, Some(2))
}

#[test]
fn neighbor_solicitations_for_our_addresses_are_answered() {
    let mut r = v6_rig();
    let client = ip6("fe80::2");
    for target in ["2001:db8::100", "2001:db8::1"] {
        let (v, out) = r.run(&solicit(client, ip6(target), 255));
        assert_eq!(v, Verdict::Forward, "{target}");
        assert_eq!(&out[0..6], &CLIENT_MAC);
        assert_eq!(&out[6..12], &LB_MAC);
        assert_eq!(out.len(), 14 + 40 + 32);
        assert_eq!(out[20], PROTO_ICMPV6);
        assert_eq!(out[21], 255, "hop limit 255 (RFC 4861 §7.1.2)");
        assert_eq!(&out[22..38], &ip6(target).octets());
        assert_eq!(&out[38..54], &client.octets());
        assert_eq!(out[54], ND_NEIGHBOR_ADVERT);
        assert_eq!(out[58], 0x60, "Solicited and Override");
        assert_eq!(&out[62..78], &ip6(target).octets());
        assert_eq!(&out[78..80], &[2, 1], "target link-layer address option");
        assert_eq!(&out[80..86], &LB_MAC);
        assert!(upper_ok6(&out[14..]));
    }
    // Duplicate Address Detection (from ::, no option): answered to all nodes, grown.
    let (v, out) = r.run(&solicit(Ipv6Addr::UNSPECIFIED, ip6("2001:db8::100"), 255));
    assert_eq!(v, Verdict::Forward);
    assert_eq!(&out[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
    assert_eq!(&out[38..54], &ip6("ff02::1").octets());
    assert_eq!(out[58], 0x20, "unsolicited: Override only");
    assert!(upper_ok6(&out[14..]));
    assert_eq!(r.count(C::NdAdvertisements), 3);
    // Not ours: the kernel's. Hop limit below 255 or a bad checksum: dropped.
    assert_eq!(
        r.run(&solicit(client, ip6("2001:db8::99"), 255)).0,
        Verdict::Exception
    );
    assert_eq!(
        r.run(&solicit(client, ip6("2001:db8::100"), 64)).0,
        Verdict::Drop
    );
    let mut bad = solicit(client, ip6("2001:db8::100"), 255);
    bad[60] ^= 1;
    assert_eq!(r.run(&bad).0, Verdict::Drop);
    assert_eq!(r.count(C::DropBadIpHeader), 1);
    assert_eq!(r.count(C::DropBadChecksum), 1);
}

#[test]
fn icmpv6_echo_to_a_vip_is_answered() {
    let mut r = v6_rig();
    let client = ip6("2001:db8:ff::7");
    let body = vec![
        ICMPV6_ECHO_REQUEST,
        0,
        0,
        0,
        0x12,
        0x34,
        0,
        1,
        b'p',
        b'i',
        b'n',
        b'g',
    ];
    let f = frame6_raw(
        client,
        ip6("2001:db8::100"),
        PROTO_ICMPV6,
        64,
        body,
        Some(2),
    );
    let (v, out) = r.run(&f);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(&out[0..6], &CLIENT_MAC);
    assert_eq!(out[54], ICMPV6_ECHO_REPLY);
    assert_eq!(&out[22..38], &ip6("2001:db8::100").octets());
    assert_eq!(&out[38..54], &client.octets());
    assert_eq!(&out[58..], &f[58..], "identifier, sequence and data echoed");
    assert!(upper_ok6(&out[14..]));
    assert_eq!(r.count(C::IcmpEchoReplies), 1);
}

#[test]
fn malformed_and_unsupported_ipv6_is_counted_never_forwarded() {
    let mut r = v6_rig();
    let client = (ip6("2001:db8:ff::7"), 40000);
    let vip = (ip6("2001:db8::100"), 80);
    let good = frame6(client, vip, PROTO_TCP, b"x");
    let mut cases: Vec<(Vec<u8>, Verdict, C)> = Vec::new();
    cases.push((good[..50].to_vec(), Verdict::Drop, C::DropTruncated));
    let mut v4 = good.clone();
    v4[14] = 0x40;
    cases.push((v4, Verdict::Drop, C::DropBadIpHeader));
    let mut long = good.clone();
    long[18..20].copy_from_slice(&200u16.to_be_bytes());
    cases.push((long, Verdict::Drop, C::DropTruncated));
    let mut short_tcp = good.clone();
    short_tcp[18..20].copy_from_slice(&10u16.to_be_bytes());
    cases.push((short_tcp, Verdict::Drop, C::DropTruncated));
    let mut hbh = good.clone();
    hbh[20] = 0; // hop-by-hop options first
    cases.push((hbh, Verdict::Exception, C::ExceptionIpv6ExtHeader));
    let mut frag = good.clone();
    frag[20] = 44;
    cases.push((frag, Verdict::Exception, C::ExceptionFragment));
    cases.push((
        frame6(client, (vip.0, 81), PROTO_TCP, b"?"),
        Verdict::Drop,
        C::DropUnknownVip,
    ));
    cases.push((
        frame6(client, (ip6("2001:db8::5"), 22), PROTO_TCP, b"ssh"),
        Verdict::Exception,
        C::ExceptionOther,
    ));
    let icmp_short = frame6_raw(client.0, vip.0, PROTO_ICMPV6, 255, vec![135, 0], None);
    cases.push((icmp_short, Verdict::Drop, C::DropTruncated));
    for (i, (f, want, counter)) in cases.into_iter().enumerate() {
        let before = r.count(counter);
        let (v, _) = r.run(&f);
        assert_eq!(v, want, "case {i}");
        assert_eq!(r.count(counter), before + 1, "case {i} counted");
    }
    assert_eq!(r.count(C::NdAdvertisements), 0);
}

#[test]
fn ipv6_vip_with_an_ipv4_backend_is_rejected() {
    let cfg = parse(
        r#"
listeners:
  - {name: web6, address: "[2001:db8::100]:80", cluster: pool}
clusters:
  - {name: pool, endpoints: ["10.1.0.1:8080"]}
"#,
        Format::Yaml,
    )
    .unwrap();
    let err = LbTable::compile(&cfg, &addressing(), 1, &StatsRegistry::new(1)).unwrap_err();
    assert!(err.to_string().contains("one address family"), "{err}");
    let mut no_src = addressing();
    no_src.tunnel_src6 = None;
    let cfg = parse(V6_CONFIG, Format::Yaml).unwrap();
    let err = LbTable::compile(&cfg, &no_src, 1, &StatsRegistry::new(1)).unwrap_err();
    assert!(err.to_string().contains("--dpdk-tunnel-src6"), "{err}");
}

/// Random IPv6 TCP/UDP segments (addresses, ports, payload lengths and bytes from a fixed
/// seed) through DNAT and back: every rewritten checksum verifies with the independent
/// RFC 1071 loop, and a deliberately wrong one stays wrong (the update is incremental).
#[test]
fn random_ipv6_rewrites_keep_checksums_exactly_as_valid() {
    let mut r = v6_rig();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..2_000u32 {
        let mut a = [0u8; 16];
        a.iter_mut().for_each(|b| *b = next() as u8);
        let client = (Ipv6Addr::from(a), (next() as u16).max(1));
        let proto = if i % 2 == 0 { PROTO_TCP } else { PROTO_UDP };
        let payload: Vec<u8> = (0..next() % 40).map(|_| next() as u8).collect();
        let to_vip = (
            ip6("2001:db8::100"),
            if proto == PROTO_TCP { 80 } else { 53 },
        );
        let mut f = frame6(client, to_vip, proto, &payload);
        let corrupt = i % 7 == 0;
        if corrupt {
            let at = f.len() - 1;
            f[at] ^= 0x5a;
            if payload.is_empty() {
                f[14 + 40 + 4] ^= 0x5a; // a header byte instead (TCP seq / UDP length)
            }
        }
        let (v, out) = r.run(&f);
        assert_eq!(v, Verdict::Forward, "frame {i}");
        assert_eq!(upper_ok6(&out[14..]), !corrupt, "frame {i} forward");
        let backend = Ipv6Addr::from(<[u8; 16]>::try_from(&out[38..54]).unwrap());
        let port = u16::from_be_bytes([out[56], out[57]]);
        let reply = frame6((backend, port), client, proto, &payload);
        let (v, out) = r.run(&reply);
        assert_eq!(v, Verdict::Forward, "reply {i}");
        assert!(upper_ok6(&out[14..]), "reply {i}");
        assert_eq!(&out[22..38], &to_vip.0.octets());
    }
}

/// A cluster's `maglev_lb_config.table_size` sizes the packet balancer's table too (the
/// balancer is Maglev whatever the policy; the size is the operator's to choose).
#[test]
fn maglev_table_size_is_honoured() {
    let stats = StatsRegistry::new(1);
    let mut cfg = config(3, "dnat");
    let t = LbTable::compile(&cfg, &addressing(), 1, &stats).unwrap();
    assert_eq!(
        t.clusters[0].maglev.table().len(),
        maglev::DEFAULT_TABLE_SIZE
    );
    cfg.clusters[0].lb_policy = crate::config::LbPolicy::Maglev;
    cfg.clusters[0].maglev_lb_config = Some(crate::config::MaglevLbConfig {
        table_size: Some(131_071),
    });
    let t = LbTable::compile(&cfg, &addressing(), 2, &stats).unwrap();
    assert_eq!(t.clusters[0].maglev.table().len(), 131_071);
}

/// fast4's header-checksum test (divisibility by 0xffff) agrees with folding the sum,
/// on the edge values and 200,000 pseudo-random non-zero sums.
#[test]
fn folds_to_ffff_matches_the_fold() {
    let mut vals = vec![
        1,
        0xfffe,
        0xffff,
        0x1_0000,
        0x1_fffe,
        0xffff_ffff,
        0xffff_0000_ffff,
        u64::MAX,
        u64::MAX - 1,
        0x0001_0001_0001_0001,
    ];
    let mut x = 0x243f_6a88_85a3_08d3u64;
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        vals.push(x);
        // Near multiples of 0xffff, where a wrong test would show.
        vals.push((x >> 17) * 0xffff);
        vals.push((x >> 17) * 0xffff + 1);
    }
    for s in vals.into_iter().filter(|&s| s != 0) {
        assert_eq!(folds_to_ffff(s), fold64(s) == 0xffff, "sum {s:#x}");
    }
}

/// A VIP remembered from an earlier burst is used only if the table the next burst gets
/// still has that VIP at that index: after a swap to a table where the index names
/// another VIP, frames go where that table says.
#[test]
fn vip_hint_does_not_outlive_its_table() {
    let one = "listeners:\n  - {name: a, address: \"10.0.0.100:80\", cluster: x}\n  - {name: b, address: \"10.0.0.101:80\", cluster: y}\nclusters:\n  - {name: x, endpoints: [\"10.1.0.1:8080\"]}\n  - {name: y, endpoints: [\"10.2.0.1:8080\"]}\n";
    // The same VIPs in the other order (b at index 0).
    let two = "listeners:\n  - {name: b, address: \"10.0.0.101:80\", cluster: y}\n  - {name: a, address: \"10.0.0.100:80\", cluster: x}\nclusters:\n  - {name: x, endpoints: [\"10.1.0.1:8080\"]}\n  - {name: y, endpoints: [\"10.2.0.1:8080\"]}\n";
    let stats = StatsRegistry::new(1);
    let a = LbAddressing {
        gateway: Some(GW_MAC),
        ..Default::default()
    };
    let t1 = LbTable::compile(&parse(one, Format::Yaml).unwrap(), &a, 1, &stats).unwrap();
    let t2 = LbTable::compile(&parse(two, Format::Yaml).unwrap(), &a, 2, &stats).unwrap();
    let port = stats.port("p");
    let ctx = PortCtx {
        mac: LB_MAC,
        stats: &port,
    };
    let mut w = LbWorker::new(0, 64);
    let to_a = frame(
        (ip("192.0.2.7"), 40000),
        (ip("10.0.0.100"), 80),
        PROTO_TCP,
        b"x",
    );
    let to_b = frame(
        (ip("192.0.2.7"), 40001),
        (ip("10.0.0.101"), 80),
        PROTO_TCP,
        b"x",
    );
    let mut verdicts = [Verdict::Drop; 1];
    // Each burst after the first finds the previous burst's VIP index naming another VIP.
    for (t, f, backend) in [
        (&t1, &to_a, [10, 1, 0, 1]),
        (&t2, &to_a, [10, 1, 0, 1]),
        (&t1, &to_a, [10, 1, 0, 1]),
        (&t2, &to_b, [10, 2, 0, 1]),
        (&t1, &to_b, [10, 2, 0, 1]),
    ] {
        let mut pkts = [VecPacket::new(f, 64)];
        w.process_burst(t, &ctx, &mut pkts, &mut verdicts, 1);
        assert_eq!(verdicts[0], Verdict::Forward);
        assert_eq!(pkts[0].frame()[30..34], backend);
    }
}
