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
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
///
/// # Safety
///
/// The burst path keeps the address and length [`PacketBuf::data`] returned for a frame
/// and writes through them later in the same burst, after it has called `data` on other
/// frames of the burst (never on this one) and without moving any of them. An
/// implementation must therefore return memory outside the value itself (the mbuf's
/// buffer, a heap allocation) that stays where it is, that long, and that no other
/// frame's `data` aliases, until `prepend` or `resize` is called on that frame.
pub unsafe trait PacketBuf {
    fn data(&mut self) -> &mut [u8];
    /// Grow the packet by `n` bytes at the front; false (and unchanged) without headroom.
    fn prepend(&mut self, n: usize) -> bool;
    /// Make the packet `len` bytes long, growing or cutting at the end; false (and
    /// unchanged) when it cannot grow that far.
    fn resize(&mut self, len: usize) -> bool;
    /// Whether the receiving NIC found the IPv4 header checksum valid. Only `true` when
    /// it says so (an mbuf's RTE_MBUF_F_RX_IP_CKSUM_GOOD): then the fast path skips its
    /// own check. Anything else ("bad", "unknown", no such NIC) is checked in software,
    /// which also counts the bad ones.
    #[inline(always)]
    fn ip_checksum_good(&self) -> bool {
        false
    }
    /// Hint that the packet's first bytes are about to be parsed (an mbuf prefetches
    /// its data's first cache line); nothing by default.
    #[inline(always)]
    fn prefetch(&self) {}
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
    /// Addresses the balancer itself answers ARP / Neighbor Solicitation and ICMP echo
    /// for, besides the VIPs (e.g. a router address for DNAT backends).
    pub local_ips: Vec<IpAddr>,
    /// Outer source address of IP-in-IP packets (Katran-style DSR).
    pub tunnel_src: Option<Ipv4Addr>,
    /// Outer source address of IPv6-in-IPv6 packets (DSR for IPv6 VIPs, RFC 2473).
    pub tunnel_src6: Option<Ipv6Addr>,
    /// Static next hops: IP → MAC.
    pub neighbors: Vec<(IpAddr, [u8; 6])>,
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

/// (address, port, protocol) packed into one non-zero integer, from raw (wire-order,
/// natively loaded) address and port: the packet path builds it from its loads without a
/// byte swap, `compile` from config through [`raw_ip4`] and [`raw_port`].
#[inline(always)]
fn key4(addr: u32, port: u16, protocol: u8) -> u64 {
    (u64::from(addr) << 24) | (u64::from(port) << 8) | u64::from(protocol)
}

/// [`key4`] from config values.
fn key4_of(a: SocketAddr, protocol: u8) -> u64 {
    key4(raw_ip4(ip4_of(a)), raw_port(a.port()), protocol)
}

/// The IPv4 address of `a`, or 0.0.0.0 for IPv6 (whose raw IPv4 forms go unused).
fn ip4_of(a: SocketAddr) -> Ipv4Addr {
    match a.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

/// The raw IPv6 address of `a`, or 0 for IPv4.
fn ip6_of(a: SocketAddr) -> u128 {
    match a.ip() {
        IpAddr::V6(ip) => raw_ip6(ip),
        IpAddr::V4(_) => 0,
    }
}

/// An IPv6 VIP/backend key (raw address; port and protocol, never 0).
#[inline(always)]
fn key6(addr: u128, port: u16, protocol: u8) -> (u128, u32) {
    (addr, (u32::from(port) << 8) | u32::from(protocol))
}

/// Set key for an IPv6 address alone.
#[inline(always)]
fn addr_key6(addr: u128) -> (u128, u32) {
    (addr, 1)
}

/// Set key for an address alone (raw); never 0.
#[inline(always)]
fn addr_key4(addr: u32) -> u64 {
    u64::from(addr) | 1 << 40
}

/// `a * b` as 128 bits, high half folded into the low one (foldhash/wyhash's mixer).
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// The 5-tuple hash of an IPv4 flow from its raw flow-table keys: one folded multiply of
/// the two key words, each first XOR-ed with its own constant (foldhash's two-word
/// mixer; both halves of the 128-bit product fold in, so every key bit reaches the low
/// bits the flow-table bucket takes and the Maglev slot `hash % 65,537`). It picks the
/// Maglev slot of new flows and the flow-table bucket, so every worker and every
/// instance of this version agrees on it.
#[inline(always)]
fn hash4(k: Key4) -> u64 {
    fold_mul(k.a ^ 0x243f_6a88_85a3_08d3, k.b ^ 0x1319_8a2e_0370_7344)
}

/// The 5-tuple hash of an IPv6 flow (as [`hash4`], three folded multiplies).
#[inline(always)]
fn hash6(k: Key6) -> u64 {
    let h = fold_mul(
        k.src as u64 ^ 0x243f_6a88_85a3_08d3,
        (k.src >> 64) as u64 ^ 0xa409_3822_299f_31d0,
    );
    let h = fold_mul(
        h ^ k.dst as u64,
        (k.dst >> 64) as u64 ^ 0x082e_fa98_ec4e_6c89,
    );
    fold_mul(h ^ k.b, 0x9e37_79b9_7f4a_7c15)
}

/// The flow-table key of an IPv4 flow from raw fields.
#[inline(always)]
fn keys4(src: u32, dst: u32, ports: u32, protocol: u8) -> Key4 {
    Key4 {
        a: u64::from(src) | (u64::from(dst) << 32),
        b: u64::from(ports) | (u64::from(protocol) << 32) | 1 << 63,
    }
}

/// The hash the balancer gives the IPv4 flow `src:sport → dst:dport` (for tests and
/// tools that predict its Maglev choice with [`LbTable::pick`]).
pub fn flow_hash_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, protocol: u8) -> u64 {
    let (sp, dp) = (sport.to_be_bytes(), dport.to_be_bytes());
    let ports = u32::from_ne_bytes([sp[0], sp[1], dp[0], dp[1]]);
    hash4(keys4(raw_ip4(src), raw_ip4(dst), ports, protocol))
}

#[derive(Debug)]
pub struct Vip {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    /// `addr` in raw form: IPv4 (0 for IPv6), IPv6 (0 for IPv4), port.
    raw_ip: u32,
    raw_ip6: u128,
    raw_port: u16,
    /// [`vip_probe`] of the frames to this VIP (IPv4; 0 for IPv6).
    probe: u64,
    pub protocol: u8,
    pub forwarding: Forwarding,
    /// Cumulative weights and cluster indices (one entry for a single cluster).
    cumulative: Box<[u32]>,
    clusters: Box<[u32]>,
    pub idle_timeout_ms: u64,
    /// `idle_timeout_ms` as the flow table's wrapping 32-bit clock can compare it.
    idle_ms32: u32,
    pub stats: Arc<PacketStats>,
    /// The backends of `clusters`, cluster after cluster, as the packet path reads them
    /// (flow entries of this VIP index it), and where each cluster's run starts.
    hot: Box<[Hot]>,
    hot_base: Box<[u16]>,
}

#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// `addr` in raw form (what the rewrite stores), as for [`Vip`].
    raw_ip: u32,
    raw_ip6: u128,
    raw_port: u16,
    /// [`backend_key`] of `addr`, computed once (the flow table compares it per packet).
    key: u64,
    /// Resolved next hop; `None` counts `drop_no_neighbor`.
    pub mac: Option<[u8; 6]>,
    pub stats: Arc<PacketStats>,
}

/// A backend of a VIP as the packet path reads it: everything a flow-table hit needs to
/// rewrite and count a packet, in one cache line of the VIP's flat array (indexed by the
/// flow entry), instead of a walk through the cluster's and backend's structures.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub struct Hot {
    raw_ip6: u128,
    /// [`backend_key`] of the backend: checked against the flow entry's.
    key: u64,
    /// `key` when the backend has a next hop, else `u64::MAX` (never a backend key, which
    /// has 48 bits): the burst path's one comparison says "this entry's backend, and
    /// forwardable" (a flow to a backend without a next hop takes the full path, which
    /// counts `drop_no_neighbor`).
    fast_key: u64,
    /// The next hop's MAC in the first six bytes of a native-order word, the other two
    /// zero: OR-ed with the source MAC's first two bytes, one store writes both.
    mac64: u64,
    raw_ip: u32,
    /// Its cluster and its index there (where its counters are).
    cluster: u32,
    index: u16,
    raw_port: u16,
    /// IPv4 DNAT from the VIP to this backend, as RFC 1624 deltas folded to 16 bits
    /// once here: the IPv4 header's (address) and the TCP/UDP checksum's (address and
    /// port), so the rewrite adds one word with one end-around carry per checksum.
    d_ip: u16,
    d_l4: u16,
    /// Resolved next hop; `None` counts `drop_no_neighbor`.
    mac: Option<[u8; 6]>,
}

const _: () = assert!(std::mem::size_of::<Hot>() == 64);

#[derive(Debug)]
pub struct LbCluster {
    pub name: Arc<str>,
    pub backends: Box<[Backend]>,
    pub maglev: Maglev,
    /// Backend key ([`backend_key`]) → index, for flows surviving a table swap.
    index: IntMap<u64, u16>,
}

