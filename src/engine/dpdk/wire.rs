//! Zero-copy packet views and validated representations for the packet load balancer:
//! Ethernet II, ARP (RFC 826), IPv4 (RFC 791), ICMP echo (RFC 792), IPv6 (RFC 8200), ICMPv6
//! echo (RFC 4443) and Neighbor Advertisement (RFC 4861), TCP/UDP ports.
//!
//! The contract (smoltcp's): a view is made with `new_checked`, which checks every length
//! its accessors rely on, so no accessor panics on any input afterwards. Views never
//! allocate and never copy; mutation happens in place through `AsMut<[u8]>`. Checksums are
//! verified with the full ones'-complement sum (RFC 1071) and updated incrementally with
//! RFC 1624 eqn. 3, so a rewrite never re-reads the payload.
//!
//! Not implemented: IPv4 options are carried but never interpreted; VLAN tags are not
//! parsed (a tagged frame is a non-IP ethertype and goes to the exception path); IPv6
//! extension headers are recognised, not walked.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Why a frame was not understood. Small and `Copy`: returned per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than the header it claims to carry.
    Truncated,
    /// A header field is out of range (IPv4 version/IHL/total length, ARP sizes).
    Malformed,
    /// The IPv4 header checksum does not verify.
    BadChecksum,
}

pub const ETH_HEADER_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const IPV4_MIN_HEADER_LEN: usize = 20;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline(always)]
fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

// === checksums ===

/// The ones'-complement sum of `data` folded to 16 bits (RFC 1071), not inverted.
pub fn ones_sum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    fold(sum)
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

// Native-order words. RFC 1071 §2(B): the ones'-complement sum is byte-order
// independent, so the hot path loads header words in the machine's order, sums, updates
// and stores them back without swapping a byte; only values compared with config (which
// compile stores in the same raw form) must agree on it.

/// The 4 bytes at `at` as the machine loads them (no byte swap).
#[inline(always)]
pub fn ne32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(w)
}

/// The 2 bytes at `at` as the machine loads them (no byte swap).
#[inline(always)]
pub fn ne16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

#[inline(always)]
pub fn put_ne32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

#[inline(always)]
pub fn put_ne16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_ne_bytes());
}

/// An IPv4 address in its raw (wire-order, natively loaded) form, as [`ne32`] reads it.
#[inline]
pub fn raw_ip4(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// A port in its raw form, as [`ne16`] reads it.
#[inline]
pub fn raw_port(p: u16) -> u16 {
    u16::from_ne_bytes(p.to_be_bytes())
}

/// Fold a ones'-complement sum kept in 64 bits to 16 bits, branch-free. Words of 32 bits
/// may be added whole: 2^16 ≡ 1 (mod 2^16 - 1), so a 32-bit word counts as its two
/// halves.
///
/// Each halving adds the value to itself rotated by half its width: the upper half of
/// that sum is `hi + lo` plus the carry out of the lower half, which is exactly the
/// end-around carry of `hi + lo` (and cannot overflow again). Two rotate-add-shift steps
/// instead of four mask-shift-add ones (the header check and both rewrite updates fold
/// on every packet).
#[inline(always)]
pub fn fold64(s: u64) -> u16 {
    let s = (s.rotate_right(32).wrapping_add(s) >> 32) as u32;
    (s.rotate_right(16).wrapping_add(s) >> 16) as u16
}

/// RFC 1624 eqn. 3 over native words: `HC' = ~(~HC + sum(~m) + sum(m'))`, where
/// `delta` already holds `sum(~m) + sum(m')` (32-bit words may be added whole).
#[inline(always)]
pub fn csum_adjust(hc: u16, delta: u64) -> u16 {
    !fold64(u64::from(!hc) + delta)
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word changes from `old` to `new`:
/// `HC' = ~(~HC + ~m + m')`.
#[inline(always)]
pub fn csum_update16(hc: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!hc) + u32::from(!old) + u32::from(new))
}

