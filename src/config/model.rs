//! The native configuration shape, exactly as an operator writes it.
//!
//! These are plain data: nothing here is looked at by the data plane. `route::compile`
//! turns a validated [`Config`] into the immutable runtime snapshot.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::http::RouteConfig;
use super::istio::{DestinationRule, PeerAuthentication, VirtualService};
use super::tls::{ClusterTls, ListenerTls, Offload};

/// A whole configuration: what `tickmesh run --config` loads and what `apply -f` upserts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<Cluster>,
    /// HTTP routing (Envoy `RouteConfiguration`s), served by `protocol: http` listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_configs: Vec<RouteConfig>,
    /// Istio resources, kept as written and translated when routes are compiled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_services: Vec<VirtualService>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_rules: Vec<DestinationRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_authentications: Vec<PeerAuthentication>,
    /// TLS record crypto offload (daemon-wide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<Offload>,
    /// Host NIC tuning (a `tickmesh nic` profile) applied when the daemon starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<NicSettings>,
    /// This proxy itself (Envoy's `node`): its locality, which Istio
    /// `localityLbSetting` is relative to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
}

/// The proxy's own identity, as far as load balancing needs it. Also an Envoy
/// bootstrap's `node` (only its `locality` is taken).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// `region`, `region/zone` or `region/zone/sub_zone`; or Envoy's
    /// `{region, zone, sub_zone}` (read into the same path form).
    #[serde(deserialize_with = "locality_path")]
    pub locality: String,
}

/// A locality as a `region/zone/sub_zone` path or Envoy's `{region, zone, sub_zone}`
/// message. The message's parts must be a leading run (a zone needs its region, a sub
/// zone its zone): otherwise the path form could not say which part is which.
fn locality_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::{Error, MapAccess, Visitor};
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("`region/zone/sub_zone` or {region, zone, sub_zone}")
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<String, A::Error> {
            let l = super::envoy::Locality::deserialize(
                serde::de::value::MapAccessDeserializer::new(map),
            )?;
            let parts = [&l.region, &l.zone, &l.sub_zone].map(|p| p.as_deref().unwrap_or(""));
            let n = parts
                .iter()
                .rposition(|p| !p.is_empty())
                .map_or(0, |i| i + 1);
            if n == 0 {
                return Err(A::Error::custom(
                    "an empty locality: give at least `region`",
                ));
            }
            let names = ["region", "zone", "sub_zone"];
            if let Some(i) = parts.iter().position(|p| p.contains('/')) {
                return Err(A::Error::custom(format!(
                    "{} `{}` contains `/`",
                    names[i], parts[i]
                )));
            }
            if let Some(i) = parts[..n].iter().position(|p| p.is_empty()) {
                return Err(A::Error::custom(format!(
                    "`{}` is set without `{}`: give the locality from its region down",
                    names[n - 1],
                    names[i]
                )));
            }
            Ok(parts[..n].join("/"))
        }
    }
    d.deserialize_any(V)
}

/// A NIC profile for the daemon to apply at start and then watch for drift.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSettings {
    /// A profile file, or `low-latency` for the shipped one.
    pub profile: String,
    /// Devices the profile's device entries apply to (when it names none itself).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// How often the host is compared with the profile; differences are logged (default 60s).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub drift_check: Option<Duration>,
}

/// One bound address and what happens to traffic arriving on it (its L4 route).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    #[serde(default)]
    pub protocol: Protocol,
    /// Route every connection to this cluster. On an `http` listener: where connections
    /// that are not HTTP/1.x go (opaque TCP fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `http` listeners: serve only this route configuration (default: every route
    /// configuration and `VirtualService`, matched by `Host`, as a sidecar does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_config: Option<String>,
    /// Or split connections across clusters by weight (canary).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weighted_clusters: Vec<WeightedCluster>,
    /// Connections beyond this many per listener are closed at once and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// TCP: close a connection idle this long in both directions. UDP: expire a client
    /// session after this long without traffic.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// DPDK engine only: how packets to this VIP reach a backend (default `dnat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<Forwarding>,
    /// Terminate TLS (and mTLS) from clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Workload labels, matched by `PeerAuthentication` selectors.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `http` listeners: the longest a client may take to send a request head (408 and
    /// close after it). Default 10 s.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_header_timeout: Option<Duration>,
    /// `http` listeners: largest request body accepted, in bytes (413 beyond it).
    /// Default 1 GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<u64>,
    /// `http` listeners: what happens to `x-forwarded-client-cert` (Envoy's HCM option of
    /// the same name). Default `SANITIZE_SET` with `uri` (Istio-like; Envoy's own default
    /// is `SANITIZE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_client_cert_details: Option<super::tls::ForwardClientCertDetails>,
    /// `http` listeners with `APPEND_FORWARD` or `SANITIZE_SET`: the client-certificate
    /// fields of this proxy's element (Envoy's option of the same name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_current_client_cert_details: Option<super::tls::ClientCertDetails>,
}

