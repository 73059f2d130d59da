//! Upstream clusters at run time: the compiled endpoint set and the load-balancing
//! decision.
//!
//! A [`Balancer`] is immutable and built on the control plane when a route table is
//! compiled; a pick takes the worker's own [`LbState`] (random generator, round-robin
//! cursor), so picking never locks, never allocates, and never touches another worker's
//! memory except to read the endpoint counters for `least_request` (and bounded-load
//! hashing) and the slow-start scales the control plane publishes ([`slow_start`]).

pub mod active;
pub mod dns;
pub mod health;
pub mod maglev;
pub mod outlier;
pub mod priority;
pub mod ring;
pub mod slow_start;

use std::net::SocketAddr;

use crate::config::{LbPolicy, RingHashFunction};
use maglev::Maglev;
use ring::Ring;

/// The precomputed part of a load-balancing policy.
#[derive(Debug, Clone)]
pub enum Balancer {
    /// A smooth weighted schedule (nginx's algorithm, unrolled once): endpoint indices in
    /// the order they are to be used.
    RoundRobin {
        schedule: Box<[u16]>,
    },
    /// Envoy's least request. Equal weights: `choices` endpoints drawn at random, the
    /// one with the fewest active requests wins. Different weights: each endpoint's
    /// share is `weight / (active + 1)^bias` ([`least_loaded_weighted`]).
    LeastRequest {
        cumulative: Box<[u32]>,
        choices: u32,
        bias: f64,
        equal_weights: bool,
    },
    Random {
        cumulative: Box<[u32]>,
    },
    /// Consistent hashing, one array read per pick.
    Maglev(Box<Maglev>),
    /// Consistent hashing on Envoy's ring, one binary search per pick.
    RingHash(Box<Ring>),
}

/// Largest round-robin schedule we unroll; heavier weight sets are scaled down to fit.
const MAX_SCHEDULE: u64 = 1 << 16;

/// Candidates a weighted least-request pick draws before it settles for the least
/// loaded of them (see [`least_loaded_weighted`]).
const MAX_LOAD_DRAWS: u32 = 16;

/// A cluster's policy and its policy-specific settings (Envoy's `*_lb_config`),
/// defaults filled in. Built once per cluster on the control plane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LbOptions {
    pub policy: LbPolicy,
    pub min_ring_size: u64,
    pub max_ring_size: u64,
    pub ring_hash_function: RingHashFunction,
    /// `None`: 65537, or 655373 for clusters beyond ~650 endpoints.
    pub maglev_table_size: Option<u64>,
    pub choice_count: u32,
    pub active_request_bias: f64,
    /// `round_robin`/`least_request`: slow start ([`slow_start`]).
    pub slow_start: Option<slow_start::SlowStart>,
    /// `ring_hash`/`maglev`: bounded loads, percent of the average (0: unbounded).
    pub hash_balance_factor: u32,
    /// `ring_hash`/`maglev`: endpoints are placed by host name ([`hash_name`]).
    pub use_hostname_for_hashing: bool,
}

impl LbOptions {
    /// `policy` with Envoy's defaults.
    pub fn new(policy: LbPolicy) -> Self {
        LbOptions {
            policy,
            min_ring_size: ring::DEFAULT_MIN_RING_SIZE,
            max_ring_size: ring::MAX_RING_SIZE,
            ring_hash_function: RingHashFunction::XxHash,
            maglev_table_size: None,
            choice_count: 2,
            active_request_bias: 1.0,
            slow_start: None,
            hash_balance_factor: 0,
            use_hostname_for_hashing: false,
        }
    }

    /// A validated cluster's options.
    pub fn of(c: &crate::config::Cluster) -> Self {
        let mut o = LbOptions::new(c.lb_policy);
        if let Some(r) = &c.ring_hash_lb_config {
            o.min_ring_size = r.minimum_ring_size.unwrap_or(o.min_ring_size);
            o.max_ring_size = r.maximum_ring_size.unwrap_or(o.max_ring_size);
            o.ring_hash_function = r.hash_function.unwrap_or_default();
        }
        o.maglev_table_size = c.maglev_lb_config.as_ref().and_then(|m| m.table_size);
        if let Some(l) = &c.least_request_lb_config {
            o.choice_count = l.choice_count.unwrap_or(o.choice_count);
            if let Some(b) = &l.active_request_bias {
                o.active_request_bias = b.default_value;
            }
        }
        let slow = match c.lb_policy {
            LbPolicy::RoundRobin => c
                .round_robin_lb_config
                .as_ref()
                .and_then(|r| r.slow_start_config.as_ref()),
            LbPolicy::LeastRequest => c
                .least_request_lb_config
                .as_ref()
                .and_then(|r| r.slow_start_config.as_ref()),
            _ => None,
        };
        o.slow_start = slow.and_then(slow_start::SlowStart::of);
        if let Some(h) = c
            .consistent_hashing_lb_config
            .as_ref()
            .filter(|_| matches!(c.lb_policy, LbPolicy::RingHash | LbPolicy::Maglev))
        {
            o.hash_balance_factor = h.hash_balance_factor.unwrap_or(0);
            o.use_hostname_for_hashing = h.use_hostname_for_hashing.unwrap_or(false);
        }
        o
    }
}

