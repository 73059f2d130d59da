//! `tickmesh nic` on ports owned by DPDK: the vocabulary, the report and the client.
//!
//! A DPDK port is named `dpdk:NAME` (its DPDK device name: `net_tap0`, `0000:03:00.0`)
//! or `dpdk:N` (its port id). The kernel cannot see such a port, so nothing here touches
//! the kernel: `show` and `set` on it are sent as one JSON line to the port-control
//! socket of the `tickmesh run --engine dpdk` process that owns it (`--dpdk-socket`,
//! default [`DEFAULT_SOCKET`]), which runs them through the DPDK API
//! (`engine::dpdk::portctl`). With `--dpdk-vdev`/`--dpdk-allow` instead, and feature
//! `dpdk`, this process starts its own EAL, opens the port, runs the verb and exits:
//! what it changed lasts only as long as the process (useful to see what a PMD can do).
//!
//! This module is plain Rust (no DPDK, no `unsafe`): it parses `nic set` words into a
//! [`PortOp`], names DPDK offloads and RSS hash functions in ethtool's words where they
//! correspond, and renders a [`PortReport`]. The server re-parses the words it receives;
//! it never trusts the client's parse.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::plan::{summarize_table, RssWant};
use super::show::Part;
use super::sys::FlowRule;
use super::NicError;

pub const PREFIX: &str = "dpdk:";
/// Where `tickmesh run --engine dpdk` serves port control unless `--dpdk-nic-socket` says.
pub const DEFAULT_SOCKET: &str = "/run/tickmesh/dpdk-nic.sock";

/// How `tickmesh nic` reaches a DPDK port.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DpdkAccess {
    /// Port-control socket of the DPDK engine that owns `dpdk:` ports.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub dpdk_socket: PathBuf,
    /// Open `dpdk:` ports in this process instead (its own EAL) from this virtual device,
    /// e.g. `net_tap0,iface=dtap0` (repeatable). Changes last until the command exits.
    #[arg(long, global = true, value_name = "SPEC")]
    pub dpdk_vdev: Vec<String>,
    /// Like --dpdk-vdev, for a PCI device bound to vfio-pci (repeatable).
    #[arg(long, global = true, value_name = "PCI")]
    pub dpdk_allow: Vec<String>,
    /// With --dpdk-vdev/--dpdk-allow: use hugepages (default: --no-huge, 256 MB).
    #[arg(long, global = true)]
    pub dpdk_huge: bool,
    /// With --dpdk-vdev/--dpdk-allow: any other EAL argument (repeatable).
    #[arg(long, global = true, value_name = "ARG", allow_hyphen_values = true)]
    pub dpdk_eal_arg: Vec<String>,
}

impl DpdkAccess {
    /// Whether this process opens the ports itself rather than asking the engine.
    pub fn standalone(&self) -> bool {
        !self.dpdk_vdev.is_empty() || !self.dpdk_allow.is_empty()
    }
}

/// The port named by a `dpdk:` device argument, or `None` for a kernel interface.
pub fn port_of(dev: &str) -> Option<&str> {
    dev.strip_prefix(PREFIX)
}

// === the report ===

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PortLink {
    pub up: bool,
    pub speed_mbps: u32,
    pub full_duplex: bool,
    pub autoneg: bool,
}