/// RFC 1624 for a 32-bit field (an IPv4 address): two 16-bit word updates.
#[inline(always)]
pub fn csum_update32(hc: u16, old: u32, new: u32) -> u16 {
    let hc = csum_update16(hc, (old >> 16) as u16, (new >> 16) as u16);
    csum_update16(hc, old as u16, new as u16)
}

// === Ethernet ===

/// An Ethernet II frame.
#[derive(Debug)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < ETH_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(EthernetFrame { buf })
    }
    /// For a buffer already checked by `new_checked` (same length or longer).
    #[inline]
    pub fn new_unchecked(buf: T) -> Self {
        EthernetFrame { buf }
    }
    #[inline]
    pub fn dst(&self) -> [u8; 6] {
        self.buf.as_ref()[0..6].try_into().unwrap_or_default()
    }
    #[inline]
    pub fn src(&self) -> [u8; 6] {
        self.buf.as_ref()[6..12].try_into().unwrap_or_default()
    }
    #[inline]
    pub fn ethertype(&self) -> u16 {
        be16(self.buf.as_ref(), 12)
    }
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[ETH_HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    #[inline(always)]
    pub fn set_dst(&mut self, mac: [u8; 6]) {
        self.buf.as_mut()[0..6].copy_from_slice(&mac);
    }
    #[inline(always)]
    pub fn set_src(&mut self, mac: [u8; 6]) {
        self.buf.as_mut()[6..12].copy_from_slice(&mac);
    }
    #[inline]
    pub fn set_ethertype(&mut self, t: u16) {
        put16(self.buf.as_mut(), 12, t)
    }
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut()[ETH_HEADER_LEN..]
    }
}

// === ARP (RFC 826), Ethernet + IPv4 only ===

pub const ARP_LEN: usize = 28;
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

/// An ARP packet for IPv4 over Ethernet (htype 1, ptype 0x0800, hlen 6, plen 4).
#[derive(Debug)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < ARP_LEN {
            return Err(WireError::Truncated);
        }
        if be16(b, 0) != 1 || be16(b, 2) != ETHERTYPE_IPV4 || b[4] != 6 || b[5] != 4 {
            return Err(WireError::Malformed);
        }
        Ok(ArpPacket { buf })
    }
    #[inline]
    pub fn operation(&self) -> u16 {
        be16(self.buf.as_ref(), 6)
    }
    #[inline]
    pub fn sender_mac(&self) -> [u8; 6] {
        self.buf.as_ref()[8..14].try_into().unwrap_or_default()
    }
    #[inline]
    pub fn sender_ip(&self) -> Ipv4Addr {
        ip_at(self.buf.as_ref(), 14)
    }
    #[inline]
    pub fn target_ip(&self) -> Ipv4Addr {
        ip_at(self.buf.as_ref(), 24)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Turn a request into the reply announcing `mac` for its target address, in place.
    #[inline]
    pub fn make_reply(&mut self, mac: [u8; 6]) {
        let (smac, sip, tip) = (self.sender_mac(), self.sender_ip(), self.target_ip());
        let b = self.buf.as_mut();
        put16(b, 6, ARP_REPLY);
        b[8..14].copy_from_slice(&mac);
        b[14..18].copy_from_slice(&tip.octets());
        b[18..24].copy_from_slice(&smac);
        b[24..28].copy_from_slice(&sip.octets());
    }
}

// === IPv4 (RFC 791) ===