/// The host name a consistent-hash cluster with `use_hostname_for_hashing` places an
/// endpoint by: its `hostname`, else its `strict_dns` name (Envoy: the host's hostname,
/// the DNS name for STRICT_DNS). `None`: it has neither.
pub fn hash_name(e: &crate::config::Endpoint) -> Option<String> {
    match (&e.hostname, &e.address) {
        (Some(h), _) => Some(h.clone()),
        (None, crate::config::EndpointAddress::Dns { host, .. }) => Some(host.to_ascii_lowercase()),
        (None, crate::config::EndpointAddress::Ip(_)) => None,
    }
}

impl Balancer {
    /// Build for a cluster's endpoints with the policy's defaults.
    pub fn build(policy: LbPolicy, endpoints: &[SocketAddr], weights: &[u32]) -> Balancer {
        Balancer::build_with(&LbOptions::new(policy), endpoints, weights)
    }

    /// Build for a cluster's endpoints. An empty cluster gets an empty round-robin
    /// schedule; callers check for no endpoints before picking.
    pub fn build_with(o: &LbOptions, endpoints: &[SocketAddr], weights: &[u32]) -> Balancer {
        // Consistent hashing keys an endpoint by its address as text ("1.2.3.4:80",
        // "[::1]:80"), as Envoy does, so the same endpoints give the same table.
        let names: Vec<Vec<u8>> = match o.policy {
            LbPolicy::Maglev | LbPolicy::RingHash => endpoints
                .iter()
                .map(|e| e.to_string().into_bytes())
                .collect(),
            _ => vec![Vec::new(); endpoints.len()],
        };
        Balancer::build_named(o, &names, weights)
    }

    /// Build for endpoints known by the keys consistent hashing places them by (their
    /// address as text, or their host name with `use_hostname_for_hashing`); other
    /// policies look only at how many there are.
    pub fn build_named(o: &LbOptions, keys: &[Vec<u8>], weights: &[u32]) -> Balancer {
        debug_assert_eq!(keys.len(), weights.len());
        let refs = || -> Vec<&[u8]> { keys.iter().map(Vec::as_slice).collect() };
        match o.policy {
            _ if keys.is_empty() => Balancer::RoundRobin {
                schedule: Box::new([]),
            },
            LbPolicy::RoundRobin => Balancer::RoundRobin {
                schedule: smooth_schedule(weights),
            },
            LbPolicy::LeastRequest => Balancer::LeastRequest {
                cumulative: cumulative(weights),
                choices: o.choice_count.max(1),
                bias: o.active_request_bias.max(0.0),
                equal_weights: weights.iter().all(|&w| w.max(1) == weights[0].max(1)),
            },
            LbPolicy::Random => Balancer::Random {
                cumulative: cumulative(weights),
            },
            LbPolicy::Maglev => {
                let refs = refs();
                let size = maglev::table_size(o.maglev_table_size, refs.len());
                Balancer::Maglev(Box::new(Maglev::build(&refs, weights, size)))
            }
            LbPolicy::RingHash => {
                let refs = refs();
                Balancer::RingHash(Box::new(Ring::build(
                    &refs,
                    weights,
                    o.min_ring_size,
                    o.max_ring_size,
                    o.ring_hash_function,
                )))
            }
        }
    }

    /// Consistent hashing: a pick follows the request's hash key (or source address).
    #[inline]
    pub fn is_hashing(&self) -> bool {
        matches!(self, Balancer::Maglev(_) | Balancer::RingHash(_))
    }