/// One compiled generation of the balancer's configuration.
#[derive(Debug)]
pub struct LbTable {
    pub generation: u64,
    pub vips: Box<[Vip]>,
    pub clusters: Box<[LbCluster]>,
    by_vip: KeyMap<u32>,
    /// VIP addresses and local addresses ([`addr_key4`]): answered for ARP and ICMP echo.
    own_ips: KeyMap<()>,
    vip_ips: KeyMap<()>,
    /// DNAT backend (addr, port, proto) → (VIP index, backend cluster, backend index).
    replies: KeyMap<(u32, u32, u16)>,
    /// The same four for IPv6 ([`key6`], [`addr_key6`]; answered: Neighbor
    /// Solicitation and ICMPv6 echo).
    by_vip6: KeyMap6<u32>,
    own_ips6: KeyMap6<()>,
    vip_ips6: KeyMap6<()>,
    replies6: KeyMap6<(u32, u32, u16)>,
    neighbors: IntMap<u32, [u8; 6]>,
    neighbors6: HashMap<Ipv6Addr, [u8; 6]>,
    gateway: Option<[u8; 6]>,
    tunnel_src: Ipv4Addr,
    tunnel_src6: Ipv6Addr,
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
        let mut neighbors: IntMap<u32, [u8; 6]> = IntMap::default();
        let mut neighbors6: HashMap<Ipv6Addr, [u8; 6]> = HashMap::new();
        for (ip, mac) in &addressing.neighbors {
            match ip {
                IpAddr::V4(ip) => neighbors.insert(u32::from(*ip), *mac),
                IpAddr::V6(ip) => neighbors6.insert(*ip, *mac),
            };
        }
        let next_hop = |ip: IpAddr| {
            match ip {
                IpAddr::V4(ip) => neighbors.get(&u32::from(ip)),
                IpAddr::V6(ip) => neighbors6.get(&ip),
            }
            .copied()
            .or(addressing.gateway)
        };

