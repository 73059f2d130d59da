//! pcap in → pcap out through the real DPDK engine (`net_pcap`, `--no-huge`): packets
//! built here, the output parsed here, headers and checksums verified with this file's
//! own checksum code. Each run is its own `tickmesh` process.
#![cfg(feature = "dpdk")]

mod dpdk_common;

use std::collections::HashMap;
use std::net::Ipv4Addr;

use dpdk_common::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

const CONFIG: &str = r#"
listeners:
  - {name: web, address: "10.0.0.100:80", cluster: pool}
  - {name: dns, address: "10.0.0.100:53", protocol: udp, cluster: dnspool}
  - {name: dsr, address: "10.0.0.101:443", cluster: tunnel, forwarding: ipip}
clusters:
  - {name: pool, endpoints: ["10.1.0.1:8080"]}
  - {name: dnspool, endpoints: ["10.2.0.1:5353"]}
  - {name: tunnel, endpoints: ["10.3.0.1:443", "10.3.0.2:443"]}
"#;

#[test]
fn rewrites_answers_and_rejects_through_net_pcap() {
    if !dpdk_usable() {
        return;
    }
    let dir = tempdir("pcap-rewrite");
    let client = (ip("192.0.2.7"), 40000);
    let mut frames = vec![
        frame(client, (ip("10.0.0.100"), 80), 6, b"GET /"), // 0 DNAT TCP
        frame((ip("10.1.0.1"), 8080), client, 6, b"200 OK"), // 1 reply (SNAT back)
        frame((ip("192.0.2.7"), 999), (ip("10.0.0.100"), 53), 17, b"query"), // 2 DNAT UDP
        frame(client, (ip("10.0.0.101"), 443), 6, b"hello"), // 3 IPIP
    ];
    // 4: ARP request for the VIP.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 10, 0, 0, 100]);
    frames.push(arp);
    // 5: ICMP echo request to the VIP.
    let mut echo = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
    let c = csum(&[&echo]);
    echo[2..4].copy_from_slice(&c.to_be_bytes());
    let mut icmp = LB_MAC.to_vec();
    icmp.extend_from_slice(&CLIENT_MAC);
    icmp.extend_from_slice(&[0x08, 0x00]);
    icmp.extend_from_slice(&ipv4_header(32, 1, ip("192.0.2.7"), ip("10.0.0.100"), 0));
    icmp.extend_from_slice(&echo);
    frames.push(icmp);
    let forwarded = frames.len();
    // Bad input: truncated, bad IHL, bad checksum (dropped); fragment, VLAN tag, host
    // traffic (exception path); unknown VIP port (dropped).
    let good = frame(client, (ip("10.0.0.100"), 80), 6, b"x");
    frames.push(good[..30].to_vec());
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x42;
    frames.push(bad_ihl);
    let mut bad_csum = good.clone();
    bad_csum[24] ^= 0xff;
    frames.push(bad_csum);
    let mut frag = LB_MAC.to_vec();
    frag.extend_from_slice(&CLIENT_MAC);
    frag.extend_from_slice(&[0x08, 0x00]);
    frag.extend_from_slice(&ipv4_header(
        28,
        17,
        ip("192.0.2.7"),
        ip("10.0.0.100"),
        0x2000,
    ));
    frag.extend_from_slice(&[0; 8]);
    frames.push(frag);
    let mut vlan = good.clone();
    vlan[12..14].copy_from_slice(&[0x81, 0x00]); // a VLAN tag: not parsed, to the kernel
    frames.push(vlan);
    frames.push(frame(client, (ip("10.0.0.1"), 22), 6, b"ssh"));
    frames.push(frame(client, (ip("10.0.0.100"), 81), 6, b"?"));
    write_pcap(&dir.join("in.pcap"), &frames);

    let run = run_pcap(
        &dir,
        CONFIG,
        &[
            "--dpdk-gateway-mac",
            "02:00:00:00:00:fe",
            "--dpdk-neighbor",
            "10.1.0.1=02:00:00:00:01:01",
            "--dpdk-tunnel-src",
            "10.0.0.1",
            "--dpdk-local-ip",
            "10.0.0.1",
        ],
        forwarded,
    );
    let out = read_pcap(&dir.join("out.pcap"));
    assert_eq!(out.len(), forwarded, "{}", run.stderr);

    // 0: DNAT to the backend, next hop from the neighbor table.
    let o = &out[0];
    assert_eq!(&o[0..6], &BACKEND_MAC);
    assert_eq!(&o[6..12], &LB_MAC);
    assert_eq!(&o[30..34], &[10, 1, 0, 1]);
    assert_eq!(&o[26..30], &[192, 0, 2, 7]);
    assert_eq!(u16::from_be_bytes([o[36], o[37]]), 8080);
    assert!(checksums_valid(&o[14..]));
    // 1: the reply comes from the VIP again, to the client via the gateway.
    let o = &out[1];
    assert_eq!(&o[0..6], &GW_MAC);
    assert_eq!(&o[26..30], &[10, 0, 0, 100]);
    assert_eq!(u16::from_be_bytes([o[34], o[35]]), 80);
    assert!(checksums_valid(&o[14..]));
    // 2: UDP DNAT.
    let o = &out[2];
    assert_eq!(&o[30..34], &[10, 2, 0, 1]);
    assert_eq!(u16::from_be_bytes([o[36], o[37]]), 5353);
    assert!(checksums_valid(&o[14..]));
    // 3: IP-in-IP to one of the tunnel backends, inner packet byte-identical.
    let o = &out[3];
    assert_eq!(o.len(), frames[3].len() + 20);
    assert_eq!(o[14 + 9], 4);
    assert_eq!(csum(&[&o[14..34]]), 0);
    assert_eq!(&o[26..30], &[10, 0, 0, 1]);
    assert!(o[30..34] == [10, 3, 0, 1] || o[30..34] == [10, 3, 0, 2]);
    assert_eq!(&o[34..], &frames[3][14..]);
    // 4: ARP reply with our MAC.
    let o = &out[4];
    assert_eq!(&o[0..6], &CLIENT_MAC);
    assert_eq!(&o[20..22], &[0, 2]);
    assert_eq!(&o[22..28], &LB_MAC);
    assert_eq!(&o[28..32], &[10, 0, 0, 100]);
    // 5: ICMP echo reply.
    let o = &out[5];
    assert_eq!(o[34], 0);
    assert_eq!(&o[26..30], &[10, 0, 0, 100]);
    assert_eq!(&o[30..34], &[192, 0, 2, 7]);
    assert_eq!(csum(&[&o[14..34]]), 0);
    assert_eq!(csum(&[&o[34..]]), 0);

    let exc = read_pcap(&dir.join("exc.pcap"));
    assert_eq!(
        exc.len(),
        3,
        "fragment, VLAN-tagged and host traffic go to the kernel"
    );
    let p = "port/net_pcap0";
    assert_eq!(run.counter(p, "rx_packets"), frames.len() as u64);
    assert_eq!(run.counter(p, "tx_packets"), forwarded as u64);
    assert_eq!(run.counter(p, "drop_truncated"), 1);
    assert_eq!(run.counter(p, "drop_bad_ip_header"), 1);
    assert_eq!(run.counter(p, "drop_bad_checksum"), 1);
    assert_eq!(run.counter(p, "drop_unknown_vip"), 1);
    assert_eq!(run.counter(p, "exception_fragment"), 1);
    assert_eq!(run.counter(p, "exception_non_ip"), 1);
    assert_eq!(run.counter(p, "exception_other"), 1);
    assert_eq!(run.counter(p, "arp_replies"), 1);
    assert_eq!(run.counter(p, "icmp_echo_replies"), 1);
    assert_eq!(run.counter("vip/web", "packets"), 1);
    assert_eq!(run.counter("vip/web", "reply_packets"), 1);
    assert_eq!(run.counter("backend/pool/10.1.0.1:8080", "flows_new"), 1);
    // Busy time: every frame received is an event of a busy turn; the worker parks when
    // idle (`--idle park`), and time asleep is never busy.
    let loops = &run.counters["worker_loops"]["total"];
    let get = |k: &str| {
        loops[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no worker_loops.{k}: {}", run.stdout))
    };
    assert_eq!(get("events"), frames.len() as u64);
    assert!(get("busy_turns") >= 1);
    assert!(get("busy_ns") > 0);
    assert!(
        get("busy_ns") * 2 < get("clock_ns"),
        "a parked worker's sleep counted busy: {loops}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

const N: usize = 8;

fn pool_config(backends: usize) -> String {
    let eps: Vec<String> = (1..=backends)
        .map(|i| format!("\"10.1.0.{i}:8080\""))
        .collect();
    format!(
        "listeners:\n  - {{name: web, address: \"10.0.0.100:80\", cluster: pool}}\nclusters:\n  - {{name: pool, endpoints: [{}]}}\n",
        eps.join(", ")
    )
}

fn flows() -> Vec<Vec<u8>> {
    (0..100_000u32)
        .map(|i| {
            let src = Ipv4Addr::from(0xc633_0000u32 + i / 40_000); // 198.51.x.x
            frame(
                (src, 1024 + (i % 40_000) as u16),
                (ip("10.0.0.100"), 80),
                6,
                b"",
            )
        })
        .collect()
}

fn backends(dir: &std::path::Path, backends: usize) -> Vec<[u8; 4]> {
    let run = run_pcap(
        dir,
        &pool_config(backends),
        &["--dpdk-gateway-mac", "02:00:00:00:00:fe"],
        100_000,
    );
    let out = read_pcap(&dir.join("out.pcap"));
    assert_eq!(out.len(), 100_000, "{}", run.stderr);
    out.iter()
        .map(|o| {
            assert!(checksums_valid(&o[14..]));
            [o[30], o[31], o[32], o[33]]
        })
        .collect()
}

#[test]
fn maglev_balance_and_minimal_disruption_over_100k_flows() {
    if !dpdk_usable() {
        return;
    }
    let dir = tempdir("pcap-maglev");
    write_pcap(&dir.join("in.pcap"), &flows());
    let before = backends(&dir, N);
    let mut count: HashMap<[u8; 4], usize> = HashMap::new();
    for b in &before {
        *count.entry(*b).or_default() += 1;
    }
    assert_eq!(count.len(), N);
    let ideal = 100_000 / N;
    for (b, c) in &count {
        assert!(
            c.abs_diff(ideal) * 100 <= ideal * 5,
            "backend {b:?}: {c} of 100000 flows (ideal {ideal})"
        );
    }

    // Remove the last backend: only its flows may move (≤ 1/N + 1% of all flows).
    std::fs::remove_file(dir.join("out.pcap")).unwrap();
    let after = backends(&dir, N - 1);
    let gone = [10, 1, 0, N as u8];
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let limit = 100_000 / N + 1_000;
    assert!(moved <= limit, "{moved} flows moved (limit {limit})");
    let survivors_moved = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != gone && b != a)
        .count();
    assert!(
        survivors_moved <= 1_000,
        "{survivors_moved} flows of surviving backends moved"
    );
    assert!(after.iter().all(|a| *a != gone));
    let _ = std::fs::remove_dir_all(&dir);
}

const CONFIG6: &str = r#"
listeners:
  - {name: web6, address: "[2001:db8::100]:80", cluster: pool6}
  - {name: dsr6, address: "[2001:db8::101]:443", cluster: tunnel6, forwarding: ipip}
clusters:
  - {name: pool6, endpoints: ["[2001:db8:1::1]:8080"]}
  - {name: tunnel6, endpoints: ["[2001:db8:3::1]:443"]}
"#;

/// IPv6 through the real engine: DNAT and its reply, IPv6-in-IPv6, a Neighbor
/// Solicitation and an echo request answered; malformed and unsupported IPv6 counted.
#[test]
fn ipv6_rewrites_answers_and_rejects_through_net_pcap() {
    if !dpdk_usable() {
        return;
    }
    let ip6 = |s: &str| -> std::net::Ipv6Addr { s.parse().unwrap() };
    let dir = tempdir("pcap-ipv6");
    let client = (ip6("2001:db8:ff::7"), 40000);
    let vip = (ip6("2001:db8::100"), 80);
    let mut ns = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&vip.0.octets());
    ns.extend_from_slice(&[1, 1]);
    ns.extend_from_slice(&CLIENT_MAC);
    let echo = vec![128u8, 0, 0, 0, 0, 7, 0, 1, b'h', b'i'];
    let mut frames = vec![
        frame6(client, vip, 6, b"GET /"),                           // 0 DNAT
        frame6((ip6("2001:db8:1::1"), 8080), client, 6, b"200 OK"), // 1 reply
        frame6(client, (ip6("2001:db8::101"), 443), 6, b"hello"),   // 2 IP6-in-IP6
        frame6_raw(
            ip6("fe80::2"),
            ip6("ff02::1:ff00:100"),
            58,
            255,
            ns,
            Some(2),
        ), // 3 NS
        frame6_raw(client.0, vip.0, 58, 64, echo, Some(2)),         // 4 echo
    ];
    let forwarded = frames.len();
    let good = frame6(client, vip, 6, b"x");
    frames.push(good[..40].to_vec()); // truncated
    let mut long = good.clone();
    long[18..20].copy_from_slice(&500u16.to_be_bytes()); // payload length past the frame
    frames.push(long);
    let mut hbh = good.clone();
    hbh[20] = 0; // hop-by-hop options header: exception
    frames.push(hbh);
    let mut frag = good.clone();
    frag[20] = 44; // fragment header: exception
    frames.push(frag);
    write_pcap(&dir.join("in.pcap"), &frames);

    let run = run_pcap(
        &dir,
        CONFIG6,
        &[
            "--dpdk-gateway-mac",
            "02:00:00:00:00:fe",
            "--dpdk-neighbor",
            "2001:db8:1::1=02:00:00:00:01:01",
            "--dpdk-tunnel-src6",
            "2001:db8::1",
        ],
        forwarded,
    );
    let out = read_pcap(&dir.join("out.pcap"));
    assert_eq!(out.len(), forwarded, "{}", run.stderr);
    let o = &out[0];
    assert_eq!(&o[0..6], &BACKEND_MAC);
    assert_eq!(&o[38..54], &ip6("2001:db8:1::1").octets());
    assert_eq!(u16::from_be_bytes([o[56], o[57]]), 8080);
    assert!(checksum6_valid(&o[14..]));
    let o = &out[1];
    assert_eq!(&o[0..6], &GW_MAC);
    assert_eq!(&o[22..38], &vip.0.octets());
    assert_eq!(u16::from_be_bytes([o[54], o[55]]), 80);
    assert!(checksum6_valid(&o[14..]));
    let o = &out[2];
    assert_eq!(o[20], 41);
    assert_eq!(&o[22..38], &ip6("2001:db8::1").octets());
    assert_eq!(&o[38..54], &ip6("2001:db8:3::1").octets());
    assert_eq!(&o[54..], &frames[2][14..]);
    let o = &out[3];
    assert_eq!(&o[0..6], &CLIENT_MAC);
    assert_eq!(o[54], 136, "Neighbor Advertisement");
    assert_eq!(&o[62..78], &vip.0.octets());
    assert_eq!(&o[80..86], &LB_MAC);
    assert!(checksum6_valid(&o[14..]));
    let o = &out[4];
    assert_eq!(o[54], 129, "echo reply");
    assert_eq!(&o[38..54], &client.0.octets());
    assert!(checksum6_valid(&o[14..]));

    assert_eq!(
        read_pcap(&dir.join("exc.pcap")).len(),
        2,
        "extension header and fragment go to the kernel"
    );
    let p = "port/net_pcap0";
    assert_eq!(run.counter(p, "drop_truncated"), 2);
    assert_eq!(run.counter(p, "exception_ipv6_ext_header"), 1);
    assert_eq!(run.counter(p, "exception_fragment"), 1);
    assert_eq!(run.counter(p, "nd_advertisements"), 1);
    assert_eq!(run.counter(p, "icmp_echo_replies"), 1);
    assert_eq!(run.counter("vip/web6", "packets"), 1);
    assert_eq!(run.counter("vip/web6", "reply_packets"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