    /// The policy's config name.
    pub fn name(&self) -> &'static str {
        match self {
            Balancer::RoundRobin { .. } => "round_robin",
            Balancer::LeastRequest { .. } => "least_request",
            Balancer::Random { .. } => "random",
            Balancer::Maglev(_) => "maglev",
            Balancer::RingHash(_) => "ring_hash",
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
            Balancer::LeastRequest {
                cumulative,
                choices,
                bias,
                equal_weights,
            } => {
                if *equal_weights {
                    // Envoy's N choices: uniform draws, the first of the least busy.
                    let n = cumulative.len() as u32;
                    let mut best = (st.next_u32() % n) as usize;
                    let mut least = active(best);
                    for _ in 1..*choices {
                        let c = (st.next_u32() % n) as usize;
                        let a = active(c);
                        if a < least {
                            (best, least) = (c, a);
                        }
                    }
                    best
                } else {
                    least_loaded_weighted(cumulative, *bias, st, &active, |_| slow_start::FULL)
                }
            }
            Balancer::Maglev(_) | Balancer::RingHash(_) => {
                let h = match (key, source) {
                    (Some(k), _) => k,
                    (None, Some(SocketAddr::V4(s))) => maglev::hash64(&s.ip().octets(), 0),
                    (None, Some(SocketAddr::V6(s))) => maglev::hash64(&s.ip().octets(), 0),
                    // Nothing to hash: a random point, as Envoy does.
                    (None, None) => random_key(st),
                };
                let h = if salt == 0 {
                    h
                } else {
                    maglev::mix64(h ^ salt)
                };
                match self {
                    Balancer::Maglev(m) => m.lookup(h),
                    Balancer::RingHash(r) => r.lookup(h),
                    _ => unreachable!("matched as consistent hashing above"),
                }
            }
        }
    }
}

impl Balancer {
    /// A pick while some endpoints are in slow start: the policy's choice thinned by
    /// each endpoint's weight scale (`scale(i)`, in 1/[`slow_start::FULL`]), so endpoint
    /// `i` gets `weight × scale` of the traffic (see [`slow_start`]). Round robin keeps
    /// its schedule and skips a turn with probability `1 - scale`; least request (equal
    /// weights or not, as Envoy once a host is in slow start) draws by weight and keeps
    /// a draw with probability `scale × (active + 1)^-bias`. At most
    /// [`slow_start::MAX_DRAWS`] draws: then the best-scaled one drawn. Other policies
    /// have no slow start (refused by validation) and pick as usual. No allocation.
    #[inline]
    pub fn pick_scaled(
        &self,
        st: &mut LbState,
        cursor: &mut u32,
        source: Option<SocketAddr>,
        key: Option<u64>,
        active: impl Fn(usize) -> u64,
        scale: impl Fn(usize) -> u32,
    ) -> usize {
        match self {
            Balancer::RoundRobin { schedule } => {
                let mut best = (0usize, 0u32);
                for _ in 0..slow_start::MAX_DRAWS {
                    let i = schedule[*cursor as usize % schedule.len()] as usize;
                    *cursor = cursor.wrapping_add(1);
                    let s = scale(i);
                    if slow_start::keep(s, st.next_u32()) {
                        return i;
                    }
                    if s > best.1 {
                        best = (i, s);
                    }
                }
                best.0
            }
            Balancer::LeastRequest {
                cumulative, bias, ..
            } => least_loaded_weighted(cumulative, *bias, st, &active, scale),
            _ => self.pick_salted(st, cursor, source, key, active, 0),
        }
    }
}

/// A uniformly random 64-bit hash key from the worker's generator.
#[inline]
pub fn random_key(st: &mut LbState) -> u64 {
    (u64::from(st.next_u32()) << 32) | u64::from(st.next_u32())
}

