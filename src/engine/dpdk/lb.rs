//! The L4 packet load balancer: one frame in, one verdict out, rewritten in place.
//!
//! Owns the compiled [`LbTable`] (VIPs, backends with their Maglev tables, the DNAT reply
//! map, neighbors) and each worker's [`LbWorker`] (its flow table and counter slot). The
//! table is immutable and published like `route::Routes`; a worker loads it once per burst.
//! Never allocates, locks or makes a syscall per packet; never panics on any frame (the
//! `wire` views are checked before use, and the fuzz target holds us to it).
//!
//! Invariants: a flow (5-tuple) is pinned to the backend it was first given for as long as
//! that backend stays in its VIP's cluster and the flow stays active (Maglev only decides
//! for new flows, so a change of the backend set moves no established flow). DNAT replies
//! are recognised statelessly by their source (backend address, port, protocol), which
//! works on any queue RSS puts them on; `compile` therefore rejects a backend that serves
//! two DNAT VIPs.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use crate::cluster::maglev::{self, Maglev};
use crate::cluster::{cumulative, weighted};
use crate::config::{Config, ConfigError, Forwarding, Problem, Protocol};
use crate::route::{DEFAULT_TCP_IDLE_TIMEOUT, DEFAULT_UDP_IDLE_TIMEOUT};
use crate::telemetry::{
    PacketCounter as P, PacketStats, PortCounter as C, PortStats, StatsRegistry,
};

use super::wire::*;

/// A packet buffer the balancer can rewrite and grow at the front (an mbuf, or a `Vec`
/// in tests and fuzzing).
pub trait PacketBuf {
    fn data(&mut self) -> &mut [u8];
    /// Grow the packet by `n` bytes at the front; false (and unchanged) without headroom.
    fn prepend(&mut self, n: usize) -> bool;
}

/// What to do with a frame after [`LbWorker::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send out of the port it came in on (rewritten).
    Forward,
    /// Hand to the kernel through the exception port, unchanged.
    Exception,
    /// Free it; the reason was counted.
    Drop,
}

/// Engine-level addressing: what the operator passes on the command line.
#[derive(Debug, Clone, Default)]
pub struct LbAddressing {
    /// Addresses the balancer itself answers ARP and ICMP echo for, besides the VIPs
    /// (e.g. a router address for DNAT backends).
    pub local_ips: Vec<Ipv4Addr>,
    /// Outer source address of IP-in-IP packets (Katran-style DSR).
    pub tunnel_src: Option<Ipv4Addr>,
    /// Static next hops: IP → MAC.
    pub neighbors: Vec<(Ipv4Addr, [u8; 6])>,
    /// Next hop for every other destination.
    pub gateway: Option<[u8; 6]>,
}

/// A small, fixed-seed hasher for the table's maps (keys are our own packed integers).
#[derive(Default)]
pub struct IntHasher(u64);
impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        maglev::mix64(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = maglev::mix64(self.0 ^ i);
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i))
    }
}
type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// (address, port, protocol) packed into one integer.
#[inline]
fn pack(ip: Ipv4Addr, port: u16, protocol: u8) -> u64 {
    (u64::from(u32::from(ip)) << 24) | (u64::from(port) << 8) | u64::from(protocol)
}

#[derive(Debug)]
pub struct Vip {
    pub name: Arc<str>,
    pub addr: SocketAddrV4,
    pub protocol: u8,
    pub forwarding: Forwarding,
    /// Cumulative weights and cluster indices (one entry for a single cluster).
    cumulative: Box<[u32]>,
    clusters: Box<[u32]>,
    pub idle_timeout_ms: u64,
    pub stats: Arc<PacketStats>,
}

#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddrV4,
    /// Resolved next hop; `None` counts `drop_no_neighbor`.
    pub mac: Option<[u8; 6]>,
    pub stats: Arc<PacketStats>,
}

#[derive(Debug)]
pub struct LbCluster {
    pub name: Arc<str>,
    pub backends: Box<[Backend]>,
    pub maglev: Maglev,
    /// Backend address+port → index, for flows surviving a table swap.
    index: IntMap<u64, u16>,
}

