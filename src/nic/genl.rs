//! The kernel's ethtool generic netlink family ("ethtool", Linux ≥ 5.6): features, channels,
//! rings, coalescing, link modes and link state, read and written as netlink attributes.
//!
//! Framing (nlmsghdr, genlmsghdr, attribute TLVs, family resolution) comes from the
//! rust-netlink crates; this module owns only the ethtool message vocabulary. It is a
//! blocking, one-request-at-a-time client for the control plane; it never runs on a worker.
//! Attribute numbers are the kernel's uapi (`include/uapi/linux/ethtool_netlink.h`); a reply
//! attribute this module does not know is ignored, never an error (newer kernels add them).

use std::collections::BTreeMap;

use netlink_packet_core::{
    DecodeError, Emitable, NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator,
    ParseableParametrized, NLA_F_NESTED, NLM_F_ACK, NLM_F_CAPPED, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use super::NicError;

// === uapi numbers (ethtool_netlink.h) ===

pub(crate) mod msg {
    pub const STRSET_GET: u8 = 1;
    pub const LINKMODES_GET: u8 = 4;
    pub const LINKSTATE_GET: u8 = 6;
    pub const FEATURES_GET: u8 = 11;
    pub const FEATURES_SET: u8 = 12;
    pub const RINGS_GET: u8 = 15;
    pub const RINGS_SET: u8 = 16;
    pub const CHANNELS_GET: u8 = 17;
    pub const CHANNELS_SET: u8 = 18;
    pub const COALESCE_GET: u8 = 19;
    pub const COALESCE_SET: u8 = 20;
}

const HEADER_DEV_NAME: u16 = 2;
/// Every ethtool request's attribute 1 is its header nest.
const A_HEADER: u16 = 1;

const BITSET_NOMASK: u16 = 1;
const BITSET_BITS: u16 = 3;
const BITS_BIT: u16 = 1;
const BIT_INDEX: u16 = 1;
const BIT_NAME: u16 = 2;
const BIT_VALUE: u16 = 3;

const STRSET_STRINGSETS: u16 = 2;
const STRINGSETS_STRINGSET: u16 = 1;
const STRINGSET_ID: u16 = 1;
const STRINGSET_STRINGS: u16 = 3;
const STRINGS_STRING: u16 = 1;
const STRING_INDEX: u16 = 1;
const STRING_VALUE: u16 = 2;
/// `ETH_SS_FEATURES` (ethtool.h `enum ethtool_stringset`).
const ETH_SS_FEATURES: u32 = 4;

const FEATURES_HW: u16 = 2;
const FEATURES_WANTED: u16 = 3;
const FEATURES_ACTIVE: u16 = 4;
const FEATURES_NOCHANGE: u16 = 5;

const LINKMODES_AUTONEG: u16 = 2;
const LINKMODES_SPEED: u16 = 5;
const LINKMODES_DUPLEX: u16 = 6;
const LINKSTATE_LINK: u16 = 2;

/// Channel attributes: the four maxima then the four counts (rx, tx, other, combined).
pub const CHANNEL_NAMES: [&str; 4] = ["rx", "tx", "other", "combined"];
const CHANNELS_MAX0: u16 = 2;
const CHANNELS_COUNT0: u16 = 6;

/// Ring attributes used here: (max attr, current attr) for rx, rx-mini, rx-jumbo, tx.
pub const RING_NAMES: [&str; 4] = ["rx", "rx-mini", "rx-jumbo", "tx"];
const RINGS_MAX0: u16 = 2;
const RINGS_CUR0: u16 = 6;

/// Coalescing parameters as `ethtool -C` names them, with their attribute number and
/// whether the attribute is a u8 boolean (adaptive/cqe modes) rather than a u32.
pub const COALESCE: &[(&str, u16, bool)] = &[
    ("rx-usecs", 2, false),
    ("rx-frames", 3, false),
    ("rx-usecs-irq", 4, false),
    ("rx-frames-irq", 5, false),
    ("tx-usecs", 6, false),
    ("tx-frames", 7, false),
    ("tx-usecs-irq", 8, false),
    ("tx-frames-irq", 9, false),
    ("stats-block-usecs", 10, false),
    ("adaptive-rx", 11, true),
    ("adaptive-tx", 12, true),
    ("pkt-rate-low", 13, false),
    ("rx-usecs-low", 14, false),
    ("rx-frames-low", 15, false),
    ("tx-usecs-low", 16, false),
    ("tx-frames-low", 17, false),
    ("pkt-rate-high", 18, false),
    ("rx-usecs-high", 19, false),
    ("rx-frames-high", 20, false),
    ("tx-usecs-high", 21, false),
    ("tx-frames-high", 22, false),
    ("sample-interval", 23, false),
    ("cqe-mode-tx", 24, true),
    ("cqe-mode-rx", 25, true),
];

// === request attributes ===

/// An attribute to send. Nests carry `NLA_F_NESTED`, as the kernel's strict policy wants.
#[derive(Debug, Clone)]
pub enum Attr {
    U8(u16, u8),
    U32(u16, u32),
    Str(u16, String),
    Flag(u16),
    Nest(u16, Vec<Attr>),
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::U8(..) => 1,
            Attr::U32(..) => 4,
            Attr::Str(_, s) => s.len() + 1,
            Attr::Flag(_) => 0,
            Attr::Nest(_, v) => v.as_slice().buffer_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Attr::U8(k, _) | Attr::U32(k, _) | Attr::Str(k, _) | Attr::Flag(k) => *k,
            Attr::Nest(k, _) => *k | NLA_F_NESTED,
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            Attr::U8(_, v) => buf[0] = *v,
            Attr::U32(_, v) => buf[..4].copy_from_slice(&v.to_ne_bytes()),
            Attr::Str(_, s) => {
                buf[..s.len()].copy_from_slice(s.as_bytes());
                buf[s.len()] = 0;
            }
            Attr::Flag(_) => {}
            Attr::Nest(_, v) => v.as_slice().emit(buf),
        }
    }
}