/// Least request with unequal weights: endpoint `i` is chosen with probability
/// proportional to `weight_i × scale_i / (active_i + 1)^bias` (Envoy's formula, with
/// the slow-start scale, [`slow_start::FULL`] outside slow start; bias 0 ignores load).
/// Done by rejection: draw by static weight, keep the draw with probability
/// `scale × (active + 1)^-bias`, which leaves exactly that distribution. When every draw
/// of [`MAX_LOAD_DRAWS`] is rejected (all candidates busy), the best of them wins, so a
/// pick stays O(1) however loaded the cluster is.
#[inline]
fn least_loaded_weighted(
    cumulative: &[u32],
    bias: f64,
    st: &mut LbState,
    active: &impl Fn(usize) -> u64,
    scale: impl Fn(usize) -> u32,
) -> usize {
    let mut best = (0usize, -1.0f64);
    for _ in 0..MAX_LOAD_DRAWS {
        let i = weighted(cumulative, st.next_u32());
        let s = scale(i);
        if bias == 0.0 && s >= slow_start::FULL {
            return i;
        }
        let load = active(i) as f64 + 1.0;
        let keep = if bias == 0.0 {
            1.0
        } else if bias == 1.0 {
            1.0 / load
        } else {
            load.powf(-bias)
        };
        let keep = if s >= slow_start::FULL {
            keep
        } else {
            keep * f64::from(s) / f64::from(slow_start::FULL)
        };
        if f64::from(st.next_u32()) < keep * 4_294_967_296.0 {
            return i;
        }
        if keep > best.1 {
            best = (i, keep);
        }
    }
    best.0
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

    fn least_request(weights: &[u32], choices: u32, bias: f64) -> Balancer {
        let o = LbOptions {
            choice_count: choices,
            active_request_bias: bias,
            ..LbOptions::new(LbPolicy::LeastRequest)
        };
        Balancer::build_with(&o, &addrs(weights.len()), weights)
    }

    #[test]
    fn choice_count_sets_how_hard_load_is_avoided() {
        // Endpoint 0 is busy. One choice is plain random (1/3 of picks); with N
        // choices it wins only when all N draws land on it: (1/3)^N.
        let busy = |i: usize| if i == 0 { 100 } else { 1 };
        let share = |choices| {
            let h = histogram(&least_request(&[1; 3], choices, 1.0), 3, 30_000, &busy);
            h[0] as f64 / 30_000.0
        };
        let (one, two, five) = (share(1), share(2), share(5));
        assert!((0.31..0.356).contains(&one), "1 choice: {one}");
        assert!((0.095..0.127).contains(&two), "2 choices: {two}");
        assert!(five < 0.01, "5 choices: {five}");
    }

    #[test]
    fn active_request_bias_scales_weights_by_load() {
        // Weights 2:1, endpoint 0 has 3 active requests, endpoint 1 none. Envoy's
        // weight / (active + 1)^bias gives endpoint 0: bias 0 → 2/3, bias 1 →
        // (2/4)/(2/4 + 1) = 1/3, bias 2 → (2/16)/(2/16 + 1) = 1/9.
        let load = |i: usize| if i == 0 { 3 } else { 0 };
        let share = |bias| {
            let h = histogram(&least_request(&[2, 1], 2, bias), 2, 40_000, &load);
            h[0] as f64 / 40_000.0
        };
        for (bias, want) in [(0.0, 2.0 / 3.0), (1.0, 1.0 / 3.0), (2.0, 1.0 / 9.0)] {
            let got = share(bias);
            assert!(
                (got - want).abs() < 0.015,
                "bias {bias}: {got}, want {want}"
            );
        }
        // Idle endpoints: the static weights.
        let h = histogram(&least_request(&[2, 1], 2, 1.0), 2, 30_000, &|_| 0);
        assert!((h[0] as f64 / 30_000.0 - 2.0 / 3.0).abs() < 0.015, "{h:?}");
    }

    #[test]
    fn ring_size_and_table_size_shape_the_balancer() {
        let ring = |min, f| {
            let o = LbOptions {
                min_ring_size: min,
                ring_hash_function: f,
                ..LbOptions::new(LbPolicy::RingHash)
            };
            match Balancer::build_with(&o, &addrs(4), &[1; 4]) {
                Balancer::RingHash(r) => r,
                other => unreachable!("{other:?}"),
            }
        };
        assert_eq!(ring(1024, RingHashFunction::XxHash).len(), 1024);
        assert_eq!(ring(64, RingHashFunction::XxHash).len(), 64);
        assert_ne!(
            ring(64, RingHashFunction::XxHash).hosts(),
            ring(64, RingHashFunction::MurmurHash2).hosts()
        );
        let o = LbOptions {
            maglev_table_size: Some(131_071),
            ..LbOptions::new(LbPolicy::Maglev)
        };
        match Balancer::build_with(&o, &addrs(4), &[1; 4]) {
            Balancer::Maglev(m) => assert_eq!(m.table().len(), 131_071),
            other => unreachable!("{other:?}"),
        }
        // A ring-hash pick is sticky per source and spreads sources evenly.
        let b = Balancer::build(LbPolicy::RingHash, &addrs(4), &[1; 4]);
        let mut st = LbState::new(3);
        let src = |p| Some(SocketAddr::from(([10, 9, 8, 7], p)));
        let first = b.pick(&mut st, &mut 0, src(1), |_| 0);
        assert!((2..50).all(|p| b.pick(&mut st, &mut 0, src(p), |_| 0) == first));
        let h = histogram(&b, 4, 40_000, &|_| 0);
        assert!(h.iter().all(|&c| (8_000..12_000).contains(&c)), "{h:?}");
    }

    #[test]
    fn nothing_to_hash_picks_at_random() {
        // No key and no source address: Envoy's random point on the ring / table.
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            let b = Balancer::build(policy, &addrs(4), &[1; 4]);
            let mut st = LbState::new(9);
            let mut h = [0u32; 4];
            for _ in 0..20_000 {
                h[b.pick(&mut st, &mut 0, None, |_| 0)] += 1;
            }
            assert!(
                h.iter().all(|&c| (4_000..6_000).contains(&c)),
                "{policy:?} {h:?}"
            );
        }
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