/// One compiled generation of the balancer's configuration.
#[derive(Debug)]
pub struct LbTable {
    pub generation: u64,
    pub vips: Box<[Vip]>,
    pub clusters: Box<[LbCluster]>,
    by_vip: IntMap<u64, u32>,
    /// VIP addresses and local addresses: answered for ARP and ICMP echo.
    own_ips: IntMap<u32, ()>,
    vip_ips: IntMap<u32, ()>,
    /// DNAT backend (addr, port, proto) → (VIP index, backend cluster, backend index).
    replies: IntMap<u64, (u32, u32, u16)>,
    neighbors: IntMap<u32, [u8; 6]>,
    gateway: Option<[u8; 6]>,
    tunnel_src: Ipv4Addr,
}

impl LbTable {
    /// Compile a validated config for the packet balancer. Every cluster balances by
    /// Maglev over a 5-tuple hash whatever its `lb_policy` (a packet balancer must be
    /// consistent across workers and instances).
    pub fn compile(
        cfg: &Config,
        addressing: &LbAddressing,
        generation: u64,
        stats: &StatsRegistry,
    ) -> Result<LbTable, ConfigError> {
        crate::config::validate(cfg)?;
        let mut problems = Vec::new();
        let neighbors: IntMap<u32, [u8; 6]> = addressing
            .neighbors
            .iter()
            .map(|(ip, mac)| (u32::from(*ip), *mac))
            .collect();
        let next_hop = |ip: Ipv4Addr| {
            neighbors
                .get(&u32::from(ip))
                .copied()
                .or(addressing.gateway)
        };

        let mut cluster_index = HashMap::new();
        let mut clusters = Vec::with_capacity(cfg.clusters.len());
        for (i, c) in cfg.clusters.iter().enumerate() {
            cluster_index.insert(c.name.as_str(), i as u32);
            let mut backends = Vec::with_capacity(c.endpoints.len());
            for (j, e) in c.endpoints.iter().enumerate() {
                let Some(SocketAddr::V4(addr)) = e.address.ip() else {
                    problems.push(Problem {
                        path: format!("clusters[{i}].endpoints[{j}]"),
                        line: None,
                        message: format!(
                            "the DPDK engine forwards to IPv4 addresses only; endpoint {} is not one (no IPv6 or DNS names)",
                            e.address
                        ),
                    });
                    continue;
                };
                backends.push(Backend {
                    addr,
                    mac: next_hop(*addr.ip()),
                    stats: stats.packets(&format!("backend/{}/{}", c.name, addr)),
                });
            }
            if backends.is_empty() {
                continue;
            }
            let keys: Vec<Vec<u8>> = backends
                .iter()
                .map(|b| b.addr.to_string().into_bytes())
                .collect();
            let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
            let weights: Vec<u32> = c.endpoints.iter().map(|e| e.weight).collect();
            let weights = &weights[..backends.len().min(weights.len())];
            let size = if backends.len() * 100 < maglev::DEFAULT_TABLE_SIZE {
                maglev::DEFAULT_TABLE_SIZE
            } else {
                655_373
            };
            let index = backends
                .iter()
                .enumerate()
                .map(|(k, b)| (pack(*b.addr.ip(), b.addr.port(), 0), k as u16))
                .collect();
            clusters.push(LbCluster {
                name: c.name.as_str().into(),
                maglev: Maglev::build(&refs, weights, size),
                backends: backends.into_boxed_slice(),
                index,
            });
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }

        let mut vips = Vec::with_capacity(cfg.listeners.len());
        let mut by_vip = IntMap::default();
        let mut own_ips = IntMap::default();
        let mut vip_ips = IntMap::default();
        let mut replies: IntMap<u64, (u32, u32, u16)> = IntMap::default();
        for ip in &addressing.local_ips {
            own_ips.insert(u32::from(*ip), ());
        }
        for (i, l) in cfg.listeners.iter().enumerate() {
            let SocketAddr::V4(addr) = l.address else {
                problems.push(Problem {
                    path: format!("listeners[{i}].address"),
                    line: None,
                    message: format!(
                        "the DPDK engine serves IPv4 VIPs only; {} is IPv6",
                        l.address
                    ),
                });
                continue;
            };
            let protocol = match l.protocol {
                Protocol::Tcp => PROTO_TCP,
                Protocol::Udp => PROTO_UDP,
                other => {
                    problems.push(Problem {
                        path: format!("listeners[{i}].protocol"),
                        line: None,
                        message: format!(
                            "the DPDK engine balances TCP and UDP packets (L4); listener `{}` is {other}: run it on the uring/epoll engine",
                            l.name
                        ),
                    });
                    continue;
                }
            };
            // validate() guaranteed the cluster names resolve.
            let (weights, names): (Vec<u32>, Vec<&str>) = match &l.cluster {
                Some(c) => (vec![1], vec![c.as_str()]),
                None => l
                    .weighted_clusters
                    .iter()
                    .map(|w| (w.weight, w.cluster.as_str()))
                    .unzip(),
            };
            let forwarding = l.forwarding.unwrap_or_default();
            let vip_index = vips.len() as u32;
            let cl: Box<[u32]> = names.iter().map(|n| cluster_index[n]).collect();
            if forwarding == Forwarding::Dnat {
                for &c in cl.iter() {
                    for (k, b) in clusters[c as usize].backends.iter().enumerate() {
                        let key = pack(*b.addr.ip(), b.addr.port(), protocol);
                        if let Some((other, _, _)) = replies.insert(key, (vip_index, c, k as u16)) {
                            if other != vip_index {
                                problems.push(Problem {
                                    path: format!("listeners[{i}]"),
                                    line: None,
                                    message: format!(
                                        "backend {} also serves DNAT VIP `{}`; with DNAT a backend may serve one VIP (replies are matched by their source)",
                                        b.addr, cfg.listeners[other as usize].name
                                    ),
                                });
                            }
                        }
                    }
                }
            } else if addressing.tunnel_src.is_none() {
                problems.push(Problem {
                    path: format!("listeners[{i}].forwarding"),
                    line: None,
                    message: "ipip forwarding needs the tunnel source address (--dpdk-tunnel-src)"
                        .into(),
                });
            }
            by_vip.insert(pack(*addr.ip(), addr.port(), protocol), vip_index);
            own_ips.insert(u32::from(*addr.ip()), ());
            vip_ips.insert(u32::from(*addr.ip()), ());
            vips.push(Vip {
                name: l.name.as_str().into(),
                addr,
                protocol,
                forwarding,
                cumulative: cumulative(&weights),
                clusters: cl,
                idle_timeout_ms: l
                    .idle_timeout
                    .unwrap_or(if protocol == PROTO_UDP {
                        DEFAULT_UDP_IDLE_TIMEOUT
                    } else {
                        DEFAULT_TCP_IDLE_TIMEOUT
                    })
                    .as_millis()
                    .min(u128::from(u64::MAX)) as u64,
                stats: stats.packets(&format!("vip/{}", l.name)),
            });
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(LbTable {
            generation,
            vips: vips.into_boxed_slice(),
            clusters: clusters.into_boxed_slice(),
            by_vip,
            own_ips,
            vip_ips,
            replies,
            neighbors,
            gateway: addressing.gateway,
            tunnel_src: addressing.tunnel_src.unwrap_or(Ipv4Addr::UNSPECIFIED),
        })
    }

    #[inline]
    fn next_hop(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.neighbors.get(&u32::from(ip)).copied().or(self.gateway)
    }

    /// The backend Maglev gives a new flow of `vip` (by its 5-tuple hash).
    #[inline]
    pub fn pick(&self, vip: &Vip, hash: u64) -> (u32, u16) {
        let c = vip.clusters[weighted(&vip.cumulative, (hash >> 32) as u32)];
        let b = self.clusters[c as usize].maglev.lookup(hash) as u16;
        (c, b)
    }
}

// === flow table ===

/// One worker's flow table: set-associative, `BUCKETS × WAYS` entries allocated once.
/// A full bucket evicts its least recently seen entry (Katran keeps an LRU for the same
/// reason: bounded memory under a SYN flood).
pub struct FlowTable {
    entries: Box<[FlowEntry]>,
    mask: usize,
    live: u64,
}

const WAYS: usize = 4;

#[derive(Clone, Copy, Default)]
struct FlowEntry {
    /// 0 = empty slot (a real key has a non-zero protocol byte).
    key_a: u64,
    key_b: u64,
    backend: u64, // packed backend addr+port
    cluster: u32,
    generation: u32,
    index: u16,
    last_ms: u64,
}

/// What the flow table says about one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowHit {
    /// Known flow, backend still present: (cluster, backend).
    Known(u32, u16),
    New,
}

