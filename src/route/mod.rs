//! The routing snapshot: an immutable, precompiled [`RouteTable`] that the control plane
//! publishes with one atomic pointer swap and workers read once per event batch.
//!
//! Owns compilation (config → table, including binding listener sockets so that a bind
//! failure rejects the apply) and publication. A table never changes after it is built;
//! the hot path finds no `String` to parse and no map to hash — listeners and clusters are
//! addressed by index. Established connections keep the `Arc`s they took; new connections
//! see the new table as soon as their worker starts its next batch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

pub mod http;

use crate::cluster::health::{ClusterHealth, EndpointHealth};
use crate::cluster::outlier::OutlierPolicy;
use crate::cluster::priority::{self, Count, LoadPlan};
use crate::cluster::{cumulative, dns, weighted, Balancer, LbState};
use crate::config::istio::MtlsMode;
use crate::config::{
    Cluster, Config, ConfigError, Discovery, Endpoint, EndpointAddress, LbPolicy, Problem, Protocol,
};
use crate::net::{ListenerSockets, SocketPool};
use crate::telemetry::{ListenerStats, StatsRegistry, UpstreamStats};

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle pooled HTTP upstream connections are closed after this (Envoy keeps them 1 h;
/// shorter here, as most upstreams close idle keep-alive connections within a minute or
/// two and a shorter hold means fewer sends into connections already closed).
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 3;
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One compiled generation of the whole data-plane config.
#[derive(Debug)]
pub struct RouteTable {
    pub generation: u64,
    pub listeners: Box<[ListenerEntry]>,
    pub clusters: Box<[ClusterEntry]>,
    /// The TLS record offload backend (`offload.backend`); a worker builds its engine
    /// with it on its first TLS connection.
    pub offload: crate::config::tls::OffloadBackend,
    /// `offload.cryptodev_driver`: the crypto device the `cryptodev` backend creates.
    pub offload_driver: Option<crate::config::tls::CryptodevDriver>,
    /// Where workers publish their offload engine's counters (`None`: empty table).
    pub offload_stats: Option<Arc<crate::telemetry::OffloadStats>>,
}

#[derive(Debug)]
pub struct ListenerEntry {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub sockets: Arc<ListenerSockets>,
    /// Where TCP/UDP traffic goes; `None` only on an `http` listener without a TCP
    /// fallback cluster.
    pub target: Option<Target>,
    /// 0 means unlimited.
    pub max_connections: u32,
    pub idle_timeout: Duration,
    pub stats: Arc<ListenerStats>,
    /// `http` listeners: their virtual hosts and routes.
    pub http: Option<Arc<http::HttpRoutes>>,
    /// TLS termination (mode STRICT or PERMISSIVE); `None` serves plaintext.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// `http` listeners: request head deadline and body limit.
    pub request_header_timeout: Duration,
    pub max_request_body: u64,
    /// `http` listeners: what happens to `x-forwarded-client-cert`.
    pub xfcc: crate::tls::xfcc::Xfcc,
}

/// Where a listener's connections go (its L4 route).
#[derive(Debug, Clone)]
pub enum Target {
    Cluster(u32),
    /// Cumulative weights and the cluster index for each band.
    Weighted {
        cumulative: Box<[u32]>,
        clusters: Box<[u32]>,
    },
}

impl Target {
    /// The cluster index for a new connection. `r` is a random number (unused for a
    /// single cluster).
    #[inline]
    pub fn pick(&self, r: u32) -> usize {
        match self {
            Target::Cluster(c) => *c as usize,
            Target::Weighted {
                cumulative,
                clusters,
            } => clusters[weighted(cumulative, r)] as usize,
        }
    }
}

#[derive(Debug)]
pub struct ClusterEntry {
    pub name: Arc<str>,
    pub endpoints: Box<[EndpointEntry]>,
    pub balancer: Balancer,
    pub connect_timeout: Duration,
    pub max_connect_attempts: u32,
    /// HTTP: how long an idle pooled connection is kept (see `proxy::http::pool`).
    pub idle_timeout: Duration,
    pub stats: Arc<UpstreamStats>,
    /// TLS origination towards the endpoints.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    /// HTTP circuit-breaker thresholds (Envoy's defaults where unset).
    pub breakers: Breakers,
    /// Shared with the control plane's health tick: how many endpoints are unusable.
    pub health: Arc<ClusterHealth>,
    /// Passive outlier detection, when configured.
    pub outlier: Option<OutlierPolicy>,
    /// Active HTTP health checks, when configured.
    pub health_check: Option<Arc<crate::cluster::active::CheckPolicy>>,
    /// Consistent hashing of HTTP requests: what the key is.
    pub hash_on: HashOn,
    /// Cookie hashing that generates the cookie when a request has none (`cookie_ttl`):
    /// the `Set-Cookie` attributes after the value (`; Max-Age=N; Path=P; HttpOnly`
    /// and CRLF).
    pub cookie_attrs: Option<Box<[u8]>>,
    /// Priority levels (Envoy's `priority`), lowest number first, when the endpoints have
    /// more than one or locality weighting is on; empty otherwise (one level: every
    /// endpoint, `balancer`).
    pub levels: Box<[Level]>,
    /// Envoy's `healthy_panic_threshold` in percent (0: never panic).
    pub panic_threshold: f64,
    /// The spread of traffic over levels and localities under the current health,
    /// recomputed at compile and by the control plane's health tick
    /// ([`ClusterEntry::refresh_plan`]), so it lags a flag change by at most one tick
    /// (20 ms; the pick still skips an unusable endpoint meanwhile). Picks read it only
    /// while some endpoint is unusable: an `ArcSwap` load, no lock, no allocation.
    pub plan: ArcSwap<LoadPlan>,
    /// A cluster of one level without localities: whether it is in panic (the whole
    /// plan in one word; written with `plan`).
    pub single_panic: std::sync::atomic::AtomicBool,
    /// Slow start of joining endpoints (`round_robin`/`least_request`): picks thin the
    /// balancer's choices by the endpoints' published scales while
    /// `health.slow_starting()` is not 0 ([`crate::cluster::slow_start`]).
    pub slow_start: Option<crate::cluster::slow_start::SlowStart>,
    /// Consistent hashing with bounded loads (Envoy's `hash_balance_factor` / 100; 0:
    /// unbounded): an endpoint already serving more than this times its weighted share of
    /// the set's active connections is passed over for the key's next choice.
    pub hash_balance: f64,
    /// Consistent hashing places endpoints by host name (`use_hostname_for_hashing`).
    pub hash_by_name: bool,
}

/// One priority level: its endpoints (indices into `ClusterEntry::endpoints`, which are
/// sorted by priority) and their own balancer; with locality weighting, its localities.
#[derive(Debug)]
pub struct Level {
    pub priority: u32,
    pub members: Box<[u32]>,
    pub balancer: Balancer,
    /// Locality-weighted balancing: the level's localities (empty: off).
    pub localities: Box<[LocalityGroup]>,
    /// Configured weight per locality, and their running sums (all usable).
    pub locality_weights: Box<[u32]>,
    pub locality_cumulative: Box<[u32]>,
}

/// The endpoints of one locality of a level, with their own balancer.
#[derive(Debug)]
pub struct LocalityGroup {
    pub name: Box<str>,
    pub members: Box<[u32]>,
    pub balancer: Balancer,
}

/// The key a consistent-hash cluster hashes an HTTP request on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    SourceIp,
    Header(Box<str>),
    Cookie(Box<str>),
    /// A query parameter's first value (not percent-decoded).
    Query(Box<str>),
}

/// Per-cluster limits an HTTP request checks before it goes upstream; over them it is
/// answered 503 at once. Counts are summed over workers (relaxed reads: approximate by
/// the requests other workers start at the same moment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breakers {
    pub max_connections: u32,
    /// Requests that may wait for a connection (Envoy `max_pending_requests`; per-worker
    /// queues, the count is the cluster's).
    pub max_pending_requests: u32,
    pub max_requests: u32,
    /// Retries in flight at once on the cluster (Envoy `max_retries`; ignored when
    /// `retry_budget` is set).
    pub max_retries: u32,
    /// 0: unlimited.
    pub max_requests_per_connection: u32,
    /// Concurrent retries as parts per million of active requests, and the floor.
    pub retry_budget: Option<(u32, u32)>,
}

impl Breakers {
    /// Envoy's default thresholds.
    pub const DEFAULT: Breakers = Breakers {
        max_connections: 1024,
        max_pending_requests: 1024,
        max_requests: 1024,
        max_retries: 3,
        max_requests_per_connection: 0,
        retry_budget: None,
    };
}

#[derive(Debug)]
pub struct EndpointEntry {
    pub address: SocketAddr,
    pub weight: u32,
    pub stats: Arc<UpstreamStats>,
    /// Outlier / health-check state (survives table swaps, like `stats`).
    pub health: Arc<EndpointHealth>,
    pub priority: u32,
}

impl ClusterEntry {
    /// Requests in flight on the cluster, summed over workers (relaxed reads: the
    /// circuit breakers' approximation, see [`Breakers`]).
    #[inline]
    pub fn active_requests(&self) -> u64 {
        use crate::telemetry::UpstreamCounter::{RqDone, RqTotal};
        self.stats
            .get(RqTotal)
            .saturating_sub(self.stats.get(RqDone))
    }

