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
//!
//! Locality load balancing (Istio's, relative to the proxy's `node.locality`; on by
//! default as in Istio's mesh config, `localityLbSetting.enabled: false` turns it off):
//! `distribute` sets the cluster's locality weights; otherwise, only when the rule has
//! outlier detection (Istio: failover without it would never happen), endpoints get
//! priorities by how much of the proxy's locality they share — same region/zone/sub-zone
//! 0, same zone 1, same region 2, others 3, and with a `failover` entry for the proxy's
//! region, regions other than its `to` 4 — renumbered without gaps. This replaces the
//! endpoints' own priorities, as Istio does.

use super::istio::{DestinationRule, LocalityLbSetting, TrafficPolicy};
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
    effective_cluster_at(c, rules, None)
}

/// [`effective_cluster`] for a proxy at locality `node` (`region/zone/sub_zone`): with
/// one, the rule's locality load balancing applies too.
pub fn effective_cluster_at(c: &Cluster, rules: &[DestinationRule], node: Option<&str>) -> Cluster {
    let mut out = c.clone();
    let Some((rule, subset)) = rule_for(rules, &c.name) else {
        return out;
    };
    let subset_tp = subset
        .and_then(|s| rule.spec.subsets.iter().find(|x| x.name == s))
        .and_then(|s| s.traffic_policy.as_ref());
    let tps = [rule.spec.traffic_policy.as_ref(), subset_tp];
    for tp in tps.iter().flatten() {
        overlay(&mut out, tp);
    }
    if let Some(node) = node {
        // The subset's setting replaces the rule's, as every other field does.
        let setting = tps
            .iter()
            .rev()
            .flatten()
            .find_map(|tp| tp.load_balancer.as_ref()?.locality_lb_setting.as_ref());
        let outlier = tps
            .iter()
            .flatten()
            .any(|tp| tp.outlier_detection.is_some());
        if setting.is_none_or(|s| s.enabled != Some(false)) {
            match setting {
                Some(s) if !s.distribute.is_empty() => distribute(&mut out, s, node),
                _ if outlier => failover(&mut out, setting, node),
                _ => {}
            }
        }
    }
    out
}

/// Istio's `warmup` (or `warmupDurationSecs`) as Envoy's slow start.
fn warmup(lb: &super::istio::LoadBalancerSettings) -> Option<super::model::SlowStartConfig> {
    use super::model::{Percent, RuntimeDouble, SlowStartConfig};
    if let Some(w) = &lb.warmup {
        return Some(SlowStartConfig {
            slow_start_window: w.duration,
            aggression: w.aggression.map(|a| RuntimeDouble {
                default_value: a,
                runtime_key: None,
            }),
            min_weight_percent: w.minimum_percent.map(|value| Percent { value }),
        });
    }
    lb.warmup_duration_secs.map(|d| SlowStartConfig {
        slow_start_window: Some(d),
        ..SlowStartConfig::default()
    })
}

/// Istio's warmup settings: one spelling, a duration, a percentage, an aggression > 0,
/// and a policy with slow start (ROUND_ROBIN, LEAST_REQUEST).
fn check_warmup(
    lb: &super::istio::LoadBalancerSettings,
    at: &str,
    bad: &mut dyn FnMut(String, String),
) {
    let field = match (&lb.warmup, &lb.warmup_duration_secs) {
        (None, None) => return,
        (Some(_), Some(_)) => {
            bad(
                format!("{at}.warmupDurationSecs"),
                "deprecated spelling of `warmup.duration`: give one of them".into(),
            );
            return;
        }
        (Some(_), None) => "warmup",
        (None, Some(_)) => "warmupDurationSecs",
    };
    if lb.consistent_hash.is_some() || lb.simple.as_deref() == Some("RANDOM") {
        bad(
            format!("{at}.{field}"),
            "slow start applies to ROUND_ROBIN and LEAST_REQUEST only (Envoy's rule)".into(),
        );
    }
    let duration = match &lb.warmup {
        Some(w) => w.duration,
        None => lb.warmup_duration_secs,
    };
    let dpath = match &lb.warmup {
        Some(_) => format!("{at}.warmup.duration"),
        None => format!("{at}.warmupDurationSecs"),
    };
    match duration {
        None => bad(dpath, "is required (e.g. \"60s\")".into()),
        Some(d) if d.is_zero() || d.as_secs() > 24 * 3600 => {
            bad(dpath, "must be between 1ms and 24h".into())
        }
        Some(_) => {}
    }
    if let Some(w) = &lb.warmup {
        if let Some(p) = w.minimum_percent.filter(|p| !(0.0..=100.0).contains(p)) {
            bad(
                format!("{at}.warmup.minimumPercent"),
                format!("{p} is not a percentage 0..=100"),
            );
        }
        if let Some(a) = w.aggression.filter(|a| !(a.is_finite() && *a > 0.0)) {
            bad(
                format!("{at}.warmup.aggression"),
                format!("{a} is not a finite number > 0 (1.0 ramps linearly)"),
            );
        }
    }
}

