//! The L7 (HTTP) routing model, in Envoy v3's names and shape: route configurations with
//! virtual hosts and ordered routes, matchers, actions, retries, mirroring, header edits
//! and rate-limit descriptors.
//!
//! Two spellings are accepted where the seed document and genuine Envoy v3 differ: header
//! matchers as a list (`[{name: x-env, string_match: {exact: canary}}]`, Envoy) or as a map
//! (`{x-env: {exact: canary}}`, the seed), and a route configuration with `routes` directly
//! under it (the seed) as well as under `virtual_hosts` (Envoy). Unknown fields are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::model::opt_duration;

/// An Envoy `RouteConfiguration`. With no `virtual_hosts`, `routes` form one virtual host
/// that matches every domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_hosts: Vec<VirtualHost>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<String>,
}

impl RouteConfig {
    /// Virtual hosts as served: the seed's bare `routes` become a catch-all host, and
    /// the configuration-level header edits follow each host's own (Envoy applies
    /// route, then virtual host, then route configuration edits).
    pub fn effective_virtual_hosts(&self) -> Vec<VirtualHost> {
        let mut v = self.virtual_hosts.clone();
        if !self.routes.is_empty() {
            v.push(VirtualHost {
                name: self.name.clone(),
                domains: vec!["*".into()],
                routes: self.routes.clone(),
                ..VirtualHost::default()
            });
        }
        for vh in &mut v {
            vh.request_headers_to_add
                .extend(self.request_headers_to_add.iter().cloned());
            vh.request_headers_to_remove
                .extend(self.request_headers_to_remove.iter().cloned());
            vh.response_headers_to_add
                .extend(self.response_headers_to_add.iter().cloned());
            vh.response_headers_to_remove
                .extend(self.response_headers_to_remove.iter().cloned());
        }
        v
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    pub name: String,
    /// Exact names, `*.suffix`, `prefix.*`, or `*` (any). Ports are stripped from `Host`.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
}

/// One route: a match and exactly one action (`route`, `redirect` or `direct_response`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matcher: RouteMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<String>,
    /// SPIFFE IDs allowed to use this route (native; Envoy says it with an RBAC filter's
    /// `principals`): on an mTLS listener, a client whose certificate names none of them
    /// gets a 403. Empty: every client the listener admits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_principals: Vec<String>,
}

/// Path (at most one of `prefix`, `path`, `safe_regex`; none means any path), method,
/// headers and query parameters. All given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<RegexMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(
        default,
        deserialize_with = "header_matchers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub headers: Vec<HeaderMatcher>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<QueryParameterMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_sensitive: Option<bool>,
}

/// RE2 syntax (`regex` crate). `google_re2: {}` is accepted as Envoy writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexMatcher {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google_re2: Option<Empty>,
    pub regex: String,
}

/// Envoy's `google_re2: {}` (and its deprecated `max_program_size`, which must be absent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Envoy `StringMatcher`: exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<RegexMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_case: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcher {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_match: Option<StringMatch>,
    /// The seed's and Envoy's older spellings, folded into `string_match` by validation.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "exact_match"
    )]
    pub exact: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "prefix_match"
    )]
    pub prefix: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "suffix_match"
    )]
    pub suffix: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "contains_match"
    )]
    pub contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex_match: Option<RegexMatcher>,
    /// `true`: the header must be present (any value); `false`: it must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert_match: bool,
}