    /// Upstream connections open to the cluster, summed over workers.
    #[inline]
    pub fn open_connections(&self) -> u64 {
        use crate::telemetry::UpstreamCounter::{CxClosed, CxTotal};
        self.stats
            .get(CxTotal)
            .saturating_sub(self.stats.get(CxClosed))
    }

    /// The endpoint for connect attempt `attempt` (0 first): the balancer's choice, then
    /// the following endpoints in order so a retry never repeats the one that failed.
    /// `None`: no endpoints, or none usable with panic mode disabled.
    #[inline]
    pub fn pick(
        &self,
        st: &mut LbState,
        cursor: &mut u32,
        source: Option<SocketAddr>,
        attempt: u32,
        worker: usize,
    ) -> Option<usize> {
        if self.endpoints.is_empty() {
            return None;
        }
        let active = |i: usize| {
            use crate::telemetry::UpstreamCounter::{CxClosed, CxTotal};
            let s = &self.endpoints[i].stats;
            // Only this worker's slot: approximate, but local and lock-free.
            s.get_worker(worker, CxTotal as usize)
                .saturating_sub(s.get_worker(worker, CxClosed as usize))
        };
        let key = st.take_key();
        // One load of a rarely written word when every endpoint is usable: then level 0
        // takes all traffic (Envoy: a fully available priority 0) with its static
        // locality weights, and no endpoint needs checking.
        let first = if self.health.unusable() == 0 {
            let (b, members) = self.group(0, None, st, key);
            map(
                members,
                self.choose(
                    b,
                    members,
                    st,
                    cursor,
                    source,
                    key,
                    active_in(members, &active),
                ),
            )
        } else {
            self.pick_degraded(st, cursor, source, key, &active, worker)?
        };
        Some(self.endpoint_for_attempt(first, attempt))
    }

    /// The balancer and member set of level `level` (with locality weighting, of the
    /// locality drawn by `locality` cumulative weights, or the static ones). The single
    /// implicit level of a cluster without `levels` is every endpoint.
    #[inline]
    fn group(
        &self,
        level: usize,
        locality: Option<&[u32]>,
        st: &mut LbState,
        key: Option<u64>,
    ) -> (&Balancer, Option<&[u32]>) {
        let Some(l) = self.levels.get(level) else {
            return (&self.balancer, None);
        };
        if l.localities.is_empty() {
            return (&l.balancer, Some(&l.members));
        }
        let cum = match locality {
            Some(c) if c.last().is_some_and(|&t| t > 0) => c,
            _ => &l.locality_cumulative,
        };
        if cum.last().is_none_or(|&t| t == 0) {
            // No locality of the level has a weight: Envoy falls back to the level.
            return (&l.balancer, Some(&l.members));
        }
        let g = &l.localities[weighted(cum, draw(st, key, 17))];
        (&g.balancer, Some(&g.members))
    }

    /// The whole of level `level`, ignoring localities (panic mode, failover walk).
    #[inline]
    fn whole_level(&self, level: usize) -> (&Balancer, Option<&[u32]>) {
        match self.levels.get(level) {
            Some(l) => (&l.balancer, Some(&l.members)),
            None => (&self.balancer, None),
        }
    }

    /// A pick while some endpoint is unusable: the level by the published plan's
    /// priority load; in panic, any endpoint of the level; otherwise a usable one of the
    /// locality the plan's weights draw. A plan a tick behind the flags may send the pick
    /// to a set with nothing usable: then the first level with a usable endpoint serves,
    /// and with none anywhere level 0 in panic (or nothing, with panic disabled).
    #[cold]
    fn pick_degraded(
        &self,
        st: &mut LbState,
        cursor: &mut u32,
        source: Option<SocketAddr>,
        key: Option<u64>,
        active: &impl Fn(usize) -> u64,
        worker: usize,
    ) -> Option<usize> {
        if self.levels.is_empty() {
            // One level, no localities: the plan is one bit, read without the ArcSwap.
            if self.single_panic.load(std::sync::atomic::Ordering::Relaxed) {
                return Some(self.panic_pick(0, st, cursor, source, key, active, worker));
            }
            if let Ok(i) = self.pick_in(&self.balancer, None, st, cursor, source, key, active) {
                return Some(i);
            }
            return (self.panic_threshold > 0.0)
                .then(|| self.panic_pick(0, st, cursor, source, key, active, worker));
        }
        let plan = self.plan.load();
        let level = match plan.level_cumulative.len() {
            0 | 1 => 0,
            _ => weighted(&plan.level_cumulative, draw(st, key, 29)),
        };
        let level = level.min(self.levels.len().saturating_sub(1));
        if plan.panic.get(level).copied().unwrap_or(false) {
            return Some(self.panic_pick(level, st, cursor, source, key, active, worker));
        }
        let localities = plan.locality_cumulative.get(level).map(|c| &c[..]);
        let (b, members) = self.group(level, localities, st, key);
        if let Ok(i) = self.pick_in(b, members, st, cursor, source, key, active) {
            return Some(i);
        }
        for l in 0..self.levels.len().max(1) {
            let (b, members) = self.whole_level(l);
            if let Ok(i) = self.pick_in(b, members, st, cursor, source, key, active) {
                return Some(i);
            }
        }
        if self.panic_threshold <= 0.0 {
            return None;
        }
        Some(self.panic_pick(0, st, cursor, source, key, active, worker))
    }

    /// Panic mode: the balancer's choice among every endpoint of `level`, usable or not;
    /// counted in `lb_healthy_panic`.
    #[allow(clippy::too_many_arguments)]
    fn panic_pick(
        &self,
        level: usize,
        st: &mut LbState,
        cursor: &mut u32,
        source: Option<SocketAddr>,
        key: Option<u64>,
        active: &impl Fn(usize) -> u64,
        worker: usize,
    ) -> usize {
        self.stats
            .inc(worker, crate::telemetry::UpstreamCounter::LbHealthyPanic);
        let (b, members) = self.whole_level(level);
        map(
            members,
            self.choose(
                b,
                members,
                st,
                cursor,
                source,
                key,
                active_in(members, active),
            ),
        )
    }

