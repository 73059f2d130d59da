//! Frame builders shared by the balancer's unit tests (`lb/tests.rs`) and the DPDK
//! integration tests (`tests/dpdk_common`): one place that writes test frames. Also the
//! thread CPU clock `benches/maglev_lb.rs` measures the burst path with.
//!
//! Test support only, never the data path: it allocates freely. Its checksum is a plain
//! RFC 1071 loop written apart from [`super::wire`], so that rewrites are never checked
//! with the code that made them (do not "simplify" it into a call to `wire`).

use std::net::Ipv6Addr;
use std::time::Duration;

/// CPU time the calling thread has run (`CLOCK_THREAD_CPUTIME_ID`). On a shared machine
/// the wall clock also counts the time other processes held the core; this does not
/// (as `scripts/bench-dpdk`'s task-clock figures).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a Linux constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(
        rc, 0,
        "clock_gettime(CLOCK_THREAD_CPUTIME_ID) exists on Linux"
    );
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// RFC 1071 over the concatenation of `parts`: the Internet checksum, as a textbook loop.
pub fn rfc1071(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum = 0u64;
    for pair in bytes.chunks(2) {
        sum += u64::from(pair[0]) << 8 | pair.get(1).copied().map_or(0, u64::from);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet (`dst_mac` ← `src_mac`) + IPv6 frame carrying `body` as `next` header with
/// hop limit `hop`; when `csum_at` is given, the upper-layer checksum at that offset of
/// `body` is filled in (RFC 8200 §8.1 pseudo-header).
pub fn frame6_raw(
    (dst_mac, src_mac): ([u8; 6], [u8; 6]),
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    hop: u8,
    mut body: Vec<u8>,
    csum_at: Option<usize>,
) -> Vec<u8> {
    if let Some(at) = csum_at {
        let mut pseudo = src.octets().to_vec();
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&(body.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, next]);
        let c = rfc1071(&[&pseudo, &body]);
        body[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(body.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, hop]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&body);
    f
}

/// An Ethernet + IPv6 + TCP (6, a SYN) or UDP (17) frame with a valid checksum, hop
/// limit 64.
pub fn frame6(
    macs: ([u8; 6], [u8; 6]),
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    protocol: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut l4 = src.1.to_be_bytes().to_vec();
    l4.extend_from_slice(&dst.1.to_be_bytes());
    let at = if protocol == 6 {
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        16
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        6
    };
    l4.extend_from_slice(payload);
    frame6_raw(macs, src.0, dst.0, protocol, 64, l4, Some(at))
}

/// The upper-layer checksum of the IPv6 packet at `ip` (its header first) verifies.
pub fn checksum6_valid(ip: &[u8]) -> bool {
    let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let mut pseudo = ip[8..40].to_vec();
    pseudo.extend_from_slice(&(plen as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, ip[6]]);
    rfc1071(&[&pseudo, &ip[40..40 + plen]]) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 §3's worked example: words 0001 f203 f4f5 f6f7 sum to ddf2 (complemented).
    #[test]
    fn rfc1071_example_and_odd_length() {
        assert_eq!(
            rfc1071(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]),
            !0xddf2
        );
        // An odd trailing byte is padded with zero on the right.
        assert_eq!(rfc1071(&[&[0x12]]), rfc1071(&[&[0x12, 0x00]]));
        assert_eq!(
            rfc1071(&[&[0x00, 0x01], &[0xf2, 0x03]]),
            rfc1071(&[&[0, 1, 0xf2, 3]])
        );
    }

    #[test]
    fn frame6_carries_a_valid_checksum_and_a_broken_one_is_seen() {
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8::2".parse().unwrap();
        for proto in [6u8, 17] {
            let mut f = frame6(([2; 6], [4; 6]), (a, 1000), (b, 80), proto, b"hi");
            assert_eq!(&f[12..14], &[0x86, 0xdd]);
            assert_eq!(f[20], proto);
            assert!(checksum6_valid(&f[14..]));
            let last = f.len() - 1;
            f[last] ^= 1;
            assert!(!checksum6_valid(&f[14..]));
        }
    }
}