/// One DPDK offload flag and the ethtool feature it corresponds to, if any.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Offload {
    /// `rx` or `tx`.
    pub dir: String,
    /// DPDK's name (`rte_eth_dev_rx_offload_name`): `TCP_LRO`, `SECURITY`, ...
    pub dpdk: String,
    pub ethtool: Option<String>,
    /// The PMD offers it (`rx_offload_capa`/`tx_offload_capa`).
    pub available: bool,
    /// The port was configured with it (`rte_eth_dev_conf_get`).
    pub on: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PortQueues {
    pub rx: u16,
    pub tx: u16,
    pub max_rx: u16,
    pub max_tx: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PortRings {
    /// Descriptors per queue (queue 0), as set up.
    pub rx: u16,
    pub tx: u16,
    /// `rx_desc_lim`/`tx_desc_lim`: (min, max, alignment).
    pub rx_limits: (u16, u16, u16),
    pub tx_limits: (u16, u16, u16),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PortRss {
    /// `flow_type_rss_offloads`, by name.
    pub supported: Vec<String>,
    /// The hash functions on now (`rte_eth_dev_rss_hash_conf_get`); `None` when the PMD
    /// does not report them.
    pub enabled: Option<Vec<String>>,
    /// Hex; empty when the PMD does not report it.
    pub key: String,
    /// The redirection table (`rte_eth_dev_rss_reta_query`); empty when there is none.
    pub reta: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PortFlow {
    /// The number `flow del` takes (given by the process that created the rule).
    pub id: u32,
    pub rule: FlowRule,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PortReport {
    pub port_id: u16,
    pub name: String,
    pub driver: String,
    pub mac: String,
    /// Who owns the port: the engine's pid, or this command only.
    pub owner: String,
    pub link: Part<PortLink>,
    pub offloads: Vec<Offload>,
    pub channels: PortQueues,
    pub rings: PortRings,
    pub rss: Part<PortRss>,
    /// The rte_flow rules this owner created (DPDK cannot list a port's rules).
    pub flows: Vec<PortFlow>,
}

/// DPDK offloads and the ethtool features they correspond to: (RX?, DPDK's name as
/// `rte_eth_dev_{rx,tx}_offload_name` prints it, ethtool names), from `rte_ethdev.h`'s
/// RTE_ETH_{RX,TX}_OFFLOAD_* against `ethtool -k`. `SECURITY` is inline IPsec/TLS crypto,
/// which ethtool shows as `esp-hw-offload` and `tls-hw-*-offload`; DPDK's `TCP_LRO` is
/// listed as `rx-gro-hw` (header-preserving aggregation in the NIC).
pub const OFFLOADS: &[(bool, &str, &str)] = &[
    (true, "VLAN_STRIP", "rx-vlan-hw-parse"),
    (true, "QINQ_STRIP", "rx-vlan-stag-hw-parse"),
    (true, "VLAN_FILTER", "rx-vlan-filter"),
    (true, "IPV4_CKSUM", "rx-checksumming"),
    (true, "UDP_CKSUM", "rx-checksumming"),
    (true, "TCP_CKSUM", "rx-checksumming"),
    (true, "SCTP_CKSUM", "rx-checksumming"),
    (true, "TCP_LRO", "rx-gro-hw"),
    (true, "KEEP_CRC", "rx-fcs"),
    (true, "RSS_HASH", "rx-hashing"),
    (true, "SCATTER", "rx-scatter"),
    (true, "SECURITY", "tls-hw-rx-offload,esp-hw-offload"),
    (true, "MACSEC_STRIP", "macsec-hw-offload"),
    (false, "MACSEC_INSERT", "macsec-hw-offload"),
    (false, "VLAN_INSERT", "tx-vlan-hw-insert"),
    (false, "QINQ_INSERT", "tx-vlan-stag-hw-insert"),
    (false, "IPV4_CKSUM", "tx-checksumming"),
    (false, "UDP_CKSUM", "tx-checksumming"),
    (false, "TCP_CKSUM", "tx-checksumming"),
    (false, "SCTP_CKSUM", "tx-checksum-sctp"),
    (false, "TCP_TSO", "tx-tcp-segmentation"),
    (false, "UDP_TSO", "tx-udp-segmentation"),
    (false, "VXLAN_TNL_TSO", "tx-udp_tnl-segmentation"),
    (false, "GENEVE_TNL_TSO", "tx-udp_tnl-segmentation"),
    (false, "UDP_TNL_TSO", "tx-udp_tnl-segmentation"),
    (false, "GRE_TNL_TSO", "tx-gre-segmentation"),
    (false, "IPIP_TNL_TSO", "tx-ipxip4-segmentation"),
    (false, "MULTI_SEGS", "tx-scatter-gather"),
    (false, "SECURITY", "tls-hw-tx-offload,esp-hw-offload"),
];

/// The ethtool feature(s) a DPDK offload corresponds to, if any.
pub fn ethtool_name(rx: bool, dpdk: &str) -> Option<&'static str> {
    OFFLOADS
        .iter()
        .find(|(r, d, _)| *r == rx && *d == dpdk)
        .map(|(_, _, e)| *e)
}

/// ethtool's `-K` abbreviations and group names, as the ethtool feature they mean here.
const ALIASES: &[(&str, &str)] = &[
    ("rx", "rx-checksumming"),
    ("tx", "tx-checksumming"),
    ("sg", "tx-scatter-gather"),
    ("scatter-gather", "tx-scatter-gather"),
    ("tso", "tx-tcp-segmentation"),
    ("tcp-segmentation-offload", "tx-tcp-segmentation"),
    ("lro", "rx-gro-hw"),
    ("large-receive-offload", "rx-gro-hw"),
    ("gro-hw", "rx-gro-hw"),
    ("rxvlan", "rx-vlan-hw-parse"),
    ("rx-vlan-offload", "rx-vlan-hw-parse"),
    ("txvlan", "tx-vlan-hw-insert"),
    ("tx-vlan-offload", "tx-vlan-hw-insert"),
    ("rxhash", "rx-hashing"),
    ("receive-hashing", "rx-hashing"),
];

/// The DPDK offloads (RX?, name) a `nic set` feature word stands for: an ethtool name or
/// abbreviation (`tso`, `tx-checksumming` — a group covers several), or DPDK's own name
/// with its direction (`rx:TCP_LRO`, `tx:MBUF_FAST_FREE`).
pub fn offload_targets(word: &str) -> Result<Vec<(bool, String)>, NicError> {
    if let Some((dir, name)) = word.split_once(':') {
        let rx = match dir {
            "rx" => true,
            "tx" => false,
            _ => {
                return Err(NicError::Invalid(format!(
                    "`{word}`: write rx:NAME or tx:NAME with DPDK's offload name"
                )))
            }
        };
        let name = name.to_ascii_uppercase();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(NicError::Invalid(format!(
                "`{word}`: `{name}` is not a DPDK offload name (e.g. TCP_LRO, MBUF_FAST_FREE)"
            )));
        }
        return Ok(vec![(rx, name)]);
    }
    let eth = ALIASES
        .iter()
        .find(|(a, _)| *a == word)
        .map_or(word, |(_, e)| *e);
    let out: Vec<(bool, String)> = OFFLOADS
        .iter()
        .filter(|(_, _, e)| e.split(',').any(|n| n == eth))
        .map(|(rx, d, _)| (*rx, (*d).to_string()))
        .collect();
    if out.is_empty() {
        return Err(NicError::Invalid(format!(
            "no DPDK offload corresponds to `{word}` (ethtool names such as tso, tx-checksumming, rx-checksumming, rx-gro-hw, tls-hw-tx-offload, or DPDK's own as rx:NAME / tx:NAME)"
        )));
    }
    Ok(out)
}

/// RSS hash functions: bit of `RTE_ETH_RSS_*` (rte_ethdev.h, DPDK 22.11) and our name.
pub const RSS_HASH: &[(u32, &str)] = &[
    (2, "ipv4"),
    (3, "ipv4-frag"),
    (4, "ipv4-tcp"),
    (5, "ipv4-udp"),
    (6, "ipv4-sctp"),
    (7, "ipv4-other"),
    (8, "ipv6"),
    (9, "ipv6-frag"),
    (10, "ipv6-tcp"),
    (11, "ipv6-udp"),
    (12, "ipv6-sctp"),
    (13, "ipv6-other"),
    (14, "l2-payload"),
    (15, "ipv6-ex"),
    (16, "ipv6-tcp-ex"),
    (17, "ipv6-udp-ex"),
    (18, "port"),
    (19, "vxlan"),
    (20, "geneve"),
    (21, "nvgre"),
    (23, "gtpu"),
    (24, "eth"),
    (25, "s-vlan"),
    (26, "c-vlan"),
    (27, "esp"),
    (28, "ah"),
    (29, "l2tpv3"),
    (30, "pfcp"),
    (31, "pppoe"),
    (32, "ecpri"),
    (33, "mpls"),
    (34, "ipv4-chksum"),
    (35, "l4-chksum"),
    (36, "l2tpv2"),
    (58, "l2-dst-only"),
    (59, "l2-src-only"),
    (60, "l4-dst-only"),
    (61, "l4-src-only"),
    (62, "l3-dst-only"),
    (63, "l3-src-only"),
];

/// The names of the hash functions in `hf` (unknown bits as `bitN`).
pub fn rss_names(hf: u64) -> Vec<String> {
    (0..64)
        .filter(|b| hf & (1u64 << b) != 0)
        .map(|b| {
            RSS_HASH
                .iter()
                .find(|(bit, _)| *bit == b)
                .map_or(format!("bit{b}"), |(_, n)| (*n).to_string())
        })
        .collect()
}

/// `ipv4-tcp,ipv4-udp` (commas or spaces) → the `rss_hf` bits.
pub fn parse_rss_hash(words: &[String]) -> Result<u64, NicError> {
    let mut hf = 0u64;
    for name in words
        .iter()
        .flat_map(|w| w.split(','))
        .filter(|n| !n.is_empty())
    {
        let bit = RSS_HASH
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(b, _)| *b)
            .ok_or_else(|| {
                NicError::Invalid(format!(
                    "rss hash: unknown hash function `{name}` (e.g. ipv4, ipv4-tcp, ipv4-udp, ipv6-tcp; `tickmesh nic show` lists what the port supports)"
                ))
            })?;
        hf |= 1u64 << bit;
    }
    if hf == 0 {
        return Err(NicError::Invalid(
            "rss hash needs hash functions, e.g. `rss hash ipv4,ipv4-tcp,ipv4-udp`".into(),
        ));
    }
    Ok(hf)
}

// === `nic set` words ===

/// One change to a DPDK port.
#[derive(Debug, Clone, PartialEq)]
pub enum PortOp {
    /// RX and TX queue counts (`None` keeps the current one).
    Channels {
        rx: Option<u16>,
        tx: Option<u16>,
    },
    /// Descriptors per RX/TX queue.
    Rings {
        rx: Option<u16>,
        tx: Option<u16>,
    },
    Reta(RssWant),
    RssHash(u64),
    RssKey(Vec<u8>),
    FlowAdd(FlowRule),
    FlowDel(u32),
    /// `FEATURE=on|off` words, checked by [`offload_targets`].
    Offloads(Vec<(String, bool)>),
}

fn kv(words: &[String]) -> Result<Vec<(String, String)>, NicError> {
    let mut out = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        match w.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), v.to_string())),
            None => {
                let v = it
                    .next()
                    .ok_or_else(|| NicError::Invalid(format!("`{w}` needs a value")))?;
                out.push((w.clone(), v.clone()));
            }
        }
    }
    if out.is_empty() {
        return Err(NicError::Invalid("nothing to set".into()));
    }
    Ok(out)
}