impl FlowTable {
    /// `capacity` entries, rounded up to a power of two multiple of the bucket size.
    pub fn new(capacity: usize) -> FlowTable {
        let buckets = (capacity / WAYS).max(1).next_power_of_two();
        FlowTable {
            entries: vec![FlowEntry::default(); buckets * WAYS].into_boxed_slice(),
            mask: buckets - 1,
            live: 0,
        }
    }

    pub fn live(&self) -> u64 {
        self.live
    }

    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    #[inline]
    fn bucket(&self, hash: u64) -> usize {
        ((hash as usize) & self.mask) * WAYS
    }

    /// Look up a flow; on a hit refresh its age and, after a table swap, re-find its
    /// backend by address (gone → treated as new).
    #[inline]
    fn lookup(&mut self, t: &LbTable, ka: u64, kb: u64, hash: u64, now: u64, idle: u64) -> FlowHit {
        let b = self.bucket(hash);
        for e in &mut self.entries[b..b + WAYS] {
            if e.key_a != ka || e.key_b != kb {
                continue;
            }
            if now.saturating_sub(e.last_ms) > idle {
                return FlowHit::New; // expired: re-pick (insert overwrites it)
            }
            if e.generation != t.generation as u32 {
                let Some(c) = t.clusters.get(e.cluster as usize) else {
                    return FlowHit::New;
                };
                // Backends are found by address: cluster indices may shift between
                // generations, so check the name too.
                let Some(&i) = c.index.get(&e.backend) else {
                    return FlowHit::New;
                };
                e.index = i;
                e.generation = t.generation as u32;
            }
            e.last_ms = now;
            return FlowHit::Known(e.cluster, e.index);
        }
        FlowHit::New
    }

    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        t: &LbTable,
        ka: u64,
        kb: u64,
        hash: u64,
        now: u64,
        c: u32,
        i: u16,
    ) -> bool {
        let b = self.bucket(hash);
        let backend = t.clusters[c as usize].backends[i as usize].addr;
        let entry = FlowEntry {
            key_a: ka,
            key_b: kb,
            backend: pack(*backend.ip(), backend.port(), 0),
            cluster: c,
            generation: t.generation as u32,
            index: i,
            last_ms: now,
        };
        let slots = &mut self.entries[b..b + WAYS];
        // Same key (expired or moved), else an empty slot, else the oldest.
        let mut victim = 0;
        for (w, e) in slots.iter().enumerate() {
            if e.key_a == ka && e.key_b == kb {
                slots[w] = entry;
                return false;
            }
            if e.key_b == 0 {
                slots[w] = entry;
                self.live += 1;
                return false;
            }
            if e.last_ms < slots[victim].last_ms {
                victim = w;
            }
        }
        slots[victim] = entry;
        true
    }
}