    /// The balancer's choice among one set of endpoints (`members`, or all), skipping
    /// unusable ones; `Err(first choice)` when none of the set is usable.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn pick_in(
        &self,
        b: &Balancer,
        members: Option<&[u32]>,
        st: &mut LbState,
        cursor: &mut u32,
        source: Option<SocketAddr>,
        key: Option<u64>,
        active: &impl Fn(usize) -> u64,
    ) -> Result<usize, usize> {
        let local_active = active_in(members, active);
        let j = self.choose(b, members, st, cursor, source, key, local_active);
        if self.endpoints[map(members, j)].health.usable() {
            return Ok(map(members, j));
        }
        self.repick(b, members, st, cursor, source, key, j, local_active)
            .ok_or(map(members, j))
    }

    /// The balancer's choice within one set of endpoints (`members`, or all; the result
    /// indexes the set): the plain pick, unless some endpoint is in slow start (one
    /// relaxed load to know) or loads are bounded — both cold paths. No allocation.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn choose(
        &self,
        b: &Balancer,
        members: Option<&[u32]>,
        st: &mut LbState,
        cursor: &mut u32,
        source: Option<SocketAddr>,
        key: Option<u64>,
        active: impl Fn(usize) -> u64 + Copy,
    ) -> usize {
        if self.slow_start.is_some() && self.health.slow_starting() != 0 {
            return self.choose_slow(b, members, st, cursor, source, key, active);
        }
        if self.hash_balance > 0.0 && b.is_hashing() {
            return self.choose_bounded(b, members, st, cursor, source, key, active);
        }
        b.pick_salted(st, cursor, source, key, active, 0)
    }

    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn choose_slow(
        &self,
        b: &Balancer,
        members: Option<&[u32]>,
        st: &mut LbState,
        cursor: &mut u32,
        source: Option<SocketAddr>,
        key: Option<u64>,
        active: impl Fn(usize) -> u64 + Copy,
    ) -> usize {
        let scale = |j: usize| self.endpoints[map(members, j)].health.slow_start_scale();
        b.pick_scaled(st, cursor, source, key, active, scale)
    }

    /// Bounded loads (Envoy's `hash_balance_factor`, after Mirrokni et al.): the key's
    /// endpoint unless it already has at least `factor × (total + 1) × weight / weights`
    /// active connections (this worker's count, what least request reads); then the
    /// key's next choices (deterministic jumps through the ring / table, as the salted
    /// picks draw them) until one has room; when none of [`BOUNDED_PROBES`] has, the
    /// least overloaded of them. O(set size) for the total, like Envoy's.
    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn choose_bounded(
        &self,
        b: &Balancer,
        members: Option<&[u32]>,
        st: &mut LbState,
        cursor: &mut u32,
        source: Option<SocketAddr>,
        key: Option<u64>,
        active: impl Fn(usize) -> u64 + Copy,
    ) -> usize {
        let n = members.map_or(self.endpoints.len(), <[u32]>::len);
        let weight = |j: usize| f64::from(self.endpoints[map(members, j)].weight.max(1));
        let (mut total, mut weights) = (0u64, 0f64);
        for j in 0..n {
            total += active(j);
            weights += weight(j);
        }
        // One key for every probe: a key-less request draws a random point once.
        let key = match (key, source) {
            (Some(k), _) => Some(k),
            (None, Some(_)) => None,
            (None, None) => Some(crate::cluster::random_key(st)),
        };
        let room = self.hash_balance * (total as f64 + 1.0) / weights;
        let mut best = (0usize, f64::MAX);
        for salt in 0..BOUNDED_PROBES {
            let j = b.pick_salted(st, cursor, source, key, active, salt);
            let cap = (room * weight(j)).ceil();
            let load = active(j) as f64;
            if load < cap {
                return j;
            }
            if load / cap < best.1 {
                best = (j, load / cap);
            }
        }
        best.0
    }

    /// Recompute the endpoints' slow-start scales at `now` ([`crate::cluster::health::now_ms`])
    /// and publish how many are scaled. Control plane only (compile, health tick).
    pub fn refresh_slow_start(&self, now: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let eps = self.endpoints.iter().map(|e| &*e.health);
        let scaled = match &self.slow_start {
            Some(s) => s.refresh(eps, now),
            None => {
                crate::cluster::slow_start::clear(eps, now);
                0
            }
        };
        if self.health.slow_starting.load(Relaxed) != scaled {
            self.health.slow_starting.store(scaled, Relaxed);
        }
    }

    /// Recompute [`ClusterEntry::plan`] from the endpoints' flags; publishes only a
    /// changed plan. Control plane only (compile, health tick).
    pub fn refresh_plan(&self) {
        let plan = self.compute_plan();
        self.single_panic.store(
            self.levels.is_empty() && plan.panic.first().copied().unwrap_or(false),
            std::sync::atomic::Ordering::Relaxed,
        );
        if **self.plan.load() != plan {
            self.plan.store(Arc::new(plan));
        }
    }

    fn compute_plan(&self) -> LoadPlan {
        let count = |members: &[u32]| Count {
            usable: members
                .iter()
                .filter(|&&i| self.endpoints[i as usize].health.usable())
                .count() as u32,
            total: members.len() as u32,
        };
        let levels: Vec<Count> = if self.levels.is_empty() {
            vec![Count {
                usable: self.endpoints.iter().filter(|e| e.health.usable()).count() as u32,
                total: self.endpoints.len() as u32,
            }]
        } else {
            self.levels.iter().map(|l| count(&l.members)).collect()
        };
        let (load, panic) = priority::priority_load(&levels, self.panic_threshold);
        LoadPlan {
            level_cumulative: priority::running(&load),
            panic: panic.into(),
            locality_cumulative: self
                .levels
                .iter()
                .map(|l| {
                    let counts: Vec<Count> =
                        l.localities.iter().map(|g| count(&g.members)).collect();
                    priority::locality_weights(&l.locality_weights, &counts)
                })
                .collect(),
        }
    }

    /// The hash key of an HTTP request for this cluster's consistent hashing, from its
    /// headers (`header(name)` gives a header's value). `None`: no key (the source
    /// address is used, as for L4). No allocation.
    #[inline]
    pub fn request_key<'h>(&self, header: impl Fn(&str) -> Option<&'h [u8]>) -> Option<u64> {
        if !self.balancer.is_hashing() {
            return None;
        }
        let v = match &self.hash_on {
            // The query is not a header: [`ClusterEntry::hash_key`] reads it.
            HashOn::SourceIp | HashOn::Query(_) => return None,
            HashOn::Header(name) => header(name)?,
            HashOn::Cookie(name) => cookie(header("cookie")?, name.as_bytes())?,
        };
        Some(crate::cluster::maglev::hash64(v, 0))
    }

    /// A request without the hash cookie on a cluster that generates it: the cookie's
    /// value ([`generated_cookie_value`]) and the request's hash key — the key a later
    /// request carrying that cookie gets from [`ClusterEntry::request_key`]. No
    /// allocation.
    #[inline]
    pub fn generated_cookie(&self, peer: Option<SocketAddr>) -> Option<(u64, [u8; 16])> {
        self.cookie_attrs.as_ref()?;
        if !self.balancer.is_hashing() {
            return None;
        }
        let hex = generated_cookie_value(peer)?;
        Some((crate::cluster::maglev::hash64(&hex, 0), hex))
    }

    /// The balancer's hash key for an HTTP request to this cluster and, when a hash
    /// cookie was made up for it, the cookie's value (for `Set-Cookie`). The route's
    /// `hash_policy` decides when it has one, else the cluster's own (`hash_policy`,
    /// Istio `consistentHash`); only consistent-hashing clusters hash. A policy that
    /// finds no key in the request gets a random one: Envoy picks a random host then
    /// (hashing the client's address instead would pin all of one client's key-less
    /// requests to one endpoint). `None` key: the cluster hashes the source address
    /// (its policy, or the native default). No allocation.
    #[inline]
    pub fn hash_key(
        &self,
        route: Option<&http::hash::RouteHash>,
        req: &http::RequestView,
        peer: Option<SocketAddr>,
    ) -> (Option<u64>, Option<[u8; 16]>) {
        if !self.balancer.is_hashing() {
            return (None, None);
        }
        if let Some(r) = route {
            let (key, made) = r.key(req, peer);
            return (Some(key.unwrap_or_else(no_key)), made);
        }
        if let HashOn::Query(name) = &self.hash_on {
            let key = req
                .query_param(name)
                .map_or_else(no_key, |v| crate::cluster::maglev::hash64(v, 0));
            return (Some(key), None);
        }
        match self.request_key(|n| req.header(n)) {
            Some(k) => (Some(k), None),
            None => match self.generated_cookie(peer) {
                Some((k, v)) => (Some(k), Some(v)),
                None if matches!(self.hash_on, HashOn::SourceIp) => (None, None),
                None => (Some(no_key()), None),
            },
        }
    }

    /// The name and attributes of the generated hash cookie's `Set-Cookie`
    /// (`name="value"attributes`).
    pub fn set_cookie_parts(&self) -> Option<(&[u8], &[u8])> {
        match (&self.hash_on, &self.cookie_attrs) {
            (HashOn::Cookie(name), Some(attrs)) => Some((name.as_bytes(), attrs)),
            _ => None,
        }
    }

    /// The balancer chose an ejected or failing endpoint: draw again a few times (so the
    /// others keep their proportions), then walk to the next usable one of the set.
    /// `None` when none is usable — the caller falls back (the next level with a usable
    /// endpoint, then panic mode).
    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn repick(
        &self,
        b: &Balancer,
        members: Option<&[u32]>,
        st: &mut LbState,
        cursor: &mut u32,
        source: Option<SocketAddr>,
        key: Option<u64>,
        first: usize,
        active: impl Fn(usize) -> u64 + Copy,
    ) -> Option<usize> {
        let map = |j: usize| members.map_or(j, |m| m[j] as usize);
        for salt in 1..=4u64 {
            let i = map(b.pick_salted(st, cursor, source, key, active, salt));
            if self.endpoints[i].health.usable() {
                return Some(i);
            }
        }
        let n = members.map_or(self.endpoints.len(), <[u32]>::len);
        (1..=n)
            .map(|k| map((first + k) % n))
            .find(|&i| self.endpoints[i].health.usable())
    }

    /// The endpoint for connect attempt `attempt` of a request whose first choice was
    /// `first`: the `attempt`-th usable endpoint after it, so a retry never repeats the
    /// endpoint that failed and skips ejected ones. Without usable endpoints enough, the
    /// plain order (panic mode).
    #[inline]
    pub fn endpoint_for_attempt(&self, first: usize, attempt: u32) -> usize {
        let n = self.endpoints.len();
        if attempt == 0 || n == 0 {
            return first;
        }
        let plain = (first + attempt as usize) % n;
        if self.health.unusable() == 0 {
            return plain;
        }
        (1..n)
            .map(|k| (first + k) % n)
            .filter(|&i| self.endpoints[i].health.usable())
            .nth(attempt as usize - 1)
            .unwrap_or(plain)
    }
}

/// Next choices a bounded-load pick tries before it takes the least overloaded.
const BOUNDED_PROBES: u64 = 16;

/// Index `j` of a member set (or of all endpoints) as an endpoint index.
#[inline]
fn map(members: Option<&[u32]>, j: usize) -> usize {
    members.map_or(j, |m| m[j] as usize)
}

/// `active` seen through a member set.
#[inline]
fn active_in<'a>(
    members: Option<&'a [u32]>,
    active: &'a impl Fn(usize) -> u64,
) -> impl Fn(usize) -> u64 + Copy + 'a {
    move |j| active(map(members, j))
}

/// A number for a level or locality draw: from the request's hash key when it has one
/// (so a consistent-hash key stays on its level), else random. `salt` decorrelates the
/// draws of one pick.
#[inline]
fn draw(st: &mut LbState, key: Option<u64>, salt: u32) -> u32 {
    match key {
        Some(k) => (crate::cluster::maglev::mix64(k ^ u64::from(salt)) >> 32) as u32,
        None => st.next_u32(),
    }
}