        let mut cluster_index = HashMap::new();
        let mut clusters: Vec<LbCluster> = Vec::with_capacity(cfg.clusters.len());
        // Flow entries keep a cluster and a backend index in 16 bits each.
        if cfg.clusters.len() > usize::from(u16::MAX) {
            problems.push(Problem {
                path: "clusters".into(),
                line: None,
                message: format!(
                    "the DPDK engine serves at most {} clusters; this config has {}",
                    u16::MAX,
                    cfg.clusters.len()
                ),
            });
        }
        for (i, c) in cfg.clusters.iter().enumerate() {
            if c.endpoints.len() > usize::from(u16::MAX) {
                problems.push(Problem {
                    path: format!("clusters[{i}].endpoints"),
                    line: None,
                    message: format!(
                        "the DPDK engine balances at most {} endpoints per cluster; `{}` has {}",
                        u16::MAX,
                        c.name,
                        c.endpoints.len()
                    ),
                });
                continue;
            }
            cluster_index.insert(c.name.as_str(), i as u32);
            let mut backends = Vec::with_capacity(c.endpoints.len());
            for (j, e) in c.endpoints.iter().enumerate() {
                let Some(addr) = e.address.ip() else {
                    problems.push(Problem {
                        path: format!("clusters[{i}].endpoints[{j}]"),
                        line: None,
                        message: format!(
                            "the DPDK engine forwards to IP addresses only; endpoint {} is a DNS name",
                            e.address
                        ),
                    });
                    continue;
                };
                let key = backend_key(&addr);
                if let Some(other) = backends
                    .iter()
                    .find(|b: &&Backend| b.key == key && b.addr != addr)
                {
                    problems.push(Problem {
                        path: format!("clusters[{i}].endpoints[{j}]"),
                        line: None,
                        message: format!(
                            "endpoints {addr} and {} collide in the flow table's 48-bit backend identity (or are the same endpoint twice): remove one",
                            other.addr
                        ),
                    });
                    continue;
                }
                backends.push(Backend {
                    addr,
                    raw_ip: raw_ip4(ip4_of(addr)),
                    raw_ip6: ip6_of(addr),
                    raw_port: raw_port(addr.port()),
                    key,
                    mac: next_hop(addr.ip()),
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
            // Maglev whatever the cluster's `lb_policy`, but its `maglev_lb_config`
            // table size is honoured.
            let configured = c.maglev_lb_config.as_ref().and_then(|m| m.table_size);
            let size = maglev::table_size(configured, backends.len());
            let index = backends
                .iter()
                .enumerate()
                .map(|(k, b)| (b.key, k as u16))
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
        let mut by_vip: IntMap<u64, u32> = IntMap::default();
        let mut own_ips: IntMap<u64, ()> = IntMap::default();
        let mut vip_ips: IntMap<u64, ()> = IntMap::default();
        let mut replies: IntMap<u64, (u32, u32, u16)> = IntMap::default();
        let mut by_vip6: HashMap<(u128, u32), u32> = HashMap::new();
        let mut own_ips6: HashMap<(u128, u32), ()> = HashMap::new();
        let mut vip_ips6: HashMap<(u128, u32), ()> = HashMap::new();
        let mut replies6: HashMap<(u128, u32), (u32, u32, u16)> = HashMap::new();
        for ip in &addressing.local_ips {
            match ip {
                IpAddr::V4(ip) => own_ips.insert(addr_key4(raw_ip4(*ip)), ()),
                IpAddr::V6(ip) => own_ips6.insert(addr_key6(raw_ip6(*ip)), ()),
            };
        }
        for (i, l) in cfg.listeners.iter().enumerate() {
            let addr = l.address;
            let v6 = addr.is_ipv6();
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
            // A VIP forwards within its address family (no NAT64, no 4-in-6 tunnels).
            for &c in cl.iter() {
                let cluster = &clusters[c as usize];
                if let Some(b) = cluster.backends.iter().find(|b| b.addr.is_ipv6() != v6) {
                    problems.push(Problem {
                        path: format!("listeners[{i}]"),
                        line: None,
                        message: format!(
                            "VIP {addr} is {} but backend {} of cluster `{}` is not: the DPDK engine forwards within one address family",
                            if v6 { "IPv6" } else { "IPv4" },
                            b.addr,
                            cluster.name
                        ),
                    });
                }
            }
            if forwarding == Forwarding::Dnat {
                for &c in cl.iter() {
                    for (k, b) in clusters[c as usize].backends.iter().enumerate() {
                        let previous = if v6 {
                            replies6.insert(
                                key6(b.raw_ip6, b.raw_port, protocol),
                                (vip_index, c, k as u16),
                            )
                        } else {
                            replies.insert(key4_of(b.addr, protocol), (vip_index, c, k as u16))
                        };
                        if let Some((other, _, _)) = previous {
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
            } else if !v6 && addressing.tunnel_src.is_none() {
                problems.push(Problem {
                    path: format!("listeners[{i}].forwarding"),
                    line: None,
                    message: "ipip forwarding needs the tunnel source address (--dpdk-tunnel-src)"
                        .into(),
                });
            } else if v6 && addressing.tunnel_src6.is_none() {
                problems.push(Problem {
                    path: format!("listeners[{i}].forwarding"),
                    line: None,
                    message: "ipip forwarding of an IPv6 VIP needs the IPv6 tunnel source address (--dpdk-tunnel-src6)"
                        .into(),
                });
            }
            if v6 {
                let raw = ip6_of(addr);
                by_vip6.insert(key6(raw, raw_port(addr.port()), protocol), vip_index);
                own_ips6.insert(addr_key6(raw), ());
                vip_ips6.insert(addr_key6(raw), ());
            } else {
                by_vip.insert(key4_of(addr, protocol), vip_index);
                own_ips.insert(addr_key4(raw_ip4(ip4_of(addr))), ());
                vip_ips.insert(addr_key4(raw_ip4(ip4_of(addr))), ());
            }
            let (vip_ip, vip_port) = (raw_ip4(ip4_of(addr)), raw_port(addr.port()));
            let mut hot = Vec::new();
            let mut hot_base = Vec::with_capacity(cl.len());
            for &c in cl.iter() {
                hot_base.push(hot.len().min(usize::from(u16::MAX)) as u16);
                hot.extend(
                    clusters[c as usize]
                        .backends
                        .iter()
                        .enumerate()
                        .map(|(k, b)| {
                            let d_ip = u64::from(!vip_ip) + u64::from(b.raw_ip);
                            Hot {
                                key: b.key,
                                fast_key: if b.mac.is_some() { b.key } else { u64::MAX },
                                mac64: mac_word(b.mac.unwrap_or_default(), [0; 2]),
                                raw_ip6: b.raw_ip6,
                                raw_ip: b.raw_ip,
                                cluster: c,
                                index: k as u16,
                                raw_port: b.raw_port,
                                d_ip: fold64(d_ip),
                                d_l4: fold64(d_ip + u64::from(!vip_port) + u64::from(b.raw_port)),
                                mac: b.mac,
                            }
                        }),
                );
            }
            // Flow entries name their backend by its index in the VIP's array, in 16 bits.
            if hot.len() > usize::from(u16::MAX) {
                problems.push(Problem {
                    path: format!("listeners[{i}]"),
                    line: None,
                    message: format!(
                        "the DPDK engine balances a VIP over at most {} endpoints; `{}` has {} in its clusters together",
                        u16::MAX,
                        l.name,
                        hot.len()
                    ),
                });
            }
            let mut vip = Vip {
                name: l.name.as_str().into(),
                addr,
                raw_ip: raw_ip4(ip4_of(addr)),
                raw_ip6: ip6_of(addr),
                raw_port: raw_port(addr.port()),
                probe: if v6 {
                    0
                } else {
                    let p = raw_port(addr.port()).to_ne_bytes();
                    let ports = u32::from_ne_bytes([0, 0, p[0], p[1]]);
                    vip_probe(keys4(0, raw_ip4(ip4_of(addr)), ports, protocol))
                },
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
                idle_ms32: 0,
                stats: stats.packets(&format!("vip/{}", l.name)),
                hot: hot.into_boxed_slice(),
                hot_base: hot_base.into_boxed_slice(),
            };
            vip.idle_ms32 = vip.idle_timeout_ms.min(u64::from(u32::MAX / 2)) as u32;
            vips.push(vip);
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(LbTable {
            generation,
            vips: vips.into_boxed_slice(),
            clusters: clusters.into_boxed_slice(),
            by_vip: KeyMap::build(&by_vip),
            own_ips: KeyMap::build(&own_ips),
            vip_ips: KeyMap::build(&vip_ips),
            replies: KeyMap::build(&replies),
            by_vip6: KeyMap6::build(&by_vip6),
            own_ips6: KeyMap6::build(&own_ips6),
            vip_ips6: KeyMap6::build(&vip_ips6),
            replies6: KeyMap6::build(&replies6),
            neighbors,
            neighbors6,
            gateway: addressing.gateway,
            tunnel_src: addressing.tunnel_src.unwrap_or(Ipv4Addr::UNSPECIFIED),
            tunnel_src6: addressing.tunnel_src6.unwrap_or(Ipv6Addr::UNSPECIFIED),
        })
    }

    #[inline]
    fn next_hop(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.neighbors.get(&u32::from(ip)).copied().or(self.gateway)
    }

    #[inline]
    fn next_hop6(&self, ip: Ipv6Addr) -> Option<[u8; 6]> {
        self.neighbors6.get(&ip).copied().or(self.gateway)
    }

    /// The backend Maglev gives a new flow of `vip` (by its 5-tuple hash).
    #[inline]
    pub fn pick(&self, vip: &Vip, hash: u64) -> (u32, u16) {
        let c = vip.clusters[weighted(&vip.cumulative, (hash >> 32) as u32)];
        let b = self.clusters[c as usize].maglev.lookup(hash) as u16;
        (c, b)
    }

    /// [`LbTable::pick`] as an index into the VIP's hot array.
    #[inline]
    fn pick_hot(&self, vip: &Vip, hash: u64) -> u16 {
        let k = weighted(&vip.cumulative, (hash >> 32) as u32);
        let c = vip.clusters[k];
        vip.hot_base[k] + self.clusters[c as usize].maglev.lookup(hash) as u16
    }

    /// The full record of a hot backend (its counters).
    #[inline]
    fn backend(&self, h: &Hot) -> &Backend {
        &self.clusters[h.cluster as usize].backends[usize::from(h.index)]
    }
}

// === flow table ===

/// One worker's flow table for one address family: set-associative, buckets of [`WAYS`]
/// entries (32 bytes for IPv4 keys, 64 for IPv6), each bucket an aligned block of two or
/// four cache lines prefetched together, allocated once and marked for transparent huge
/// pages (a 4 KiB page per bucket touched would cost a TLB miss per packet). A full
/// bucket evicts its least recently seen entry (Katran keeps an LRU for the same reason:
/// bounded memory under a SYN flood).
pub struct FlowTable<K: FlowKey = Key4> {
    buckets: Box<[Bucket<K>]>,
    mask: usize,
    live: u64,
}

const WAYS: usize = 4;

/// A flow's exact identity in the table.
pub trait FlowKey: Copy + Default + PartialEq {
    /// The all-zero key marks an empty slot; real keys never are.
    fn is_empty(&self) -> bool;
}

/// IPv4: addresses in `a`; ports, protocol and a never-zero marker bit in `b` (raw).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Key4 {
    a: u64,
    b: u64,
}

impl FlowKey for Key4 {
    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.b == 0
    }
}

/// IPv6: both addresses (raw) and `b` as for [`Key4`].
#[derive(Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Key6 {
    src: u128,
    dst: u128,
    b: u64,
}

impl FlowKey for Key6 {
    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.b == 0
    }
}

#[derive(Clone, Copy, Default)]
#[repr(C, align(128))]
struct Bucket<K: FlowKey>([FlowEntry<K>; WAYS]);

#[derive(Clone, Copy, Default)]
#[repr(C)]
struct FlowEntry<K: FlowKey> {
    key: K,
    /// The backend's identity ([`backend_key`]): how a flow finds its backend again
    /// after a table swap.
    backend: u64,
    /// Wrapping millisecond clock of the last packet.
    last_ms: u32,
    /// Low bits of the table epoch `hot` was resolved in.
    epoch: u16,
    /// The backend's index in that table's hot array.
    hot: u16,
}

impl<K: FlowKey> FlowEntry<K> {
    /// The entry's backend (index in `vip`'s hot array, and its entry there) when it was
    /// resolved in the table of `epoch` and that index still names it. Same epoch: the
    /// index is right unless the 16-bit epoch wrapped, which the identity check (on the
    /// line the rewrite reads anyway) catches. `None`: resolve it again.
    #[inline(always)]
    fn current<'t>(&self, vip: &'t Vip, epoch: u16) -> Option<(u16, &'t Hot)> {
        if self.epoch != epoch {
            return None;
        }
        let h = vip.hot.get(usize::from(self.hot))?;
        (h.key == self.backend).then_some((self.hot, h))
    }
}

// Entries stay within their cache lines.
const _: () = assert!(std::mem::size_of::<FlowEntry<Key4>>() == 32);
const _: () = assert!(std::mem::size_of::<FlowEntry<Key6>>() == 64);

/// A backend's identity in 48 bits: exact for IPv4 (`addr << 16 | port`); a hash of
/// address and port for IPv6, which `compile` checks is unique within each cluster.
#[inline]
fn backend_key(a: &SocketAddr) -> u64 {
    match a {
        SocketAddr::V4(a) => (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port()),
        SocketAddr::V6(a) => {
            let v = u128::from(*a.ip());
            fold_mul(
                fold_mul(v as u64 ^ 0x6a09_e667_f3bc_c908, (v >> 64) as u64),
                u64::from(a.port()) | 1 << 32,
            ) & ((1 << 48) - 1)
        }
    }
}

/// `n` zeroed buckets, advised to use transparent huge pages before first touch.
fn alloc_buckets<K: FlowKey>(n: usize) -> Box<[Bucket<K>]> {
    let layout = std::alloc::Layout::array::<Bucket<K>>(n).expect("flow table size fits memory");
    // Not `alloc_zeroed`: with this alignment it zeroes (touches) every page at once,
    // before the advice below could apply. Advise first, then zero.
    // SAFETY: the layout has a non-zero size (n >= 1, Bucket is 128 bytes).
    let p = unsafe { std::alloc::alloc(layout) }.cast::<Bucket<K>>();
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    #[cfg(target_os = "linux")]
    {
        let (start, end) = (p as usize, p as usize + layout.size());
        let (lo, hi) = ((start + 4095) & !4095, end & !4095);
        if hi > lo {
            // SAFETY: [lo, hi) lies inside the allocation just made; MADV_HUGEPAGE only
            // changes how the kernel backs it. Best effort: an error (THP off) is harmless.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    // SAFETY: `p` is valid for `n` Buckets (just allocated with that layout).
    unsafe { std::ptr::write_bytes(p, 0, n) };
    // SAFETY: `p` holds `n` zeroed Buckets (all-zero is a valid Bucket: plain integers),
    // allocated by the global allocator with exactly `Layout::array::<Bucket>(n)`, which
    // is what `Box<[Bucket]>` frees with.
    unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n)) }
}

impl<K: FlowKey> FlowTable<K> {
    /// `capacity` entries, rounded up to a power of two multiple of the bucket size.
    pub fn new(capacity: usize) -> FlowTable<K> {
        let buckets = (capacity / WAYS).max(1).next_power_of_two();
        FlowTable {
            buckets: alloc_buckets(buckets),
            mask: buckets - 1,
            live: 0,
        }
    }

    pub fn live(&self) -> u64 {
        self.live
    }

    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Look up a flow; on a hit refresh its age and, after a table swap, re-find its
    /// backend by address among the VIP's clusters (gone → treated as new). A hit is the
    /// backend's index in the VIP's hot array and its entry there.
    #[inline(always)]
    fn lookup<'t>(
        &mut self,
        t: &LbTable,
        vip: &'t Vip,
        key: K,
        hash: u64,
        now: u32,
        idle: u32,
    ) -> Option<(u16, &'t Hot)> {
        let bucket = &mut self.buckets[hash as usize & self.mask];
        let e = bucket.0.iter_mut().find(|e| e.key == key)?;
        if now.wrapping_sub(e.last_ms) > idle {
            return None; // expired: re-pick (insert overwrites it)
        }
        e.last_ms = now;
        if let Some(hit) = e.current(vip, t.generation as u16) {
            return Some(hit);
        }
        Self::refind(e, t, vip)
    }