/// An IPv4 packet whose header length, total length and version were checked.
#[derive(Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Checks version 4, IHL ≥ 5, IHL ≤ total length ≤ buffer. Trailing bytes past the
    /// total length (Ethernet padding) are allowed and ignored by `payload`.
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < IPV4_MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let ihl = usize::from(b[0] & 0x0f) * 4;
        if b[0] >> 4 != 4 || ihl < IPV4_MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        let total = usize::from(be16(b, 2));
        if total < ihl {
            return Err(WireError::Malformed);
        }
        if total > b.len() || ihl > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(Ipv4Packet { buf })
    }
    /// For a buffer already checked by `new_checked`; accessors may panic otherwise.
    #[inline]
    pub fn new_unchecked(buf: T) -> Self {
        Ipv4Packet { buf }
    }
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[0] & 0x0f) * 4
    }
    #[inline]
    pub fn total_len(&self) -> usize {
        usize::from(be16(self.buf.as_ref(), 2))
    }
    #[inline]
    pub fn tos(&self) -> u8 {
        self.buf.as_ref()[1]
    }
    /// More-fragments set or a non-zero offset (RFC 791 §3.1).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        be16(self.buf.as_ref(), 6) & 0x3fff != 0
    }
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buf.as_ref()[8]
    }
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buf.as_ref()[9]
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), 10)
    }
    #[inline]
    pub fn src(&self) -> Ipv4Addr {
        ip_at(self.buf.as_ref(), 12)
    }
    #[inline]
    pub fn dst(&self) -> Ipv4Addr {
        ip_at(self.buf.as_ref(), 16)
    }
    /// The header checksum verifies (RFC 1071), summed in native 32-bit words (the
    /// header length is a multiple of 4).
    #[inline(always)]
    pub fn verify_checksum(&self) -> bool {
        let b = self.buf.as_ref();
        let h = self.header_len();
        let mut s = u64::from(ne32(b, 0))
            + u64::from(ne32(b, 4))
            + u64::from(ne32(b, 8))
            + u64::from(ne32(b, 12))
            + u64::from(ne32(b, 16));
        let mut at = IPV4_MIN_HEADER_LEN;
        while at < h {
            s += u64::from(ne32(b, at));
            at += 4;
        }
        fold64(s) == 0xffff
    }
    /// The bytes after the header, up to the total length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Rewrite the source address, updating the header checksum incrementally.
    #[inline]
    pub fn set_src(&mut self, a: Ipv4Addr) {
        self.set_addr(12, a)
    }
    #[inline]
    pub fn set_dst(&mut self, a: Ipv4Addr) {
        self.set_addr(16, a)
    }
    #[inline(always)]
    fn set_addr(&mut self, at: usize, a: Ipv4Addr) {
        let old = u32::from(ip_at(self.buf.as_ref(), at));
        let hc = csum_update32(self.checksum(), old, u32::from(a));
        let b = self.buf.as_mut();
        b[at..at + 4].copy_from_slice(&a.octets());
        put16(b, 10, hc);
    }
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (h, t) = (self.header_len(), self.total_len());
        &mut self.buf.as_mut()[h..t]
    }
    /// Recompute the header checksum from scratch (for headers we build).
    #[inline]
    pub fn fill_checksum(&mut self) {
        let h = self.header_len();
        let b = self.buf.as_mut();
        put16(b, 10, 0);
        let c = !ones_sum(&b[..h]);
        put16(b, 10, c);
    }
}

/// Write a 20-byte IPv4 header (no options, DF set, checksum filled) at the start of `b`.
pub fn emit_ipv4_header(
    b: &mut [u8],
    tos: u8,
    total_len: u16,
    protocol: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) {
    b[0] = 0x45;
    b[1] = tos;
    put16(b, 2, total_len);
    put16(b, 4, 0);
    put16(b, 6, 0x4000);
    b[8] = 64;
    b[9] = protocol;
    b[12..16].copy_from_slice(&src.octets());
    b[16..20].copy_from_slice(&dst.octets());
    put16(b, 10, 0);
    let s: u64 = (0..20).step_by(4).map(|at| u64::from(ne32(b, at))).sum();
    put_ne16(b, 10, !fold64(s));
}