impl RouteTable {
    /// The name and attributes of the hash cookie an HTTP request generated
    /// (`Set-Cookie`): its route's (`route_ref`: virtual host and route index on
    /// `listener`) when the route hashes, else its cluster's.
    pub fn hash_cookie(
        &self,
        listener: u32,
        route_ref: Option<(u32, u32)>,
        cluster: u32,
    ) -> Option<(&[u8], &[u8])> {
        let route = route_ref.and_then(|(vi, ri)| {
            self.listeners
                .get(listener as usize)?
                .http
                .as_ref()?
                .vhosts
                .get(vi as usize)?
                .routes
                .get(ri as usize)
        });
        match route.and_then(|r| r.hash.as_deref()) {
            Some(h) => h.set_cookie_parts(),
            None => self.clusters.get(cluster as usize)?.set_cookie_parts(),
        }
    }

    pub fn empty() -> RouteTable {
        RouteTable {
            generation: 0,
            listeners: Box::new([]),
            clusters: Box::new([]),
            offload: Default::default(),
            offload_driver: None,
            offload_stats: None,
        }
    }

    pub fn listener(&self, name: &str) -> Option<(usize, &ListenerEntry)> {
        self.listeners
            .iter()
            .enumerate()
            .find(|(_, l)| &*l.name == name)
    }

    pub fn cluster(&self, name: &str) -> Option<(usize, &ClusterEntry)> {
        self.clusters
            .iter()
            .enumerate()
            .find(|(_, c)| &*c.name == name)
    }
}