/// How the DPDK packet load balancer hands a VIP's packets to the chosen backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Rewrite the destination to the backend; replies come back through the balancer,
    /// which rewrites their source back to the VIP.
    #[default]
    Dnat,
    /// Encapsulate in IPv4-in-IPv4 (RFC 2003) to the backend, which answers the client
    /// directly (direct server return, as Katran does).
    Ipip,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Http,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Http => "http",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

/// A named group of upstream endpoints and how to choose among them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    /// `static` (addresses as written) or `strict_dns` (names re-resolved periodically).
    #[serde(default, rename = "type")]
    pub discovery: Discovery,
    #[serde(default)]
    pub lb_policy: LbPolicy,
    pub endpoints: Vec<Endpoint>,
    /// Give up on one upstream connect attempt after this long (default 1s).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    /// Connect attempts per downstream connection, each to the next endpoint (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connect_attempts: Option<u32>,
    /// `strict_dns`: how often names are resolved again (default 5s; a record's TTL wins
    /// when shorter).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub dns_refresh_rate: Option<Duration>,
    /// HTTP: an idle pooled upstream connection is closed after this long (default
    /// 60 s; Envoy's `common_http_protocol_options.idle_timeout`, whose default is 1 h).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Active HTTP health checks (Envoy's shape; at most one per cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<HealthCheck>,
    /// `maglev`/`ring_hash` clusters: what HTTP requests are hashed on (default: the
    /// client's source address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_policy: Option<HashPolicy>,
    /// Originate TLS to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
    /// Envoy's `healthy_panic_threshold`, percent (default 50; 0 disables panic mode):
    /// a priority level with a smaller usable share balances over all its endpoints
    /// when the levels together cannot take the load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_panic_threshold: Option<f64>,
    /// Locality-weighted balancing (Envoy `locality_weighted_lb_config`): the weight of
    /// each endpoint `locality` within its priority level. A locality not named here
    /// takes no traffic, as in Envoy. Empty: off.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub locality_weights: BTreeMap<String, u32>,
    /// `ring_hash` clusters: the ring's size bounds and hash function (Envoy's
    /// `ring_hash_lb_config`, same fields and defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash_lb_config: Option<RingHashLbConfig>,
    /// `maglev` clusters: the lookup table size (Envoy's `maglev_lb_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev_lb_config: Option<MaglevLbConfig>,
    /// `least_request` clusters: choices per pick, the active-request bias and slow
    /// start (Envoy's `least_request_lb_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub least_request_lb_config: Option<LeastRequestLbConfig>,
    /// `round_robin` clusters: slow start (Envoy's `round_robin_lb_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_robin_lb_config: Option<RoundRobinLbConfig>,
    /// `ring_hash`/`maglev` clusters: what endpoints are hashed by and bounded loads
    /// (Envoy's `common_lb_config.consistent_hashing_lb_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hashing_lb_config: Option<ConsistentHashingLbConfig>,
}

/// Envoy's `Cluster.RingHashLbConfig`: every endpoint gets a number of points on the ring
/// proportional to its weight; the ring has at least `minimum_ring_size` points (default
/// 1024) and at most `maximum_ring_size` (default 8M, Envoy's cap too).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingHashLbConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_ring_size: Option<u64>,
    /// How ring points are placed: `XX_HASH` (default) or `MURMUR_HASH_2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_function: Option<RingHashFunction>,
}

/// The hash that places an endpoint's points on the ring, keyed as Envoy keys them
/// (`"address:port_N"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RingHashFunction {
    /// xxHash64, seed 0.
    #[default]
    #[serde(rename = "XX_HASH", alias = "xx_hash")]
    XxHash,
    /// libstdc++'s 64-bit `std::hash<std::string>` (a MurmurHash2 variant), as Envoy's.
    #[serde(rename = "MURMUR_HASH_2", alias = "murmur_hash_2")]
    MurmurHash2,
}

/// Envoy's `Cluster.MaglevLbConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaglevLbConfig {
    /// A prime ≤ 5000011 (default 65537): a larger table moves fewer keys when the
    /// endpoints change and balances weights more finely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

