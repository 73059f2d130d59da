//! `DestinationRule` traffic policies applied to clusters: which rule governs a cluster
//! (Istio's host rules), the translation of `trafficPolicy` into the native cluster
//! fields, and its validation.
//!
//! Plain config in, plain config out: `route::compile` calls [`effective_cluster`] for
//! every cluster it builds (defined ones and those a route names implicitly), so the
//! runtime never sees an Istio field.
//!
//! Host rule (Istio's): a DestinationRule `host` without a dot is a short name in the
//! rule's namespace (default `default`): `reviews` ≡ `reviews.default.svc.cluster.local`.
//! A cluster name is read the same way in namespace `default`, so a native cluster
//! `reviews` is governed by a rule for `reviews` or `reviews.default.svc.cluster.local`.
//! `*.suffix` hosts match any cluster whose full name ends in `.suffix`; `*` matches all.
//! An exact name wins over wildcards, a longer wildcard over a shorter one.
//! Field precedence: what the rule sets replaces the cluster's own setting; what it leaves
//! out keeps it. A `host|subset` cluster gets the top-level policy, then the subset's.

use super::istio::{DestinationRule, TrafficPolicy};
use super::model::{CircuitBreakers, Cluster, HashPolicy, LbPolicy, OutlierDetection};

const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// `name` as a fully qualified service name, short names in `namespace`.
fn fqdn(name: &str, namespace: &str) -> String {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.contains('.') || name == "*" {
        name
    } else {
        format!("{name}.{namespace}.{CLUSTER_DOMAIN}")
    }
}

/// Whether two cluster names (both read in namespace `default`) name one service.
pub fn same_service(a: &str, b: &str) -> bool {
    fqdn(a, "default") == fqdn(b, "default")
}

/// The endpoints of `base` that subset `subset` of its DestinationRule selects (labels
/// include all of the subset's), as a cluster named `name` (`host|subset`) with the
/// base's settings. `Err` names what is missing.
pub fn subset_cluster(
    name: &str,
    base: &Cluster,
    rules: &[DestinationRule],
) -> Result<Cluster, String> {
    let labels = subset_labels(name, rules)?;
    let mut c = base.clone();
    c.name = name.to_string();
    c.endpoints
        .retain(|e| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)));
    Ok(c)
}

/// The labels subset `host|subset` selects, or what is missing.
pub fn subset_labels<'a>(
    name: &str,
    rules: &'a [DestinationRule],
) -> Result<&'a std::collections::BTreeMap<String, String>, String> {
    let (host, subset) = name.split_once('|').unwrap_or((name, ""));
    rule_for(rules, name)
        .and_then(|(r, _)| r.spec.subsets.iter().find(|s| s.name == subset))
        .map(|s| &s.labels)
        .ok_or_else(|| {
            format!("a route names subset `{subset}` of `{host}`, but no DestinationRule for `{host}` defines that subset")
        })
}

/// How well rule host `host` (namespace `ns`) matches cluster host `cluster`: `None` no
/// match, higher is more specific.
fn specificity(host: &str, ns: &str, cluster: &str) -> Option<usize> {
    let want = fqdn(cluster, "default");
    let host_full = fqdn(host, ns);
    if host_full == want {
        return Some(usize::MAX);
    }
    if host_full == "*" {
        return Some(0);
    }
    let suffix = host_full.strip_prefix('*')?;
    (suffix.starts_with('.') && want.ends_with(suffix)).then_some(suffix.len())
}

/// The DestinationRule that governs the cluster named `cluster` (`host`, `host:port` or
/// `host|subset`), and the subset name.
pub fn rule_for<'a, 'c>(
    rules: &'a [DestinationRule],
    cluster: &'c str,
) -> Option<(&'a DestinationRule, Option<&'c str>)> {
    let (host, subset) = match cluster.split_once('|') {
        Some((h, s)) => (h, Some(s)),
        None => (cluster, None),
    };
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => host,
    };
    let ns = |r: &DestinationRule| r.metadata.namespace.clone().unwrap_or("default".into());
    rules
        .iter()
        .filter_map(|r| Some((specificity(&r.spec.host, &ns(r), host)?, r)))
        .max_by_key(|(s, _)| *s)
        .map(|(_, r)| (r, subset))
}