fn count(verb: &str, k: &str, v: &str) -> Result<u16, NicError> {
    match v.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(NicError::Invalid(format!(
            "{verb} {k}: `{v}` is not a count (1-65535)"
        ))),
    }
}

/// Parse the words after `nic set dpdk:PORT`.
pub fn parse_op(words: &[String]) -> Result<PortOp, NicError> {
    let rest = words.get(1..).unwrap_or_default();
    let verb = words.first().map(String::as_str);
    let pair = |verb: &str, combined: bool| -> Result<(Option<u16>, Option<u16>), NicError> {
        let (mut rx, mut tx) = (None, None);
        for (k, v) in kv(rest)? {
            let n = count(verb, &k, &v)?;
            match k.as_str() {
                "rx" => rx = Some(n),
                "tx" => tx = Some(n),
                "combined" if combined => (rx, tx) = (Some(n), Some(n)),
                _ => {
                    return Err(NicError::Invalid(format!(
                        "{verb}: unknown kind `{k}` on a DPDK port (one of rx, tx{})",
                        if combined { ", combined" } else { "" }
                    )))
                }
            }
        }
        Ok((rx, tx))
    };
    let num = |k: &str, v: Option<&String>| -> Result<u32, NicError> {
        let v = v.map_or("", String::as_str);
        v.parse()
            .map_err(|_| NicError::Invalid(format!("{k}: `{v}` is not a number")))
    };
    Ok(match verb {
        Some("channels") => {
            let (rx, tx) = pair("channels", true)?;
            PortOp::Channels { rx, tx }
        }
        Some("rings") => {
            let (rx, tx) = pair("rings", false)?;
            PortOp::Rings { rx, tx }
        }
        Some("rss") => match rest.first().map(String::as_str) {
            Some("equal") => PortOp::Reta(RssWant::Equal(num("rss equal", rest.get(1))?)),
            Some("weights") if rest.len() > 1 => PortOp::Reta(RssWant::Weights(
                rest[1..]
                    .iter()
                    .map(|w| num("rss weight", Some(w)))
                    .collect::<Result<_, _>>()?,
            )),
            Some("default") => PortOp::Reta(RssWant::Default),
            Some("hash") => PortOp::RssHash(parse_rss_hash(&rest[1..])?),
            Some("key") => {
                let hex: String = rest[1..].concat().replace(':', "");
                let key = (0..hex.len())
                    .step_by(2)
                    .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| {
                        NicError::Invalid(format!(
                            "rss key: `{hex}` is not hex bytes (write e.g. 6d:5a:56:da:...)"
                        ))
                    })?;
                PortOp::RssKey(key)
            }
            _ => {
                return Err(NicError::Invalid(
                    "write `rss equal N`, `rss weights W0 W1 ...`, `rss default`, `rss hash F,...` or `rss key HEX`".into(),
                ))
            }
        },
        Some("flow") => match rest.first().map(String::as_str) {
            Some("add") => {
                let rule = FlowRule::parse(&rest[1..])?;
                if rule.location.is_some() {
                    return Err(NicError::Invalid(
                        "flow rule: `loc` is not used on DPDK ports (rte_flow gives each rule an id)".into(),
                    ));
                }
                PortOp::FlowAdd(rule)
            }
            Some("del") => PortOp::FlowDel(num("flow del", rest.get(1))?),
            _ => {
                return Err(NicError::Invalid(
                    "write `flow add RULE` or `flow del ID`".into(),
                ))
            }
        },
        Some("coalesce" | "irq-affinity" | "rps" | "xps") => {
            return Err(NicError::Unsupported(format!(
                "`{}` does not apply to a DPDK port: its queues are polled, with no interrupts or kernel queues",
                words[0]
            )))
        }
        None => return Err(NicError::Invalid("nothing to set".into())),
        Some(_) => {
            let mut out = Vec::new();
            for (k, v) in kv(words)? {
                let on = super::features::parse_on_off(&v).ok_or_else(|| {
                    NicError::Invalid(format!("`{k}={v}`: `{v}` is not on or off"))
                })?;
                offload_targets(&k)?;
                out.push((k, on));
            }
            PortOp::Offloads(out)
        }
    })
}