/// Which end of a flow a NAT rewrite changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// Rewrite the source or destination address and port of an IPv4 TCP/UDP packet in
/// place (`ip` starts at the IPv4 header, `hlen` is its length, the L4 header was checked
/// by [`L4Header::new_checked`]): one RFC 1624 update per checksum for address and port
/// together. `addr` and `port` are raw ([`raw_ip4`], [`raw_port`]). A UDP checksum of 0
/// ("none", RFC 768) stays 0; a computed 0 is sent as 0xffff.
#[inline(always)]
pub fn ipv4_nat(ip: &mut [u8], hlen: usize, protocol: u8, side: Side, addr: u32, port: u16) {
    let (a_at, p_at) = match side {
        Side::Src => (12, hlen),
        Side::Dst => (16, hlen + 2),
    };
    let old_a = ne32(ip, a_at);
    let old_p = ne16(ip, p_at);
    let da = u64::from(!old_a) + u64::from(addr);
    let hc = ne16(ip, 10);
    put_ne16(ip, 10, csum_adjust(hc, da));
    put_ne32(ip, a_at, addr);
    put_ne16(ip, p_at, port);
    let udp = protocol == PROTO_UDP;
    let c_at = hlen + if udp { 6 } else { 16 };
    let lc = ne16(ip, c_at);
    if udp && lc == 0 {
        return;
    }
    let mut n = csum_adjust(lc, da + u64::from(!old_p) + u64::from(port));
    if udp && n == 0 {
        n = 0xffff;
    }
    put_ne16(ip, c_at, n);
}

// === IPv6 (RFC 8200) ===

pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const IPV6_HEADER_LEN: usize = 40;
/// IPv6 encapsulated in IPv6 (RFC 2473).
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_IPV6_FRAGMENT: u8 = 44;
pub const PROTO_ICMPV6: u8 = 58;

/// An IPv6 address in its raw form (wire order, natively loaded), as [`ne128`] reads it.
#[inline]
pub fn raw_ip6(a: Ipv6Addr) -> u128 {
    u128::from_ne_bytes(a.octets())
}

/// The 16 bytes at `at` as the machine loads them.
#[inline(always)]
pub fn ne128(b: &[u8], at: usize) -> u128 {
    let mut w = [0u8; 16];
    w.copy_from_slice(&b[at..at + 16]);
    u128::from_ne_bytes(w)
}

/// Next-header values that are extension headers (RFC 8200 §4, IANA's list): the
/// balancer does not walk them.
pub fn is_extension_header(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

/// An IPv6 packet whose version and payload length were checked.
#[derive(Debug)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Checks the 40-byte header is there, version 6, and the payload length fits the
    /// buffer (trailing Ethernet padding is allowed and ignored).
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < IPV6_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        if IPV6_HEADER_LEN + usize::from(be16(b, 4)) > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(Ipv6Packet { buf })
    }
    #[inline]
    pub fn payload_len(&self) -> usize {
        usize::from(be16(self.buf.as_ref(), 4))
    }
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buf.as_ref()[6]
    }
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buf.as_ref()[7]
    }
    #[inline]
    pub fn src(&self) -> Ipv6Addr {
        ip6_at(self.buf.as_ref(), 8)
    }
    #[inline]
    pub fn dst(&self) -> Ipv6Addr {
        ip6_at(self.buf.as_ref(), 24)
    }
    /// The bytes after the fixed header, up to the payload length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[IPV6_HEADER_LEN..IPV6_HEADER_LEN + self.payload_len()]
    }
}

fn ip6_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(o)
}

/// Write a 40-byte IPv6 header at the start of `b` (`vtf` = version, traffic class and
/// flow label as one word, host order).
pub fn emit_ipv6_header(
    b: &mut [u8],
    vtf: u32,
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
) {
    b[0..4].copy_from_slice(&vtf.to_be_bytes());
    put16(b, 4, payload_len);
    b[6] = next_header;
    b[7] = hop_limit;
    b[8..24].copy_from_slice(src);
    b[24..40].copy_from_slice(dst);
}

