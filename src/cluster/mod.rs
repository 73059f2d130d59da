//! Upstream clusters at run time: the compiled endpoint set and the load-balancing
//! decision.
//!
//! A [`Balancer`] is immutable and built on the control plane when a route table is
//! compiled; a pick takes the worker's own [`LbState`] (random generator, round-robin
//! cursor), so picking never locks, never allocates, and never touches another worker's
//! memory except to read the endpoint counters for `least_request`.

pub mod active;
pub mod dns;
pub mod health;
pub mod maglev;
pub mod outlier;
pub mod priority;

use std::net::SocketAddr;

use crate::config::LbPolicy;
use maglev::Maglev;

/// The precomputed part of a load-balancing policy.
#[derive(Debug, Clone)]
pub enum Balancer {
    /// A smooth weighted schedule (nginx's algorithm, unrolled once): endpoint indices in
    /// the order they are to be used.
    RoundRobin {
        schedule: Box<[u16]>,
    },
    /// Power of two choices on active connections per weight.
    LeastRequest {
        cumulative: Box<[u32]>,
    },
    Random {
        cumulative: Box<[u32]>,
    },
    /// Consistent hashing keyed by the client's source IP.
    Maglev(Box<Maglev>),
}

/// Largest round-robin schedule we unroll; heavier weight sets are scaled down to fit.
const MAX_SCHEDULE: u64 = 1 << 16;

impl Balancer {
    /// Build for a cluster's endpoints. An empty cluster gets an empty round-robin
    /// schedule; callers check for no endpoints before picking.
    pub fn build(policy: LbPolicy, endpoints: &[SocketAddr], weights: &[u32]) -> Balancer {
        debug_assert_eq!(endpoints.len(), weights.len());
        match policy {
            _ if endpoints.is_empty() => Balancer::RoundRobin {
                schedule: Box::new([]),
            },
            LbPolicy::RoundRobin => Balancer::RoundRobin {
                schedule: smooth_schedule(weights),
            },
            LbPolicy::LeastRequest => Balancer::LeastRequest {
                cumulative: cumulative(weights),
            },
            LbPolicy::Random => Balancer::Random {
                cumulative: cumulative(weights),
            },
            // Ring hash is served by the Maglev table: both are consistent hashing, and
            // Maglev's lookup is one array read instead of a ring search.
            LbPolicy::Maglev | LbPolicy::RingHash => {
                let keys: Vec<Vec<u8>> = endpoints
                    .iter()
                    .map(|e| e.to_string().into_bytes())
                    .collect();
                let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
                let size = if endpoints.len() * 100 < maglev::DEFAULT_TABLE_SIZE {
                    maglev::DEFAULT_TABLE_SIZE
                } else {
                    655_373 // prime; for clusters beyond ~650 endpoints
                };
                Balancer::Maglev(Box::new(Maglev::build(&refs, weights, size)))
            }
        }
    }

    /// Choose an endpoint. `active(i)` reports endpoint `i`'s open connections (only
    /// `least_request` calls it). Returns an index into the cluster's endpoints.
    #[inline]
    pub fn pick(
        &self,
        st: &mut LbState,
        cursor: &mut u32,
        source: Option<SocketAddr>,
        active: impl Fn(usize) -> u64,
    ) -> usize {
        self.pick_salted(st, cursor, source, None, active, 0)
    }

    /// As [`Balancer::pick`]; a non-zero `salt` draws again when the first choice cannot
    /// be used (consistent hashing moves the key to another, still deterministic, slot;
    /// the other policies draw afresh anyway).
    #[inline]
    pub fn pick_salted(
        &self,
        st: &mut LbState,
        cursor: &mut u32,
        source: Option<SocketAddr>,
        key: Option<u64>,
        active: impl Fn(usize) -> u64,
        salt: u64,
    ) -> usize {
        match self {
            Balancer::RoundRobin { schedule } => {
                let i = *cursor as usize % schedule.len();
                *cursor = cursor.wrapping_add(1);
                schedule[i] as usize
            }
            Balancer::Random { cumulative } => weighted(cumulative, st.next_u32()),
            Balancer::LeastRequest { cumulative } => {
                let a = weighted(cumulative, st.next_u32());
                let b = weighted(cumulative, st.next_u32());
                let weight = |i: usize| {
                    u64::from(cumulative[i] - if i == 0 { 0 } else { cumulative[i - 1] })
                };
                // Compare active/weight without division: a_active * w_b vs b_active * w_a.
                if active(a) * weight(b) <= active(b) * weight(a) {
                    a
                } else {
                    b
                }
            }
            Balancer::Maglev(m) => {
                let h = match (key, source) {
                    (Some(k), _) => k,
                    (None, source) => match source {
                        Some(SocketAddr::V4(s)) => maglev::hash64(&s.ip().octets(), 0),
                        Some(SocketAddr::V6(s)) => maglev::hash64(&s.ip().octets(), 0),
                        None => u64::from(st.next_u32()),
                    },
                };
                m.lookup(if salt == 0 {
                    h
                } else {
                    maglev::mix64(h ^ salt)
                })
            }
        }
    }
}