/// Envoy's `Cluster.LeastRequestLbConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeastRequestLbConfig {
    /// Endpoints drawn per pick when all weights are equal, the least busy wins (default
    /// 2; Envoy requires ≥ 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice_count: Option<u32>,
    /// When weights differ, each endpoint's share is `weight / (active + 1)^bias`
    /// (default 1.0; 0 ignores load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_request_bias: Option<RuntimeDouble>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_config: Option<SlowStartConfig>,
}

/// Envoy's `Cluster.RoundRobinLbConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundRobinLbConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_config: Option<SlowStartConfig>,
}

/// Envoy's `SlowStartConfig`: an endpoint that joins the cluster (or, with active
/// health checks, turns healthy) takes `weight × max(min_weight_percent,
/// time_factor^(1/aggression))` during `slow_start_window`, where `time_factor` is
/// `max(seconds since it joined, 1) / window seconds` ([`crate::cluster::slow_start`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowStartConfig {
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub slow_start_window: Option<Duration>,
    /// Default 1.0 (linear ramp); must be > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggression: Option<RuntimeDouble>,
    /// Default 10%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_weight_percent: Option<Percent>,
}

/// Envoy's `CommonLbConfig.ConsistentHashingLbConfig` (its `hash_policy` is refused by
/// name: give the route's or the cluster's `hash_policy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistentHashingLbConfig {
    /// Place endpoints on the ring / table by their host name (a `strict_dns` name or the
    /// endpoint's `hostname`) instead of their address, so a changed address does not
    /// move keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_hostname_for_hashing: Option<bool>,
    /// Bounded loads, ≥ 100: a key whose endpoint has more than this percentage of the
    /// cluster's average active requests goes on to the next endpoint of the ring/table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_balance_factor: Option<u32>,
}

/// Envoy's `core.v3.RuntimeDouble`. tickmesh has no runtime layer, so `default_value`
/// always applies — which is what Envoy does while the runtime lacks the key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeDouble {
    pub default_value: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_key: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    #[default]
    #[serde(alias = "STATIC")]
    Static,
    #[serde(alias = "STRICT_DNS")]
    StrictDns,
}

/// Envoy's circuit-breaker thresholds (one priority).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Envoy's retry budget: when set, it replaces `max_retries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// Envoy's `RetryBudget`: concurrent retries allowed are `budget_percent` of the
/// cluster's active requests, and never fewer than `min_retry_concurrency`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Envoy's default 20%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_percent: Option<Percent>,
    /// Envoy's default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
}

// Validation refuses NaN (and anything outside 0..=100).
impl Eq for RetryBudget {}

/// Envoy's `type.v3.Percent`: `{value: 20.0}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

/// Envoy's outlier detection (consecutive errors → ejection for base × times ejected).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_failure: Option<u32>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub base_ejection_time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    /// Percent chance that a detected 5xx outlier is ejected (Envoy default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_consecutive_5xx: Option<u32>,
    /// Percent chance that a detected gateway-failure outlier is ejected (Envoy
    /// default 0: set 100 to eject on `consecutive_gateway_failure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_consecutive_gateway_failure: Option<u32>,
    /// Longest ejection (default 300 s, or `base_ejection_time` when longer).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ejection_time: Option<Duration>,
    /// Success-rate detection (each interval): endpoints with at least
    /// `success_rate_request_volume` requests in it (default 100) are compared once
    /// `success_rate_minimum_hosts` of them have (default 5); one whose success rate is
    /// below mean − `success_rate_stdev_factor`/1000 × stdev (default 1900) is ejected
    /// with the chance `enforcing_success_rate` (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_minimum_hosts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_request_volume: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_stdev_factor: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_success_rate: Option<u32>,
    /// Failure-percentage detection (each interval): an endpoint with at least
    /// `failure_percentage_request_volume` requests (default 50), among at least
    /// `failure_percentage_minimum_hosts` such endpoints (default 5), whose share of
    /// failures reaches `failure_percentage_threshold` percent (default 85) is ejected
    /// with the chance `enforcing_failure_percentage` (default **0**, as in Envoy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage_minimum_hosts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage_request_volume: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_failure_percentage: Option<u32>,
    /// Count local-origin failures (connect failure or timeout, reset or garbage before a
    /// response, response timeout) apart from HTTP statuses (Envoy default false: a
    /// local failure counts as a 503). With it, `consecutive_5xx`,
    /// `consecutive_gateway_failure` and the success-rate / failure-percentage volumes
    /// count statuses only, and the local-origin fields below judge the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_local_origin_errors: Option<bool>,
    /// Split counting: consecutive local-origin failures that eject (default 5), with the
    /// chance `enforcing_consecutive_local_origin_failure` (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failure: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_consecutive_local_origin_failure: Option<u32>,
    /// Split counting: the chance that a local-origin success-rate outlier (judged with
    /// the `success_rate_*` settings) is ejected (default 100), and a local-origin
    /// failure-percentage one (`failure_percentage_*` settings; default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_local_origin_success_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing_failure_percentage_local_origin: Option<u32>,
    /// With active health checks: a passing check brings an ejected endpoint back at
    /// once and clears its error runs (Envoy default true); one failing its check comes
    /// back when the check turns healthy (`healthy_threshold` passes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successful_active_health_check_uneject_host: Option<bool>,
    /// Each ejection lasts a random extra 0..=this (Envoy default 0), so endpoints
    /// ejected together do not return together.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ejection_time_jitter: Option<Duration>,
    /// Unset: one endpoint can always be ejected whatever `max_ejection_percent` says
    /// (Envoy's documented rule before 1.31). `true`: the same, said explicitly (Envoy
    /// ≥ 1.31). `false`: the cap holds even for the first ejection (Envoy ≥ 1.31's
    /// default: 10% of a 2-endpoint cluster ejects nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always_eject_one_host: Option<bool>,
}

