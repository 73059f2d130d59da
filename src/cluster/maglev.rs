//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, §3.4), with weights.
//!
//! The lookup table is built on the control plane; a lookup is one hash and one array
//! read. Removing one of N backends moves only about 1/N of the keys (the paper's minimal
//! disruption property), which the tests check.

/// Default table size: a prime well above 100 × the backends we expect, as §3.4 advises.
pub const DEFAULT_TABLE_SIZE: usize = 65_537;

/// Envoy's largest `maglev_lb_config.table_size` (a prime).
pub const MAX_TABLE_SIZE: u64 = 5_000_011;

/// The table size for `endpoints` backends: the configured one (validated prime) if any,
/// else [`DEFAULT_TABLE_SIZE`], or the prime 655,373 beyond ~650 backends (so the table
/// stays over 100 × the backends).
pub fn table_size(configured: Option<u64>, endpoints: usize) -> usize {
    match configured {
        Some(n) => n as usize,
        None if endpoints * 100 < DEFAULT_TABLE_SIZE => DEFAULT_TABLE_SIZE,
        None => 655_373,
    }
}

/// Trial division; for table sizes (≤ [`MAX_TABLE_SIZE`]: ≤ 2237 divisions).
pub fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 {
        return false;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// A built lookup table: slot → backend index.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Box<[u16]>,
}

impl Maglev {
    /// Build for backends identified by `keys` (stable names, e.g. their addresses) with
    /// `weights` (≥ 1). `size` must be prime (so every skip walks the whole table);
    /// with fewer slots than backends some backends get none.
    pub fn build(keys: &[&[u8]], weights: &[u32], size: usize) -> Maglev {
        assert!(!keys.is_empty() && keys.len() == weights.len() && size >= 2);
        assert!(keys.len() <= u16::MAX as usize);
        let n = keys.len();
        let m = size as u64;
        // Permutation of backend i: offset + j*skip (mod m), skip in 1..m.
        let (offset, skip): (Vec<u64>, Vec<u64>) = keys
            .iter()
            .map(|k| {
                (
                    hash64(k, 0x6d61676c) % m,
                    hash64(k, 0x65763031) % (m - 1) + 1,
                )
            })
            .unzip();
        let max_w = u64::from(*weights.iter().max().unwrap_or(&1)).max(1);
        let mut next = vec![0u64; n];
        let mut taken = vec![0u64; n];
        const EMPTY: u16 = u16::MAX;
        let mut table = vec![EMPTY; size];
        let mut filled = 0usize;
        let mut round = 0u64;
        // Weighted population: in round r, backend i may claim a slot while it holds
        // fewer than r * w_i / max_w slots, so claims are proportional to weight.
        'fill: loop {
            round += 1;
            for i in 0..n {
                if taken[i] * max_w >= round * u64::from(weights[i].max(1)) {
                    continue;
                }
                loop {
                    let c = ((offset[i] + next[i] * skip[i]) % m) as usize;
                    next[i] += 1;
                    if table[c] == EMPTY {
                        table[c] = i as u16;
                        taken[i] += 1;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break 'fill;
                }
            }
        }
        Maglev {
            table: table.into_boxed_slice(),
        }
    }

    /// The backend for a flow key hash.
    #[inline]
    pub fn lookup(&self, hash: u64) -> usize {
        self.table[(hash % self.table.len() as u64) as usize] as usize
    }

    pub fn table(&self) -> &[u16] {
        &self.table
    }
}

/// 64-bit FNV-1a with a seed, finished with the splitmix64 mixer. Stable across processes
/// and hosts, so every tickmesh instance builds the same table from the same backends.
#[inline]
pub fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix64(h)
}

/// A flow's 5-tuple hash for packet load balancing (DPDK engine): symmetric neither in
/// direction nor across hosts' byte order; two mixing rounds over the packed tuple.
#[inline]
pub fn hash_flow(src: u32, dst: u32, src_port: u16, dst_port: u16, protocol: u8) -> u64 {
    let a = (u64::from(src) << 32) | u64::from(dst);
    let b = (u64::from(src_port) << 24) | (u64::from(dst_port) << 8) | u64::from(protocol);
    mix64(mix64(a ^ 0x9e37_79b9_7f4a_7c15) ^ b)
}

#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:80", i / 256, i % 256).into_bytes())
            .collect()
    }

    fn build(k: &[Vec<u8>], w: &[u32]) -> Maglev {
        let refs: Vec<&[u8]> = k.iter().map(|k| k.as_slice()).collect();
        Maglev::build(&refs, w, DEFAULT_TABLE_SIZE)
    }

    #[test]
    fn primes() {
        let small: Vec<u64> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(DEFAULT_TABLE_SIZE as u64) && is_prime(MAX_TABLE_SIZE));
        assert!(is_prime(655_373) && !is_prime(65_536) && !is_prime(4_999_997));
    }

    #[test]
    fn a_table_smaller_than_the_backends_still_builds() {
        let k = keys(10);
        let refs: Vec<&[u8]> = k.iter().map(|k| k.as_slice()).collect();
        let t = Maglev::build(&refs, &[1; 10], 7);
        assert_eq!(t.table().len(), 7);
    }

    #[test]
    fn balanced_within_a_few_percent() {
        let k = keys(10);
        let t = build(&k, &[1; 10]);
        let mut count = [0usize; 10];
        for &s in t.table() {
            count[s as usize] += 1;
        }
        let ideal = DEFAULT_TABLE_SIZE / 10;
        for c in count {
            assert!(c.abs_diff(ideal) * 100 / ideal <= 2, "{count:?}");
        }
    }

    #[test]
    fn weights_are_proportional() {
        let k = keys(3);
        let t = build(&k, &[1, 2, 1]);
        let mut count = [0usize; 3];
        for &s in t.table() {
            count[s as usize] += 1;
        }
        let ratio = count[1] as f64 / count[0] as f64;
        assert!((1.9..2.1).contains(&ratio), "{count:?}");
    }

    #[test]
    fn removing_one_backend_moves_about_one_nth() {
        let n = 10;
        let k = keys(n);
        let before = build(&k, &[1; 10]);
        let rest: Vec<Vec<u8>> = k[..n - 1].to_vec();
        let after = build(&rest, &[1; 9]);
        let moved = before
            .table()
            .iter()
            .zip(after.table())
            .filter(|(b, a)| (**b as usize) < n - 1 && b != a)
            .count();
        // Slots of surviving backends that changed owner: ideally 0; the paper reports
        // small extra churn. Keep it under 1% + 1/N of the table.
        let limit = DEFAULT_TABLE_SIZE / 100 + DEFAULT_TABLE_SIZE / n;
        assert!(moved < limit, "moved {moved} of {DEFAULT_TABLE_SIZE}");
    }
}
