//! Istio resources as users write them (`networking.istio.io` `VirtualService` and
//! `DestinationRule`, `security.istio.io` `PeerAuthentication`), in Istio's camelCase, and
//! their translation into the native model: a `VirtualService` becomes a virtual host, a
//! `DestinationRule` overlays the traffic policy of the cluster of its host.
//!
//! Unsupported Istio fields are errors that name them (deny_unknown_fields), never ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::http::{
    ClusterWeight, FractionalPercent, HeaderMatcher, HeaderValue, HeaderValueOption, MirrorPolicy,
    RegexMatcher, RetryPolicy, Route, RouteAction, RouteMatch, RuntimeFraction, StringMatch,
    VirtualHost, WeightedClusters,
};
use super::model::opt_duration;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

// === VirtualService ===

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualService {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: VirtualServiceSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HttpRouteDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HttpRedirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<IstioStringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<IstioStringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, IstioStringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, IstioStringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, IstioStringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_uri_case: Option<bool>,
}

/// Istio `StringMatch`: exactly one of `exact`, `prefix`, `regex` (`{}` = present).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IstioStringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

impl IstioStringMatch {
    fn to_envoy(&self) -> Option<StringMatch> {
        let m = StringMatch {
            exact: self.exact.clone(),
            prefix: self.prefix.clone(),
            safe_regex: self.regex.clone().map(|regex| RegexMatcher {
                google_re2: None,
                regex,
            }),
            ..StringMatch::default()
        };
        (m != StringMatch::default()).then_some(m)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteDestination {
    pub destination: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

impl Destination {
    /// The cluster this destination names: `host` (and `|subset`), as a sidecar names it.
    pub fn cluster_name(&self) -> String {
        match &self.subset {
            Some(s) => format!("{}|{s}", self.host),
            None => self.host.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRetry {
    pub attempts: u32,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRedirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(
        default,
        rename = "redirectCode",
        skip_serializing_if = "Option::is_none"
    )]
    pub redirect_code: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

fn header_ops(ops: &Option<HeaderOperations>) -> (Vec<HeaderValueOption>, Vec<String>) {
    let Some(ops) = ops else {
        return (Vec::new(), Vec::new());
    };
    let opt = |k: &String, v: &String, action: &str| HeaderValueOption {
        header: HeaderValue {
            key: k.clone(),
            value: v.clone(),
        },
        append_action: Some(action.into()),
    };
    let mut add: Vec<_> = ops
        .set
        .iter()
        .map(|(k, v)| opt(k, v, "OVERWRITE_IF_EXISTS_OR_ADD"))
        .collect();
    add.extend(
        ops.add
            .iter()
            .map(|(k, v)| opt(k, v, "APPEND_IF_EXISTS_OR_ADD")),
    );
    (add, ops.remove.clone())
}

impl VirtualService {
    /// The virtual host a sidecar builds from this resource: domains = `hosts`, one
    /// route per (HTTP route × match), in order.
    pub fn to_virtual_host(&self) -> VirtualHost {
        let mut routes = Vec::new();
        for r in &self.spec.http {
            let matches = if r.matches.is_empty() {
                vec![HttpMatchRequest::default()]
            } else {
                r.matches.clone()
            };
            for m in &matches {
                routes.push(convert_route(r, m));
            }
        }
        VirtualHost {
            name: format!(
                "{}/{}",
                self.metadata.namespace.as_deref().unwrap_or("default"),
                self.metadata.name
            ),
            domains: self.spec.hosts.clone(),
            routes,
            ..VirtualHost::default()
        }
    }
}

fn convert_route(r: &HttpRoute, m: &HttpMatchRequest) -> Route {
    let mut matcher = RouteMatch::default();
    if let Some(uri) = &m.uri {
        matcher.path = uri.exact.clone();
        matcher.prefix = uri.prefix.clone();
        matcher.safe_regex = uri.regex.clone().map(|regex| RegexMatcher {
            google_re2: None,
            regex,
        });
    }
    if m.ignore_uri_case == Some(true) {
        matcher.case_sensitive = Some(false);
    }
    if let Some(method) = m.method.as_ref().and_then(|x| x.exact.clone()) {
        matcher.method = Some(method);
    }
    for (name, v) in &m.headers {
        matcher.headers.push(HeaderMatcher {
            name: name.clone(),
            string_match: v.to_envoy(),
            present_match: v.to_envoy().is_none().then_some(true),
            ..HeaderMatcher::default()
        });
    }
    for (name, v) in &m.without_headers {
        matcher.headers.push(HeaderMatcher {
            name: name.clone(),
            string_match: v.to_envoy(),
            present_match: v.to_envoy().is_none().then_some(true),
            invert_match: true,
            ..HeaderMatcher::default()
        });
    }
    for (name, v) in &m.query_params {
        matcher
            .query_parameters
            .push(super::http::QueryParameterMatcher {
                name: name.clone(),
                string_match: v.to_envoy(),
                present_match: v.to_envoy().is_none().then_some(true),
            });
    }
    let (req_add, req_remove) = header_ops(&r.headers.as_ref().and_then(|h| h.request.clone()));
    let (resp_add, resp_remove) = header_ops(&r.headers.as_ref().and_then(|h| h.response.clone()));
    let mut route = Route {
        name: r.name.clone(),
        matcher,
        request_headers_to_add: req_add,
        request_headers_to_remove: req_remove,
        response_headers_to_add: resp_add,
        response_headers_to_remove: resp_remove,
        ..Route::default()
    };
    if let Some(red) = &r.redirect {
        route.redirect = Some(super::http::Redirect {
            host_redirect: red.authority.clone(),
            path_redirect: red.uri.clone(),
            prefix_rewrite: None,
            scheme_redirect: None,
            https_redirect: None,
            response_code: red.redirect_code.map(|c| {
                match c {
                    302 => "FOUND",
                    303 => "SEE_OTHER",
                    307 => "TEMPORARY_REDIRECT",
                    308 => "PERMANENT_REDIRECT",
                    _ => "MOVED_PERMANENTLY",
                }
                .to_string()
            }),
        });
        return route;
    }
    let mut action = RouteAction {
        timeout: r.timeout,
        ..RouteAction::default()
    };
    match r.route.as_slice() {
        [one] => action.cluster = Some(one.destination.cluster_name()),
        many => {
            action.weighted_clusters = Some(WeightedClusters {
                clusters: many
                    .iter()
                    .map(|d| ClusterWeight {
                        name: d.destination.cluster_name(),
                        weight: d.weight.unwrap_or(0),
                    })
                    .collect(),
                total_weight: None,
            })
        }
    }
    if let Some(rw) = r.rewrite.as_ref().and_then(|w| w.uri.clone()) {
        action.prefix_rewrite = Some(rw);
    }
    if let Some(retry) = &r.retries {
        action.retry_policy = Some(RetryPolicy {
            retry_on: retry.retry_on.clone().unwrap_or_else(|| {
                "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".into()
            }),
            num_retries: Some(retry.attempts),
            per_try_timeout: retry.per_try_timeout,
            retry_back_off: None,
        });
    }
    if let Some(mirror) = &r.mirror {
        // Istio: 100% when mirrorPercentage is absent. Parts per million keep 0.1% steps.
        let pct = r.mirror_percentage.map_or(100.0, |p| p.value);
        action.request_mirror_policies.push(MirrorPolicy {
            cluster: mirror.cluster_name(),
            runtime_fraction: Some(RuntimeFraction {
                default_value: FractionalPercent {
                    numerator: (pct * 10_000.0).round() as u32,
                    denominator: super::http::Denominator::Million,
                },
                runtime_key: None,
            }),
        });
    }
    route.route = Some(action);
    route
}

// === DestinationRule ===

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRule {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: DestinationRuleSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<IstioOutlierDetection>,
    /// TLS towards the destination (Istio `ClientTLSSettings`): `SIMPLE`/`MUTUAL` become
    /// the cluster's `tls:`, `DISABLE` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// Istio's `ClientTLSSettings`, from files (`credentialName` secrets, `caCrl` and
/// `ISTIO_MUTUAL`'s workload certificates are not available here: refused).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientTlsSettings {
    /// `DISABLE`, `SIMPLE` or `MUTUAL`.
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Only the `sni` name itself: the certificate is verified against `sni`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    /// `ROUND_ROBIN`, `LEAST_REQUEST`, `RANDOM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Slow start of new endpoints for this long (Istio's deprecated spelling of
    /// `warmup.duration`): Envoy's `slow_start_window` with its defaults.
    #[serde(
        default,
        with = "super::model::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub warmup_duration_secs: Option<std::time::Duration>,
    /// Slow start of new endpoints (Istio's `WarmupConfiguration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
}

/// Istio's `WarmupConfiguration`: Envoy's `slow_start_window`, `min_weight_percent` and
/// `aggression`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Warmup {
    #[serde(
        default,
        with = "super::model::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration: Option<std::time::Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggression: Option<f64>,
}

/// Istio's `LocalityLoadBalancerSetting` (`failoverPriority` is refused by name).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityLbSetting {
    /// For a proxy in `from`, the share of traffic each `to` locality pattern gets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    /// For a proxy in region `from`, the region that takes over before all others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityDistribute {
    pub from: String,
    pub to: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityFailover {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsistentHash {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    /// Istio's `hashAlgorithm`, one of: Envoy's ring hash (the default) with its minimum
    /// size, or Maglev with its table size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<IstioRingHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<IstioMaglev>,
    /// Istio's deprecated spelling of `ringHash.minimumRingSize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IstioRingHash {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IstioMaglev {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCookie {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpPool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpPool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IstioOutlierDetection {
    #[serde(
        default,
        rename = "consecutive5xxErrors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
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
    /// Istio sets the cluster's panic threshold to this whenever outlier detection is
    /// configured (default 0: panic mode off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<u32>,
    /// Envoy's `split_external_local_origin_errors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_external_local_origin_errors: Option<bool>,
    /// Envoy's `consecutive_local_origin_failure` (enforced at 100%); needs
    /// `splitExternalLocalOriginErrors: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

// === PeerAuthentication ===

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthentication {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsSetting>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<u16, MtlsSetting>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsSetting {
    pub mode: MtlsMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}