fn header(dev: &str) -> Attr {
    Attr::Nest(A_HEADER, vec![Attr::Str(HEADER_DEV_NAME, dev.to_string())])
}

/// One ethtool generic netlink message: a command and its top-level attributes. Replies
/// keep their attribute bytes raw; `Attrs` reads them.
#[derive(Debug, Clone)]
pub struct EthtoolMsg {
    cmd: u8,
    attrs: Vec<Attr>,
    raw: Vec<u8>,
}

impl GenlFamily for EthtoolMsg {
    fn family_name() -> &'static str {
        "ethtool"
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for EthtoolMsg {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for EthtoolMsg {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(EthtoolMsg {
            cmd: header.cmd,
            attrs: Vec::new(),
            raw: buf.to_vec(),
        })
    }
}

// === reply attributes ===

/// Attributes of one nest, by kind (type bits only; the last occurrence wins except
/// through `all`). Malformed attribute lists end the walk early rather than panic.
pub struct Attrs<'a> {
    list: Vec<(u16, &'a [u8])>,
}

impl<'a> Attrs<'a> {
    pub fn parse(buf: &'a [u8]) -> Self {
        let mut list = Vec::new();
        for nla in NlasIterator::new(buf) {
            let Ok(nla): Result<NlaBuffer<&'a [u8]>, _> = nla else {
                break;
            };
            let kind = nla.kind() & netlink_packet_core::NLA_TYPE_MASK;
            let len = nla.value_length();
            let inner: &'a [u8] = nla.into_inner();
            // The value starts after the 4-byte attribute header.
            let Some(value) = inner.get(4..4 + len) else {
                break;
            };
            list.push((kind, value));
        }
        Attrs { list }
    }
    pub fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.list
            .iter()
            .rev()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| *v)
    }
    pub fn all(&self, kind: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.list
            .iter()
            .filter(move |(k, _)| *k == kind)
            .map(|(_, v)| *v)
    }
    pub fn has(&self, kind: u16) -> bool {
        self.get(kind).is_some()
    }
    pub fn u32(&self, kind: u16) -> Option<u32> {
        self.get(kind)
            .and_then(|v| v.get(..4))
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u8(&self, kind: u16) -> Option<u8> {
        self.get(kind).and_then(|v| v.first().copied())
    }
    pub fn str(&self, kind: u16) -> Option<String> {
        self.get(kind).map(|v| {
            let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
            String::from_utf8_lossy(&v[..end]).into_owned()
        })
    }
    pub fn nest(&self, kind: u16) -> Option<Attrs<'a>> {
        self.get(kind).map(Attrs::parse)
    }
}

