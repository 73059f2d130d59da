//! Validation of the L7 parts of a config: route configurations, Istio resources.
//! Called by `validate`; reports every problem with its field path.

use std::collections::HashSet;

use super::http::{HeaderMatcher, RateLimit, RegexMatcher, Route, RouteConfig, StringMatch};
use super::istio::{DestinationRule, VirtualService};
use super::Config;

type Bad<'a> = dyn FnMut(String, String) + 'a;

/// Retry conditions tickmesh implements (Envoy's names).
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "connect-failure",
    "reset",
    "retriable-4xx",
    "refused-stream",
];
/// Istio's defaults that have no HTTP/1.1 meaning; accepted so Istio's defaults apply as written.
const RETRY_ON_H2: &[&str] = &[
    "unavailable",
    "cancelled",
    "retriable-status-codes",
    "deadline-exceeded",
    "resource-exhausted",
];

pub fn check(cfg: &Config, bad: &mut Bad) {
    let mut names = HashSet::new();
    for (i, rc) in cfg.route_configs.iter().enumerate() {
        let at = format!("route_configs[{i}]");
        if !names.insert(rc.name.as_str()) {
            bad(
                format!("{at}.name"),
                format!("duplicate route configuration `{}`", rc.name),
            );
        }
        check_route_config(rc, &at, bad);
    }
    let mut names = HashSet::new();
    for (i, vs) in cfg.virtual_services.iter().enumerate() {
        let at = format!("virtual_services[{i}]");
        if !names.insert(vs.metadata.name.as_str()) {
            bad(
                format!("{at}.metadata.name"),
                format!("duplicate VirtualService `{}`", vs.metadata.name),
            );
        }
        check_virtual_service(vs, &at, bad);
    }
    let mut names = HashSet::new();
    for (i, dr) in cfg.destination_rules.iter().enumerate() {
        let at = format!("destination_rules[{i}]");
        if !names.insert(dr.metadata.name.as_str()) {
            bad(
                format!("{at}.metadata.name"),
                format!("duplicate DestinationRule `{}`", dr.metadata.name),
            );
        }
        check_destination_rule(dr, &at, bad);
    }
    let mut names = HashSet::new();
    for (i, pa) in cfg.peer_authentications.iter().enumerate() {
        let at = format!("peer_authentications[{i}]");
        api_version(
            &pa.api_version,
            &["security.istio.io/v1beta1", "security.istio.io/v1"],
            &at,
            bad,
        );
        if !names.insert(pa.metadata.name.as_str()) {
            bad(
                format!("{at}.metadata.name"),
                format!("duplicate PeerAuthentication `{}`", pa.metadata.name),
            );
        }
    }
}

fn api_version(v: &str, allowed: &[&str], at: &str, bad: &mut Bad) {
    if !allowed.contains(&v) {
        bad(
            format!("{at}.apiVersion"),
            format!("apiVersion `{v}` is not supported ({})", allowed.join(", ")),
        );
    }
}

fn check_route_config(rc: &RouteConfig, at: &str, bad: &mut Bad) {
    if rc.name.is_empty() {
        bad(
            format!("{at}.name"),
            "a route configuration needs a name".into(),
        );
    }
    if rc.virtual_hosts.is_empty() && rc.routes.is_empty() {
        bad(
            at.into(),
            "a route configuration needs `virtual_hosts` or `routes`".into(),
        );
    }
    let mut domains = HashSet::new();
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let at = format!("{at}.virtual_hosts[{i}]");
        if vh.domains.is_empty() {
            bad(
                format!("{at}.domains"),
                "a virtual host needs at least one domain (`*` for any)".into(),
            );
        }
        for (j, d) in vh.domains.iter().enumerate() {
            let d = d.to_ascii_lowercase();
            let wild = d.matches('*').count();
            if d.is_empty()
                || wild > 1
                || (wild == 1 && d != "*" && !d.starts_with("*") && !d.ends_with("*"))
            {
                bad(
                    format!("{at}.domains[{j}]"),
                    format!("`{d}`: a domain is a name, `*.suffix`, `prefix*` or `*`"),
                );
            }
            if !domains.insert(d.clone()) {
                bad(
                    format!("{at}.domains[{j}]"),
                    format!("domain `{d}` is served by two virtual hosts"),
                );
            }
        }
        for (j, r) in vh.routes.iter().enumerate() {
            check_route(r, &format!("{at}.routes[{j}]"), bad);
        }
        for (j, rl) in vh.rate_limits.iter().enumerate() {
            check_rate_limit(rl, &format!("{at}.rate_limits[{j}]"), bad);
        }
    }
    for (j, r) in rc.routes.iter().enumerate() {
        check_route(r, &format!("{at}.routes[{j}]"), bad);
    }
}

