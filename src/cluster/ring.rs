//! Envoy's ring hash: consistent hashing on a sorted ring of points (Karger et al.,
//! "Consistent Hashing and Random Trees", STOC 1997), sized and keyed as Envoy's
//! `RING_HASH` load balancer documents it.
//!
//! Owns building the ring on the control plane and the lookup a worker does: the first
//! point whose hash is ≥ the request's, wrapping to the first point. A lookup is one
//! binary search over a flat array of hashes; it never allocates and never writes.
//!
//! Invariants: a built ring is non-empty and sorted by hash; every endpoint with a
//! weight gets points in proportion to its weight (its share of the ring), the
//! lightest one at least `minimum_ring_size × its normalised weight` rounded up, and
//! the ring never exceeds `maximum_ring_size` points (then a light endpoint may get
//! none, as in Envoy). An endpoint's points are keyed `"<address>_<n>"` (`n` from 0),
//! hashed with the configured [`RingHashFunction`], so two proxies with the same
//! endpoints build the same ring.

use std::io::Write;

use crate::config::RingHashFunction;

/// Envoy's default `minimum_ring_size`.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// Envoy's default and largest `maximum_ring_size` (8M points).
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// A built ring: `hashes[i]` is point `i`'s position, `hosts[i]` its endpoint index.
#[derive(Debug, Clone)]
pub struct Ring {
    hashes: Box<[u64]>,
    hosts: Box<[u16]>,
}

impl Ring {
    /// Build for endpoints identified by `keys` (their addresses as text) with
    /// `weights` (0 counts as 1, as elsewhere in the balancer). The caller passes
    /// validated sizes: `1 ≤ min ≤ max ≤ MAX_RING_SIZE`.
    pub fn build(
        keys: &[&[u8]],
        weights: &[u32],
        min: u64,
        max: u64,
        function: RingHashFunction,
    ) -> Ring {
        assert!(!keys.is_empty() && keys.len() == weights.len());
        assert!(keys.len() <= usize::from(u16::MAX));
        let (min, max) = (min.clamp(1, MAX_RING_SIZE), max.clamp(1, MAX_RING_SIZE));
        let total: f64 = weights.iter().map(|&w| f64::from(w.max(1))).sum();
        let lightest = weights
            .iter()
            .map(|&w| f64::from(w.max(1)) / total)
            .fold(1.0, f64::min);
        // Points per unit of normalised weight: enough that the lightest endpoint gets
        // a whole number of points at the minimum size, capped at the maximum.
        let scale = ((lightest * min as f64).ceil() / lightest).min(max as f64);
        let mut points: Vec<(u64, u16)> = Vec::with_capacity(scale.ceil() as usize + 1);
        let mut key = Vec::with_capacity(64);
        let (mut current, mut target) = (0.0f64, 0.0f64);
        for (i, (k, &w)) in keys.iter().zip(weights).enumerate() {
            target += scale * f64::from(w.max(1)) / total;
            let mut n = 0u64;
            while current < target {
                key.clear();
                key.extend_from_slice(k);
                // Writing into a Vec cannot fail.
                let _ = write!(key, "_{n}");
                points.push((hash(function, &key), i as u16));
                n += 1;
                current += 1.0;
            }
        }
        if points.is_empty() {
            // Only reachable through rounding with a maximum below the endpoint count:
            // the first endpoint takes the ring rather than none.
            points.push((hash(function, keys[0]), 0));
        }
        points.sort_unstable();
        let (hashes, hosts): (Vec<u64>, Vec<u16>) = points.into_iter().unzip();
        Ring {
            hashes: hashes.into_boxed_slice(),
            hosts: hosts.into_boxed_slice(),
        }
    }

    /// The endpoint owning `hash`: the first point at or after it, else the first one.
    #[inline]
    pub fn lookup(&self, hash: u64) -> usize {
        let i = self.hashes.partition_point(|&p| p < hash);
        usize::from(self.hosts[if i == self.hashes.len() { 0 } else { i }])
    }

    /// Points on the ring.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Never true for a built ring (kept for the `len` convention).
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The endpoint of each point, in ring order.
    pub fn hosts(&self) -> &[u16] {
        &self.hosts
    }
}

/// A ring point's hash.
pub fn hash(function: RingHashFunction, key: &[u8]) -> u64 {
    match function {
        RingHashFunction::XxHash => xxhash_rust::xxh64::xxh64(key, 0),
        RingHashFunction::MurmurHash2 => murmur_hash2(key, STD_HASH_SEED),
    }
}

/// The seed libstdc++ gives `std::hash<std::string>`, which Envoy's `MURMUR_HASH_2`
/// reproduces.
pub const STD_HASH_SEED: u64 = 0xc70f_6907;