/// A `Path` attribute value we may write into `Set-Cookie` as it is.
pub(super) fn cookie_path_ok(p: &str) -> bool {
    p.starts_with('/') && p.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b';')
}

/// `region/zone/sub_zone` split in three (missing parts empty).
fn locality_parts(l: &str) -> [&str; 3] {
    let mut it = l.splitn(3, '/');
    [
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
    ]
}

/// Istio's locality match: each part of `pattern` is `*`, or equal; a missing zone or
/// sub-zone in the pattern matches any.
fn locality_match(locality: &str, pattern: &str) -> bool {
    let (l, p) = (locality_parts(locality), locality_parts(pattern));
    (p[0] == "*" || p[0] == l[0])
        && (p[1] == "*" || p[1].is_empty() || p[1] == l[1])
        && (p[2] == "*" || p[2].is_empty() || p[2] == l[2])
}

/// Istio `distribute`: the first entry whose `from` matches the proxy decides; each `to`
/// pattern's share is split over the localities it matches (not matched by an earlier
/// pattern) by their endpoint weight, rounded up; localities no pattern matches get no
/// traffic.
fn distribute(c: &mut Cluster, s: &LocalityLbSetting, node: &str) {
    let Some(d) = s.distribute.iter().find(|d| locality_match(node, &d.from)) else {
        return;
    };
    let mut original: Vec<(String, u64)> = Vec::new();
    for e in &c.endpoints {
        let l = e.locality.clone().unwrap_or_default();
        match original.iter_mut().find(|(n, _)| *n == l) {
            Some((_, w)) => *w += u64::from(e.weight.max(1)),
            None => original.push((l, u64::from(e.weight.max(1)))),
        }
    }
    let mut weights = std::collections::BTreeMap::new();
    for (pattern, &share) in &d.to {
        let matched: Vec<&(String, u64)> = original
            .iter()
            .filter(|(l, _)| !weights.contains_key(l) && locality_match(l, pattern))
            .collect();
        let total: u64 = matched.iter().map(|(_, w)| w).sum();
        for (l, w) in matched {
            let wt = (w * u64::from(share)).div_ceil(total.max(1)).min(65_535) as u32;
            weights.insert(l.clone(), wt);
        }
    }
    for (l, _) in original {
        weights.entry(l).or_insert(0);
    }
    c.locality_weights = weights;
}

/// Istio's locality failover: priorities by shared locality with the proxy (see the
/// module doc), renumbered 0.. without gaps.
fn failover(c: &mut Cluster, s: Option<&LocalityLbSetting>, node: &str) {
    let me = locality_parts(node);
    let rules = s.map_or(&[][..], |s| &s.failover[..]);
    let raw: Vec<u32> = c
        .endpoints
        .iter()
        .map(|e| {
            let l = locality_parts(e.locality.as_deref().unwrap_or(""));
            let p = match (l[0] == me[0], l[1] == me[1], l[2] == me[2]) {
                (true, true, true) => 0,
                (true, true, false) => 1,
                (true, false, _) => 2,
                (false, _, _) => 3,
            };
            match rules.iter().find(|f| f.from == me[0]) {
                Some(f) if p > 2 && l[0] != f.to => 4,
                _ => p,
            }
        })
        .collect();
    let mut used = raw.clone();
    used.sort_unstable();
    used.dedup();
    for (e, p) in c.endpoints.iter_mut().zip(raw) {
        e.priority = used.iter().position(|&u| u == p).unwrap_or(0) as u32;
    }
}