/// The key of consistent hashing: exactly one of a request header's value, a cookie's
/// value, a query parameter's value, or the client's source address (Istio
/// `consistentHash`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
    /// A query parameter's first value (Istio `httpQueryParameterName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<String>,
    /// With `cookie`: a request without the cookie gets one generated (Envoy's and
    /// Istio's `httpCookie.ttl`): the response carries `Set-Cookie` with this
    /// `Max-Age` (0: a session cookie) and `cookie_path`.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub cookie_ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_path: Option<String>,
}

/// Envoy's `HealthCheck` (HTTP checks only): every `interval`, `GET path` with a
/// `timeout`; `unhealthy_threshold` failures in a row take the endpoint out,
/// `healthy_threshold` passes in a row put it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(with = "opt_duration", default)]
    pub timeout: Option<Duration>,
    #[serde(with = "opt_duration", default)]
    pub interval: Option<Duration>,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// Exactly one of the two kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_health_check: Option<HttpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_health_check: Option<TcpHealthCheck>,
}

/// Envoy's `TcpHealthCheck` without payloads: the check passes when a connection is
/// made (`send`/`receive` are refused by name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    pub path: String,
    /// `Host` of the check request (default: the cluster's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Status ranges `[start, end)` that pass (default: 200 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<StatusRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRange {
    pub start: u16,
    pub end: u16,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    #[serde(alias = "ROUND_ROBIN")]
    RoundRobin,
    /// Envoy's least request: N choices on active connections (equal weights), or
    /// weights scaled by load (`least_request_lb_config`).
    #[serde(alias = "LEAST_REQUEST")]
    LeastRequest,
    #[serde(alias = "RANDOM")]
    Random,
    /// Maglev consistent hashing (`hash_policy`, default the client's source address;
    /// `maglev_lb_config`).
    #[serde(alias = "MAGLEV")]
    Maglev,
    /// Envoy's ring hash (Karger et al.'s consistent hashing): points on a sorted ring,
    /// a lookup is a binary search ([`crate::cluster::ring`]).
    #[serde(alias = "RING_HASH")]
    RingHash,
}

/// An upstream with a weight. Written either as `"127.0.0.1:9000"` (or `"name:port"` in a
/// `strict_dns` cluster) or as `{address: "127.0.0.1:9000", weight: 2, priority: 0,
/// locality: "eu-west/az1"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: EndpointAddress,
    pub weight: u32,
    /// 0 is served first; higher priorities take traffic when lower ones have no healthy
    /// endpoint.
    pub priority: u32,
    pub locality: Option<String>,
    /// Workload labels; a DestinationRule subset selects the endpoints whose labels
    /// include all of its own.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The endpoint's host name (Envoy's `Endpoint.hostname`): consistent hashing keys
    /// the endpoint by it with `use_hostname_for_hashing`.
    pub hostname: Option<String>,
}