/// libstdc++'s 64-bit `_Hash_bytes` (Austin Appleby's MurmurHash2 adapted to 64-bit
/// words), the function behind `std::hash<std::string>` on 64-bit Linux and so behind
/// Envoy's `MURMUR_HASH_2`. Written from the algorithm's description; the tests pin it
/// to values `std::hash<std::string>` printed with g++ on this machine.
pub fn murmur_hash2(key: &[u8], seed: u64) -> u64 {
    const MUL: u64 = (0xc6a4_a793 << 32) + 0x5bd1_e995;
    let shift_mix = |v: u64| v ^ (v >> 47);
    let mut hash = seed ^ (key.len() as u64).wrapping_mul(MUL);
    let mut words = key.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let data = shift_mix(u64::from_le_bytes(b).wrapping_mul(MUL)).wrapping_mul(MUL);
        hash ^= data;
        hash = hash.wrapping_mul(MUL);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        // The tail bytes little-endian, the last byte most significant.
        let data = tail
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        hash ^= data;
        hash = hash.wrapping_mul(MUL);
    }
    shift_mix(shift_mix(hash).wrapping_mul(MUL))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("127.0.0.1:{}", 9000 + i).into_bytes())
            .collect()
    }

    fn ring(n: usize, w: &[u32], min: u64, max: u64, f: RingHashFunction) -> Ring {
        let k = keys(n);
        let refs: Vec<&[u8]> = k.iter().map(|k| k.as_slice()).collect();
        Ring::build(&refs, w, min, max, f)
    }

    #[test]
    fn murmur_matches_libstdcxx_std_hash() {
        // `std::hash<std::string>{}(s)` from g++ 12 / libstdc++ on x86-64.
        for (s, want) in [
            ("", 0x553e_9390_1e46_2a6e),
            ("a", 0x454d_dee4_88c1_ed6b),
            ("127.0.0.1:9000_0", 0xbdbc_4353_04c4_08a2),
            ("hello world!", 0x5b83_cb3a_55a9_669f),
            ("12345678", 0x8c5b_90a3_3a04_dca5),
        ] {
            assert_eq!(murmur_hash2(s.as_bytes(), STD_HASH_SEED), want, "{s:?}");
        }
    }

    #[test]
    fn xx_hash_is_xxh64_seed_0() {
        // The reference value of XXH64("", 0).
        assert_eq!(hash(RingHashFunction::XxHash, b""), 0xef46_db37_51d8_e999);
    }

    #[test]
    fn ring_size_follows_minimum_and_maximum() {
        let x = RingHashFunction::XxHash;
        // Equal weights: the minimum exactly (each endpoint min/n points).
        assert_eq!(ring(4, &[1; 4], 1024, MAX_RING_SIZE, x).len(), 1024);
        assert_eq!(ring(4, &[1; 4], 64, MAX_RING_SIZE, x).len(), 64);
        // Weights 1:3 at minimum 10: the light one needs ceil(2.5) = 3 points → 12.
        let r = ring(2, &[1, 3], 10, MAX_RING_SIZE, x);
        assert_eq!(r.len(), 12);
        assert_eq!(r.hosts().iter().filter(|&&h| h == 0).count(), 3);
        // The maximum caps it: weights 1:10000 would need 10001 points.
        let r = ring(2, &[1, 10_000], 1024, 2000, x);
        assert_eq!(r.len(), 2000);
        assert_eq!(r.hosts().iter().filter(|&&h| h == 0).count(), 1);
    }

    #[test]
    fn hash_function_changes_the_placement_not_the_shares() {
        let a = ring(4, &[1; 4], 1000, MAX_RING_SIZE, RingHashFunction::XxHash);
        let b = ring(
            4,
            &[1; 4],
            1000,
            MAX_RING_SIZE,
            RingHashFunction::MurmurHash2,
        );
        assert_eq!(a.len(), b.len());
        assert_ne!(a.hosts(), b.hosts());
        for r in [&a, &b] {
            for h in 0..4u16 {
                assert_eq!(r.hosts().iter().filter(|&&x| x == h).count(), 250);
            }
        }
    }

    #[test]
    fn lookup_is_the_next_point_clockwise() {
        let r = ring(3, &[1; 3], 30, MAX_RING_SIZE, RingHashFunction::XxHash);
        for i in 0..r.len() {
            let h = r.hashes[i];
            assert_eq!(r.lookup(h), usize::from(r.hosts[i]));
            if h > 0 && (i == 0 || r.hashes[i - 1] < h - 1) {
                assert_eq!(r.lookup(h - 1), usize::from(r.hosts[i]));
            }
        }
        // Past the last point: wraps to the first.
        let last = *r.hashes.last().unwrap_or(&0);
        if last < u64::MAX {
            assert_eq!(r.lookup(last + 1), usize::from(r.hosts[0]));
        }
    }

    #[test]
    fn a_bigger_ring_balances_better() {
        // Share of keys per endpoint over a fixed key sample: spread narrows with size.
        let spread = |min| {
            let r = ring(4, &[1; 4], min, MAX_RING_SIZE, RingHashFunction::XxHash);
            let mut count = [0u32; 4];
            for i in 0..40_000u64 {
                count[r.lookup(crate::cluster::maglev::mix64(i))] += 1;
            }
            count.iter().max().unwrap_or(&0) - count.iter().min().unwrap_or(&0)
        };
        let (small, big) = (spread(8), spread(65_536));
        assert!(big < small, "spread at 8 points {small}, at 64Ki {big}");
        assert!(big < 40_000 / 4 / 10, "64Ki points within 10%: {big}");
    }

    #[test]
    fn removing_an_endpoint_only_moves_its_keys() {
        let x = RingHashFunction::XxHash;
        // 1000 points per endpoint both times: the survivors keep their points.
        let before = ring(5, &[1; 5], 5000, MAX_RING_SIZE, x);
        let after = ring(4, &[1; 4], 4000, MAX_RING_SIZE, x);
        let (mut kept, mut moved) = (0, 0);
        for i in 0..20_000u64 {
            let h = crate::cluster::maglev::mix64(i);
            let b = before.lookup(h);
            if b < 4 {
                kept += 1;
                if after.lookup(h) != b {
                    moved += 1;
                }
            }
        }
        assert!(kept > 15_000, "{kept}");
        assert_eq!(moved, 0);
    }
}
