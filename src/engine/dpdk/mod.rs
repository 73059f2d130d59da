//! The DPDK engine: poll-mode NIC queues and the L4 packet load balancer on them.
//!
//! `wire` (packet views) and `lb` (the balancer's decisions over any [`lb::PacketBuf`])
//! are plain Rust and build without DPDK, so their tests and the fuzz target run
//! everywhere. The parts that touch DPDK — `eal` (EAL start/stop), `port` (ports, queues,
//! mbufs), `portctl` (`tickmesh nic` on DPDK ports) and `runtime` (the lcore loops) — need
//! feature `dpdk` and are the only places here with `unsafe`.

pub mod lb;
#[doc(hidden)]
pub mod testing;
pub mod wire;

#[cfg(feature = "dpdk")]
pub mod eal;
#[cfg(feature = "dpdk")]
pub mod port;
#[cfg(feature = "dpdk")]
pub mod portctl;
#[cfg(feature = "dpdk")]
pub mod runtime;
#[cfg(feature = "dpdk")]
pub use runtime::run;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb::LbAddressing;

/// Command-line options of the DPDK engine (`tickmesh run --engine dpdk`).
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "DPDK engine (--engine dpdk)")]
pub struct DpdkArgs {
    /// EAL lcore list, one lcore per worker [default: 0..workers-1]
    #[arg(long, value_name = "LIST")]
    pub dpdk_lcores: Option<String>,
    /// A DPDK virtual device, e.g. `net_tap0,iface=dtap0` or `net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap` (repeatable).
    #[arg(long, value_name = "SPEC")]
    pub dpdk_vdev: Vec<String>,
    /// A PCI device to use (repeatable); without any, PCI is not scanned.
    #[arg(long, value_name = "PCI")]
    pub dpdk_allow: Vec<String>,
    /// Run without hugepages (slower; what CI uses).
    #[arg(long)]
    pub dpdk_no_huge: bool,
    /// DPDK memory in MB [default: 256 with --dpdk-no-huge, else as needed]
    #[arg(long, value_name = "MB")]
    pub dpdk_memory: Option<u32>,
    /// EAL --file-prefix, to run several DPDK processes side by side [default: tickmesh-PID]
    #[arg(long, value_name = "NAME")]
    pub dpdk_file_prefix: Option<String>,
    /// Any other EAL argument, passed through (repeatable).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub dpdk_eal_arg: Vec<String>,
    /// Unix socket where `tickmesh nic show|set dpdk:PORT` reaches this engine's ports
    /// [default: /run/tickmesh/dpdk-nic.sock].
    #[arg(long, value_name = "PATH")]
    pub dpdk_nic_socket: Option<std::path::PathBuf>,
    /// The port (by DPDK name, e.g. `net_tap0`) that hands non-balanced traffic to the kernel.
    #[arg(long, value_name = "NAME")]
    pub dpdk_exception_port: Option<String>,
    /// An address of the balancer itself (IPv4 or IPv6): answered for ARP / Neighbor
    /// Solicitation and ICMP echo (repeatable).
    #[arg(long, value_name = "IP")]
    pub dpdk_local_ip: Vec<IpAddr>,
    /// Outer source address for `forwarding: ipip` IPv4 VIPs.
    #[arg(long, value_name = "IP")]
    pub dpdk_tunnel_src: Option<Ipv4Addr>,
    /// Outer source address for `forwarding: ipip` IPv6 VIPs (IPv6-in-IPv6).
    #[arg(long, value_name = "IPV6")]
    pub dpdk_tunnel_src6: Option<Ipv6Addr>,
    /// A static next hop, `IP=MAC` (repeatable).
    #[arg(long, value_name = "IP=MAC")]
    pub dpdk_neighbor: Vec<String>,
    /// MAC of the next hop for destinations without a --dpdk-neighbor entry.
    #[arg(long, value_name = "MAC")]
    pub dpdk_gateway_mac: Option<String>,
    /// Flow-table entries per worker.
    #[arg(long, value_name = "N", default_value_t = 1 << 18)]
    pub dpdk_flows: usize,
    /// Benchmark only: at start, send N TCP frames (N flows) to the first VIP out of each
    /// data port, for loopback devices (net_ring) where they then circulate.
    #[arg(long, value_name = "N", hide = true)]
    pub dpdk_bench_prime: Option<usize>,
    /// Benchmark only: instead of balancing, ping-pong N frames (one at a time, to the
    /// first VIP) out of the first data port, time each round trip back on that port and
    /// print the latency percentiles as JSON (a peer such as a balancer or testpmd
    /// reflects them, e.g. over net_memif).
    #[arg(long, value_name = "N", hide = true)]
    pub dpdk_bench_ping: Option<usize>,
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!(
            "`{s}` is not a MAC address (write aa:bb:cc:dd:ee:ff)"
        ));
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16)
            .map_err(|_| format!("`{s}` is not a MAC address (write aa:bb:cc:dd:ee:ff)"))?;
    }
    Ok(mac)
}

impl DpdkArgs {
    /// The balancer's addressing from the flags, or an error naming the bad flag.
    pub fn addressing(&self) -> anyhow::Result<LbAddressing> {
        let mut neighbors = Vec::new();
        for n in &self.dpdk_neighbor {
            let (ip, mac) = n
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--dpdk-neighbor `{n}`: write IP=MAC"))?;
            let ip: IpAddr = ip.parse().map_err(|_| {
                anyhow::anyhow!("--dpdk-neighbor `{n}`: `{ip}` is not an IP address")
            })?;
            let mac = parse_mac(mac).map_err(|e| anyhow::anyhow!("--dpdk-neighbor: {e}"))?;
            neighbors.push((ip, mac));
        }
        let gateway = self
            .dpdk_gateway_mac
            .as_deref()
            .map(parse_mac)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--dpdk-gateway-mac: {e}"))?;
        Ok(LbAddressing {
            local_ips: self.dpdk_local_ip.clone(),
            tunnel_src: self.dpdk_tunnel_src,
            tunnel_src6: self.dpdk_tunnel_src6,
            neighbors,
            gateway,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addressing_flags_parse_and_bad_ones_are_named() {
        let a = DpdkArgs {
            dpdk_neighbor: vec!["10.0.0.2=02:00:00:00:00:0a".into()],
            dpdk_gateway_mac: Some("02:00:00:00:00:fe".into()),
            ..Default::default()
        };
        let ad = a.addressing().unwrap();
        assert_eq!(ad.neighbors[0].1, [2, 0, 0, 0, 0, 10]);
        assert_eq!(ad.gateway, Some([2, 0, 0, 0, 0, 0xfe]));
        let bad = DpdkArgs {
            dpdk_neighbor: vec!["10.0.0.2".into()],
            ..Default::default()
        };
        assert!(bad.addressing().unwrap_err().to_string().contains("IP=MAC"));
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("02:00:00:00:00:zz").is_err());
    }
}
