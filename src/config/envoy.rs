//! Envoy v3 cluster definitions (`static_resources.clusters`, and the seed's top-level
//! `cluster:` list) and their translation into native [`Cluster`]s.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::model::{
    opt_duration, CircuitBreakers, Cluster, ConsistentHashingLbConfig, Discovery, Endpoint,
    EndpointAddress, HealthCheck, LbPolicy, LeastRequestLbConfig, MaglevLbConfig, OutlierDetection,
    RingHashLbConfig, RoundRobinLbConfig,
};

/// An Envoy bootstrap document; only `static_resources.clusters` and `node.locality`
/// (route configurations are given on their own) are taken — Envoy listeners are not,
/// use native listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    pub static_resources: StaticResources,
    /// The proxy's locality (the native top-level `node:`), for Istio locality load
    /// balancing; Envoy's other `node` fields (`id`, `cluster`, `metadata`, …) name
    /// the proxy to a management server tickmesh does not talk to, and are refused.
    #[serde(default)]
    pub node: Option<super::model::Node>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticResources {
    #[serde(default)]
    pub clusters: Vec<EnvoyCluster>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyCluster {
    pub name: String,
    /// `STATIC` or `STRICT_DNS`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb_policy: Option<String>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_assignment: Option<LoadAssignment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<EnvoyCircuitBreakers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Envoy's fields and names, so the native type serves.
    pub outlier_detection: Option<OutlierDetection>,
    /// Envoy's shape, so the native type serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<HealthCheck>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub dns_refresh_rate: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respect_dns_ttl: Option<bool>,
    /// `V4_ONLY`, `V6_ONLY`, `AUTO`, `V4_PREFERRED`, `ALL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_lookup_family: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_lb_config: Option<CommonLbConfig>,
    /// Only `envoy.extensions.upstreams.http.v3.HttpProtocolOptions` (read in
    /// [`EnvoyCluster::to_native`], so that another extension is refused by its name).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub typed_extension_protocol_options: std::collections::BTreeMap<String, serde_yaml::Value>,
    /// Envoy's deprecated cluster-level form of
    /// `common_http_protocol_options.max_requests_per_connection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// `envoy.transport_sockets.tls` with an `UpstreamTlsContext`: the native cluster
    /// `tls:` (originate TLS); `envoy.transport_sockets.raw_buffer`: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_socket: Option<TransportSocket>,
    /// `RING_HASH` clusters; Envoy's fields, so the native type serves (checked with
    /// the native cluster: the error names the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash_lb_config: Option<RingHashLbConfig>,
    /// `MAGLEV` clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev_lb_config: Option<MaglevLbConfig>,
    /// `LEAST_REQUEST` clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub least_request_lb_config: Option<LeastRequestLbConfig>,
    /// `ROUND_ROBIN` clusters (slow start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_robin_lb_config: Option<RoundRobinLbConfig>,
    /// The typed-extension form of the balancer choice (Envoy ≥ 1.24); when set it
    /// replaces `lb_policy` and the `*_lb_config` fields, as in Envoy
    /// ([`super::lb_policy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing_policy: Option<super::lb_policy::LoadBalancingPolicy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSocket {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed_config: Option<UpstreamTlsContext>,
}

const UPSTREAM_TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// Envoy's `UpstreamTlsContext`, as far as the native cluster `tls:` goes: the SNI name
/// (which tickmesh also verifies the certificate against), the CA bundle and a client
/// certificate, all from files. Everything else (`tls_params`, `alpn_protocols`,
/// subject-alt-name matchers, inline or SDS secrets) is refused by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsContext {
    #[serde(rename = "@type", default, skip_serializing_if = "Option::is_none")]
    pub type_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_tls_context: Option<CommonTlsContext>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonTlsContext {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TlsCertificate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_context: Option<ValidationContext>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    pub certificate_chain: DataSource,
    pub private_key: DataSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationContext {
    pub trusted_ca: DataSource,
}

/// Envoy's `DataSource`: a file only (`inline_string`, `inline_bytes` and
/// `environment_variable` are refused by name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    pub filename: std::path::PathBuf,
}

impl TransportSocket {
    /// The native cluster TLS (`None`: plaintext), or the field that cannot be taken.
    fn to_native(&self) -> Result<Option<super::tls::ClusterTls>, (String, String)> {
        let at = "transport_socket";
        match self.name.as_str() {
            "envoy.transport_sockets.raw_buffer" | "raw_buffer" => {
                return match self.typed_config {
                    None => Ok(None),
                    Some(_) => Err((
                        format!("{at}.typed_config"),
                        "raw_buffer takes no typed_config".into(),
                    )),
                }
            }
            "envoy.transport_sockets.tls" | "tls" => {}
            other => {
                return Err((
                    format!("{at}.name"),
                    format!("transport socket `{other}` is not supported (envoy.transport_sockets.tls, envoy.transport_sockets.raw_buffer)"),
                ))
            }
        }
        let at = format!("{at}.typed_config");
        let Some(t) = &self.typed_config else {
            return Err((at, "give the UpstreamTlsContext".into()));
        };
        if let Some(u) = t.type_url.as_deref().filter(|u| *u != UPSTREAM_TLS_CONTEXT) {
            return Err((
                format!("{at}.@type"),
                format!("`{u}` is not {UPSTREAM_TLS_CONTEXT}"),
            ));
        }
        let Some(sni) = t.sni.clone().filter(|s| !s.is_empty()) else {
            return Err((
                format!("{at}.sni"),
                "give the upstream's name: tickmesh sends it and verifies the certificate against it".into(),
            ));
        };
        let common = t.common_tls_context.as_ref();
        let Some(v) = common.and_then(|c| c.validation_context.as_ref()) else {
            return Err((
                format!("{at}.common_tls_context.validation_context.trusted_ca"),
                "give the CA bundle: tickmesh always verifies upstream certificates (Envoy would not without it)".into(),
            ));
        };
        let certs = common.map_or(&[][..], |c| &c.tls_certificates[..]);
        if certs.len() > 1 {
            return Err((
                format!("{at}.common_tls_context.tls_certificates"),
                "one client certificate per cluster is supported".into(),
            ));
        }
        Ok(Some(super::tls::ClusterTls {
            ca: v.trusted_ca.filename.clone(),
            sni,
            cert: certs.first().map(|c| c.certificate_chain.filename.clone()),
            key: certs.first().map(|c| c.private_key.filename.clone()),
        }))
    }
}

/// The one protocol-options extension taken.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Envoy's `HttpProtocolOptions` for upstream HTTP: the idle expiry and request cap of
/// pooled connections; HTTP/1.1 only (`explicit_http_config.http_protocol_options`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProtocolOptions {
    #[serde(default, rename = "@type")]
    pub type_url: Option<String>,
    #[serde(default)]
    pub common_http_protocol_options: Option<CommonHttpProtocolOptions>,
    #[serde(default)]
    pub explicit_http_config: Option<ExplicitHttpConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonHttpProtocolOptions {
    /// Envoy: an idle pooled connection is closed after this (default 1 h; 0 would
    /// disable the expiry, which tickmesh's pools do not offer: refused).
    #[serde(default, with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
}

/// `explicit_http_config`: `http_protocol_options` (HTTP/1.1, with no options set) is
/// what tickmesh speaks upstream; HTTP/2 and HTTP/3 are refused by name.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplicitHttpConfig {
    pub http_protocol_options: Http1Options,
}