fn check_regex(r: &RegexMatcher, at: &str, bad: &mut Bad) {
    if let Err(e) = regex::Regex::new(&r.regex) {
        bad(
            format!("{at}.regex"),
            format!(
                "invalid regex: {}",
                e.to_string().lines().last().unwrap_or("")
            ),
        );
    }
}

fn check_string_match(m: &StringMatch, at: &str, bad: &mut Bad) {
    let set = [
        m.exact.is_some(),
        m.prefix.is_some(),
        m.suffix.is_some(),
        m.contains.is_some(),
        m.safe_regex.is_some(),
    ];
    if set.iter().filter(|x| **x).count() != 1 {
        bad(
            at.into(),
            "set exactly one of exact, prefix, suffix, contains, safe_regex".into(),
        );
    }
    if let Some(r) = &m.safe_regex {
        check_regex(r, &format!("{at}.safe_regex"), bad);
    }
}

fn check_header(h: &HeaderMatcher, at: &str, bad: &mut Bad) {
    if h.name.is_empty()
        || !h
            .name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b':' || h.name.starts_with(':'))
    {
        bad(
            format!("{at}.name"),
            format!("`{}` is not a valid header name", h.name),
        );
    }
    let legacy = [
        h.exact.is_some(),
        h.prefix.is_some(),
        h.suffix.is_some(),
        h.contains.is_some(),
        h.safe_regex_match.is_some(),
    ];
    let n = legacy.iter().filter(|x| **x).count()
        + usize::from(h.string_match.is_some())
        + usize::from(h.present_match.is_some());
    if n > 1 {
        bad(
            at.into(),
            format!(
                "header `{}`: set one condition (string_match, exact, prefix, …, present_match)",
                h.name
            ),
        );
    }
    if let Some(m) = &h.string_match {
        check_string_match(m, &format!("{at}.string_match"), bad);
    }
    if let Some(r) = &h.safe_regex_match {
        check_regex(r, &format!("{at}.safe_regex_match"), bad);
    }
}