// === the worker ===

/// One worker's balancer state: its flow table and the counter slot it writes.
pub struct LbWorker {
    pub worker: usize,
    pub flows: FlowTable,
}

/// Where a frame arrived: the port's MAC and counter block.
pub struct PortCtx<'a> {
    pub mac: [u8; 6],
    pub stats: &'a PortStats,
}

impl LbWorker {
    pub fn new(worker: usize, flow_capacity: usize) -> LbWorker {
        LbWorker {
            worker,
            flows: FlowTable::new(flow_capacity),
        }
    }

    /// Decide and rewrite one frame that arrived on a data port. `now_ms` is a coarse
    /// monotonic clock read once per burst.
    pub fn process(
        &mut self,
        t: &LbTable,
        port: &PortCtx,
        pkt: &mut impl PacketBuf,
        now_ms: u64,
    ) -> Verdict {
        let w = self.worker;
        let st = port.stats;
        let data = pkt.data();
        let Ok(eth) = EthernetFrame::new_checked(&mut *data) else {
            st.inc(w, C::DropTruncated);
            return Verdict::Drop;
        };
        match eth.ethertype() {
            ETHERTYPE_IPV4 => {}
            ETHERTYPE_ARP => return self.arp(t, port, data),
            _ => {
                st.inc(w, C::ExceptionNonIp);
                return Verdict::Exception;
            }
        }
        let ip = match Ipv4Packet::new_checked(&data[ETH_HEADER_LEN..]) {
            Ok(ip) => ip,
            Err(WireError::Truncated) => {
                st.inc(w, C::DropTruncated);
                return Verdict::Drop;
            }
            Err(_) => {
                st.inc(w, C::DropBadIpHeader);
                return Verdict::Drop;
            }
        };
        if !ip.verify_checksum() {
            st.inc(w, C::DropBadChecksum);
            return Verdict::Drop;
        }
        if ip.is_fragment() {
            st.inc(w, C::ExceptionFragment);
            return Verdict::Exception;
        }
        let (src, dst, protocol, hlen, total) = (
            ip.src(),
            ip.dst(),
            ip.protocol(),
            ip.header_len(),
            ip.total_len(),
        );
        let dst_key = u32::from(dst);
        if protocol == PROTO_ICMP {
            if t.own_ips.contains_key(&dst_key) {
                return self.icmp_echo(port, data, hlen, total);
            }
            st.inc(w, C::ExceptionOther);
            return Verdict::Exception;
        }
        if protocol != PROTO_TCP && protocol != PROTO_UDP {
            st.inc(w, C::ExceptionOther);
            return Verdict::Exception;
        }
        let l4_at = ETH_HEADER_LEN + hlen;
        let Ok(l4) = L4Header::new_checked(&data[l4_at..ETH_HEADER_LEN + total], protocol) else {
            st.inc(w, C::DropTruncated);
            return Verdict::Drop;
        };
        let flow = FlowRepr {
            src,
            dst,
            protocol,
            src_port: l4.src_port(),
            dst_port: l4.dst_port(),
        };
        if let Some(&v) = t.by_vip.get(&pack(dst, flow.dst_port, protocol)) {
            return self.forward_to_backend(t, port, pkt, &flow, v, total, now_ms);
        }
        if t.vip_ips.contains_key(&dst_key) {
            st.inc(w, C::DropUnknownVip);
            return Verdict::Drop;
        }
        if let Some(&(v, c, b)) = t.replies.get(&pack(src, flow.src_port, protocol)) {
            return self.reply(t, port, data, &flow, v, c, b, hlen, total);
        }
        st.inc(w, C::ExceptionOther);
        Verdict::Exception
    }