/// `c` with the traffic policy of the DestinationRule that governs it applied.
pub fn effective_cluster(c: &Cluster, rules: &[DestinationRule]) -> Cluster {
    let mut out = c.clone();
    let Some((rule, subset)) = rule_for(rules, &c.name) else {
        return out;
    };
    if let Some(tp) = &rule.spec.traffic_policy {
        overlay(&mut out, tp);
    }
    if let Some(tp) = subset
        .and_then(|s| rule.spec.subsets.iter().find(|x| x.name == s))
        .and_then(|s| s.traffic_policy.as_ref())
    {
        overlay(&mut out, tp);
    }
    out
}

fn overlay(c: &mut Cluster, tp: &TrafficPolicy) {
    if let Some(lb) = &tp.load_balancer {
        match lb.simple.as_deref() {
            Some("ROUND_ROBIN") => c.lb_policy = LbPolicy::RoundRobin,
            Some("LEAST_REQUEST" | "LEAST_CONN") => c.lb_policy = LbPolicy::LeastRequest,
            Some("RANDOM") => c.lb_policy = LbPolicy::Random,
            _ => {} // refused by validation
        }
        if let Some(h) = &lb.consistent_hash {
            c.lb_policy = LbPolicy::RingHash;
            c.hash_policy = Some(HashPolicy {
                header: h.http_header_name.clone(),
                cookie: h.http_cookie.as_ref().map(|k| k.name.clone()),
                source_ip: h.use_source_ip.filter(|s| *s),
            });
        } else if lb.simple.is_some() {
            c.hash_policy = None;
        }
    }
    if let Some(pool) = &tp.connection_pool {
        let b = c
            .circuit_breakers
            .get_or_insert_with(CircuitBreakers::default);
        if let Some(tcp) = &pool.tcp {
            if let Some(n) = tcp.max_connections {
                b.max_connections = Some(n);
            }
            if let Some(t) = tcp.connect_timeout {
                c.connect_timeout = Some(t);
            }
        }
        if let Some(http) = &pool.http {
            if let Some(n) = http.http1_max_pending_requests {
                b.max_pending_requests = Some(n);
            }
            if let Some(n) = http.http2_max_requests {
                b.max_requests = Some(n);
            }
            if let Some(n) = http.max_requests_per_connection {
                b.max_requests_per_connection = Some(n);
            }
            if let Some(n) = http.max_retries {
                b.max_retries = Some(n);
            }
            if let Some(t) = http.idle_timeout {
                // The worker pools' idle expiry (Istio's default is 1 h, as Envoy's).
                c.idle_timeout = Some(t);
            }
        }
    }
    if let Some(o) = &tp.outlier_detection {
        let base = c
            .outlier_detection
            .get_or_insert_with(OutlierDetection::default);
        if let Some(n) = o.consecutive_5xx_errors {
            base.consecutive_5xx = Some(n);
        }
        if let Some(n) = o.consecutive_5xx_errors {
            // Istio enforces what it detects.
            base.enforcing_consecutive_5xx = Some(if n > 0 { 100 } else { 0 });
        }
        if let Some(n) = o.consecutive_gateway_errors {
            base.consecutive_gateway_failure = Some(n);
            base.enforcing_consecutive_gateway_failure = Some(if n > 0 { 100 } else { 0 });
        }
        if let Some(d) = o.interval {
            base.interval = Some(d);
        }
        if let Some(d) = o.base_ejection_time {
            base.base_ejection_time = Some(d);
        }
        if let Some(p) = o.max_ejection_percent {
            base.max_ejection_percent = Some(p);
        }
        // As Istio does: outlier detection sets Envoy's panic threshold to
        // `minHealthPercent`, which defaults to 0 (no panic mode).
        c.healthy_panic_threshold = Some(f64::from(o.min_health_percent.unwrap_or(0)));
    }
}