/// As [`ipv4_nat`] for IPv6 (no header checksum; the TCP/UDP one covers the addresses
/// through the pseudo-header, RFC 8200 §8.1). `ip` starts at the IPv6 header, the L4
/// header follows it directly and was checked; `addr` is raw ([`raw_ip6`]). A UDP
/// checksum of 0 (invalid over IPv6) is left as it came.
#[inline(always)]
pub fn ipv6_nat(ip: &mut [u8], protocol: u8, side: Side, addr: u128, port: u16) {
    let (a_at, p_at) = match side {
        Side::Src => (8, IPV6_HEADER_LEN),
        Side::Dst => (24, IPV6_HEADER_LEN + 2),
    };
    let new = addr.to_ne_bytes();
    let mut delta = 0u64;
    for k in (0..16).step_by(4) {
        delta += u64::from(!ne32(ip, a_at + k)) + u64::from(ne32(&new, k));
    }
    let old_p = ne16(ip, p_at);
    ip[a_at..a_at + 16].copy_from_slice(&new);
    put_ne16(ip, p_at, port);
    let udp = protocol == PROTO_UDP;
    let c_at = IPV6_HEADER_LEN + if udp { 6 } else { 16 };
    let lc = ne16(ip, c_at);
    if udp && lc == 0 {
        return;
    }
    let mut n = csum_adjust(lc, delta + u64::from(!old_p) + u64::from(port));
    if udp && n == 0 {
        n = 0xffff;
    }
    put_ne16(ip, c_at, n);
}

/// The upper-layer checksum of `segment` under the IPv6 pseudo-header (RFC 8200 §8.1),
/// as for [`l4_checksum`]: over a segment with its checksum in place, 0 means valid.
pub fn l4_checksum6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 40];
    pseudo[0..16].copy_from_slice(src);
    pseudo[16..32].copy_from_slice(dst);
    pseudo[32..36].copy_from_slice(&(segment.len() as u32).to_be_bytes());
    pseudo[39] = next_header;
    let sum = u32::from(ones_sum(&pseudo)) + u32::from(ones_sum(segment));
    !fold(sum)
}

// === ICMPv6 (RFC 4443) and Neighbor Discovery (RFC 4861) ===

pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
/// A Neighbor Advertisement with one Target Link-Layer Address option: ICMPv6 bytes.
pub const ND_ADVERT_LEN: usize = 32;
/// All-nodes multicast (RFC 4291 §2.7.1), and its Ethernet address (RFC 2464 §7).
pub const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// Write the Neighbor Advertisement for `target` (RFC 4861 §4.4, §7.2.4) at the start of
/// `ip` (at least 40 + [`ND_ADVERT_LEN`] bytes): from `target` to `to`, hop limit 255,
/// Override set, Solicited when answering a node (not DAD), with our `mac` as the Target
/// Link-Layer Address option, checksum computed.
pub fn emit_neighbor_advert(
    ip: &mut [u8],
    target: &[u8; 16],
    to: &[u8; 16],
    solicited: bool,
    mac: [u8; 6],
) {
    emit_ipv6_header(
        ip,
        0x6000_0000,
        ND_ADVERT_LEN as u16,
        PROTO_ICMPV6,
        255,
        target,
        to,
    );
    let m = &mut ip[IPV6_HEADER_LEN..IPV6_HEADER_LEN + ND_ADVERT_LEN];
    m[0] = ND_NEIGHBOR_ADVERT;
    m[1] = 0;
    put16(m, 2, 0);
    m[4] = if solicited { 0x60 } else { 0x20 }; // S | O, or O alone
    m[5..8].fill(0);
    m[8..24].copy_from_slice(target);
    m[24] = 2; // Target Link-Layer Address
    m[25] = 1; // 8 bytes
    m[26..32].copy_from_slice(&mac);
    let c = l4_checksum6(target, to, PROTO_ICMPV6, m);
    put16(m, 2, c);
}

// === TCP / UDP ports ===

/// The ports and checksum of a TCP (RFC 9293 §3.1) or UDP (RFC 768) header: all the
/// load balancer reads or rewrites.
#[derive(Debug)]
pub struct L4Header<T: AsRef<[u8]>> {
    buf: T,
    csum_at: usize,
    /// UDP over IPv4 may carry checksum 0, meaning "none" (RFC 768): leave it 0.
    udp: bool,
}