    /// A hit resolved in another table: look for the backend's address in the clusters
    /// this VIP sends to now (cluster and backend indices may shift between tables).
    #[cold]
    #[inline(never)]
    fn refind<'t>(e: &mut FlowEntry<K>, t: &LbTable, vip: &'t Vip) -> Option<(u16, &'t Hot)> {
        let h = vip
            .clusters
            .iter()
            .zip(vip.hot_base.iter())
            .find_map(|(&vc, &base)| {
                let cl = &t.clusters[vc as usize];
                cl.index.get(&e.backend).map(|&i| base + i)
            })?;
        e.hot = h;
        e.epoch = t.generation as u16;
        Some((h, &vip.hot[usize::from(h)]))
    }

    /// Remember flow `key` → backend `h` of `vip`'s hot array; true if an older flow was
    /// evicted for it.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn insert(&mut self, t: &LbTable, vip: &Vip, key: K, hash: u64, now: u32, h: u16) -> bool {
        let entry = FlowEntry {
            key,
            backend: vip.hot[usize::from(h)].key,
            last_ms: now,
            epoch: t.generation as u16,
            hot: h,
        };
        let slots = &mut self.buckets[hash as usize & self.mask].0;
        // Same key (expired or moved), else an empty slot, else the oldest.
        let mut victim = 0;
        for (w, e) in slots.iter().enumerate() {
            if e.key == key {
                slots[w] = entry;
                return false;
            }
            if e.key.is_empty() {
                slots[w] = entry;
                self.live += 1;
                return false;
            }
            if now.wrapping_sub(e.last_ms) > now.wrapping_sub(slots[victim].last_ms) {
                victim = w;
            }
        }
        slots[victim] = entry;
        true
    }
}

/// A read-hint for `p` (any address; never faults).
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A read-only open-addressing map from non-zero packed keys, built once per compile:
/// one multiply to hash, linear probing in a power-of-two array at most half full —
/// cheaper per packet than a general-purpose `HashMap`.
#[derive(Debug)]
struct KeyMap<V: Copy> {
    slots: Box<[(u64, V)]>,
    mask: usize,
}

impl<V: Copy + Default> KeyMap<V> {
    fn build(items: &IntMap<u64, V>) -> KeyMap<V> {
        let size = (items.len() * 2).next_power_of_two().max(8);
        let mut slots = vec![(0u64, V::default()); size].into_boxed_slice();
        let mask = size - 1;
        for (&k, &v) in items {
            debug_assert!(k != 0, "key 0 marks an empty slot");
            let mut i = Self::slot(k, mask);
            while slots[i].0 != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = (k, v);
        }
        KeyMap { slots, mask }
    }