// === talking to the owner ===

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// A port name or id; [`ALL_PORTS`] with no words shows every port.
    pub port: String,
    /// Empty: show. Otherwise the words of `nic set`.
    pub words: Vec<String>,
}

pub const ALL_PORTS: &str = "*";

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub error: Option<String>,
    pub message: Option<String>,
    pub report: Option<PortReport>,
    /// The answer to [`ALL_PORTS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reports: Vec<PortReport>,
}

impl Response {
    pub fn error(e: impl std::fmt::Display) -> Response {
        Response {
            ok: false,
            error: Some(e.to_string()),
            message: None,
            report: None,
            reports: Vec::new(),
        }
    }
}

/// For `nic show` without a device: the ports of the DPDK engine at `socket`, if one runs
/// there (nothing when none does; an error only when it answers badly).
pub fn engine_ports(socket: &Path) -> anyhow::Result<Vec<PortReport>> {
    if !socket.exists() {
        return Ok(Vec::new());
    }
    let resp = call(
        socket,
        &Request {
            port: ALL_PORTS.into(),
            words: Vec::new(),
        },
    )?;
    match resp.error {
        Some(e) => anyhow::bail!("{e}"),
        None => Ok(resp.reports),
    }
}

/// Largest request or response line accepted (a report with a 512-entry table is ~10 KiB).
pub const MAX_LINE: usize = 1 << 20;