impl<T: AsRef<[u8]>> L4Header<T> {
    #[inline]
    pub fn new_checked(buf: T, protocol: u8) -> Result<Self, WireError> {
        let (min, csum_at, udp) = match protocol {
            PROTO_TCP => (20, 16, false),
            PROTO_UDP => (8, 6, true),
            _ => return Err(WireError::Malformed),
        };
        if buf.as_ref().len() < min {
            return Err(WireError::Truncated);
        }
        Ok(L4Header { buf, csum_at, udp })
    }
    /// For a segment already checked by `new_checked` with the same protocol (TCP
    /// otherwise).
    #[inline]
    pub fn new_unchecked(buf: T, protocol: u8) -> Self {
        let udp = protocol == PROTO_UDP;
        L4Header {
            buf,
            csum_at: if udp { 6 } else { 16 },
            udp,
        }
    }
    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buf.as_ref(), 0)
    }
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), self.csum_at)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> L4Header<T> {
    /// Account in the L4 checksum for a pseudo-header address change (RFC 1624).
    #[inline(always)]
    pub fn update_for_addr(&mut self, old: Ipv4Addr, new: Ipv4Addr) {
        self.update(|hc| csum_update32(hc, u32::from(old), u32::from(new)))
    }
    #[inline(always)]
    pub fn set_src_port(&mut self, p: u16) {
        let old = self.src_port();
        put16(self.buf.as_mut(), 0, p);
        self.update(|hc| csum_update16(hc, old, p))
    }
    #[inline(always)]
    pub fn set_dst_port(&mut self, p: u16) {
        let old = self.dst_port();
        put16(self.buf.as_mut(), 2, p);
        self.update(|hc| csum_update16(hc, old, p))
    }
    #[inline(always)]
    fn update(&mut self, f: impl FnOnce(u16) -> u16) {
        let hc = self.checksum();
        if self.udp && hc == 0 {
            return;
        }
        let mut n = f(hc);
        if self.udp && n == 0 {
            n = 0xffff; // RFC 768: a computed 0 is sent as all ones.
        }
        let at = self.csum_at;
        put16(self.buf.as_mut(), at, n);
    }
}

/// The TCP/UDP checksum of `segment` under the IPv4 pseudo-header (RFC 9293 §3.1), as it
/// should be written into the header (with the checksum field zeroed first by the caller
/// when computing, or left in place when verifying: then a correct segment yields 0).
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = protocol;
    pseudo[10..12].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    let sum = u32::from(ones_sum(&pseudo)) + u32::from(ones_sum(segment));
    !fold(sum)
}

