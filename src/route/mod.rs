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
}

impl ClusterEntry {
    /// The endpoint for connect attempt `attempt` (0 first): the balancer's choice, then
    /// the following endpoints in order so a retry never repeats the one that failed.
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
        let first = self.balancer.pick(st, cursor, source, |i| {
            use crate::telemetry::UpstreamCounter::{CxClosed, CxTotal};
            let s = &self.endpoints[i].stats;
            // Only this worker's slot: approximate, but local and lock-free.
            s.get_worker(worker, CxTotal as usize)
                .saturating_sub(s.get_worker(worker, CxClosed as usize))
        });
        Some((first + attempt as usize) % self.endpoints.len())
    }
}

impl RouteTable {
    pub fn empty() -> RouteTable {
        RouteTable {
            generation: 0,
            listeners: Box::new([]),
            clusters: Box::new([]),
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
    let mut index = HashMap::new();
    let mut problems = Vec::new();
    if let Some(o) = &cfg.offload {
        if o.backend != crate::config::tls::OffloadBackend::Auto {
            // Honest refusal: the hand-over to tickmesh-offload is not wired into the
            // proxy yet, so no backend can be chosen; `auto` means rustls inline.
            problems.push(Problem {
                path: "offload.backend".into(),
                line: None,
                message: format!(
                    "`{}` cannot be chosen yet: TLS record crypto runs inside rustls in this build (the tickmesh-offload hand-over is not wired into the proxy); use `auto` or leave it out",
                    format!("{:?}", o.backend).to_lowercase()
                ),
            });
        }
    }
    let mut clusters: Vec<ClusterEntry> = Vec::with_capacity(cfg.clusters.len());
    for (i, c) in cfg.clusters.iter().enumerate() {
        index.insert(c.name.clone(), clusters.len() as u32);
        let mut entry = build_cluster(c, stats);
        if let Some(t) = &c.tls {
            match crate::tls::build_client(t, &format!("clusters[{i}].tls")) {
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
                };
                match http::compile(&vhosts, &mut names) {
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
        if tls.is_some() && l.protocol != Protocol::Tcp {
            problems.push(Problem {
                path: format!("listeners[{i}].tls"),
                line: None,
                message: format!(
                    "TLS is served on tcp listeners only so far, not {}",
                    l.protocol
                ),
            });
            continue;
        }
        let sockets = match pool.get_or_bind(l.address, l.protocol) {
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
    })
}

fn build_cluster(c: &Cluster, stats: &StatsRegistry) -> ClusterEntry {
    // A name stands for every address it resolved to (STRICT_DNS), each with the name's
    // weight; until the resolver has an answer it stands for none.
    let resolved: Vec<(SocketAddr, u32)> = c
        .endpoints
        .iter()
        .flat_map(|e| match &e.address {
            EndpointAddress::Ip(a) => vec![(*a, e.weight)],
            EndpointAddress::Dns { host, port } => dns::cached(host, *port)
                .into_iter()
                .map(|a| (a, e.weight))
                .collect(),
        })
        .collect();
    let addrs: Vec<SocketAddr> = resolved.iter().map(|(a, _)| *a).collect();
    let weights: Vec<u32> = resolved.iter().map(|(_, w)| *w).collect();
    ClusterEntry {
        name: c.name.as_str().into(),
        endpoints: resolved
            .iter()
            .map(|&(address, weight)| EndpointEntry {
                address,
                weight,
                stats: stats.endpoint(&c.name, address),
            })
            .collect(),
        balancer: Balancer::build(c.lb_policy, &addrs, &weights),
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
    }
}

/// Cluster names used by HTTP routes: a defined cluster, or else (as a sidecar does) a
/// `strict_dns` cluster on the name, at its `:port` or 80, added to the table.
struct ImplicitClusters<'a> {
    index: &'a mut HashMap<String, u32>,
    clusters: &'a mut Vec<ClusterEntry>,
    stats: &'a StatsRegistry,
}

impl http::ClusterIndex for ImplicitClusters<'_> {
    fn index(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
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
            }],
            connect_timeout: None,
            max_connect_attempts: None,
            dns_refresh_rate: None,
            idle_timeout: None,
            circuit_breakers: None,
            outlier_detection: None,
            tls: None,
        };
        let i = self.clusters.len() as u32;
        self.clusters.push(build_cluster(&c, self.stats));
        self.index.insert(name.to_string(), i);
        i
    }
}

/// The published snapshot: workers `load()` it once per batch; the control plane
/// `store()`s a new one. Readers never block writers or each other.
pub struct Routes(ArcSwap<RouteTable>);

impl Routes {
    pub fn new(t: RouteTable) -> Self {
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
        self.0.store(Arc::new(t))
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
}