/// The bit indices a verbose, no-mask bitset lists (those that are set).
fn bitset_indices(set: &Attrs<'_>) -> Vec<u32> {
    let Some(bits) = set.nest(BITSET_BITS) else {
        return Vec::new();
    };
    let nomask = set.has(BITSET_NOMASK);
    bits.all(BITS_BIT)
        .map(Attrs::parse)
        .filter(|b| nomask || b.has(BIT_VALUE))
        .filter_map(|b| b.u32(BIT_INDEX))
        .collect()
}

// === the client ===

/// A feature as `ethtool -k` shows it: on/off now, what was asked for, and whether the
/// driver lets it change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Feature {
    pub name: String,
    pub active: bool,
    pub wanted: bool,
    /// The driver can change it (in `hw_features` and not in the never-change set).
    pub changeable: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Channels {
    /// rx, tx, other, combined (absent when the driver does not report it).
    pub max: [Option<u32>; 4],
    pub count: [Option<u32>; 4],
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rings {
    /// rx, rx-mini, rx-jumbo, tx.
    pub max: [Option<u32>; 4],
    pub count: [Option<u32>; 4],
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkInfo {
    pub link_up: Option<bool>,
    pub speed_mbps: Option<u32>,
    pub duplex: Option<&'static str>,
    pub autoneg: Option<bool>,
}

pub struct Ethtool {
    sock: Socket,
    family: u16,
    seq: u32,
}

impl Ethtool {
    /// Open a generic netlink socket in the caller's network namespace and resolve the
    /// "ethtool" family.
    pub fn open() -> Result<Self, NicError> {
        let io = |e: std::io::Error| NicError::Io(format!("netlink socket: {e}"));
        let mut sock = Socket::new(NETLINK_GENERIC).map_err(io)?;
        sock.bind_auto().map_err(io)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        // Extended acks carry the kernel's own sentence about what was wrong.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        let mut me = Ethtool {
            sock,
            family: 0,
            seq: 0,
        };
        me.family = me.resolve_family()?;
        Ok(me)
    }

    fn resolve_family(&mut self) -> Result<u16, NicError> {
        let mut g = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName("ethtool".into())],
        });
        g.finalize();
        let mut nl = NetlinkMessage::from(g);
        nl.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        self.seq += 1;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut tx = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut tx);
        self.send(&tx)?;
        let mut id = None;
        self.recv_until_done::<GenlCtrl>(|m| {
            for a in &m.payload.nlas {
                if let GenlCtrlAttrs::FamilyId(i) = a {
                    id = Some(*i);
                }
            }
        })
        .map_err(|e| match e {
            NicError::Kernel { errno, .. } if errno == libc::ENOENT => NicError::Unsupported(
                "this kernel has no ethtool netlink family (needs Linux ≥ 5.6)".into(),
            ),
            e => e,
        })?;
        id.ok_or_else(|| {
            NicError::Io("ethtool family id missing from the controller's reply".into())
        })
    }

    fn send(&self, buf: &[u8]) -> Result<(), NicError> {
        self.sock
            .send(buf, 0)
            .map_err(|e| NicError::Io(format!("netlink send: {e}")))?;
        Ok(())
    }

    /// Read replies until the ACK (or DONE) of the last request, handing each data message
    /// to `each`. An error reply becomes `NicError::Kernel` with the kernel's message.
    fn recv_until_done<F>(&mut self, mut each: impl FnMut(GenlMessage<F>)) -> Result<(), NicError>
    where
        F: ParseableParametrized<[u8], GenlHeader> + std::fmt::Debug,
        GenlMessage<F>: netlink_packet_core::NetlinkDeserializable,
    {
        let mut buf = vec![0u8; 1 << 16];
        // Bounded: a request is answered in a few datagrams; 10_000 is a corrupt stream.
        for _ in 0..10_000 {
            let n = self
                .sock
                .recv(&mut &mut buf[..], 0)
                .map_err(|e| NicError::Io(format!("netlink recv: {e}")))?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<GenlMessage<F>>::deserialize(&buf[off..n])
                    .map_err(|e| NicError::Io(format!("netlink reply: {e}")))?;
                let len = msg.header.length as usize;
                let flags = msg.header.flags;
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => each(m),
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        let Some(code) = e.code else { return Ok(()) };
                        return Err(NicError::Kernel {
                            errno: -code.get(),
                            detail: extack_message(&e.header, flags & NLM_F_CAPPED != 0),
                        });
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
        Err(NicError::Io("netlink: no end to the kernel's reply".into()))
    }

    /// Send one ethtool request and collect the attribute bytes of each reply.
    fn request(&mut self, cmd: u8, attrs: Vec<Attr>) -> Result<Vec<Vec<u8>>, NicError> {
        let mut g = GenlMessage::from_payload(EthtoolMsg {
            cmd,
            attrs,
            raw: Vec::new(),
        });
        g.set_resolved_family_id(self.family);
        g.finalize();
        let mut nl = NetlinkMessage::from(g);
        nl.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        self.seq += 1;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut tx = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut tx);
        self.send(&tx)?;
        let mut out = Vec::new();
        self.recv_until_done::<EthtoolMsg>(|m| out.push(m.payload.raw))?;
        Ok(out)
    }

    fn get_one(&mut self, cmd: u8, dev: &str) -> Result<Vec<u8>, NicError> {
        let mut r = self.request(cmd, vec![header(dev)])?;
        r.pop()
            .ok_or_else(|| NicError::Io(format!("{dev}: empty ethtool reply to command {cmd}")))
    }

    /// The device's feature names (index order), as the `ETH_SS_FEATURES` string set.
    fn feature_names(&mut self, dev: &str) -> Result<BTreeMap<u32, String>, NicError> {
        let req = vec![
            header(dev),
            Attr::Nest(
                STRSET_STRINGSETS,
                vec![Attr::Nest(
                    STRINGSETS_STRINGSET,
                    vec![Attr::U32(STRINGSET_ID, ETH_SS_FEATURES)],
                )],
            ),
        ];
        let raw = self.request(msg::STRSET_GET, req)?;
        let mut names = BTreeMap::new();
        for r in &raw {
            let top = Attrs::parse(r);
            let Some(sets) = top.nest(STRSET_STRINGSETS) else {
                continue;
            };
            for set in sets.all(STRINGSETS_STRINGSET).map(Attrs::parse) {
                if set.u32(STRINGSET_ID) != Some(ETH_SS_FEATURES) {
                    continue;
                }
                let Some(strings) = set.nest(STRINGSET_STRINGS) else {
                    continue;
                };
                for s in strings.all(STRINGS_STRING).map(Attrs::parse) {
                    if let (Some(i), Some(v)) = (s.u32(STRING_INDEX), s.str(STRING_VALUE)) {
                        names.insert(i, v);
                    }
                }
            }
        }
        Ok(names)
    }

    pub fn features(&mut self, dev: &str) -> Result<Vec<Feature>, NicError> {
        let names = self.feature_names(dev)?;
        let raw = self.get_one(msg::FEATURES_GET, dev)?;
        let top = Attrs::parse(&raw);
        let set_of = |kind| -> Vec<u32> {
            top.nest(kind)
                .map(|s| bitset_indices(&s))
                .unwrap_or_default()
        };
        let (hw, wanted, active, nochange) = (
            set_of(FEATURES_HW),
            set_of(FEATURES_WANTED),
            set_of(FEATURES_ACTIVE),
            set_of(FEATURES_NOCHANGE),
        );
        Ok(names
            .into_iter()
            .filter(|(_, n)| !n.is_empty())
            .map(|(i, name)| Feature {
                name,
                active: active.contains(&i),
                wanted: wanted.contains(&i),
                changeable: hw.contains(&i) && !nochange.contains(&i),
            })
            .collect())
    }

    /// Ask for each named feature on or off. Only the named bits change.
    pub fn set_features(&mut self, dev: &str, bits: &[(String, bool)]) -> Result<(), NicError> {
        let list = bits
            .iter()
            .map(|(name, on)| {
                let mut b = vec![Attr::Str(BIT_NAME, name.clone())];
                if *on {
                    b.push(Attr::Flag(BIT_VALUE));
                }
                Attr::Nest(BITS_BIT, b)
            })
            .collect();
        let wanted = Attr::Nest(FEATURES_WANTED, vec![Attr::Nest(BITSET_BITS, list)]);
        self.request(msg::FEATURES_SET, vec![header(dev), wanted])?;
        Ok(())
    }

    pub fn channels(&mut self, dev: &str) -> Result<Channels, NicError> {
        let raw = self.get_one(msg::CHANNELS_GET, dev)?;
        let a = Attrs::parse(&raw);
        let mut c = Channels::default();
        for i in 0..4u16 {
            c.max[i as usize] = a.u32(CHANNELS_MAX0 + i);
            c.count[i as usize] = a.u32(CHANNELS_COUNT0 + i);
        }
        Ok(c)
    }

    /// Set channel counts; `None` leaves a kind as it is.
    pub fn set_channels(&mut self, dev: &str, count: [Option<u32>; 4]) -> Result<(), NicError> {
        let mut attrs = vec![header(dev)];
        for (i, c) in count.iter().enumerate() {
            if let Some(c) = c {
                attrs.push(Attr::U32(CHANNELS_COUNT0 + i as u16, *c));
            }
        }
        self.request(msg::CHANNELS_SET, attrs)?;
        Ok(())
    }

    pub fn rings(&mut self, dev: &str) -> Result<Rings, NicError> {
        let raw = self.get_one(msg::RINGS_GET, dev)?;
        let a = Attrs::parse(&raw);
        let mut r = Rings::default();
        for i in 0..4u16 {
            r.max[i as usize] = a.u32(RINGS_MAX0 + i);
            r.count[i as usize] = a.u32(RINGS_CUR0 + i);
        }
        Ok(r)
    }

    pub fn set_rings(&mut self, dev: &str, count: [Option<u32>; 4]) -> Result<(), NicError> {
        let mut attrs = vec![header(dev)];
        for (i, c) in count.iter().enumerate() {
            if let Some(c) = c {
                attrs.push(Attr::U32(RINGS_CUR0 + i as u16, *c));
            }
        }
        self.request(msg::RINGS_SET, attrs)?;
        Ok(())
    }

    /// The coalescing parameters the driver reports, by `ethtool -C` name.
    pub fn coalesce(&mut self, dev: &str) -> Result<BTreeMap<String, u32>, NicError> {
        let raw = self.get_one(msg::COALESCE_GET, dev)?;
        let a = Attrs::parse(&raw);
        let mut out = BTreeMap::new();
        for (name, kind, is_u8) in COALESCE {
            let v = if *is_u8 {
                a.u8(*kind).map(u32::from)
            } else {
                a.u32(*kind)
            };
            if let Some(v) = v {
                out.insert(name.to_string(), v);
            }
        }
        Ok(out)
    }

    pub fn set_coalesce(&mut self, dev: &str, values: &[(String, u32)]) -> Result<(), NicError> {
        let mut attrs = vec![header(dev)];
        for (name, v) in values {
            let (_, kind, is_u8) =
                COALESCE.iter().find(|(n, _, _)| n == name).ok_or_else(|| {
                    NicError::Invalid(format!("unknown coalescing parameter `{name}`"))
                })?;
            attrs.push(if *is_u8 {
                Attr::U8(*kind, u8::from(*v != 0))
            } else {
                Attr::U32(*kind, *v)
            });
        }
        self.request(msg::COALESCE_SET, attrs)?;
        Ok(())
    }

    pub fn link(&mut self, dev: &str) -> Result<LinkInfo, NicError> {
        let mut l = LinkInfo::default();
        if let Ok(raw) = self.get_one(msg::LINKSTATE_GET, dev) {
            l.link_up = Attrs::parse(&raw).u8(LINKSTATE_LINK).map(|v| v != 0);
        }
        if let Ok(raw) = self.get_one(msg::LINKMODES_GET, dev) {
            let a = Attrs::parse(&raw);
            l.speed_mbps = a.u32(LINKMODES_SPEED).filter(|&s| s != 0 && s != u32::MAX);
            l.duplex = a.u8(LINKMODES_DUPLEX).and_then(|d| match d {
                0 => Some("half"),
                1 => Some("full"),
                _ => None,
            });
            l.autoneg = a.u8(LINKMODES_AUTONEG).map(|v| v != 0);
        }
        Ok(l)
    }
}