/// Envoy's `Http1ProtocolOptions`: none of its fields is taken.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http1Options {}

/// Envoy's `Cluster.CommonLbConfig`: the panic threshold and locality weighting (other
/// fields, such as `zone_aware_lb_config`, are refused by name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonLbConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_panic_threshold: Option<super::model::Percent>,
    /// Present (`{}`): balance across localities by their `load_balancing_weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_weighted_lb_config: Option<LocalityWeightedLbConfig>,
    /// `RING_HASH`/`MAGLEV`: hash endpoints by host name; bounded loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hashing_lb_config: Option<ConsistentHashingLbConfig>,
}

/// Envoy's empty `LocalityWeightedLbConfig` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityWeightedLbConfig {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadAssignment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<LocalityLbEndpoints>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityLbEndpoints {
    #[serde(default)]
    pub lb_endpoints: Vec<LbEndpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing_weight: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_zone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbEndpoint {
    pub endpoint: EndpointSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing_weight: Option<u32>,
    /// Only `filter_metadata["envoy.lb"]` (string values): the endpoint's labels, which
    /// subset selection reads, as Envoy's subset load balancer does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<EndpointMetadata>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointMetadata {
    pub filter_metadata:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub address: Address,
    /// The endpoint's host name (what `use_hostname_for_hashing` hashes on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub socket_address: SocketAddress,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketAddress {
    pub address: String,
    pub port_value: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyCircuitBreakers {
    #[serde(default)]
    pub thresholds: Vec<Thresholds>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// `DEFAULT` or `HIGH`; tickmesh has one priority and takes `DEFAULT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<super::model::RetryBudget>,
}

impl EnvoyCluster {
    /// The native cluster, or a message naming the field that cannot be taken.
    pub fn to_native(&self) -> Result<Cluster, (String, String)> {
        let discovery = match self.discovery.as_deref() {
            None | Some("STATIC") => Discovery::Static,
            Some("STRICT_DNS") => Discovery::StrictDns,
            Some(other) => {
                return Err((
                    "type".into(),
                    format!("cluster type `{other}` is not supported (STATIC, STRICT_DNS)"),
                ))
            }
        };
        let lb_policy = match self.lb_policy.as_deref() {
            None | Some("ROUND_ROBIN") => LbPolicy::RoundRobin,
            Some("LEAST_REQUEST") => LbPolicy::LeastRequest,
            Some("RANDOM") => LbPolicy::Random,
            Some("MAGLEV") => LbPolicy::Maglev,
            Some("RING_HASH") => LbPolicy::RingHash,
            // `load_balancing_policy` replaces it (Envoy's LOAD_BALANCING_POLICY_CONFIG).
            Some(_) if self.load_balancing_policy.is_some() => LbPolicy::RoundRobin,
            Some(other) => {
                return Err((
                    "lb_policy".into(),
                    format!("lb_policy `{other}` is not supported (ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV)"),
                ))
            }
        };
        let legacy = super::lb_policy::LbChoice {
            policy: lb_policy,
            ring_hash: self.ring_hash_lb_config.clone(),
            maglev: self.maglev_lb_config.clone(),
            least_request: self.least_request_lb_config.clone(),
            round_robin: self.round_robin_lb_config.clone(),
            consistent_hashing: self
                .common_lb_config
                .as_ref()
                .and_then(|c| c.consistent_hashing_lb_config.clone()),
            locality_weighted: false,
        };
        let lb = match &self.load_balancing_policy {
            Some(p) => p.choice(&self.name, &self.legacy_lb_fields())?,
            None => legacy,
        };
        let mut endpoints = Vec::new();
        let locality_weighted = lb.locality_weighted
            || self
                .common_lb_config
                .as_ref()
                .is_some_and(|c| c.locality_weighted_lb_config.is_some());
        let mut locality_weights = std::collections::BTreeMap::new();
        for (i, group) in self
            .load_assignment
            .iter()
            .flat_map(|l| l.endpoints.iter())
            .enumerate()
        {
            let locality = group.locality.as_ref().map(|l| {
                [&l.region, &l.zone, &l.sub_zone]
                    .iter()
                    .filter_map(|x| x.as_deref())
                    .collect::<Vec<_>>()
                    .join("/")
            });
            if locality_weighted {
                // Envoy: a locality without a weight takes no traffic.
                let w = group.load_balancing_weight.unwrap_or(0);
                let name = locality.clone().unwrap_or_default();
                if let Some(before) = locality_weights.insert(name.clone(), w) {
                    if before != w {
                        return Err((
                            format!("load_assignment.endpoints[{i}].load_balancing_weight"),
                            format!("locality `{name}` has weight {before} in an earlier entry and {w} here; give it one weight"),
                        ));
                    }
                }
            }
            for (j, e) in group.lb_endpoints.iter().enumerate() {
                let sa = &e.endpoint.address.socket_address;
                if sa.protocol.as_deref().is_some_and(|p| p != "TCP") {
                    return Err((
                        format!("load_assignment.endpoints[{i}].lb_endpoints[{j}].endpoint.address.socket_address.protocol"),
                        "only TCP endpoints are supported".into(),
                    ));
                }
                let address = match format!("{}:{}", sa.address, sa.port_value).parse() {
                    Ok(ip) => EndpointAddress::Ip(ip),
                    Err(_) => EndpointAddress::Dns {
                        host: sa.address.clone(),
                        port: sa.port_value,
                    },
                };
                let mut labels = std::collections::BTreeMap::new();
                if let Some(md) = &e.metadata {
                    for key in md.filter_metadata.keys() {
                        if key != "envoy.lb" {
                            return Err((
                                format!("load_assignment.endpoints[{i}].lb_endpoints[{j}].metadata.filter_metadata.{key}"),
                                "only `envoy.lb` metadata (endpoint labels) is supported".into(),
                            ));
                        }
                    }
                    labels = md
                        .filter_metadata
                        .get("envoy.lb")
                        .cloned()
                        .unwrap_or_default();
                }
                endpoints.push(Endpoint {
                    hostname: e.endpoint.hostname.clone().filter(|h| !h.is_empty()),
                    labels,
                    address,
                    weight: e.load_balancing_weight.unwrap_or(1),
                    priority: group.priority.unwrap_or(0),
                    locality: locality.clone(),
                });
            }
        }
        let circuit_breakers = self.circuit_breakers.as_ref().and_then(|cb| {
            cb.thresholds
                .iter()
                .find(|t| t.priority.as_deref().unwrap_or("DEFAULT") == "DEFAULT")
                .map(|t| CircuitBreakers {
                    max_connections: t.max_connections,
                    max_pending_requests: t.max_pending_requests,
                    max_requests: t.max_requests,
                    max_retries: t.max_retries,
                    max_requests_per_connection: None,
                    retry_budget: t.retry_budget.clone(),
                })
        });
        let mut circuit_breakers = circuit_breakers;
        let mut idle_timeout = None;
        let mut per_connection = self.max_requests_per_connection;
        for (key, v) in &self.typed_extension_protocol_options {
            let at = format!("typed_extension_protocol_options.{key}");
            if key != HTTP_PROTOCOL_OPTIONS {
                return Err((
                    at,
                    format!("this extension is not supported (only {HTTP_PROTOCOL_OPTIONS})"),
                ));
            }
            let o: HttpProtocolOptions =
                serde_yaml::from_value(v.clone()).map_err(|e| (at.clone(), e.to_string()))?;
            if let Some(t) = o.type_url.as_deref() {
                if t != format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}") {
                    return Err((
                        format!("{at}.@type"),
                        format!("`{t}` is not type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}"),
                    ));
                }
            }
            if let Some(c) = &o.common_http_protocol_options {
                if c.idle_timeout.is_some_and(|t| t.is_zero()) {
                    return Err((
                        format!("{at}.common_http_protocol_options.idle_timeout"),
                        "0 (no idle expiry) is not supported: pooled connections are closed when idle; give a duration".into(),
                    ));
                }
                idle_timeout = c.idle_timeout.or(idle_timeout);
                if let Some(n) = c.max_requests_per_connection {
                    if self.max_requests_per_connection.is_some_and(|m| m != n) {
                        return Err((
                            format!(
                                "{at}.common_http_protocol_options.max_requests_per_connection"
                            ),
                            "differs from the cluster's max_requests_per_connection: give one"
                                .into(),
                        ));
                    }
                    per_connection = Some(n);
                }
            }
        }
        if let Some(n) = per_connection {
            circuit_breakers
                .get_or_insert(CircuitBreakers {
                    max_connections: None,
                    max_pending_requests: None,
                    max_requests: None,
                    max_retries: None,
                    max_requests_per_connection: None,
                    retry_budget: None,
                })
                .max_requests_per_connection = Some(n);
        }
        let tls = match &self.transport_socket {
            Some(t) => t.to_native()?,
            None => None,
        };
        let outlier_detection = self.outlier_detection.clone();
        Ok(Cluster {
            name: self.name.clone(),
            discovery,
            lb_policy: lb.policy,
            endpoints,
            connect_timeout: self.connect_timeout,
            max_connect_attempts: None,
            dns_refresh_rate: self.dns_refresh_rate,
            idle_timeout,
            circuit_breakers,
            outlier_detection,
            health_checks: self.health_checks.clone(),
            hash_policy: None,
            tls,
            healthy_panic_threshold: self
                .common_lb_config
                .as_ref()
                .and_then(|c| c.healthy_panic_threshold)
                .map(|p| p.value),
            locality_weights,
            ring_hash_lb_config: lb.ring_hash,
            maglev_lb_config: lb.maglev,
            least_request_lb_config: lb.least_request,
            round_robin_lb_config: lb.round_robin,
            consistent_hashing_lb_config: lb.consistent_hashing,
        })
    }

    /// The legacy balancer fields this cluster sets, which `load_balancing_policy`
    /// overrides.
    fn legacy_lb_fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let set = [
            ("lb_policy", self.lb_policy.is_some()),
            ("ring_hash_lb_config", self.ring_hash_lb_config.is_some()),
            ("maglev_lb_config", self.maglev_lb_config.is_some()),
            (
                "least_request_lb_config",
                self.least_request_lb_config.is_some(),
            ),
            (
                "round_robin_lb_config",
                self.round_robin_lb_config.is_some(),
            ),
            (
                "common_lb_config.consistent_hashing_lb_config",
                self.common_lb_config
                    .as_ref()
                    .is_some_and(|c| c.consistent_hashing_lb_config.is_some()),
            ),
        ];
        for (name, on) in set {
            if on {
                out.push(name);
            }
        }
        out
    }
}