/// Problems in one traffic policy (`at` is its field path).
pub(super) fn check(tp: &TrafficPolicy, at: &str, bad: &mut dyn FnMut(String, String)) {
    if let Some(lb) = &tp.load_balancer {
        if let Some(s) = lb.simple.as_deref() {
            if !["ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "RANDOM"].contains(&s) {
                bad(
                    format!("{at}.loadBalancer.simple"),
                    format!("`{s}` is not supported (ROUND_ROBIN, LEAST_REQUEST, RANDOM)"),
                );
            }
        }
        match (&lb.simple, &lb.consistent_hash) {
            (Some(_), Some(_)) => bad(
                format!("{at}.loadBalancer"),
                "give either `simple` or `consistentHash`, not both".into(),
            ),
            (_, Some(h)) => {
                let keys = [
                    h.http_header_name.is_some(),
                    h.http_cookie.is_some(),
                    h.use_source_ip.is_some(),
                ];
                if keys.iter().filter(|k| **k).count() != 1 {
                    bad(
                        format!("{at}.loadBalancer.consistentHash"),
                        "give exactly one key: httpHeaderName, httpCookie or useSourceIp".into(),
                    );
                }
                if h.http_cookie
                    .as_ref()
                    .is_some_and(|k| k.ttl.is_some() || k.path.is_some())
                {
                    bad(
                        format!("{at}.loadBalancer.consistentHash.httpCookie"),
                        "`ttl`/`path` ask the proxy to generate the cookie, which tickmesh does not; hash on an existing cookie by `name` only".into(),
                    );
                }
                if h.use_source_ip == Some(false) {
                    bad(
                        format!("{at}.loadBalancer.consistentHash.useSourceIp"),
                        "`false` leaves no hash key; use `simple` instead".into(),
                    );
                }
            }
            _ => {}
        }
    }
    if let Some(pool) = &tp.connection_pool {
        let mut positive = |name: &str, v: Option<u32>| {
            if v == Some(0) {
                bad(
                    format!("{at}.connectionPool.{name}"),
                    "0 would refuse every request; leave it out for the default".into(),
                );
            }
        };
        if let Some(t) = &pool.tcp {
            positive("tcp.maxConnections", t.max_connections);
        }
        if let Some(h) = &pool.http {
            positive("http.http1MaxPendingRequests", h.http1_max_pending_requests);
            positive("http.http2MaxRequests", h.http2_max_requests);
        }
        if let Some(t) = pool.tcp.as_ref().and_then(|t| t.connect_timeout) {
            if t.is_zero() || t.as_secs() > 3600 {
                bad(
                    format!("{at}.connectionPool.tcp.connectTimeout"),
                    "must be between 1ms and 1h".into(),
                );
            }
        }
        if let Some(t) = pool.http.as_ref().and_then(|h| h.idle_timeout) {
            if t.is_zero() {
                bad(
                    format!("{at}.connectionPool.http.idleTimeout"),
                    "must be longer than 0".into(),
                );
            }
        }
    }
    if let Some(o) = &tp.outlier_detection {
        for (name, p) in [
            ("maxEjectionPercent", o.max_ejection_percent),
            ("minHealthPercent", o.min_health_percent),
        ] {
            if let Some(p) = p.filter(|p| *p > 100) {
                bad(
                    format!("{at}.outlierDetection.{name}"),
                    format!("{p} is over 100"),
                );
            }
        }
        for (name, d) in [
            ("interval", o.interval),
            ("baseEjectionTime", o.base_ejection_time),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                bad(
                    format!("{at}.outlierDetection.{name}"),
                    "must be longer than zero".into(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Format};
    use std::time::Duration;

    fn rules(yaml: &str) -> Vec<DestinationRule> {
        parse(yaml, Format::Yaml).unwrap().destination_rules
    }

    fn dr(name: &str, host: &str, ns: Option<&str>, policy: &str) -> String {
        let ns = ns.map_or(String::new(), |n| format!(", namespace: {n}"));
        format!(
            "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {{name: {name}{ns}}}\nspec:\n  host: \"{host}\"\n  trafficPolicy:\n{policy}\n"
        )
    }

    #[test]
    fn host_rules_short_names_wildcards_and_specificity() {
        let r = rules(
            &[
                dr(
                    "short",
                    "reviews",
                    None,
                    "    loadBalancer: {simple: RANDOM}",
                ),
                dr(
                    "wild",
                    "*.prod.svc.cluster.local",
                    None,
                    "    loadBalancer: {simple: RANDOM}",
                ),
                dr("all", "*", None, "    loadBalancer: {simple: RANDOM}"),
                dr(
                    "prod",
                    "ratings",
                    Some("prod"),
                    "    loadBalancer: {simple: RANDOM}",
                ),
            ]
            .join("---\n"),
        );
        let name = |c: &'static str| rule_for(&r, c).map(|(r, s)| (r.metadata.name.as_str(), s));
        assert_eq!(name("reviews"), Some(("short", None)));
        assert_eq!(
            name("reviews.default.svc.cluster.local"),
            Some(("short", None))
        );
        assert_eq!(name("REVIEWS|v2"), Some(("short", Some("v2"))));
        assert_eq!(name("reviews:9080"), Some(("short", None)));
        assert_eq!(name("ratings.prod.svc.cluster.local"), Some(("prod", None)));
        assert_eq!(name("details.prod.svc.cluster.local"), Some(("wild", None)));
        assert_eq!(
            name("ratings"),
            Some(("all", None)),
            "ratings is in default"
        );
    }

    #[test]
    fn the_seed_rule_sets_breakers_and_outlier_detection() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/seed/configs/istio-destinationrule-inventory-circuit-breaker.yaml"
        ));
        let Ok(text) = text else {
            eprintln!("SKIP: the seed folder is not next to this checkout");
            return;
        };
        let r = rules(&text);
        let c = parse(
            "clusters: [{name: inventory.prod.svc.cluster.local, type: strict_dns, endpoints: [\"localhost:80\"], lb_policy: random}]",
            Format::Yaml,
        )
        .unwrap()
        .clusters
        .remove(0);
        let e = effective_cluster(&c, &r);
        let b = e.circuit_breakers.unwrap();
        assert_eq!(b.max_connections, Some(1000));
        assert_eq!(b.max_requests, Some(500));
        assert_eq!(b.max_requests_per_connection, Some(10));
        assert_eq!(e.lb_policy, LbPolicy::Random, "the rule leaves it alone");
        let o = e.outlier_detection.unwrap();
        assert_eq!(o.consecutive_5xx, Some(5));
        assert_eq!(o.interval, Some(Duration::from_secs(30)));
        assert_eq!(o.base_ejection_time, Some(Duration::from_secs(180)));
        assert_eq!(o.max_ejection_percent, Some(50));
        assert_eq!(
            e.healthy_panic_threshold,
            Some(0.0),
            "Istio: minHealthPercent, default 0"
        );
        let mut r = r;
        if let Some(o) = r[0]
            .spec
            .traffic_policy
            .as_mut()
            .and_then(|t| t.outlier_detection.as_mut())
        {
            o.min_health_percent = Some(30);
        }
        assert_eq!(
            effective_cluster(&c, &r).healthy_panic_threshold,
            Some(30.0)
        );
    }

    #[test]
    fn new_cluster_fields_round_trip_through_yaml() {
        let yaml = r#"
clusters:
  - name: c
    lb_policy: maglev
    hash_policy: {cookie: session}
    endpoints:
      - "127.0.0.1:1"
      - {address: "127.0.0.1:2", priority: 1, labels: {version: v2}}
    outlier_detection: {consecutive_gateway_failure: 3, enforcing_consecutive_gateway_failure: 100, max_ejection_time: 1m}
    health_checks:
      - {timeout: 1s, interval: 2s, unhealthy_threshold: 3, healthy_threshold: 2, http_health_check: {path: /h, host: svc, expected_statuses: [{start: 200, end: 300}]}}
"#;
        let a = parse(yaml, Format::Yaml).unwrap();
        let text = serde_yaml::to_string(&a).unwrap();
        let b = parse(&text, Format::Yaml).unwrap();
        assert_eq!(a, b, "{text}");
        assert_eq!(b.clusters[0].endpoints[1].labels["version"], "v2");
    }

    #[test]
    fn subset_policy_overrides_the_top_level() {
        let r = rules(
            "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer: {simple: RANDOM}\n    connectionPool: {tcp: {maxConnections: 7, connectTimeout: 250ms}, http: {http1MaxPendingRequests: 3, maxRetries: 2, idleTimeout: 90s}}\n  subsets:\n  - name: v2\n    labels: {version: v2}\n    trafficPolicy:\n      loadBalancer: {consistentHash: {useSourceIp: true}}\n",
        );
        let c = Cluster {
            name: "reviews|v2".into(),
            ..parse(
                "clusters: [{name: x, endpoints: [\"127.0.0.1:1\"]}]",
                Format::Yaml,
            )
            .unwrap()
            .clusters
            .remove(0)
        };
        let e = effective_cluster(&c, &r);
        assert_eq!(e.lb_policy, LbPolicy::RingHash);
        assert_eq!(e.connect_timeout, Some(Duration::from_millis(250)));
        let b = e.circuit_breakers.unwrap();
        assert_eq!(
            (b.max_connections, b.max_pending_requests, b.max_retries),
            (Some(7), Some(3), Some(2))
        );
        assert_eq!(e.idle_timeout, Some(Duration::from_secs(90)));
    }
}