/// The `NLMSGERR_ATTR_MSG` string of an error reply, if the kernel sent one. `payload` is
/// what follows the error code: the echoed request (its header only when capped), then TLVs.
fn extack_message(payload: &[u8], capped: bool) -> Option<String> {
    const NLMSGERR_ATTR_MSG: u16 = 1;
    let echoed = if capped {
        16
    } else {
        let len = payload.get(..4)?;
        u32::from_ne_bytes([len[0], len[1], len[2], len[3]]) as usize
    };
    let tlvs = payload.get((echoed + 3) & !3..)?;
    Attrs::parse(tlvs)
        .str(NLMSGERR_ATTR_MSG)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_round_trip_nested_and_strings() {
        let a = vec![
            header("veth0"),
            Attr::Nest(3, vec![Attr::U32(1, 7), Attr::Flag(3), Attr::U8(4, 1)]),
        ];
        let mut buf = vec![0u8; a.as_slice().buffer_len()];
        a.as_slice().emit(&mut buf);
        let top = Attrs::parse(&buf);
        let h = top.nest(A_HEADER).expect("header nest");
        assert_eq!(h.str(HEADER_DEV_NAME).as_deref(), Some("veth0"));
        let n = top.nest(3).expect("nest 3");
        assert_eq!(n.u32(1), Some(7));
        assert!(n.has(3));
        assert_eq!(n.u8(4), Some(1));
        assert_eq!(n.u32(9), None);
    }

    #[test]
    fn malformed_attribute_bytes_are_cut_short_not_a_panic() {
        for junk in [
            &[0xffu8, 0xff, 1, 0][..],
            &[8, 0, 1, 0, 1][..],
            &[3, 0][..],
            &[][..],
        ] {
            let a = Attrs::parse(junk);
            assert!(a.u32(1).is_none());
            assert!(a.str(1).is_none() || junk.len() >= 4);
        }
    }

    #[test]
    fn extack_message_is_read_after_the_capped_header() {
        let mut p = vec![0u8; 16];
        let msg = Attr::Str(1, "requested channel count exceeds maximum".into());
        let mut t = vec![0u8; msg.buffer_len()];
        msg.emit(&mut t);
        p.extend_from_slice(&t);
        assert_eq!(
            extack_message(&p, true).as_deref(),
            Some("requested channel count exceeds maximum")
        );
        assert_eq!(extack_message(&p[..10], true), None);
    }

    #[test]
    fn random_reply_bytes_never_panic() {
        let mut rng = crate::nic::TestRng(0x5eed_0000_0000_0003);
        let good = {
            let a = vec![
                header("veth0"),
                Attr::Nest(3, vec![Attr::U32(1, 7), Attr::Flag(3)]),
            ];
            let mut buf = vec![0u8; a.as_slice().buffer_len()];
            a.as_slice().emit(&mut buf);
            buf
        };
        for _ in 0..5000 {
            let b = rng.mutate(&good);
            let a = Attrs::parse(&b);
            if let Some(n) = a.nest(3) {
                let _ = (n.u32(1), n.str(2), n.u8(3), bitset_indices(&n));
            }
            let _ = a.nest(A_HEADER).and_then(|h| h.str(HEADER_DEV_NAME));
            let _ = extack_message(&b, rng.below(2) == 0);
        }
    }
}