impl Endpoint {
    pub fn ip(address: SocketAddr) -> Self {
        Endpoint {
            address: EndpointAddress::Ip(address),
            weight: 1,
            priority: 0,
            locality: None,
            labels: Default::default(),
            hostname: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    Ip(SocketAddr),
    Dns { host: String, port: u16 },
}

impl EndpointAddress {
    pub fn ip(&self) -> Option<SocketAddr> {
        match self {
            EndpointAddress::Ip(a) => Some(*a),
            EndpointAddress::Dns { .. } => None,
        }
    }

    fn parse(v: &str) -> Option<EndpointAddress> {
        if let Ok(a) = v.parse() {
            return Some(EndpointAddress::Ip(a));
        }
        let (host, port) = v.rsplit_once(':')?;
        let port = port.parse().ok()?;
        let ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
            });
        ok.then(|| EndpointAddress::Dns {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddress::Ip(a) => a.fmt(f),
            EndpointAddress::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.weight == 1
            && self.priority == 0
            && self.locality.is_none()
            && self.labels.is_empty()
            && self.hostname.is_none()
        {
            return s.collect_str(&self.address);
        }
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("address", &self.address.to_string())?;
        if self.weight != 1 {
            m.serialize_entry("weight", &self.weight)?;
        }
        if self.priority != 0 {
            m.serialize_entry("priority", &self.priority)?;
        }
        if let Some(l) = &self.locality {
            m.serialize_entry("locality", l)?;
        }
        if !self.labels.is_empty() {
            m.serialize_entry("labels", &self.labels)?;
        }
        if let Some(h) = &self.hostname {
            m.serialize_entry("hostname", h)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        fn addr<E: de::Error>(v: &str) -> Result<EndpointAddress, E> {
            EndpointAddress::parse(v).ok_or_else(|| {
                E::custom(format!(
                    "invalid endpoint address `{v}`, expected ip:port or hostname:port"
                ))
            })
        }
        impl<'de> Visitor<'de> for V {
            type Value = Endpoint;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an endpoint: \"ip:port\" or {address: \"ip:port\", weight: N}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Endpoint, E> {
                Ok(Endpoint {
                    address: addr(v)?,
                    weight: 1,
                    priority: 0,
                    locality: None,
                    labels: Default::default(),
                    hostname: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Endpoint, A::Error> {
                let mut e = Endpoint {
                    address: EndpointAddress::Dns {
                        host: String::new(),
                        port: 0,
                    },
                    weight: 1,
                    priority: 0,
                    locality: None,
                    labels: Default::default(),
                    hostname: None,
                };
                let mut have_address = false;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "address" => {
                            e.address = addr(&map.next_value::<String>()?)?;
                            have_address = true;
                        }
                        "weight" => e.weight = map.next_value()?,
                        "priority" => e.priority = map.next_value()?,
                        "locality" => e.locality = Some(map.next_value()?),
                        "labels" => e.labels = map.next_value()?,
                        "hostname" => e.hostname = Some(map.next_value()?),
                        other => {
                            return Err(de::Error::unknown_field(
                                other,
                                &[
                                    "address", "weight", "priority", "locality", "labels",
                                    "hostname",
                                ],
                            ))
                        }
                    }
                }
                if !have_address {
                    return Err(de::Error::missing_field("address"));
                }
                Ok(e)
            }
        }
        d.deserialize_any(V)
    }
}

/// `"250ms"`, `"5s"`, `"1m"` (humantime syntax, as Envoy and Istio write durations).
pub(crate) mod opt_duration {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .or_else(|e| protobuf_seconds(&s).ok_or(e))
            .map(Some)
            .map_err(|e| {
                de::Error::custom(format!(
                    "invalid duration `{s}` ({e}); write e.g. \"250ms\" or \"5s\""
                ))
            })
    }

    /// The protobuf JSON form Envoy configs use for fractions: `0.25s`, `1.5s` (at most
    /// nine decimals, as `google.protobuf.Duration` has nanoseconds).
    pub(crate) fn protobuf_seconds(s: &str) -> Option<Duration> {
        let (whole, frac) = s.strip_suffix('s')?.split_once('.')?;
        let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !digits(frac) || frac.len() > 9 {
            return None;
        }
        let nanos: u32 = format!("{frac:0<9}").parse().ok()?;
        Some(Duration::new(whole.parse().ok()?, nanos))
    }
}

#[cfg(test)]
mod duration_tests {
    use super::opt_duration::protobuf_seconds;
    use std::time::Duration;

    #[test]
    fn protobuf_fractional_seconds() {
        assert_eq!(protobuf_seconds("0.25s"), Some(Duration::from_millis(250)));
        assert_eq!(protobuf_seconds("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(protobuf_seconds("3.000000001s"), Some(Duration::new(3, 1)));
        for bad in [
            "1s",
            ".5s",
            "1.s",
            "1.5",
            "1.5ms",
            "-1.5s",
            "1.0000000001s",
            "a.5s",
        ] {
            assert_eq!(protobuf_seconds(bad), None, "{bad}");
        }
    }
}