    fn arp(&mut self, t: &LbTable, port: &PortCtx, data: &mut [u8]) -> Verdict {
        let w = self.worker;
        let Ok(mut arp) = ArpPacket::new_checked(&mut data[ETH_HEADER_LEN..]) else {
            port.stats.inc(w, C::ExceptionNonIp);
            return Verdict::Exception;
        };
        if arp.operation() != ARP_REQUEST || !t.own_ips.contains_key(&u32::from(arp.target_ip())) {
            port.stats.inc(w, C::ExceptionNonIp);
            return Verdict::Exception;
        }
        let asker = arp.sender_mac();
        arp.make_reply(port.mac);
        let mut eth = EthernetFrame::new_unchecked(data);
        eth.set_dst(asker);
        eth.set_src(port.mac);
        port.stats.inc(w, C::ArpReplies);
        Verdict::Forward
    }

    fn icmp_echo(&mut self, port: &PortCtx, data: &mut [u8], hlen: usize, total: usize) -> Verdict {
        let w = self.worker;
        let at = ETH_HEADER_LEN + hlen;
        if !icmp_echo_to_reply(&mut data[at..ETH_HEADER_LEN + total]) {
            port.stats.inc(w, C::ExceptionOther);
            return Verdict::Exception;
        }
        // Swapping source and destination leaves the header sum unchanged.
        for i in 0..4 {
            data.swap(ETH_HEADER_LEN + 12 + i, ETH_HEADER_LEN + 16 + i);
        }
        let mut eth = EthernetFrame::new_unchecked(data);
        let peer = eth.src();
        eth.set_dst(peer);
        eth.set_src(port.mac);
        port.stats.inc(w, C::IcmpEchoReplies);
        Verdict::Forward
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_to_backend(
        &mut self,
        t: &LbTable,
        port: &PortCtx,
        pkt: &mut impl PacketBuf,
        f: &FlowRepr,
        v: u32,
        total: usize,
        now: u64,
    ) -> Verdict {
        let w = self.worker;
        let vip = &t.vips[v as usize];
        let hash = maglev::hash_flow(
            u32::from(f.src),
            u32::from(f.dst),
            f.src_port,
            f.dst_port,
            f.protocol,
        );
        let ka = (u64::from(u32::from(f.src)) << 32) | u64::from(u32::from(f.dst));
        let kb = (u64::from(f.src_port) << 32)
            | (u64::from(f.dst_port) << 16)
            | u64::from(f.protocol)
            | 1 << 63;
        let (c, b) = match self.flows.lookup(t, ka, kb, hash, now, vip.idle_timeout_ms) {
            FlowHit::Known(c, b) => (c, b),
            FlowHit::New => {
                let (c, b) = t.pick(vip, hash);
                if self.flows.insert(t, ka, kb, hash, now, c, b) {
                    port.stats.inc(w, C::FlowEvictions);
                }
                port.stats.set(w, C::FlowTableEntries, self.flows.live());
                vip.stats.inc(w, P::FlowsNew);
                t.clusters[c as usize].backends[b as usize]
                    .stats
                    .inc(w, P::FlowsNew);
                (c, b)
            }
        };
        let backend = &t.clusters[c as usize].backends[b as usize];
        let Some(mac) = backend.mac else {
            port.stats.inc(w, C::DropNoNeighbor);
            return Verdict::Drop;
        };
        let bytes = total as u64;
        vip.stats.inc(w, P::Packets);
        vip.stats.add(w, P::Bytes, bytes);
        backend.stats.inc(w, P::Packets);
        backend.stats.add(w, P::Bytes, bytes);
        match vip.forwarding {
            Forwarding::Dnat => {
                let data = pkt.data();
                let mut ip = Ipv4Packet::new_unchecked(&mut data[ETH_HEADER_LEN..]);
                ip.set_dst(*backend.addr.ip());
                let mut l4 = L4Header::new_unchecked(ip.payload_mut(), f.protocol);
                l4.update_for_addr(f.dst, *backend.addr.ip());
                l4.set_dst_port(backend.addr.port());
                let mut eth = EthernetFrame::new_unchecked(data);
                eth.set_dst(mac);
                eth.set_src(port.mac);
            }
            Forwarding::Ipip => {
                let tos = pkt.data()[ETH_HEADER_LEN + 1];
                let outer_len = total + IPV4_MIN_HEADER_LEN;
                if outer_len > usize::from(u16::MAX) || !pkt.prepend(IPV4_MIN_HEADER_LEN) {
                    port.stats.inc(w, C::DropNoHeadroom);
                    return Verdict::Drop;
                }
                let data = pkt.data();
                let mut eth = EthernetFrame::new_unchecked(&mut *data);
                eth.set_dst(mac);
                eth.set_src(port.mac);
                eth.set_ethertype(ETHERTYPE_IPV4);
                emit_ipv4_header(
                    &mut data[ETH_HEADER_LEN..],
                    tos,
                    outer_len as u16,
                    PROTO_IPIP,
                    t.tunnel_src,
                    *backend.addr.ip(),
                );
            }
        }
        Verdict::Forward
    }

    #[allow(clippy::too_many_arguments)]
    fn reply(
        &mut self,
        t: &LbTable,
        port: &PortCtx,
        data: &mut [u8],
        f: &FlowRepr,
        v: u32,
        c: u32,
        b: u16,
        _hlen: usize,
        total: usize,
    ) -> Verdict {
        let w = self.worker;
        let vip = &t.vips[v as usize];
        let Some(mac) = t.next_hop(f.dst) else {
            port.stats.inc(w, C::DropNoNeighbor);
            return Verdict::Drop;
        };
        let mut ip = Ipv4Packet::new_unchecked(&mut data[ETH_HEADER_LEN..]);
        ip.set_src(*vip.addr.ip());
        let mut l4 = L4Header::new_unchecked(ip.payload_mut(), f.protocol);
        l4.update_for_addr(f.src, *vip.addr.ip());
        l4.set_src_port(vip.addr.port());
        let mut eth = EthernetFrame::new_unchecked(data);
        eth.set_dst(mac);
        eth.set_src(port.mac);
        let bytes = total as u64;
        vip.stats.inc(w, P::ReplyPackets);
        vip.stats.add(w, P::ReplyBytes, bytes);
        let backend = &t.clusters[c as usize].backends[b as usize];
        backend.stats.inc(w, P::ReplyPackets);
        backend.stats.add(w, P::ReplyBytes, bytes);
        Verdict::Forward
    }
}

/// A heap packet with headroom, standing in for an mbuf in tests, benches and fuzzing.
pub struct VecPacket {
    pub buf: Vec<u8>,
    pub start: usize,
}

impl VecPacket {
    pub fn new(frame: &[u8], headroom: usize) -> VecPacket {
        let mut buf = vec![0; headroom];
        buf.extend_from_slice(frame);
        VecPacket {
            buf,
            start: headroom,
        }
    }
    pub fn frame(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl PacketBuf for VecPacket {
    fn data(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }
    fn prepend(&mut self, n: usize) -> bool {
        if n > self.start {
            return false;
        }
        self.start -= n;
        true
    }
}

/// The fuzz target's body (`fuzz/fuzz_targets/packet.rs`): run `frame` through a fixed
/// table with DNAT, IPIP and UDP VIPs; panic only if a forwarded frame does not parse.
/// Allocates and locks: for fuzzing and tests, never the data path.
#[doc(hidden)]
pub fn fuzz_one(frame: &[u8]) {
    use std::sync::{Mutex, OnceLock};
    struct Fixture {
        table: LbTable,
        port: Arc<PortStats>,
        worker: Mutex<LbWorker>,
    }
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    let f = FIXTURE.get_or_init(|| {
        let cfg = crate::config::parse(FUZZ_CONFIG, crate::config::Format::Yaml)
            .expect("the fuzz fixture config is valid");
        let stats = StatsRegistry::new(1);
        let addressing = LbAddressing {
            local_ips: vec![Ipv4Addr::new(10, 0, 0, 1)],
            tunnel_src: Some(Ipv4Addr::new(10, 0, 0, 1)),
            neighbors: vec![(Ipv4Addr::new(10, 1, 0, 1), [2, 0, 0, 0, 1, 1])],
            gateway: Some([2, 0, 0, 0, 0, 0xfe]),
        };
        Fixture {
            table: LbTable::compile(&cfg, &addressing, 1, &stats)
                .expect("the fuzz fixture compiles"),
            port: stats.port("fuzz"),
            worker: Mutex::new(LbWorker::new(0, 1024)),
        }
    });
    let mut pkt = VecPacket::new(frame, 64);
    let ctx = PortCtx {
        mac: [2, 0, 0, 0, 0, 1],
        stats: &f.port,
    };
    let l4_before = l4_checksum_ok(frame);
    let mut w = f.worker.lock().unwrap_or_else(|p| p.into_inner());
    if w.process(&f.table, &ctx, &mut pkt, 1) == Verdict::Forward {
        let out = pkt.frame();
        let eth = EthernetFrame::new_checked(out).expect("forwarded frame has an Ethernet header");
        if eth.ethertype() == ETHERTYPE_IPV4 {
            let ip = Ipv4Packet::new_checked(eth.payload()).expect("forwarded IPv4 parses");
            assert!(
                ip.verify_checksum(),
                "forwarded IPv4 header checksum is valid"
            );
            // A rewrite keeps the TCP/UDP checksum exactly as right (or wrong) as it came
            // in: incremental updates must never turn a good segment bad. (IPIP carries
            // the inner packet unchanged; the outer one has no L4 checksum.)
            if ip.protocol() != PROTO_IPIP {
                assert_eq!(
                    l4_checksum_ok(out),
                    l4_before,
                    "the TCP/UDP checksum survives the rewrite"
                );
            }
        } else {
            ArpPacket::new_checked(eth.payload()).expect("forwarded ARP parses");
        }
    }
}

/// Whether `frame` is IPv4 TCP/UDP (not a fragment, UDP checksum present) whose L4
/// checksum verifies; `None` when it is not such a packet.
fn l4_checksum_ok(frame: &[u8]) -> Option<bool> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let proto = ip.protocol();
    if ip.is_fragment() || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return None;
    }
    let l4 = L4Header::new_checked(ip.payload(), proto).ok()?;
    if proto == PROTO_UDP && l4.checksum() == 0 {
        return None;
    }
    Some(l4_checksum(ip.src(), ip.dst(), proto, ip.payload()) == 0)
}

const FUZZ_CONFIG: &str = r#"
listeners:
  - {name: web, address: "10.0.0.100:80", cluster: pool}
  - {name: dns, address: "10.0.0.100:53", protocol: udp, cluster: dnspool}
  - {name: dsr, address: "10.0.0.101:443", cluster: tunnel, forwarding: ipip}
clusters:
  - {name: pool, endpoints: ["10.1.0.1:8080", "10.1.0.2:8080"]}
  - {name: dnspool, endpoints: ["10.2.0.1:5353"]}
  - {name: tunnel, endpoints: ["10.3.0.1:443", "10.3.0.2:443"]}
"#;

#[cfg(test)]
mod tests;
