//! The balancer's IPv6 path: VIP `[v6]:port` → cluster, DNAT (and the replies back) with
//! one incremental TCP/UDP checksum update per packet, IPv6-in-IPv6 encapsulation for
//! DSR VIPs (RFC 2473), Neighbor Advertisements for our addresses (RFC 4861, IPv6's ARP)
//! and ICMPv6 echo (RFC 4443). Extension headers and fragments go to the exception path,
//! counted. Like the IPv4 path it never allocates, locks or panics on any frame; frames
//! take it one at a time (the burst's classify stage is IPv4-only).

use std::net::Ipv6Addr;

use super::*;

/// What the balancer reads from an IPv6 TCP/UDP packet, raw (as [`Flow4`]).
#[derive(Clone, Copy)]
struct Flow6 {
    src: u128,
    dst: u128,
    ports: u32,
    sport: u16,
    dport: u16,
    protocol: u8,
    /// Payload length (the L4 segment: no extension headers here).
    plen: u16,
}

impl LbWorker {
    /// An IPv6 frame (Ethernet header checked).
    pub(super) fn ipv6(
        &mut self,
        t: &LbTable,
        port: &PortCtx,
        pkt: &mut impl PacketBuf,
        now_ms: u64,
    ) -> Verdict {
        let (w, st) = (self.worker, port.stats);
        let d = pkt.data();
        let ip = match Ipv6Packet::new_checked(&d[ETH_HEADER_LEN..]) {
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
        let (nh, plen) = (ip.next_header(), ip.payload_len());
        match nh {
            PROTO_TCP | PROTO_UDP => {}
            PROTO_ICMPV6 => return self.icmp6(t, port, pkt),
            PROTO_IPV6_FRAGMENT => {
                st.inc(w, C::ExceptionFragment);
                return Verdict::Exception;
            }
            n if is_extension_header(n) => {
                st.inc(w, C::ExceptionIpv6ExtHeader);
                return Verdict::Exception;
            }
            _ => {
                st.inc(w, C::ExceptionOther);
                return Verdict::Exception;
            }
        }
        let l4_at = ETH_HEADER_LEN + IPV6_HEADER_LEN;
        if L4Header::new_checked(&d[l4_at..l4_at + plen], nh).is_err() {
            st.inc(w, C::DropTruncated);
            return Verdict::Drop;
        }
        let f = Flow6 {
            src: ne128(d, ETH_HEADER_LEN + 8),
            dst: ne128(d, ETH_HEADER_LEN + 24),
            ports: ne32(d, l4_at),
            sport: ne16(d, l4_at),
            dport: ne16(d, l4_at + 2),
            protocol: nh,
            plen: plen as u16,
        };
        if let Some(v) = t.by_vip6.get(key6(f.dst, f.dport, nh)) {
            return self.forward6(t, port, pkt, f, v, now_ms);
        }
        if t.vip_ips6.get(addr_key6(f.dst)).is_some() {
            st.inc(w, C::DropUnknownVip);
            return Verdict::Drop;
        }
        if let Some((v, c, b)) = t.replies6.get(key6(f.src, f.sport, nh)) {
            return self.reply6(t, port, pkt.data(), f, v, c, b);
        }
        st.inc(w, C::ExceptionOther);
        Verdict::Exception
    }

    fn forward6(
        &mut self,
        t: &LbTable,
        port: &PortCtx,
        pkt: &mut impl PacketBuf,
        f: Flow6,
        v: u32,
        now: u64,
    ) -> Verdict {
        let w = self.worker;
        let vip = &t.vips[v as usize];
        let key = Key6 {
            src: f.src,
            dst: f.dst,
            b: u64::from(f.ports) | (u64::from(f.protocol) << 32) | 1 << 63,
        };
        let hash = hash6(key);
        let now = now as u32;
        let idle = vip.idle_timeout_ms.min(u64::from(u32::MAX / 2)) as u32;
        let total = IPV6_HEADER_LEN + usize::from(f.plen);
        let flows: fn(&mut LbWorker) -> &mut FlowTable<_> = |lb| &mut lb.flows6;
        let Some((be, mac)) = self.place(flows, t, port, v, key, hash, now, idle, total as u64)
        else {
            return Verdict::Drop;
        };
        match vip.forwarding {
            Forwarding::Dnat => {
                let data = pkt.data();
                ipv6_nat(
                    &mut data[ETH_HEADER_LEN..],
                    f.protocol,
                    Side::Dst,
                    be.raw_ip6,
                    be.raw_port,
                );
                let mut eth = EthernetFrame::new_unchecked(data);
                eth.set_dst(mac);
                eth.set_src(port.mac);
            }
            Forwarding::Ipip => {
                // RFC 2473 §5: the outer header's own traffic class; the flow label
                // from the inner flow's hash keeps one flow on one ECMP path (RFC 6438).
                let inner = u32::from_be_bytes([
                    pkt.data()[ETH_HEADER_LEN],
                    pkt.data()[ETH_HEADER_LEN + 1],
                    pkt.data()[ETH_HEADER_LEN + 2],
                    pkt.data()[ETH_HEADER_LEN + 3],
                ]);
                let vtf = 0x6000_0000 | (inner & 0x0ff0_0000) | (hash as u32 & 0x000f_ffff);
                // IPv6's payload length excludes the outer header: `total` must fit.
                let Some(data) =
                    encapsulate(pkt, IPV6_HEADER_LEN, total, mac, port, w, ETHERTYPE_IPV6)
                else {
                    return Verdict::Drop;
                };
                emit_ipv6_header(
                    &mut data[ETH_HEADER_LEN..],
                    vtf,
                    total as u16,
                    PROTO_IPV6,
                    64,
                    &t.tunnel_src6.octets(),
                    &be.raw_ip6.to_ne_bytes(),
                );
            }
        }
        Verdict::Forward
    }

    #[allow(clippy::too_many_arguments)]
    fn reply6(
        &mut self,
        t: &LbTable,
        port: &PortCtx,
        data: &mut [u8],
        f: Flow6,
        v: u32,
        c: u32,
        b: u16,
    ) -> Verdict {
        let w = self.worker;
        let vip = &t.vips[v as usize];
        let Some(mac) = t.next_hop6(Ipv6Addr::from(f.dst.to_ne_bytes())) else {
            port.stats.inc(w, C::DropNoNeighbor);
            return Verdict::Drop;
        };
        ipv6_nat(
            &mut data[ETH_HEADER_LEN..],
            f.protocol,
            Side::Src,
            vip.raw_ip6,
            vip.raw_port,
        );
        let mut eth = EthernetFrame::new_unchecked(data);
        eth.set_dst(mac);
        eth.set_src(port.mac);
        let bytes = (IPV6_HEADER_LEN + usize::from(f.plen)) as u64;
        vip.stats.inc(w, P::ReplyPackets);
        vip.stats.add(w, P::ReplyBytes, bytes);
        let backend = &t.clusters[c as usize].backends[b as usize];
        backend.stats.inc(w, P::ReplyPackets);
        backend.stats.add(w, P::ReplyBytes, bytes);
        Verdict::Forward
    }

    /// ICMPv6: Neighbor Solicitations for our addresses are answered (RFC 4861 §7.2.4),
    /// echo requests to them too; every other message goes to the kernel.
    fn icmp6(&mut self, t: &LbTable, port: &PortCtx, pkt: &mut impl PacketBuf) -> Verdict {
        let (w, st) = (self.worker, port.stats);
        let d = pkt.data();
        let at = ETH_HEADER_LEN + IPV6_HEADER_LEN;
        // new_checked verified the payload length fits the frame.
        let plen = usize::from(u16::from_be_bytes([
            d[ETH_HEADER_LEN + 4],
            d[ETH_HEADER_LEN + 5],
        ]));
        if plen < 4 {
            st.inc(w, C::DropTruncated);
            return Verdict::Drop;
        }
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&d[ETH_HEADER_LEN + 8..ETH_HEADER_LEN + 24]);
        dst.copy_from_slice(&d[ETH_HEADER_LEN + 24..ETH_HEADER_LEN + 40]);
        let (kind, code, hop) = (d[at], d[at + 1], d[ETH_HEADER_LEN + 7]);
        match kind {
            ND_NEIGHBOR_SOLICIT => {
                if plen < 24 {
                    st.inc(w, C::DropTruncated);
                    return Verdict::Drop;
                }
                let mut target = [0u8; 16];
                target.copy_from_slice(&d[at + 8..at + 24]);
                if t.own_ips6
                    .get(addr_key6(u128::from_ne_bytes(target)))
                    .is_none()
                {
                    st.inc(w, C::ExceptionOther);
                    return Verdict::Exception;
                }
                // RFC 4861 §7.1.1: hop limit 255 (not forwarded by a router), code 0.
                if hop != 255 || code != 0 {
                    st.inc(w, C::DropBadIpHeader);
                    return Verdict::Drop;
                }
                if l4_checksum6(&src, &dst, PROTO_ICMPV6, &d[at..at + plen]) != 0 {
                    st.inc(w, C::DropBadChecksum);
                    return Verdict::Drop;
                }
                // From the unspecified address it is Duplicate Address Detection: the
                // answer goes to all nodes, unsolicited (§7.2.4).
                let dad = src == [0u8; 16];
                let (to, to_mac) = if dad {
                    (ALL_NODES, ALL_NODES_MAC)
                } else {
                    (src, EthernetFrame::new_unchecked(&*d).src())
                };
                if !pkt.resize(ETH_HEADER_LEN + IPV6_HEADER_LEN + ND_ADVERT_LEN) {
                    st.inc(w, C::DropNoHeadroom);
                    return Verdict::Drop;
                }
                let d = pkt.data();
                emit_neighbor_advert(&mut d[ETH_HEADER_LEN..], &target, &to, !dad, port.mac);
                let mut eth = EthernetFrame::new_unchecked(d);
                eth.set_dst(to_mac);
                eth.set_src(port.mac);
                st.inc(w, C::NdAdvertisements);
                Verdict::Forward
            }
            ICMPV6_ECHO_REQUEST => {
                if t.own_ips6
                    .get(addr_key6(u128::from_ne_bytes(dst)))
                    .is_none()
                    || code != 0
                {
                    st.inc(w, C::ExceptionOther);
                    return Verdict::Exception;
                }
                if l4_checksum6(&src, &dst, PROTO_ICMPV6, &d[at..at + plen]) != 0 {
                    st.inc(w, C::DropBadChecksum);
                    return Verdict::Drop;
                }
                // Type 128 → 129: one word of the message changes; swapping the
                // addresses leaves the pseudo-header sum as it was.
                let old = ne16(d, at);
                d[at] = ICMPV6_ECHO_REPLY;
                let new = ne16(d, at);
                let hc = ne16(d, at + 2);
                put_ne16(d, at + 2, csum_adjust(hc, u64::from(!old) + u64::from(new)));
                d[ETH_HEADER_LEN + 7] = 64;
                d[ETH_HEADER_LEN + 8..ETH_HEADER_LEN + 24].copy_from_slice(&dst);
                d[ETH_HEADER_LEN + 24..ETH_HEADER_LEN + 40].copy_from_slice(&src);
                let mut eth = EthernetFrame::new_unchecked(d);
                let peer = eth.src();
                eth.set_dst(peer);
                eth.set_src(port.mac);
                st.inc(w, C::IcmpEchoReplies);
                Verdict::Forward
            }
            _ => {
                st.inc(w, C::ExceptionOther);
                Verdict::Exception
            }
        }
    }
}