// === ICMP echo (RFC 792) ===

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// Turn an ICMP echo request (the IPv4 payload) into its reply in place: type 8 → 0 and
/// the checksum updated incrementally. Returns false when it is not a valid echo request.
pub fn icmp_echo_to_reply(icmp: &mut [u8]) -> bool {
    if icmp.len() < 8 || icmp[0] != ICMP_ECHO_REQUEST || icmp[1] != 0 {
        return false;
    }
    let old = be16(icmp, 0);
    icmp[0] = ICMP_ECHO_REPLY;
    let new = be16(icmp, 0);
    let hc = csum_update16(be16(icmp, 2), old, new);
    put16(icmp, 2, hc);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_udp() -> Vec<u8> {
        let mut p = vec![0u8; 20 + 8 + 4];
        emit_ipv4_header(
            &mut p,
            0,
            32,
            PROTO_UDP,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
        );
        put16(&mut p, 20, 1234);
        put16(&mut p, 22, 80);
        put16(&mut p, 24, 12);
        p[28..32].copy_from_slice(b"ping");
        let c = l4_checksum(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            PROTO_UDP,
            &p[20..],
        );
        put16(&mut p, 26, c);
        p
    }

    /// The rotate-add fold against the textbook loop (RFC 1071's "while (sum>>16)"), on
    /// edge values and a deterministic pseudo-random sweep: same ones'-complement value,
    /// same representation (0 only for a zero sum).
    #[test]
    fn fold64_matches_the_textbook_fold() {
        let slow = |mut s: u64| {
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            s as u16
        };
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut vals = vec![
            0,
            1,
            0xfffe,
            0xffff,
            0x1_0000,
            0x1_fffe,
            0xffff_ffff,
            u64::MAX / 2,
        ];
        vals.extend((0..64).map(|i| 1u64 << i));
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Sums the packet path makes stay below 2^40; cover those and full words.
            vals.push(x >> (x % 40));
        }
        for v in vals {
            assert_eq!(fold64(v), slow(v), "fold64({v:#x})");
        }
    }

    #[test]
    fn truncated_and_malformed_ipv4_are_rejected() {
        let p = ipv4_udp();
        for n in 0..20 {
            assert_eq!(
                Ipv4Packet::new_checked(&p[..n]).unwrap_err(),
                WireError::Truncated
            );
        }
        // Total length 32 but only 25 bytes present.
        assert_eq!(
            Ipv4Packet::new_checked(&p[..25]).unwrap_err(),
            WireError::Truncated
        );
        let mut bad = p.clone();
        bad[0] = 0x44; // IHL 4 (16 bytes) is below the minimum.
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::Malformed
        );
        bad[0] = 0x4f; // IHL 15 (60 bytes) is more than the total length.
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::Malformed
        );
        bad[0] = 0x65; // version 6
        assert_eq!(
            Ipv4Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::Malformed
        );
    }

    #[test]
    fn checksum_verification_and_incremental_rewrite_match_a_full_recompute() {
        let mut p = ipv4_udp();
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert!(ip.verify_checksum());
        {
            let mut ip = Ipv4Packet::new_checked(&mut p[..]).unwrap();
            let old = ip.dst();
            let new = Ipv4Addr::new(192, 168, 77, 200);
            ip.set_dst(new);
            let mut l4 = L4Header::new_checked(ip.payload_mut(), PROTO_UDP).unwrap();
            l4.update_for_addr(old, new);
            l4.set_dst_port(8080);
        }
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst(), Ipv4Addr::new(192, 168, 77, 200));
        assert_eq!(l4_checksum(ip.src(), ip.dst(), PROTO_UDP, ip.payload()), 0);
        let mut corrupt = p.clone();
        corrupt[8] ^= 1;
        assert!(!Ipv4Packet::new_checked(&corrupt[..])
            .unwrap()
            .verify_checksum());
    }

    #[test]
    fn fragments_are_recognised() {
        let mut p = ipv4_udp();
        assert!(!Ipv4Packet::new_checked(&p[..]).unwrap().is_fragment());
        p[6] = 0x20; // MF
        assert!(Ipv4Packet::new_checked(&p[..]).unwrap().is_fragment());
        p[6] = 0x00;
        p[7] = 0x10; // offset 16
        assert!(Ipv4Packet::new_checked(&p[..]).unwrap().is_fragment());
    }

    #[test]
    fn arp_and_l4_reject_short_or_foreign_headers() {
        assert_eq!(
            ArpPacket::new_checked(&[0u8; 27][..]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            ArpPacket::new_checked(&[0u8; 28][..]).unwrap_err(),
            WireError::Malformed
        );
        assert_eq!(
            L4Header::new_checked(&[0u8; 19][..], PROTO_TCP).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            L4Header::new_checked(&[0u8; 7][..], PROTO_UDP).unwrap_err(),
            WireError::Truncated
        );
        assert!(EthernetFrame::new_checked(&[0u8; 13][..]).is_err());
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        let mut seg = [0u8; 8];
        let mut l4 = L4Header::new_checked(&mut seg[..], PROTO_UDP).unwrap();
        l4.set_dst_port(99);
        assert_eq!(l4.checksum(), 0);
    }

    #[test]
    fn icmp_echo_reply_checksum_is_valid() {
        let mut m = [8u8, 0, 0, 0, 0, 1, 0, 2, b'x', b'y'];
        let c = !ones_sum(&m);
        put16(&mut m, 2, c);
        assert!(icmp_echo_to_reply(&mut m));
        assert_eq!(m[0], 0);
        assert_eq!(ones_sum(&m), 0xffff);
        assert!(!icmp_echo_to_reply(&mut m), "a reply is not a request");
    }
}