/// Compile a validated config. Binds any listener sockets `pool` does not hold yet; on
/// error nothing is kept bound that was not bound before.
pub fn compile(
    cfg: &Config,
    generation: u64,
    stats: &StatsRegistry,
    pool: &mut SocketPool,
) -> Result<RouteTable, ConfigError> {
    crate::config::validate(cfg)?;
    if cfg.node.is_none() {
        for dr in &cfg.destination_rules {
            let tps = std::iter::once(dr.spec.traffic_policy.as_ref())
                .chain(dr.spec.subsets.iter().map(|s| s.traffic_policy.as_ref()));
            if tps.flatten().any(|tp| {
                tp.load_balancer
                    .as_ref()
                    .and_then(|lb| lb.locality_lb_setting.as_ref())
                    .is_some_and(|l| l.enabled != Some(false))
            }) {
                tracing::warn!(
                    "DestinationRule `{}` sets localityLbSetting, which is relative to this proxy's locality: \
                     set `node: {{locality: region/zone/sub_zone}}` for it to apply",
                    dr.metadata.name
                );
            }
        }
    }
    let mut index = HashMap::new();
    let mut problems = Vec::new();
    let mut clusters: Vec<ClusterEntry> = Vec::with_capacity(cfg.clusters.len());
    for (i, c) in cfg.clusters.iter().enumerate() {
        index.insert(c.name.clone(), clusters.len() as u32);
        let effective = crate::config::traffic_policy::effective_cluster_at(
            c,
            &cfg.destination_rules,
            cfg.node.as_ref().map(|n| n.locality.as_str()),
        );
        let mut entry = build_cluster(&effective, stats);
        // The cluster's own `tls:`, or a DestinationRule's `trafficPolicy.tls`.
        if let Some(t) = &effective.tls {
            let at = if effective.tls == c.tls {
                format!("clusters[{i}].tls")
            } else {
                format!("DestinationRule trafficPolicy.tls of cluster `{}`", c.name)
            };
            match crate::tls::build_client(t, &at) {
                Ok(t) => entry.tls = Some(t),
                Err(p) => problems.extend(p),
            }
        }
        clusters.push(entry);
    }
    let mut listeners = Vec::with_capacity(cfg.listeners.len());
    for (i, l) in cfg.listeners.iter().enumerate() {
        // validate() guaranteed every reference resolves.
        let target = match &l.cluster {
            Some(c) => Some(Target::Cluster(index[c.as_str()])),
            None if l.weighted_clusters.is_empty() => None,
            None => Some(Target::Weighted {
                cumulative: cumulative(
                    &l.weighted_clusters
                        .iter()
                        .map(|w| w.weight)
                        .collect::<Vec<_>>(),
                ),
                clusters: l
                    .weighted_clusters
                    .iter()
                    .map(|w| index[w.cluster.as_str()])
                    .collect(),
            }),
        };
        let http = match l.protocol {
            Protocol::Http => {
                let vhosts = http::virtual_hosts_for(cfg, l.route_config.as_deref());
                let mut names = ImplicitClusters {
                    index: &mut index,
                    clusters: &mut clusters,
                    stats,
                    rules: &cfg.destination_rules,
                    defined: &cfg.clusters,
                    node: cfg.node.as_ref().map(|n| n.locality.as_str()),
                    problems: Vec::new(),
                };
                let compiled = http::compile(&vhosts, &mut names);
                for message in std::mem::take(&mut names.problems) {
                    problems.push(Problem {
                        path: format!("listeners[{i}]"),
                        line: None,
                        message,
                    });
                }
                match compiled {
                    Ok(t) => Some(Arc::new(t)),
                    Err(e) => {
                        problems.push(Problem {
                            path: format!("listeners[{i}]"),
                            line: None,
                            message: e,
                        });
                        continue;
                    }
                }
            }
            _ => None,
        };
        let xfcc = match crate::tls::xfcc::compile(l, i) {
            Ok(x) => x,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        let (mode, set_by) = crate::tls::effective_mode(
            l.tls.as_ref().and_then(|t| t.mode),
            l.address.port(),
            &l.labels,
            &cfg.peer_authentications,
        );
        let tls = match (&l.tls, mode) {
            (Some(t), _) => match crate::tls::build_server(t, mode, &format!("listeners[{i}].tls"))
            {
                Ok(t) => t,
                Err(p) => {
                    problems.extend(p);
                    continue;
                }
            },
            (None, MtlsMode::Strict | MtlsMode::Permissive) if set_by.is_some() => {
                problems.push(Problem {
                    path: format!("listeners[{i}].tls"),
                    line: None,
                    message: format!(
                        "PeerAuthentication `{}` sets mTLS {mode:?} on listener `{}`, which has no tls: (cert, key, client_ca) to terminate with",
                        set_by.unwrap_or_default(),
                        l.name
                    ),
                });
                continue;
            }
            (None, _) => None,
        };
        let route_principals = http.as_ref().is_some_and(|h| {
            h.vhosts
                .iter()
                .any(|v| v.routes.iter().any(|r| !r.principals.is_empty()))
        });
        if route_principals && !tls.as_ref().is_some_and(|t| t.mtls) {
            problems.push(Problem {
                path: format!("listeners[{i}].tls"),
                line: None,
                message: format!(
                    "routes of listener `{}` set allowed_principals, which come from client certificates: give the listener tls: with client_ca (mode STRICT or PERMISSIVE)",
                    l.name
                ),
            });
            continue;
        }
        if tls.is_some() && l.protocol == Protocol::Udp {
            problems.push(Problem {
                path: format!("listeners[{i}].tls"),
                line: None,
                message: "TLS is served on tcp and http listeners, not udp (DTLS is not supported)"
                    .into(),
            });
            continue;
        }
        let sockets = match pool.get_or_bind(&l.name, l.address, l.protocol) {
            Ok(s) => s,
            Err(e) => {
                problems.push(Problem {
                    path: format!("listeners[{i}].address"),
                    line: None,
                    message: format!("cannot bind {} {}: {e}", l.protocol, l.address),
                });
                continue;
            }
        };
        listeners.push(ListenerEntry {
            name: l.name.as_str().into(),
            protocol: l.protocol,
            sockets,
            target,
            max_connections: l.max_connections.unwrap_or(0),
            idle_timeout: l.idle_timeout.unwrap_or(match l.protocol {
                Protocol::Tcp | Protocol::Http => DEFAULT_TCP_IDLE_TIMEOUT,
                Protocol::Udp => DEFAULT_UDP_IDLE_TIMEOUT,
            }),
            stats: stats.listener(&l.name),
            http,
            tls,
            request_header_timeout: l.request_header_timeout.unwrap_or(Duration::from_secs(10)),
            max_request_body: l.max_request_body.unwrap_or(1 << 30),
            xfcc,
        });
    }
    if !problems.is_empty() {
        drop(listeners);
        pool.prune();
        return Err(ConfigError { problems });
    }
    Ok(RouteTable {
        generation,
        listeners: listeners.into_boxed_slice(),
        clusters: clusters.into_boxed_slice(),
        offload: cfg.offload.as_ref().map(|o| o.backend).unwrap_or_default(),
        offload_driver: cfg.offload.as_ref().and_then(|o| o.cryptodev_driver),
        offload_stats: Some(stats.offload()),
    })
}

fn build_cluster(c: &Cluster, stats: &StatsRegistry) -> ClusterEntry {
    // A name stands for every address it resolved to (STRICT_DNS), each with the name's
    // weight; until the resolver has an answer it stands for none.
    // The last element: which configured endpoint, and which of its addresses.
    type Resolved<'a> = (SocketAddr, u32, u32, Option<&'a str>, (usize, usize));
    let mut resolved: Vec<Resolved> = c
        .endpoints
        .iter()
        .enumerate()
        .flat_map(|(n, e)| {
            let loc = e.locality.as_deref();
            match &e.address {
                EndpointAddress::Ip(a) => vec![(*a, e.weight, e.priority, loc, (n, 0))],
                EndpointAddress::Dns { host, port } => dns::cached(host, *port)
                    .into_iter()
                    .enumerate()
                    .map(|(k, a)| (a, e.weight, e.priority, loc, (n, k)))
                    .collect(),
            }
        })
        .collect();
    // Grouped by priority (stable), so a retry walking the endpoints in order stays in
    // its level as long as the level lasts.
    resolved.sort_by_key(|&(_, _, p, _, _)| p);
    let weights: Vec<u32> = resolved.iter().map(|e| e.1).collect();
    let mut priorities: Vec<u32> = resolved.iter().map(|e| e.2).collect();
    priorities.dedup();
    let by_locality = !c.locality_weights.is_empty();
    let lb = crate::cluster::LbOptions::of(c);
    // What consistent hashing places each address by: its text ("1.2.3.4:80", as
    // Envoy), or with `use_hostname_for_hashing` its host name, so an address change
    // moves no key. A name answering several addresses (Envoy: not valid) keys the
    // second and later ones of its sorted answer `name#k`.
    let keys: Vec<Vec<u8>> = resolved
        .iter()
        .map(|&(a, _, _, _, (n, k))| {
            let name = lb
                .use_hostname_for_hashing
                .then(|| crate::cluster::hash_name(&c.endpoints[n]))
                .flatten();
            match name {
                Some(h) if k == 0 => h.into_bytes(),
                Some(h) => format!("{h}#{k}").into_bytes(),
                None => a.to_string().into_bytes(),
            }
        })
        .collect();
    let build = |members: &[u32]| {
        let k: Vec<Vec<u8>> = members.iter().map(|&i| keys[i as usize].clone()).collect();
        let w: Vec<u32> = members.iter().map(|&i| weights[i as usize]).collect();
        Balancer::build_named(&lb, &k, &w)
    };
    let levels: Box<[Level]> = if priorities.len() > 1 || by_locality {
        priorities
            .iter()
            .map(|&p| {
                let members: Box<[u32]> = (0..resolved.len() as u32)
                    .filter(|&i| resolved[i as usize].2 == p)
                    .collect();
                // Localities in order of first appearance; an endpoint without one is
                // in the unnamed locality "".
                let mut names: Vec<&str> = Vec::new();
                for &i in members.iter() {
                    let n = resolved[i as usize].3.unwrap_or("");
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                let localities: Box<[LocalityGroup]> = if by_locality {
                    names
                        .iter()
                        .map(|&n| {
                            let m: Box<[u32]> = members
                                .iter()
                                .copied()
                                .filter(|&i| resolved[i as usize].3.unwrap_or("") == n)
                                .collect();
                            LocalityGroup {
                                name: n.into(),
                                balancer: build(&m),
                                members: m,
                            }
                        })
                        .collect()
                } else {
                    Box::new([])
                };
                let locality_weights: Box<[u32]> = localities
                    .iter()
                    .map(|g| c.locality_weights.get(&*g.name).copied().unwrap_or(0))
                    .collect();
                Level {
                    priority: p,
                    balancer: build(&members),
                    members,
                    locality_cumulative: priority::running(&locality_weights),
                    locality_weights,
                    localities,
                }
            })
            .collect()
    } else {
        Box::new([])
    };
    let entry = ClusterEntry {
        name: c.name.as_str().into(),
        levels,
        endpoints: resolved
            .iter()
            .map(|&(address, weight, priority, _, _)| EndpointEntry {
                address,
                weight,
                priority,
                stats: stats.endpoint(&c.name, address),
                health: stats.endpoint_health(&c.name, address),
            })
            .collect(),
        health: stats.cluster_health(&c.name),
        outlier: c.outlier_detection.as_ref().map(OutlierPolicy::from_config),
        hash_on: match &c.hash_policy {
            Some(crate::config::HashPolicy {
                header: Some(h), ..
            }) => HashOn::Header(h.as_str().into()),
            Some(crate::config::HashPolicy {
                cookie: Some(k), ..
            }) => HashOn::Cookie(k.as_str().into()),
            Some(crate::config::HashPolicy {
                query_parameter: Some(q),
                ..
            }) => HashOn::Query(q.as_str().into()),
            _ => HashOn::SourceIp,
        },
        cookie_attrs: c
            .hash_policy
            .as_ref()
            .filter(|h| h.cookie.is_some())
            .and_then(|h| {
                Some(http::hash::cookie_attributes(
                    h.cookie_ttl?,
                    h.cookie_path.as_deref(),
                ))
            }),
        health_check: c
            .health_checks
            .first()
            .map(|h| Arc::new(crate::cluster::active::CheckPolicy::from_config(h, &c.name))),
        balancer: Balancer::build_named(&lb, &keys, &weights),
        slow_start: lb.slow_start,
        hash_balance: f64::from(lb.hash_balance_factor) / 100.0,
        hash_by_name: lb.use_hostname_for_hashing,
        connect_timeout: c.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        max_connect_attempts: c.max_connect_attempts.unwrap_or(DEFAULT_CONNECT_ATTEMPTS),
        idle_timeout: c.idle_timeout.unwrap_or(DEFAULT_POOL_IDLE_TIMEOUT),
        stats: stats.cluster(&c.name),
        tls: None,
        breakers: c
            .circuit_breakers
            .as_ref()
            .map_or(Breakers::DEFAULT, |b| Breakers {
                max_connections: b
                    .max_connections
                    .unwrap_or(Breakers::DEFAULT.max_connections),
                max_pending_requests: b
                    .max_pending_requests
                    .unwrap_or(Breakers::DEFAULT.max_pending_requests),
                max_requests: b.max_requests.unwrap_or(Breakers::DEFAULT.max_requests),
                max_retries: b.max_retries.unwrap_or(Breakers::DEFAULT.max_retries),
                max_requests_per_connection: b.max_requests_per_connection.unwrap_or(0),
                // Envoy's defaults: 20%, at least 3.
                retry_budget: b.retry_budget.as_ref().map(|r| {
                    let pct = r.budget_percent.map_or(20.0, |p| p.value);
                    (
                        (pct * 10_000.0).clamp(0.0, 1_000_000.0) as u32,
                        r.min_retry_concurrency.unwrap_or(3),
                    )
                }),
            }),
        panic_threshold: c
            .healthy_panic_threshold
            .unwrap_or(priority::DEFAULT_PANIC_THRESHOLD),
        plan: ArcSwap::from_pointee(LoadPlan::default()),
        single_panic: Default::default(),
    };
    // Health survives table swaps: the first plan already reflects it, and the first
    // scales (a new endpoint's slow start begins now).
    entry.refresh_plan();
    entry.refresh_slow_start(crate::cluster::health::now_ms());
    entry
}

/// The value of cookie `name` in a `Cookie` header (RFC 6265 §4.2.1: `a=b; c=d`),
/// without the double quotes a value may be wrapped in (§4.1.1), as Envoy reads it.
/// A generated hash cookie's value: 16 hex digits hashed from the client's address and
/// port (as Envoy derives it from the connection's addresses). No allocation.
pub(crate) fn generated_cookie_value(peer: Option<SocketAddr>) -> Option<[u8; 16]> {
    let mut b = [0u8; 18];
    let n = match peer? {
        SocketAddr::V4(a) => {
            b[..4].copy_from_slice(&a.ip().octets());
            b[4..6].copy_from_slice(&a.port().to_be_bytes());
            6
        }
        SocketAddr::V6(a) => {
            b[..16].copy_from_slice(&a.ip().octets());
            b[16..].copy_from_slice(&a.port().to_be_bytes());
            18
        }
    };
    let h = crate::cluster::maglev::hash64(&b[..n], 0x636f_6f6b_6965);
    let mut hex = [0u8; 16];
    for (i, d) in hex.iter_mut().enumerate() {
        *d = b"0123456789abcdef"[(h >> (60 - 4 * i) & 0xf) as usize];
    }
    Some(hex)
}

/// A random hash key for a request whose hash policy found nothing to hash (Envoy: a
/// random host). The proxy asks for the key before its pick, away from the worker's
/// `LbState`, so a generator of the worker's thread serves: no lock, no allocation,
/// no memory shared with another worker.
fn no_key() -> u64 {
    use std::cell::Cell;
    use std::hash::BuildHasher;
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            // First use on this thread: seeded from the process's hashing keys.
            x = std::collections::hash_map::RandomState::new().hash_one(0x7469_636b_u64) | 1;
        }
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        crate::cluster::maglev::mix64(x)
    })
}

/// The value of cookie `name` in a `Cookie` header (quotes dropped).
pub(crate) fn cookie<'h>(header: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == name).then(|| {
            let v = &pair[eq + 1..];
            match v {
                [b'"', inner @ .., b'"'] => inner,
                _ => v,
            }
        })
    })
}