/// Send one request to the engine's port-control socket and read its answer.
pub fn call(socket: &Path, req: &Request) -> anyhow::Result<Response> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!(
            "no DPDK engine serves port control at {} ({e}): start `tickmesh run --engine dpdk` \
             (it serves {DEFAULT_SOCKET} unless --dpdk-nic-socket says otherwise), point --dpdk-socket \
             at its socket, or open the port in this process with --dpdk-vdev/--dpdk-allow",
            socket.display()
        )
    })?;
    // Reconfiguring queues pauses the engine's workers for a moment; 30 s is generous.
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(s.take(MAX_LINE as u64)).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(|e| {
        anyhow::anyhow!(
            "the DPDK engine at {} sent an answer that is not a port-control response ({e})",
            socket.display()
        )
    })
}

/// `nic show dpdk:PORT` / `nic set dpdk:PORT WORDS...`: ask the owner, print its answer.
pub fn run(port: &str, words: &[String], json: bool, access: &DpdkAccess) -> anyhow::Result<()> {
    if port.is_empty() {
        anyhow::bail!("name the DPDK port after `dpdk:` (its device name, e.g. dpdk:net_tap0, or its port id, dpdk:0)");
    }
    if !words.is_empty() {
        parse_op(words).map_err(|e| anyhow::anyhow!("dpdk:{port}: {e}"))?;
    }
    let req = Request {
        port: port.to_string(),
        words: words.to_vec(),
    };
    let resp = if access.standalone() {
        standalone(access, &req)?
    } else {
        call(&access.dpdk_socket, &req)?
    };
    if let Some(m) = &resp.message {
        println!("{m}");
    }
    if let Some(r) = &resp.report {
        if json {
            println!("{}", serde_json::to_string_pretty(r)?);
        } else {
            print!("{}", text(r));
        }
    }
    if !resp.ok {
        anyhow::bail!(
            "{}",
            resp.error
                .unwrap_or_else(|| "the DPDK engine refused".into())
        );
    }
    Ok(())
}