fn overlay(c: &mut Cluster, tp: &TrafficPolicy) {
    if let Some(t) = &tp.tls {
        match t.mode.as_str() {
            "DISABLE" => c.tls = None,
            "SIMPLE" | "MUTUAL" => {
                if let (Some(ca), Some(sni)) = (&t.ca_certificates, &t.sni) {
                    let mutual = t.mode == "MUTUAL";
                    c.tls = Some(super::tls::ClusterTls {
                        ca: ca.clone(),
                        sni: sni.clone(),
                        cert: t.client_certificate.clone().filter(|_| mutual),
                        key: t.private_key.clone().filter(|_| mutual),
                    });
                }
            }
            _ => {} // refused by validation
        }
    }
    if let Some(lb) = &tp.load_balancer {
        let policy = match lb.simple.as_deref() {
            Some("ROUND_ROBIN") => Some(LbPolicy::RoundRobin),
            Some("LEAST_REQUEST" | "LEAST_CONN") => Some(LbPolicy::LeastRequest),
            Some("RANDOM") => Some(LbPolicy::Random),
            _ => None, // refused by validation
        };
        if let Some(p) = policy {
            if p != c.lb_policy {
                // The cluster's own settings were for the policy the rule replaces.
                c.least_request_lb_config = None;
                c.round_robin_lb_config = None;
            }
            c.lb_policy = p;
            c.ring_hash_lb_config = None;
            c.maglev_lb_config = None;
            c.consistent_hashing_lb_config = None;
        }
        if let Some(h) = &lb.consistent_hash {
            c.least_request_lb_config = None;
            c.round_robin_lb_config = None;
            if let Some(m) = &h.maglev {
                c.lb_policy = LbPolicy::Maglev;
                c.ring_hash_lb_config = None;
                c.maglev_lb_config = Some(super::model::MaglevLbConfig {
                    table_size: m.table_size,
                });
            } else {
                let min = h
                    .ring_hash
                    .as_ref()
                    .and_then(|r| r.minimum_ring_size)
                    .or(h.minimum_ring_size);
                if c.lb_policy != LbPolicy::RingHash {
                    c.ring_hash_lb_config = None;
                }
                c.lb_policy = LbPolicy::RingHash;
                c.maglev_lb_config = None;
                if let Some(n) = min {
                    c.ring_hash_lb_config
                        .get_or_insert_with(Default::default)
                        .minimum_ring_size = Some(n);
                }
            }
            c.hash_policy = Some(HashPolicy {
                header: h.http_header_name.clone(),
                cookie: h.http_cookie.as_ref().map(|k| k.name.clone()),
                source_ip: h.use_source_ip.filter(|s| *s),
                query_parameter: h.http_query_parameter_name.clone(),
                cookie_ttl: h.http_cookie.as_ref().and_then(|k| k.ttl),
                cookie_path: h.http_cookie.as_ref().and_then(|k| k.path.clone()),
            });
        } else if lb.simple.is_some() {
            c.hash_policy = None;
        }
        if let Some(w) = warmup(lb) {
            match c.lb_policy {
                LbPolicy::RoundRobin => {
                    c.round_robin_lb_config
                        .get_or_insert_with(Default::default)
                        .slow_start_config = Some(w)
                }
                LbPolicy::LeastRequest => {
                    c.least_request_lb_config
                        .get_or_insert_with(Default::default)
                        .slow_start_config = Some(w)
                }
                other => tracing::warn!(
                    "cluster `{}`: a DestinationRule's loadBalancer.warmup applies to ROUND_ROBIN and LEAST_REQUEST; this cluster balances {other:?}, so it has no slow start",
                    c.name
                ),
            }
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
        // As Istio does: success-rate detection (not in Istio's API) is off, and so is
        // the local-origin one under split counting; a local-origin failure count is
        // enforced.
        base.enforcing_success_rate = Some(0);
        if o.split_external_local_origin_errors == Some(true) {
            base.split_external_local_origin_errors = Some(true);
            if let Some(n) = o.consecutive_local_origin_failures.filter(|n| *n > 0) {
                base.consecutive_local_origin_failure = Some(n);
                base.enforcing_consecutive_local_origin_failure = Some(100);
            }
            base.enforcing_local_origin_success_rate = Some(0);
        }
        // As Istio does: outlier detection sets Envoy's panic threshold to
        // `minHealthPercent`, which defaults to 0 (no panic mode).
        c.healthy_panic_threshold = Some(f64::from(o.min_health_percent.unwrap_or(0)));
    }
}

/// Problems in one traffic policy (`at` is its field path).
pub(super) fn check(tp: &TrafficPolicy, at: &str, bad: &mut dyn FnMut(String, String)) {
    if let Some(t) = &tp.tls {
        let at = format!("{at}.tls");
        match t.mode.as_str() {
            "DISABLE" | "SIMPLE" | "MUTUAL" => {}
            "ISTIO_MUTUAL" => bad(
                format!("{at}.mode"),
                "ISTIO_MUTUAL needs Istio's workload certificates, which tickmesh does not have: use MUTUAL with clientCertificate, privateKey and caCertificates".into(),
            ),
            m => bad(
                format!("{at}.mode"),
                format!("`{m}` is not a TLS mode (DISABLE, SIMPLE, MUTUAL)"),
            ),
        }
        if matches!(t.mode.as_str(), "SIMPLE" | "MUTUAL") {
            if t.ca_certificates.is_none() {
                bad(
                    format!("{at}.caCertificates"),
                    "give the CA bundle: tickmesh always verifies the upstream certificate".into(),
                );
            }
            if t.sni.as_deref().unwrap_or("").is_empty() {
                bad(
                    format!("{at}.sni"),
                    "give the upstream's name: tickmesh sends it and verifies the certificate against it".into(),
                );
            }
            if let Some(n) = t
                .subject_alt_names
                .iter()
                .find(|n| Some(n.as_str()) != t.sni.as_deref())
            {
                bad(
                    format!("{at}.subjectAltNames"),
                    format!(
                        "`{n}` is not the sni name: the certificate is verified against `sni` only"
                    ),
                );
            }
        }
        let mutual = t.mode == "MUTUAL";
        match (
            mutual,
            t.client_certificate.is_some(),
            t.private_key.is_some(),
        ) {
            (true, true, true) | (false, false, false) => {}
            (true, _, _) => bad(
                at.clone(),
                "MUTUAL needs both clientCertificate and privateKey".into(),
            ),
            (false, _, _) => bad(
                at.clone(),
                "clientCertificate/privateKey are for mode MUTUAL".into(),
            ),
        }
        if t.insecure_skip_verify == Some(true) {
            bad(
                format!("{at}.insecureSkipVerify"),
                "tickmesh always verifies upstream certificates".into(),
            );
        }
        if t.mode == "DISABLE" && (t.ca_certificates.is_some() || t.sni.is_some()) {
            bad(
                at.clone(),
                "mode DISABLE takes no certificates or sni".into(),
            );
        }
    }
    if let Some(lb) = &tp.load_balancer {
        check_warmup(lb, &format!("{at}.loadBalancer"), &mut *bad);
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
                    h.http_query_parameter_name.is_some(),
                ];
                if keys.iter().filter(|k| **k).count() != 1 {
                    bad(
                        format!("{at}.loadBalancer.consistentHash"),
                        "give exactly one key: httpHeaderName, httpCookie, httpQueryParameterName or useSourceIp".into(),
                    );
                }
                if h.http_query_parameter_name.as_deref() == Some("") {
                    bad(
                        format!("{at}.loadBalancer.consistentHash.httpQueryParameterName"),
                        "is empty: name the query parameter".into(),
                    );
                }
                if let Some(k) = &h.http_cookie {
                    if k.path.is_some() && k.ttl.is_none() {
                        bad(
                            format!("{at}.loadBalancer.consistentHash.httpCookie.path"),
                            "`path` is for the cookie the proxy generates, which needs `ttl`"
                                .into(),
                        );
                    }
                    if let Some(p) = k.path.as_deref().filter(|p| !cookie_path_ok(p)) {
                        bad(
                            format!("{at}.loadBalancer.consistentHash.httpCookie.path"),
                            format!("`{p}` is not a cookie path (starts with `/`, no `;`, no control bytes)"),
                        );
                    }
                }
                let ch = format!("{at}.loadBalancer.consistentHash");
                if h.ring_hash.is_some() && h.maglev.is_some() {
                    bad(
                        ch.clone(),
                        "give one hash algorithm: `ringHash` or `maglev`".into(),
                    );
                }
                if h.minimum_ring_size.is_some() && (h.ring_hash.is_some() || h.maglev.is_some()) {
                    bad(
                        format!("{ch}.minimumRingSize"),
                        "deprecated spelling of `ringHash.minimumRingSize`: give one of them"
                            .into(),
                    );
                }
                let ring_min = h
                    .ring_hash
                    .as_ref()
                    .and_then(|r| r.minimum_ring_size)
                    .map(|n| (format!("{ch}.ringHash.minimumRingSize"), n))
                    .or(h
                        .minimum_ring_size
                        .map(|n| (format!("{ch}.minimumRingSize"), n)));
                if let Some((path, n)) = ring_min {
                    let max = crate::cluster::ring::MAX_RING_SIZE;
                    if n == 0 || n > max {
                        bad(path, format!("{n} is not a ring size 1..={max}"));
                    }
                }
                if let Some(n) = h.maglev.as_ref().and_then(|m| m.table_size) {
                    let path = format!("{ch}.maglev.tableSize");
                    let max = crate::cluster::maglev::MAX_TABLE_SIZE;
                    if n > max {
                        bad(path, format!("{n} is over {max} (Envoy's limit)"));
                    } else if !crate::cluster::maglev::is_prime(n) {
                        bad(
                            path,
                            format!("{n} is not a prime: Maglev needs a prime table size (e.g. 65537, 131071)"),
                        );
                    }
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
    if let Some(l) = tp
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.locality_lb_setting.as_ref())
    {
        let at = format!("{at}.loadBalancer.localityLbSetting");
        if !l.distribute.is_empty() && !l.failover.is_empty() {
            bad(
                at.clone(),
                "set `distribute` or `failover`, not both (as Istio requires)".into(),
            );
        }
        let pattern_ok = |p: &str| {
            let parts: Vec<&str> = p.split('/').collect();
            !p.is_empty()
                && parts.len() <= 3
                && parts.iter().all(|x| !x.is_empty())
                // `*` only as the last part.
                && parts[..parts.len() - 1].iter().all(|x| !x.contains('*'))
                && parts.last().is_some_and(|x| *x == "*" || !x.contains('*'))
        };
        for (i, d) in l.distribute.iter().enumerate() {
            if !pattern_ok(&d.from) {
                bad(
                    format!("{at}.distribute[{i}].from"),
                    format!(
                        "`{}` is not a locality (region/zone/sub_zone, `*` last)",
                        d.from
                    ),
                );
            }
            for k in d.to.keys().filter(|k| !pattern_ok(k)) {
                bad(
                    format!("{at}.distribute[{i}].to"),
                    format!("`{k}` is not a locality (region/zone/sub_zone, `*` last)"),
                );
            }
            let sum: u64 = d.to.values().map(|&w| u64::from(w)).sum();
            if sum != 100 {
                bad(
                    format!("{at}.distribute[{i}].to"),
                    format!("weights sum to {sum}, not 100"),
                );
            }
        }
        for (i, f) in l.failover.iter().enumerate() {
            if f.from.is_empty() || f.to.is_empty() || f.from.contains('/') || f.to.contains('/') {
                bad(
                    format!("{at}.failover[{i}]"),
                    "`from` and `to` are regions (no `/`)".into(),
                );
            } else if f.from == f.to {
                bad(
                    format!("{at}.failover[{i}]"),
                    format!("fails over from `{}` to itself", f.from),
                );
            }
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
        if o.consecutive_local_origin_failures.is_some()
            && o.split_external_local_origin_errors != Some(true)
        {
            bad(
                format!("{at}.outlierDetection.consecutiveLocalOriginFailures"),
                "takes effect only with `splitExternalLocalOriginErrors: true`; set that too, or remove this field".into(),
            );
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

    fn zoned() -> Cluster {
        parse(
            r#"
clusters:
  - name: svc
    endpoints:
      - {address: "127.0.0.1:1", locality: us/a/1}
      - {address: "127.0.0.1:2", locality: us/a/2}
      - {address: "127.0.0.1:3", locality: us/b/1}
      - {address: "127.0.0.1:4", locality: eu/c/1, priority: 7}
      - {address: "127.0.0.1:5", locality: ap/d/1}
      - {address: "127.0.0.1:6", locality: ap/d/1, weight: 3}
"#,
            Format::Yaml,
        )
        .unwrap()
        .clusters
        .remove(0)
    }

    fn priorities(c: &Cluster) -> Vec<u32> {
        c.endpoints.iter().map(|e| e.priority).collect()
    }

    #[test]
    fn istio_locality_failover_sets_priorities_by_shared_locality() {
        let outlier = "    outlierDetection: {consecutive5xxErrors: 3}";
        let at = |policy: &str, node: Option<&str>| {
            effective_cluster_at(&zoned(), &rules(&dr("d", "svc", None, policy)), node)
        };
        // Istio's default (locality LB on in the mesh) with outlier detection.
        let c = at(outlier, Some("us/a/1"));
        assert_eq!(priorities(&c), [0, 1, 2, 3, 3, 3]);
        // Zone-level proxy locality: sub-zone "" differs from every endpoint's.
        assert_eq!(priorities(&at(outlier, Some("us/b"))), [1, 1, 0, 2, 2, 2]);
        // `failover` from the proxy's region: `to` next, every other region after it.
        let fo = format!(
            "{outlier}\n    loadBalancer: {{localityLbSetting: {{failover: [{{from: us, to: ap}}]}}}}"
        );
        assert_eq!(priorities(&at(&fo, Some("us/a/1"))), [0, 1, 2, 4, 3, 3]);
        // Gaps renumbered: nothing shares the zone of a proxy in eu/x.
        assert_eq!(priorities(&at(&fo, Some("eu/x/1"))), [1, 1, 1, 0, 1, 1]);
        // Off: explicitly disabled, no outlier detection, or no proxy locality.
        let off = format!(
            "{outlier}\n    loadBalancer: {{localityLbSetting: {{enabled: false, failover: [{{from: us, to: ap}}]}}}}"
        );
        let own = [0, 0, 0, 7, 0, 0];
        assert_eq!(priorities(&at(&off, Some("us/a/1"))), own);
        assert_eq!(
            priorities(&at(
                "    loadBalancer: {localityLbSetting: {failover: [{from: us, to: ap}]}}",
                Some("us/a/1")
            )),
            own,
            "Istio applies failover only with outlier detection"
        );
        assert_eq!(priorities(&at(outlier, None)), own);
    }

    #[test]
    fn istio_locality_distribute_sets_locality_weights() {
        let policy = r#"    loadBalancer:
      localityLbSetting:
        distribute:
          - from: eu/*
            to: {"us/*": 100}
          - from: us/a/*
            to: {"us/a/*": 80, "ap/d/1": 20}"#;
        let r = rules(&dr("d", "svc", None, policy));
        let c = effective_cluster_at(&zoned(), &r, Some("us/a/2"));
        let w: Vec<(&str, u32)> = c
            .locality_weights
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        // us/a/* = 80 over two localities of one endpoint each; ap/d/1 gets 20; the rest
        // nothing.
        assert_eq!(
            w,
            [
                ("ap/d/1", 20),
                ("eu/c/1", 0),
                ("us/a/1", 40),
                ("us/a/2", 40),
                ("us/b/1", 0)
            ]
        );
        assert_eq!(
            priorities(&c),
            [0, 0, 0, 7, 0, 0],
            "distribute leaves priorities"
        );
        // From eu: all of us, split by endpoint weight (one each), rounded up.
        let c = effective_cluster_at(&zoned(), &r, Some("eu/c/1"));
        assert_eq!(c.locality_weights["us/a/1"], 34);
        assert_eq!(c.locality_weights["us/b/1"], 34);
        assert_eq!(c.locality_weights["ap/d/1"], 0);
        // A proxy no `from` matches: untouched.
        let c = effective_cluster_at(&zoned(), &r, Some("ap/d/1"));
        assert!(c.locality_weights.is_empty());
    }

    #[test]
    fn malformed_locality_settings_are_named() {
        let cases = [
            (
                "    loadBalancer: {localityLbSetting: {distribute: [{from: \"us/*\", to: {\"us/*\": 100}}], failover: [{from: us, to: eu}]}}",
                "not both",
            ),
            (
                "    loadBalancer: {localityLbSetting: {distribute: [{from: \"us/*\", to: {\"us/*\": 60}}]}}",
                "weights sum to 60, not 100",
            ),
            (
                "    loadBalancer: {localityLbSetting: {distribute: [{from: \"*/a\", to: {\"us/*\": 100}}]}}",
                "distribute[0].from",
            ),
            (
                "    loadBalancer: {localityLbSetting: {distribute: [{from: us, to: {\"us//b\": 100}}]}}",
                "`us//b` is not a locality",
            ),
            (
                "    loadBalancer: {localityLbSetting: {failover: [{from: us, to: us}]}}",
                "fails over from `us` to itself",
            ),
            (
                "    loadBalancer: {localityLbSetting: {failover: [{from: us/a, to: eu}]}}",
                "are regions",
            ),
            (
                "    loadBalancer: {localityLbSetting: {failoverPriority: [topology.istio.io/network]}}",
                "failoverPriority",
            ),
            (
                "    loadBalancer: {localityLbSetting: {enabled: maybe}}",
                "enabled",
            ),
        ];
        for (policy, want) in cases {
            let e = parse(&dr("d", "svc", None, policy), Format::Yaml)
                .expect_err(policy)
                .to_string();
            assert!(e.contains(want), "{policy}\n  error: {e}\n  wanted: {want}");
        }
        for bad in ["\"\"", "us/a/b/c", "\"us/*\"", "us//a"] {
            let e = parse(&format!("node: {{locality: {bad}}}\n"), Format::Yaml)
                .expect_err(bad)
                .to_string();
            assert!(e.contains("node.locality"), "{bad}: {e}");
        }
        parse("node: {locality: us/a/1}\n", Format::Yaml).unwrap();
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

    /// Istio's mapping of split counting: `consecutiveLocalOriginFailures` enforced at
    /// 100%, local-origin success rate off, and success-rate detection off whenever a
    /// rule sets outlier detection.
    #[test]
    fn istio_split_local_origin_errors_map_as_istio_does() {
        let dr = |od: &str| {
            rules(&format!("apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec:\n  host: c\n  trafficPolicy:\n    outlierDetection: {od}\n"))
        };
        let c = parse(
            "clusters: [{name: c, endpoints: [\"127.0.0.1:1\"]}]",
            Format::Yaml,
        )
        .unwrap()
        .clusters
        .remove(0);
        let o = effective_cluster(
            &c,
            &dr("{splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 7}"),
        )
        .outlier_detection
        .unwrap();
        assert_eq!(o.split_external_local_origin_errors, Some(true));
        assert_eq!(o.consecutive_local_origin_failure, Some(7));
        assert_eq!(o.enforcing_consecutive_local_origin_failure, Some(100));
        assert_eq!(o.enforcing_local_origin_success_rate, Some(0));
        assert_eq!(o.enforcing_success_rate, Some(0));
        let o = effective_cluster(&c, &dr("{consecutive5xxErrors: 3}"))
            .outlier_detection
            .unwrap();
        assert_eq!(o.split_external_local_origin_errors, None);
        assert_eq!(o.consecutive_local_origin_failure, None);
        assert_eq!(o.enforcing_success_rate, Some(0));
    }

    /// Istio `trafficPolicy.tls`: SIMPLE and MUTUAL are the cluster's `tls:`, DISABLE
    /// removes one the cluster had.
    #[test]
    fn destination_rule_tls_sets_the_cluster_tls() {
        let dr = |tls: &str| {
            rules(&format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec:\n  host: c\n  trafficPolicy:\n    tls: {tls}\n"))
        };
        let c = parse(
            "clusters: [{name: c, endpoints: [\"127.0.0.1:1\"], tls: {ca: /old.pem, sni: old}}]",
            Format::Yaml,
        )
        .unwrap()
        .clusters
        .remove(0);
        let t = effective_cluster(
            &c,
            &dr("{mode: MUTUAL, caCertificates: /ca.pem, sni: a.internal, clientCertificate: /c.pem, privateKey: /c.key, subjectAltNames: [a.internal]}"),
        )
        .tls
        .unwrap();
        assert_eq!(
            (
                t.ca.to_str(),
                t.sni.as_str(),
                t.cert.as_deref(),
                t.key.as_deref()
            ),
            (
                Some("/ca.pem"),
                "a.internal",
                Some(std::path::Path::new("/c.pem")),
                Some(std::path::Path::new("/c.key"))
            )
        );
        let t = effective_cluster(&c, &dr("{mode: SIMPLE, caCertificates: /ca.pem, sni: b}"))
            .tls
            .unwrap();
        assert_eq!((t.sni.as_str(), t.cert), ("b", None));
        assert!(effective_cluster(&c, &dr("{mode: DISABLE}")).tls.is_none());
    }

    #[test]
    fn istio_hash_algorithms_set_the_balancer_settings() {
        let c = parse(
            "clusters: [{name: x, lb_policy: least_request, least_request_lb_config: {choice_count: 3}, endpoints: [\"127.0.0.1:1\"]}]",
            Format::Yaml,
        )
        .unwrap()
        .clusters
        .remove(0);
        let dr = |lb: &str| {
            rules(&format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec:\n  host: x\n  trafficPolicy:\n    loadBalancer: {lb}\n"
            ))
        };
        let e = effective_cluster(
            &c,
            &dr("{consistentHash: {httpHeaderName: u, ringHash: {minimumRingSize: 4096}}}"),
        );
        assert_eq!(e.lb_policy, LbPolicy::RingHash);
        assert_eq!(
            e.ring_hash_lb_config.and_then(|r| r.minimum_ring_size),
            Some(4096)
        );
        assert!(
            e.least_request_lb_config.is_none(),
            "no longer least request"
        );
        let e = effective_cluster(
            &c,
            &dr("{consistentHash: {useSourceIp: true, minimumRingSize: 128}}"),
        );
        assert_eq!(
            e.ring_hash_lb_config.and_then(|r| r.minimum_ring_size),
            Some(128),
            "the deprecated spelling"
        );
        let e = effective_cluster(
            &c,
            &dr("{consistentHash: {useSourceIp: true, maglev: {tableSize: 131071}}}"),
        );
        assert_eq!(e.lb_policy, LbPolicy::Maglev);
        assert_eq!(e.maglev_lb_config.and_then(|m| m.table_size), Some(131_071));
        // `simple: LEAST_REQUEST` keeps the cluster's own least-request settings.
        let e = effective_cluster(&c, &dr("{simple: LEAST_REQUEST}"));
        assert_eq!(
            e.least_request_lb_config.and_then(|l| l.choice_count),
            Some(3)
        );
        let e = effective_cluster(&c, &dr("{simple: RANDOM}"));
        assert!(e.least_request_lb_config.is_none());
    }

    /// Istio's warmup (and its deprecated `warmupDurationSecs`) is Envoy's slow start on
    /// the cluster's round-robin or least-request policy; bad values are named.
    #[test]
    fn istio_warmup_is_slow_start() {
        let c = parse(
            "clusters: [{name: x, endpoints: [\"127.0.0.1:1\"]}]",
            Format::Yaml,
        )
        .unwrap()
        .clusters
        .remove(0);
        let e = effective_cluster(
            &c,
            &rules(&dr(
                "r",
                "x",
                None,
                "    loadBalancer: {warmupDurationSecs: 60s}",
            )),
        );
        let s = e
            .round_robin_lb_config
            .and_then(|r| r.slow_start_config)
            .expect("slow start");
        assert_eq!(s.slow_start_window, Some(Duration::from_secs(60)));
        assert!(s.aggression.is_none() && s.min_weight_percent.is_none());
        let e = effective_cluster(
            &c,
            &rules(&dr(
                "r",
                "x",
                None,
                "    loadBalancer: {simple: LEAST_REQUEST, warmup: {duration: 30s, minimumPercent: 20, aggression: 1.5}}",
            )),
        );
        assert_eq!(e.lb_policy, LbPolicy::LeastRequest);
        let s = e
            .least_request_lb_config
            .and_then(|l| l.slow_start_config)
            .expect("slow start");
        assert_eq!(s.slow_start_window, Some(Duration::from_secs(30)));
        assert_eq!(s.aggression.map(|a| a.default_value), Some(1.5));
        assert_eq!(s.min_weight_percent.map(|p| p.value), Some(20.0));
        for (policy, want) in [
            (
                "    loadBalancer: {warmupDurationSecs: 60s, warmup: {duration: 30s}}",
                "loadBalancer.warmupDurationSecs: deprecated spelling of `warmup.duration`",
            ),
            (
                "    loadBalancer: {warmup: {minimumPercent: 5}}",
                "loadBalancer.warmup.duration: is required",
            ),
            (
                "    loadBalancer: {warmup: {duration: 10s, minimumPercent: 120}}",
                "loadBalancer.warmup.minimumPercent: 120 is not a percentage",
            ),
            (
                "    loadBalancer: {warmup: {duration: 10s, aggression: 0}}",
                "loadBalancer.warmup.aggression: 0 is not a finite number > 0",
            ),
            (
                "    loadBalancer: {simple: RANDOM, warmupDurationSecs: 10s}",
                "loadBalancer.warmupDurationSecs: slow start applies to ROUND_ROBIN and LEAST_REQUEST only",
            ),
            (
                "    loadBalancer: {consistentHash: {useSourceIp: true}, warmup: {duration: 10s}}",
                "loadBalancer.warmup: slow start applies to ROUND_ROBIN and LEAST_REQUEST only",
            ),
            (
                "    loadBalancer: {warmupDurationSecs: soon}",
                "invalid duration `soon`",
            ),
            (
                "    loadBalancer: {warmup: {duration: 10s, ramp: linear}}",
                "unknown field `ramp`",
            ),
        ] {
            let e = parse(&dr("r", "x", None, policy), Format::Yaml)
                .expect_err(policy)
                .to_string();
            assert!(e.contains(want), "{policy}\n  error: {e}\n  wanted: {want}");
        }
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
    outlier_detection: {consecutive_gateway_failure: 3, enforcing_consecutive_gateway_failure: 100, max_ejection_time: 1m, split_external_local_origin_errors: true, consecutive_local_origin_failure: 4, enforcing_failure_percentage_local_origin: 50}
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