/// Cluster names used by HTTP routes: a defined cluster, or else (as a sidecar does) a
/// `strict_dns` cluster on the name, at its `:port` or 80, added to the table.
struct ImplicitClusters<'a> {
    index: &'a mut HashMap<String, u32>,
    clusters: &'a mut Vec<ClusterEntry>,
    stats: &'a StatsRegistry,
    /// DestinationRules, applied to implicit clusters as to defined ones.
    rules: &'a [crate::config::istio::DestinationRule],
    /// The config's clusters: the endpoints a `host|subset` name selects from.
    defined: &'a [Cluster],
    /// The proxy's locality (`node.locality`), for Istio locality load balancing.
    node: Option<&'a str>,
    problems: Vec<String>,
}

impl http::ClusterIndex for ImplicitClusters<'_> {
    fn index(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        // `host|subset` of a defined cluster: the endpoints whose labels match.
        if let Some((host, _)) = name.split_once('|') {
            let base = self
                .defined
                .iter()
                .find(|c| crate::config::traffic_policy::same_service(&c.name, host));
            if let Some(base) = base {
                use crate::config::traffic_policy::{effective_cluster_at, subset_cluster};
                let c = match subset_cluster(name, base, self.rules) {
                    Ok(c) => c,
                    Err(e) => {
                        self.problems.push(e);
                        Cluster {
                            name: name.to_string(),
                            endpoints: Vec::new(),
                            ..base.clone()
                        }
                    }
                };
                let i = self.clusters.len() as u32;
                let effective = effective_cluster_at(&c, self.rules, self.node);
                let mut entry = build_cluster(&effective, self.stats);
                // TLS origination carries over from the base cluster, unless the
                // subset's policy says otherwise.
                let base_tls = effective_cluster_at(base, self.rules, self.node).tls;
                entry.tls = if effective.tls == base_tls {
                    self.index
                        .get(&base.name)
                        .and_then(|&b| self.clusters[b as usize].tls.clone())
                } else {
                    self.client_tls(name, effective.tls.as_ref())
                };
                self.clusters.push(entry);
                self.index.insert(name.to_string(), i);
                return i;
            }
            // A resolved name has no labels: the subset is every address, with its policy.
            if let Err(e) = crate::config::traffic_policy::subset_labels(name, self.rules) {
                self.problems.push(e);
            }
        }
        let (host, port) = match name
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        {
            Some((h, p)) => (h, p),
            None => (name.split('|').next().unwrap_or(name), 80),
        };
        let c = Cluster {
            name: name.to_string(),
            discovery: Discovery::StrictDns,
            lb_policy: LbPolicy::RoundRobin,
            endpoints: vec![Endpoint {
                address: EndpointAddress::Dns {
                    host: host.to_string(),
                    port,
                },
                weight: 1,
                priority: 0,
                locality: None,
                labels: Default::default(),
                hostname: None,
            }],
            connect_timeout: None,
            max_connect_attempts: None,
            dns_refresh_rate: None,
            idle_timeout: None,
            circuit_breakers: None,
            outlier_detection: None,
            health_checks: Vec::new(),
            hash_policy: None,
            tls: None,
            healthy_panic_threshold: None,
            locality_weights: Default::default(),
            ring_hash_lb_config: None,
            maglev_lb_config: None,
            least_request_lb_config: None,
            round_robin_lb_config: None,
            consistent_hashing_lb_config: None,
        };
        let i = self.clusters.len() as u32;
        let c = crate::config::traffic_policy::effective_cluster_at(&c, self.rules, self.node);
        let mut entry = build_cluster(&c, self.stats);
        entry.tls = self.client_tls(name, c.tls.as_ref());
        self.clusters.push(entry);
        self.index.insert(name.to_string(), i);
        i
    }
}

impl ImplicitClusters<'_> {
    /// TLS origination a DestinationRule gives a cluster the routes made (`None`: none,
    /// or a problem recorded).
    fn client_tls(
        &mut self,
        name: &str,
        t: Option<&crate::config::tls::ClusterTls>,
    ) -> Option<Arc<crate::tls::ClientTls>> {
        let at = format!("DestinationRule trafficPolicy.tls of cluster `{name}`");
        match crate::tls::build_client(t?, &at) {
            Ok(t) => Some(t),
            Err(p) => {
                self.problems
                    .extend(p.into_iter().map(|p| format!("{}: {}", p.path, p.message)));
                None
            }
        }
    }
}

/// The published snapshot: workers `load()` it once per batch; the control plane
/// `store()`s a new one. Readers never block writers or each other.
pub struct Routes(ArcSwap<RouteTable>);

impl Routes {
    pub fn new(t: RouteTable) -> Self {
        t.prime_health();
        Routes(ArcSwap::from_pointee(t))
    }

    /// A cheap guard for the current table (no refcount bump on the fast path).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.0.load()
    }

    /// An owned reference, for state that outlives one batch.
    pub fn load_full(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }

    pub fn store(&self, t: RouteTable) {
        t.prime_health();
        self.0.store(Arc::new(t))
    }
}