#[cfg(feature = "dpdk")]
fn standalone(access: &DpdkAccess, req: &Request) -> anyhow::Result<Response> {
    crate::engine::dpdk::portctl::standalone(access, req)
}

#[cfg(not(feature = "dpdk"))]
fn standalone(_: &DpdkAccess, _: &Request) -> anyhow::Result<Response> {
    anyhow::bail!(
        "--dpdk-vdev/--dpdk-allow open the port in this process, which needs a tickmesh built with `--features dpdk`; \
         without them the command asks the running DPDK engine over --dpdk-socket"
    )
}

// === text ===

fn flow_text(r: &FlowRule) -> String {
    format!(
        "{:?} src {} dst {} sport {} dport {} -> {}",
        r.flow_type,
        r.src_ip.map_or("*".into(), |a| a.to_string()),
        r.dst_ip.map_or("*".into(), |a| a.to_string()),
        r.src_port.map_or("*".into(), |p| p.to_string()),
        r.dst_port.map_or("*".into(), |p| p.to_string()),
        r.queue.map_or("drop".into(), |q| format!("queue {q}"))
    )
    .to_lowercase()
}

pub fn text(r: &PortReport) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "dpdk:{} (port {}): driver {}, mac {}",
        r.name, r.port_id, r.driver, r.mac
    );
    match &r.link {
        Part::Value(l) => {
            let _ = write!(
                o,
                ", link {} {} Mb/s {} duplex{}",
                if l.up { "up" } else { "down" },
                l.speed_mbps,
                if l.full_duplex { "full" } else { "half" },
                if l.autoneg { " autoneg" } else { "" }
            );
        }
        Part::Missing { unavailable } => {
            let _ = write!(o, ", link {unavailable}");
        }
    }
    let _ = writeln!(o, "\n  owner: {}", r.owner);
    let c = &r.channels;
    let _ = writeln!(
        o,
        "  channels (current/max): rx {}/{} tx {}/{}",
        c.rx, c.max_rx, c.tx, c.max_tx
    );
    let g = &r.rings;
    let _ = writeln!(
        o,
        "  rings (descriptors; min-max, align): rx {} ({}-{}, {}) tx {} ({}-{}, {})",
        g.rx,
        g.rx_limits.0,
        g.rx_limits.1,
        g.rx_limits.2,
        g.tx,
        g.tx_limits.0,
        g.tx_limits.1,
        g.tx_limits.2
    );
    o.push_str("  offloads (available / [on]):\n");
    for dir in ["rx", "tx"] {
        let list: Vec<String> = r
            .offloads
            .iter()
            .filter(|f| f.dir == dir && f.available)
            .map(|f| {
                let mut s = f.dpdk.clone();
                if let Some(e) = &f.ethtool {
                    let _ = write!(s, " ({e})");
                }
                if f.on {
                    s.push_str(" [on]");
                }
                s
            })
            .collect();
        let _ = writeln!(
            o,
            "    {dir}: {}",
            if list.is_empty() {
                "none".to_string()
            } else {
                list.join(", ")
            }
        );
    }
    let inline = r
        .offloads
        .iter()
        .any(|f| f.dpdk == "SECURITY" && f.available);
    let _ = writeln!(
        o,
        "  inline crypto (tls-hw/esp-hw): {}",
        if inline {
            "available (RTE_ETH_*_OFFLOAD_SECURITY)"
        } else {
            "not offered by this PMD"
        }
    );
    match &r.rss {
        Part::Value(s) => {
            let _ = writeln!(
                o,
                "  rss: hash {} (supported: {})",
                match &s.enabled {
                    None => "not reported by the PMD".to_string(),
                    Some(e) if e.is_empty() => "off".to_string(),
                    Some(e) => e.join(","),
                },
                if s.supported.is_empty() {
                    "none".to_string()
                } else {
                    s.supported.join(",")
                }
            );
            if !s.reta.is_empty() {
                let _ = writeln!(
                    o,
                    "    redirection table {} entries ({})",
                    s.reta.len(),
                    summarize_table(&s.reta)
                );
            }
            if !s.key.is_empty() {
                let _ = writeln!(o, "    hash key {}", s.key);
            }
        }
        Part::Missing { unavailable } => {
            let _ = writeln!(o, "  rss: {unavailable}");
        }
    }
    if r.flows.is_empty() {
        o.push_str("  rte_flow rules: none\n");
    } else {
        o.push_str("  rte_flow rules:\n");
        for f in &r.flows {
            let _ = writeln!(o, "    id {}: {}", f.id, flow_text(&f.rule));
        }
    }
    o
}