fn check_route(r: &Route, at: &str, bad: &mut Bad) {
    let m = &r.matcher;
    let paths = [m.prefix.is_some(), m.path.is_some(), m.safe_regex.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if paths > 1 {
        bad(
            format!("{at}.match"),
            "set at most one of prefix, path, safe_regex".into(),
        );
    }
    for p in [&m.prefix, &m.path].into_iter().flatten() {
        if !p.starts_with('/') {
            bad(
                format!("{at}.match"),
                format!("path `{p}` must start with `/`"),
            );
        }
    }
    if let Some(x) = &m.safe_regex {
        check_regex(x, &format!("{at}.match.safe_regex"), bad);
    }
    if let Some(method) = &m.method {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            bad(
                format!("{at}.match.method"),
                format!("`{method}` is not an HTTP method (GET, POST, …)"),
            );
        }
    }
    for (i, h) in m.headers.iter().enumerate() {
        check_header(h, &format!("{at}.match.headers[{i}]"), bad);
    }
    for (i, q) in m.query_parameters.iter().enumerate() {
        if let Some(s) = &q.string_match {
            check_string_match(
                s,
                &format!("{at}.match.query_parameters[{i}].string_match"),
                bad,
            );
        }
    }
    let actions = [
        r.route.is_some(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if actions != 1 {
        bad(
            at.into(),
            "a route needs exactly one of `route`, `redirect`, `direct_response`".into(),
        );
    }
    if let Some(a) = &r.route {
        let at = format!("{at}.route");
        match (&a.cluster, &a.weighted_clusters) {
            (Some(_), Some(_)) => bad(
                at.clone(),
                "set either `cluster` or `weighted_clusters`, not both".into(),
            ),
            (None, None) => bad(
                at.clone(),
                "a route action needs `cluster` or `weighted_clusters`".into(),
            ),
            (None, Some(w)) => {
                let total: u64 = w.clusters.iter().map(|c| u64::from(c.weight)).sum();
                if w.clusters.is_empty() || total == 0 {
                    bad(
                        format!("{at}.weighted_clusters"),
                        "weights must sum to more than 0".into(),
                    );
                }
                if let Some(t) = w.total_weight {
                    if u64::from(t) != total {
                        bad(
                            format!("{at}.weighted_clusters.total_weight"),
                            format!("is {t} but the weights sum to {total}"),
                        );
                    }
                }
            }
            _ => {}
        }
        if let Some(rw) = &a.regex_rewrite {
            check_regex(&rw.pattern, &format!("{at}.regex_rewrite.pattern"), bad);
        }
        if a.prefix_rewrite.is_some() && a.regex_rewrite.is_some() {
            bad(
                at.clone(),
                "set either `prefix_rewrite` or `regex_rewrite`, not both".into(),
            );
        }
        if let Some(rp) = &a.retry_policy {
            check_retry_on(&rp.retry_on, &format!("{at}.retry_policy.retry_on"), bad);
        }
        for (i, mp) in a.request_mirror_policies.iter().enumerate() {
            if let Some(f) = &mp.runtime_fraction {
                if f.default_value.per_million() > 1_000_000 {
                    bad(
                        format!("{at}.request_mirror_policies[{i}].runtime_fraction"),
                        "is over 100%".into(),
                    );
                }
            }
        }
        for (i, rl) in a.rate_limits.iter().enumerate() {
            check_rate_limit(rl, &format!("{at}.rate_limits[{i}]"), bad);
        }
        let mut generating = 0;
        for (i, h) in a.hash_policy.iter().enumerate() {
            let at = format!("{at}.hash_policy[{i}]");
            let n = [
                h.header.is_some(),
                h.cookie.is_some(),
                h.connection_properties.is_some(),
                h.query_parameter.is_some(),
                h.filter_state.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if n != 1 {
                bad(
                    at.clone(),
                    "set exactly one of header, cookie, connection_properties, query_parameter"
                        .into(),
                );
            }
            if h.filter_state.is_some() {
                bad(
                    format!("{at}.filter_state"),
                    "hashing on filter state is not supported (tickmesh has no filter state); hash on a header, cookie, query_parameter or the source IP".into(),
                );
            }
            if let Some(hh) = &h.header {
                if hh.header_name.is_empty() || !hh.header_name.bytes().all(is_tchar) {
                    bad(
                        format!("{at}.header.header_name"),
                        format!("`{}` is not a header name", hh.header_name),
                    );
                }
            }
            if let Some(q) = &h.query_parameter {
                if q.name.is_empty() {
                    bad(
                        format!("{at}.query_parameter.name"),
                        "is empty: name the query parameter".into(),
                    );
                }
            }
            if h.connection_properties
                .as_ref()
                .is_some_and(|c| !c.source_ip)
            {
                bad(
                    format!("{at}.connection_properties.source_ip"),
                    "is false: this policy would hash nothing; remove it or set true".into(),
                );
            }
            if let Some(c) = &h.cookie {
                if c.name.is_empty() || !c.name.bytes().all(is_tchar) {
                    bad(
                        format!("{at}.cookie.name"),
                        format!("`{}` is not a cookie name", c.name),
                    );
                }
                if c.path.is_some() && c.ttl.is_none() {
                    bad(
                        format!("{at}.cookie.path"),
                        "only a generated cookie has a path: set ttl too".into(),
                    );
                }
                if let Some(p) = c
                    .path
                    .as_deref()
                    .filter(|p| !super::traffic_policy::cookie_path_ok(p))
                {
                    bad(
                        format!("{at}.cookie.path"),
                        format!(
                            "`{p}` is not a cookie path (starts with `/`, no `;`, no control bytes)"
                        ),
                    );
                }
                if c.ttl.is_some() {
                    generating += 1;
                    if generating == 2 {
                        bad(
                            format!("{at}.cookie.ttl"),
                            "a route generates at most one hash cookie: give ttl to one cookie policy".into(),
                        );
                    }
                }
            }
        }
    }
    if let Some(d) = &r.direct_response {
        if !(200..=599).contains(&d.status) {
            bad(
                format!("{at}.direct_response.status"),
                format!("{} is not an HTTP status 200..=599", d.status),
            );
        }
    }
    if let Some(code) = r.redirect.as_ref().and_then(|x| x.response_code.as_deref()) {
        if ![
            "MOVED_PERMANENTLY",
            "FOUND",
            "SEE_OTHER",
            "TEMPORARY_REDIRECT",
            "PERMANENT_REDIRECT",
        ]
        .contains(&code)
        {
            bad(
                format!("{at}.redirect.response_code"),
                format!("`{code}` is not a redirect code"),
            );
        }
    }
}

fn check_retry_on(v: &str, at: &str, bad: &mut Bad) {
    for token in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if !RETRY_ON.contains(&token) && !RETRY_ON_H2.contains(&token) {
            bad(
                at.into(),
                format!(
                    "retry condition `{token}` is not supported ({})",
                    RETRY_ON.join(", ")
                ),
            );
        }
    }
}

fn check_rate_limit(rl: &RateLimit, at: &str, bad: &mut Bad) {
    if rl.actions.is_empty() {
        bad(
            format!("{at}.actions"),
            "a rate limit needs at least one action".into(),
        );
    }
    for (i, a) in rl.actions.iter().enumerate() {
        let at = format!("{at}.actions[{i}]");
        let n = [
            a.header_value_match.is_some(),
            a.request_headers.is_some(),
            a.remote_address.is_some(),
            a.generic_key.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if n != 1 {
            bad(at.clone(), "set exactly one of header_value_match, request_headers, remote_address, generic_key".into());
        }
        if let Some(h) = &a.header_value_match {
            for (j, m) in h.headers.iter().enumerate() {
                check_header(m, &format!("{at}.header_value_match.headers[{j}]"), bad);
            }
        }
    }
    if let Some(tb) = &rl.token_bucket {
        if tb.max_tokens == 0 || tb.fill_interval.is_none_or(|d| d.is_zero()) {
            bad(
                format!("{at}.token_bucket"),
                "needs max_tokens ≥ 1 and a fill_interval above 0".into(),
            );
        }
    }
}

fn check_virtual_service(vs: &VirtualService, at: &str, bad: &mut Bad) {
    api_version(
        &vs.api_version,
        &[
            "networking.istio.io/v1alpha3",
            "networking.istio.io/v1beta1",
            "networking.istio.io/v1",
        ],
        at,
        bad,
    );
    if vs.spec.hosts.is_empty() {
        bad(
            format!("{at}.spec.hosts"),
            "a VirtualService needs at least one host".into(),
        );
    }
    for (i, r) in vs.spec.http.iter().enumerate() {
        let at = format!("{at}.spec.http[{i}]");
        if r.route.is_empty() == r.redirect.is_none() {
            bad(
                at.clone(),
                "an HTTP route needs exactly one of `route` or `redirect`".into(),
            );
        }
        if r.route.len() > 1 {
            let total: u32 = r.route.iter().map(|d| d.weight.unwrap_or(0)).sum();
            if total != 100 {
                bad(
                    format!("{at}.route"),
                    format!("destination weights sum to {total}; Istio requires 100"),
                );
            }
        }
        if let Some(p) = r.mirror_percentage {
            if !(0.0..=100.0).contains(&p.value) {
                bad(
                    format!("{at}.mirrorPercentage.value"),
                    format!("{} is not a percentage 0..=100", p.value),
                );
            }
        }
        if let Some(retry) = &r.retries {
            if let Some(on) = &retry.retry_on {
                check_retry_on(on, &format!("{at}.retries.retryOn"), bad);
            }
        }
        for (j, m) in r.matches.iter().enumerate() {
            if let Some(x) = m.uri.as_ref().and_then(|u| u.regex.as_ref()) {
                check_regex(
                    &RegexMatcher {
                        google_re2: None,
                        regex: x.clone(),
                    },
                    &format!("{at}.match[{j}].uri"),
                    bad,
                );
            }
        }
    }
}

fn check_destination_rule(dr: &DestinationRule, at: &str, bad: &mut Bad) {
    api_version(
        &dr.api_version,
        &[
            "networking.istio.io/v1alpha3",
            "networking.istio.io/v1beta1",
            "networking.istio.io/v1",
        ],
        at,
        bad,
    );
    if dr.spec.host.is_empty() {
        bad(
            format!("{at}.spec.host"),
            "a DestinationRule needs a host".into(),
        );
    }
    if let Some(tp) = &dr.spec.traffic_policy {
        super::traffic_policy::check(tp, &format!("{at}.spec.trafficPolicy"), bad);
    }
    let mut names = HashSet::new();
    for (i, s) in dr.spec.subsets.iter().enumerate() {
        let sat = format!("{at}.spec.subsets[{i}]");
        if s.name.is_empty() || s.name.contains('|') || !names.insert(s.name.as_str()) {
            bad(
                format!("{sat}.name"),
                format!(
                    "subset name `{}` is empty, contains `|` or is used twice",
                    s.name
                ),
            );
        }
        if let Some(tp) = &s.traffic_policy {
            super::traffic_policy::check(tp, &format!("{sat}.trafficPolicy"), bad);
        }
    }
}

/// RFC 9110 §5.6.2 `tchar`: the bytes of a header field name or a cookie name
/// (RFC 6265 §4.1.1 `token`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