impl RouteTable {
    /// Before publication: each endpoint learns whether its cluster counts outcomes
    /// split by origin, so the first exchanges under this table count as it says (each
    /// health tick then keeps it so, [`crate::cluster::outlier::sweep`]).
    fn prime_health(&self) {
        for c in self.clusters.iter() {
            let split = c.outlier.is_some_and(|p| p.local_origin.is_some());
            for e in c.endpoints.iter() {
                e.health.set_split(split);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Format};

    fn cfg(port: u16) -> Config {
        parse(
            &format!(
                r#"
listeners:
  - {{name: l, address: "127.0.0.1:{port}", weighted_clusters: [{{cluster: a, weight: 95}}, {{cluster: b, weight: 5}}]}}
clusters:
  - {{name: a, endpoints: ["127.0.0.1:1", {{address: "127.0.0.1:2", weight: 3}}]}}
  - {{name: b, lb_policy: maglev, endpoints: ["127.0.0.1:3"]}}
"#
            ),
            Format::Yaml,
        )
        .unwrap()
    }

    #[test]
    fn compiles_weighted_targets_and_keeps_sockets_across_generations() {
        let stats = StatsRegistry::new(2);
        let mut pool = SocketPool::new(2);
        let t1 = compile(&cfg(0), 1, &stats, &mut pool).unwrap();
        let port = t1.listeners[0].sockets.address.port();
        assert_eq!(t1.listeners[0].sockets.len(), 2);
        let mut counts = [0; 2];
        for r in 0..100 {
            counts[t1.listeners[0].target.as_ref().unwrap().pick(r)] += 1;
        }
        assert_eq!(counts, [95, 5]);
        let t2 = compile(&cfg(port), 2, &stats, &mut pool).unwrap();
        assert!(Arc::ptr_eq(
            &t1.listeners[0].sockets,
            &t2.listeners[0].sockets
        ));
        assert!(Arc::ptr_eq(&t1.clusters[0].stats, &t2.clusters[0].stats));
    }

    #[test]
    fn bind_failure_is_a_config_error_naming_the_listener() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let stats = StatsRegistry::new(1);
        let e = compile(&cfg(port), 1, &stats, &mut SocketPool::new(1)).unwrap_err();
        assert_eq!(e.problems[0].path, "listeners[0].address");
        assert!(e.to_string().contains("cannot bind"), "{e}");
    }

    /// A DestinationRule's `trafficPolicy.tls` is built at apply like a cluster's own
    /// `tls:` — for defined, subset and implicit (DNS-named) clusters — and a file it
    /// names that is missing is an error naming the rule's cluster.
    #[test]
    fn destination_rule_tls_is_built_and_checked_at_apply() {
        let stats = StatsRegistry::new(1);
        let yaml = |ca: &str| {
            format!(
                r#"
listeners:
  - {{name: web, address: "127.0.0.1:0", protocol: http}}
clusters:
  - {{name: c, endpoints: [{{address: "127.0.0.1:1", labels: {{v: "1"}}}}]}}
route_configs:
  - name: rc
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - {{match: {{prefix: /s}}, route: {{cluster: "c|one"}}}}
          - {{match: {{prefix: /}}, route: {{cluster: "localhost:8443"}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: c}}
spec:
  host: c
  trafficPolicy: {{tls: {{mode: SIMPLE, sni: c.internal, caCertificates: {ca}}}}}
  subsets: [{{name: one, labels: {{v: "1"}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: l}}
spec:
  host: localhost
  trafficPolicy: {{tls: {{mode: SIMPLE, sni: l.internal, caCertificates: {ca}}}}}
"#
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let made = crate::tls::tests::self_signed(dir.path(), "ca");
        if !made {
            eprintln!("SKIP destination_rule_tls_is_built_and_checked_at_apply: no openssl CLI");
            return;
        }
        let cfg = crate::config::parse(
            &yaml(&ca.display().to_string()),
            crate::config::Format::Yaml,
        )
        .unwrap();
        let t = compile(&cfg, 1, &stats, &mut SocketPool::new(1)).unwrap();
        for name in ["c", "c|one", "localhost:8443"] {
            let (_, c) = t.cluster(name).unwrap_or_else(|| panic!("{name}"));
            assert!(c.tls.is_some(), "{name} originates TLS");
        }
        let cfg = crate::config::parse(&yaml("/nonexistent/ca.pem"), crate::config::Format::Yaml)
            .unwrap();
        let e = compile(&cfg, 2, &stats, &mut SocketPool::new(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("DestinationRule trafficPolicy.tls of cluster `c`"),
            "{e}"
        );
        assert!(
            e.contains("DestinationRule trafficPolicy.tls of cluster `localhost:8443`"),
            "{e}"
        );
    }

    #[test]
    fn picks_skip_unusable_endpoints_and_panic_when_none_is_left() {
        let stats = StatsRegistry::new(1);
        let yaml = r#"
clusters:
  - {name: rr, endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]}
  - {name: mg, lb_policy: maglev, endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]}
  - {name: rnd, lb_policy: random, endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]}
  - {name: lr, lb_policy: least_request, endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]}
"#;
        let t = compile(
            &parse(yaml, Format::Yaml).unwrap(),
            1,
            &stats,
            &mut SocketPool::new(1),
        )
        .unwrap();
        let mut st = LbState::new(7);
        for c in t.clusters.iter() {
            let h = &c.health;
            c.endpoints[1].health.eject(h, 1, 1000, 1000);
            c.endpoints[2]
                .health
                .set_flag(h, crate::cluster::health::CHECK_FAILED, true);
            c.refresh_plan();
            let mut seen = [0; 4];
            let mut cur = 0;
            for i in 0..400u32 {
                let src = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 1));
                seen[c.pick(&mut st, &mut cur, Some(src), 0, 0).unwrap()] += 1;
            }
            assert_eq!((seen[1], seen[2]), (0, 0), "{}: {seen:?}", c.name);
            assert!(seen[0] > 100 && seen[3] > 100, "{}: {seen:?}", c.name);
            // Retries walk the usable endpoints only, then the plain order.
            assert_eq!(c.endpoint_for_attempt(0, 1), 3);
            assert_eq!(c.endpoint_for_attempt(3, 1), 0);
            assert_eq!(c.endpoint_for_attempt(0, 2), 2, "no usable one left: plain");
            // Everything out: panic mode spreads over all rather than failing.
            c.endpoints[0].health.eject(h, 1, 1000, 1000);
            c.endpoints[3].health.eject(h, 1, 1000, 1000);
            c.refresh_plan();
            let mut all = [0; 4];
            for i in 0..400u32 {
                let src = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 1));
                all[c.pick(&mut st, &mut cur, Some(src), 0, 0).unwrap()] += 1;
            }
            assert!(all.iter().all(|&n| n > 0), "{}: {all:?}", c.name);
        }
    }

    #[test]
    fn priority_levels_fail_over_in_order_and_come_back() {
        let stats = StatsRegistry::new(1);
        let yaml = r#"
clusters:
  - name: p
    endpoints:
      - {address: "127.0.0.1:3", priority: 2}
      - "127.0.0.1:1"
      - {address: "127.0.0.1:2", priority: 1}
      - "127.0.0.4:1"
"#;
        let t = compile(
            &parse(yaml, Format::Yaml).unwrap(),
            1,
            &stats,
            &mut SocketPool::new(1),
        )
        .unwrap();
        let c = &t.clusters[0];
        let prio: Vec<u32> = c.endpoints.iter().map(|e| e.priority).collect();
        assert_eq!(prio, [0, 0, 1, 2], "sorted by priority, stable");
        assert_eq!(c.levels.len(), 3);
        let mut st = LbState::new(1);
        let mut picks = |n: usize| {
            let mut seen = [0; 4];
            let mut cur = 0;
            for _ in 0..n {
                seen[c.pick(&mut st, &mut cur, None, 0, 0).unwrap()] += 1;
            }
            seen
        };
        assert_eq!(picks(100), [50, 50, 0, 0], "level 0 only");
        let h = &c.health;
        // Flags change before the plan (a health tick later): the stale plan still
        // sends everything to level 0, whose usable endpoint serves.
        c.endpoints[0].health.eject(h, 1, 1000, 1000);
        assert_eq!(picks(100), [0, 100, 0, 0], "what is left of level 0");
        // Envoy's priority load: level 0 at 50% usable is 70% available → 70/30.
        c.refresh_plan();
        let seen = picks(2000);
        assert_eq!((seen[0], seen[3]), (0, 0), "{seen:?}");
        assert!((1300..1500).contains(&seen[1]), "≈ 70%: {seen:?}");
        c.endpoints[1].health.eject(h, 1, 1000, 1000);
        assert_eq!(
            picks(100),
            [0, 0, 100, 0],
            "stale plan: the next usable level"
        );
        c.refresh_plan();
        assert_eq!(picks(100), [0, 0, 100, 0], "level 1 takes over");
        c.endpoints[2].health.eject(h, 1, 1000, 1000);
        c.refresh_plan();
        assert_eq!(picks(100), [0, 0, 0, 100], "then level 2");
        c.endpoints[3].health.eject(h, 1, 1000, 1000);
        c.refresh_plan();
        let panics = || {
            c.stats
                .get(crate::telemetry::UpstreamCounter::LbHealthyPanic)
        };
        let before = panics();
        let seen = picks(100);
        assert!(
            seen[0] > 0 && seen[1] > 0 && seen[2] + seen[3] == 0,
            "nothing usable: level 0 in panic, as Envoy: {seen:?}"
        );
        assert_eq!(panics() - before, 100, "every panic pick is counted");
        c.endpoints[0].health.uneject(h);
        c.refresh_plan();
        assert_eq!(picks(100), [100, 0, 0, 0], "level 0 is back");
    }

    fn compiled(yaml: &str) -> RouteTable {
        let stats = StatsRegistry::new(1);
        compile(
            &parse(yaml, Format::Yaml).unwrap(),
            1,
            &stats,
            &mut SocketPool::new(1),
        )
        .unwrap()
    }

    #[test]
    fn panic_threshold_balances_over_all_below_it_and_can_be_disabled() {
        let t = compiled(
            r#"
clusters:
  - {name: dflt, endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]}
  - {name: low, healthy_panic_threshold: 20, endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]}
  - {name: off, healthy_panic_threshold: 0, endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]}