/// A hex string `aa:bb:...` of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn port_names() {
        assert_eq!(port_of("dpdk:net_tap0"), Some("net_tap0"));
        assert_eq!(port_of("dpdk:0000:03:00.0"), Some("0000:03:00.0"));
        assert_eq!(port_of("eth0"), None);
    }

    #[test]
    fn set_words_become_port_ops() {
        assert_eq!(
            parse_op(&w("channels rx=2 tx 3")).unwrap(),
            PortOp::Channels {
                rx: Some(2),
                tx: Some(3)
            }
        );
        assert_eq!(
            parse_op(&w("channels combined 4")).unwrap(),
            PortOp::Channels {
                rx: Some(4),
                tx: Some(4)
            }
        );
        assert_eq!(
            parse_op(&w("rings rx=512")).unwrap(),
            PortOp::Rings {
                rx: Some(512),
                tx: None
            }
        );
        assert_eq!(
            parse_op(&w("rss weights 1 2")).unwrap(),
            PortOp::Reta(RssWant::Weights(vec![1, 2]))
        );
        assert_eq!(
            parse_op(&w("rss hash ipv4,ipv4-tcp")).unwrap(),
            PortOp::RssHash((1 << 2) | (1 << 4))
        );
        assert_eq!(
            parse_op(&w("rss key 01:02 ff")).unwrap(),
            PortOp::RssKey(vec![1, 2, 0xff])
        );
        assert!(matches!(
            parse_op(&w("flow add tcp4 dst-ip 10.0.0.1 dst-port 80 action 1")).unwrap(),
            PortOp::FlowAdd(r) if r.queue == Some(1) && r.dst_port == Some(80)
        ));
        assert_eq!(parse_op(&w("flow del 3")).unwrap(), PortOp::FlowDel(3));
        assert_eq!(
            parse_op(&w("tso=on tx off rx:tcp_lro on")).unwrap(),
            PortOp::Offloads(vec![
                ("tso".into(), true),
                ("tx".into(), false),
                ("rx:tcp_lro".into(), true)
            ])
        );
        assert_eq!(
            offload_targets("tso").unwrap(),
            vec![(false, "TCP_TSO".to_string())]
        );
        assert_eq!(offload_targets("tx-checksumming").unwrap().len(), 3);
        assert_eq!(
            offload_targets("tls-hw-rx-offload").unwrap(),
            vec![(true, "SECURITY".to_string())]
        );
        assert_eq!(offload_targets("esp-hw-offload").unwrap().len(), 2);
        assert_eq!(
            offload_targets("rx:TCP_LRO").unwrap(),
            vec![(true, "TCP_LRO".to_string())]
        );
    }

    #[test]
    fn malformed_port_words_are_named() {
        for (bad, needle) in [
            ("", "nothing to set"),
            ("channels", "nothing to set"),
            ("channels rx=0", "`0` is not a count"),
            ("channels rx=70000", "`70000` is not a count"),
            ("channels other=1", "unknown kind `other`"),
            ("rings combined=2", "unknown kind `combined`"),
            ("rings rx", "needs a value"),
            ("rss", "rss equal N"),
            ("rss equal", "`` is not a number"),
            ("rss hash ipv4,tcp9", "unknown hash function `tcp9`"),
            ("rss hash", "needs hash functions"),
            ("rss key zz", "not hex bytes"),
            ("rss key 0", "not hex bytes"),
            ("flow add tcp4 dst-port 80", "missing `action"),
            (
                "flow add tcp4 dst-port 80 action 1 loc 3",
                "`loc` is not used",
            ),
            ("flow del x", "`x` is not a number"),
            ("flow", "flow add RULE"),
            ("coalesce rx-usecs 0", "polled"),
            ("gro=off", "no DPDK offload corresponds to `gro`"),
            ("tso=maybe", "`maybe` is not on or off"),
            ("tso", "needs a value"),
            ("up:TCP_LRO=on", "write rx:NAME or tx:NAME"),
            ("rx:TCP-LRO=on", "is not a DPDK offload name"),
        ] {
            let e = parse_op(&w(bad)).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }

    #[test]
    fn offload_and_hash_names() {
        assert_eq!(ethtool_name(true, "TCP_LRO"), Some("rx-gro-hw"));
        assert_eq!(ethtool_name(false, "TCP_TSO"), Some("tx-tcp-segmentation"));
        assert!(ethtool_name(false, "SECURITY")
            .unwrap()
            .contains("tls-hw-tx-offload"));
        assert!(ethtool_name(true, "SECURITY")
            .unwrap()
            .contains("tls-hw-rx-offload"));
        assert_eq!(ethtool_name(false, "MBUF_FAST_FREE"), None);
        assert_eq!(
            rss_names((1 << 4) | (1 << 22) | (1 << 63)),
            vec!["ipv4-tcp", "bit22", "l3-src-only"]
        );
        let all: Vec<String> = RSS_HASH.iter().map(|(_, n)| n.to_string()).collect();
        let hf = parse_rss_hash(&all).unwrap();
        assert_eq!(rss_names(hf), all);
    }

    #[test]
    fn a_report_round_trips_and_reads() {
        let r = PortReport {
            port_id: 0,
            name: "net_ring0".into(),
            driver: "net_ring".into(),
            mac: "02:00:00:00:00:00".into(),
            owner: "this command only".into(),
            link: Part::Value(PortLink {
                up: true,
                speed_mbps: 10000,
                full_duplex: true,
                autoneg: false,
            }),
            offloads: vec![Offload {
                dir: "tx".into(),
                dpdk: "SECURITY".into(),
                ethtool: ethtool_name(false, "SECURITY").map(String::from),
                available: true,
                on: false,
            }],
            channels: PortQueues {
                rx: 1,
                tx: 1,
                max_rx: 16,
                max_tx: 16,
            },
            rings: PortRings {
                rx: 1024,
                tx: 1024,
                rx_limits: (0, 65535, 1),
                tx_limits: (0, 65535, 1),
            },
            rss: Part::Missing {
                unavailable: "not supported by net_ring".into(),
            },
            flows: vec![PortFlow {
                id: 1,
                rule: FlowRule::parse(&w("udp4 dst-port 53 action 0")).unwrap(),
            }],
        };
        assert!(engine_ports(Path::new("/nonexistent/tickmesh.sock"))
            .unwrap()
            .is_empty());
        let back: PortReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        let t = text(&back);
        for needle in [
            "dpdk:net_ring0 (port 0): driver net_ring",
            "link up 10000 Mb/s full duplex",
            "channels (current/max): rx 1/16 tx 1/16",
            "SECURITY (tls-hw-tx-offload,esp-hw-offload)",
            "inline crypto (tls-hw/esp-hw): available",
            "rss: not supported by net_ring",
            "id 1: udp4 src * dst * sport * dport 53 -> queue 0",
        ] {
            assert!(t.contains(needle), "{needle:?} in\n{t}");
        }
        // A garbled answer line is an error, not a panic.
        assert!(serde_json::from_str::<Response>("{\"ok\":tru").is_err());
    }
}