/// The endpoint index that cumulative weight `r % total` falls into.
#[inline]
pub fn weighted(cumulative: &[u32], r: u32) -> usize {
    let total = *cumulative.last().unwrap_or(&1);
    let x = r % total.max(1);
    cumulative.partition_point(|&c| c <= x)
}

pub fn cumulative(weights: &[u32]) -> Box<[u32]> {
    let mut sum = 0u32;
    weights
        .iter()
        .map(|w| {
            sum = sum.saturating_add((*w).max(1));
            sum
        })
        .collect()
}

/// nginx's smooth weighted round robin, unrolled over one full period so a pick is an
/// array read. Spreads a heavy endpoint's turns instead of bunching them.
fn smooth_schedule(weights: &[u32]) -> Box<[u16]> {
    let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
    // Scale weights down when one period would be too long to unroll.
    let scale = total.div_ceil(MAX_SCHEDULE).max(1);
    let w: Vec<i64> = weights
        .iter()
        .map(|&x| (u64::from(x.max(1)) / scale).max(1) as i64)
        .collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    (0..total)
        .map(|_| {
            let mut best = 0;
            for i in 0..w.len() {
                current[i] += w[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best as u16
        })
        .collect()
}

/// A worker's private load-balancing state.
#[derive(Debug, Clone)]
pub struct LbState {
    rng: u64,
    /// The consistent-hash key of the request about to pick (set by the HTTP proxy,
    /// taken by the next pick so it never leaks to another one).
    key: Option<u64>,
}

impl LbState {
    pub fn new(seed: u64) -> Self {
        LbState {
            rng: maglev::mix64(seed ^ 0x7469_636b_6d65_7368) | 1,
            key: None,
        }
    }

    /// Hash the next pick on `key` instead of the source address.
    #[inline]
    pub fn set_key(&mut self, key: Option<u64>) {
        self.key = key;
    }

    #[inline]
    pub fn take_key(&mut self) -> Option<u64> {
        self.key.take()
    }

    /// xorshift64*: fast, good enough to spread load, not for anything secret.
    #[inline]
    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)))
            .collect()
    }

    fn histogram(
        b: &Balancer,
        n: usize,
        picks: usize,
        active: &dyn Fn(usize) -> u64,
    ) -> Vec<usize> {
        let mut st = LbState::new(42);
        let mut cursor = 0;
        let mut h = vec![0; n];
        for i in 0..picks {
            let src = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 5555));
            h[b.pick(&mut st, &mut cursor, Some(src), active)] += 1;
        }
        h
    }

    #[test]
    fn round_robin_honours_weights_smoothly() {
        let b = Balancer::build(LbPolicy::RoundRobin, &addrs(2), &[1, 2]);
        let Balancer::RoundRobin { schedule } = &b else {
            unreachable!()
        };
        assert_eq!(&schedule[..], &[1, 0, 1]);
        assert_eq!(histogram(&b, 2, 300, &|_| 0), vec![100, 200]);
    }

    #[test]
    fn huge_weights_are_scaled_to_a_bounded_schedule() {
        let b = Balancer::build(LbPolicy::RoundRobin, &addrs(3), &[10_000, 10_000, 5_000]);
        let Balancer::RoundRobin { schedule } = &b else {
            unreachable!()
        };
        assert!(schedule.len() as u64 <= MAX_SCHEDULE);
    }

    #[test]
    fn random_follows_weights() {
        let b = Balancer::build(LbPolicy::Random, &addrs(2), &[1, 3]);
        let h = histogram(&b, 2, 40_000, &|_| 0);
        let share = h[1] as f64 / 40_000.0;
        assert!((0.73..0.77).contains(&share), "{h:?}");
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let b = Balancer::build(LbPolicy::LeastRequest, &addrs(3), &[1, 1, 1]);
        let h = histogram(&b, 3, 3_000, &|i| if i == 0 { 100 } else { 1 });
        // Endpoint 0 only wins when both choices land on it (1/9 of picks).
        assert!(h[0] < 3_000 / 6, "{h:?}");
    }

    #[test]
    fn maglev_is_sticky_per_source_ip() {
        let b = Balancer::build(LbPolicy::Maglev, &addrs(4), &[1; 4]);
        let mut st = LbState::new(1);
        let src = |p| Some(SocketAddr::from(([10, 1, 2, 3], p)));
        let first = b.pick(&mut st, &mut 0, src(1000), |_| 0);
        for p in 1001..1100 {
            assert_eq!(b.pick(&mut st, &mut 0, src(p), |_| 0), first);
        }
        let h = histogram(&b, 4, 40_000, &|_| 0);
        assert!(h.iter().all(|&c| (9_000..11_000).contains(&c)), "{h:?}");
    }

    #[test]
    fn weighted_pick_bounds() {
        let c = cumulative(&[95, 5]);
        assert_eq!(weighted(&c, 0), 0);
        assert_eq!(weighted(&c, 94), 0);
        assert_eq!(weighted(&c, 95), 1);
        assert_eq!(weighted(&c, 99), 1);
        assert_eq!(weighted(&c, 100), 0);
    }
}