"#,
        );
        let mut st = LbState::new(5);
        for c in t.clusters.iter() {
            assert_eq!(
                c.panic_threshold,
                match &*c.name {
                    "dflt" => 50.0,
                    "low" => 20.0,
                    _ => 0.0,
                }
            );
            for e in &c.endpoints[1..] {
                e.health.eject(&c.health, 1, 1000, 1000);
            }
            c.refresh_plan();
            let mut seen = [0; 4];
            let mut cur = 0;
            for _ in 0..400 {
                seen[c.pick(&mut st, &mut cur, None, 0, 0).unwrap()] += 1;
            }
            let panics = c
                .stats
                .get(crate::telemetry::UpstreamCounter::LbHealthyPanic);
            if &*c.name == "dflt" {
                // 25% usable < 50%: every endpoint takes traffic.
                assert!(seen.iter().all(|&n| n > 50), "{}: {seen:?}", c.name);
                assert_eq!(panics, 400);
            } else {
                assert_eq!(seen, [400, 0, 0, 0], "{}", c.name);
                assert_eq!(panics, 0);
            }
            c.endpoints[0].health.eject(&c.health, 1, 1000, 1000);
            c.refresh_plan();
            let none_usable = c.pick(&mut st, &mut cur, None, 0, 0);
            if &*c.name == "off" {
                assert_eq!(none_usable, None, "panic disabled: no endpoint");
            } else {
                assert!(none_usable.is_some());
            }
        }
    }

    #[test]
    fn locality_weights_split_and_follow_health() {
        let t = compiled(
            r#"
clusters:
  - name: loc
    locality_weights: {"eu/a": 1, "eu/b": 3, "us/c": 0}
    endpoints:
      - {address: "127.0.0.1:1", locality: eu/a}
      - {address: "127.0.0.1:2", locality: eu/b}
      - {address: "127.0.0.1:3", locality: eu/b}
      - {address: "127.0.0.1:4", locality: us/c}
  - name: loc2
    lb_policy: maglev
    locality_weights: {"eu/a": 1, "eu/b": 1}
    endpoints:
      - {address: "127.0.0.1:1", locality: eu/a}
      - {address: "127.0.0.1:2", locality: eu/b}
"#,
        );
        let c = &t.clusters[0];
        let mut st = LbState::new(9);
        let mut picks = |n: usize| {
            let mut seen = [0; 4];
            let mut cur = 0;
            for _ in 0..n {
                seen[c.pick(&mut st, &mut cur, None, 0, 0).unwrap()] += 1;
            }
            seen
        };
        let seen = picks(4000);
        assert_eq!(seen[3], 0, "weight 0: no traffic");
        assert!((850..1150).contains(&seen[0]), "eu/a ≈ 25%: {seen:?}");
        assert!((1300..1700).contains(&seen[1]) && (1300..1700).contains(&seen[2]));
        // Half of eu/b out: its availability is 70%, so eu/a gets 1/(1 + 2.1) ≈ 32%.
        c.endpoints[1].health.eject(&c.health, 1, 1000, 1000);
        c.refresh_plan();
        let seen = picks(4000);
        assert_eq!((seen[1], seen[3]), (0, 0), "{seen:?}");
        assert!((1100..1500).contains(&seen[0]), "eu/a ≈ 32%: {seen:?}");
        // Consistent hashing draws the locality from the key too: sticky.
        let m = &t.clusters[1];
        let key = Some(crate::cluster::maglev::hash64(b"alice", 0));
        st.set_key(key);
        let first = m.pick(&mut st, &mut 0, None, 0, 0);
        for _ in 0..20 {
            st.set_key(key);
            assert_eq!(m.pick(&mut st, &mut 0, None, 0, 0), first);
        }
    }

    #[test]
    fn request_keys_from_headers_and_cookies() {
        assert_eq!(
            cookie(b"a=1; session=xyz; b=2", b"session"),
            Some(&b"xyz"[..])
        );
        assert_eq!(cookie(b"session=", b"session"), Some(&b""[..]));
        assert_eq!(cookie(b"sessionx=1;session2=2", b"session"), None);
        assert_eq!(cookie(b"garbage", b"session"), None);
        assert_eq!(
            cookie(b"s=\"ab12\"; t=1", b"s"),
            Some(&b"ab12"[..]),
            "quotes dropped"
        );
        assert_eq!(
            cookie(b"s=\"", b"s"),
            Some(&b"\""[..]),
            "a lone quote stays"
        );
        let stats = StatsRegistry::new(1);
        let yaml = r#"
clusters:
  - {name: h, lb_policy: maglev, hash_policy: {header: x-user}, endpoints: ["127.0.0.1:1", "127.0.0.1:2"]}
  - {name: rr, endpoints: ["127.0.0.1:1"]}
"#;
        let t = compile(
            &parse(yaml, Format::Yaml).unwrap(),
            1,
            &stats,
            &mut SocketPool::new(1),
        )
        .unwrap();
        let h = &t.clusters[0];
        let key = |v: &'static [u8]| h.request_key(move |n| (n == "x-user").then_some(v));
        assert_eq!(key(b"alice"), key(b"alice"));
        assert_ne!(key(b"alice"), key(b"bob"));
        assert_eq!(
            h.request_key(|_| None),
            None,
            "no header: the source address"
        );
        assert_eq!(
            t.clusters[1].request_key(|_| Some(b"x")),
            None,
            "not hashing"
        );
        let mut st = LbState::new(3);
        st.set_key(key(b"alice"));
        let first = h.pick(&mut st, &mut 0, None, 0, 0);
        for _ in 0..20 {
            st.set_key(key(b"alice"));
            assert_eq!(h.pick(&mut st, &mut 0, None, 0, 0), first);
        }
        assert_eq!(st.take_key(), None, "a pick consumes its key");
    }

    #[test]
    fn connect_retries_walk_to_the_next_endpoint() {
        let stats = StatsRegistry::new(1);
        let t = compile(&cfg(0), 1, &stats, &mut SocketPool::new(1)).unwrap();
        let c = &t.clusters[0];
        let mut st = LbState::new(1);
        let mut cur = 0;
        let first = c.pick(&mut st, &mut cur, None, 0, 0).unwrap();
        cur = 0;
        let second = c.pick(&mut st, &mut cur, None, 1, 0).unwrap();
        assert_ne!(first, second);
    }

    /// Slow start: an endpoint that joined later takes `scale` of its share while the
    /// others are past their window, round robin and least request alike; past its own
    /// window it takes its full share and picks leave the slow path.
    #[test]
    fn slow_start_thins_a_joining_endpoint() {
        for (policy, block) in [
            ("round_robin", "round_robin_lb_config"),
            ("least_request", "least_request_lb_config"),
        ] {
            let t = compiled(&format!(
                "clusters:\n  - {{name: s, lb_policy: {policy}, {block}: {{slow_start_config: {{slow_start_window: 10s}}}}, endpoints: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]}}\n"
            ));
            let c = &t.clusters[0];
            let t0 = crate::cluster::health::now_ms() + 100_000;
            // Endpoints 0 and 1 joined long ago; endpoint 2 joins at t0.
            c.endpoints[0].health.restart_slow_start(1);
            c.endpoints[1].health.restart_slow_start(1);
            c.endpoints[2].health.restart_slow_start(t0);
            let mut st = LbState::new(5);
            let mut cur = 0;
            let mut share = |at: u64| {
                c.refresh_slow_start(at);
                let mut seen = [0u32; 3];
                for _ in 0..30_000 {
                    seen[c.pick(&mut st, &mut cur, None, 0, 0).unwrap()] += 1;
                }
                f64::from(seen[2]) / 30_000.0
            };
            // 0.5 s in: max(10%, 1 s / 10 s) = 10% weight → 0.1 / 2.1 of the picks.
            let early = share(t0 + 500);
            assert!((early - 0.1 / 2.1).abs() < 0.01, "{policy}: {early}");
            assert_eq!(c.health.slow_starting(), 1);
            // Half way: 50% → 0.5 / 2.5.
            let half = share(t0 + 5_000);
            assert!((half - 0.2).abs() < 0.015, "{policy}: {half}");
            // Past the window: a third, and no endpoint scaled.
            let after = share(t0 + 10_000);
            assert!((after - 1.0 / 3.0).abs() < 0.015, "{policy}: {after}");
            assert_eq!(c.health.slow_starting(), 0);
        }
    }

    /// Bounded loads: a key stays on its endpoint until that endpoint has more than
    /// `hash_balance_factor`% of its share of the active connections; then it moves.
    #[test]
    fn hash_balance_factor_moves_keys_off_an_overloaded_endpoint() {
        use crate::telemetry::UpstreamCounter::CxTotal;
        for policy in ["maglev", "ring_hash"] {
            let t = compiled(&format!(
                "clusters:\n  - {{name: h, lb_policy: {policy}, consistent_hashing_lb_config: {{hash_balance_factor: 150}}, endpoints: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]}}\n"
            ));
            let c = &t.clusters[0];
            let mut st = LbState::new(7);
            let mut pick = |k: u64| {
                st.set_key(Some(k));
                c.pick(&mut st, &mut 0, None, 0, 0).unwrap()
            };
            let home = pick(42);
            assert!(
                (0..20).all(|_| pick(42) == home),
                "{policy}: sticky while idle"
            );
            // Home has 2 of 4 active: cap ceil(1.5 × 5 / 3) = 3, still room.
            c.endpoints[home].stats.add(0, CxTotal, 2);
            c.endpoints[(home + 1) % 3].stats.add(0, CxTotal, 1);
            c.endpoints[(home + 2) % 3].stats.add(0, CxTotal, 1);
            assert_eq!(pick(42), home, "{policy}: within its bound");
            // Home has 10 of 12: over ceil(1.5 × 13 / 3) = 7; the key moves, and stays
            // on its next choice.
            c.endpoints[home].stats.add(0, CxTotal, 8);
            let moved = pick(42);
            assert_ne!(
                moved, home,
                "{policy}: an overloaded endpoint is passed over"
            );
            assert!((0..20).all(|_| pick(42) == moved), "{policy}");
        }
        // Unbounded (no factor): the key stays whatever the load.
        let t = compiled(
            "clusters:\n  - {name: h, lb_policy: maglev, endpoints: [\"127.0.0.1:1\", \"127.0.0.1:2\"]}\n",
        );
        let c = &t.clusters[0];
        let mut st = LbState::new(7);
        st.set_key(Some(42));
        let home = c.pick(&mut st, &mut 0, None, 0, 0).unwrap();
        c.endpoints[home].stats.add(0, CxTotal, 100);
        st.set_key(Some(42));
        assert_eq!(c.pick(&mut st, &mut 0, None, 0, 0), Some(home));
    }

    /// `use_hostname_for_hashing`: keys follow host names, so new addresses for the
    /// same names move no key (by address, some keys move).
    #[test]
    fn hashing_by_host_name_survives_address_changes() {
        let yaml = |base: u16, by_name: bool| {
            format!(
                "clusters:\n  - {{name: h, lb_policy: ring_hash, consistent_hashing_lb_config: {{use_hostname_for_hashing: {by_name}}}, endpoints: [{{address: \"127.0.0.1:{}\", hostname: a}}, {{address: \"127.0.0.1:{}\", hostname: b}}, {{address: \"127.0.0.1:{}\", hostname: c}}]}}\n",
                base,
                base + 1,
                base + 2
            )
        };
        let owners = |yaml: String| -> Vec<usize> {
            let t = compiled(&yaml);
            let mut st = LbState::new(1);
            (0..500u64)
                .map(|k| {
                    st.set_key(Some(crate::cluster::maglev::mix64(k)));
                    t.clusters[0].pick(&mut st, &mut 0, None, 0, 0).unwrap()
                })
                .collect()
        };
        assert_eq!(owners(yaml(1000, true)), owners(yaml(2000, true)));
        assert_ne!(owners(yaml(1000, false)), owners(yaml(2000, false)));
        let t = compiled(&yaml(1000, true));
        assert!(t.clusters[0].hash_by_name);
    }
}