    #[inline]
    fn slot(k: u64, mask: usize) -> usize {
        (k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & mask
    }

    #[inline]
    fn get(&self, k: u64) -> Option<V> {
        let mut i = Self::slot(k, self.mask);
        // At most half full: an empty slot always ends the probe.
        loop {
            let (key, v) = self.slots[i];
            if key == k {
                return Some(v);
            }
            if key == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// [`KeyMap`] for IPv6 keys ([`key6`], [`addr_key6`]): the second half is never 0 for
/// a real key, so 0 marks an empty slot.
#[derive(Debug)]
struct KeyMap6<V: Copy> {
    slots: Box<[(u128, u32, V)]>,
    mask: usize,
}

impl<V: Copy + Default> KeyMap6<V> {
    fn build(items: &HashMap<(u128, u32), V>) -> KeyMap6<V> {
        let size = (items.len() * 2).next_power_of_two().max(8);
        let mut slots = vec![(0u128, 0u32, V::default()); size].into_boxed_slice();
        let mask = size - 1;
        for (&(a, b), &v) in items {
            debug_assert!(b != 0, "0 marks an empty slot");
            let mut i = Self::slot(a, b, mask);
            while slots[i].1 != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = (a, b, v);
        }
        KeyMap6 { slots, mask }
    }

    #[inline]
    fn slot(a: u128, b: u32, mask: usize) -> usize {
        (fold_mul(
            a as u64 ^ u64::from(b),
            (a >> 64) as u64 ^ 0x9e37_79b9_7f4a_7c15,
        ) as usize)
            & mask
    }

    #[inline]
    fn get(&self, (a, b): (u128, u32)) -> Option<V> {
        let mut i = Self::slot(a, b, self.mask);
        // At most half full: an empty slot always ends the probe.
        loop {
            let (ka, kb, v) = self.slots[i];
            if ka == a && kb == b {
                return Some(v);
            }
            if kb == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// Make room for an outer IP header of `grow` bytes (the outer packet `outer_len` long)
/// and write the Ethernet header towards `mac`: the frame to write the outer header
/// into, or `None` — counted as `drop_no_headroom` — when the length does not fit the
/// outer header's 16-bit field or the mbuf has no headroom. Both families' tunnels.
#[inline]
pub(super) fn encapsulate<'p>(
    pkt: &'p mut impl PacketBuf,
    grow: usize,
    outer_len: usize,
    mac: [u8; 6],
    port: &PortCtx,
    w: usize,
    ethertype: u16,
) -> Option<&'p mut [u8]> {
    if outer_len > usize::from(u16::MAX) || !pkt.prepend(grow) {
        port.stats.inc(w, C::DropNoHeadroom);
        return None;
    }
    let data = pkt.data();
    let mut eth = EthernetFrame::new_unchecked(&mut *data);
    eth.set_dst(mac);
    eth.set_src(port.mac);
    eth.set_ethertype(ethertype);
    Some(data)
}

// === the worker ===

/// One worker's balancer state: its flow table and the counter slot it writes.
pub struct LbWorker {
    pub worker: usize,
    pub flows: FlowTable<Key4>,
    pub flows6: FlowTable<Key6>,
    /// Client → backend packets and bytes not yet added to their VIP's and backend's
    /// counters: runs of packets of one (VIP, cluster, backend) are added at once, at the
    /// latest when the burst ends, instead of four counter writes per packet.
    pending: Pending,
    /// The last VIP a burst's frames went to ([`vip_probe`], index), for the next burst
    /// to start with (checked against the table it gets: see [`VipCache::resume`]).
    vip_hint: (u64, u32),
}

#[derive(Clone, Copy, Default)]
struct Pending {
    vip: u32,
    /// The backend's index in the hot array.
    hot: u16,
    packets: u64,
    bytes: u64,
}

impl Pending {
    /// Count one packet of `bytes` towards (`vip`, `hot`): two additions while the run
    /// goes on.
    #[inline(always)]
    fn count(&mut self, t: &LbTable, w: usize, vip: u32, hot: u16, bytes: u64) {
        if (self.vip, self.hot) != (vip, hot) {
            *self = self.restart(t, w, vip, hot);
        }
        self.packets += 1;
        self.bytes += bytes;
    }

    /// Flush the run and start one for (`vip`, `hot`): out of line, so a run's packets
    /// keep the fast path's registers, and by value, so a run kept in a local never has
    /// its address taken (and can live in registers).
    #[cold]
    #[inline(never)]
    fn restart(mut self, t: &LbTable, w: usize, vip: u32, hot: u16) -> Pending {
        self.flush(t, w);
        Pending {
            vip,
            hot,
            packets: 0,
            bytes: 0,
        }
    }

    /// Add the run to its VIP's and backend's counters (worker `w`'s slots) and clear it.
    #[inline]
    fn flush(&mut self, t: &LbTable, w: usize) {
        let p = std::mem::take(self);
        if p.packets == 0 {
            return;
        }
        let vip = &t.vips[p.vip as usize];
        vip.stats.add(w, P::Packets, p.packets);
        vip.stats.add(w, P::Bytes, p.bytes);
        let b = t.backend(&vip.hot[usize::from(p.hot)]);
        b.stats.add(w, P::Packets, p.packets);
        b.stats.add(w, P::Bytes, p.bytes);
    }
}

/// Most frames [`LbWorker::process_burst`] takes at once.
pub const MAX_BURST: usize = 64;

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
            flows6: FlowTable::new(flow_capacity),
            pending: Pending::default(),
            vip_hint: (0, 0),
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
        let v = self.process_one(t, port, pkt, now_ms);
        self.flush(t);
        v
    }

    /// [`LbWorker::process`] for a burst of up to [`MAX_BURST`] frames, `verdicts[i]` for
    /// `pkts[i]`, software-pipelined (VPP-style) in chunks of [`CHUNK`] frames: the next
    /// chunk is parsed, hashed and its flow-table buckets prefetched, then the current
    /// chunk is decided and rewritten, so at most two chunks' buckets are in flight (a
    /// whole burst's worth would overrun the core's miss buffers when the table is larger
    /// than the cache), and each stage's loop keeps its own few values in registers. Only
    /// the common case — Ethernet + 20-byte IPv4 header + TCP/UDP, valid, not a fragment —
    /// is parsed in the first stage ([`fast4`]); everything else (ARP, ICMP, options,
    /// IPv6, bad frames) goes frame by frame through [`LbWorker::process`]'s path, out of
    /// line. In the second stage only a DNAT frame of an established flow (the steady
    /// state) is decided inline ([`established`]); a new, expired or moved flow, a missing
    /// next hop, an IP-in-IP VIP or a frame to no VIP takes the full path for that frame
    /// ([`LbWorker::forward_slow`], [`LbWorker::not_to_a_vip4`]), which repeats the
    /// lookup and so decides exactly as `process` would. Returns (bytes received, bytes
    /// of the frames to forward as they leave, how many frames are to be forwarded).
    pub fn process_burst<B: PacketBuf>(
        &mut self,
        t: &LbTable,
        port: &PortCtx,
        pkts: &mut [B],
        verdicts: &mut [Verdict],
        now_ms: u64,
    ) -> (u64, u64, usize) {
        let n = pkts.len().min(verdicts.len()).min(MAX_BURST);
        let (pkts, verdicts) = (&mut pkts[..n], &mut verdicts[..n]);
        for p in &pkts[..n.min(PREFETCH)] {
            p.prefetch();
        }
        // Frames [0, parsed) are described here (stage 1 writes an entry before stage 2
        // reads it; never read past `parsed`). Uninitialised: no per-burst clearing.
        let mut scratch = [const { MaybeUninit::<Parsed>::uninit() }; MAX_BURST];
        // Per-burst values held in locals (registers or the stack, never reloaded through
        // `self` or `t` after a store into a frame could have changed them).
        let now = now_ms as u32;
        let epoch = t.generation as u16;
        let mask = self.flows.mask;
        let mut buckets = self.flows.buckets.as_mut_ptr();
        // The port's MAC as the rewrite stores it (see [`mac_word`]).
        let (src_lo, src_hi) = (
            mac_word([0; 6], [port.mac[0], port.mac[1]]),
            u32::from_ne_bytes([port.mac[2], port.mac[3], port.mac[4], port.mac[5]]),
        );
        // A one-entry cache of the VIP map: consecutive frames mostly go to one VIP.
        // (A probe of a TCP/UDP frame is never 0, so the empty cache matches nothing.)
        let mut vc = VipCache::resume(t, self.vip_hint);
        // The inline path's counting run, a local (the out-of-line paths count into
        // `self.pending`); both are added to the counters before the burst returns.
        let mut run = Pending::default();
        let (mut fwd_bytes, mut forwarded) = (0u64, 0usize);
        let mut rx_bytes = parse_chunk(pkts, &mut scratch, 0, mask, buckets);
        let mut at = 0;
        while at < n {
            let next = (at + CHUNK).min(n);
            // (Address arithmetic only: the first stage prefetches through `buckets`.)
            rx_bytes += parse_chunk(pkts, &mut scratch, next, mask, buckets);
            for j in at..next {
                // SAFETY: entry j (< next <= parsed) was written by the parse_chunk call
                // that covered it (the one before this loop or the previous round's).
                let s = unsafe { scratch[j].assume_init() };
                if s.key.is_empty() {
                    let v = self.process_one(t, port, &mut pkts[j], now_ms);
                    buckets = self.flows.buckets.as_mut_ptr();
                    verdicts[j] = v;
                    if v == Verdict::Forward {
                        fwd_bytes += pkts[j].data().len() as u64;
                        forwarded += 1;
                    }
                    continue;
                }
                let probe = vip_probe(s.key);
                if probe != vc.probe {
                    vc = VipCache::fill(t, probe, s.key);
                }
                if vc.dnat {
                    // SAFETY: `buckets` points at this worker's flow table, re-derived
                    // after every call that could have used the table through `self` (the
                    // table's allocation never changes size or place after
                    // `FlowTable::new`); `s.bucket` is `hash & mask`, below its length (a
                    // power of two, `mask + 1`). No other reference to the bucket lives
                    // while this one does: it ends before the next call through `self`.
                    let bucket = unsafe { &mut *buckets.add(s.bucket as usize) };
                    if let Some((h, be)) = established(bucket, s.key, vc.hot, vc.idle, now, epoch) {
                        // SAFETY: `s.data` is the start of frame j's data as stage 1 read
                        // it (fast4 took it, so it is at least FAST4_MIN bytes long);
                        // since then only other frames' `data` was called, and nothing
                        // moved or grew a frame: by `PacketBuf`'s contract the bytes are
                        // still there, and no other reference to them lives.
                        let frame = unsafe { &mut *s.data.cast::<[u8; FAST4_MIN]>() };
                        run.count(t, self.worker, vc.v, h, u64::from(s.total));
                        dnat4(frame, (s.key.b >> 32) as u8, be, be.mac64 | src_lo, src_hi);
                        verdicts[j] = Verdict::Forward;
                        fwd_bytes += u64::from(s.len);
                        forwarded += 1;
                        continue;
                    }
                }
                let v = match vc.vip {
                    Some(_) => self.forward_slow(t, port, &mut pkts[j], s.flow(), vc.v, now_ms),
                    None => self.not_to_a_vip4(t, port, pkts[j].data(), s.flow(), self.worker),
                };
                buckets = self.flows.buckets.as_mut_ptr();
                verdicts[j] = v;
                if v == Verdict::Forward {
                    fwd_bytes += pkts[j].data().len() as u64;
                    forwarded += 1;
                }
            }
            at = next;
        }
        if vc.vip.is_some() {
            self.vip_hint = (vc.probe, vc.v);
        }
        run.flush(t, self.worker);
        self.flush(t);
        (rx_bytes, fwd_bytes, forwarded)
    }

    /// [`LbWorker::forward_to_backend`] out of line, for the burst path's frames that are
    /// not an established DNAT flow (new, expired, moved, no next hop, IP-in-IP).
    #[inline(never)]
    fn forward_slow(
        &mut self,
        t: &LbTable,
        port: &PortCtx,
        pkt: &mut impl PacketBuf,
        f: Flow4,
        v: u32,
        now_ms: u64,
    ) -> Verdict {
        self.forward_to_backend(t, port, pkt, f, v, now_ms, true)
    }

    /// Add the pending run to its VIP's and backend's counters.
    #[inline]
    fn flush(&mut self, t: &LbTable) {
        self.pending.flush(t, self.worker);
    }

    /// Count one client → backend packet (see [`LbWorker::flush`]).
    #[inline]
    fn count(&mut self, t: &LbTable, vip: u32, hot: u16, bytes: u64) {
        self.pending.count(t, self.worker, vip, hot, bytes);
    }

    /// One frame, whatever it holds.
    #[inline(never)]
    fn process_one(
        &mut self,
        t: &LbTable,
        port: &PortCtx,
        pkt: &mut impl PacketBuf,
        now_ms: u64,
    ) -> Verdict {
        let w = self.worker;
        let st = port.stats;
        let data = pkt.data();
        let Ok(eth) = EthernetFrame::new_checked(&*data) else {
            st.inc(w, C::DropTruncated);
            return Verdict::Drop;
        };
        match eth.ethertype() {
            ETHERTYPE_IPV4 => self.ipv4(t, port, pkt, now_ms),
            ETHERTYPE_IPV6 => self.ipv6(t, port, pkt, now_ms),
            ETHERTYPE_ARP => self.arp(t, port, data),
            _ => {
                st.inc(w, C::ExceptionNonIp);
                Verdict::Exception
            }
        }
    }

    /// An IPv4 frame (Ethernet header checked).
    fn ipv4(
        &mut self,
        t: &LbTable,
        port: &PortCtx,
        pkt: &mut impl PacketBuf,
        now_ms: u64,
    ) -> Verdict {
        let w = self.worker;
        let st = port.stats;
        match parse4(pkt.data()) {
            Ok(mut f) => {
                f.hash = hash4(f.key);
                self.tcp_udp4(t, port, pkt, f, now_ms)
            }
            Err(Not4::Drop(c)) => {
                st.inc(w, c);
                Verdict::Drop
            }
            Err(Not4::Exception(c)) => {
                st.inc(w, c);
                Verdict::Exception
            }
            Err(Not4::Icmp { dst, hlen, total }) => {
                if t.own_ips.get(addr_key4(dst)).is_some() {
                    return self.icmp_echo(port, pkt.data(), hlen, total);
                }
                st.inc(w, C::ExceptionOther);
                Verdict::Exception
            }
        }
    }

    /// An IPv4 TCP/UDP packet parsed by [`parse4`]: to a VIP, a DNAT reply, or neither.
    #[inline(always)]
    fn tcp_udp4(
        &mut self,
        t: &LbTable,
        port: &PortCtx,
        pkt: &mut impl PacketBuf,
        f: Flow4,
        now_ms: u64,
    ) -> Verdict {
        let w = self.worker;
        if let Some(v) = t.by_vip.get(key4(f.dst(), f.dport(), f.protocol())) {
            let plain = usize::from(f.hlen) == IPV4_MIN_HEADER_LEN;
            return self.forward_to_backend(t, port, pkt, f, v, now_ms, plain);
        }
        self.not_to_a_vip4(t, port, pkt.data(), f, w)
    }

    #[inline(never)]
    fn not_to_a_vip4(
        &mut self,
        t: &LbTable,
        port: &PortCtx,
        data: &mut [u8],
        f: Flow4,
        w: usize,
    ) -> Verdict {
        if t.vip_ips.get(addr_key4(f.dst())).is_some() {
            port.stats.inc(w, C::DropUnknownVip);
            return Verdict::Drop;
        }
        if let Some((v, c, b)) = t.replies.get(key4(f.src(), f.sport(), f.protocol())) {
            return self.reply(t, port, data, f, v, c, b);
        }
        port.stats.inc(w, C::ExceptionOther);
        Verdict::Exception
    }

    fn arp(&mut self, t: &LbTable, port: &PortCtx, data: &mut [u8]) -> Verdict {
        let w = self.worker;
        let Ok(mut arp) = ArpPacket::new_checked(&mut data[ETH_HEADER_LEN..]) else {
            port.stats.inc(w, C::ExceptionNonIp);
            return Verdict::Exception;
        };
        let target = addr_key4(raw_ip4(arp.target_ip()));
        if arp.operation() != ARP_REQUEST || t.own_ips.get(target).is_none() {
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

    /// Forward a TCP/UDP packet to `v`'s backend for its flow. `plain`: the IPv4 header
    /// has no options (the caller knows; [`fast4`] takes only such frames).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn forward_to_backend(
        &mut self,
        t: &LbTable,
        port: &PortCtx,
        pkt: &mut impl PacketBuf,
        f: Flow4,
        v: u32,
        now: u64,
        plain: bool,
    ) -> Verdict {
        let w = self.worker;
        let vip = &t.vips[v as usize];
        // The flow table keeps a wrapping 32-bit millisecond clock.
        let now = now as u32;
        let idle = vip.idle_ms32;
        let total = usize::from(f.total);
        let flows: fn(&mut LbWorker) -> &mut FlowTable<_> = |lb| &mut lb.flows;
        let Some((be, mac)) = self.place(flows, t, port, v, f.key, f.hash, now, idle, total as u64)
        else {
            return Verdict::Drop;
        };
        match vip.forwarding {
            Forwarding::Dnat => {
                let data = pkt.data();
                match data.first_chunk_mut::<FAST4_MIN>() {
                    // The common frame (no IP options, at least a TCP header's worth):
                    // a fixed-size view, so every offset below is checked at compile time.
                    Some(h) if plain => {
                        let src = port.mac;
                        let eth8 = u32::from_ne_bytes([src[2], src[3], src[4], src[5]]);
                        dnat4(h, f.protocol(), be, mac_word(mac, [src[0], src[1]]), eth8);
                    }
                    _ => {
                        ipv4_nat(
                            &mut data[ETH_HEADER_LEN..],
                            usize::from(f.hlen),
                            f.protocol(),
                            Side::Dst,
                            be.raw_ip,
                            be.raw_port,
                        );
                        let mut eth = EthernetFrame::new_unchecked(data);
                        eth.set_dst(mac);
                        eth.set_src(port.mac);
                    }
                }
            }
            Forwarding::Ipip => {
                let tos = pkt.data()[ETH_HEADER_LEN + 1];
                let outer_len = total + IPV4_MIN_HEADER_LEN;
                let Some(data) = encapsulate(
                    pkt,
                    IPV4_MIN_HEADER_LEN,
                    outer_len,
                    mac,
                    port,
                    w,
                    ETHERTYPE_IPV4,
                ) else {
                    return Verdict::Drop;
                };
                emit_ipv4_header(
                    &mut data[ETH_HEADER_LEN..],
                    tos,
                    outer_len as u16,
                    PROTO_IPIP,
                    t.tunnel_src,
                    Ipv4Addr::from(be.raw_ip.to_ne_bytes()),
                );
            }
        }
        Verdict::Forward
    }

    /// A flow's backend: the one its entry in `flows` holds, or Maglev's pick for a new
    /// flow (inserted, counted), with `bytes` counted towards it. `None`: the backend's
    /// next hop is unknown (counted as `drop_no_neighbor`). One body for both families.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn place<'t, K: FlowKey>(
        &mut self,
        flows: fn(&mut LbWorker) -> &mut FlowTable<K>,
        t: &'t LbTable,
        port: &PortCtx,
        v: u32,
        key: K,
        hash: u64,
        now: u32,
        idle: u32,
        bytes: u64,
    ) -> Option<(&'t Hot, [u8; 6])> {
        let vip = &t.vips[v as usize];
        let (h, hb) = match flows(self).lookup(t, vip, key, hash, now, idle) {
            Some(hit) => hit,
            None => self.new_flow(flows, t, port, vip, key, hash, now),
        };
        let Some(mac) = hb.mac else {
            port.stats.inc(self.worker, C::DropNoNeighbor);
            return None;
        };
        self.count(t, v, h, bytes);
        Some((hb, mac))
    }

    /// Place a new flow (or one whose backend left) by Maglev, remember and count it.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn new_flow<'t, K: FlowKey>(
        &mut self,
        flows: fn(&mut LbWorker) -> &mut FlowTable<K>,
        t: &'t LbTable,
        port: &PortCtx,
        vip: &'t Vip,
        key: K,
        hash: u64,
        now: u32,
    ) -> (u16, &'t Hot) {
        let w = self.worker;
        let h = t.pick_hot(vip, hash);
        if flows(self).insert(t, vip, key, hash, now, h) {
            port.stats.inc(w, C::FlowEvictions);
        }
        port.stats.set(
            w,
            C::FlowTableEntries,
            self.flows.live() + self.flows6.live(),
        );
        let hb = &vip.hot[usize::from(h)];
        vip.stats.inc(w, P::FlowsNew);
        t.backend(hb).stats.inc(w, P::FlowsNew);
        (h, hb)
    }

    #[allow(clippy::too_many_arguments)]
    fn reply(
        &mut self,
        t: &LbTable,
        port: &PortCtx,
        data: &mut [u8],
        f: Flow4,
        v: u32,
        c: u32,
        b: u16,
    ) -> Verdict {
        let w = self.worker;
        let vip = &t.vips[v as usize];
        let client = Ipv4Addr::from(f.dst().to_ne_bytes());
        let Some(mac) = t.next_hop(client) else {
            port.stats.inc(w, C::DropNoNeighbor);
            return Verdict::Drop;
        };
        ipv4_nat(
            &mut data[ETH_HEADER_LEN..],
            usize::from(f.hlen),
            f.protocol(),
            Side::Src,
            vip.raw_ip,
            vip.raw_port,
        );
        let mut eth = EthernetFrame::new_unchecked(data);
        eth.set_dst(mac);
        eth.set_src(port.mac);
        let bytes = u64::from(f.total);
        vip.stats.inc(w, P::ReplyPackets);
        vip.stats.add(w, P::ReplyBytes, bytes);
        let backend = &t.clusters[c as usize].backends[b as usize];
        backend.stats.inc(w, P::ReplyPackets);
        backend.stats.add(w, P::ReplyBytes, bytes);
        Verdict::Forward
    }
}

/// Frames [`LbWorker::process_burst`] parses (stage 1) ahead of deciding them (stage 2).
const CHUNK: usize = 8;

/// How far ahead of its parse a frame's data is prefetched, in the same pass (a window,
/// not the whole burst at once: the loads overlap without queueing).
const PREFETCH: usize = 8;

/// Stage 1 of [`LbWorker::process_burst`] for frames `from..from + CHUNK` (those that
/// exist): [`fast4`], the flow hash, a prefetch of the bucket's first cache line, and
/// the result in `scratch`; returns the bytes received. The bucket prefetch is address
/// arithmetic on `buckets` only (a prefetch never faults, whatever the address), so a
/// stale pointer would do no harm.
#[inline(always)]
fn parse_chunk<B: PacketBuf>(
    pkts: &mut [B],
    scratch: &mut [MaybeUninit<Parsed>; MAX_BURST],
    from: usize,
    mask: usize,
    buckets: *mut Bucket<Key4>,
) -> u64 {
    let n = pkts.len().min(MAX_BURST);
    let mut rx_bytes = 0;
    for i in from..(from + CHUNK).min(n) {
        if i + PREFETCH < n {
            pkts[i + PREFETCH].prefetch();
        }
        let p = &mut pkts[i];
        let checked = p.ip_checksum_good();
        let d = p.data();
        rx_bytes += d.len() as u64;
        let s = match fast4(d, checked) {
            Some((key, total)) => {
                let bucket = hash4(key) as usize & mask;
                // The bucket's first cache line only: `insert` fills ways in order, so
                // with the table sized well above the flows in flight (the default)
                // nearly every flow sits in the first line; one prefetch per frame
                // instead of one per line (each costs an issue slot and a miss buffer
                // when the table is cold). A flow in a later way pays a demand load.
                prefetch(buckets.wrapping_add(bucket).cast());
                Parsed {
                    key,
                    data: d.as_mut_ptr(),
                    bucket: bucket as u32,
                    len: d.len() as u32,
                    total,
                }
            }
            None => Parsed::SLOW,
        };
        scratch[i].write(s);
    }
    rx_bytes
}

/// A frame as [`LbWorker::process_burst`]'s first stage leaves it for the second: the
/// flow key, where the frame's data is and how long, its flow-table bucket and the IP
/// total length. An empty key marks a frame [`fast4`] did not take.
#[derive(Clone, Copy)]
struct Parsed {
    key: Key4,
    data: *mut u8,
    bucket: u32,
    len: u32,
    total: u16,
}

impl Parsed {
    const SLOW: Parsed = Parsed {
        key: Key4 { a: 0, b: 0 },
        data: std::ptr::null_mut(),
        bucket: 0,
        len: 0,
        total: 0,
    };

    /// The frame as [`parse4`] would have described it (fast4 frames have no options).
    #[inline(always)]
    fn flow(&self) -> Flow4 {
        Flow4 {
            key: self.key,
            hash: hash4(self.key),
            total: self.total,
            hlen: IPV4_MIN_HEADER_LEN as u8,
        }
    }
}

/// The VIP of the last frame a burst looked up: its probe ([`vip_probe`]), index and
/// entry (`None`: that destination is no VIP), and for a DNAT VIP (`dnat`) what the
/// burst path's established-flow check reads (its hot array and idle timeout), held in
/// registers rather than re-read through the VIP.
#[derive(Clone, Copy)]
struct VipCache<'t> {
    probe: u64,
    v: u32,
    vip: Option<&'t Vip>,
    dnat: bool,
    idle: u32,
    hot: &'t [Hot],
}

impl<'t> VipCache<'t> {
    const EMPTY: VipCache<'static> = VipCache {
        probe: 0,
        v: 0,
        vip: None,
        dnat: false,
        idle: 0,
        hot: &[],
    };

