//! Helpers for the DPDK integration tests: a pcap writer/reader, a frame builder and a
//! checksum routine written independently of `engine::dpdk::wire`, and a runner that
//! starts `tickmesh run --engine dpdk` as its own process (the EAL starts once per
//! process) and collects its JSON counters.
#![allow(dead_code)]

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const LB_MAC: [u8; 6] = [0x02, 0x70, 0x63, 0x61, 0x70, 0x00]; // net_pcap0's MAC
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
pub const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 1];

/// The upper-layer checksum of the IPv6 packet at `ip` verifies (RFC 8200 §8.1).
pub fn checksum6_valid(ip: &[u8]) -> bool {
    tickmesh::engine::dpdk::testing::checksum6_valid(ip)
}
/// RFC 1071 over the concatenation of `parts` (a textbook loop, not `wire`'s code).
pub use tickmesh::engine::dpdk::testing::rfc1071 as csum;

pub fn ipv4_header(
    total: usize,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    flags_frag: u16,
) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&flags_frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = csum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// An Ethernet + IPv4 + TCP (proto 6) or UDP (17) frame with valid checksums.
pub fn frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    if proto == 6 {
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.0.octets());
    pseudo.extend_from_slice(&dst.0.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    let c = csum(&[&pseudo, &l4]);
    let at = if proto == 6 { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&LB_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ipv4_header(20 + l4.len(), proto, src.0, dst.0, 0x4000));
    f.extend_from_slice(&l4);
    f
}

/// IPv4 header checksum and TCP/UDP checksum of the packet at `ip` both verify.
pub fn checksums_valid(ip: &[u8]) -> bool {
    let hl = usize::from(ip[0] & 15) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if csum(&[&ip[..hl]]) != 0 {
        return false;
    }
    let seg = &ip[hl..total];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    csum(&[&pseudo, seg]) == 0
}

pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&0xa1b2_c3d4u32.to_le_bytes()).unwrap();
    f.write_all(&2u16.to_le_bytes()).unwrap();
    f.write_all(&4u16.to_le_bytes()).unwrap();
    f.write_all(&[0; 8]).unwrap();
    f.write_all(&65535u32.to_le_bytes()).unwrap();
    f.write_all(&1u32.to_le_bytes()).unwrap();
    for fr in frames {
        f.write_all(&[0; 8]).unwrap();
        f.write_all(&(fr.len() as u32).to_le_bytes()).unwrap();
        f.write_all(&(fr.len() as u32).to_le_bytes()).unwrap();
        f.write_all(fr).unwrap();
    }
}

/// Frames of a pcap file (microsecond or nanosecond, little-endian), or empty if none.
pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let Ok(b) = std::fs::read(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let incl = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16;
        if at + incl > b.len() {
            break;
        }
        out.push(b[at..at + incl].to_vec());
        at += incl;
    }
    out
}

/// Whether this machine can run the DPDK tests (root for EAL and tap devices).
pub fn dpdk_usable() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"));
    if !root {
        eprintln!("SKIP: the DPDK engine tests need root (EAL, tap devices)");
    }
    root
}

pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub counters: serde_json::Value,
}

impl Run {
    pub fn counter(&self, block: &str, name: &str) -> u64 {
        self.counters["counters"][block]["total"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {block}.{name} in {}", self.stdout))
    }
}

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tickmesh-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run the DPDK engine over `in.pcap` in `dir` until `out.pcap` holds `expect_out`
/// frames (or 30 s pass), then SIGTERM it and return its counters.
pub fn run_pcap(dir: &Path, config: &str, extra: &[&str], expect_out: usize) -> Run {
    std::fs::write(dir.join("cfg.yaml"), config).unwrap();
    std::fs::write(dir.join("empty.pcap"), []).unwrap();
    write_pcap(&dir.join("empty.pcap"), &[]);
    let vdev = format!(
        "net_pcap0,rx_pcap={},tx_pcap={}",
        dir.join("in.pcap").display(),
        dir.join("out.pcap").display()
    );
    let exc = format!(
        "net_pcap1,rx_pcap={},tx_pcap={}",
        dir.join("empty.pcap").display(),
        dir.join("exc.pcap").display()
    );
    let prefix = format!("tm-test-{}", dir.file_name().unwrap().to_string_lossy());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickmesh"));
    cmd.args(["run", "--engine", "dpdk", "-w", "1", "--idle", "park", "-c"])
        .arg(dir.join("cfg.yaml"))
        .arg("--control")
        .arg(dir.join("ctl.sock"))
        .args([
            "--dpdk-no-huge",
            "--dpdk-file-prefix",
            &prefix,
            "--dpdk-vdev",
            &vdev,
            "--dpdk-vdev",
            &exc,
        ])
        .args([
            "--dpdk-exception-port",
            "net_pcap1",
            "--dpdk-eal-arg=--log-level=error",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn tickmesh");
    let pid = child.id();
    let start = Instant::now();
    // net_pcap flushes its dumper after every burst, so progress is visible on disk.
    while start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
        if read_pcap(&dir.join("out.pcap")).len() >= expect_out {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "tickmesh failed: {stderr}");
    let counters = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}\n{stderr}"));
    Run {
        stdout,
        stderr,
        counters,
    }
}

/// An Ethernet + IPv6 frame (to net_pcap0, from the client) carrying `body` as `next`
/// header (hop limit `hop`); when `csum_at` is given, the upper-layer checksum at that
/// offset of `body` is filled. The shared builder with these tests' MACs.
pub fn frame6_raw(
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    next: u8,
    hop: u8,
    body: Vec<u8>,
    csum_at: Option<usize>,
) -> Vec<u8> {
    tickmesh::engine::dpdk::testing::frame6_raw(
        (LB_MAC, CLIENT_MAC),
        src,
        dst,
        next,
        hop,
        body,
        csum_at,
    )
}

/// An Ethernet + IPv6 + TCP (6) or UDP (17) frame with a valid checksum.
pub fn frame6(
    src: (std::net::Ipv6Addr, u16),
    dst: (std::net::Ipv6Addr, u16),
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    tickmesh::engine::dpdk::testing::frame6((LB_MAC, CLIENT_MAC), src, dst, proto, payload)
}