impl HeaderMatcher {
    /// The one value condition this matcher states, whichever spelling was used.
    pub fn value_match(&self) -> Option<StringMatch> {
        if let Some(s) = &self.string_match {
            return Some(s.clone());
        }
        let m = StringMatch {
            exact: self.exact.clone(),
            prefix: self.prefix.clone(),
            suffix: self.suffix.clone(),
            contains: self.contains.clone(),
            safe_regex: self.safe_regex_match.clone(),
            ignore_case: None,
        };
        (m != StringMatch::default()).then_some(m)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParameterMatcher {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_match: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
}

/// Forward to a cluster (or weighted clusters), with the policies that go with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<WeightedClusters>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_rewrite: Option<RegexRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_mirror_policies: Vec<MirrorPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policy: Vec<HashPolicy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedClusters {
    pub clusters: Vec<ClusterWeight>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_weight: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterWeight {
    pub name: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    pub pattern: RegexMatcher,
    pub substitution: String,
}

/// Envoy `RetryPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Comma-separated: `5xx`, `gateway-error`, `connect-failure`, `reset`, `retriable-4xx`.
    #[serde(default)]
    pub retry_on: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_back_off: Option<RetryBackOff>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBackOff {
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub base_interval: Option<Duration>,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_interval: Option<Duration>,
}

/// Envoy `RequestMirrorPolicy`: copy a share of requests to a shadow cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorPolicy {
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_fraction: Option<RuntimeFraction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFraction {
    pub default_value: FractionalPercent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FractionalPercent {
    pub numerator: u32,
    #[serde(default)]
    pub denominator: Denominator,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Denominator {
    #[default]
    Hundred,
    TenThousand,
    Million,
}

impl FractionalPercent {
    /// The share as parts per million.
    pub fn per_million(&self) -> u64 {
        let scale = match self.denominator {
            Denominator::Hundred => 10_000,
            Denominator::TenThousand => 100,
            Denominator::Million => 1,
        };
        u64::from(self.numerator) * scale
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_redirect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_redirect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme_redirect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<bool>,
    /// `MOVED_PERMANENTLY` (301, default), `FOUND`, `SEE_OTHER`, `TEMPORARY_REDIRECT`, `PERMANENT_REDIRECT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<DataSource>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    pub inline_string: String,
}

/// Envoy `HeaderValueOption`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOption {
    pub header: HeaderValue,
    /// `APPEND_IF_EXISTS_OR_ADD` (default), `ADD_IF_ABSENT`, `OVERWRITE_IF_EXISTS_OR_ADD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_action: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    pub key: String,
    pub value: String,
}

/// Envoy `RateLimit`: the actions that build one descriptor, and (tickmesh's local limit)
/// the token bucket requests with that descriptor share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub actions: Vec<RateLimitAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_bucket: Option<TokenBucket>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_fill: Option<u32>,
    #[serde(with = "opt_duration")]
    pub fill_interval: Option<Duration>,
}

/// Exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_value_match: Option<HeaderValueMatchAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<RequestHeadersAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_address: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generic_key: Option<GenericKeyAction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueMatchAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor_key: Option<String>,
    pub descriptor_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_match: Option<bool>,
    #[serde(deserialize_with = "header_matchers")]
    pub headers: Vec<HeaderMatcher>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestHeadersAction {
    pub header_name: String,
    pub descriptor_key: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_if_absent: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericKeyAction {
    pub descriptor_value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor_key: Option<String>,
}

/// Envoy `RouteAction.HashPolicy` (for ring-hash / Maglev clusters): one of the fields.
/// The route's policies are evaluated in order and their hashes combined (Envoy's
/// rotate-and-xor); a `terminal` policy that produced a hash ends the evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HashHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<HashCookie>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_properties: Option<HashConnection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<HashQueryParameter>,
    /// Envoy's `filter_state` key: tickmesh has no filter state; refused by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_state: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashHeader {
    pub header_name: String,
}

/// A cookie's value; with `ttl`, a request without the cookie gets one generated (its
/// response carries `Set-Cookie` with `Max-Age` = ttl, 0: a session cookie, and `path`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashCookie {
    pub name: String,
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashConnection {
    pub source_ip: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashQueryParameter {
    pub name: String,
}

/// Header matchers as Envoy's list or the seed's `{name: {exact: v}}` map.
fn header_matchers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HeaderMatcher>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<HeaderMatcher>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of header matchers, or a map of header name to matcher")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(m) = seq.next_element::<HeaderMatcher>()? {
                out.push(m);
            }
            Ok(out)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            /// The seed's per-header body: a matcher without its `name`.
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                #[serde(default)]
                string_match: Option<StringMatch>,
                #[serde(default, alias = "exact_match")]
                exact: Option<String>,
                #[serde(default, alias = "prefix_match")]
                prefix: Option<String>,
                #[serde(default, alias = "suffix_match")]
                suffix: Option<String>,
                #[serde(default, alias = "contains_match")]
                contains: Option<String>,
                #[serde(default)]
                safe_regex_match: Option<RegexMatcher>,
                #[serde(default)]
                present_match: Option<bool>,
                #[serde(default)]
                invert_match: bool,
            }
            let mut out = Vec::new();
            let mut seen = BTreeMap::new();
            while let Some((name, b)) = map.next_entry::<String, Body>()? {
                if seen.insert(name.clone(), ()).is_some() {
                    return Err(de::Error::custom(format!(
                        "header `{name}` is matched twice"
                    )));
                }
                out.push(HeaderMatcher {
                    name,
                    string_match: b.string_match,
                    exact: b.exact,
                    prefix: b.prefix,
                    suffix: b.suffix,
                    contains: b.contains,
                    safe_regex_match: b.safe_regex_match,
                    present_match: b.present_match,
                    invert_match: b.invert_match,
                });
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}