    /// Look `key`'s destination up in the VIP map (on a change of VIP only).
    #[cold]
    #[inline(never)]
    fn fill(t: &'t LbTable, probe: u64, key: Key4) -> VipCache<'t> {
        let f = Flow4 {
            key,
            hash: 0,
            total: 0,
            hlen: 0,
        };
        let v = t.by_vip.get(key4(f.dst(), f.dport(), f.protocol()));
        VipCache::of(t, probe, v)
    }

    /// The cache as a previous burst left it ([`LbWorker::vip_hint`]: probe, VIP index),
    /// if that index names a VIP with that probe in `t` (which may be another table):
    /// then the VIP map would give that index too (no two listeners share an address
    /// and protocol). Empty otherwise.
    #[inline]
    fn resume(t: &'t LbTable, (probe, v): (u64, u32)) -> VipCache<'t> {
        match t.vips.get(v as usize) {
            Some(vip) if probe != 0 && vip.probe == probe => VipCache::of(t, probe, Some(v)),
            _ => VipCache::EMPTY,
        }
    }

    #[inline(always)]
    fn of(t: &'t LbTable, probe: u64, v: Option<u32>) -> VipCache<'t> {
        let vip = v.map(|v| &t.vips[v as usize]);
        VipCache {
            probe,
            v: v.unwrap_or(0),
            vip,
            dnat: vip.is_some_and(|vip| vip.forwarding == Forwarding::Dnat),
            idle: vip.map_or(0, |vip| vip.idle_ms32),
            hot: vip.map_or(&[], |vip| &vip.hot),
        }
    }
}

/// An IPv4 flow's destination address, port and protocol as one integer, unique per
/// (address, port, protocol) and never 0 for TCP/UDP: what [`VipCache`] compares.
#[inline(always)]
fn vip_probe(k: Key4) -> u64 {
    if cfg!(target_endian = "little") {
        // Destination port (bytes 2..4 of the port word) and protocol: bits 16..40.
        (k.a >> 32) | ((k.b & 0x00ff_ffff_0000) << 16)
    } else {
        let p = (k.b as u32).to_ne_bytes();
        (k.a >> 32)
            | (u64::from(u16::from_ne_bytes([p[2], p[3]])) << 32)
            | (((k.b >> 32) & 0xff) << 48)
    }
}

/// The steady state of a flow, decided inline by the burst path for a DNAT VIP: `key`
/// has an entry in `bucket` that has not expired (`idle`), was resolved in this table
/// (`epoch`), and whose backend is still the one at its index in the VIP's `hot` array
/// and has a next hop ([`Hot::fast_key`]). Refreshes the entry's age and returns the
/// backend's index and entry. `None` for everything else, without changing anything:
/// the caller then takes [`LbWorker::forward_to_backend`], which looks the flow up again
/// and handles the case (and agrees with this on every case this takes).
#[inline(always)]
fn established<'t>(
    bucket: &mut Bucket<Key4>,
    key: Key4,
    hot: &'t [Hot],
    idle: u32,
    now: u32,
    epoch: u16,
) -> Option<(u16, &'t Hot)> {
    let e = bucket.0.iter_mut().find(|e| e.key == key)?;
    if now.wrapping_sub(e.last_ms) > idle || e.epoch != epoch {
        return None;
    }
    let h = hot.get(usize::from(e.hot))?;
    if h.fast_key != e.backend {
        return None;
    }
    e.last_ms = now;
    Some((e.hot, h))
}

/// What the balancer reads from an IPv4 TCP/UDP packet, raw (wire order, loaded
/// natively) and passed by value: built from registers, never re-read through memory.
/// The 5-tuple is kept as the flow-table key it is looked up by (two words, not five
/// fields).
#[derive(Clone, Copy, Default)]
struct Flow4 {
    key: Key4,
    /// [`hash4`] of `key`, once computed.
    hash: u64,
    total: u16,
    hlen: u8,
}

impl Flow4 {
    #[inline(always)]
    fn new(src: u32, dst: u32, ports: u32, protocol: u8, hlen: u8, total: u16) -> Flow4 {
        Flow4 {
            key: keys4(src, dst, ports, protocol),
            hash: 0,
            total,
            hlen,
        }
    }
    #[inline(always)]
    fn src(&self) -> u32 {
        self.key.a as u32
    }
    #[inline(always)]
    fn dst(&self) -> u32 {
        (self.key.a >> 32) as u32
    }
    /// Both ports as loaded together.
    #[inline(always)]
    fn ports(&self) -> u32 {
        self.key.b as u32
    }
    #[inline(always)]
    fn sport(&self) -> u16 {
        let p = self.ports().to_ne_bytes();
        u16::from_ne_bytes([p[0], p[1]])
    }
    #[inline(always)]
    fn dport(&self) -> u16 {
        let p = self.ports().to_ne_bytes();
        u16::from_ne_bytes([p[2], p[3]])
    }
    #[inline(always)]
    fn protocol(&self) -> u8 {
        (self.key.b >> 32) as u8
    }
}

/// Why an IPv4 frame is not a TCP/UDP packet for the balancer, with its counter.
#[derive(Clone, Copy)]
enum Not4 {
    Drop(C),
    Exception(C),
    /// ICMP to `dst` (raw): an echo request to us is answered.
    Icmp {
        dst: u32,
        hlen: usize,
        total: usize,
    },
}

/// Parse and check an Ethernet + IPv4 frame (`d.len() >= ETH_HEADER_LEN`) down to the
/// TCP/UDP ports: header, lengths, header checksum, fragment, protocol, L4 length.
#[inline(always)]
fn parse4(d: &[u8]) -> Result<Flow4, Not4> {
    let ip = match Ipv4Packet::new_checked(&d[ETH_HEADER_LEN..]) {
        Ok(ip) => ip,
        Err(WireError::Truncated) => return Err(Not4::Drop(C::DropTruncated)),
        Err(_) => return Err(Not4::Drop(C::DropBadIpHeader)),
    };
    if !ip.verify_checksum() {
        return Err(Not4::Drop(C::DropBadChecksum));
    }
    if ip.is_fragment() {
        return Err(Not4::Exception(C::ExceptionFragment));
    }
    let (protocol, hlen, total) = (ip.protocol(), ip.header_len(), ip.total_len());
    let dst = ne32(d, ETH_HEADER_LEN + 16);
    if protocol == PROTO_ICMP {
        return Err(Not4::Icmp { dst, hlen, total });
    }
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return Err(Not4::Exception(C::ExceptionOther));
    }
    let l4_at = ETH_HEADER_LEN + hlen;
    if L4Header::new_checked(&d[l4_at..ETH_HEADER_LEN + total], protocol).is_err() {
        return Err(Not4::Drop(C::DropTruncated));
    }
    Ok(Flow4::new(
        ne32(d, ETH_HEADER_LEN + 12),
        dst,
        ne32(d, l4_at),
        protocol,
        hlen as u8,
        total as u16,
    ))
}

/// The shortest frame [`fast4`] takes: Ethernet + IPv4 without options + a TCP header's
/// length (a UDP frame is padded to the 60-byte Ethernet minimum anyway).
const FAST4_MIN: usize = ETH_HEADER_LEN + IPV4_MIN_HEADER_LEN + 20;

/// [`parse4`] for the common case only: Ethernet, IPv4 without options and TCP/UDP,
/// header checksum valid (`checked`: the NIC verified it), not a fragment, lengths
/// consistent. `None` for anything else (including what parse4 accepts with options):
/// the caller takes the full path, which tells the cases apart and counts them. Where
/// it answers (the flow key and the IP total length), it agrees with parse4 field for
/// field (the burst-equivalence test holds it to that).
///
/// Five loads after the length check (Ethernet type with version and IHL; the first
/// eight header bytes; TTL, protocol and checksum; both addresses; both ports), every
/// condition evaluated without a branch and tested once. The header checksum is summed
/// in 64-bit words with end-around carries (RFC 1071 §2(C): any word size sums alike),
/// the address word serving the flow key as well.
#[inline(always)]
fn fast4(d: &[u8], checked: bool) -> Option<(Key4, u16)> {
    let h: &[u8; FAST4_MIN] = d.first_chunk()?;
    let le32 = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let le64 = |at: usize| {
        u64::from_le_bytes([
            h[at],
            h[at + 1],
            h[at + 2],
            h[at + 3],
            h[at + 4],
            h[at + 5],
            h[at + 6],
            h[at + 7],
        ])
    };
    // Bytes 12..15: ethertype 0x0800, version 4, IHL 5 (the TOS byte is ignored).
    let eth_ok = le32(ETH_HEADER_LEN - 2) & 0x00ff_ffff == 0x0045_0008;
    let head = le64(ETH_HEADER_LEN); // version/IHL, TOS, total length, id, flags/fragment
    let ttl_proto = le32(ETH_HEADER_LEN + 8); // TTL, protocol, header checksum
    let addrs = le64(ETH_HEADER_LEN + 12); // source, destination
    let ports = le32(ETH_HEADER_LEN + IPV4_MIN_HEADER_LEN);
    let total = (head >> 16) as u16;
    let total = total.swap_bytes();
    // More-fragments flag and fragment offset (the 0x3fff of the big-endian word).
    let frag = (head >> 48) as u16 & 0xff3f;
    let protocol = (ttl_proto >> 8) as u8;
    // The ones'-complement sum of the 20 header bytes must fold to 0xffff; a NIC that
    // checked the header already spares the test (per port: a predictable value).
    let (sum, c1) = head.overflowing_add(addrs);
    let (sum, c2) = sum.overflowing_add(u64::from(ttl_proto) + u64::from(c1));
    // (With a carry out, the wrapped sum is below 2^33: adding it back cannot carry.)
    // Not 0: `head` holds the version/IHL byte, and end-around sums of non-zero words
    // never are.
    let sum = sum + u64::from(c2);
    // One minimum length for both protocols, a TCP header's (a UDP datagram with fewer
    // than 12 payload bytes takes the full path, which tells it apart).
    let ok = eth_ok
        & ((protocol == PROTO_TCP) | (protocol == PROTO_UDP))
        & (frag == 0)
        & (usize::from(total) >= FAST4_MIN - ETH_HEADER_LEN)
        & (usize::from(total) + ETH_HEADER_LEN <= d.len())
        & (checked | folds_to_ffff(sum));
    if !ok {
        return None;
    }
    // The key as `keys4` builds it from the raw (wire-order) fields: on a little-endian
    // machine the loads above are those fields as loaded natively.
    let key = if cfg!(target_endian = "little") {
        Key4 {
            a: addrs,
            b: u64::from(ports) | (u64::from(protocol) << 32) | 1 << 63,
        }
    } else {
        keys4(
            ne32(h, ETH_HEADER_LEN + 12),
            ne32(h, ETH_HEADER_LEN + 16),
            ne32(h, ETH_HEADER_LEN + IPV4_MIN_HEADER_LEN),
            protocol,
        )
    };
    Some((key, total))
}

/// Bytes 0..8 of an Ethernet header to `dst` from a source MAC starting with `src01`, as
/// one native-order word (bytes 8..12 are the source MAC's last four).
#[inline(always)]
fn mac_word(dst: [u8; 6], src01: [u8; 2]) -> u64 {
    u64::from_ne_bytes([
        dst[0], dst[1], dst[2], dst[3], dst[4], dst[5], src01[0], src01[1],
    ])
}

/// Whether the non-zero ones'-complement sum `sum` (kept in 64 bits, carries added back)
/// folds to 0xffff, without folding it: 2^16 ≡ 1 (mod 0xffff), so `sum` ≡ its 16-bit
/// fold, which is in 1..=0xffff, and the fold is 0xffff exactly when 0xffff divides
/// `sum`. Divisibility by an odd constant is one multiply by its inverse mod 2^64 and
/// one comparison (Granlund & Montgomery, "Division by invariant integers using
/// multiplication", 1994, §9).
#[inline(always)]
fn folds_to_ffff(sum: u64) -> bool {
    /// The inverse of 0xffff modulo 2^64.
    const INV: u64 = 0xfffe_fffe_fffe_ffff;
    const _: () = assert!(INV.wrapping_mul(0xffff) == 1);
    sum.wrapping_mul(INV) <= u64::MAX / 0xffff
}

/// DNAT of a frame [`fast4`] parsed (`h`: Ethernet + option-less IPv4 + the L4 header's
/// first 20 bytes) to the VIP's backend `be`, with the Ethernet addresses `eth0` (bytes
/// 0..8, [`mac_word`]) and `eth8` (bytes 8..12): [`ipv4_nat`] with every offset fixed and
/// the checksum deltas precomputed (the frame's destination is the VIP's address and
/// port: that is how its VIP was found).
#[inline(always)]
fn dnat4(h: &mut [u8; FAST4_MIN], protocol: u8, be: &Hot, eth0: u64, eth8: u32) {
    const IP: usize = ETH_HEADER_LEN;
    const L4: usize = IP + IPV4_MIN_HEADER_LEN;
    let hc = u16::from_ne_bytes([h[IP + 10], h[IP + 11]]);
    h[IP + 10..IP + 12].copy_from_slice(&csum_adjust16(hc, be.d_ip).to_ne_bytes());
    h[IP + 16..IP + 20].copy_from_slice(&be.raw_ip.to_ne_bytes());
    h[L4 + 2..L4 + 4].copy_from_slice(&be.raw_port.to_ne_bytes());
    if protocol == PROTO_UDP {
        let lc = u16::from_ne_bytes([h[L4 + 6], h[L4 + 7]]);
        // RFC 768: a UDP checksum of 0 means "none" and stays 0; a computed 0 is sent
        // as 0xffff.
        if lc != 0 {
            let n = csum_adjust16(lc, be.d_l4);
            let n = if n == 0 { 0xffff } else { n };
            h[L4 + 6..L4 + 8].copy_from_slice(&n.to_ne_bytes());
        }
    } else {
        let lc = u16::from_ne_bytes([h[L4 + 16], h[L4 + 17]]);
        h[L4 + 16..L4 + 18].copy_from_slice(&csum_adjust16(lc, be.d_l4).to_ne_bytes());
    }
    h[0..8].copy_from_slice(&eth0.to_ne_bytes());
    h[8..12].copy_from_slice(&eth8.to_ne_bytes());
}

/// RFC 1624 eqn. 3 with the delta already folded to 16 bits: `~(~HC + d)`, where the
/// sum of two 16-bit words carries at most once (add, then add the carry back).
#[inline(always)]
fn csum_adjust16(hc: u16, d: u16) -> u16 {
    let (s, carry) = (!hc).overflowing_add(d);
    !s.wrapping_add(u16::from(carry))
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

// SAFETY: the data is the Vec's heap buffer, which only `prepend`/`resize` change.
unsafe impl PacketBuf for VecPacket {
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
    fn resize(&mut self, len: usize) -> bool {
        self.buf.resize(self.start + len, 0);
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
            local_ips: vec![
                Ipv4Addr::new(10, 0, 0, 1).into(),
                "2001:db8::1".parse().expect("a valid address"),
            ],
            tunnel_src: Some(Ipv4Addr::new(10, 0, 0, 1)),
            tunnel_src6: Some("2001:db8::1".parse().expect("a valid address")),
            neighbors: vec![(Ipv4Addr::new(10, 1, 0, 1).into(), [2, 0, 0, 0, 1, 1])],
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
    let l4_before = l4_checksum_ok(frame).or_else(|| l4_checksum6_ok(frame));
    let mut w = f.worker.lock().unwrap_or_else(|p| p.into_inner());
    if w.process(&f.table, &ctx, &mut pkt, 1) == Verdict::Forward {
        let out = pkt.frame();
        let eth = EthernetFrame::new_checked(out).expect("forwarded frame has an Ethernet header");
        if eth.ethertype() == ETHERTYPE_IPV6 {
            let ip = Ipv6Packet::new_checked(eth.payload()).expect("forwarded IPv6 parses");
            if ip.next_header() != PROTO_IPV6 {
                assert_eq!(
                    l4_checksum6_ok(out),
                    l4_before,
                    "the IPv6 TCP/UDP/ICMPv6 checksum survives the rewrite"
                );
            }
        } else if eth.ethertype() == ETHERTYPE_IPV4 {
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

/// Whether `frame` is IPv6 TCP/UDP/ICMPv6 (no extension headers) whose checksum
/// verifies; `None` when it is not such a packet. (An answered Neighbor Solicitation or
/// echo request is a new message: its checksum must verify whenever the request's did.)
fn l4_checksum6_ok(frame: &[u8]) -> Option<bool> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != ETHERTYPE_IPV6 {
        return None;
    }
    let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
    let nh = ip.next_header();
    if nh != PROTO_TCP && nh != PROTO_UDP && nh != PROTO_ICMPV6 {
        return None;
    }
    if nh == PROTO_UDP && ip.payload().len() >= 8 && ip.payload()[6..8] == [0, 0] {
        return None;
    }
    let (src, dst) = (ip.src().octets(), ip.dst().octets());
    Some(l4_checksum6(&src, &dst, nh, ip.payload()) == 0)
}

const FUZZ_CONFIG: &str = r#"
listeners:
  - {name: web, address: "10.0.0.100:80", cluster: pool}
  - {name: dns, address: "10.0.0.100:53", protocol: udp, cluster: dnspool}
  - {name: dsr, address: "10.0.0.101:443", cluster: tunnel, forwarding: ipip}
  - {name: web6, address: "[2001:db8::100]:80", cluster: pool6}
  - {name: dsr6, address: "[2001:db8::101]:443", cluster: tunnel6, forwarding: ipip}
clusters:
  - {name: pool6, endpoints: ["[2001:db8:1::1]:8080", "[2001:db8:1::2]:8080"]}
  - {name: tunnel6, endpoints: ["[2001:db8:3::1]:443"]}
  - {name: pool, endpoints: ["10.1.0.1:8080", "10.1.0.2:8080"]}
  - {name: dnspool, endpoints: ["10.2.0.1:5353"]}
  - {name: tunnel, endpoints: ["10.3.0.1:443", "10.3.0.2:443"]}
"#;

mod ipv6;
#[cfg(test)]
mod tests;
